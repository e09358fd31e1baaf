"""The issue's speed and memory goals for the ViT-B dual encoder on one GPU, measured in one run.

    python benchmarks/gpu_goals.py --out DIR
        [--suite eager|bf16-residual|compiled|budget|selective|autotune|fa4|fa4-eager ...]
        [--only NAME ...] [--profile NAME] [--memory NAME ...]

Fixed batches, 4 frames at 224², bf16 autocast, data already on the GPU; the suites are described in
``goal_configs``; ``--only`` keeps the rows of those names. ``--profile NAME`` writes the CUDA kernel
time of a few steps of that row's configuration, by kernel and by kind, to profile.txt; ``--memory NAME``
appends where that row's step holds its memory (before the step, after forward, the peak of each phase)
to memory.txt. Rows go to DIR/goals.csv and .json (stamped like every benchmark) as each one finishes; a
row that fails is logged and skipped, and rows that would start after ``--budget-s`` are skipped, so a
time limit never loses what was measured. ``--tiny`` runs the same on tiny towers on a CPU, to check the
script.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback
from pathlib import Path

import torch

from avtool.bench.model import ModelBenchConfig, Trainer, run_model_bench, variant_model
from avtool.models import DualEncoderConfig
from avtool.results import write_results

GOAL_MB_PER_VIDEO = 61.0
SUITES = ("eager", "bf16-residual", "compiled", "budget", "selective", "autotune", "fa4", "fa4-eager")


def goal_configs(base: ModelBenchConfig, suite: str, small: int, large: int) -> list[tuple[str, ModelBenchConfig]]:
    """(name, config) of each measurement of one suite; names say what differs from the plain eager run.

    `eager`: the math baseline, flash and cuDNN attention at B=small, both with every block checkpointed at
    B=large, and fast conv1. `bf16-residual`: the residual stream in bf16, and the fewest checkpointed blocks
    that keep B=large within 61 MB/video. `compiled`: torch.compile on top of the bf16 residual, and the
    fewest checkpointed blocks that fit B=large in the whole GPU (searched eagerly, so conservative).
    `budget`: compiled as above but without per-block checkpointing: the compiler's partitioner picks
    what to recompute under an activation memory budget (fractions of a run that recomputes nothing).
    `selective`: the compiled best of per-block checkpointing, then the last block left unchecked (its
    activations are consumed first, so it should cost little memory at the peak), then the last k
    checkpointed blocks keeping their attention outputs (selective checkpointing). `autotune`: the best of
    those within 61 MB/video (all but two blocks keep their attention) with matmul autotuning, then with
    every kernel autotuned. `fa4`: the compiled best with cuDNN (all but two blocks keep their attention),
    then FlashAttention-4 in its place: the same, every block checkpointed, every block keeping its
    attention, all but three keeping it, the last block not checkpointed, matmul autotuning, B=small
    without checkpointing, and the fused MLP (GELU in quack's GEMM epilogues) with FA4 (all but two or
    three blocks keeping their attention, and the last block not checkpointed) and with cuDNN.
    `fa4-eager`: the math baseline, cuDNN and FlashAttention-4 at B=small, eager (the second goal's
    comparison).
    """

    def make(
        variant: str, attn: str, batch: int, fast_conv1: bool = False, fused_mlp: bool = False, **extra
    ) -> ModelBenchConfig:
        low = suite not in ("eager", "fa4-eager")
        compiled = suite in ("compiled", "budget", "selective", "autotune", "fa4")
        video = dataclasses.replace(base.model.video, fast_conv1=fast_conv1, low_precision_residual=low,
                                    fused_mlp=fused_mlp)  # fmt: skip
        text = dataclasses.replace(base.model.text, low_precision_residual=low, fused_mlp=fused_mlp)
        model = dataclasses.replace(base.model, video=video, text=text)
        return dataclasses.replace(
            base, model=model, variants=(variant,), flash_impl=attn, batch_size=batch, compile=compiled,
            **extra,
        )  # fmt: skip

    cap = {"ckpt_blocks": "auto", "memory_limit_gb": large * GOAL_MB_PER_VIDEO / 1e3}
    tag = {"eager": "", "fa4-eager": "", "bf16-residual": " bf16-res"}.get(suite, " bf16-res+compile")
    best = f"B{large} cudnn+ckpt fast-conv1"
    layers = base.model.video.layers
    some = max(1, layers // 3)  # ViT-B: 4 blocks, ~5 MB/video, about the headroom under 61 MB/video

    def selective(blocks: int, keep: int) -> tuple[str, ModelBenchConfig]:
        name = best + (f" ckpt{blocks}" if blocks < layers else "") + (f" keep-attn{keep}" if keep else "") + tag
        return name, make("grad-ckpt", "cudnn", large, fast_conv1=True, ckpt_blocks=blocks, ckpt_keep_attention=keep)

    configs = {
        "eager": [
            (f"B{small} math", make("baseline", "flash", small)),
            (f"B{small} flash", make("flash-attn", "flash", small)),
            (f"B{small} cudnn", make("flash-attn", "cudnn", small)),
            (f"B{large} flash+ckpt", make("grad-ckpt", "flash", large)),
            (f"B{large} cudnn+ckpt", make("grad-ckpt", "cudnn", large)),
            (f"B{large} cudnn+ckpt fast-conv1", make("grad-ckpt", "cudnn", large, fast_conv1=True)),
        ],
        "bf16-residual": [
            (f"B{small} flash{tag}", make("flash-attn", "flash", small)),
            (f"B{small} cudnn{tag}", make("flash-attn", "cudnn", small)),
            (f"B{large} flash+ckpt{tag}", make("grad-ckpt", "flash", large)),
            (f"B{large} cudnn+ckpt{tag}", make("grad-ckpt", "cudnn", large)),
            (f"B{large} cudnn+ckpt auto≤{GOAL_MB_PER_VIDEO:g}MB{tag}", make("grad-ckpt", "cudnn", large, **cap)),
        ],
        "compiled": [
            (f"B{small} math{tag}", make("baseline", "flash", small)),
            (f"B{small} flash{tag}", make("flash-attn", "flash", small)),
            (f"B{large} flash+ckpt{tag}", make("grad-ckpt", "flash", large)),
            (f"B{large} cudnn+ckpt fast-conv1{tag}", make("grad-ckpt", "cudnn", large, fast_conv1=True)),
            (f"B{large} cudnn+ckpt fast-conv1 auto (whole GPU){tag}",
             make("grad-ckpt", "cudnn", large, fast_conv1=True, ckpt_blocks="auto")),
        ],
        "budget": [
            (f"B{large} cudnn fast-conv1 budget {b:g}{tag}",
             make("flash-attn", "cudnn", large, fast_conv1=True, activation_memory_budget=b))
            for b in (0.2, 0.1)
        ],
        "selective": [  # tiny towers repeat some (blocks, keep): main() measures each name once
            selective(blocks, keep)
            for blocks, keep in ((layers, 0), (layers - 1, 0), (layers, layers), (layers, some), (layers, 2 * some),
                                 (layers, layers - 2), (layers, layers - 1), (layers - 1, some))
            if 0 <= keep <= blocks
        ],
        "autotune": [
            (f"{best}{f' keep-attn{layers - 2}' if layers > 2 else ''} {mode}{tag}",
             make("grad-ckpt", "cudnn", large, fast_conv1=True, ckpt_keep_attention=layers - 2, compile_mode=mode))
            for mode in ("max-autotune-gemm", "max-autotune-no-cudagraphs")
        ],
        "fa4": [
            selective(layers, layers - 2),
            *[(f"B{large} fa4+ckpt fast-conv1{f' keep-attn{keep}' if keep else ''}{tag}",
               make("grad-ckpt", "fa4", large, fast_conv1=True, ckpt_keep_attention=keep))
              for keep in dict.fromkeys((layers - 2, 0, layers, layers - 3)) if keep >= 0],
            (f"B{large} fa4+ckpt fast-conv1 ckpt{layers - 1} keep-attn{layers - 2}{tag}",
             make("grad-ckpt", "fa4", large, fast_conv1=True, ckpt_blocks=layers - 1, ckpt_keep_attention=layers - 2)),
            (f"B{large} fa4+ckpt fast-conv1 keep-attn{layers - 2} max-autotune-gemm{tag}",
             make("grad-ckpt", "fa4", large, fast_conv1=True, ckpt_keep_attention=layers - 2,
                  compile_mode="max-autotune-gemm")),
            (f"B{small} fa4{tag}", make("flash-attn", "fa4", small)),
            *[(f"B{large} fa4+ckpt fast-conv1 keep-attn{keep} fused-mlp{tag}",
               make("grad-ckpt", "fa4", large, fast_conv1=True, ckpt_keep_attention=keep, fused_mlp=True))
              for keep in dict.fromkeys((layers - 2, layers - 3)) if keep >= 0],
            (f"B{large} fa4+ckpt fast-conv1 ckpt{layers - 1} keep-attn{layers - 2} fused-mlp{tag}",
             make("grad-ckpt", "fa4", large, fast_conv1=True, ckpt_blocks=layers - 1, ckpt_keep_attention=layers - 2,
                  fused_mlp=True)),
            (f"B{large} cudnn+ckpt fast-conv1 keep-attn{layers - 2} fused-mlp{tag}",
             make("grad-ckpt", "cudnn", large, fast_conv1=True, ckpt_keep_attention=layers - 2, fused_mlp=True)),
        ],
        "fa4-eager": [
            (f"B{small} math", make("baseline", "flash", small)),
            (f"B{small} cudnn", make("flash-attn", "cudnn", small)),
            (f"B{small} fa4", make("flash-attn", "fa4", small)),
        ],
    }[suite]  # fmt: skip
    if not torch.cuda.is_available():  # the block search needs CUDA out-of-memory errors
        configs = [(name, cfg) for name, cfg in configs if cfg.ckpt_blocks != "auto"]
    return configs


def warm_trainer(cfg: ModelBenchConfig) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """The trainer of ``cfg``'s first ViT variant (compiled, budgeted as ``cfg`` says) and its batch, after two
    steps (compilation, allocator warm-up)."""
    device = cfg.resolved_device()
    trainer = Trainer(variant_model(cfg, "vit", cfg.variants[0]), device, cfg.autocast_dtype(device),
                      compile=cfg.compile, memory_budget=cfg.activation_memory_budget,
                      compile_mode=cfg.compile_mode)  # fmt: skip
    video, text = trainer.batch(cfg.batch_size)
    for _ in range(2):
        trainer.step(video, text)
    return trainer, video, text


def profile(cfg: ModelBenchConfig, out: Path, steps: int = 3) -> None:
    """CUDA kernel time of ``steps`` training steps, by kernel (top 30) and by kind, into out/profile.txt."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer, video, text = warm_trainer(cfg)
    device = trainer.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(video, text)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    kinds = {"gemm": 0.0, "attention": 0.0, "optimizer": 0.0, "elementwise/norm/other": 0.0}
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    for event in kernels:
        name = event.key.lower()
        if any(k in name for k in ("flash", "fmha", "attention", "sdpa")):  # cuDNN's carry "sm90" too
            kind = "attention"
        elif any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass", "matmul", "sm90_")):
            kind = "gemm"
        elif "adam" in name:
            kind = "optimizer"
        else:
            kind = "elementwise/norm/other"
        kinds[kind] += event.self_device_time_total / 1e3 / steps
    total = sum(kinds.values()) or 1.0
    lines = [
        f"{cfg.batch_size} videos/step, {cfg.flash_impl}, ckpt {cfg.ckpt_blocks or 'all'}, compile {cfg.compile}, "
        f"bf16 residual {cfg.model.video.low_precision_residual}; ms of kernel time per step"
    ]
    lines += [f"  {kind:24s} {ms:9.1f} ms  {ms / total:6.1%}" for kind, ms in kinds.items()]
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines.append(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=90))
    trainer.close()
    (out / "profile.txt").write_text("\n".join(lines))
    print("\n".join(lines[:6]), flush=True)


