"""`avtool eval mir|cls CHECKPOINT`: rebuild the model a checkpoint was trained with (any frame count:
the temporal embedding is interpolated), evaluate it on EK-100 and compare with the trivial baseline
(random ranking for MIR, the training set's majority class for CLS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avtool.data import EK100CLS, EK100MIR, ClipConfig, EK100Layout
from avtool.errors import AvtoolError
from avtool.models import DualEncoder, VideoClassifier, load_state_dict_resized
from avtool.models.attention import AttnImpl
from avtool.train import distributed
from avtool.train.checkpoint import load_checkpoint
from avtool.train.config import Precision, raise_problems
from avtool.train.evaluate import evaluate_cls, evaluate_mir, majority_class_accuracy
from avtool.train.metrics import chance_retrieval_metrics
from avtool.train.model_factory import model_from_config_dict, with_tower_options
from avtool.video.decode import DecoderConfig


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path
    ek100: EK100Layout
    task: str
    """`mir` or `cls`."""
    split: str = "test"
    """MIR: test or train; CLS: validation or train."""
    frames: int | None = None
    """Frames per clip; None: the checkpoint's."""
    attn: AttnImpl = "sdpa"
    batch_size: int = 64
    workers: int = 8
    precision: Precision = "bf16"
    decoder: DecoderConfig = DecoderConfig()
    device: str = "auto"

    def check(self) -> None:
        problems = []
        splits = {"mir": ("test", "train"), "cls": ("validation", "train")}
        if self.task not in splits:
            problems.append(f"task {self.task!r} is not mir or cls")
        elif self.split not in splits[self.task]:
            problems.append(f"--split {self.split!r} is not one of {', '.join(splits[self.task])}")
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
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        autocast = torch.autocast(env.device.type, dtype=amp, enabled=amp is not None and env.device.type == "cuda")
        with torch.no_grad(), autocast:
            if cfg.task == "mir":
                dataset = EK100MIR(cfg.ek100.mir_config(cfg.split, clips))
                metrics = evaluate_mir(model, dataset, env, cfg.batch_size, cfg.workers)
                chance = chance_retrieval_metrics(dataset.relevancy)
                counts = f"{metrics.clips} clips × {metrics.sentences} sentences"
                if metrics.skipped_queries:
                    counts += f"; {metrics.skipped_queries} queries without a relevant item left out"
                return {
                    "title": f"EK-100 MIR ({cfg.split}), {video_cfg.num_frames} frames",
                    "metrics": _floats(metrics.to_dict()), "baseline_name": "chance",
                    "baseline": _floats(chance.to_dict()), "counts": counts,
                    "checkpoint": str(cfg.checkpoint), "frames": video_cfg.num_frames,
                }  # fmt: skip
            dataset = EK100CLS(cfg.ek100.cls_config(cfg.split, clips))
            train_set = EK100CLS(cfg.ek100.cls_config("train", clips))
            metrics = evaluate_cls(model, dataset, env, cfg.batch_size, cfg.workers)
            return {
                "title": f"EK-100 CLS ({cfg.split}), {video_cfg.num_frames} frames",
                "metrics": _floats(metrics.to_dict()), "baseline_name": "majority class",
                "baseline": majority_class_accuracy(train_set, dataset),
                "counts": f"{metrics.clips} clips, {dataset.num_actions} action classes",
                "checkpoint": str(cfg.checkpoint), "frames": video_cfg.num_frames,
            }  # fmt: skip
    finally:
        distributed.teardown()


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, float)}
