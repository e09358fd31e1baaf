"""Mixup and CutMix of whole clips on the GPU, with label smoothing (EK-100 CLS fine-tuning).

As timm's batch mode: one mixing coefficient per batch, each clip mixed with the clip at the mirrored
position of the batch; CutMix pastes the same box in every frame. The targets become soft labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avtool.options import option


@dataclass(frozen=True)
class MixupConfig:
    mixup_alpha: float = option(
        0.8, flags="--mixup", panel="Optimisation", help="Beta(α, α) of the Mixup coefficient; 0: no Mixup."
    )
    cutmix_alpha: float = option(
        1.0, flags="--cutmix", panel="Optimisation", help="Beta(α, α) of the CutMix area; 0: no CutMix."
    )
    switch_prob: float = 0.5
    """With both on, probability of CutMix instead of Mixup for a batch."""
    label_smoothing: float = option(0.1, panel="Optimisation", help="Label mass spread uniformly over all classes.")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(labels), num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off
    )


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mix_batch(
    video: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: MixupConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) clips and (B,) labels -> mixed clips and (B, num_classes) soft targets. Draws from
    torch's global generator (which the training loop seeds every step)."""
    targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
    if not cfg.enabled:
        return video, targets
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or float(torch.rand(())) < cfg.switch_prob)
    if use_cutmix:
        lam = _beta(cfg.cutmix_alpha)
        H, W = video.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        video = video.clone()
        video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually pasted
    else:
        lam = _beta(cfg.mixup_alpha)
        video = video * lam + video.flip(0) * (1 - lam)
    return video, targets * lam + targets.flip(0) * (1 - lam)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
