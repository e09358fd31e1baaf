"""The training loop every job shares: DDP, the optimiser step (``avtool.train.step``: autocast, gradient
accumulation and clipping), the LR schedule, checkpoints with resume, evaluation and the best checkpoint,
and metrics.

A job (``avtool.train.lavila``, ``.mir``, ``.cls``) says what is specific to it through the ``Job``
protocol: its model, its training set, its loss and its evaluation. ``fit`` does the rest.

Randomness: the data draws from (seed, epoch, index) (``avtool.data``) and every optimiser step
reseeds torch from (seed, rank, step), so a run resumed from a checkpoint draws exactly what the
uninterrupted run would have drawn, without storing generator states.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from avtool.atomic import atomic_write_text
from avtool.data.bad_clips import BadClipTally, ReplaceBadClips
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
from avtool.train.config import COMPILE_MODES, OptimConfig, RunConfig, autocast_dtype, config_json
from avtool.train.distributed import DistEnv
from avtool.train.model_factory import model_config_dict
from avtool.train.monitor import TrainMonitor
from avtool.train.optim import build_optimizer, set_lr
from avtool.train.schedule import LrSchedule
from avtool.train.step import TrainStep, grad_scaler

BEST_CHECKPOINT = "checkpoint_best.pt"


class Job(Protocol):
    """What a training job adds to the shared loop."""

    name: str
    """`lavila`, `mir` or `cls`: recorded in checkpoints, which `avtool eval` checks."""
    best_metric: str | None
    """Key of ``evaluate``'s result that picks the best checkpoint (higher is better); None: no best."""
    views_per_video: int
    """Training views the step makes of each loaded video (VideoMAE V2's repeated sampling), else 1."""

    def build_model(self) -> nn.Module: ...

    def train_dataset(self) -> Dataset: ...

    def eval_dataset(self) -> Dataset | None:
        """The validation set ``evaluate`` reads (None: none); built, and so checked, before the first step."""
        ...

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
    bad_clips: int = 0
    """Unreadable clips replaced by other samples so far (``--on-bad-clip skip``), all ranks together."""


@dataclass(frozen=True)
class FitResult:
    state: TrainState
    output_dir: Path
    last_train: dict[str, Any]
    """The last metrics.jsonl training record (averages of its window)."""
    last_eval: dict[str, float] | None
    interrupted: bool = False


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
    flush_denormals(env.device)
    try:
        return _fit(job, run, optim, config, env, console)
    finally:
        distributed.teardown()


@dataclass
class _Run:
    """A run's live objects, made by ``_setup`` and used until ``_fit`` returns."""

    job: Job
    run: RunConfig
    config: Any
    env: DistEnv
    out: Path
    loader: DataLoader
    steps_per_epoch: int
    stop_at: int
    """The step this invocation stops at: ``--stop-after`` or the end of the schedule."""
    schedule: LrSchedule
    training: Training
    state: TrainState
    monitor: TrainMonitor
    last_eval: dict[str, float] | None = None


def _fit(job: Job, run: RunConfig, optim: OptimConfig, config: Any, env: DistEnv, console: Console | None) -> FitResult:
    r = _setup(job, run, optim, config, env, console or Console())
    interrupted = False
    r.training.model.train()
    # Closing the loader stops its workers now, before the process group goes and on any error.
    first_step = r.state.step
    with r.monitor, r.loader:
        try:
            _train_epochs(r)
        except KeyboardInterrupt:
            interrupted = True
            _save(r, step_checkpoint_path(r.out, r.state.step), collective=False)
            r.monitor.print(f"interrupted: saved step {r.state.step}; rerun the same command to resume")
        except AvtoolError as e:
            # A bad clip (--on-bad-clip fail), a dead worker, an evaluation that cannot read its data: the steps
            # trained so far are kept, so that the rerun after the fix resumes instead of starting over.
            if r.state.step > first_step:
                e.args = (f"{e}; {_save_after_error(r)}",)  # the same error (and exit status), one line longer
            raise
    return FitResult(r.state, r.out, r.monitor.last, r.last_eval, interrupted)


