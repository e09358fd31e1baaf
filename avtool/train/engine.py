"""The training loop every job shares: DDP, autocast, gradient accumulation and clipping, the LR
schedule, checkpoints with resume, evaluation and the best checkpoint, and metrics.

A job (``avtool.train.lavila``, ``.mir``, ``.cls``) says what is specific to it through the ``Job``
protocol: its model, its training set, its loss and its evaluation. ``fit`` does the rest.

Randomness: the data draws from (seed, epoch, index) (``avtool.data``) and every optimiser step
reseeds torch from (seed, rank, step), so a run resumed from a checkpoint draws exactly what the
uninterrupted run would have drawn, without storing generator states.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from avtool.atomic import atomic_write_text
from avtool.data.loader import LoaderConfig, make_loader, set_epoch
from avtool.errors import AvtoolError
from avtool.train import distributed
from avtool.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoint_path,
)
from avtool.train.config import OptimConfig, RunConfig, config_json
from avtool.train.distributed import DistEnv
from avtool.train.model_factory import model_config_dict
from avtool.train.monitor import TrainMonitor
from avtool.train.optim import build_optimizer, set_lr
from avtool.train.schedule import LrSchedule

BEST_CHECKPOINT = "checkpoint_best.pt"


class Job(Protocol):
    """What a training job adds to the shared loop."""

    name: str
    """`lavila`, `mir` or `cls`: recorded in checkpoints, which `avtool eval` checks."""
    best_metric: str | None
    """Key of ``evaluate``'s result that picks the best checkpoint (higher is better); None: no best."""

    def build_model(self) -> nn.Module: ...

    def train_dataset(self) -> Dataset: ...

    def collate(self) -> Callable | None:
        """Runs in the loader's workers (tokenisation); None: torch's default collation."""
        ...

    def loss(
        self, model: nn.Module, batch: dict[str, Any], env: DistEnv
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch (already on the device) and extra numbers to log."""
        ...

    def evaluate(self, model: nn.Module, env: DistEnv) -> dict[str, float] | None:
        """Validation metrics on every rank (None when the job has no validation data)."""
        ...


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    """Epochs completed."""
    step_in_epoch: int = 0
    """Optimiser steps done in the current epoch."""
    best: float | None = None
    """Best value of the job's best_metric so far."""


@dataclass(frozen=True)
class FitResult:
    state: TrainState
    output_dir: Path
    last_train: dict[str, Any]
    """The last metrics.jsonl training record (averages of its window)."""
    last_eval: dict[str, float] | None
    interrupted: bool = False


def _amp_dtype(run: RunConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or run.precision == "fp32":
        return None
    return torch.bfloat16 if run.precision == "bf16" else torch.float16


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)


def _resume_path(run: RunConfig) -> Path | None:
    out = Path(run.output_dir)
    if run.resume == "off":
        if latest_checkpoint(out) is not None:
            raise AvtoolError(
                f"{out} already holds checkpoints; pass --resume auto to continue or choose another --output"
            )
        return None
    if run.resume == "auto":
        return latest_checkpoint(out)
    path = Path(run.resume)
    if not path.is_file():
        raise AvtoolError(f"--resume {path}: no such checkpoint")
    return path


def _checkpoint(model: nn.Module, optimizer, scaler, state: TrainState, job: Job, config: Any) -> dict[str, Any]:
    return {
        "job": job.name, "model": model.state_dict(), "model_config": model_config_dict(model),
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "state": asdict(state),
        "config": config_json(config),
    }  # fmt: skip


def fit(job: Job, run: RunConfig, optim: OptimConfig, config: Any, console: Console | None = None) -> FitResult:
    """Train ``job`` as configured, on this process's share of the world (see module docstring).

    ``config`` is the job's whole configuration: printed at start, saved as config.json and in every
    checkpoint."""
    env = distributed.setup(run.device)
    try:
        return _fit(job, run, optim, config, env, console)
    finally:
        distributed.teardown()


def _fit(job: Job, run: RunConfig, optim: OptimConfig, config: Any, env: DistEnv, console: Console | None) -> FitResult:
    out = Path(run.output_dir)
    resume_from = _resume_path(run)
    console = console or Console()
    say = console.print if env.is_main else (lambda *a, **k: None)
    torch.manual_seed(_step_seed(run.seed, 0, 0))  # the same initial weights on every rank

    loader = make_loader(
        job.train_dataset(),
        LoaderConfig(batch_size=run.batch_size, workers=run.workers, timeout=run.loader_timeout, seed=run.seed),
        env.rank, env.world_size, collate_fn=job.collate(),
    )  # fmt: skip
    # Every epoch holds whole optimiser steps, so that steps never straddle two epochs of the one pass.
    loader.sampler.whole = run.batch_size * run.accum_steps
    steps_per_epoch = len(loader) // run.accum_steps
    global_batch = run.batch_size * env.world_size * run.accum_steps
    if steps_per_epoch == 0:
        raise AvtoolError(
            f"the training set has {len(loader.dataset)} clips, fewer than one global batch of {global_batch} "
            f"(--batch-size {run.batch_size} × {env.world_size} GPU(s) × --accum-steps {run.accum_steps})"
        )
    total_steps = run.epochs * steps_per_epoch
    schedule = LrSchedule(
        peak_lr=optim.peak_lr(global_batch), total_steps=total_steps,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch), start_lr=optim.lr_start, end_lr=optim.lr_end,
        fixed=optim.fixed_lr,
    )  # fmt: skip

    model = job.build_model().to(env.device)
    optimizer = build_optimizer(model, optim, env.device)
    amp_dtype = _amp_dtype(run, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
    state = TrainState()
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        if checkpoint.get("job") != job.name:
            raise AvtoolError(f"{resume_from} is a checkpoint of `{checkpoint.get('job')}`, not of `{job.name}`")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["state"])
        del checkpoint
    trained = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else model  # fmt: skip
    forward = torch.compile(trained) if run.compile else trained

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", config_json(config))
        say(f"[bold]{job.name}[/] configuration (saved as {out / 'config.json'}):", highlight=False)
        say(config_json(config), highlight=False, markup=False)
        say(
            f"world: {env.world_size} process(es) on {env.device.type}; global batch {global_batch} = "
            f"{run.batch_size} per process × {env.world_size} × {run.accum_steps} accumulation; "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps; peak lr {schedule.peak_lr:.3g}"
            + (f"; resuming at step {state.step} from {resume_from}" if resume_from else ""),
            highlight=False,
        )

    def save(path: Path) -> None:
        started = time.perf_counter()
        if env.is_main:
            save_checkpoint(path, _checkpoint(model, optimizer, scaler, state, job, config))
        monitor.exclude(time.perf_counter() - started)

    def evaluate() -> dict[str, float] | None:
        started = time.perf_counter()
        model.eval()
        with torch.no_grad(), torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            metrics = job.evaluate(model, env)
        model.train()
        if metrics is not None:
            monitor.write({"type": "eval", "step": state.step, "epoch": state.epoch, **metrics})
            summary = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
            monitor.print(f"eval at step {state.step}: {summary}")
        monitor.exclude(time.perf_counter() - started)
        return metrics

    monitor = TrainMonitor(
        out / "metrics.jsonl", enabled=env.is_main, total_steps=total_steps, first_step=state.step,
        videos_per_step=global_batch, world_size=env.world_size, log_every=run.log_every, device=env.device,
        console=console,
    )  # fmt: skip
    last_eval: dict[str, float] | None = None
    stop_at = min(total_steps, run.stop_after or total_steps)
    interrupted = False
    model.train()
    with monitor:
        try:
            if run.eval_at_start and state.step == 0:
                last_eval = evaluate()
            if state.epoch < run.epochs and state.step < stop_at:
                # One pass over all remaining epochs: the workers' prefetch runs on across epoch boundaries.
                skip = state.step_in_epoch * run.accum_steps * run.batch_size
                set_epoch(loader, state.epoch, skip=skip, until=run.epochs)
                batches = iter(loader)
            else:
                monitor.print(f"nothing to do: the run in {out} is at step {state.step} of {stop_at}")
            while state.epoch < run.epochs and state.step < stop_at:
                while state.step_in_epoch < steps_per_epoch and state.step < stop_at:
                    lr = schedule(state.step)
                    set_lr(optimizer, lr)
                    torch.manual_seed(_step_seed(run.seed, env.rank, state.step))
                    loss, extra, data_seconds = _train_step(
                        job, forward, trained, batches, optimizer, scaler, run, amp_dtype, env
                    )
                    state.step += 1
                    state.step_in_epoch += 1
                    monitor.step(state.step, state.epoch, lr, loss, data_seconds, extra)
                    if state.step % run.save_every == 0:
                        save(step_checkpoint_path(out, state.step))
                        if env.is_main:
                            prune_checkpoints(out, run.keep_checkpoints)
                if state.step_in_epoch < steps_per_epoch:  # stopped by --stop-after inside the epoch
                    break
                state.epoch += 1
                state.step_in_epoch = 0
                last_eval = _maybe_evaluate(run, state, evaluate)
                better = _is_better(job, last_eval, state.best)
                if better:
                    state.best = last_eval[job.best_metric]
                if better or state.epoch == run.epochs or state.epoch % run.save_every_epochs == 0:
                    save(step_checkpoint_path(out, state.step))
                if better:
                    save(out / BEST_CHECKPOINT)
                if env.is_main:
                    prune_checkpoints(out, run.keep_checkpoints)
            if state.step_in_epoch:
                save(step_checkpoint_path(out, state.step))
            monitor.flush(state.step, state.epoch, schedule(max(state.step - 1, 0)))
        except KeyboardInterrupt:
            interrupted = True
            save(step_checkpoint_path(out, state.step))
            monitor.print(f"interrupted: saved step {state.step}; rerun the same command to resume")
    return FitResult(state, out, monitor.last, last_eval, interrupted)


