"""Timed runs of the real training pipeline, shared by `avtool bench ladder` and `bench pipeline`.

Three measurements, each of the job's own pieces (``avtool.train.engine``: its loader, model, optimiser
and step):

- ``time_training``: the whole loop, chunk files → loader workers → the GPU step, timed as AVION's meters
  time an iteration: *data* is the time from the end of the previous iteration until the batch is on the
  device, *iteration* the whole of it. The GPU is synchronised at the end of every step, so an iteration's
  time holds its kernels (AVION relied on the gradient scaler's implicit synchronisation; with bf16 there is
  none). Steady state only: the loader starts with its prefetch queue full, which hides a slow loader for as
  many batches as the queue holds, so timing starts at the first step that waited for data (the queue is
  empty from then on) when that happens in the first half of the window.
- ``time_resident``: the same step on one batch kept on the device: what the GPU alone sustains.
- ``time_loader``: the loader alone, into pinned memory, as fast as it delivers.

Each sample also carries the seconds its worker spent on it (``TimedDataset``), so the loader's capacity
(clips/s its workers could deliver) is known from inside a training run too, without a second run.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from avtool.bench.procstat import Usage, UsageMeter, own_read_bytes
from avtool.data.base import ClipDataset
from avtool.data.loader import Loader, set_epoch
from avtool.errors import AvtoolError
from avtool.options import option
from avtool.train.config import RunConfig
from avtool.train.distributed import DistEnv
from avtool.train.engine import Job, Training, build_loader, train_one_step

LOAD_SECONDS = "load_seconds"
"""Key of a sample's (and a batch's) worker seconds."""


def read_limit_option() -> Any:
    return option(
        None, panel="Data", unit="MB/s", show_default="none",
        help="Cap the loader's reads at this rate, all workers together (a planted IO bottleneck, or a slower "
        "volume than this one).",
    )  # fmt: skip


def timing_problems(seconds: float, warmup_steps: int, min_steps: int, read_limit: float | None) -> list[str]:
    """What is wrong with a bench's timing settings (shared by the ladder and the pipeline)."""
    out = []
    if seconds <= 0 or warmup_steps < 0 or min_steps < 1:
        out.append("seconds must be positive, warmup_steps at least 0 and min_steps at least 1")
    if read_limit is not None and read_limit <= 0:
        out.append(f"read_limit={read_limit} must be positive")
    return out


class TimedDataset(Dataset):
    """A clip dataset whose samples carry the seconds their worker spent on them. ``read_limit`` (bytes/s, all
    workers together) makes each worker sleep until its reads fit its share of the rate; ``drop_page_cache``
    evicts each chunk file after its clip is read, where the OS allows (``cache`` says which it was)."""

    def __init__(self, dataset: ClipDataset, read_limit: float | None = None, drop_page_cache: bool = False) -> None:
        if drop_page_cache and hasattr(os, "posix_fadvise"):
            dataset.clips = dataclasses.replace(dataset.clips, drop_page_cache=True)
        self.dataset = dataset
        self.read_limit = read_limit
        self.cache = "dropped (posix_fadvise)" if dataset.clips.drop_page_cache else "warm"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # The loader and the jobs look at the wrapped dataset's settings (its decoder, its clips).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        started = time.perf_counter()
        before = own_read_bytes() if self.read_limit else None
        sample = self.dataset[key]
        if before is not None:
            info = get_worker_info()
            share = self.read_limit / (info.num_workers if info is not None else 1)
            read = (own_read_bytes() or before) - before
            time.sleep(max(0.0, read / share - (time.perf_counter() - started)))
        return {**sample, LOAD_SECONDS: time.perf_counter() - started}


class TimedCollate:
    """The job's collation, with the batch's summed worker seconds under ``LOAD_SECONDS``."""

    def __init__(self, collate: Callable | None) -> None:
        self.collate = collate or default_collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        seconds = sum(sample.pop(LOAD_SECONDS) for sample in samples)
        batch = self.collate(samples)
        batch[LOAD_SECONDS] = torch.tensor(seconds, dtype=torch.float64)
        return batch