def _save_after_error(r: _Run) -> str:
    """Save the run where an error stopped it; what happened, for the error's message."""
    try:
        _save(r, step_checkpoint_path(r.out, r.state.step), collective=False)
    except (OSError, AvtoolError) as e:
        return f"the checkpoint of step {r.state.step} could not be saved either ({e})"
    return f"saved step {r.state.step} first: rerun the same command to resume"


def flush_denormals(device: torch.device) -> None:
    """On a CPU, compute float32 denormals as zero. x86 takes a slow microcode path for them, and AdamW's
    second moments of tiny gradients are denormal: a tiny model's step took 35× longer (2.7 s against 0.07 s).
    The setting is per thread and new threads copy it, so call this before torch starts its thread pool
    (the first parallel op): ``fit`` and the benchmarks call it first."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def build_loader(
    job: Job, run: RunConfig, env: DistEnv, dataset: Dataset | None = None, collate_fn: Callable | None = None
) -> DataLoader:
    """The training loader of ``job`` on this rank, as a run iterates it; a benchmark may pass the job's
    training set and collation wrapped (``dataset``, ``collate_fn``). Unreadable clips are replaced or fatal
    as ``run.on_bad_clip`` says (``avtool.data.bad_clips``)."""
    dataset = dataset if dataset is not None else job.train_dataset()
    loader = make_loader(
        ReplaceBadClips(dataset, seed=run.seed, fail=run.on_bad_clip == "fail"),
        LoaderConfig(batch_size=run.batch_size, workers=run.workers, timeout=run.loader_timeout, seed=run.seed),
        env.rank, env.world_size, collate_fn=collate_fn or job.collate(),
    )  # fmt: skip
    # Every epoch holds whole optimiser steps, so that steps never straddle two epochs of the one pass.
    loader.sampler.whole = run.batch_size * run.accum_steps
    return loader


@dataclass
class Training:
    """The model of a run and its optimiser step, as `avtool train` runs them and the benchmarks time them."""

    model: nn.Module
    """The bare model: checkpoints and evaluation."""
    forward: nn.Module
    """The model as the loss runs it: DDP-wrapped and compiled as configured."""
    train_step: TrainStep
    """One optimiser step; holds the optimiser and the gradient scaler."""
    state: TrainState
    """Where the run is (restored from ``resume_from``, else the start)."""
    bad_clips: BadClipTally = field(default_factory=BadClipTally)
    """Clips the loader replaced in the batches taken since the loop last looked."""


def build_training(
    job: Job, run: RunConfig, optim: OptimConfig, env: DistEnv, resume_from: Path | None = None
) -> Training:
    """The job's model on the device, its optimiser and step, restored from ``resume_from`` if given, then
    wrapped in DDP and compiled as ``run`` says."""
    flush_denormals(env.device)
    model = job.build_model().to(env.device)
    optimizer = build_optimizer(model, optim, env.device)
    amp_dtype = autocast_dtype(run.precision, env.device.type)
    scaler = grad_scaler(env.device, amp_dtype)
    state = TrainState() if resume_from is None else _restore(resume_from, job, model, optimizer, scaler)
    trained = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else model  # fmt: skip
    forward = torch.compile(trained, **COMPILE_MODES[run.compile_mode]) if run.compile else trained
    train_step = TrainStep(
        trained, optimizer, scaler, env.device, amp_dtype, accum_steps=run.accum_steps,
        clip_grad_norm=run.clip_grad_norm,
    )  # fmt: skip
    return Training(model, forward, train_step, state)


def train_one_step(
    job: Job, training: Training, batches: Iterator[dict[str, Any]], env: DistEnv
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimiser step of ``job`` over the step's micro-batches from ``batches``; returns the mean loss, the
    last micro-batch's extra numbers and the seconds spent waiting for data (``next`` and the copy to the
    device)."""
    data_seconds = 0.0
    extra: dict[str, torch.Tensor] = {}

    def micro_batches() -> Iterator[dict[str, Any]]:
        nonlocal data_seconds
        for _ in range(training.train_step.accum_steps):
            waited = time.perf_counter()
            batch = next(batches)
            training.bad_clips.add(batch)
            batch = _to_device(batch, env.device)
            data_seconds += time.perf_counter() - waited
            yield batch

    def loss(batch: dict[str, Any]) -> torch.Tensor:
        nonlocal extra
        value, extra = job.loss(training.forward, batch, env)
        return value

    total = training.train_step(micro_batches(), loss)
    return total, extra, data_seconds


