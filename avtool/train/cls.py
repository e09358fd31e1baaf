"""`avtool train cls`: fine-tune the video tower with an action head on EK-100 action recognition
(paper appendix B.3): SGD, label smoothing, Mixup/CutMix, dropout and drop path; verb / noun / action
top-1 on the validation split, verbs and nouns from the marginals of the action softmax."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from avtool.data import EK100CLS, ClipConfig, EK100Layout
from avtool.data.ek100 import ek100_annotations_option, ek100_root_option
from avtool.models import VideoClassifier
from avtool.options import option
from avtool.train.checkpoint import load_checkpoint
from avtool.train.config import OptimConfig, RunConfig, raise_problems
from avtool.train.distributed import DistEnv
from avtool.train.engine import FitResult, fit
from avtool.train.evaluate import evaluate_cls
from avtool.train.mixup import MixupConfig, mix_batch, soft_cross_entropy
from avtool.train.model_config import pretrained_checkpoint_option
from avtool.train.model_factory import (
    ModelConfig,
    build_classifier,
    classifier_tower_config,
    load_video_tower_from_checkpoint,
)
from avtool.video.augment import augment_batch
from avtool.video.crops import CropPolicy
from avtool.video.decode import DecoderConfig


@dataclass(frozen=True)
class CLSConfig:
    """EK-100 CLS fine-tuning; defaults are the paper's ViT-B recipe (16 frames, 64 clips per GPU, 100 epochs)."""

    ek100_root: Path = ek100_root_option(positional=True, flags=("--ek100-root", "--root"))
    ek100_annotations: Path = ek100_annotations_option(positional=True)
    pretrained_checkpoint: Path | None = pretrained_checkpoint_option()
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir=Path("runs/cls"), epochs=100, batch_size=64))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(num_frames=16, drop_path=0.1))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            optimizer="sgd",
            lr=3e-3,
            lr_batch_scale=128,
            warmup_epochs=1,
            lr_start=1e-6,
            lr_end=1e-5,
            weight_decay=5e-4,
            momentum=0.9,
        )  # fmt: skip
    )
    mixup: MixupConfig = field(default_factory=MixupConfig)
    dropout: float = option(0.5, panel="Model", help="Dropout before the action head.")
    flip: float = option(0.5, panel="Data", help="Horizontal flip probability (fused into decoding).")
    crop_scale: tuple[float, float] = (0.5, 1.0)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    eval_batch_size: int = 64

    @property
    def ek100(self) -> EK100Layout:
        return EK100Layout(self.ek100_root, self.ek100_annotations)

    def check(self) -> None:
        problems = self.run.problems() + self.optim.problems() + self.model.problems()
        paths = [self.ek100.root, self.ek100.cls_csv("train"), self.ek100.cls_csv("validation")]
        if self.pretrained_checkpoint is not None:
            paths.append(self.pretrained_checkpoint)
        problems += [f"{p} does not exist" for p in paths if not Path(p).exists()]
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout} is outside [0, 1)")
        raise_problems("train cls", problems)


class CLSJob:
    name = "cls"
    best_metric = "action_top1"
    views_per_video = 1

    def __init__(self, cfg: CLSConfig) -> None:
        self.cfg = cfg
        self.tower_cfg = classifier_tower_config(cfg.model)
        self._train_set: EK100CLS | None = None
        self._eval_set: EK100CLS | None = None

    def _clips(self, train: bool) -> ClipConfig:
        return ClipConfig(
            root=self.cfg.ek100.root, num_frames=self.cfg.model.num_frames, size=self.tower_cfg.image_size,
            train=train, crop=CropPolicy(scale=self.cfg.crop_scale, flip=self.cfg.flip), decoder=self.cfg.decoder,
            seed=self.cfg.run.seed,
        )  # fmt: skip

    def train_dataset(self) -> EK100CLS:
        if self._train_set is None:
            self._train_set = EK100CLS(self.cfg.ek100.cls_config("train", self._clips(True)))
        return self._train_set

    def eval_dataset(self) -> EK100CLS:
        if self._eval_set is None:
            self._eval_set = EK100CLS(self.cfg.ek100.cls_config("validation", self._clips(False)))
        return self._eval_set

    def build_model(self) -> VideoClassifier:
        model = build_classifier(self.cfg.model, self.train_dataset().num_actions, self.cfg.dropout)
        if self.cfg.pretrained_checkpoint is not None:
            load_video_tower_from_checkpoint(model, load_checkpoint(self.cfg.pretrained_checkpoint)["model"])
        return model

    def collate(self) -> None:
        return None

    def loss(self, model: nn.Module, batch: dict[str, Any], env: DistEnv) -> tuple[torch.Tensor, dict]:
        num_actions = self.train_dataset().num_actions
        video, targets = mix_batch(augment_batch(batch["video"]), batch["action"], num_actions, self.cfg.mixup)
        return soft_cross_entropy(model(video), targets), {}

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float]:
        workers = min(self.cfg.run.workers, 8)
        metrics = evaluate_cls(model, self.eval_dataset(), env, self.cfg.eval_batch_size, workers)
        return {k: float(v) for k, v in metrics.to_dict().items() if k != "clips"}


def run(cfg: CLSConfig, console: Console | None = None) -> FitResult:
    """Check the inputs, then fine-tune (the Python API behind `avtool train cls`)."""
    cfg.check()
    return fit(CLSJob(cfg), cfg.run, cfg.optim, cfg, console)
