"""`avtool bench ...`: measure the IO, CPU and GPU bottlenecks on this machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from avtool.cli.console import console
from avtool.errors import AvtoolError, config_error

if TYPE_CHECKING:  # torch and the models load lazily: `avtool --help` should not wait for torch
    from avtool.bench.memory import MemoryBenchConfig
    from avtool.bench.model import ModelBenchConfig, ModelBenchRow
    from avtool.models import VideoTowerConfig

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


# Options shared by `bench memory` and `bench model`. The tower's size options default to None, meaning
# "the base tower's value" (ViT-B/16 at 224², 4 frames, or the tiny tower with --tiny), so that --tiny and
# an explicit size can be combined.
Arch = Annotated[str, typer.Option(help="Video architecture: vit (joint space-time) or timesformer (divided).")]
Tiny = Annotated[
    bool,
    typer.Option(
        help="Start from tiny towers (32×32 frames, 2 frames, 2 blocks of width 64; 16-token text) for smoke "
        "tests on a CPU in seconds; the size options still override it."
    ),
]
ImageSize = Annotated[
    int | None, typer.Option(help="Frame height and width, pixels.", show_default="224, 32 with --tiny")
]
Frames = Annotated[int | None, typer.Option(help="Frames per clip.", show_default="4, 2 with --tiny")]
PatchSize = Annotated[int | None, typer.Option(help="Spatial side of a cube, pixels.", show_default="16")]
Tubelet = Annotated[int | None, typer.Option(help="Temporal extent of a cube, frames.", show_default="1")]
Width = Annotated[
    int | None,
    typer.Option(help="Token width D of the video tower, channels.", show_default="768 = ViT-B, 64 with --tiny"),
]
Layers = Annotated[
    int | None, typer.Option(help="Transformer blocks of the video tower.", show_default="12 = ViT-B, 2 with --tiny")
]
Heads = Annotated[
    int | None,
    typer.Option(help="Attention heads per block of the video tower.", show_default="12 = ViT-B, 4 with --tiny"),
]
Variants = Annotated[
    list[str] | None,
    typer.Option(
        "--variant",
        help="Variant to measure, repeatable: baseline (explicit softmax attention), flash-attn (+ memory-"
        "efficient attention), grad-ckpt (+ gradient checkpointing). Default: all three.",
        show_default=False,
    ),
]
Attn = Annotated[
    str,
    typer.Option(
        help="Attention kernel of flash-attn and grad-ckpt: sdpa (torch picks), flash, efficient, cudnn "
        "(that SDPA backend), flash-attn (the flash-attn package), fa4 (FlashAttention-4's kernels for Hopper "
        "and Blackwell GPUs, the flash-attn-4 package)."
    ),
]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cuda or cpu.")]
Output = Annotated[Path, typer.Option(help="Folder for NAME.csv and NAME.json.")]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AvtoolError(f"expected comma-separated whole numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@bench_app.command("decode")
def bench_decode(
    root: Annotated[
        Path, typer.Argument(help="Chunk root made by `avtool chunk` (its chunks are loaded into memory).")
    ],
    videos: Annotated[int, typer.Option(help="Chunk files loaded into memory (paper: 1024).")] = 1024,
    frames: Annotated[int, typer.Option(help="Frames sampled per clip (paper: 4).")] = 4,
    size: Annotated[int, typer.Option(help="Output crop side in pixels (paper: 224).")] = 224,
    procs: Annotated[
        str, typer.Option(help="Process counts M, comma-separated; empty: 1, 2, 4, … up to the cores.")
    ] = "",
    backends: Annotated[str, typer.Option(help="Decoders, comma-separated: pyav, pyav-nvdec, decord.")] = "pyav,decord",
    modes: Annotated[
        str, typer.Option(help="decode-then-crop and/or fused, comma-separated.")
    ] = "decode-then-crop,fused",
    accesses: Annotated[str, typer.Option(help="sequential (from chunk start) and/or seek, comma-separated.")] = (
        "sequential,seek"
    ),
    seconds: Annotated[
        float,
        typer.Option(
            help="Time budget per row, seconds: every process decodes clips this long (the same time for fast and slow "
            "rows, no idle processes at the end); 0 decodes the --videos clips once, split among the processes."
        ),
    ] = 0.0,
    clip_seconds: Annotated[
        float, typer.Option(help="Clip length in seconds; 0 spreads the frames over the whole chunk (paper).")
    ] = 0.0,
    chunk_len_compare: Annotated[
        Path | None,
        typer.Option(
            "--chunk-len-compare",
            "--sources",
            help="Raw videos to re-chunk at 15 s and 300 s and read the same clips from (Table 4's shorter chunks).",
        ),
    ] = None,
    chunk_lengths: Annotated[str, typer.Option(help="Chunk lengths compared by --chunk-len-compare, seconds.")] = (
        "15,300"
    ),
    ceiling: Annotated[
        bool,
        typer.Option(
            help="Also run a fixed single-threaded CPU task (zlib inflate) with each M: how far this machine's cores "
            "scale at all, the ceiling for the decoders' scaling (decode-ceiling.csv)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of clip positions and crops.")] = 0,
    tiny: Annotated[
        bool,
        typer.Option(
            help="A few-second setting for a first look and CI: 6 videos, M=1,2, PyAV and decord; keeps --seconds "
            "and --ceiling, ignores the other sizes."
        ),
    ] = False,
    output: Annotated[Path, typer.Option(help="Folder for decode.csv/json (and decode-chunk-length.csv/json).")] = Path(
        "results"
    ),
) -> None:
    """Fig. 5: decode latency (ms/video), throughput per process and overall (videos/s) and CPU time per
    video for each decoder × mode (decode-then-crop, fused) × access (sequential, seek), with M worker
    processes, IO excluded. decode.csv is rewritten after every row, so a run stopped early keeps its rows."""
    import pandas as pd

    from avtool.atomic import atomic_write_text
    from avtool.bench.decode import CEILING_BACKEND, DecodeBenchConfig, run_decode_bench, write_decode_results

    if tiny:
        cfg = dataclasses.replace(DecodeBenchConfig.tiny(root, sources=chunk_len_compare), ceiling=ceiling,
                                  seconds=seconds or None)  # fmt: skip
    else:
        cfg = DecodeBenchConfig(
            root=root, videos=videos, frames=frames, size=size, procs=_ints(procs), backends=_names(backends),
            modes=_names(modes), accesses=_names(accesses), clip_seconds=clip_seconds or None,
            seconds=seconds or None, sources=chunk_len_compare, chunk_lengths=_ints(chunk_lengths), seed=seed,
            ceiling=ceiling,
        )  # fmt: skip
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


def _check(cfg: MemoryBenchConfig | ModelBenchConfig) -> None:
    problems = cfg.problems()
    if problems:
        raise AvtoolError(f"invalid {type(cfg).__name__}: {'; '.join(problems)}")


def _video_tower(arch: str, tiny: bool, **fields: int | bool | None) -> VideoTowerConfig:
    """The base tower (ViT-B/16 or the tiny one) with ``arch`` and every field that is not None."""
    from avtool.models import VideoTowerConfig

    base = VideoTowerConfig.tiny() if tiny else VideoTowerConfig()
    overrides = {key: value for key, value in fields.items() if value is not None}
    try:
        return dataclasses.replace(base, arch=arch, **overrides)
    except ValueError as e:
        raise config_error(e) from None


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


@bench_app.command("memory")
def bench_memory(
    arch: Arch = "vit",
    variant: Variants = None,
    attn: Attn = "sdpa",
    image_size: ImageSize = None,
    frames: Frames = None,
    patch_size: PatchSize = None,
    tubelet: Tubelet = None,
    width: Width = None,
    layers: Layers = None,
    heads: Heads = None,
    tiny: Tiny = False,
    batch_sizes: Annotated[
        tuple[int, int],
        typer.Option(help="Two batch sizes, videos (both ≥ 2); per-video memory is their difference per video."),
    ] = (2, 4),
    dtype: Annotated[
        str, typer.Option(help="Autocast precision on CUDA: float16 (the paper's), bfloat16 or none (float32).")
    ] = "float16",
    device: Device = "auto",
    backward: Annotated[bool, typer.Option(help="Also run backward, for the step's peak memory on CUDA.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the random clips.")] = 0,
    output: Output = Path("results"),
    name: Annotated[str, typer.Option(help="Base name of the result files.")] = "memory",
) -> None:
    """Fig. 3: activation memory per video (MB = 2^20 bytes) of a video tower, split into LayerNorm, MHA,
    MLP and other, for baseline, + flash attention and + gradient checkpointing.

    Every tensor autograd keeps for backward is attributed to the module that saved it; on CUDA the total is
    cross-checked against torch.cuda.memory_allocated. Runs on a CPU too (float32). Plot the CSV with
    `avtool plot fig3`."""
    from avtool.bench.memory import VARIANTS, MemoryBenchConfig, run_memory_bench
    from avtool.results import write_results

    tower = _video_tower(arch, tiny, image_size=image_size, num_frames=frames, patch_size=patch_size,
                         tubelet_size=tubelet, width=width, layers=layers, heads=heads)  # fmt: skip
    cfg = MemoryBenchConfig(
        tower=tower, variants=tuple(variant or VARIANTS), flash_impl=attn, batch_sizes=batch_sizes,
        device=device, amp_dtype=dtype, backward=backward, seed=seed,
    )  # fmt: skip
    _check(cfg)
    console.print(
        f"[bold]bench memory[/]: {tower.arch} width {tower.width} × {tower.layers} blocks, {tower.num_frames} frames "
        f"of {tower.image_size}², cube {tower.tubelet_size}×{tower.patch_size}×{tower.patch_size}, {dtype}, "
        f"batches {batch_sizes[0]} and {batch_sizes[1]}",
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


def _ckpt_cell(row: ModelBenchRow) -> str:
    if not row.grad_checkpointing:
        return "–"
    kept = f", {row.ckpt_keep_attention} keep attn" if row.ckpt_keep_attention else ""
    return f"{row.ckpt_blocks}/{row.layers}{kept}"


def _parse_ckpt_blocks(text: str) -> int | str | None:
    text = text.strip().lower()
    if text == "all":
        return None
    if text == "auto" or text.isdigit():
        return "auto" if text == "auto" else int(text)
    raise AvtoolError(f"--ckpt-blocks must be 'all', 'auto' or a number of blocks, got {text!r}")


@bench_app.command("model")
def bench_model(
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Video architecture, repeatable: timesformer (TSF-B in Fig. 4) and/or vit (ViT-B). Default: both.",
            show_default=False,
        ),
    ] = None,
    variant: Variants = None,
    attn: Attn = "sdpa",
    batch_size: Annotated[
        int,
        typer.Option(
            help="Fixed batch, videos per step (e.g. 256 for the throughput goal); 0 searches the largest that "
            "fits, by doubling and bisecting on CUDA out-of-memory errors."
        ),
    ] = 0,
    max_batch_size: Annotated[int, typer.Option(help="Upper bound of the search, videos.")] = 2048,
    granularity: Annotated[
        int, typer.Option(help="Stop the search when fitting and failing batches are this close, videos.")
    ] = 8,
    memory_limit_gb: Annotated[
        float,
        typer.Option(
            help="Use at most this much GPU memory, GB, allocator reserve included (24 mimics the paper's A5000); "
            "0: all."
        ),
    ] = 0.0,
    ckpt_blocks: Annotated[
        str,
        typer.Option(
            help="grad-ckpt: video blocks to checkpoint, the first k: 'all', a number, or 'auto' (the fewest that "
            "let --batch-size fit, CUDA). The text tower is always checkpointed in full."
        ),
    ] = "all",
    ckpt_keep_attention: Annotated[
        int,
        typer.Option(
            help="grad-ckpt: of the checkpointed video blocks, the last k keep their attention outputs for "
            "backward instead of recomputing the attention (selective checkpointing; ViT-B at 4 frames: 1.25 "
            "MB/video per block in bf16; 10 is the fastest within 61 MB/video on an H200). Not with --ckpt-blocks "
            "auto, blocks."
        ),
    ] = 0,
    compile: Annotated[
        bool, typer.Option(help="torch.compile forward and loss (needs --batch-size; compiling takes minutes).")
    ] = False,
    compile_mode: Annotated[
        str,
        typer.Option(
            help="With --compile: default; max-autotune-gemm (times Triton matmuls with fused epilogues against "
            "cuBLAS per shape; compiles several times longer); max-autotune-no-cudagraphs (also tunes every "
            "elementwise kernel; longer still)."
        ),
    ] = "default",
    activation_memory_budget: Annotated[
        float,
        typer.Option(
            help="With --compile: fraction (0-1] of the activations of a run without recomputation that the "
            "compiler may keep, choosing itself what to recompute (an alternative to --variant grad-ckpt); "
            "0: off."
        ),
    ] = 0.0,
    fast_conv1: Annotated[
        bool, typer.Option(help="Patch embedding as one matmul on unfolded cubes (AVION's fast conv1).")
    ] = False,
    low_precision_residual: Annotated[
        bool,
        typer.Option(
            help="Carry the residual stream between blocks in the autocast dtype instead of float32 (both "
            "towers): halves the block inputs that checkpointing keeps (ViT-B at 224², 4 frames: ~14 MB/video "
            "less); rounds the residual sums to that dtype."
        ),
    ] = False,
    fused_mlp: Annotated[
        bool,
        typer.Option(
            help="Compute each MLP with its GELU in the matmuls' epilogues (both towers; quack's CuTe GEMMs on "
            "Hopper/Blackwell, from pip install 'avtool[fa4]'): the same maths without GELU's own kernels."
        ),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(help="Autocast precision on CUDA: bfloat16, float16 (the paper's) or none (float32)."),
    ] = "bfloat16",
    warmup_steps: Annotated[int, typer.Option(help="Untimed training steps before timing, steps.")] = 3,
    steps: Annotated[int, typer.Option(help="Timed training steps (forward, backward, AdamW), steps.")] = 10,
    peak_tflops: Annotated[
        float,
        typer.Option(
            help="Dense bf16/fp16 peak of the GPU for MFU, TFLOP/s; 0 looks it up by GPU name (H100/H200: 989)."
        ),
    ] = 0.0,
    image_size: ImageSize = None,
    frames: Frames = None,
    patch_size: PatchSize = None,
    tubelet: Tubelet = None,
    width: Width = None,
    layers: Layers = None,
    heads: Heads = None,
    tiny: Tiny = False,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the weights and the synthetic batches.")] = 0,
    output: Output = Path("results"),
    name: Annotated[str, typer.Option(help="Base name of the result files.")] = "model",
) -> None:
    """Fig. 4: training throughput (videos/s, with MFU) and the largest batch of the video-text dual encoder,
    for TSF-B and ViT-B × baseline, + flash attention, + gradient checkpointing.

    Each step is forward, symmetric InfoNCE, backward and fused AdamW under autocast, on clips and captions
    already on the GPU. Plot the CSV with `avtool plot fig4`."""
    import torch

    from avtool.bench.labels import arch_label
    from avtool.bench.memory import VARIANTS
    from avtool.bench.model import ModelBenchConfig, run_model_bench
    from avtool.models import DualEncoderConfig
    from avtool.results import write_results

    archs = tuple(arch or ("timesformer", "vit"))
    sizes = dict(image_size=image_size, num_frames=frames, patch_size=patch_size, tubelet_size=tubelet)
    video = _video_tower(archs[0], tiny, **sizes, width=width, layers=layers, heads=heads, fast_conv1=fast_conv1,
                         low_precision_residual=low_precision_residual, fused_mlp=fused_mlp)  # fmt: skip
    base = DualEncoderConfig.tiny() if tiny else DualEncoderConfig()
    text = dataclasses.replace(base.text, low_precision_residual=low_precision_residual, fused_mlp=fused_mlp)
    cfg = ModelBenchConfig(
        model=dataclasses.replace(base, video=video, text=text), archs=archs, variants=tuple(variant or VARIANTS),
        flash_impl=attn, ckpt_blocks=_parse_ckpt_blocks(ckpt_blocks), ckpt_keep_attention=ckpt_keep_attention,
        compile=compile, compile_mode=compile_mode, activation_memory_budget=activation_memory_budget or None,
        batch_size=batch_size or None, max_batch_size=max_batch_size, search_granularity=granularity,
        memory_limit_gb=memory_limit_gb or None, warmup_steps=warmup_steps, steps=steps, device=device,
        amp_dtype=dtype, peak_tflops=peak_tflops or None, seed=seed,
    )  # fmt: skip
    _check(cfg)
    console.print(
        f"[bold]bench model[/]: {', '.join(archs)} × {', '.join(cfg.variants)}; video width {video.width} × "
        f"{video.layers} blocks, {video.num_frames} frames of {video.image_size}²; {dtype}; "
        + (f"batch {batch_size}" if batch_size else f"largest batch ≤ {max_batch_size}")
        + (f" in {memory_limit_gb:g} GB" if memory_limit_gb else "")
        + (", compiled" if compile else "")
        + (", low-precision residual" if low_precision_residual else "")
        + (", fused MLP" if fused_mlp else ""),
        highlight=False,
    )
    with console.status("training on synthetic batches ..."):
        try:
            rows = run_model_bench(cfg)
        except torch.OutOfMemoryError:
            raise AvtoolError(
                f"batch {batch_size} does not fit in GPU memory: lower --batch-size, use grad-ckpt or 0 to search"
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
