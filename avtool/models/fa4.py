"""FlashAttention-4 (the flash-attn-4 package's CuTe kernels) as a PyTorch custom op.

Optional: ``pip install 'avtool[fa4]'``; its kernels run on Hopper (H100/H200) and Blackwell GPUs. On
Hopper they are the FlashAttention-3 design (warp-specialised wgmma, TMA loads); SDPA's flash kernel is
FlashAttention-2. On an H200 at the ViT-B shape they are 1.05–1.10× cuDNN's attention and 1.5× SDPA's
flash (benchmarks/README.md).

Wrapping the kernels in ``torch.library.custom_op`` makes them one opaque op with a fake (shape)
implementation, so ``torch.compile`` keeps them in its graph instead of tracing into the package, and
selective checkpointing can keep their outputs by op, as it does SDPA's.

The op takes the fused qkv projection itself, viewed as (batch, tokens, 3, heads, head_dim). The kernels
read q, k and v as strided views of it, and the backward writes dq, dk and dv straight into one gradient
of that shape: autograd would otherwise gather three separate gradients into it, a copy of the whole
projection per block. The output, (batch, tokens, heads, head_dim), is already laid out for the output
projection.

The CPU kernel is the same computation in plain PyTorch (the forward with its logsumexp, the backward
from the kept output and logsumexp as in FlashAttention), so the op's autograd, compilation and
checkpointing are tested without a GPU; it is not meant to be fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class HopperTiles:
    """Tile shapes of FA4's Hopper (SM90) kernels; None keeps the package's choice.

    The package's shapes are FlashAttention-3's, tuned on long sequences. A sequence that is not a
    multiple of the tile wastes the rest of its last tile in both the query and the key direction.
    """

    forward: tuple[int, int, bool, bool] | None = None
    """The forward kernel's queries and keys per thread block, whether P·V takes P from registers, and
    whether a warpgroup overlaps its two matmuls (the package's ``tile_mn``, ``mma_pv_is_rs``,
    ``intra_wg_overlap``)."""
    backward: tuple[tuple[str, int | bool], ...] | None = None
    """Fields of the package's ``BwdConfig`` for the backward kernel (tile sizes, operand swaps, atom
    layouts, pipeline stages)."""


PACKAGE_TILES = HopperTiles()


def backward_tiles(m: int, n: int, swap_sdp: bool, swap_dkv: bool, atoms: tuple[int, int, int], **extra) -> tuple:
    """``HopperTiles.backward`` for m queries × n keys per block, the S/dP and dK/dV operand swaps and the
    (S/dP, dK/dV, dQ) atom layouts; ``extra``: other ``BwdConfig`` fields."""
    fields = dict(
        m_block_size=m, n_block_size=n, num_stages_Q=2, num_stages_dO=2, num_stages_PdS=2, SdP_swapAB=swap_sdp,
        dKV_swapAB=swap_dkv, dQ_swapAB=False, AtomLayoutMSdP=atoms[0], AtomLayoutNdKV=atoms[1],
        AtomLayoutMdQ=atoms[2], **extra,
    )  # fmt: skip
    return tuple(fields.items())


MEASURED_TILES: dict[tuple[int, int, bool], HopperTiles] = {
    # ViT-B/16 at 224², 4 frames: forward 1.40 against 1.54 ms, backward 3.48 against 3.67 ms (B=256).
    (785, 64, False): HopperTiles(
        forward=(192, 160, True, False), backward=backward_tiles(64, 160, False, True, (1, 2, 1))
    ),
    # 8 frames: forward 2.27 against 2.37 ms, backward 5.98 against 6.24 ms (B=128).
    (1569, 64, False): HopperTiles(
        forward=(192, 144, True, False), backward=backward_tiles(64, 128, True, False, (1, 2, 1), dQ_single_wg=True)
    ),
}
"""(tokens, head_dim, causal) → the fastest tiles of ``benchmarks/fa4_tiles.py`` on an H200 (torch 2.11,
flash-attn-4 4.0.0b36) that agree with the package's; every other shape keeps the package's. Two of the
swept shapes that the package accepts give wrong gradients (64×144 and 128×80 with dKV swapped), so a
shape enters this table only measured and checked."""


def hopper_tiles(tokens: int, head_dim: int, causal: bool) -> HopperTiles:
    """The tile shapes avtool uses for self-attention over ``tokens`` tokens on a Hopper GPU."""
    return MEASURED_TILES.get((tokens, head_dim, causal), PACKAGE_TILES)


def _is_hopper(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.get_device_capability(t.device)[0] == 9


@contextlib.contextmanager
def _backward_tiles(tiles: HopperTiles) -> Iterator[None]:
    # The package picks its Hopper backward tiles inside the call, from a module-level function, and
    # offers no argument for them; swap that function for the duration of the call.
    if tiles.backward is None:
        yield
        return
    config = _fa4_interface.BwdConfig(**dict(tiles.backward))
    package_choice = _fa4_interface._tile_size_bwd_sm90
    _fa4_interface._tile_size_bwd_sm90 = lambda *args, **kwargs: config
    try:
        yield
    finally:
        _fa4_interface._tile_size_bwd_sm90 = package_choice


def run_forward_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, tiles: HopperTiles
) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's forward on (B, N, heads, d) CUDA tensors: output and logsumexp (B, heads, N)."""
    _require_kernels()
    chosen = {}
    if tiles.forward is not None and _is_hopper(q):
        tile_m, tile_n, pv_from_registers, overlap = tiles.forward
        chosen = dict(tile_mn=(tile_m, tile_n), mma_pv_is_rs=pv_from_registers, intra_wg_overlap=overlap)
    out, lse = _fa4_interface._flash_attn_fwd(q, k, v, causal=causal, return_lse=True, **chosen)[:2]
    return out, lse


