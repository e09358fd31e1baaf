"""The optimiser of a job: AdamW, SGD or Lion over parameter groups: with and without weight decay, and per layer
with layer-wise lr decay."""

from __future__ import annotations

import re

import torch
from torch import nn

from avtool.train.config import OptimConfig

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING = re.compile(
    r"(?:^|\.)(?:patch_embed|pos_embed|positional_embedding|class_embedding|temporal_embedding|cls_token"
    r"|mask_token|token_embedding|ln_pre)(?:\.|$)"
)


def layer_id(name: str, num_layers: int) -> int:
    """BEiT's layer of a parameter for layer-wise lr decay: 0 for the embeddings (and the norm before the first
    block), i + 1 for block i, ``num_layers`` + 1 for what follows the blocks (final norm, head)."""
    if match := _BLOCK.search(name):
        return int(match.group(1)) + 1
    return 0 if _EMBEDDING.search(name) else num_layers + 1


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate factor of each parameter: ``decay`` ** (num_layers + 1 − layer), so the head trains at the
    full rate and each layer below at ``decay`` times the one above (1 everywhere when ``decay`` is 1)."""
    names = [name for name, _ in model.named_parameters()]
    num_layers = max((int(m.group(1)) + 1 for n in names if (m := _BLOCK.search(n))), default=0)
    return {name: decay ** (num_layers + 1 - layer_id(name, num_layers)) for name in names}


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Weight decay on matrices only: biases, norm scales and the temperature (ndim < 2) are not decayed,
    as in CLIP and the reference recipes, nor what the model names in ``no_weight_decay()`` (VideoMAE's mask
    token). With ``layer_decay`` < 1, one group per layer and kind, each with its ``lr_scale``
    (``layer_scales``). Frozen parameters are left out."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    scales = layer_scales(model, layer_decay)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decayed = param.ndim >= 2 and name not in exempt
            groups.setdefault((decayed, scales[name]), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (decayed, scale), params in groups.items() if params or scale == 1.0
    ]  # fmt: skip


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
    groups = parameter_groups(model, cfg.weight_decay, cfg.layer_decay)
    # One fused kernel for the whole update on the GPU instead of a few per parameter tensor.
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, times each group's layer-decay factor."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
