"""`avtool train kinetics`: fine-tune a VideoMAE encoder for Kinetics-style action classification (AVION's
`main_videomae_finetune.py` recipe): the encoder over every cube, mean pooling, a final norm and a linear head,
from a `train videomae` checkpoint or from scratch; layer-wise lr decay, drop path, Mixup/CutMix with label
smoothing, RandomResizedCrop and flips fused into decoding, RandAugment per clip, random erasing per clip.

A command of its own rather than `train cls --dataset kinetics`: `train cls` fine-tunes a CLIP video tower
on EK-100's verb:noun actions with SGD, this one a VideoMAE encoder on flat class lists with AdamW and layer
decay; they share the engine, the loader, Mixup and the optimiser code, not a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from avtool.data import ClipConfig, KineticsConfig, KineticsList
from avtool.data.kinetics import kinetics_list_option, kinetics_root_option
from avtool.errors import AvtoolError
from avtool.model_options import AttnImpl, attn_option, grad_checkpointing_option
from avtool.models.videomae import VIDEOMAE_SIZES, VideoMAEClassifier, VideoMAEConfig
from avtool.options import option
from avtool.train.checkpoint import load_checkpoint
from avtool.train.config import OptimConfig, RunConfig, raise_problems
from avtool.train.distributed import DistEnv
from avtool.train.engine import FitResult, fit
from avtool.train.evaluate import evaluate_kinetics
from avtool.train.mixup import MixupConfig, mix_batch, soft_cross_entropy
from avtool.train.model_config import pretrained_checkpoint_option
from avtool.train.videomae import VideoMAESize, flip_option, model_problems, stride_option, videomae_size_option
from avtool.video.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, augment_batch, random_erase
from avtool.video.crops import CropPolicy
from avtool.video.decode import DecoderConfig
from avtool.video.randaugment import VIDEOMAE_RANDAUGMENT, ClipRandAugment

NORMALISE = AugmentConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class KineticsFinetuneConfig:
    """Kinetics fine-tuning; defaults are AVION's ViT-B recipe: 16 × 224² frames at stride 4, 32 clips per GPU,
    AdamW at 1.5e-3 per 256 clips with betas (0.9, 0.999), weight decay 0.05 and layer decay 0.75, 100 epochs
    with 5 of warm-up, then cosine to 1e-6."""

    root: Path = kinetics_root_option()
    train_list: Path = kinetics_list_option("Training", ("--train-list", "--train-metadata"))
    val_list: Path | None = kinetics_list_option("Validation", ("--val-list", "--val-metadata"), positional=False)
    pretrained_checkpoint: Path | None = pretrained_checkpoint_option(
        "An `avtool train videomae` checkpoint whose cube embedding and encoder to start from (VideoMAE's "
        "--finetune); none: random initialisation."
    )
    size: VideoMAESize = videomae_size_option("encoder")
    attn: AttnImpl = attn_option()
    grad_checkpointing: bool = grad_checkpointing_option()
    drop_path: float = option(0.1, panel="Model", help="Stochastic depth of the last block (rising from 0).")
    stride: int = stride_option()
    flip: float = flip_option()
    rand_augment: str = option(
        VIDEOMAE_RANDAUGMENT, flags=("--rand-augment", "--aa"), panel="Data", metavar="POLICY",
        help="timm RandAugment policy, one draw per clip for all its frames; none: off.",
    )  # fmt: skip
    random_erase: float = option(
        0.25, flags=("--random-erase", "--reprob"), panel="Data",
        help="Probability of erasing a box of each clip (the same box in every frame) with noise.",
    )  # fmt: skip
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Area fraction range of the RandomResizedCrop (VideoMAE's fine-tuning)."""
    mixup: MixupConfig = field(default_factory=MixupConfig)
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir=Path("runs/kinetics"), epochs=100, batch_size=32)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1.5e-3,
            lr_batch_scale=256,
            warmup_epochs=5,
            lr_start=1e-6,
            lr_end=1e-6,
            weight_decay=0.05,
            betas=(0.9, 0.999),
            layer_decay=0.75,
        )  # fmt: skip
    )
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    eval_batch_size: int = 32

    @property
    def model_config(self) -> VideoMAEConfig:
        return replace(VIDEOMAE_SIZES[self.size], attn=self.attn, drop_path=self.drop_path)

    def check(self) -> None:
        problems = self.run.problems() + self.optim.problems()
        problems += model_problems(self.size, self.attn, self.run.device)
        if not 0 <= self.drop_path < 1 or not 0 <= self.random_erase <= 1 or not 0 <= self.flip <= 1:
            problems.append(f"drop_path={self.drop_path}, random_erase={self.random_erase} and flip={self.flip} "
                            "must lie in [0, 1)")  # fmt: skip
        if self.stride < 1:
            problems.append(f"stride={self.stride} must be at least 1")
        if self.rand_augment != "none":
            try:
                ClipRandAugment(self.rand_augment)
            except AvtoolError as e:
                problems.append(str(e))
        paths = [self.root, self.train_list, self.val_list, self.pretrained_checkpoint]
        problems += [f"{p} does not exist" for p in paths if p is not None and not Path(p).exists()]
        raise_problems("train kinetics", problems)


