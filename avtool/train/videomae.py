"""`avtool train videomae`: masked-autoencoder pretraining of a video ViT on Kinetics-style clips (paper
§5.5, VideoMAE; AVION's recipe): 16 frames at stride 4 with AVION's jitter, the multi-scale crop and flip
fused into decoding, tube masks of ratio 0.9 made on the GPU per batch (VideoMAE V2's running-cell decoder
mask optional), normalised-pixel targets and the MSE over the masked cubes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from rich.console import Console
from torch import nn

from avtool.data import ClipConfig, KineticsConfig, KineticsList
from avtool.data.kinetics import kinetics_list_option, kinetics_root_option
from avtool.model_options import AttnImpl, attn_option, grad_checkpointing_option
from avtool.models.attention import check_attn_impl
from avtool.models.videomae import (
    VIDEOMAE_SIZES,
    VideoMAE,
    VideoMAEConfig,
    cube_targets,
    reconstruction_loss,
    running_cell_mask,
    tube_mask,
)
from avtool.options import option
from avtool.train.config import OptimConfig, RunConfig, raise_problems
from avtool.train.distributed import DistEnv
from avtool.train.engine import FitResult, fit
from avtool.video.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, augment_batch
from avtool.video.crops import CropPolicy
from avtool.video.decode import DecoderConfig

VideoMAESize = Literal["small", "base", "large", "tiny"]
DecoderMask = Literal["none", "running-cell"]


# Options that pretraining and fine-tuning share.
def videomae_size_option(what: str) -> Any:
    return option(
        "base", flags="--model", panel="Model", metavar="small|base|large|tiny",
        help=f"VideoMAE ViT-S/B/L {what}; tiny: seconds on a CPU.",
    )  # fmt: skip


def stride_option() -> Any:
    return option(
        4, flags=("--stride", "--sampling-rate"), panel="Data", unit="frames",
        help="Frames between sampled frames (VideoMAE's 16 x 4; in pretraining each jittered within its stride, "
        "as AVION).",
    )  # fmt: skip


def model_problems(size: str, attn: AttnImpl, device: str) -> list[str]:
    """What is wrong with a VideoMAE size and attention kernel on ``device`` (pretraining and fine-tuning)."""
    problems = []
    if size not in VIDEOMAE_SIZES:
        problems.append(f"model={size!r} is not one of {', '.join(VIDEOMAE_SIZES)}")
    if problem := check_attn_impl(attn, on_cuda=device != "cpu" and torch.cuda.is_available()):
        problems.append(problem)
    return problems


def flip_option() -> Any:
    return option(0.5, panel="Data", help="Horizontal flip probability (fused into decoding; AVION).")


@dataclass(frozen=True)
class VideoMAETrainConfig:
    """VideoMAE pretraining; defaults are AVION's ViT-B recipe: 16 × 224² frames at stride 4, 64 clips per GPU,
    AdamW at 1.5e-4 per 256 clips with betas (0.9, 0.95) and weight decay 0.05, 800 epochs with 40 of warm-up,
    then cosine."""

    root: Path = kinetics_root_option()
    train_list: Path = kinetics_list_option("Training", ("--train-list", "--data-path"))
    size: VideoMAESize = videomae_size_option("with its 4-block decoder")
    attn: AttnImpl = attn_option()
    grad_checkpointing: bool = grad_checkpointing_option()
    mask_ratio: float = option(0.9, panel="Masking", help="Fraction of the cube tubes hidden from the encoder.")
    decoder_mask: DecoderMask = option(
        "none", panel="Masking", metavar="none|running-cell",
        help="VideoMAE V2's dual masking: running-cell decodes half of each frame's positions (--decoder-mask-ratio "
        "0.5); none decodes every hidden position (VideoMAE V1).",
    )  # fmt: skip
    decoder_mask_ratio: float = option(
        0.5, panel="Masking", help="Fraction of positions the decoder skips (the running cell is defined for 0.5)."
    )
    stride: int = stride_option()
    flip: float = flip_option()
    repeated_sampling: int = option(
        1, flags=("--repeated-sampling", "--num-sample"), panel="Data", unit="views", metavar="N",
        help="VideoMAE V2's repeated sampling: each decoded clip gives N views, cropped and masked independently, "
        "so a step trains on N x --batch-size views for one decode each; the lr scales with videos, not views.",
    )  # fmt: skip
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir=Path("runs/videomae"), epochs=800, batch_size=64, save_every=5000)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1.5e-4,
            lr_batch_scale=256,
            warmup_epochs=40,
            lr_start=1e-6,
            lr_end=1e-5,
            weight_decay=0.05,
            betas=(0.9, 0.95),
        )  # fmt: skip
    )
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def model_config(self) -> VideoMAEConfig:
        return replace(VIDEOMAE_SIZES[self.size], attn=self.attn)

    def check(self) -> None:
        problems = self.run.problems() + self.optim.problems()
        problems += model_problems(self.size, self.attn, self.run.device)
        if not 0 < self.mask_ratio < 1:
            problems.append(f"mask_ratio={self.mask_ratio} is outside (0, 1)")
        if self.decoder_mask == "running-cell" and self.decoder_mask_ratio != 0.5:
            problems.append(f"decoder_mask_ratio={self.decoder_mask_ratio}: the running cell decodes half (0.5)")
        if self.decoder_mask not in get_args(DecoderMask):
            problems.append(f"decoder_mask={self.decoder_mask!r} is not none or running-cell")
        if self.repeated_sampling < 1:
            problems.append(f"repeated_sampling={self.repeated_sampling} must be at least 1")
        if self.stride < 1 or not 0 <= self.flip <= 1:
            problems.append(f"stride={self.stride} must be at least 1 and flip={self.flip} in [0, 1]")
        problems += [f"{p} does not exist" for p in (self.root, self.train_list) if not Path(p).exists()]
        raise_problems("train videomae", problems)


class VideoMAEJob:
    name = "videomae"
    best_metric = None

    def __init__(self, cfg: VideoMAETrainConfig) -> None:
        self.cfg = cfg
        self.views_per_video = cfg.repeated_sampling
        self.model_cfg = cfg.model_config
        self._train_set: KineticsList | None = None
        self._augment = AugmentConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def train_dataset(self) -> KineticsList:
        if self._train_set is None:
            size = self.model_cfg.image_size
            clips = ClipConfig(
                root=self.cfg.root, num_frames=self.model_cfg.num_frames, size=size, train=True,
                crop=CropPolicy(kind="multi-scale", flip=self.cfg.flip, output_size=size), decoder=self.cfg.decoder,
                seed=self.cfg.run.seed,
            )  # fmt: skip
            self._train_set = KineticsList(KineticsConfig(
                self.cfg.train_list, clips, self.cfg.stride, jitter=True, views=self.cfg.repeated_sampling
            ))  # fmt: skip
        return self._train_set

    def eval_dataset(self) -> None:
        return None

    def build_model(self) -> VideoMAE:
        model = VideoMAE(self.model_cfg)
        model.set_grad_checkpointing(self.cfg.grad_checkpointing)
        return model

    def collate(self) -> None:
        return None

    def loss(self, model: nn.Module, batch: dict[str, Any], env: DistEnv) -> tuple[torch.Tensor, dict]:
        video = batch["video"]  # (B, T, S, S, 3) uint8 on the device; (B, N, T, S, S, 3) with repeated sampling
        if video.dim() == 6:
            video = video.flatten(0, 1)  # each view is a sample of its own, with its own mask
        c = self.model_cfg
        # Targets from the 0-255 pixels before normalisation (AVION); the masks drawn on the device, from the
        # step's seed (the engine reseeds torch every step, so a resumed run draws the same masks).
        targets = cube_targets(video.permute(0, 4, 1, 2, 3), c.tubelet_size, c.patch_size)
        mask = tube_mask(video.shape[0], c.grid, self.cfg.mask_ratio, video.device)
        decode_mask = (
            running_cell_mask(video.shape[0], c.grid, video.device) if self.cfg.decoder_mask != "none" else None
        )
        reconstruction = model(augment_batch(video, self._augment), mask, decode_mask)
        return reconstruction_loss(reconstruction, targets), {}

    def evaluate(self, model: nn.Module, env: DistEnv) -> None:
        return None


def run(cfg: VideoMAETrainConfig, console: Console | None = None) -> FitResult:
    """Check the inputs, then pretrain (the Python API behind `avtool train videomae`)."""
    cfg.check()
    return fit(VideoMAEJob(cfg), cfg.run, cfg.optim, cfg, console)