def _maybe_evaluate(run: RunConfig, state: TrainState, evaluate: Callable[[], dict | None]) -> dict | None:
    last_epoch = state.epoch == run.epochs
    if last_epoch or (run.eval_every and state.epoch % run.eval_every == 0):
        return evaluate()
    return None


def _is_better(job: Job, metrics: dict[str, float] | None, best: float | None) -> bool:
    if job.best_metric is None or metrics is None or job.best_metric not in metrics:
        return False
    value = metrics[job.best_metric]
    return value == value and (best is None or value > best)  # NaN is never better


def _train_step(
    job: Job,
    forward: nn.Module,
    trained: nn.Module,
    batches: Iterator[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: RunConfig,
    amp_dtype: torch.dtype | None,
    env: DistEnv,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimiser step over ``run.accum_steps`` micro-batches; returns the mean loss, extra numbers
    and the seconds spent waiting for data."""
    data_seconds = 0.0
    total = torch.zeros((), device=env.device)
    extra: dict[str, torch.Tensor] = {}
    for micro in range(run.accum_steps):
        waited = time.perf_counter()
        batch = _to_device(next(batches), env.device)
        data_seconds += time.perf_counter() - waited
        # DDP averages gradients in backward; between accumulated micro-batches that would be wasted traffic.
        last = micro == run.accum_steps - 1
        no_sync = (
            trained.no_sync() if isinstance(trained, DistributedDataParallel) and not last else contextlib.nullcontext()
        )
        with no_sync:
            with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, extra = job.loss(forward, batch, env)
            scaler.scale(loss / run.accum_steps).backward()
        total += loss.detach() / run.accum_steps
    if run.clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trained.parameters(), run.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total, extra, data_seconds
