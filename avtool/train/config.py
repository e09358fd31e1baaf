"""Typed configuration shared by every training job: how to run (RunConfig) and how to optimise
(OptimConfig). Each job adds its own data and model groups; the CLI fills them, the job prints the
whole config at start and saves it as ``config.json`` next to its checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from avtool.errors import AvtoolError
from avtool.results import jsonable

Precision = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class RunConfig:
    """Steps, batches, precision, checkpoints and logging of a run."""

    output_dir: Path
    """Checkpoints, config.json, metrics.jsonl and eval results go here."""
    epochs: int = 5
    """Passes over the training set."""
    batch_size: int = 256
    """Clips per GPU (per process) per micro-step; the global batch is batch_size × GPUs × accum_steps."""
    accum_steps: int = 1
    """Micro-batches accumulated before each optimiser step."""
    workers: int = 8
    """Data-loader worker processes per GPU (each decodes on one core)."""
    precision: Precision = "bf16"
    """Autocast precision on CUDA: bf16 (no loss scaling), fp16 (with a gradient scaler) or fp32. The CPU
    always runs fp32."""
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    seed: int = 0
    """Seed of weights, shuffling, frame jitter, crops and augmentation."""
    device: str = "auto"
    """`auto` (CUDA when there is a GPU), `cuda` or `cpu`."""
    log_every: int = 10
    """Optimiser steps per line of metrics.jsonl (and progress-bar refresh of the averages)."""
    save_every: int = 500
    """Optimiser steps between step checkpoints (a checkpoint is also written after every epoch)."""
    save_every_epochs: int = 1
    """Epochs between end-of-epoch checkpoints (the last epoch and a new best are always saved)."""
    keep_checkpoints: int = 2
    """Step checkpoints kept on disk (the best and the last epoch have their own files)."""
    resume: str = "auto"
    """`auto`: continue from the latest checkpoint in output_dir if there is one; `off`: refuse to
    overwrite an output_dir that has checkpoints; or the path of a checkpoint to continue from."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many optimiser steps of the schedule, e.g. to fit a job's time
    limit; rerun the same command to continue. None: run all epochs."""
    eval_every: int = 1
    """Evaluate every this many epochs (0: only at the end)."""
    eval_at_start: bool = False
    """Also evaluate before the first step (the zero-shot baseline of the initial weights)."""
    compile: bool = False
    """Run the model through torch.compile."""
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
        if self.precision not in ("bf16", "fp16", "fp32"):
            out.append(f"precision={self.precision!r} is not bf16, fp16 or fp32")
        if self.device not in ("auto", "cuda", "cpu"):
            out.append(f"device={self.device!r} is not auto, cuda or cpu")
        if self.stop_after is not None and self.stop_after < 1:
            out.append(f"stop_after={self.stop_after} must be at least 1")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            out.append(f"clip_grad_norm={self.clip_grad_norm} must be positive")
        if self.eval_every < 0:
            out.append(f"eval_every={self.eval_every} must be 0 or more")
        return out


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (appendix B of the paper)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW (pretraining, MIR) or SGD with momentum (CLS)."""
    lr: float = 3e-5
    """Peak learning rate (after lr_batch_scale is applied)."""
    lr_batch_scale: int | None = None
    """When set, the peak rate is lr × global batch / lr_batch_scale (CLS: base rate per 128 clips)."""
    fixed_lr: bool = False
    """Keep lr constant (the pretraining recipe's --fix-lr); else warm up, then half-wave cosine."""
    warmup_epochs: float = 1.0
    """Epochs of linear warm-up from lr_start to the peak."""
    lr_start: float = 1e-6
    """Learning rate at step 0 of the warm-up."""
    lr_end: float = 1e-5
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.01
    """Decoupled weight decay (AdamW) or L2 (SGD); not applied to biases, norm scales and the temperature
    (the 0-D and 1-D parameters), as in CLIP and the reference."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    momentum: float = 0.9
    """SGD momentum."""

    def problems(self) -> list[str]:
        out = []
        if self.optimizer not in ("adamw", "sgd"):
            out.append(f"optimizer={self.optimizer!r} is not adamw or sgd")
        if self.lr <= 0:
            out.append(f"lr={self.lr} must be positive")
        if self.warmup_epochs < 0:
            out.append(f"warmup_epochs={self.warmup_epochs} must be 0 or more")
        if self.weight_decay < 0:
            out.append(f"weight_decay={self.weight_decay} must be 0 or more")
        if self.lr_batch_scale is not None and self.lr_batch_scale < 1:
            out.append(f"lr_batch_scale={self.lr_batch_scale} must be at least 1")
        return out

    def peak_lr(self, global_batch: int) -> float:
        return self.lr * global_batch / self.lr_batch_scale if self.lr_batch_scale else self.lr


def raise_problems(what: str, problems: list[str]) -> None:
    """Report every problem of a config at once, on one line, before any heavy work."""
    if problems:
        raise AvtoolError(f"{what}: {'; '.join(problems)}")


def config_json(config: Any) -> str:
    """The config (nested dataclasses) as indented JSON; values JSON lacks (dtypes) as strings."""
    return json.dumps(jsonable(config), indent=2, default=str)
