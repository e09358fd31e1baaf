"""`avtool eval mir|cls CHECKPOINT`: rebuild the model a checkpoint was trained with (any frame count:
the temporal embedding is interpolated), evaluate it on EK-100 and compare with the trivial baseline
(random ranking for MIR, the training set's majority class for CLS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from avtool.data import EK100CLS, EK100MIR, ClipConfig, EK100Layout
from avtool.data.ek100 import ek100_annotations_option, ek100_root_option
from avtool.errors import AvtoolError
from avtool.models import DualEncoder, VideoClassifier, load_state_dict_resized
from avtool.models.attention import AttnImpl
from avtool.options import option
from avtool.train import distributed
from avtool.train.checkpoint import load_checkpoint
from avtool.train.config import (
    Device,
    Precision,
    autocast_dtype,
    device_option,
    precision_option,
    raise_problems,
    workers_option,
)
from avtool.train.evaluate import evaluate_cls, evaluate_mir, majority_class_accuracy
from avtool.train.metrics import chance_retrieval_metrics
from avtool.train.model_config import attn_option
from avtool.train.model_factory import model_from_config_dict, with_tower_options
from avtool.video.decode import DecoderConfig

SPLITS = {"mir": ("test", "train"), "cls": ("validation", "train")}


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a checkpoint on EK-100 MIR or CLS."""

    checkpoint: Path = option(
        flags="--checkpoint",
        positional=True,
        panel="Data",
        metavar="FILE",
        help="A checkpoint of `avtool train lavila|mir` (MIR) or `train cls` (CLS).",
    )
    ek100_root: Path = ek100_root_option(positional=True, flags=("--ek100-root", "--root"))
    ek100_annotations: Path = ek100_annotations_option(positional=True)
    task: Literal["mir", "cls"] = "mir"
    """Which benchmark (each `avtool eval` command sets it)."""
    split: str | None = option(
        None,
        panel="Data",
        show_default="test for MIR, validation for CLS",
        help="MIR: test or train; CLS: validation or train.",
    )
    frames: int | None = option(
        None, panel="Model", unit="frames", show_default="the checkpoint's", help="Frames per clip (paper: 16)."
    )
    attn: AttnImpl = attn_option()
    batch_size: int = option(64, panel="Data", unit="clips", help="Clips per batch.")
    workers: int = workers_option()
    precision: Precision = precision_option()
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    device: Device = device_option()
    output_dir: Path | None = option(
        None,
        flags="--output",
        panel="Output",
        metavar="DIR",
        show_default="the checkpoint's folder",
        help="Folder for <checkpoint>.eval-<task>-<split>.json.",
    )

    @property
    def ek100(self) -> EK100Layout:
        return EK100Layout(self.ek100_root, self.ek100_annotations)

    @property
    def resolved_split(self) -> str:
        return self.split or SPLITS[self.task][0]

    @property
    def result_path(self) -> Path:
        folder = self.output_dir if self.output_dir is not None else Path(self.checkpoint).parent
        return Path(folder) / f"{Path(self.checkpoint).stem}.eval-{self.task}-{self.resolved_split}.json"

    def check(self) -> None:
        problems = []
        if self.task not in SPLITS:
            problems.append(f"task {self.task!r} is not mir or cls")
        elif self.resolved_split not in SPLITS[self.task]:
            problems.append(f"--split {self.split!r} is not one of {', '.join(SPLITS[self.task])}")
        if self.frames is not None and self.frames < 1:
            problems.append(f"--frames {self.frames} must be at least 1")
        for path in (self.checkpoint, self.ek100.root, self.ek100.annotations):
            if not Path(path).exists():
                problems.append(f"{path} does not exist")
        raise_problems(f"eval {self.task}", problems)


def load_model(cfg: EvalConfig) -> DualEncoder | VideoClassifier:
    checkpoint = load_checkpoint(cfg.checkpoint)
    record = checkpoint.get("model_config")
    if record is None:
        raise AvtoolError(f"{cfg.checkpoint} is not an avtool training checkpoint (no model_config)")
    wanted = "dual_encoder" if cfg.task == "mir" else "classifier"
    if record["kind"] != wanted:
        raise AvtoolError(f"{cfg.checkpoint} holds a {record['kind'].replace('_', ' ')}; `eval {cfg.task}` needs a "
                          f"{wanted.replace('_', ' ')}")  # fmt: skip
    overrides: dict[str, Any] = {
        "attn_impl": cfg.attn,
        "grad_checkpointing": False,
        "grad_checkpointing_keep_attention": 0,
    }
    if cfg.frames is not None:
        overrides["num_frames"] = cfg.frames
    model = model_from_config_dict(with_tower_options(record, **overrides))
    load_state_dict_resized(model, checkpoint["model"])
    return model


def evaluate_checkpoint(cfg: EvalConfig) -> dict[str, Any]:
    """Metrics (percent), the trivial baseline and the counts, as a JSON-ready dict."""
    cfg.check()
    env = distributed.setup(cfg.device)
    try:
        model = load_model(cfg).to(env.device).eval()
        video_cfg = model.video.cfg
        clips = ClipConfig(root=cfg.ek100.root, num_frames=video_cfg.num_frames, size=video_cfg.image_size,
                           train=False, decoder=cfg.decoder)  # fmt: skip
        amp = autocast_dtype(cfg.precision, env.device.type)
        autocast = torch.autocast(env.device.type, dtype=amp, enabled=amp is not None)
        with torch.no_grad(), autocast:
            if cfg.task == "mir":
                dataset = EK100MIR(cfg.ek100.mir_config(cfg.resolved_split, clips))
                metrics = evaluate_mir(model, dataset, env, cfg.batch_size, cfg.workers)
                chance = chance_retrieval_metrics(dataset.relevancy)
                counts = f"{metrics.clips} clips × {metrics.sentences} sentences"
                if metrics.skipped_queries:
                    counts += f"; {metrics.skipped_queries} queries without a relevant item left out"
                return {
                    "title": f"EK-100 MIR ({cfg.resolved_split}), {video_cfg.num_frames} frames",
                    "metrics": _floats(metrics.to_dict()), "baseline_name": "chance",
                    "baseline": _floats(chance.to_dict()), "counts": counts,
                    "checkpoint": str(cfg.checkpoint), "frames": video_cfg.num_frames,
                }  # fmt: skip
            dataset = EK100CLS(cfg.ek100.cls_config(cfg.resolved_split, clips))
            train_set = EK100CLS(cfg.ek100.cls_config("train", clips))
            metrics = evaluate_cls(model, dataset, env, cfg.batch_size, cfg.workers)
            return {
                "title": f"EK-100 CLS ({cfg.resolved_split}), {video_cfg.num_frames} frames",
                "metrics": _floats(metrics.to_dict()), "baseline_name": "majority class",
                "baseline": majority_class_accuracy(train_set, dataset),
                "counts": f"{metrics.clips} clips, {dataset.num_actions} action classes",
                "checkpoint": str(cfg.checkpoint), "frames": video_cfg.num_frames,
            }  # fmt: skip
    finally:
        distributed.teardown()


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, float)}