def run_backward_kernel(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    tiles: HopperTiles,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The package's backward: dq, dk, dv, written into the given (possibly strided) tensors."""
    _require_kernels()
    with _backward_tiles(tiles if _is_hopper(q) else PACKAGE_TILES):
        grads = _fa4_interface._flash_attn_bwd(
            q, k, v, out, grad_out.contiguous(), lse, causal=causal, dq=dq, dk=dk, dv=dv
        )
    return grads[:3]


@torch.library.custom_op("avtool::fa4_forward", mutates_args=(), device_types="cuda")
def fa4_forward(qkv: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of a fused (B, N, 3, heads, d) projection: the output (B, N, heads, d) and the
    logsumexp (B, heads, N)."""
    q, k, v = qkv.unbind(2)
    out, lse = run_forward_kernel(q, k, v, causal, hopper_tiles(qkv.shape[1], qkv.shape[-1], causal))
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("avtool::fa4_backward", mutates_args=(), device_types="cuda")
def fa4_backward(
    grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, causal: bool
) -> torch.Tensor:
    """The gradient of ``fa4_forward`` for the fused projection, (B, N, 3, heads, d), from its output and
    logsumexp (no N×N matrix is kept)."""
    grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    tiles = hopper_tiles(qkv.shape[1], qkv.shape[-1], causal)
    run_backward_kernel(grad_out, *qkv.unbind(2), out, lse, causal, tiles, *grad_qkv.unbind(2))
    return grad_qkv


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision the kernels accumulate in: float32, or float64 for float64 inputs."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled scores, (B, heads, N, N), with -inf above the diagonal when causal."""
    scores = torch.einsum("bqhd,bkhd->bhqk", _wide(q), _wide(k)) * q.shape[-1] ** -0.5
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores


@fa4_forward.register_kernel("cpu")
def _fa4_forward_cpu(qkv, causal):
    q, k, v = qkv.unbind(2)
    scores = _scores(q, k, causal)
    lse = scores.logsumexp(dim=-1)
    probs = (scores - lse.unsqueeze(-1)).exp()
    out = torch.einsum("bhqk,bkhd->bqhd", probs, _wide(v))
    return out.to(qkv.dtype).contiguous(), lse.float().contiguous()


@fa4_backward.register_kernel("cpu")
def _fa4_backward_cpu(grad_out, qkv, out, lse, causal):
    # FlashAttention's backward: rebuild the probabilities from the logsumexp, then
    # dS = P ∘ (dP − rowsum(dO ∘ O)), which needs only the output, not the softmax's N×N input.
    q, k, v = qkv.unbind(2)
    scores = _scores(q, k, causal)
    probs = (scores - lse.to(scores.dtype).unsqueeze(-1)).exp()
    grad_out = _wide(grad_out)
    grad_v = torch.einsum("bhqk,bqhd->bkhd", probs, grad_out)
    grad_probs = torch.einsum("bqhd,bkhd->bhqk", grad_out, _wide(v))
    delta = (grad_out * _wide(out)).sum(dim=-1).transpose(1, 2).unsqueeze(-1)
    grad_scores = probs * (grad_probs - delta) * q.shape[-1] ** -0.5
    grad_q = torch.einsum("bhqk,bkhd->bqhd", grad_scores, _wide(k))
    grad_k = torch.einsum("bhqk,bqhd->bkhd", grad_scores, _wide(q))
    return torch.stack((grad_q, grad_k, grad_v), dim=2).to(qkv.dtype)


@fa4_forward.register_fake
def _(qkv, causal):
    B, N, _, H, d = qkv.shape
    return qkv.new_empty(B, N, H, d), qkv.new_empty(B, H, N, dtype=torch.float32)


@fa4_backward.register_fake
def _(grad_out, qkv, out, lse, causal):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    qkv, causal = inputs
    out, lse = output
    # The logsumexp is a statistic for the backward, not a differentiable output: a loss that used it
    # would otherwise get silently wrong gradients.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, out, lse)
    ctx.causal = causal


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    return fa4_backward(grad_out, qkv, out, lse, ctx.causal), None


fa4_forward.register_autograd(_backward, setup_context=_setup_context)


def fa4_attention(qkv: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Self-attention of a fused (B, N, 3, heads, d) projection through FlashAttention-4; returns
    (B, N, heads, d)."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"fa4 takes a fused projection of shape (B, N, 3, heads, d), not {tuple(qkv.shape)}")
    if qkv.dtype not in (torch.float16, torch.bfloat16) and qkv.is_cuda:
        raise TypeError(f"fa4 needs float16/bfloat16 inputs, not {qkv.dtype}: use torch.autocast")
    return fa4_forward(qkv, causal)[0]
