"""Sweep FlashAttention-4's Hopper tile shapes at the dual encoder's attention shapes, and time its backward
writing dq, dk, dv into one fused gradient.

    python benchmarks/fa4_tiles.py --out DIR [--tokens 785 --tokens 197 ...] [--list]

The package's Hopper tiles are FlashAttention-3's, tuned on long sequences: 192×128 (queries × keys) for
the forward and 128×128 for the backward at head_dim 64. At 785 tokens (4 frames of 14×14 patches and
CLS) the last tile of each direction is mostly padding, so a tile computes 1.3–1.5× the useful work. The
candidates below are the shapes that the package's own feasibility search (``sm90_config_search.py``:
register and shared-memory budgets, wgmma divisibility) accepts for head_dim 64 and that pad 785 less.

Each candidate runs at B·N ≈ 256·785 tokens per call, checked against the package's choice (largest
absolute difference of the output or of dq, dk, dv) and timed with CUDA events. TFLOP/s counts useful work
only (4·B·heads·N²·d forward, 2.5× that backward); ``padded_work`` is the tiles' work over the useful work.
The ``fused-grad`` rows time the package's backward with the package's tiles two ways: separate dq, dk,
dv gathered into the (B, N, 3, heads, d) gradient as autograd would (``torch.stack``), and dq, dk, dv
written straight into that gradient (what avtool's op does); the two must agree exactly.

``--list`` writes the candidates and their padding without a GPU (it checks the script).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from avtool.bench.timing import mean_ms
from avtool.models.fa4 import (
    PACKAGE_TILES,
    HopperTiles,
    backward_tiles,
    fa4_available,
    run_backward_kernel,
    run_forward_kernel,
)
from avtool.results import write_results

CUDA = torch.device("cuda")
PACKAGE_FORWARD = (192, 128, True, True)
PACKAGE_BACKWARD = backward_tiles(128, 128, True, False, (1, 2, 2))
"""What the package picks on Hopper at head_dim 64 (``_tile_size_fwd_sm90``, ``_tile_size_bwd_sm90``)."""

FORWARD_CANDIDATES: list[tuple[int, int, bool, bool]] = [
    (128, 128, True, True),
    (128, 144, True, True),
    (128, 160, True, True),
    (128, 176, True, True),
    (128, 192, True, True),
    (192, 144, True, False),
    (192, 160, True, False),
]


BACKWARD_CANDIDATES: list[tuple] = [
    backward_tiles(64, 128, True, False, (1, 2, 1)),
    backward_tiles(64, 128, True, False, (1, 2, 1), dQ_single_wg=True),
    backward_tiles(64, 96, False, True, (1, 2, 1)),
    backward_tiles(64, 144, False, True, (1, 2, 1)),
    backward_tiles(64, 160, False, True, (1, 2, 1)),
    backward_tiles(64, 192, False, True, (1, 2, 1)),
    backward_tiles(128, 80, False, True, (2, 2, 2)),
    backward_tiles(128, 144, False, True, (2, 2, 2)),
]


def padded_work(tokens: int, tile_m: int, tile_n: int) -> float:
    """The work of whole tiles over the useful tokens × tokens work (≥ 1)."""
    return math.ceil(tokens / tile_m) * tile_m * math.ceil(tokens / tile_n) * tile_n / tokens**2


def forward_label(tile: tuple[int, int, bool, bool]) -> str:
    m, n, rs, overlap = tile
    return f"{m}x{n}" + (" RS" if rs else "") + (" overlap" if overlap else "")


def backward_label(tiles: tuple) -> str:
    fields = dict(tiles)
    swaps = "".join(name[0] for name, on in (("S", fields["SdP_swapAB"]), ("K", fields["dKV_swapAB"]),
                                              ("Q", fields["dQ_swapAB"])) if on)  # fmt: skip
    atoms = f"{fields['AtomLayoutMSdP']}{fields['AtomLayoutNdKV']}{fields['AtomLayoutMdQ']}"
    single = " dQ1wg" if fields.get("dQ_single_wg") else ""
    return f"{fields['m_block_size']}x{fields['n_block_size']} swap{swaps or '-'} atoms{atoms}{single}"


def candidates() -> list[tuple[str, str, HopperTiles, tuple[int, int]]]:
    """(pass, label, tiles, (tile_m, tile_n)) for every shape swept, the package's first."""
    rows = [("forward", "package " + forward_label(PACKAGE_FORWARD), PACKAGE_TILES, PACKAGE_FORWARD[:2])]
    rows += [("forward", forward_label(t), HopperTiles(forward=t), t[:2]) for t in FORWARD_CANDIDATES]
    rows.append(("backward", "package " + backward_label(PACKAGE_BACKWARD), PACKAGE_TILES,
                 backward_tile_mn(PACKAGE_BACKWARD)))  # fmt: skip
    rows += [("backward", backward_label(b), HopperTiles(backward=b), backward_tile_mn(b)) for b in BACKWARD_CANDIDATES]
    return rows


def backward_tile_mn(tiles: tuple) -> tuple[int, int]:
    fields = dict(tiles)
    return fields["m_block_size"], fields["n_block_size"]


