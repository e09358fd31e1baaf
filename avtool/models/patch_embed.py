"""Cube (tubelet) patch embedding for videos."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Split a video (B, C, T, H, W) into t×p×p cubes and embed each: a Conv3d with stride = kernel.

    Returns (B, T/t · H/p · W/p, D) tokens in frame-major order (all patches of the first time step,
    then the next). ``fast=True`` computes the same thing as one matrix multiply on unfolded cubes
    (AVION's "fast conv1"), which avoids cuDNN's slow path for a conv whose kernel equals its stride.
    """

    def __init__(
        self, width: int, patch_size: int, tubelet_size: int = 1, in_chans: int = 3, fast: bool = False,
        bias: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.fast = fast
        kernel = (tubelet_size, patch_size, patch_size)
        # CLIP's conv1 has no bias (so pretrained weights map one to one); VideoMAE's has one.
        self.proj = nn.Conv3d(in_chans, width, kernel_size=kernel, stride=kernel, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return F.linear(self.unfold(x), self.proj.weight.flatten(1), self.proj.bias)
        return self.proj(x).flatten(2).transpose(1, 2)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, cubes, C·t·p·p): cubes frame-major, values in the conv weight's order."""
        B, C, T, H, W = x.shape
        t, p = self.tubelet_size, self.patch_size
        x = x.reshape(B, C, T // t, t, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(B, (T // t) * (H // p) * (W // p), C * t * p * p)

    def extra_repr(self) -> str:
        return f"fast={self.fast}"
