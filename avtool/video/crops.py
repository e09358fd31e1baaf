"""Crop parameters from a video's size alone, so the decoder can crop before colour conversion.

RandomResizedCrop (paper Eq. 1-2) depends only on (W, H), not on pixels: drawing it before
decoding is what makes Fused DecodeCrop possible. One crop is drawn per clip and shared by all its
frames, also when the clip spans two chunk files. All randomness comes from the generator passed
in; nothing reads a global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from avtool.errors import AvtoolError


@dataclass(frozen=True)
class Crop:
    """A region of the source frame (pixels), resized to the output size after cropping."""

    x: int
    y: int
    w: int
    h: int
    flip: bool = False
    """Mirror the output horizontally."""

    def check(self, width: int, height: int) -> None:
        if self.w < 1 or self.h < 1 or self.x < 0 or self.y < 0 or self.x + self.w > width or self.y + self.h > height:
            raise AvtoolError(f"crop {self} does not fit a {width}x{height} frame")


def random_resized_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Crop:
    """Area fraction s ~ U(scale), log aspect ~ U(log ratio), w = round(√(A·s·r)), h = round(√(A·s/r));
    up to ``tries`` draws that fit, then a centre crop clamped to ``ratio``; offsets uniform."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return Crop(x, y, w, h)
    # Fallback as torchvision: the whole frame, clamped to the aspect range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return Crop((width - w) // 2, (height - h) // 2, w, h)


def center_crop(width: int, height: int) -> Crop:
    """The centred square of the short side: resizing it to S equals "short side to S, centre S×S"."""
    side = min(width, height)
    return Crop((width - side) // 2, (height - side) // 2, side, side)


@dataclass(frozen=True)
class CropPolicy:
    """How a dataset crops its clips."""

    kind: Literal["random-resized", "center"] = "random-resized"
    """``random-resized`` for training, ``center`` for evaluation."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Area fraction range of RandomResizedCrop (the paper uses 0.5-1)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect ratio range of RandomResizedCrop."""
    flip: float = 0.0
    """Probability of a horizontal flip (EK-100 CLS fine-tuning uses 0.5)."""

    def __post_init__(self) -> None:
        if self.kind not in ("random-resized", "center"):
            raise AvtoolError(f"crop kind must be random-resized or center, got {self.kind!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise AvtoolError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise AvtoolError(f"crop ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 <= self.flip <= 1:
            raise AvtoolError(f"flip probability must be in [0, 1], got {self.flip}")

    def draw(self, width: int, height: int, rng: np.random.Generator | None) -> Crop:
        """One crop for a clip; ``rng`` may be None only for a centre crop without flips."""
        if self.kind == "center":
            crop = center_crop(width, height)
        else:
            if rng is None:
                raise AvtoolError("a random-resized crop needs a random generator")
            crop = random_resized_crop(width, height, rng, self.scale, self.ratio)
        if self.flip > 0:
            if rng is None:
                raise AvtoolError("random flips need a random generator")
            crop = replace(crop, flip=bool(rng.random() < self.flip))
        return crop