def _setup(job: Job, run: RunConfig, optim: OptimConfig, config: Any, env: DistEnv, console: Console) -> _Run:
    """The loader, schedule, model, optimiser and monitor of a run, resumed from its checkpoint if any."""
    out = Path(run.output_dir)
    resume_from = _resume_path(run)
    torch.manual_seed(_step_seed(run.seed, 0, 0))  # the same initial weights on every rank

    check_datasets(job)
    loader = build_loader(job, run, env)
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
    training = build_training(job, run, optim, env, resume_from)
    state = training.state

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", config_json(config))
        console.print(f"[bold]{job.name}[/] configuration (saved as {out / 'config.json'}):", highlight=False)
        console.print(config_json(config), highlight=False, markup=False)
        console.print(
            f"world: {env.world_size} process(es) on {env.device.type}; global batch {global_batch} = "
            f"{run.batch_size} per process × {env.world_size} × {run.accum_steps} accumulation; "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps; peak lr {schedule.peak_lr:.3g}"
            + (f"; resuming at step {state.step} from {resume_from}" if resume_from else ""),
            highlight=False,
        )
    monitor = TrainMonitor(
        out / "metrics.jsonl", enabled=env.is_main, total_steps=total_steps, first_step=state.step,
        videos_per_step=global_batch, views_per_video=job.views_per_video, world_size=env.world_size,
        log_every=run.log_every, device=env.device, console=console, bad_clips=state.bad_clips,
    )  # fmt: skip
    return _Run(
        job=job, run=run, config=config, env=env, out=out, loader=loader, steps_per_epoch=steps_per_epoch,
        stop_at=min(total_steps, run.stop_after or total_steps), schedule=schedule, training=training,
        state=state, monitor=monitor,
    )  # fmt: skip


def check_datasets(job: Job) -> None:
    """Build every dataset the run will read, so that all their problems come in one error before anything
    heavy starts: a bad validation split found at the first evaluation would cost an epoch."""
    errors = []
    for build in (job.train_dataset, job.eval_dataset):
        try:
            build()
        except AvtoolError as e:
            errors.append(str(e))
    if errors:
        raise AvtoolError("; ".join(errors))


