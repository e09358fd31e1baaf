"""`avtool bench ...`: measure the IO, CPU and GPU bottlenecks on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from avtool.cli.console import console

bench_app = typer.Typer(help="Measure the IO, CPU and GPU bottlenecks on this machine.", no_args_is_help=True)


@bench_app.command("io")
def bench_io(
    path: Annotated[Path, typer.Argument(help="A folder on the volume to measure (e.g. where chunks live).")],
    file_size_mb: Annotated[int, typer.Option(help="Size of the sequential-read test file, MiB.")] = 1024,
    chunk_files: Annotated[int, typer.Option(help="Chunk files read in random order (existing videos first).")] = 200,
    chunk_size_mb: Annotated[float, typer.Option(help="Size of each generated chunk file, MiB.")] = 2.0,
    threads: Annotated[int, typer.Option(help="Concurrent readers for the random chunk reads.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random read order.")] = 0,
    output: Annotated[Path, typer.Option(help="Folder for io.csv and io.json.")] = Path("results"),
) -> None:
    """Measure S_r: sequential read MB/s of a large file and MB/s of random whole chunk files, page
    cache dropped (posix_fadvise) where the file system allows it, else reported as warm."""
    from avtool.bench.io import IoBenchConfig, run_io_bench
    from avtool.results import write_results

    cfg = IoBenchConfig(path, file_size_mb, chunk_files, chunk_size_mb, threads, seed)
    with console.status(f"measuring reads on {path} ..."):
        results = run_io_bench(cfg)
    rows = [r.to_dict() for r in results]
    table = Table(title=f"Read throughput of {path}", title_justify="left")
    for column in ("kind", "MB/s", "files/s", "threads", "cache"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], f"{row['MB_per_s']:.0f}", f"{row['files_per_s']:.0f}", str(row["threads"]),
                      row["cache"])  # fmt: skip
    console.print(table)
    csv_path, json_path = write_results(output, "io", rows, cfg)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
