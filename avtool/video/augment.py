"""Batch augmentation on the batch's device (the GPU in training): after Fused DecodeCrop every clip
has the same shape, so flips, colour jitter and normalisation run once per batch instead of per clip
on the loader's CPUs (paper §4.2).

Input: the loader's uint8 batch (B, T, H, W, 3). Output: float (B, 3, T, H, W), the layout the
video ViT takes (``avtool.models``: channels, then frames, then pixels), normalised with CLIP's
mean and std on 0-255 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from avtool.errors import AvtoolError

CLIP_MEAN = (108.327, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
"""VideoMAE normalises its input with ImageNet's statistics (on 0-255 values here)."""
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


def random_erase(
    video: torch.Tensor, prob: float, area: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3), tries: int = 10,
) -> torch.Tensor:  # fmt: skip
    """timm's RandomErasing in pixel mode (VideoMAE's fine-tuning, probability 0.25) on a normalised (B, 3, T, H, W)
    batch, with one box per clip shared by all its frames: with probability ``prob`` a box of area fraction
    U(``area``) and aspect exp(U(log ``ratio``)) (the first of ``tries`` draws that fits; none: the clip is left
    alone) is filled with standard-normal noise. Draws from torch's global generator (seeded every step)."""
    B, _, _, H, W = video.shape
    erase = torch.rand(B) < prob
    boxes = torch.zeros(B, 4, dtype=torch.long)  # top, left, height, width (0: no box)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for b in torch.nonzero(erase).flatten().tolist():
        for _ in range(tries):
            target = H * W * float(torch.empty(()).uniform_(*area))
            aspect = math.exp(float(torch.empty(()).uniform_(log_lo, log_hi)))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h < H and 0 < w < W:
                top, left = int(torch.randint(0, H - h + 1, ())), int(torch.randint(0, W - w + 1, ()))
                boxes[b] = torch.tensor([top, left, h, w])
                break
    if not boxes[:, 2].any():
        return video
    boxes = boxes.to(video.device)
    rows = torch.arange(H, device=video.device).view(1, H, 1)
    cols = torch.arange(W, device=video.device).view(1, 1, W)
    top, left, h, w = (boxes[:, i].view(B, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # (B, H, W)
    noise = torch.randn(video.shape, device=video.device, dtype=video.dtype)
    return torch.where(inside[:, None, None], noise, video)
