"""Time the transformer MLP at the ViT-B dual encoder's shape: plain (eager and compiled) against the fused
MLP, whose GELU is in quack's GEMM epilogues; and sweep quack's GEMM tiles for the two fused GEMMs.

    python benchmarks/fused_mlp.py --out DIR [--tokens 200960] [--tiny]

The MLP is (tokens × 768) → 3072 → 768 in bf16 with exact GELU, tokens = 256 videos × 785. Each variant
is checked against the eager MLP (largest absolute difference of the output and of the input's gradient)
and timed with CUDA events, forward and forward + backward. The sweep times the fused GEMMs alone next to
cuBLAS's plain product of the same shape (torch.mm, no bias, no GELU), the floor they have to reach.
Rows go to DIR/fused_mlp.csv and .json. ``--tiny`` runs small shapes on the CPU (checks the script).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from avtool.bench.timing import mean_ms
from avtool.models.blocks import Mlp
from avtool.models.fused_mlp import HOPPER_GEMM_TILE, fused_mlp_available, run_act_linear_backward, run_linear_act
from avtool.results import write_results

# (tile_m, tile_n, pingpong, cluster_m, cluster_n): quack's SM90 tuning space has 44 such shapes.
GEMM_CANDIDATES = [
    tuple(HOPPER_GEMM_TILE.values()),
    (256, 128, False, 2, 1),
    (256, 192, False, 2, 1),
    (128, 192, True, 2, 1),
    (128, 192, True, 1, 2),
]
"""The first is avtool's choice (``HOPPER_GEMM_TILE``)."""


def mlp_rows(tokens: int, dim: int, hidden: int, device: torch.device, dtype, warmup: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    plain = Mlp(dim, hidden).to(device, dtype)
    fused = Mlp(dim, hidden, fused=True).to(device, dtype)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(tokens, dim, device=device, dtype=dtype)
    variants = {"eager": plain, "compiled": torch.compile(plain), "fused": fused}
    reference, rows = None, []
    flop = 2 * 2 * tokens * dim * hidden
    for name, module in variants.items():
        started = time.perf_counter()
        params = [x, *module.parameters()]  # every gradient, as in training
        out = module(x)
        grad = torch.autograd.grad(out, params, grad_out)[0]
        first_s = time.perf_counter() - started
        reference = reference or (out.detach(), grad)
        with torch.no_grad():
            forward_ms = mean_ms(lambda m=module: m(x), warmup, steps, device)

        def both(m=module, params=params) -> None:
            torch.autograd.grad(m(x), params, grad_out)

        both_ms = mean_ms(both, warmup, steps, device)
        row = dict(
            kind="mlp", variant=name, tokens=tokens, forward_ms=round(forward_ms, 3),
            forward_backward_ms=round(both_ms, 3), tflops=round(3 * flop / both_ms / 1e9, 1),
            max_abs_diff_out=(out.detach() - reference[0]).abs().max().item(),
            max_abs_diff_grad=(grad - reference[1]).abs().max().item(), first_call_s=round(first_s, 1),
        )  # fmt: skip
        rows.append(row)
        print(f"mlp {name:9s} forward {forward_ms:7.3f} ms  forward+backward {both_ms:7.3f} ms "
              f"({row['tflops']:5.0f} TFLOP/s)  |Δout| {row['max_abs_diff_out']:.2g} "
              f"|Δgrad| {row['max_abs_diff_grad']:.2g}  first {first_s:.1f} s", flush=True)  # fmt: skip
    return rows


def gemm_rows(tokens: int, dim: int, hidden: int, warmup: int, steps: int) -> list[dict]:
    from quack.gemm_config import GemmConfig

    device = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
    w1 = torch.randn(hidden, dim, device=device, dtype=torch.bfloat16) * dim**-0.5
    b1 = torch.randn(hidden, device=device, dtype=torch.bfloat16)
    w2 = torch.randn(dim, hidden, device=device, dtype=torch.bfloat16) * hidden**-0.5
    grad_out = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
    pre = torch.addmm(b1, x, w1.T)
    flop = 2 * tokens * dim * hidden
    rows = []
    cublas = {"fc1": lambda: torch.mm(x, w1.T), "fc2 dgrad": lambda: torch.mm(grad_out, w2)}
    for gemm, run in cublas.items():
        ms = mean_ms(run, warmup, steps, device)
        rows.append(dict(kind="gemm", variant=f"cuBLAS {gemm}", tokens=tokens, ms=round(ms, 3),
                         tflops=round(flop / ms / 1e9, 1)))  # fmt: skip
        print(f"gemm cuBLAS {gemm:10s} {ms:7.3f} ms ({flop / ms / 1e9:5.0f} TFLOP/s)", flush=True)
    ref_pre, ref_post = run_linear_act(x, w1, b1, "gelu")
    ref_dpre, _ = run_act_linear_backward(grad_out, pre, w2, "gelu")
    for candidate in [None, *GEMM_CANDIDATES]:
        config = None
        label = "quack default"
        if candidate is not None:
            tile_m, tile_n, pingpong, cluster_m, cluster_n = candidate
            config = GemmConfig(tile_m=tile_m, tile_n=tile_n, pingpong=pingpong, cluster_m=cluster_m,
                                cluster_n=cluster_n, is_dynamic_persistent=False, device_capacity=9)  # fmt: skip
            label = f"{tile_m}x{tile_n} {'pingpong' if pingpong else 'coop'} cluster {cluster_m}x{cluster_n}"
        for gemm, run, check in (
            ("fc1+bias+gelu", lambda c=config: run_linear_act(x, w1, b1, "gelu", c), ref_post),
            ("fc2 dgrad+dgelu", lambda c=config: run_act_linear_backward(grad_out, pre, w2, "gelu", c), ref_dpre),
        ):
            try:
                diff = (run()[0 if check is ref_dpre else 1] - check).abs().max().item()
                ms = mean_ms(run, warmup, steps, device)
            except Exception as error:  # a shape the kernel generator rejects is a result, not a crash
                print(f"gemm {label:30s} {gemm:16s} failed: {type(error).__name__}: {error}".splitlines()[0])
                rows.append(dict(kind="gemm", variant=f"{label} {gemm}", tokens=tokens, error=str(error)[:300]))
                continue
            rows.append(dict(kind="gemm", variant=f"{label} {gemm}", tokens=tokens, ms=round(ms, 3),
                             tflops=round(flop / ms / 1e9, 1), max_abs_diff=diff))  # fmt: skip
            print(f"gemm {label:30s} {gemm:16s} {ms:7.3f} ms ({flop / ms / 1e9:5.0f} TFLOP/s) |Δ| {diff:.2g}",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for fused_mlp.csv/.json")
    parser.add_argument("--tokens", type=int, default=256 * 785, help="rows of the MLP's input (videos × tokens)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-sweep", action="store_true", help="skip the GEMM tile sweep")
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU (checks the script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        args.tokens, args.dim, args.hidden, args.warmup, args.steps = 64, 16, 64, 1, 2
    elif torch.cuda.is_available() and fused_mlp_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        raise SystemExit("fused_mlp.py needs a CUDA GPU and quack-kernels (or --tiny)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}; MLP {args.tokens} × {args.dim} → {args.hidden}, {dtype}")
    rows = mlp_rows(args.tokens, args.dim, args.hidden, device, dtype, args.warmup, args.steps)
    if device.type == "cuda" and not args.no_sweep:
        rows += gemm_rows(args.tokens, args.dim, args.hidden, args.warmup, args.steps)
    write_results(args.out, "fused_mlp", rows, vars(args) | {"out": str(args.out)})


if __name__ == "__main__":
    main()
