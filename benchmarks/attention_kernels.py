"""Time the attention kernels alone at the ViT-B dual encoder's shape, forward and forward + backward.

    python benchmarks/attention_kernels.py --out DIR [--impl cudnn --impl fa4 ...] [--batch 256] [--tiny]

Inputs are views of one fused qkv tensor of shape (B, N, 3, heads, d) in bf16, as ``Attention`` passes
them (N = 785: 4 frames of 14×14 patches and the CLS token). Each kernel is checked against the first
one listed (largest absolute difference of the output and of the qkv gradient), then timed with CUDA
events over ``--steps`` calls after ``--warmup``. TFLOP/s counts 4·B·heads·N²·d for the forward and
2.5 times that for the backward (its recomputation of q·kᵀ included). Rows go to DIR/attention.csv and
.json, stamped like every benchmark. ``--tiny`` runs small shapes on the CPU (math, sdpa and fa4's CPU
kernel), to check the script.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from avtool.bench.timing import mean_ms
from avtool.models.attention import ATTN_IMPLS, attention, check_attn_impl
from avtool.results import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for attention.csv/.json")
    parser.add_argument("--impl", action="append", help=f"kernels, in order (default: cudnn fa4 flash efficient); "
                        f"one of {', '.join(ATTN_IMPLS)}")  # fmt: skip
    parser.add_argument("--batch", type=int, default=256, help="videos per call")
    parser.add_argument("--tokens", type=int, default=785, help="tokens per video (N)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU (checks the script)")
    args = parser.parse_args()
    if args.tiny:
        device = torch.device("cpu")
        args.batch, args.tokens, args.heads, args.head_dim, args.warmup, args.steps = 2, 17, 2, 16, 1, 2
        impls = args.impl or ["math", "sdpa", "fa4"]
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        impls = args.impl or ["cudnn", "fa4", "flash", "efficient"]
    else:
        raise SystemExit("attention_kernels.py needs a CUDA device (or --tiny)")
    for impl in impls:
        if problem := check_attn_impl(impl, on_cuda=device.type == "cuda"):
            raise SystemExit(problem)
    args.out.mkdir(parents=True, exist_ok=True)

    B, N, H, d = args.batch, args.tokens, args.heads, args.head_dim
    generator = torch.Generator(device).manual_seed(0)
    shape = dict(device=device, dtype=torch.bfloat16, generator=generator)
    qkv = torch.randn(B, N, 3, H, d, **shape, requires_grad=True)
    grad_out = torch.randn(B, H, N, d, **shape)
    forward_flop = 4 * B * H * N * N * d
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}; B={B} N={N} heads={H} d={d}, bf16")

    def forward(impl: str) -> torch.Tensor:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return attention(q, k, v, impl)

    def forward_backward(impl: str) -> None:
        forward(impl).backward(grad_out)
        qkv.grad = None

    rows, reference = [], None
    for impl in impls:
        started = time.perf_counter()
        out = forward(impl)
        out.backward(grad_out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_s = time.perf_counter() - started  # includes a JIT compilation (fa4) or a plan (cudnn)
        result = (out.detach(), qkv.grad.detach().clone())
        qkv.grad = None
        reference = reference or result
        with torch.no_grad():
            fwd_ms = mean_ms(lambda impl=impl: forward(impl), args.warmup, args.steps, device)
        both_ms = mean_ms(lambda impl=impl: forward_backward(impl), args.warmup, args.steps, device)
        row = {
            "impl": impl, "batch": B, "tokens": N, "heads": H, "head_dim": d,
            "forward_ms": round(fwd_ms, 3), "forward_backward_ms": round(both_ms, 3),
            "backward_ms": round(both_ms - fwd_ms, 3),
            "forward_tflops": round(forward_flop / fwd_ms / 1e9, 1),
            "forward_backward_tflops": round(3.5 * forward_flop / both_ms / 1e9, 1),
            "max_abs_diff_out": (result[0] - reference[0]).abs().max().item(),
            "max_abs_diff_grad": (result[1] - reference[1]).abs().max().item(),
            "first_call_s": round(first_s, 2),
        }  # fmt: skip
        rows.append(row)
        print(
            f"{impl:10s} forward {fwd_ms:6.2f} ms ({row['forward_tflops']:5.0f} TFLOP/s)  forward+backward "
            f"{both_ms:6.2f} ms ({row['forward_backward_tflops']:5.0f} TFLOP/s)  |Δout| {row['max_abs_diff_out']:.2g} "
            f"|Δgrad| {row['max_abs_diff_grad']:.2g}  first call {first_s:.1f} s",
            flush=True,
        )
    write_results(args.out, "attention", rows, vars(args) | {"out": str(args.out)})


if __name__ == "__main__":
    main()
