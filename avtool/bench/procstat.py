"""What the machine did during a timed window, from Linux's /proc: the share of all cores that was busy, and
the bytes the data-loader workers read (all reads, and those that reached the storage device).

Elsewhere (no /proc) the counters read as None and the benchmarks leave those columns empty.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot; None without /proc/stat."""
    try:
        first = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


def child_pids(parent: int | None = None) -> list[int]:
    """Processes whose parent is ``parent`` (default: this one): the data-loader's workers among them."""
    parent = os.getpid() if parent is None else parent
    pids = []
    for entry in _PROC.glob("[0-9]*"):
        try:
            # The command name may hold spaces and parentheses: the fields after its closing one are fixed.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            pids.append(int(entry.name))
    return pids


def io_bytes(pids: list[int]) -> tuple[int, int] | None:
    """(bytes read by read calls, bytes fetched from storage) summed over ``pids``; None without /proc."""
    if not (_PROC / "self" / "io").exists():
        return None
    logical = storage = 0
    for pid in pids:
        try:
            lines = (_PROC / str(pid) / "io").read_text().splitlines()
        except OSError:  # exited, or not ours to read
            continue
        fields = dict(line.split(": ") for line in lines if ": " in line)
        logical += int(fields.get("rchar", 0))
        storage += int(fields.get("read_bytes", 0))
    return logical, storage


def own_read_bytes() -> int | None:
    """Bytes this process has read through read calls (page-cache hits included); None without /proc."""
    try:
        for line in (_PROC / "self" / "io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Usage:
    """What a window used: seconds, busy share of all cores, and the bytes the given processes read."""

    seconds: float
    cpu_utilisation: float | None
    """Busy fraction of all cores, 0-1."""
    read_bytes: int | None
    """Bytes the processes read through read calls (page-cache hits included)."""
    storage_bytes: int | None
    """Bytes that came from the storage device."""

    def read_mb_per_s(self) -> float | None:
        return None if self.read_bytes is None or self.seconds <= 0 else self.read_bytes / self.seconds / 1e6

    def storage_mb_per_s(self) -> float | None:
        return None if self.storage_bytes is None or self.seconds <= 0 else self.storage_bytes / self.seconds / 1e6


class UsageMeter:
    """Counters at ``start()`` and at ``stop()``; the processes are this process's children at start."""

    def start(self) -> None:
        self._pids = child_pids()
        self._ticks = cpu_ticks()
        self._io = io_bytes(self._pids)
        self._time = time.perf_counter()

    def stop(self) -> Usage:
        seconds = time.perf_counter() - self._time
        ticks, io = cpu_ticks(), io_bytes(self._pids)
        cpu = None
        if ticks is not None and self._ticks is not None and ticks[1] > self._ticks[1]:
            cpu = (ticks[0] - self._ticks[0]) / (ticks[1] - self._ticks[1])
        if io is None or self._io is None:
            return Usage(seconds, cpu, None, None)
        # A worker that exited inside the window takes its counts with it; never report a negative.
        return Usage(seconds, cpu, max(0, io[0] - self._io[0]), max(0, io[1] - self._io[1]))