def sweep(tokens: int, batch: int, heads: int, head_dim: int, warmup: int, steps: int) -> list[dict]:
    generator = torch.Generator("cuda").manual_seed(0)
    shape = dict(device="cuda", dtype=torch.bfloat16, generator=generator)
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, **shape)
    q, k, v = qkv.unbind(2)
    grad_out = torch.randn(batch, tokens, heads, head_dim, **shape)
    forward_flop = 4 * batch * heads * tokens**2 * head_dim
    out, lse = run_forward_kernel(q, k, v, False, PACKAGE_TILES)
    reference_out = out.clone()
    reference_grads = [g.clone() for g in run_backward_kernel(grad_out, q, k, v, out, lse, False, PACKAGE_TILES)]
    base = dict(tokens=tokens, batch=batch, heads=heads, head_dim=head_dim)
    # The fused-gradient rows first: a candidate that faults on the GPU would spoil everything after it.
    rows = _fused_gradient_rows(base, qkv, grad_out, out, lse, warmup, steps)
    for kind, label, tiles, (tile_m, tile_n) in candidates():
        started = time.perf_counter()
        try:
            if kind == "forward":
                result = [run_forward_kernel(q, k, v, False, tiles)[0]]
                reference, flop = [reference_out], forward_flop
                ms = mean_ms(lambda tiles=tiles: run_forward_kernel(q, k, v, False, tiles), warmup, steps, CUDA)
            else:
                result = run_backward_kernel(grad_out, q, k, v, out, lse, False, tiles)
                reference, flop = reference_grads, 2.5 * forward_flop
                ms = mean_ms(
                    lambda tiles=tiles: run_backward_kernel(grad_out, q, k, v, out, lse, False, tiles),
                    warmup, steps, CUDA,
                )  # fmt: skip
        except Exception as error:  # a shape the kernel generator rejects is a result, not a crash
            print(f"{tokens:5d} {kind:8s} {label:34s} failed: {type(error).__name__}: {error}".splitlines()[0])
            rows.append(base | dict(kind=kind, tiles=label, error=f"{type(error).__name__}: {error}"[:300]))
            continue
        first_s = time.perf_counter() - started - ms * (warmup + steps) / 1e3
        diff = max((r - e).abs().max().item() for r, e in zip(result, reference, strict=True))
        row = base | dict(
            kind=kind, tiles=label, ms=round(ms, 3), tflops=round(flop / ms / 1e9, 1),
            padded_work=round(padded_work(tokens, tile_m, tile_n), 3), max_abs_diff=diff,
            first_call_s=round(first_s, 1),
        )  # fmt: skip
        rows.append(row)
        print(f"{tokens:5d} {kind:8s} {label:34s} {ms:7.3f} ms {row['tflops']:6.1f} TFLOP/s "
              f"padded {row['padded_work']:.2f}  |Δ| {diff:.2g}  first {first_s:.1f} s", flush=True)  # fmt: skip
    return rows


def _fused_gradient_rows(base, qkv, grad_out, out, lse, warmup, steps) -> list[dict]:
    q, k, v = qkv.unbind(2)
    fused = torch.empty_like(qkv)

    def gathered() -> torch.Tensor:
        return torch.stack(run_backward_kernel(grad_out, q, k, v, out, lse, False, PACKAGE_TILES), dim=2)

    def direct() -> torch.Tensor:
        run_backward_kernel(grad_out, q, k, v, out, lse, False, PACKAGE_TILES, *fused.unbind(2))
        return fused

    # The backward adds dq with atomics, so two calls agree only to rounding; dk and dv are exact.
    exact = (gathered()[:, :, 1:] == direct()[:, :, 1:]).all().item()
    rows = []
    for label, run in (("separate dq, dk, dv + stack", gathered), ("into the fused gradient", direct)):
        ms = mean_ms(run, warmup, steps, CUDA)
        rows.append(base | dict(kind="fused-grad", tiles=label, ms=round(ms, 3), dk_dv_identical=exact))
        print(f"{base['tokens']:5d} fused-grad {label:31s} {ms:7.3f} ms  dk, dv identical: {exact}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for fa4_tiles.csv/.json")
    parser.add_argument("--tokens", type=int, action="append", help="tokens per video, N (default: 785)")
    parser.add_argument("--tokens-per-call", type=int, default=256 * 785, help="B·N: the batch is this / N")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--list", action="store_true", help="write the candidates and their padding only")
    args = parser.parse_args()
    token_counts = args.tokens or [785]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.list:
        rows = [
            dict(tokens=n, kind=kind, tiles=label, padded_work=round(padded_work(n, *tile), 3))
            for n in token_counts
            for kind, label, _, tile in candidates()
        ]
    else:
        if not (torch.cuda.is_available() and fa4_available()):
            raise SystemExit("fa4_tiles.py needs a CUDA GPU and the flash-attn-4 package (or --list)")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; bf16, heads={args.heads} d={args.head_dim}")
        rows = []
        for n in token_counts:
            rows += sweep(n, max(1, args.tokens_per_call // n), args.heads, args.head_dim, args.warmup, args.steps)
    write_results(args.out, "fa4_tiles", rows, vars(args) | {"out": str(args.out)})


if __name__ == "__main__":
    main()
