"""`avtool bench ...`: measure the IO, CPU and GPU bottlenecks on this machine. Each command is built from its
benchmark's config (``avtool.cli.commands``); the configs import torch, so the commands are built on first use."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from avtool.cli.commands import Preset, config_command, lazy_group, preset_values
from avtool.cli.console import console
from avtool.errors import AvtoolError

if TYPE_CHECKING:
    from avtool.bench.decode import DecodeBenchConfig
    from avtool.bench.io import IoBenchConfig
    from avtool.bench.ladder import LadderConfig
    from avtool.bench.memory import MemoryBenchConfig
    from avtool.bench.model import ModelBenchConfig, ModelBenchRow
    from avtool.bench.pipeline import PipelineConfig

TINY_HELP = (
    "Start from tiny towers (32×32 frames, 2 frames, 2 blocks of width 64; 16-token text) for smoke tests on a "
    "CPU in seconds; the size options still override it."
)


def _run_io(cfg: IoBenchConfig) -> None:
    from avtool.bench.io import run_io_bench
    from avtool.results import write_results

    path, output = cfg.path, Path(cfg.output_dir)
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


def _io(app: typer.Typer) -> None:
    from avtool.bench.io import IoBenchConfig

    config_command(
        app,
        "io",
        IoBenchConfig,
        _run_io,
        help="""Measure S_r: sequential read MB/s of a large file and of random whole chunk files.

    The page cache is dropped (posix_fadvise) where the file system allows it, else the row says warm.""",
    )


def _run_decode(cfg: DecodeBenchConfig) -> None:
    import pandas as pd

    from avtool.atomic import atomic_write_text
    from avtool.bench.decode import CEILING_BACKEND, run_decode_bench, write_decode_results

    root, output = cfg.root, Path(cfg.output_dir)
    columns = ("backend", "mode", "access", "M", "ms/video", "videos/s/proc", "videos/s", "CPU ms/video")
    rows: list[dict] = []

    def cells(row: dict) -> tuple[str, ...]:
        numbers = (row["latency_ms"], row["throughput_per_proc"], row["throughput"], row["cpu_ms_per_video"])
        return (row["backend"], row["mode"], row["access"], str(row["procs"]), *(f"{x:.1f}" for x in numbers))

    def add_row(row: dict) -> None:
        if "procs" not in row:  # a chunk-length comparison row: printed by itself at the end
            return
        if not rows:
            console.print("  " + "  ".join(columns), highlight=False)
        console.print("  " + "  ".join(cells(row)), highlight=False)  # progress, above the spinner
        if row["backend"] != CEILING_BACKEND:  # the ceiling rows get their own file at the end
            rows.append(row)
            output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output / "decode.csv", pd.DataFrame(rows).to_csv(index=False))

    with console.status("decoding ..."):
        result = run_decode_bench(cfg, on_row=add_row)
    table = Table(title=f"Decoding {root}", title_justify="left")
    for column in (*columns, "× linear"):
        table.add_column(column)
    for row in result.rows + result.ceiling_rows:
        table.add_row(*cells(row), "–" if row["scaling"] is None else f"{row['scaling']:.2f}")
    console.print(table)
    if result.chunk_rows:
        chunks = Table(title="Same clips from chunks of each length (PyAV, fused)", title_justify="left")
        for column in ("chunk s", "access", "chunks/clip", "file KB/clip", "KB read/clip", "ms/clip", "frames/clip"):
            chunks.add_column(column)
        for row in result.chunk_rows:
            read = row["bytes_read_per_clip"]
            chunks.add_row(str(row["chunk_len"]), row["access"], f"{row['chunks_per_clip']:g}",
                           f"{row['file_bytes_per_clip'] / 1e3:.0f}", "–" if read is None else f"{read / 1e3:.0f}",
                           f"{row['ms_per_clip']:.1f}", f"{row['frames_decoded_per_clip']:g}")  # fmt: skip
        console.print(chunks)
    for path in write_decode_results(output, result, cfg):
        console.print(f"wrote {path}", highlight=False)


def _decode(app: typer.Typer) -> None:
    from avtool.bench.decode import TINY_DECODE, DecodeBenchConfig

    tiny = Preset("A few-second setting for a first look and CI: 6 videos, M = 1, 2, PyAV and decord.",
                  {(name,): value for name, value in TINY_DECODE.items()})  # fmt: skip
    config_command(
        app,
        "decode",
        DecodeBenchConfig,
        _run_decode,
        presets={"--tiny": tiny},
        help="""Fig. 5: decode latency and throughput of clips, IO excluded.

    Latency (ms/video), throughput per process and overall (videos/s) and CPU time per video for each
    decoder × mode (decode-then-crop, fused) × access (sequential, seek), with M worker processes.
    decode.csv is rewritten after every row, so a run stopped early keeps its rows.""",
    )


def _precision_on(precision: str, device: str) -> str:
    """What a run at ``precision`` computes in on ``device`` (the CPU always runs fp32)."""
    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return "fp32 (CPU)" if on_cpu else precision


def _mb(value: float | None) -> str:
    """MB with one decimal, or three below 1 MB (tiny towers), or a dash where not measured."""
    if value is None:
        return "–"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def _add_column(table: Table, column: str) -> None:
    if column == "variant":  # the names are the point of the table: never cut them
        table.add_column(column, no_wrap=True, min_width=len("flash-attn"))
    else:
        table.add_column(column, justify="left" if column in ("arch", "attn") else "right")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _run_memory(cfg: MemoryBenchConfig) -> None:
    from avtool.bench.memory import run_memory_bench
    from avtool.results import write_results

    _check(cfg)
    tower, output, name = cfg.tower, Path(cfg.output_dir), cfg.name
    console.print(
        f"[bold]bench memory[/]: {tower.arch} width {tower.width} × {tower.layers} blocks, {tower.num_frames} frames "
        f"of {tower.image_size}², cube {tower.tubelet_size}×{tower.patch_size}×{tower.patch_size}, "
        f"{_precision_on(cfg.precision, cfg.device)}, batches {cfg.batch_sizes[0]} and {cfg.batch_sizes[1]}",
        highlight=False,
    )
    with console.status("measuring saved activations ..."):
        rows = run_memory_bench(cfg)
    table = Table(title=f"Activation memory per video, MB ({rows[0].device}, {rows[0].dtype})", title_justify="left")
    for column in ("variant", "attn", "LN", "MHA", "MLP", "other", "total", "CUDA alloc", "CUDA peak"):
        _add_column(table, column)
    for r in rows:
        values = (r.layernorm_mb, r.mha_mb, r.mlp_mb, r.other_mb, r.saved_total_mb, r.allocated_mb, r.step_peak_mb)
        table.add_row(r.variant, r.attn_impl, *map(_mb, values))
    console.print(table)
    csv_path, json_path = write_results(output, name, [r.to_dict() for r in rows], cfg)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)


def _memory(app: typer.Typer) -> None:
    from avtool.bench.memory import MemoryBenchConfig
    from avtool.models import VideoTowerConfig

    tiny = Preset(
        TINY_HELP, preset_values(("tower",), VideoTowerConfig.tiny(fast_conv1=True), MemoryBenchConfig().tower)
    )
    config_command(
        app,
        "memory",
        MemoryBenchConfig,
        _run_memory,
        presets={"--tiny": tiny},
        help="""Fig. 3: activation memory per video of a video tower, by layer type.

    MB (10^6 bytes) per video in LayerNorm, MHA, MLP and other, for baseline, + flash attention and
    + gradient checkpointing. Every tensor autograd keeps for backward is attributed to the module that
    saved it; on CUDA the total is cross-checked against torch.cuda.memory_allocated. Runs on a CPU too
    (fp32). Plot the CSV with `avtool plot fig3`.""",
    )


def _check(cfg: MemoryBenchConfig | ModelBenchConfig) -> None:
    problems = cfg.problems()
    if problems:
        raise AvtoolError(f"invalid {type(cfg).__name__}: {'; '.join(problems)}")


def _ckpt_cell(row: ModelBenchRow) -> str:
    if not row.grad_checkpointing:
        return "–"
    kept = f", {row.ckpt_keep_attention} keep attn" if row.ckpt_keep_attention else ""
    return f"{row.ckpt_blocks}/{row.layers}{kept}"


def _searched_batch(cfg: ModelBenchConfig) -> str:
    from avtool.bench.model import CPU_BATCH

    on_cpu = _precision_on(cfg.precision, cfg.device).endswith("(CPU)")
    return f"batch {CPU_BATCH} (CPU)" if on_cpu else f"largest batch ≤ {cfg.max_batch_size}"


def _run_model(cfg: ModelBenchConfig) -> None:
    import torch

    from avtool.bench.labels import arch_label
    from avtool.bench.model import run_model_bench
    from avtool.results import write_results

    _check(cfg)
    video, output, name, batch_size = cfg.model.video, Path(cfg.output_dir), cfg.name, cfg.batch_size
    console.print(
        f"[bold]bench model[/]: {', '.join(cfg.archs)} × {', '.join(cfg.variants)}; video width {video.width} × "
        f"{video.layers} blocks, {video.num_frames} frames of {video.image_size}²; "
        f"{_precision_on(cfg.precision, cfg.device)}; "
        + (f"batch {batch_size}" if batch_size else _searched_batch(cfg))
        + (f" in {cfg.memory_limit_gb:g} GB" if cfg.memory_limit_gb else "")
        + (", compiled" if cfg.compile else "")
        + (", low-precision residual" if video.low_precision_residual else "")
        + (", fused MLP" if video.fused_mlp else ""),
        highlight=False,
    )
    with console.status("training on synthetic batches ..."):
        try:
            rows = run_model_bench(cfg)
        except torch.OutOfMemoryError:
            raise AvtoolError(
                f"batch {batch_size} does not fit in GPU memory: lower --batch-size, use grad-ckpt or leave it unset "
                "to search"
            ) from None
    batch = "largest batch that fits" if rows[0].batch_size_is_max else "fixed batch"
    compiled = ", torch.compile" if cfg.compile else ""
    title = f"Dual-encoder training, {batch} ({rows[0].device}, {rows[0].dtype}{compiled})"
    table = Table(title=title, title_justify="left")
    for column in ("arch", "variant", "attn", "ckpt", "batch", "vid/s", "MB/vid", "TF/s", "MFU", "HFU"):
        _add_column(table, column)
    for r in rows:
        table.add_row(
            arch_label(r.arch, r.width), r.variant, r.attn_impl,
            _ckpt_cell(r), str(r.batch_size),
            f"{r.videos_per_second:.1f}", "–" if r.mb_per_video is None else f"{r.mb_per_video:.0f}",
            f"{r.tflops:.4g}", _pct(r.mfu), _pct(r.hfu),
        )  # fmt: skip
    console.print(table)
    csv_path, json_path = write_results(output, name, [r.to_dict() for r in rows], cfg)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)


def _model(app: typer.Typer) -> None:
    from avtool.bench.model import ModelBenchConfig
    from avtool.models import DualEncoderConfig

    default = ModelBenchConfig().model
    tiny = DualEncoderConfig.tiny()
    tiny = DualEncoderConfig(video=type(tiny.video)(**{**tiny.video.__dict__, "fast_conv1": True}), text=tiny.text,
                             freeze_logit_scale=tiny.freeze_logit_scale)  # fmt: skip
    both = {f"model.video.{name}": (f"model.text.{name}",) for name in ("low_precision_residual", "fused_mlp")}
    config_command(
        app,
        "model",
        ModelBenchConfig,
        _run_model,
        presets={"--tiny": Preset(TINY_HELP, preset_values(("model",), tiny, default))},
        exclude=("model.video.arch",),
        mirror=both,
        help="""Fig. 4: training throughput and the largest batch of the video-text dual encoder.

    Videos/s with MFU, for TSF-B and ViT-B × baseline, + flash attention, + gradient checkpointing. Each
    step is the training step of `avtool train` (forward, symmetric InfoNCE, backward, its AdamW) under
    autocast, on clips and captions already on the GPU. Plot the CSV with `avtool plot fig4`.""",
    )


TINY_PIPELINE_HELP = (
    "Seconds on a CPU (tests, the demo): tiny towers, the small sample chunked at 96 pixels, batches of 4 and 8, "
    "one worker, a second per measurement; the other options still override it."
)

CHUNK_SET_KEYS = tuple(f"inputs.encode.{key}" for key in ("chunk_len", "gop", "tune", "bframes", "audio"))
"""Encode settings that each chunk set of the end-to-end benches fixes (no flags there)."""


def _tiny_end_to_end(batches: dict[tuple[str, ...], object]) -> dict[tuple[str, ...], object]:
    """What --tiny sets in the ladder and the pipeline (both start from the job's recipe)."""
    return {
        ("inputs", "sample_preset"): "demo", ("inputs", "encode", "short_side"): 96, ("inputs", "kinetics_clips"): 1,
        ("model", "name"): "tiny",
        ("seconds",): 1.0, ("warmup_steps",): 3, ("min_steps",): 2, **batches,
    }  # fmt: skip


def _cell(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _rate(value: float | None) -> str:
    """A throughput with three significant figures below 100 (tiny CPU runs), whole numbers above."""
    from avtool.bench.pipeline import rate

    return "–" if value is None else rate(value)


def _run_ladder(cfg: LadderConfig) -> None:
    from avtool.bench.ladder import run_ladder
    from avtool.results import write_results

    output = Path(cfg.output_dir)
    if cfg.job == "videomae":  # the rows set their own workers, the model is VideoMAE's recipe
        what = (f"VideoMAE {'tiny' if cfg.model.name == 'tiny' else 'ViT-B'}, {cfg.kinetics_chunks} chunks, "
                f"workers {', '.join(map(str, cfg.workers_sweep))}")  # fmt: skip
    else:
        what = f"{cfg.model.name}, {cfg.model.num_frames} frames, {cfg.workers} workers"
    console.print(
        f"[bold]bench ladder[/]: {cfg.job}, {what}, batches {', '.join(map(str, cfg.batch_sizes))}; "
        f"{cfg.seconds:g} s per row after {cfg.warmup_steps} warm-up steps; {_precision_on(cfg.precision, cfg.device)}",
        highlight=False,
    )
    columns = ("B", "row", "data s/it", "s/it", "vid/s", "wait", "mem GB", "loader clips/s", "CPU", "MB/s", "status")

    def cells(r) -> tuple[str, ...]:
        return (
            str(r.batch_size), r.row, _cell(r.data_s_per_it, ".3f"), _cell(r.s_per_it, ".3f"),
            _cell(r.videos_per_s, ".1f"), _pct(r.data_wait_share), _cell(r.peak_memory_gb, ".1f"),
            _cell(r.loader_clips_per_s, ".0f"), _pct(r.cpu_utilisation), _cell(r.read_mb_per_s, ".1f"),
            r.status if r.steady or r.status != "ok" else "ok (prefetch not drained)",
        )  # fmt: skip

    done = []

    def on_row(row) -> None:
        console.print("  " + "  ".join(cells(row)), highlight=False)
        done.append(dataclasses.asdict(row))  # rewritten after every row: a run stopped early keeps its rows
        write_results(output, cfg.name, done, cfg)

    result = run_ladder(cfg, report=lambda line: console.print(line, highlight=False), on_row=on_row)
    figure = "Table 4" if cfg.job == "lavila" else "Fig. 7"
    table = Table(title=f"{figure} on this machine ({cfg.job}; cache {result.rows[0].cache})", title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=column == "row")
    for row in result.rows:
        table.add_row(*cells(row))
    console.print(table)
    for name, change in dict.fromkeys((r.row, r.change) for r in result.rows):
        console.print(f"  {name}: {change}", highlight=False)
    rows = [dataclasses.asdict(r) for r in result.rows]
    csv_path, json_path = write_results(output, cfg.name, rows, cfg, {"row_configs": result.configs})
    if cfg.job == "videomae":
        from avtool.bench.fig7 import table5_lines

        for line in table5_lines(result.rows):
            console.print(f"Table 5 projection: {line}", highlight=False)
    plot = "table4" if cfg.job == "lavila" else "fig7"
    console.print(f"wrote {csv_path} and {json_path}; plot with `avtool plot {plot} {csv_path}`", highlight=False)


def _ladder(app: typer.Typer) -> None:
    from avtool.bench.ladder import LadderConfig

    tiny = _tiny_end_to_end({
        ("batch_sizes",): (4, 8), ("best_attn",): "sdpa", ("hybrid_nvdec_workers",): 1, ("workers",): 1,
        ("workers_sweep",): (1, 2),
    })  # fmt: skip
    config_command(
        app,
        "ladder",
        LadderConfig,
        _run_ladder,
        presets={"--tiny": Preset(TINY_PIPELINE_HELP, tiny)},
        exclude=("model.attn", "model.grad_checkpointing", "model.fused_mlp", *CHUNK_SET_KEYS),
        help="""Table 4 (or Fig. 7 with --job videomae): the training job end to end, one change per row.

    Each row runs the job's own loader and training step (as `avtool train`) on chunk files read from
    disk, for --seconds after warm-up, and reports the data-loading overhead and iteration time (s/it),
    videos/s, the data-wait share, the GPU memory peak, the clips/s the loader could deliver, CPU use and
    MB/s read. Rows are cumulative: the LaViLa baseline, + memory-efficient attention, + 15-s chunks, +
    Fused DecodeCrop (the paper's), then + 1-s keyframes with seeking, no checkpointing, the best
    attention kernel, torch.compile, the fused MLP, fast-decode chunks, non-reference B-frames and hybrid
    NVDEC decoding. The chunk sets are made with avtool chunk into --data-dir and reused. Out of memory is
    recorded as OOM. --job videomae times VideoMAE pretraining on Kinetics-style clips instead, for every
    worker count of --workers-sweep in decode-then-crop and fused mode (Fig. 7).""",
    )


def _run_pipeline(cfg: PipelineConfig) -> None:
    from avtool.atomic import atomic_write_text
    from avtool.bench.pipeline import run_pipeline
    from avtool.results import write_results

    output = Path(cfg.output_dir)
    console.print(
        f"[bold]bench pipeline[/]: {cfg.job}, {cfg.model.name if cfg.job == 'lavila' else 'VideoMAE'}, batch "
        f"{cfg.clips_per_gpu}, {cfg.cores} cores shared by "
        f"g = {', '.join(map(str, cfg.gpus))} GPUs; {cfg.seconds:g} s per measurement; "
        f"{_precision_on(cfg.precision, cfg.device)}",
        highlight=False,
    )
    result = run_pipeline(cfg, report=lambda line: console.print(line, highlight=False))
    table = Table(title="Throughput against GPUs, clips/s (Fig. 2)", title_justify="left")
    for column in ("pipeline", "g", "workers/GPU", "GPU", "CPU", "IO", "actual", "bound"):
        table.add_column(column)
    for r in result.rows:
        table.add_row(
            r.pipeline, f"{r.gpus}{'*' if r.emulated else ''}", str(r.workers_per_gpu), _rate(r.gpu_clips_per_s),
            _rate(r.cpu_clips_per_s), _rate(r.io_clips_per_s), _rate(r.actual_clips_per_s), r.bound,
        )  # fmt: skip
    console.print(table)
    if any(r.emulated for r in result.rows):
        console.print("* emulated: g × one GPU's step, and g loaders of cores/g − 1 workers", highlight=False)
    console.print("[bold]verdict[/]", highlight=False)
    for line in result.verdict:
        console.print(line, highlight=False, markup=False)
    rows = [dataclasses.asdict(r) for r in result.rows]
    extra = {"measurements": result.measurements, "verdict": result.verdict, "pipeline_configs": result.configs}
    csv_path, json_path = write_results(output, cfg.name, rows, cfg, extra)
    text_path = output / f"{cfg.name}.txt"
    atomic_write_text(text_path, "\n".join(result.verdict) + "\n")
    console.print(f"wrote {csv_path}, {json_path} and {text_path}; plot with `avtool plot fig2 {csv_path}`",
                  highlight=False)  # fmt: skip


def _pipeline(app: typer.Typer) -> None:
    from avtool.bench.pipeline import PipelineConfig

    tiny = _tiny_end_to_end({("batch_size",): 8, ("loader_batch",): 4, ("gpus",): (1, 2)})
    config_command(
        app,
        "pipeline",
        PipelineConfig,
        _run_pipeline,
        presets={"--tiny": Preset(TINY_PIPELINE_HELP, tiny)},
        exclude=CHUNK_SET_KEYS,
        help="""Fig. 2: which of IO, CPU and GPU bounds training here, and what to do.

    For one job configuration: GPU throughput (the training step on batches already on the GPU), CPU
    throughput (the loader alone with each GPU's share of the cores), IO throughput (the volume's read
    speed over the bytes read per clip, Eq. 3) and the actual end-to-end throughput, for g = 1, 2, 4, 8
    GPUs (emulated beyond this machine's), for avtool's pipeline and the reference one; then a verdict
    in plain words, with the remedies measured here.""",
    )


bench_app = typer.Typer(
    help="Measure the IO, CPU and GPU bottlenecks on this machine.", no_args_is_help=True,
    cls=lazy_group({"io": _io, "decode": _decode, "memory": _memory, "model": _model, "ladder": _ladder,
                    "pipeline": _pipeline}),
)  # fmt: skip
