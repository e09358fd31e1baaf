"""What a run reports while it trains: a progress bar and one JSON line per log interval.

Each line of ``metrics.jsonl`` averages the steps since the previous line: loss, learning rate, data
time (seconds per step spent waiting for the loader: the "data-loading overhead" column of the paper's
Table 4), step time (wall seconds per step, data wait included: its "training speed" column), the
data-wait fraction, videos/s over all GPUs and per GPU, the CUDA memory peak of the window, and the
unreadable clips the loader replaced in it (``bad_clips``, all ranks; a warning line when there are any).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class _Window:
    steps: int = 0
    data_seconds: float = 0.0
    loss_sum: torch.Tensor | None = None
    extra_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0
    """Seconds inside the window that were not training (evaluation, checkpoints)."""
    bad_clips: int = 0
    """Unreadable clips replaced in the window, all ranks."""


class TrainMonitor:
    """Collects per-step numbers without synchronising the GPU; reads them back once per interval."""

    def __init__(
        self,
        path: Path,
        *,
        enabled: bool,
        total_steps: int,
        first_step: int,
        videos_per_step: int,
        world_size: int,
        views_per_video: int = 1,
        log_every: int,
        device: torch.device,
        console: Console | None = None,
        bad_clips: int = 0,
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.videos_per_step = videos_per_step
        self.views_per_video = views_per_video
        self.world_size = world_size
        self.log_every = log_every
        self.device = device
        self.window = _Window()
        self.last: dict[str, Any] = {}
        self.bad_clips_total = bad_clips
        """Unreadable clips replaced in the run so far (all ranks, as of the last sync)."""
        self._bad_pending = 0
        self._bad_reason = ""
        self.progress: Progress | None = None
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False,
            )  # fmt: skip
            self.task = self.progress.add_task("train", total=total_steps, completed=first_step, stats="")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def __enter__(self) -> TrainMonitor:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def print(self, message: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(message, highlight=False)

    def bad_clips(self, count: int, reason: str) -> None:
        """Record clips this rank's loader replaced (``reason``: why the first failed)."""
        self._bad_pending += count
        if reason and not self._bad_reason:
            self._bad_reason = reason

    def sync_bad_clips(self, collective: bool = True) -> int:
        """Move the replaced clips recorded since the last sync into the window and the run's total, summed
        over ranks when ``collective`` (every rank must call it then); returns the run's total."""
        pending = self._bad_pending
        if collective and self.world_size > 1 and dist.is_available() and dist.is_initialized():
            summed = torch.tensor([pending], dtype=torch.int64, device=self.device)
            dist.all_reduce(summed)
            pending = int(summed.item())
        self._bad_pending = 0
        self.window.bad_clips += pending
        self.bad_clips_total += pending
        return self.bad_clips_total

    def step(self, step: int, epoch: int, lr: float, loss: torch.Tensor, data_seconds: float,
             extra: dict[str, torch.Tensor] | None = None) -> dict[str, Any] | None:  # fmt: skip
        """Record a finished optimiser step; every ``log_every`` steps, return and write the averages."""
        w = self.window
        w.steps += 1
        w.data_seconds += data_seconds
        loss = loss.detach().float()
        w.loss_sum = loss if w.loss_sum is None else w.loss_sum + loss
        for name, value in (extra or {}).items():
            value = value.detach().float()
            w.extra_sums[name] = value if name not in w.extra_sums else w.extra_sums[name] + value
        if w.steps < self.log_every:
            if self.progress is not None:
                self.progress.advance(self.task)
            return None
        return self.flush(step, epoch, lr)

    def flush(self, step: int, epoch: int, lr: float) -> dict[str, Any] | None:
        """Write the averages of the steps since the last line (None if there are none)."""
        self.sync_bad_clips()
        w = self.window
        if w.steps == 0:
            return None
        # .item() waits for the GPU, so the wall time below covers the window's kernels too.
        loss = (w.loss_sum / w.steps).item()
        extras = {name: (total / w.steps).item() for name, total in w.extra_sums.items()}
        wall = time.perf_counter() - w.start - w.excluded
        step_time = wall / w.steps
        record = {
            "type": "train", "step": step, "epoch": epoch, "loss": loss, "lr": lr,
            "data_time": w.data_seconds / w.steps, "step_time": step_time,
            "data_wait_fraction": w.data_seconds / wall if wall > 0 else 0.0,
            "videos_per_s": self.videos_per_step / step_time,
            "videos_per_s_per_gpu": self.videos_per_step / step_time / self.world_size,
            "bad_clips": w.bad_clips, **extras,
        }  # fmt: skip
        if self.views_per_video > 1:  # repeated sampling: the GPU trains on more views than the loader decodes
            record["views_per_s"] = record["videos_per_s"] * self.views_per_video
        if self.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
            torch.cuda.reset_peak_memory_stats(self.device)
        self.last = record
        self.write(record)
        if w.bad_clips:
            first = f"; the first: {escape(self._bad_reason)}" if self._bad_reason else ""
            self.print(f"[yellow]warning:[/] {w.bad_clips} unreadable clip(s) replaced by other samples by step "
                       f"{step} ({self.bad_clips_total} in the run){first}")  # fmt: skip
            self._bad_reason = ""
        if self.progress is not None:
            self.progress.update(self.task, completed=step)
            memory = f" mem {record['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in record else ""
            self.progress.update(
                self.task,
                description=f"epoch {epoch}",
                stats=f"loss {loss:.4f} lr {lr:.2e} data {record['data_time']:.3f}s step {step_time:.3f}s "
                f"{record['videos_per_s']:.1f} vid/s{memory}",
            )
        self.window = _Window()
        return record

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (rank 0 only)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a checkpoint) out of the current window's step time."""
        self.window.excluded += seconds
