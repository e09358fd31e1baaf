"""The `avtool` command line: a thin Typer layer that fills typed configs and calls the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

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
from avtool.cli.console import console, err_console
from avtool.cli.plot import plot_app
from avtool.cli.train import eval_app, train_app
from avtool.errors import AvtoolError

app = typer.Typer(
    help="Data preparation, benchmarks and training for large video models on one machine (AVION recipe).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(plot_app, name="plot")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        # Outside standalone mode click returns the code of typer.Exit instead of exiting.
        code = app(standalone_mode=False)
    except AvtoolError as e:
        # Escaped: messages quote user text and pip extras ('avtool[flash]') that Rich would read as markup.
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
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


@app.command()
def sample(
    dest: Annotated[Path, typer.Argument(help="Folder that receives ego4d/ and ek100/.")],
    seed: Annotated[int, typer.Option(help="Seed of every random choice; same seed, same data.")] = 0,
    workers: Annotated[int, typer.Option(help="Videos rendered in parallel (default: all cores).")] = 0,
) -> None:
    """Write a small built-in dataset in the real Ego4D and EPIC-Kitchens-100 layouts (no download).

    Synthetic long videos (30, 50 and 60 fps; 16:9 and 4:3) of coloured objects that are pushed,
    lifted, lowered and shaken, with narrations that say what happens, plus Ego4D narration pickles
    and EK-100 CSVs, retrieval sentences and relevancy matrices."""
    from avtool.prep.sample import SampleConfig, make_sample

    cfg = SampleConfig(dest=dest, seed=seed) if workers <= 0 else SampleConfig(dest=dest, seed=seed, workers=workers)
    with console.status(f"rendering sample videos into {dest} ..."):
        report = make_sample(cfg, on_video_done=lambda p: console.print(f"  wrote {p}", highlight=False))
    verb = "already present" if report.skipped else "written"
    console.print(
        f"sample {verb}: {len(report.videos)} videos, {_hours(report.seconds_of_video)} of footage, "
        f"{report.narrations} narrations in {dest}",
        highlight=False,
    )


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AvtoolError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return i, n


@app.command()
def chunk(
    src: Annotated[Path, typer.Argument(help="Folder searched recursively for videos (mp4/mkv/mov/webm/avi).")],
    dst: Annotated[Path, typer.Argument(help="Output root: DST/<relative path>/<start second>.mp4.")],
    chunk_len: Annotated[
        str, typer.Option(help="Chunk length in whole seconds, or 'auto' to solve B·ρ·T ≤ S_r·Δ for T.")
    ] = "15",
    crf: Annotated[int, typer.Option(help="libx264 constant rate factor, 0-51 (lower: better, larger).")] = 23,
    preset: Annotated[
        str, typer.Option(help="libx264 preset, ultrafast ... veryslow (speed against size).")
    ] = "medium",
    fps: Annotated[float, typer.Option(help="Output frame rate in frames/s; 0 keeps the source's rate.")] = 0.0,
    short_side: Annotated[int, typer.Option(help="Short side of the chunks in pixels; 0 keeps the size.")] = 288,
    upscale: Annotated[bool, typer.Option(help="Also scale videos smaller than --short-side up.")] = False,
    gop: Annotated[float, typer.Option(help="Keyframe interval inside a chunk in seconds (for seeking).")] = 1.0,
    audio: Annotated[bool, typer.Option(help="Keep the first audio track (AAC); dropped by default.")] = False,
    batch_size: Annotated[int, typer.Option(help="B: clips per training step on the node, for Eq. 3.")] = 1024,
    step_time: Annotated[float, typer.Option(help="Δ: seconds per training step, for Eq. 3.")] = 4.0,
    read_speed: Annotated[
        float, typer.Option(help="S_r in MB/s for Eq. 3; 0 measures DST's volume (256 MiB test file).")
    ] = 0.0,
    safety: Annotated[float, typer.Option(help="Fraction of the read budget kept in reserve, 0-1.")] = 0.04,
    workers: Annotated[int, typer.Option(help="Videos encoded in parallel (default: all cores).")] = 0,
    shard: Annotated[str, typer.Option(help="i/n: do only shard i (0-based) of n, e.g. one Slurm array task.")] = "0/1",
    plan: Annotated[bool, typer.Option(help="Only print the sizing, chunk count and size; write nothing.")] = False,
) -> None:
    """Cut long videos into fixed-length libx264 chunks in AVION's layout, resumably and in parallel.

    Every chunk starts with a keyframe and holds exactly --chunk-len seconds (the last one is
    shorter); one FFmpeg pass per video; each video is verified before it appears in DST, so a rerun
    resumes where a killed run stopped. Writes DST/manifest.csv (one row per chunk)."""
    from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
    from avtool.prep.encode import EncodeSettings

    auto = chunk_len.strip().lower() == "auto"
    if not auto and not chunk_len.strip().isdigit():
        raise AvtoolError(f"--chunk-len must be a whole number of seconds or 'auto', got {chunk_len!r}")
    encode = EncodeSettings(
        chunk_len=15 if auto else int(chunk_len), crf=crf, preset=preset, fps=fps or None,
        short_side=short_side, upscale=upscale, gop=gop, audio=audio,
    )  # fmt: skip
    extra = {"workers": workers} if workers > 0 else {}
    cfg = ChunkConfig(
        src=src, dst=dst, encode=encode, auto_chunk_len=auto, batch_size=batch_size, step_time=step_time,
        read_speed=read_speed * 1e6 if read_speed > 0 else None, safety=safety, shard=_parse_shard(shard), **extra,
    )  # fmt: skip
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