@dataclass(frozen=True)
class Timing:
    """One timed window of a run."""

    steps: int
    """Steps (or batches) in the window."""
    clips: int
    """Clips in the window (this process)."""
    seconds: float
    data_seconds: float
    """Of ``seconds``, waiting for batches."""
    load_seconds: float
    """Worker seconds spent on the window's clips (all workers together)."""
    workers: int
    peak_memory_gb: float | None
    usage: Usage
    steady: bool
    """False when the loader's prefetch queue may not have drained within the window (see module doc)."""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    @property
    def iteration_s(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def data_s(self) -> float:
        return self.data_seconds / self.steps if self.steps else 0.0

    @property
    def loader_clips_per_s(self) -> float | None:
        """Clips/s the workers could deliver: clips per worker second × workers (None without workers)."""
        if not self.workers or self.load_seconds <= 0:
            return None
        return self.clips / self.load_seconds * self.workers

    @property
    def bytes_per_clip(self) -> float | None:
        read = self.usage.read_bytes
        return None if read is None or not self.clips else read / self.clips


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _batch_clips(batch: dict[str, Any]) -> int:
    return len(batch["video"])


def time_training(
    job: Job,
    training: Training,
    batches: Iterator[dict[str, Any]],
    env: DistEnv,
    *,
    warmup_steps: int,
    seconds: float,
    min_steps: int,
    workers: int,
) -> Timing:
    """Train ``warmup_steps`` untimed steps, then time steps until ``seconds`` have passed and at least
    ``min_steps`` were taken; the steady part of the window is reported (module docstring)."""
    loads: list[tuple[float, int]] = []

    def unpacked() -> Iterator[dict[str, Any]]:
        for batch in batches:
            loads.append((float(batch.pop(LOAD_SECONDS)), _batch_clips(batch)))
            yield batch

    source = unpacked()
    for _ in range(warmup_steps):
        train_one_step(job, training, source, env)
    _synchronize(env.device)
    _reset_peak(env.device)
    loads.clear()
    meter = UsageMeter()
    meter.start()
    records: list[tuple[float, float]] = []  # (data, iteration) seconds per step
    window_start = end = time.perf_counter()
    while end - window_start < seconds or len(records) < min_steps:
        _, _, data = train_one_step(job, training, source, env)
        _synchronize(env.device)
        now = time.perf_counter()
        records.append((data, now - end))
        end = now
    usage = meter.stop()
    per_step = training.train_step.accum_steps
    first = _first_waiting_step(records)
    steady = first is not None and first < len(records) // 2
    kept = records[first:] if steady else records
    kept_loads = loads[(len(records) - len(kept)) * per_step :]
    if not steady:
        steady = _loader_keeps_up(kept, kept_loads, workers)
    return Timing(
        steps=len(kept), clips=sum(n for _, n in kept_loads), seconds=sum(it for _, it in kept),
        data_seconds=sum(d for d, _ in kept), load_seconds=sum(s for s, _ in kept_loads), workers=workers,
        peak_memory_gb=_peak_memory(env.device), usage=usage, steady=steady,
    )  # fmt: skip


def _first_waiting_step(records: list[tuple[float, float]]) -> int | None:
    """The first step that spent more than 5% of its iteration waiting for its batch."""
    for i, (data, iteration) in enumerate(records):
        if data > 0.05 * iteration:
            return i
    return None


def _loader_keeps_up(records: list[tuple[float, float]], loads: list[tuple[float, int]], workers: int) -> bool:
    """No step waited: the window is steady if the workers could deliver what the steps took."""
    load_seconds = sum(s for s, _ in loads)
    if not workers or load_seconds <= 0:
        return True  # no workers: the main process loads every batch itself, inside the timed window
    capacity = sum(n for _, n in loads) / load_seconds * workers
    taken = sum(n for _, n in loads) / max(sum(it for _, it in records), 1e-9)
    return capacity >= 0.95 * taken


def time_resident(
    job: Job, training: Training, batch: dict[str, Any], env: DistEnv, *, warmup_steps: int, seconds: float,
    min_steps: int,
) -> Timing:  # fmt: skip
    """The training step on one batch already on the device, timed as ``time_training`` times the loop."""
    batch = {k: v.to(env.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != LOAD_SECONDS}
    resident = itertools.repeat(batch)
    for _ in range(warmup_steps):
        train_one_step(job, training, resident, env)
    _synchronize(env.device)
    _reset_peak(env.device)
    meter = UsageMeter()
    meter.start()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or steps < min_steps:
        train_one_step(job, training, resident, env)
        _synchronize(env.device)
        steps += 1
    elapsed = time.perf_counter() - started
    clips = steps * _batch_clips(batch) * training.train_step.accum_steps
    return Timing(steps, clips, elapsed, 0.0, 0.0, 0, _peak_memory(env.device), meter.stop(), steady=True)


def time_loader(loader: DataLoader, *, seconds: float, rounds: int = 2) -> Timing:
    """The loader alone, from a fresh start: clips/s between the end of the workers' first round of batches
    and the end of ``rounds`` more (or of ``seconds``, whichever comes later), so that neither worker
    start-up nor the first burst of batches counts."""
    workers = max(loader.num_workers, 1)
    batches = iter(loader)
    try:
        load_seconds = 0.0
        for _ in range(workers):  # the first round: every worker's first batch
            next(batches)
        meter = UsageMeter()
        meter.start()
        clips = steps = 0
        started = time.perf_counter()
        while steps < rounds * workers or time.perf_counter() - started < seconds:
            batch = next(batches)
            load_seconds += float(batch.pop(LOAD_SECONDS, 0.0))
            clips += _batch_clips(batch)
            steps += 1
        elapsed = time.perf_counter() - started
        return Timing(steps, clips, elapsed, elapsed, load_seconds, loader.num_workers, None, meter.stop(), True)
    finally:
        del batches
        close_loader(loader)
        gc.collect()


def timed_loader(
    job: Job, run: RunConfig, env: DistEnv, *, read_limit_mb_per_s: float | None, drop_page_cache: bool
) -> tuple[TimedDataset, DataLoader]:
    """The job's own loader over its training set, each sample carrying its worker seconds (``TimedDataset``),
    reads capped at ``read_limit_mb_per_s`` (all workers together) when given."""
    limit = None if read_limit_mb_per_s is None else read_limit_mb_per_s * 1e6
    dataset = TimedDataset(job.train_dataset(), limit, drop_page_cache)
    if len(dataset) < run.batch_size:
        raise AvtoolError(f"the training set has {len(dataset)} clips, fewer than one batch of {run.batch_size}: "
                          "lower --batch-size or give more clips")  # fmt: skip
    loader = build_loader(job, run, env, dataset=dataset, collate_fn=TimedCollate(job.collate()))
    set_epoch(loader, 0, until=1_000_000)  # one pass that runs on across epochs, as training's does
    return dataset, loader


def release_memory(device: torch.device) -> None:
    """Free what a finished measurement held (its model, optimiser and batches) before the next one builds."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's workers now (persistent workers would otherwise live as long as the loader)."""
    if isinstance(loader, Loader):
        loader.close()
