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


MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)
"""Crop sides as fractions of the short side in VideoMAE's multi-scale crop."""


def multi_scale_crop(
    width: int, height: int, rng: np.random.Generator, output_size: int = 224,
    scales: tuple[float, ...] = MULTI_SCALES, max_distort: int = 1,
) -> Crop:  # fmt: skip
    """VideoMAE's multi-scale crop (after TSN): side lengths int(short side · scale) for each scale (a length
    within 3 px of ``output_size`` becomes ``output_size``), width and height from scale indices at most
    ``max_distort`` apart, and the offset one of 13 fixed points on a 4 × 4 grid of the room left: the
    corners, the centre, the edge centres and the four quarter points."""
    short = min(width, height)
    sides = [output_size if abs(int(short * s) - output_size) < 3 else int(short * s) for s in scales]
    sides = [min(side, short) for side in sides]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    w, h = pairs[int(rng.integers(len(pairs)))]
    step_x, step_y = (width - w) // 4, (height - h) // 4
    grid = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))
    gx, gy = grid[int(rng.integers(len(grid)))]
    return Crop(gx * step_x, gy * step_y, w, h)


def center_crop(width: int, height: int) -> Crop:
    """The centred square of the short side: resizing it to S equals "short side to S, centre S×S"."""
    side = min(width, height)
    return Crop((width - side) // 2, (height - side) // 2, side, side)


def spatial_crops(width: int, height: int, count: int) -> list[Crop]:
    """``count`` squares of the short side spread evenly along the long side (multi-view testing: 3 gives
    left, centre and right, as "short side to S, then three S×S crops"); one is the centre crop."""
    if count < 1:
        raise AvtoolError(f"spatial crops must be at least 1, got {count}")
    if count == 1:
        return [center_crop(width, height)]
    side = min(width, height)
    room_x, room_y = width - side, height - side
    return [Crop(round(room_x * k / (count - 1)), round(room_y * k / (count - 1)), side, side) for k in range(count)]


@dataclass(frozen=True)
class CropPolicy:
    """How a dataset crops its clips."""

    kind: Literal["random-resized", "multi-scale", "center"] = "random-resized"
    """``random-resized`` (LaViLa, EK-100) or ``multi-scale`` (VideoMAE) for training, ``center`` for
    evaluation."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Area fraction range of RandomResizedCrop (the paper uses 0.5-1)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect ratio range of RandomResizedCrop."""
    flip: float = 0.0
    """Probability of a horizontal flip (EK-100 CLS fine-tuning and AVION's VideoMAE use 0.5)."""
    output_size: int = 224
    """The size crops are resized to: the multi-scale crop snaps side lengths within 3 px of it."""

    def __post_init__(self) -> None:
        if self.kind not in ("random-resized", "multi-scale", "center"):
            raise AvtoolError(f"crop kind must be random-resized, multi-scale or center, got {self.kind!r}")
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
        elif rng is None:
            raise AvtoolError(f"a {self.kind} crop needs a random generator")
        elif self.kind == "multi-scale":
            crop = multi_scale_crop(width, height, rng, self.output_size)
        else:
            crop = random_resized_crop(width, height, rng, self.scale, self.ratio)
        if self.flip > 0:
            if rng is None:
                raise AvtoolError("random flips need a random generator")
            crop = replace(crop, flip=bool(rng.random() < self.flip))
        return crop
