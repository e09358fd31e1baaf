"""The `avtool` command line: a thin Typer layer that fills typed configs and calls the Python API."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from avtool.cli.bench import bench_app
from avtool.cli.commands import config_command, lazy_group
from avtool.cli.console import console, err_console
from avtool.cli.plot import plot_app
from avtool.cli.train import eval_app, train_app
from avtool.errors import AvtoolError
from avtool.options import option

if TYPE_CHECKING:
    from avtool.prep.chunk import ChunkConfig
    from avtool.prep.sample import SampleConfig

CONTEXT = {"help_option_names": ["-h", "--help"]}
LAZY_COMMANDS: dict = {}
"""Commands built on first use (their configs import the heavy modules), filled below."""


def _version(value: bool) -> None:
    if value:
        import avtool

        print(f"avtool {avtool.__version__}")  # also from a source checkout that pip never installed
        raise typer.Exit(0)


app = typer.Typer(
    help="Data preparation, benchmarks and training for large video models on one machine (AVION recipe).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flag names are never cut, brackets print as written
    context_settings=CONTEXT,
    cls=lazy_group(LAZY_COMMANDS, order=("sample", "chunk", "bench", "train", "eval", "plot", "env")),
)
app.add_typer(bench_app, name="bench")
app.add_typer(plot_app, name="plot")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print avtool's version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Data preparation, benchmarks and training for large video models on one machine (AVION recipe)."""


