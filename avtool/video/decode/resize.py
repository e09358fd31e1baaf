"""The decode-then-crop half: crop full RGB frames and resize them with torch, as the usual pipeline does."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avtool.video.crops import Crop


def crop_resize(frames: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """(n, H, W, 3) uint8 full frames -> (n, size, size, 3) uint8: crop, antialiased bilinear resize,
    optional mirror. uint8 stays uint8: torch's uint8 resize is several times faster than a float
    round trip, so the baseline is as fast as torch allows."""
    clip = torch.from_numpy(frames)[:, crop.y : crop.y + crop.h, crop.x : crop.x + crop.w]
    clip = clip.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    if (crop.h, crop.w) != (size, size):
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if crop.flip:
        clip = clip.flip(-1)
    return clip.permute(0, 2, 3, 1).contiguous().numpy()
