"""How fast a volume reads: time reading whole files with each evicted from the page cache first.

The page cache is dropped for the test files with posix_fadvise(DONTNEED), which needs no privileges;
where that is not available the figure is reported as cache-warm. Used by `avtool bench io` (both
figures) and `avtool chunk` (S_r of the destination volume, for Eq. 3): it lives outside both
packages so that neither imports the other.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from avtool.errors import AvtoolError

_BLOCK = 8 * 2**20


@dataclass(frozen=True)
class ReadResult:
    kind: str
    """``sequential`` or ``random-chunks``."""
    bytes: int
    seconds: float
    files: int
    threads: int
    cache: str
    """How the page cache was handled: ``dropped (posix_fadvise)`` or ``warm``."""

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "MB_per_s": round(self.bytes_per_second / 1e6, 1),
                "files_per_s": round(self.files / self.seconds, 1) if self.seconds else 0.0}  # fmt: skip


def drop_page_cache(path: Path) -> bool:
    """Evict ``path`` from the page cache; False when this OS or file system cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_test_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes to ``path`` and flush them to the device."""
    block = os.urandom(min(_BLOCK, size))  # random bytes: no compressing file system can cheat
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            f.write(block[:n])
            written += n
        f.flush()
        os.fsync(f.fileno())


def _read_whole(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_BLOCK):
            total += len(chunk)
    return total


def check_test_dir(path: Path) -> None:
    """Raise unless ``path`` is a writable folder (the measurements write their test files there)."""
    if not path.is_dir():
        raise AvtoolError(f"{path}: not a folder")
    if not os.access(path, os.W_OK):
        raise AvtoolError(f"{path}: not writable (the benchmark writes its test files there)")


def measure_sequential_read(path: Path, size_bytes: int) -> ReadResult:
    """Write one ``size_bytes`` file under ``path``, drop it from the cache, and time reading it."""
    check_test_dir(path)
    with tempfile.TemporaryDirectory(prefix=".avtool-io-", dir=path) as tmp:
        target = Path(tmp) / "sequential.bin"
        try:
            write_test_file(target, size_bytes)
        except OSError as e:
            raise AvtoolError(f"{path}: cannot write the {size_bytes / 1e6:.0f} MB test file ({e.strerror})") from None
        dropped = drop_page_cache(target)
        start = time.perf_counter()
        read = _read_whole(target)
        seconds = time.perf_counter() - start
    return ReadResult("sequential", read, seconds, 1, 1, "dropped (posix_fadvise)" if dropped else "warm")


def measure_random_chunk_reads(files: list[Path], threads: int, seed: int) -> ReadResult:
    """Read whole ``files`` in a random order with ``threads`` readers, each evicted from the cache first."""
    order = list(files)
    random.Random(seed).shuffle(order)
    dropped = all([drop_page_cache(f) for f in order])
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(_read_whole, order))
    seconds = time.perf_counter() - start
    return ReadResult("random-chunks", total, seconds, len(order), threads,
                      "dropped (posix_fadvise)" if dropped else "warm")  # fmt: skip
