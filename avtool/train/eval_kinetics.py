"""`avtool eval kinetics CHECKPOINT ROOT LIST`: VideoMAE's multi-view test of a `train kinetics` checkpoint:
5 clips spread over each video × 3 crops along its long side, the softmax averaged over the 15 views, top-1
and top-5, next to the training list's majority class."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avtool.data import ClipConfig, KineticsConfig, KineticsList
from avtool.data.kinetics import kinetics_list_option, kinetics_root_option, list_labels
from avtool.errors import AvtoolError
from avtool.models.attention import AttnImpl
from avtool.models.videomae import VideoMAEClassifier
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
from avtool.train.evaluate import evaluate_kinetics, majority_label_accuracy
from avtool.train.kinetics import NORMALISE
from avtool.train.model_config import attn_option
from avtool.train.model_factory import model_from_config_dict
from avtool.video.decode import DecoderConfig


@dataclass(frozen=True)
class KineticsEvalConfig:
    """Evaluate a `train kinetics` checkpoint with several views per video."""

    checkpoint: Path = option(
        flags="--checkpoint", positional=True, panel="Data", metavar="FILE",
        help="A checkpoint of `avtool train kinetics`.",
    )  # fmt: skip
    root: Path = kinetics_root_option()
    test_list: Path = kinetics_list_option("Test", ("--test-list", "--val-list"))
    train_list: Path | None = option(
        None, panel="Data", metavar="FILE", show_default="the checkpoint's",
        help="Training list of the majority-class baseline.",
    )  # fmt: skip
    temporal_clips: int = option(
        5, flags=("--temporal-clips", "--test-num-segment"), panel="Data",
        help="Clips spread evenly over each video (VideoMAE: 5).",
    )  # fmt: skip
    spatial_crops: int = option(
        3, flags=("--spatial-crops", "--test-num-crop"), panel="Data",
        help="Short-side squares along each clip's long side (VideoMAE: 3; 1: the centre).",
    )  # fmt: skip
    stride: int | None = option(
        None, panel="Data", unit="frames", show_default="the checkpoint's", help="Frames between sampled frames."
    )
    attn: AttnImpl = attn_option()
    batch_size: int = option(8, panel="Data", unit="videos", help="Videos per batch (each with all its views).")
    workers: int = workers_option()
    precision: Precision = precision_option()
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    device: Device = device_option()
    output_dir: Path | None = option(
        None, flags="--output", panel="Output", metavar="DIR", show_default="the checkpoint's folder",
        help="Folder for <checkpoint>.eval-kinetics.json.",
    )  # fmt: skip

    @property
    def result_path(self) -> Path:
        folder = self.output_dir if self.output_dir is not None else Path(self.checkpoint).parent
        return Path(folder) / f"{Path(self.checkpoint).stem}.eval-kinetics.json"

    def check(self) -> None:
        problems = []
        if self.temporal_clips < 1 or self.spatial_crops < 1 or self.batch_size < 1:
            problems.append("--temporal-clips, --spatial-crops and --batch-size must be at least 1")
        if self.stride is not None and self.stride < 1:
            problems.append(f"--stride {self.stride} must be at least 1")
        paths = [self.checkpoint, self.root, self.test_list, self.train_list]
        problems += [f"{p} does not exist" for p in paths if p is not None and not Path(p).exists()]
        raise_problems("eval kinetics", problems)


def _load(cfg: KineticsEvalConfig) -> tuple[VideoMAEClassifier, dict[str, Any]]:
    """The checkpoint's classifier (with --attn) and its training configuration."""
    checkpoint = load_checkpoint(cfg.checkpoint)
    record = checkpoint.get("model_config") or {}
    if record.get("kind") != "videomae_classifier":
        raise AvtoolError(f"{cfg.checkpoint} holds a {record.get('kind', 'model of unknown kind')}; `eval kinetics` "
                          "needs an `avtool train kinetics` checkpoint")  # fmt: skip
    record = {**record, "config": {**record["config"], "attn": cfg.attn, "drop_path": 0.0}}
    model = model_from_config_dict(record)
    model.load_state_dict(checkpoint["model"])
    try:
        trained = json.loads(checkpoint.get("config") or "{}")
    except (TypeError, ValueError):
        trained = {}
    return model, trained if isinstance(trained, dict) else {}  # type: ignore[return-value]


def evaluate_kinetics_checkpoint(cfg: KineticsEvalConfig) -> dict[str, Any]:
    """Top-1/top-5 (percent) of the view-averaged softmax, the majority-class baseline and the counts."""
    cfg.check()
    model, trained = _load(cfg)
    train_list = cfg.train_list or trained.get("train_list")
    if train_list is None or not Path(train_list).exists():
        raise AvtoolError(f"the checkpoint's training list {train_list} is not there: give --train-list")
    stride = cfg.stride or int(trained.get("stride", 4))
    env = distributed.setup(cfg.device)
    try:
        model = model.to(env.device).eval()
        c = model.config
        clips = ClipConfig(root=cfg.root, num_frames=c.num_frames, size=c.image_size, train=False,
                           decoder=cfg.decoder)  # fmt: skip
        test = KineticsList(KineticsConfig(cfg.test_list, clips, stride, temporal_clips=cfg.temporal_clips,
                                           spatial_crops=cfg.spatial_crops))  # fmt: skip
        if test.labels.size and (test.labels.min() < 0 or test.labels.max() >= model.num_classes):
            raise AvtoolError(f"{cfg.test_list}: labels must lie in 0..{model.num_classes - 1} (the checkpoint's "
                              "classes)")  # fmt: skip
        train_labels = list_labels(Path(train_list))
        amp = autocast_dtype(cfg.precision, env.device.type)
        with torch.no_grad(), torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
            metrics = evaluate_kinetics(model, test, env, cfg.batch_size, cfg.workers, NORMALISE)
        views = cfg.temporal_clips * cfg.spatial_crops
        return {
            "title": f"Kinetics ({Path(cfg.test_list).name}), {cfg.temporal_clips} clips x {cfg.spatial_crops} crops",
            "metrics": metrics, "baseline_name": "majority class",
            "baseline": {"top1": majority_label_accuracy(train_labels, test.labels)},
            "counts": f"{len(test)} videos x {views} views = {len(test) * views} views, {model.num_classes} classes",
            "checkpoint": str(cfg.checkpoint), "videos": len(test), "views_per_video": views,
        }  # fmt: skip
    finally:
        distributed.teardown()
