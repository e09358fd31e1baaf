"""Video classifier: a video tower with a linear head, for fine-tuning on action classes."""

from __future__ import annotations

import torch
from torch import nn

from avtool.models.video import VideoTowerConfig, VideoViT, build_video_tower


class VideoClassifier(nn.Module):
    """Video tower + dropout + linear head (EK-100 action classification has 3,806 classes)."""

    def __init__(self, cfg: VideoTowerConfig, num_classes: int = 3806, dropout: float = 0.5) -> None:
        super().__init__()
        self.cfg = cfg
        self.video: VideoViT = build_video_tower(cfg)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.video.output_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def set_grad_checkpointing(self, enable: bool = True, blocks: int | None = None, keep_attention: int = 0) -> None:
        self.video.set_grad_checkpointing(enable, blocks, keep_attention)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.dropout(self.video(video)))
