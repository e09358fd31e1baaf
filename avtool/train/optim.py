"""The optimiser of a job: AdamW, SGD or Lion over two parameter groups (with and without weight decay)."""

from __future__ import annotations

import torch
from torch import nn

from avtool.train.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norm scales and the temperature (ndim < 2) are not decayed,
    as in CLIP and the reference recipes, nor what the model names in ``no_weight_decay()`` (VideoMAE's mask
    token). Frozen parameters are left out."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and name not in exempt else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023), as AVION's released VideoMAE run uses it: the update is the sign of
    β1·m + (1 − β1)·g, then m ← β2·m + (1 − β2)·g, with decoupled weight decay p ← p·(1 − lr·wd)."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(momentum.lerp(p.grad, 1 - beta1).sign_(), alpha=-group["lr"])
                momentum.lerp_(p.grad, 1 - beta2)
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    # One fused kernel for the whole update on the GPU instead of a few per parameter tensor.
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
