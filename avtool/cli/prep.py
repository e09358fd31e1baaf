"""`avtool sample` and `avtool chunk`: the built-in sample and chunking, commands built from their configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avtool.cli.commands import config_command
from avtool.cli.console import console, err_console
from avtool.options import option

if TYPE_CHECKING:
    from avtool.prep.chunk import ChunkConfig
    from avtool.prep.sample import SampleConfig


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


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
    if report.chunk_bitrate is not None:
        # What `avtool chunk` will make of it, measured rather than assumed: a trial encode per kind of video.
        kinds = ", ".join(f"{kind} {rate / 1e6:.2f}" for kind, rate in report.bitrates.items())
        console.print(
            f"{report.trial_settings}: ~{report.chunk_bitrate / 1e6:.2f} Mb/s (trial encode of "
            f"{report.trial_seconds:g} s; {kinds})",
            highlight=False,
        )


def _sample(app: typer.Typer) -> None:
    from avtool.prep.sample import SampleConfig

    config_command(app, "sample", SampleConfig, _run_sample, help=SAMPLE_HELP)


SAMPLE_HELP = """Write a built-in dataset in the real Ego4D, EPIC-Kitchens-100 and Kinetics layouts (no download).

    Synthetic long videos (30, 50 and 60 fps; 16:9 and 4:3) of coloured objects that are pushed, lifted,
    lowered and shaken, with narrations that say what happens (one per ~2.3 s, as Ego4D's), plus Ego4D
    narration pickles and EK-100 CSVs, retrieval sentences and relevancy matrices; and 10-s Kinetics-style
    clips of one action each (short side 320) with AVION's and VideoMAE's train/val lists. The footage costs
    what handheld video costs: its 288p chunks at crf 23 come to ~1 Mb/s, measured and printed at the end.
    --preset bench makes 4 h of it for throughput runs."""


@dataclass(frozen=True)
class ChunkAction:
    """What `avtool chunk` does with its plan (not a setting of the chunks)."""

    plan: bool = option(False, panel="Chunks", help="Only print the sizing, chunk count and size; write nothing.")


def _run_chunk(cfg: ChunkConfig, action: ChunkAction) -> None:
    from avtool.prep.chunk import plan_chunking, run_chunking

    plan, dst, auto = action.plan, cfg.dst, cfg.auto_chunk_len
    measuring = " and measuring ρ and S_r" + (" and clips/s per core" if plan else "") if auto or plan else ""
    with console.status(f"probing videos{measuring} ..."):
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
    a killed run stopped. Writes DST/manifest.csv (one row per chunk).

    --plan weighs the disk's budget (Eq. 3) and the CPUs' decode budget (clips/s per core · cores ≥ clips/s
    the GPUs take, from trial encodes with and without --tune fastdecode and --bframes 8) and recommends
    an encoding;
    --quality writes the chunks' PSNR and SSIM against the source to DST/quality.json.""",
    )


MAX_NOTES = 10
"""Notes on the inputs printed before a run (a folder of interlaced footage would print one per video)."""


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
    if plan.decode is not None:
        console.print("[bold]Decode budget[/]", highlight=False)
        for line in plan.decode.derivation():
            console.print(f"  {line}", highlight=False)
    size = plan.predicted_bytes
    console.print(
        f"[bold]Plan[/]: {len(plan.jobs)} video(s) to chunk ({_hours(plan.seconds)}), {len(plan.done)} already done,"
        f" {len(plan.failures)} unreadable",
        highlight=False,
    )
    for folder in plan.skipped_outputs:
        console.print(f"  note: skipped {folder}: it is an earlier avtool chunk output, not videos", highlight=False)
    notes = plan.notes
    for note in notes[:MAX_NOTES]:
        console.print(f"  note: {note}", highlight=False)
    if len(notes) > MAX_NOTES:
        console.print(f"  note: … and {len(notes) - MAX_NOTES} more of the same kinds", highlight=False)
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
    quality = report.quality_summary
    if quality is not None:
        table.add_row("quality", quality.summary())
    console.print(table)
    _print_failures(report.plan.failures + report.failures)
    for failure in report.quality_failures:
        err_console.print(f"[yellow]quality not measured[/] for {failure.video}: {failure.reason}", highlight=False)
    if report.aborted:
        err_console.print(f"[red]stopped early:[/] {report.aborted}", highlight=False)
    if report.interrupted:
        err_console.print("interrupted: finished videos are kept; rerun the same command to resume")


PREP_COMMANDS = {"sample": _sample, "chunk": _chunk}
