"""`avtool bench io`: read throughput of a volume (S_r of the paper's Eq. 3).

Two figures: sequential reads of one large file (the paper's "maximum read speed"), and reads of
whole chunk-sized files in random order by several threads (what a training data loader does). The
page cache is dropped for the test files with posix_fadvise(DONTNEED), which needs no privileges;
where that is not available the figure is reported as cache-warm. The measurements themselves are in
``avtool.readspeed``, which `avtool chunk` uses too.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from avtool.errors import AvtoolError
from avtool.options import option
from avtool.readspeed import (
    ReadResult,
    check_test_dir,
    measure_random_chunk_reads,
    measure_sequential_read,
    write_test_file,
)
from avtool.train.config import output_option, seed_option


@dataclass(frozen=True)
class IoBenchConfig:
    """Read throughput of one volume: S_r of Eq. 3."""

    path: Path = option(panel="Data", flags="--path", positional=True, metavar="DIR",
                        help="A folder on the volume to measure (e.g. where the chunks live); test files are "
                        "written there and removed.")  # fmt: skip
    file_size_mb: int = option(1024, unit="MB", help="Size of the sequential-read test file.")
    chunk_files: int = option(200, help="Chunk files read in random order (existing videos under PATH first).")
    chunk_size_mb: float = option(2.0, unit="MB", help="Size of each generated chunk file (a 15-s 288p chunk "
                                  "at 1 Mb/s is about 1.9 MB).")  # fmt: skip
    threads: int = option(8, help="Concurrent readers for the random chunk reads.")
    seed: int = seed_option("random read order")
    output_dir: Path = output_option("results", "io.csv and io.json")


def run_io_bench(cfg: IoBenchConfig) -> list[ReadResult]:
    """Both measurements on ``cfg.path``'s volume."""
    path = Path(cfg.path)
    check_test_dir(path)
    results = [measure_sequential_read(path, int(cfg.file_size_mb * 1e6))]
    existing = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".mp4", ".mkv", ".webm"} and p.is_file())
    if len(existing) >= cfg.chunk_files:
        chosen = random.Random(cfg.seed).sample(existing, cfg.chunk_files)
        results.append(measure_random_chunk_reads(chosen, cfg.threads, cfg.seed))
        return results
    with tempfile.TemporaryDirectory(prefix=".avtool-io-", dir=path) as tmp:
        generated = []
        for i in range(cfg.chunk_files):
            f = Path(tmp) / f"{i}.bin"
            try:
                write_test_file(f, int(cfg.chunk_size_mb * 1e6))
            except OSError as e:
                raise AvtoolError(f"{path}: cannot write test chunk files ({e.strerror})") from None
            generated.append(f)
        results.append(measure_random_chunk_reads(generated, cfg.threads, cfg.seed))
    return results