def _error(message: str) -> None:
    # Escaped: messages quote user text and pip extras ('avtool[flash]') that Rich would read as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        # Outside standalone mode the exit code of typer.Exit is returned instead of exiting.
        code = app(standalone_mode=False)
    except AvtoolError as e:
        _error(str(e))
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors: typer's own (vendored) click exceptions
        message = " ".join(e.format_message().replace("Value error, ", "").split())
        command = getattr(getattr(e, "ctx", None), "command_path", None)
        _error(f"{message}" + (f" (see {command} --help)" if command else ""))
        sys.exit(getattr(e, "exit_code", 2) or 2)
    sys.exit(code if isinstance(code, int) else 0)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Versions (python, torch, av, decord, open_clip, ffmpeg), CPUs, GPUs, NVDEC and attention backends."""
    from avtool.env import collect_environment

    info = collect_environment()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        table.add_row(f"[bold]{key}", str(value))
    console.print(table)


def _run_sample(cfg: SampleConfig) -> None:
    from avtool.prep.sample import make_sample

    dest = cfg.dest
    with console.status(f"rendering sample videos into {dest} ..."):
        report = make_sample(cfg, on_video_done=lambda p: console.print(f"  wrote {p}", highlight=False))
    verb = "already present" if report.skipped else "written"
    console.print(
        f"sample {verb}: {len(report.videos)} videos, {_hours(report.seconds_of_video)} of footage, "
        f"{report.narrations} narrations in {dest}",
        highlight=False,
    )


def _sample(app: typer.Typer) -> None:
    from avtool.prep.sample import SampleConfig

    config_command(app, "sample", SampleConfig, _run_sample, help=SAMPLE_HELP)


SAMPLE_HELP = """Write a small built-in dataset in the real Ego4D and EPIC-Kitchens-100 layouts (no download).

    Synthetic long videos (30, 50 and 60 fps; 16:9 and 4:3) of coloured objects that are pushed, lifted,
    lowered and shaken, with narrations that say what happens, plus Ego4D narration pickles and EK-100
    CSVs, retrieval sentences and relevancy matrices."""
LAZY_COMMANDS["sample"] = _sample


@dataclass(frozen=True)
class ChunkAction:
    """What `avtool chunk` does with its plan (not a setting of the chunks)."""

    plan: bool = option(False, panel="Chunks", help="Only print the sizing, chunk count and size; write nothing.")


def _run_chunk(cfg: ChunkConfig, action: ChunkAction) -> None:
    from avtool.prep.chunk import plan_chunking, run_chunking

    plan, dst, auto = action.plan, cfg.dst, cfg.auto_chunk_len
    with console.status("probing videos" + (" and measuring ρ and S_r" if auto or plan else "") + " ..."):
        chunk_plan = plan_chunking(cfg, measure=plan)
    _print_plan(chunk_plan)
    if plan or not chunk_plan.jobs:
        if not plan:
            console.print(f"nothing to do: {len(chunk_plan.done)} video(s) already chunked in {dst}")
        _print_failures(chunk_plan.failures)
        raise typer.Exit(1 if chunk_plan.failures else 0)

    columns = (
        TextColumn("[bold]chunking"), BarColumn(), TextColumn("{task.fields[videos]}"),
        TextColumn("{task.fields[footage]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    total = chunk_plan.seconds
    finished = {"n": 0}
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("chunk", total=total, videos="", footage="")

        def advance(seconds: float) -> None:
            progress.advance(task, seconds)
            done = progress.tasks[0].completed
            progress.update(task, footage=f"{done / 3600:.2f}/{total / 3600:.2f} h of footage")

        def video_done(name: str, failure: str | None) -> None:
            finished["n"] += 1
            progress.update(task, videos=f"{finished['n']}/{len(chunk_plan.jobs)} videos")
            if failure:
                progress.console.print(f"[red]failed[/] {name}: {failure}", highlight=False)

        progress.update(task, videos=f"0/{len(chunk_plan.jobs)} videos")
        report = run_chunking(chunk_plan, on_progress=advance, on_video_done=video_done)
    _print_report(report)
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if report.ok else 1)


def _chunk(app: typer.Typer) -> None:
    from avtool.prep.chunk import ChunkConfig

    config_command(
        app,
        "chunk",
        ChunkConfig,
        _run_chunk,
        extras={"action": ChunkAction},
        help="""Cut long videos into fixed-length libx264 chunks in AVION's layout, resumably and in parallel.

    Every chunk starts with a keyframe and holds exactly --chunk-len seconds (the last one is shorter);
    one FFmpeg pass per video; each video is verified before it appears in DST, so a rerun resumes where
    a killed run stopped. Writes DST/manifest.csv (one row per chunk).""",
    )


LAZY_COMMANDS["chunk"] = _chunk


def _print_plan(plan) -> None:
    from avtool.prep.chunk import ChunkPlan

    assert isinstance(plan, ChunkPlan)
    if plan.sizing is not None:
        console.print("[bold]Chunk length[/]", highlight=False)
        for line in plan.sizing.derivation():
            console.print(f"  {line}", highlight=False)
        needed = plan.sizing.required_read_speed(plan.chunk_len)
        if plan.chunk_len > plan.sizing.max_chunk_seconds:
            console.print(
                f"  [yellow]warning:[/] {plan.chunk_len}-s chunks need {needed / 1e6:.0f} MB/s at this batch size"
                f" and step time; the volume gives {plan.sizing.read_speed.value / 1e6:.0f} MB/s",
                highlight=False,
            )
    size = plan.predicted_bytes
    console.print(
        f"[bold]Plan[/]: {len(plan.jobs)} video(s) to chunk ({_hours(plan.seconds)}), {len(plan.done)} already done,"
        f" {len(plan.failures)} unreadable",
        highlight=False,
    )
    predicted = f"  {plan.chunk_len}-s chunks: {plan.predicted_chunks} chunks"
    console.print(predicted + (f", about {_size(size)}" if size is not None else ""), highlight=False)


def _print_failures(failures) -> None:
    if not failures:
        return
    table = Table(title=f"{len(failures)} failed video(s)", title_justify="left")
    table.add_column("video", overflow="fold")
    table.add_column("reason", overflow="fold")
    for f in failures:
        table.add_row(f.video, f.reason)
    err_console.print(table)


def _print_report(report) -> None:
    table = Table(title="Chunking summary", title_justify="left", show_header=False)
    table.add_row("videos chunked", f"{len(report.chunked)} ({len(report.plan.done)} done before)")
    table.add_row("footage", _hours(report.seconds))
    table.add_row("chunks", str(report.chunks))
    table.add_row("size", _size(report.bytes))
    table.add_row("mean bitrate", f"{report.mean_bitrate / 1e6:.3f} Mb/s")
    table.add_row("wall time", f"{report.wall_seconds:.1f} s")
    table.add_row(
        "speed", f"{report.realtime_factor:.1f}× realtime ({report.realtime_factor / report.cores:.1f}× per core,"
        f" {report.cores} cores)",
    )  # fmt: skip
    table.add_row("manifest", str(Path(report.plan.config.dst) / "manifest.csv"))
    console.print(table)
    _print_failures(report.plan.failures + report.failures)
    if report.aborted:
        err_console.print(f"[red]stopped early:[/] {report.aborted}", highlight=False)
    if report.interrupted:
        err_console.print("interrupted: finished videos are kept; rerun the same command to resume")