class KineticsJob:
    name = "kinetics"
    best_metric = "top1"
    views_per_video = 1

    def __init__(self, cfg: KineticsFinetuneConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model_config
        self._train_set: KineticsList | None = None
        self._eval_set: KineticsList | None = None

    def _list(self, path: Path, train: bool) -> KineticsList:
        c, size = self.cfg, self.model_cfg.image_size
        crop = CropPolicy(scale=c.crop_scale, flip=c.flip, output_size=size)
        clips = ClipConfig(root=c.root, num_frames=self.model_cfg.num_frames, size=size, train=train, crop=crop,
                           decoder=c.decoder, seed=c.run.seed)  # fmt: skip
        augment = ClipRandAugment(c.rand_augment, size) if train and c.rand_augment != "none" else None
        dataset = KineticsList(KineticsConfig(path, clips, c.stride, clip_augment=augment))
        if dataset.labels.size and dataset.labels.min() < 0:
            raise AvtoolError(f"{path}: fine-tuning needs a label per video, some lines have -1 (a pretraining list)")
        return dataset

    def train_dataset(self) -> KineticsList:
        if self._train_set is None:
            self._train_set = self._list(self.cfg.train_list, train=True)
        return self._train_set

    def eval_dataset(self) -> KineticsList | None:
        if self._eval_set is None and self.cfg.val_list is not None:
            self._eval_set = self._list(self.cfg.val_list, train=False)
            if (top := int(self._eval_set.labels.max(initial=-1))) >= self.num_classes:
                raise AvtoolError(f"{self.cfg.val_list}: label {top} is beyond the training list's "
                                  f"{self.num_classes} classes")  # fmt: skip
        return self._eval_set

    @cached_property
    def num_classes(self) -> int:
        """The training list's classes (its highest label + 1), read once: the loss needs it every step."""
        return int(self.train_dataset().labels.max(initial=0)) + 1

    def build_model(self) -> VideoMAEClassifier:
        model = VideoMAEClassifier(self.model_cfg, self.num_classes)
        model.set_grad_checkpointing(self.cfg.grad_checkpointing)
        if (path := self.cfg.pretrained_checkpoint) is not None:
            checkpoint = load_checkpoint(path)
            kind = (checkpoint.get("model_config") or {}).get("kind")
            if kind != "videomae":
                raise AvtoolError(f"{path} holds a {kind or 'model of unknown kind'}; fine-tuning starts from an "
                                  "`avtool train videomae` checkpoint")  # fmt: skip
            try:
                model.load_encoder(checkpoint["model"])
            except ValueError as e:
                raise AvtoolError(f"{path}: {e}; --model {self.cfg.size} with these frames and size") from None
        return model

    def collate(self) -> None:
        return None

    def loss(self, model: nn.Module, batch: dict[str, Any], env: DistEnv) -> tuple[torch.Tensor, dict]:
        video = random_erase(augment_batch(batch["video"], NORMALISE), self.cfg.random_erase)
        video, targets = mix_batch(video, batch["label"], self.num_classes, self.cfg.mixup)
        return soft_cross_entropy(model(video), targets), {}

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float] | None:
        dataset = self.eval_dataset()
        if dataset is None:
            return None
        workers = min(self.cfg.run.workers, 8)
        return evaluate_kinetics(model, dataset, env, self.cfg.eval_batch_size, workers, NORMALISE)


def run(cfg: KineticsFinetuneConfig, console: Console | None = None) -> FitResult:
    """Check the inputs, then fine-tune (the Python API behind `avtool train kinetics`)."""
    cfg.check()
    return fit(KineticsJob(cfg), cfg.run, cfg.optim, cfg, console)
