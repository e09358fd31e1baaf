"""Video–text dual encoder (CLIP-style, as pretrained on Ego4D narrations)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from avtool.models.text import TextTowerConfig, TextTransformer
from avtool.models.video import VideoTowerConfig, build_video_tower


@dataclass(frozen=True)
class DualEncoderConfig:
    """A video tower and a text tower projecting into one embedding space, and the temperature."""

    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    """The video tower; its output_dim is the embedding size."""
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    """The text tower; its output_dim must equal the video tower's."""
    logit_scale_init: float = math.log(1 / 0.07)
    """Initial log of the inverse softmax temperature."""
    logit_scale_max: float = 4.6052
    """The log scale is clamped to at most this (ln 100) when used."""
    freeze_logit_scale: bool = False
    """Keep the temperature fixed at its initial value."""

    def __post_init__(self) -> None:
        if not self.video.output_dim or self.video.output_dim != self.text.output_dim:
            raise ValueError(
                f"video.output_dim={self.video.output_dim} and text.output_dim={self.text.output_dim} "
                "must be equal and set: they are the shared embedding size"
            )

    @property
    def embed_dim(self) -> int:
        return self.video.output_dim

    @classmethod
    def tiny(cls, **overrides: object) -> DualEncoderConfig:
        """Tiny towers for CPU tests and the CPU training demo."""
        return cls(video=VideoTowerConfig.tiny(), text=TextTowerConfig.tiny(), **overrides)


class DualEncoderOutput(NamedTuple):
    video: torch.Tensor
    """L2-normalised video embeddings (B, embed_dim)."""
    text: torch.Tensor
    """L2-normalised text embeddings (B, embed_dim)."""
    logit_scale: torch.Tensor
    """exp of the clamped log scale: multiply similarities by it to get logits."""


class DualEncoder(nn.Module):
    def __init__(self, cfg: DualEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = build_video_tower(cfg.video)
        self.text = TextTransformer(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init), requires_grad=not cfg.freeze_logit_scale)

    def set_grad_checkpointing(self, enable: bool = True, keep_attention: int = 0) -> None:
        """Checkpoint every block of both towers; the last ``keep_attention`` video blocks keep their attention."""
        self.video.set_grad_checkpointing(enable, keep_attention=keep_attention)
        self.text.set_grad_checkpointing(enable)

    def encode_video(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.video(video)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> DualEncoderOutput:
        # Clamp functionally rather than in place after the optimiser step, so every caller gets it.
        scale = self.logit_scale.clamp(max=self.cfg.logit_scale_max).exp()
        return DualEncoderOutput(self.encode_video(video), self.encode_text(text), scale)