def memory_split(name: str, cfg: ModelBenchConfig, out: Path) -> None:
    """Where a training step's memory peaks, MB per video (allocated, MB = 10⁶ B): before the step
    (weights, AdamW state, the batch), after forward (what is kept for backward), and the peak of each
    phase; appended to out/memory.txt. CUDA only."""
    if cfg.ckpt_blocks == "auto" or cfg.memory_limit_gb is not None:
        print(f"--memory {name!r}: skipped, it measures fixed configurations (not 'auto' or a memory cap)")
        return
    trainer, video, text = warm_trainer(cfg)
    device = trainer.device
    torch.cuda.synchronize(device)

    def mb(allocated: int) -> str:
        return f"{allocated / 1e6 / cfg.batch_size:7.1f}"

    lines = [
        f"{name}: {cfg.batch_size} videos/step, MB per video",
        f"  before the step      {mb(torch.cuda.memory_allocated(device))}",
    ]
    torch.cuda.reset_peak_memory_stats(device)

    def phase_done(phase: str) -> None:
        torch.cuda.synchronize(device)
        peak, now = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
        lines.append(f"  peak in {phase:12s} {mb(peak)}   after it {mb(now)}")
        torch.cuda.reset_peak_memory_stats(device)

    trainer.step(video, text, on_phase=phase_done)
    trainer.close()
    with open(out / "memory.txt", "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for goals.csv/.json and profile.txt")
    parser.add_argument("--suite", action="append", choices=SUITES, help="suites to run, in order (default: all)")
    parser.add_argument("--only", action="append", help="run only the rows of this name (repeatable)")
    parser.add_argument("--profile", metavar="NAME", help="profile the configuration of the row of this name")
    parser.add_argument("--memory", metavar="NAME", action="append", help="memory by phase of this row (repeatable)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny towers on the CPU (checks the script)")
    args = parser.parse_args()
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.tiny:
        base = ModelBenchConfig(model=DualEncoderConfig.tiny(), archs=("vit",), device="cpu", warmup_steps=1, steps=2)
        small, large = 2, 4
    else:
        base = ModelBenchConfig(archs=("vit",), warmup_steps=3, steps=10)
        small, large = 64, 256
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")

    rows, done = [], []
    # A name can be in two suites (the compiled best is also the baseline of `selective`): measure it once.
    first: dict[str, ModelBenchConfig] = {}
    for suite in args.suite or SUITES:
        for name, cfg in goal_configs(base, suite, small, large):
            first.setdefault(name, cfg)
    every = list(first.items())
    if args.tiny:  # the CPU has no flash or cuDNN kernels (sdpa picks the CPU's); fa4 has a CPU kernel
        every = [(name, cfg if cfg.flash_impl == "fa4" else dataclasses.replace(cfg, flash_impl="sdpa"))
                 for name, cfg in every]  # fmt: skip
    configs = [(name, cfg) for name, cfg in every if not args.only or name in args.only]
    for name, cfg in configs:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            print(f"skipped {name}: {elapsed:.0f} s spent", flush=True)
            continue
        try:
            (row,) = run_model_bench(cfg)
        except Exception as e:
            print(f"FAILED {name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        rows.append({"name": name, **row.to_dict()})
        done.append(cfg)
        write_results(args.out, "goals", rows, {"configs": done})
        r = row
        print(
            f"{name:36s} {r.videos_per_second:8.1f} vid/s  {r.mb_per_video or 0:6.1f} MB/video  "
            f"ckpt {r.ckpt_blocks:2d} keep {r.ckpt_keep_attention:2d}  {r.tflops:6.1f} TFLOP/s  "
            f"MFU {r.mfu or 0:.1%}  HFU {r.hfu or 0:.1%}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    named = dict(every)
    for name in args.memory or []:
        if name not in named:
            raise SystemExit(f"--memory {name!r} names no row of the suites; they are: {', '.join(named)}")
        if not torch.cuda.is_available():
            print(f"--memory {name!r}: skipped, it needs CUDA", flush=True)
            continue
        try:
            memory_split(name, named[name], args.out)
        except Exception:
            traceback.print_exc()

    if args.profile:
        if args.profile not in named:
            raise SystemExit(f"--profile {args.profile!r} names no row of the suites; they are: {', '.join(named)}")
        try:
            profile(named[args.profile], args.out)
        except Exception:
            traceback.print_exc()


if __name__ == "__main__":
    main()
