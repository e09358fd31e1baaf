"""Decoders that turn chunk reads into cropped uint8 clips: PyAV (CPU), PyAV on NVDEC, decord;
each in ``fused`` (Fused DecodeCrop) or ``decode-then-crop`` mode, with seek or sequential access."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from avtool.video.clips import ClipPlan
from avtool.video.crops import Crop
from avtool.video.decode.base import (
    ACCESSES,
    BACKENDS,
    MODES,
    Access,
    Backend,
    BadChunkError,
    Decoder,
    DecoderConfig,
    Mode,
    StageTimes,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACCESSES", "BACKENDS", "MODES", "Access", "Backend", "BadChunkError", "Decoder", "DecoderConfig", "Mode",
    "StageTimes",
    "make_decoder", "read_clip", "read_views",
]  # fmt: skip


def make_decoder(config: DecoderConfig) -> Decoder:
    """The decoder for ``config.backend`` in ``config.mode`` and ``config.access``."""
    if config.backend == "decord":
        from avtool.video.decode.decord_reader import DecordDecoder

        return DecordDecoder(config)
    from avtool.video.decode.pyav import PyAVDecoder

    return PyAVDecoder(config)


def read_clip(decoder: Decoder, plan: ClipPlan, crop: Crop, size: int, times: StageTimes | None = None) -> torch.Tensor:
    """uint8 tensor (T, size, size, 3) of the plan's frames in order, one crop for all of them,
    whichever chunk files they come from."""
    parts = [decoder.decode(read, crop, size, times) for read in plan.reads]
    import torch  # here, not at the top: `avtool chunk` reads DecoderConfig and should start without torch

    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def read_views(
    decoder: Decoder, plan: ClipPlan, crops: Sequence[Crop], size: int, times: StageTimes | None = None
) -> torch.Tensor:
    """uint8 tensor (len(crops), T, size, size, 3): the plan's frames decoded once, one view per crop."""
    parts = [decoder.decode_views(read, crops, size, times) for read in plan.reads]
    import torch

    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
