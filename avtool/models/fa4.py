"""FlashAttention-4 (the flash-attn-4 package's CuTe kernels) as a PyTorch custom op.

Optional: ``pip install 'avtool[fa4]'``; its kernels run on Hopper (H100/H200) and Blackwell GPUs. On
Hopper they are the FlashAttention-3 design (warp-specialised wgmma, TMA loads); SDPA's flash kernel is
FlashAttention-2. On an H200 at the ViT-B shape they are 1.05–1.10× cuDNN's attention and 1.5× SDPA's
flash (benchmarks/README.md).

Wrapping the kernels in ``torch.library.custom_op`` makes them one opaque op with a fake (shape)
implementation, so ``torch.compile`` keeps them in its graph instead of tracing into the package, and
selective checkpointing can keep their outputs by op, as it does SDPA's. Tensors use FlashAttention's
layout, (batch, tokens, heads, head_dim): a view of the fused qkv projection goes in without a copy and
the output is already laid out for the output projection.

The CPU kernel is the same computation in plain PyTorch (the forward with its logsumexp, the backward
from the kept output and logsumexp as in FlashAttention), so the op's autograd, compilation and
checkpointing are tested without a GPU; it is not meant to be fast.
"""

from __future__ import annotations

import torch

try:  # optional: pip install 'avtool[fa4]'
    from flash_attn.cute import interface as _fa4_interface
except ImportError:
    _fa4_interface = None

INSTALL_HINT = "pip install 'avtool[fa4]'"


def fa4_available() -> bool:
    """Whether the flash-attn-4 package (its CUDA kernels) can be imported here."""
    return _fa4_interface is not None


def _require_kernels() -> None:
    if _fa4_interface is None:
        raise ImportError(f"attn_impl='fa4' on CUDA needs the flash-attn-4 package ({INSTALL_HINT})")


@torch.library.custom_op("avtool::fa4_forward", mutates_args=(), device_types="cuda")
def fa4_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ/√d) v for (B, N, heads, d) inputs: the output (B, N, heads, d) and logsumexp (B, heads, N)."""
    _require_kernels()
    out, lse = _fa4_interface._flash_attn_fwd(q, k, v, causal=causal, return_lse=True)[:2]
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("avtool::fa4_backward", mutates_args=(), device_types="cuda")
def fa4_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``fa4_forward`` for q, k, v from its output and logsumexp (no N×N matrix is kept)."""
    _require_kernels()
    dq, dk, dv = _fa4_interface._flash_attn_bwd(q, k, v, out, grad_out.contiguous(), lse, causal=causal)[:3]
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision the kernels accumulate in: float32, or float64 for float64 inputs."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled scores, (B, heads, N, N), with -inf above the diagonal when causal."""
    scores = torch.einsum("bqhd,bkhd->bhqk", _wide(q), _wide(k)) * q.shape[-1] ** -0.5
    if causal:
        n_q, n_k = scores.shape[-2:]
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores


@fa4_forward.register_kernel("cpu")
def _fa4_forward_cpu(q, k, v, causal):
    scores = _scores(q, k, causal)
    lse = scores.logsumexp(dim=-1)
    probs = (scores - lse.unsqueeze(-1)).exp()
    out = torch.einsum("bhqk,bkhd->bqhd", probs, _wide(v))
    return out.to(q.dtype).contiguous(), lse.float().contiguous()


@fa4_backward.register_kernel("cpu")
def _fa4_backward_cpu(grad_out, q, k, v, out, lse, causal):
    # FlashAttention's backward: rebuild the probabilities from the logsumexp, then
    # dS = P ∘ (dP − rowsum(dO ∘ O)), which needs only the output, not the softmax's N×N input.
    scores = _scores(q, k, causal)
    probs = (scores - lse.to(scores.dtype).unsqueeze(-1)).exp()
    grad_out = _wide(grad_out)
    grad_v = torch.einsum("bhqk,bqhd->bkhd", probs, grad_out)
    grad_probs = torch.einsum("bqhd,bkhd->bhqk", grad_out, _wide(v))
    delta = (grad_out * _wide(out)).sum(dim=-1).transpose(1, 2).unsqueeze(-1)
    grad_scores = probs * (grad_probs - delta) * q.shape[-1] ** -0.5
    grad_q = torch.einsum("bhqk,bkhd->bqhd", grad_scores, _wide(k))
    grad_k = torch.einsum("bhqk,bqhd->bkhd", grad_scores, _wide(q))
    return tuple(g.to(t.dtype).contiguous() for g, t in ((grad_q, q), (grad_k, k), (grad_v, v)))


@fa4_forward.register_fake
def _(q, k, v, causal):
    B, N, H, _ = q.shape
    return q.new_empty(B, N, H, v.shape[-1]), q.new_empty(B, H, N, dtype=torch.float32)


@fa4_backward.register_fake
def _(grad_out, q, k, v, out, lse, causal):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, causal = inputs
    out, lse = output
    # The logsumexp is a statistic for the backward, not a differentiable output: a loss that used it
    # would otherwise get silently wrong gradients.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal = causal


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    return (*fa4_backward(grad_out, q, k, v, out, lse, ctx.causal), None)


fa4_forward.register_autograd(_backward, setup_context=_setup_context)


def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Attention of (B, N, heads, d) inputs through FlashAttention-4; returns (B, N, heads, d)."""
    if q.dtype not in (torch.float16, torch.bfloat16) and q.is_cuda:
        raise TypeError(f"fa4 needs float16/bfloat16 inputs, not {q.dtype}: use torch.autocast")
    if causal and q.shape[1] != k.shape[1]:
        # FlashAttention aligns a causal mask to the bottom right when lengths differ; the CPU kernel
        # does not, and self-attention never needs it.
        raise ValueError(f"causal fa4 is self-attention: {q.shape[1]} queries but {k.shape[1]} keys")
    return fa4_forward(q, k, v, causal)[0]
