"""Batch augmentation on the batch's device (the GPU in training): after Fused DecodeCrop every clip
has the same shape, so flips, colour jitter and normalisation run once per batch instead of per clip
on the loader's CPUs (paper §4.2).

Input: the loader's uint8 batch (B, T, H, W, 3). Output: float (B, 3, T, H, W), the layout the
video ViT takes (``avtool.models``: channels, then frames, then pixels), normalised with CLIP's
mean and std on 0-255 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avtool.errors import AvtoolError

CLIP_MEAN = (108.327, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)
_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    mean: tuple[float, float, float] = CLIP_MEAN
    """Per-channel mean on 0-255 values (CLIP's by default)."""
    std: tuple[float, float, float] = CLIP_STD
    """Per-channel standard deviation on 0-255 values."""
    flip: float = 0.0
    """Probability of mirroring a clip (all its frames) horizontally."""
    brightness: float = 0.0
    """Brightness factor drawn per clip from [1 - b, 1 + b]."""
    contrast: float = 0.0
    """Contrast factor drawn per clip from [1 - c, 1 + c] (around the clip's mean grey)."""
    saturation: float = 0.0
    """Saturation factor drawn per clip from [1 - s, 1 + s] (towards each pixel's grey)."""
    dtype: torch.dtype = torch.float32
    """Output dtype (e.g. torch.bfloat16 to feed an autocast model without a copy)."""

    def __post_init__(self) -> None:
        if not 0 <= self.flip <= 1:
            raise AvtoolError(f"flip probability must be in [0, 1], got {self.flip}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise AvtoolError(f"{name} jitter must be in [0, 1), got {getattr(self, name)}")
        if min(self.std) <= 0:
            raise AvtoolError(f"std must be positive, got {self.std}")

    @property
    def jitters(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)


def augment_batch(
    video: torch.Tensor, config: AugmentConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 on any device -> (B, 3, T, H, W) ``config.dtype`` on the same device.

    Random draws use ``generator`` (create it on the batch's device and seed it); with no flip and
    no jitter nothing random happens and the result is plain normalisation."""
    if video.dim() != 5 or video.shape[-1] != 3:
        raise AvtoolError(f"expected a (B, T, H, W, 3) batch, got shape {tuple(video.shape)}")
    config = config or AugmentConfig()
    batch = video.shape[0]
    device = video.device
    x = video.permute(0, 4, 1, 2, 3).float()
    if config.flip > 0:
        mirror = torch.rand(batch, device=device, generator=generator) < config.flip
        x = torch.where(mirror.view(-1, 1, 1, 1, 1), x.flip(-1), x)
    if config.jitters:
        x = _colour_jitter(x, config, generator)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1, 1)
    return ((x - mean) / std).to(config.dtype)


def _factor(batch: int, spread: float, device, generator) -> torch.Tensor:
    u = torch.rand(batch, device=device, generator=generator)
    return (1 - spread + 2 * spread * u).view(-1, 1, 1, 1, 1)


def _colour_jitter(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    batch, device = x.shape[0], x.device
    gray_weights = torch.tensor(_GRAY, device=device).view(1, 3, 1, 1, 1)
    if config.brightness:
        x = x * _factor(batch, config.brightness, device, generator)
    if config.contrast:
        mean_gray = (x * gray_weights).sum(1, keepdim=True).mean(dim=(2, 3, 4), keepdim=True)
        x = (x - mean_gray) * _factor(batch, config.contrast, device, generator) + mean_gray
    if config.saturation:
        gray = (x * gray_weights).sum(1, keepdim=True)
        x = (x - gray) * _factor(batch, config.saturation, device, generator) + gray
    return x.clamp(0, 255)
