"""Typed configuration shared by every training job: how to run (RunConfig) and how to optimise
(OptimConfig). Each job adds its own data and model groups; the CLI fills them, the job prints the
whole config at start and saves it as ``config.json`` next to its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from avtool.errors import AvtoolError
from avtool.options import config_json, option

__all__ = [
    "COMPILE_MODES", "CompileMode", "Device", "OptimConfig", "Precision", "RunConfig", "autocast_dtype",
    "config_json", "precision_problem", "raise_problems",
]  # fmt: skip

Precision = Literal["bf16", "fp16", "fp32"]
Device = Literal["auto", "cuda", "cpu"]
CompileMode = Literal["default", "max-autotune-gemm", "max-autotune-no-cudagraphs"]
BadClipPolicy = Literal["skip", "fail"]
COMPILE_MODES: dict[str, dict] = {
    "default": {},
    "max-autotune-gemm": {"options": {"max_autotune_gemm": True}},
    "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
}
"""``torch.compile`` arguments of each compile mode (`avtool train` and `avtool bench model`)."""


# Options that mean the same in every command that has them (train, eval and the benches): defined here once.
def precision_option() -> Any:
    return option(
        "bf16", flags="--precision", panel="Run", metavar="bf16|fp16|fp32",
        help="Autocast precision on CUDA: bf16 (no loss scaling), fp16 (the paper's, with a gradient scaler) or "
        "fp32. The CPU always runs fp32.",
    )  # fmt: skip


def device_option() -> Any:
    return option("auto", flags="--device", panel="Run", help="auto (CUDA when there is a GPU), cuda or cpu.")


def seed_option(what: str = "weights, shuffling, frame jitter, crops and augmentation") -> Any:
    return option(0, flags="--seed", panel="Run", help=f"Seed of the {what}; the same seed gives the same run.")


def compile_option() -> Any:
    return option(False, flags="--compile", panel="Run", help="Run the model through torch.compile (compiling "
                  "takes minutes on a GPU).")  # fmt: skip


def compile_mode_option() -> Any:
    return option(
        "default", flags="--compile-mode", panel="Run",
        help="With --compile: default; max-autotune-gemm (also times Triton matmuls with fused epilogues against "
        "cuBLAS per shape; compiles several times longer); max-autotune-no-cudagraphs (also tunes every "
        "elementwise kernel; longer still).",
    )  # fmt: skip


def workers_option() -> Any:
    return option(
        8,
        flags=("--workers", "-j"),
        panel="Data",
        unit="processes",
        help="Data-loader worker processes per GPU, each decoding on one core (AVION's -j).",
    )


def output_option(default: str, what: str) -> Any:
    return option(Path(default), flags=("--output", "--output-dir"), panel="Output", metavar="DIR",
                  help=f"Folder for {what}.")  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Steps, batches, precision, checkpoints and logging of a run."""

    output_dir: Path = output_option("runs", "checkpoints, config.json, metrics.jsonl and evaluation results")
    epochs: int = option(5, panel="Optimisation", help="Passes over the training set.")
    batch_size: int = option(
        256, panel="Optimisation", unit="clips",
        help="Clips per GPU (per process) per micro-step; the global batch is this × GPUs × --accum-steps.",
    )  # fmt: skip
    accum_steps: int = option(1, panel="Optimisation", help="Micro-batches accumulated before each optimiser step.")
    workers: int = workers_option()
    precision: Precision = precision_option()
    clip_grad_norm: float | None = option(
        None, flags="--clip-grad", panel="Optimisation", help="Clip the global gradient norm to this value; none: "
        "no clipping."
    )  # fmt: skip
    seed: int = seed_option()
    device: Device = device_option()
    log_every: int = option(10, panel="Output", help="Optimiser steps per line of metrics.jsonl.")
    save_every: int = option(
        500,
        panel="Checkpoints",
        help="Optimiser steps between step checkpoints (one is also written after each epoch).",
    )
    save_every_epochs: int = option(
        1, panel="Checkpoints",
        help="Epochs between end-of-epoch checkpoints (the last epoch and a new best are always saved).",
    )  # fmt: skip
    keep_checkpoints: int = option(
        2,
        flags="--keep",
        panel="Checkpoints",
        help="Step checkpoints kept on disk (the best and the last have their own files).",
    )
    resume: str = option(
        "auto", panel="Checkpoints", metavar="auto|off|FILE",
        help="auto: continue from the latest checkpoint in --output if there is one; off: refuse to overwrite "
        "checkpoints; or a checkpoint file to continue from.",
    )  # fmt: skip
    stop_after: int | None = option(
        None, panel="Checkpoints", metavar="INT",
        help="Stop with a checkpoint after this many optimiser steps of the schedule (e.g. a job's time limit); "
        "rerun the same command to continue. none: run all epochs.",
    )  # fmt: skip
    eval_every: int = option(1, panel="Evaluation", help="Evaluate every this many epochs (0: only "
                             "after the last).")  # fmt: skip
    eval_at_start: bool = option(False, panel="Evaluation",
                                 help="Also evaluate the initial weights before the first step (the zero-shot "
                                 "baseline).")  # fmt: skip
    compile: bool = compile_option()
    compile_mode: CompileMode = compile_mode_option()
    on_bad_clip: BadClipPolicy = option(
        "skip", panel="Data", metavar="skip|fail",
        help="A clip whose chunk file cannot be read during training (corrupt, truncated or deleted since the "
        "start-up checks): skip it, train on another sample in its place and count it (metrics.jsonl, a "
        "warning, the summary); or fail, naming the file.",
    )  # fmt: skip
    loader_timeout: float = 300.0
    """Seconds to wait for one batch before failing instead of hanging."""

    def problems(self) -> list[str]:
        out = []
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "save_every", "save_every_epochs",
                     "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.workers < 0:
            out.append(f"workers={self.workers} must be 0 or more")
        if problem := precision_problem(self.precision):
            out.append(problem)
        if self.device not in ("auto", "cuda", "cpu"):
            out.append(f"device={self.device!r} is not auto, cuda or cpu")
        if self.stop_after is not None and self.stop_after < 1:
            out.append(f"stop_after={self.stop_after} must be at least 1")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            out.append(f"clip_grad_norm={self.clip_grad_norm} must be positive")
        if self.eval_every < 0:
            out.append(f"eval_every={self.eval_every} must be 0 or more")
        if self.on_bad_clip not in get_args(BadClipPolicy):
            out.append(f"on_bad_clip={self.on_bad_clip!r} is not skip or fail")
        if self.compile_mode != "default" and not self.compile:
            out.append(f"compile_mode={self.compile_mode!r} needs compile")
        return out


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (appendix B of the paper)."""

    optimizer: Literal["adamw", "sgd", "lion"] = option(
        "adamw", panel="Optimisation", metavar="adamw|sgd|lion",
        help="AdamW (pretraining, MIR, VideoMAE), SGD with momentum (CLS) or Lion (AVION's released VideoMAE run: "
        "the sign of the momentum, decoupled weight decay).",
    )  # fmt: skip
    lr: float = option(3e-5, panel="Optimisation", help="Peak learning rate (CLS: per 128 clips of global batch, "
                       "scaled to the batch).")  # fmt: skip
    lr_batch_scale: int | None = None
    """When set, the peak rate is lr × global batch / lr_batch_scale (CLS: base rate per 128 clips)."""
    fixed_lr: bool = option(
        False,
        flags=("--fixed-lr", "--fix-lr"),
        panel="Optimisation",
        help="Constant learning rate (AVION's --fix-lr); else warm-up, then half-wave cosine.",
    )
    warmup_epochs: float = option(1.0, panel="Optimisation", help="Linear warm-up from --lr-start to the peak.")
    lr_start: float = option(1e-6, panel="Optimisation", help="Learning rate at the start of the warm-up.")
    lr_end: float = option(1e-5, panel="Optimisation", help="Learning rate at the end of the cosine.")
    weight_decay: float = option(
        0.01, panel="Optimisation", help="Decoupled weight decay (AdamW) or L2 (SGD); not on biases, norm scales "
        "and the temperature (the 0-D and 1-D parameters), as in CLIP.",
    )  # fmt: skip
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    momentum: float = option(0.9, panel="Optimisation", help="SGD momentum (CLS).")
    layer_decay: float = option(
        1.0, panel="Optimisation",
        help="Layer-wise learning-rate decay d (BEiT's): the head trains at the rate, block i of n at rate·d^(n−i), "
        "the embeddings at rate·d^(n+1) (VideoMAE fine-tuning: 0.75); 1: off.",
    )  # fmt: skip

    def problems(self) -> list[str]:
        out = []
        if self.optimizer not in ("adamw", "sgd", "lion"):
            out.append(f"optimizer={self.optimizer!r} is not adamw, sgd or lion")
        if self.lr <= 0:
            out.append(f"lr={self.lr} must be positive")
        if self.warmup_epochs < 0:
            out.append(f"warmup_epochs={self.warmup_epochs} must be 0 or more")
        if self.weight_decay < 0:
            out.append(f"weight_decay={self.weight_decay} must be 0 or more")
        if not 0 < self.layer_decay <= 1:
            out.append(f"layer_decay={self.layer_decay} is outside (0, 1]")
        if self.lr_batch_scale is not None and self.lr_batch_scale < 1:
            out.append(f"lr_batch_scale={self.lr_batch_scale} must be at least 1")
        return out

    def peak_lr(self, global_batch: int) -> float:
        return self.lr * global_batch / self.lr_batch_scale if self.lr_batch_scale else self.lr


def precision_problem(precision: str) -> str | None:
    """Why ``precision`` is not one of bf16, fp16, fp32 (None when it is one)."""
    return None if precision in get_args(Precision) else f"precision={precision!r} is not bf16, fp16 or fp32"


def autocast_dtype(precision: Precision, device_type: str) -> Any:
    """The torch autocast dtype of ``precision`` on a device of ``device_type`` (None: float32, as always on the
    CPU)."""
    import torch

    if device_type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def raise_problems(what: str, problems: list[str]) -> None:
    """Report every problem of a config at once, on one line, before any heavy work."""
    if problems:
        raise AvtoolError(f"{what}: {'; '.join(problems)}")
