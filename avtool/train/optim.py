"""The optimiser of a job: AdamW or SGD over two parameter groups (with and without weight decay)."""

from __future__ import annotations

import torch
from torch import nn

from avtool.train.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norm scales and the temperature (ndim < 2) are not decayed,
    as in CLIP and the reference recipes. Frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    # One fused kernel for the whole update on the GPU instead of a few per parameter tensor.
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
