"""Multi-head self-attention with a selectable kernel.

The kernel matters for memory, not for maths: ``math`` is the paper's baseline that materialises the
N×N attention matrix for backward; every other choice computes the same function without storing it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from avtool.model_options import ATTN_IMPLS, AttnImpl
from avtool.models.fa4 import fa4_attention, fa4_available

try:  # optional: pip install 'avtool[flash]'
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


KEEPABLE_IMPLS: tuple[str, ...] = ("sdpa", "flash", "efficient", "cudnn", "fa4")
"""The implementations whose kernel is one op that selective checkpointing can keep: SDPA's
memory-efficient kernels (ATen ops) and FlashAttention-4 (avtool's custom op)."""

_SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def check_keeps_attention(impl: str) -> str | None:
    """Why ``impl`` cannot keep its outputs under selective checkpointing, or None when it can."""
    if impl in KEEPABLE_IMPLS:
        return None
    return f"needs an attention kernel op ({', '.join(KEEPABLE_IMPLS)}), not {impl!r}"


def flash_attn_available() -> bool:
    return flash_attn_func is not None


def check_attn_impl(impl: str, on_cuda: bool | None = None) -> str | None:
    """Return a description of what is wrong with ``impl``, or None when it can be used here.

    ``on_cuda``: whether the model will run on a CUDA device (None: whether this machine has one). Only
    there does ``fa4`` need its package; on a CPU it runs its plain-PyTorch kernel.
    """
    if impl not in ATTN_IMPLS:
        return f"attn_impl={impl!r} is not one of {', '.join(ATTN_IMPLS)}"
    if impl == "flash-attn" and not flash_attn_available():
        return "attn_impl='flash-attn' needs the flash-attn package (pip install 'avtool[flash]')"
    if impl == "fa4" and not fa4_available():
        if torch.cuda.is_available() if on_cuda is None else on_cuda:
            return "attn_impl='fa4' on CUDA needs the flash-attn-4 package (pip install 'avtool[fa4]')"
    return None


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: AttnImpl = "sdpa", causal: bool = False
) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q, k, v of shape (B, heads, N, head_dim)."""
    if impl == "math":
        # Explicit on purpose: autograd keeps the (B, heads, N, N) probabilities, which is the baseline's
        # memory cost that Fig. 3 of the paper measures.
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if causal:
            n = q.shape[-2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            attn = attn.masked_fill(mask, float("-inf"))
        return attn.softmax(dim=-1) @ v
    if q.device.type == "meta":
        # Shape-only runs (FLOP counting) decompose SDPA into math whatever the backend; the memory-efficient
        # kernel's op has a meta implementation, so counters and selective checkpointing see a kernel's op.
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, is_causal=causal)[0]
    if impl == "flash-attn":
        if flash_attn_func is None:
            raise ImportError(check_attn_impl(impl))
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"flash-attn needs float16/bfloat16 inputs, not {q.dtype}: use torch.autocast")
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
        return out.transpose(1, 2)
    if impl == "fa4":
        if not q.shape == k.shape == v.shape:
            raise ValueError(f"fa4 is self-attention: q, k, v of one shape, not {[tuple(t.shape) for t in (q, k, v)]}")
        # Separate tensors are packed (a copy); models pass their fused projection to fused_attention.
        return fa4_attention(torch.stack([t.transpose(1, 2) for t in (q, k, v)], dim=2), causal).transpose(1, 2)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    with sdpa_kernel(_SDPA_BACKENDS[impl]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def fused_attention(qkv: torch.Tensor, impl: AttnImpl = "sdpa", causal: bool = False) -> torch.Tensor:
    """Self-attention of a fused projection viewed as (B, N, 3, heads, head_dim); returns (B, N, heads,
    head_dim). ``fa4`` takes the projection whole; the others take strided views of q, k and v."""
    if impl == "fa4" and qkv.device.type != "meta":
        return fa4_attention(qkv, causal)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return attention(q, k, v, impl, causal).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with a fused qkv projection (same parameters as ``nn.MultiheadAttention``)."""

    def __init__(self, dim: int, num_heads: int, impl: AttnImpl = "sdpa", causal: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        problem = check_attn_impl(impl)
        if problem:
            raise (ImportError if impl in ("flash-attn", "fa4") else ValueError)(problem)
        self.num_heads = num_heads
        self.impl = impl
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)
        return self.proj(fused_attention(qkv, self.impl, self.causal).reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, impl={self.impl!r}, causal={self.causal}"
