"""Transformer building blocks shared by the video and text towers.

Parameter names follow CLIP (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``) so that mapping
open_clip weights is a rename of the attention projections only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from avtool.models.attention import Attention, AttnImpl
from avtool.models.fused_mlp import fused_mlp

Activation = Literal["gelu", "quick_gelu"]


class QuickGELU(nn.Module):
    """x·σ(1.702x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: Activation) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """c_proj(act(c_fc(x))); ``fused`` computes it with the activation in the matmuls' epilogues
    (``avtool.models.fused_mlp``): same parameters, same maths."""

    def __init__(self, dim: int, hidden_dim: int, act: Activation = "gelu", fused: bool = False) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden_dim)
        self.gelu = make_activation(act)
        self.c_proj = nn.Linear(hidden_dim, dim)
        self.act = act
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Shape-only (meta) runs count FLOPs, which the counter sees only in the plain layers.
        if self.fused and x.device.type != "meta":
            return fused_mlp(x, self.c_fc, self.c_proj, self.act)
        return self.c_proj(self.gelu(self.c_fc(x)))

    def extra_repr(self) -> str:
        return f"fused={self.fused}"


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act: Activation = "gelu",
        attn_impl: AttnImpl = "sdpa",
        causal: bool = False,
        drop_path: float = 0.0,
        fused_mlp: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, impl=attn_impl, causal=causal)
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act, fused_mlp)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer block (Bertasius et al. 2021): temporal attention, then spatial attention, then MLP.

    Input is (B, 1 + T·N, D) with the CLS token first and patch tokens in frame-major order. Temporal
    attention runs over the T frames of each patch location; spatial attention runs over the N patches
    of each frame plus a per-frame copy of the CLS token, whose T updates are averaged. ``temporal_fc``
    starts at zero, so a fresh block computes exactly what the image block it was loaded from does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act: Activation = "gelu",
        attn_impl: AttnImpl = "sdpa",
        drop_path: float = 0.0,
        fused_mlp: bool = False,
    ) -> None:
        super().__init__()
        self.temporal_ln = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, num_heads, impl=attn_impl)
        self.temporal_fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, impl=attn_impl)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act, fused_mlp)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        B, L, D = tokens.shape
        T, N = num_frames, L // num_frames

        xt = tokens.reshape(B, T, N, D).transpose(1, 2).reshape(B * N, T, D)
        xt = self.temporal_attn(self.temporal_ln(xt))
        xt = xt.reshape(B, N, T, D).transpose(1, 2).reshape(B, L, D)
        tokens = tokens + self.drop_path(self.temporal_fc(xt))

        xs = torch.cat([cls.expand(B, T, D).reshape(B * T, 1, D), tokens.reshape(B * T, N, D)], dim=1)
        xs = self.attn(self.ln_1(xs))
        cls_update = xs[:, 0].reshape(B, T, D).mean(dim=1, keepdim=True)
        update = torch.cat([cls_update, xs[:, 1:].reshape(B, L, D)], dim=1)
        x = torch.cat([cls, tokens], dim=1) + self.drop_path(update)

        return x + self.drop_path(self.mlp(self.ln_2(x)))


def _attention_kernel_ops() -> frozenset:
    """The ops of the attention kernels that can be kept: those behind ``scaled_dot_product_attention``'s
    memory-efficient kernels (the ones this build has) and avtool's FlashAttention-4 op."""
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    sdpa_ops = {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}
    return frozenset(sdpa_ops | {torch.ops.avtool.fa4_forward.default})


_ATTENTION_KERNEL_OPS = _attention_kernel_ops()


def _keep_attention_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # Attention is the costliest op to recompute per byte it returns (O(N²) work for an N×D output and an
    # N-long logsumexp); everything else in the block is cheap per byte and is recomputed as usual.
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_KERNEL_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_KEEP_ATTENTION = functools.partial(create_selective_checkpoint_contexts, _keep_attention_policy)


class Transformer(nn.Module):
    """A stack of blocks with optional activation checkpointing of the first ``checkpoint_blocks``.

    Checkpointing the first k rather than the last k: early activations live longest, and the last
    blocks' activations are consumed first by backward anyway. Of the checkpointed blocks, the last
    ``keep_attention_blocks`` checkpoint selectively: they keep the outputs of their attention kernel
    (SDPA's flash, memory-efficient or cuDNN kernels, or ``fa4``; ``math`` attention is recomputed), so
    backward recomputes everything in them but the attention. The last rather than the first: memory peaks
    in the last block's backward, where a block that kept its attention needs less transient memory, and
    backward frees the kept outputs of the last blocks first (measured in benchmarks/README.md).
    ``low_precision_residual`` carries the residual stream in the autocast dtype under autocast (no effect
    without it).
    """

    def __init__(self, blocks: Sequence[nn.Module], low_precision_residual: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.checkpoint_blocks = 0
        self.keep_attention_blocks = 0
        self.low_precision_residual = low_precision_residual

    def set_grad_checkpointing(self, enable: bool = True, blocks: int | None = None, keep_attention: int = 0) -> None:
        """Checkpoint all blocks, or only the first ``blocks`` of them; ``enable=False`` turns it off.

        ``keep_attention``: how many of the checkpointed blocks (the last ones, at most all checkpointed
        ones) keep their attention outputs.
        """
        if blocks is not None and not 0 <= blocks <= len(self.blocks):
            raise ValueError(f"blocks={blocks} is outside 0..{len(self.blocks)}")
        if keep_attention < 0:
            raise ValueError(f"keep_attention={keep_attention} is negative")
        self.checkpoint_blocks = (len(self.blocks) if blocks is None else blocks) if enable else 0
        self.keep_attention_blocks = min(keep_attention, self.checkpoint_blocks)

    def keeps_attention(self, block: int) -> bool:
        """Whether block ``block`` (0-based) is checkpointed selectively, keeping its attention outputs."""
        return self.checkpoint_blocks - self.keep_attention_blocks <= block < self.checkpoint_blocks

    def forward(self, x: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        device = x.device.type
        # (Only devices that autocast knows: the FLOP counter runs models on "meta".)
        if self.low_precision_residual and device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
            # Autocast leaves the residual stream in float32 (LayerNorm outputs float32, and float32 + bf16
            # is float32); cast once here and every residual add stays in the autocast dtype.
            x = x.to(torch.get_autocast_dtype(device))
        for i, block in enumerate(self.blocks):
            if i < self.checkpoint_blocks and torch.is_grad_enabled():
                policy = {"context_fn": _KEEP_ATTENTION} if self.keeps_attention(i) else {}
                x = checkpoint(block, x, use_reentrant=False, **policy, **block_kwargs)
            else:
                x = block(x, **block_kwargs)
        return x


def init_transformer_(transformer: Transformer) -> None:
    """CLIP's initialisation for training from scratch (pretrained weights overwrite it)."""
    width = transformer.blocks[0].ln_1.normalized_shape[0]
    proj_std = width**-0.5 * (2 * len(transformer.blocks)) ** -0.5
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.blocks:
        attns = [block.attn] + ([block.temporal_attn] if isinstance(block, DividedSpaceTimeBlock) else [])
        for attn in attns:
            nn.init.normal_(attn.qkv.weight, std=attn_std)
            nn.init.zeros_(attn.qkv.bias)
            nn.init.normal_(attn.proj.weight, std=proj_std)
            nn.init.zeros_(attn.proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