def _restore(path: Path, job: Job, model: nn.Module, optimizer, scaler) -> TrainState:
    """Load a checkpoint of ``job`` into the model, optimiser and scaler; returns where the run was."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("job") != job.name:
        raise AvtoolError(f"{path} is a checkpoint of `{checkpoint.get('job')}`, not of `{job.name}`")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    return TrainState(**checkpoint["state"])


def _train_epochs(r: _Run) -> None:
    """Train from where the run is to ``stop_at`` or the last epoch, then save where it stopped."""
    state = r.state
    if r.run.eval_at_start and state.step == 0:
        r.last_eval = _evaluate(r)
    if _steps_left(r):
        # One pass over all remaining epochs: the workers' prefetch runs on across epoch boundaries.
        skip = state.step_in_epoch * r.run.accum_steps * r.run.batch_size
        set_epoch(r.loader, state.epoch, skip=skip, until=r.run.epochs)
        batches = iter(r.loader)
        while _steps_left(r):
            _run_epoch(r, batches)
            if state.step_in_epoch < r.steps_per_epoch:  # stopped by --stop-after inside the epoch
                break
            _end_of_epoch(r)
    else:
        r.monitor.print(f"nothing to do: the run in {r.out} is at step {state.step} of {r.stop_at}")
    if state.step_in_epoch:
        _save(r, step_checkpoint_path(r.out, state.step))
    r.monitor.flush(state.step, state.epoch, r.schedule(max(state.step - 1, 0)))
    state.bad_clips = r.monitor.bad_clips_total


def _steps_left(r: _Run) -> bool:
    return r.state.epoch < r.run.epochs and r.state.step < r.stop_at


def _run_epoch(r: _Run, batches: Iterator[dict[str, Any]]) -> None:
    """Optimiser steps to the end of the current epoch (or to ``stop_at``), with step checkpoints."""
    state = r.state
    while state.step_in_epoch < r.steps_per_epoch and state.step < r.stop_at:
        lr = r.schedule(state.step)
        set_lr(r.training.train_step.optimizer, lr)
        torch.manual_seed(_step_seed(r.run.seed, r.env.rank, state.step))
        loss, extra, data_seconds = train_one_step(r.job, r.training, batches, r.env)
        state.step += 1
        state.step_in_epoch += 1
        r.monitor.bad_clips(*r.training.bad_clips.take())
        r.monitor.step(state.step, state.epoch, lr, loss, data_seconds, extra)
        if state.step % r.run.save_every == 0:
            _save(r, step_checkpoint_path(r.out, state.step))
            if r.env.is_main:
                prune_checkpoints(r.out, r.run.keep_checkpoints)


def _end_of_epoch(r: _Run) -> None:
    """Count the finished epoch, evaluate it when due, and save its checkpoints (and a new best)."""
    state, run = r.state, r.run
    state.epoch += 1
    state.step_in_epoch = 0
    due = state.epoch == run.epochs or (run.eval_every and state.epoch % run.eval_every == 0)
    r.last_eval = _evaluate(r) if due else None
    better = _is_better(r.job, r.last_eval, state.best)
    if better:
        state.best = r.last_eval[r.job.best_metric]
    if better or state.epoch == run.epochs or state.epoch % run.save_every_epochs == 0:
        _save(r, step_checkpoint_path(r.out, state.step))
    if better:
        _save(r, r.out / BEST_CHECKPOINT)
    if r.env.is_main:
        prune_checkpoints(r.out, run.keep_checkpoints)


def _is_better(job: Job, metrics: dict[str, float] | None, best: float | None) -> bool:
    if job.best_metric is None or metrics is None or job.best_metric not in metrics:
        return False
    value = metrics[job.best_metric]
    return value == value and (best is None or value > best)  # NaN is never better


def _evaluate(r: _Run) -> dict[str, float] | None:
    """The job's validation metrics, logged; their time is left out of the training speed."""
    started = time.perf_counter()
    amp_dtype = r.training.train_step.amp_dtype
    r.training.model.eval()
    with torch.no_grad(), torch.autocast(r.env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        metrics = r.job.evaluate(r.training.model, r.env)
    r.training.model.train()
    if metrics is not None:
        r.monitor.write({"type": "eval", "step": r.state.step, "epoch": r.state.epoch, **metrics})
        summary = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        r.monitor.print(f"eval at step {r.state.step}: {summary}")
    r.monitor.exclude(time.perf_counter() - started)
    return metrics


def _save(r: _Run, path: Path, collective: bool = True) -> None:
    """Write a checkpoint of the run (on rank 0); its time is left out of the training speed. ``collective``:
    every rank saves at this step (the count of replaced clips is summed over them first)."""
    started = time.perf_counter()
    r.state.bad_clips = r.monitor.sync_bad_clips(collective)
    if r.env.is_main:
        step = r.training.train_step
        save_checkpoint(path, _checkpoint(r.training.model, step.optimizer, step.scaler, r.state, r.job, r.config))
    r.monitor.exclude(time.perf_counter() - started)
