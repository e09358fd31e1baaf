"""`avtool bench ladder`: the paper's Table 4 on this machine, and the rungs past it.

Each row is a whole training configuration of the job (`avtool train lavila`'s ``LavilaConfig``), timed
end to end: chunk files on disk (evicted from the page cache after each read, so reads come from the
storage) → the job's loader workers → the job's step (``avtool.bench.loop``). Rows are cumulative, as in
the paper: the LaViLa baseline (math attention, 5-minute chunks with x264's own keyframes, full frames
decoded from the chunk start and then cropped), + memory-efficient attention, + 15-s chunks, + Fused
DecodeCrop; then avtool's rungs, each one change: 1-s keyframes with seeking, no checkpointing, the best
attention kernel, torch.compile, the fused MLP, fast-decode chunks, non-reference B-frames, hybrid NVDEC
decoding. A row that runs out of memory is
recorded as OOM and the next rung still adds its change, as the paper's B=256 baseline row does. ``--rows``
picks the rows to time (the changes of the rows below still apply), ``--without`` the changes to leave out.
``--job videomae`` times VideoMAE pretraining instead, the rows of Fig. 7 (``avtool.bench.fig7``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from avtool.bench.inputs import BenchInputs, prepare_chunks, prepare_sources
from avtool.bench.loop import (
    Timing,
    close_loader,
    read_limit_option,
    release_memory,
    time_training,
    timed_loader,
    timing_problems,
)
from avtool.model_options import AttnImpl
from avtool.models.attention import check_attn_impl
from avtool.options import build, option, to_jsonable
from avtool.train.config import (
    Device,
    OptimConfig,
    Precision,
    RunConfig,
    device_option,
    output_option,
    precision_option,
    raise_problems,
    seed_option,
    workers_option,
)
from avtool.train.distributed import DistEnv, resolve_device
from avtool.train.engine import Job, build_training, flush_denormals
from avtool.train.lavila import LavilaConfig, LavilaJob
from avtool.train.model_config import ModelConfig
from avtool.train.model_factory import dual_encoder_config

JobName = Literal["lavila", "videomae"]


def job_option() -> Any:
    """--job of the end-to-end benches."""
    return option(
        "lavila", panel="Model", metavar="lavila|videomae",
        help="The training job timed: lavila (LaViLa pretraining on Ego4D-style footage: Table 4's rows) or "
        "videomae (VideoMAE pretraining on Kinetics-style clips: in bench ladder, Fig. 7's rows, each worker count "
        "of --workers-sweep in decode-then-crop and fused mode).",
    )  # fmt: skip


@dataclass(frozen=True)
class Rung:
    """One row's change over the row before it."""

    name: str
    """What ``--rows`` selects it by."""
    change: str
    """The change, as the table prints it."""
    values: dict[tuple[str, ...], Any] = field(default_factory=dict)
    """Settings of the job's config (paths into ``LavilaConfig``) this rung sets."""
    chunks: str | None = None
    """The chunk set (``avtool.bench.inputs.CHUNK_SETS``) from this rung on; None: the previous rung's."""


def rungs(best_attn: AttnImpl, nvdec_workers: int = 2) -> tuple[Rung, ...]:
    """The ladder, bottom first; ``best_attn`` is the kernel of the attention rung, ``nvdec_workers`` the
    loader workers of the hybrid rung that decode on NVDEC."""
    return (
        Rung("baseline", "LaViLa baseline: math attention, 300-s chunks, decode-then-crop from the chunk start",
             {("model", "attn"): "math", ("decoder", "mode"): "decode-then-crop",
              ("decoder", "access"): "sequential"}, chunks="300s"),
        Rung("mem-eff-attn", "+ memory-efficient attention (SDPA)", {("model", "attn"): "sdpa"}),
        Rung("chunks-15s", "+ 15-s chunks", chunks="15s"),
        Rung("fused-decodecrop", "+ Fused DecodeCrop", {("decoder", "mode"): "fused"}),
        Rung("keyframes-1s", "+ 1-s keyframes, seeking", {("decoder", "access"): "seek"}, chunks="15s-1s-keys"),
        Rung("no-grad-ckpt", "+ no gradient checkpointing", {("model", "grad_checkpointing"): False}),
        Rung("best-attn", f"+ {best_attn} attention", {("model", "attn"): best_attn}),
        Rung("compile", "+ torch.compile", {("run", "compile"): True}),
        Rung("fused-mlp", "+ fused MLP", {("model", "fused_mlp"): True}),
        Rung("fastdecode", "+ fast-decode chunks (x264 --tune fastdecode)", chunks="15s-1s-keys-fastdecode"),
        Rung("bframes", "+ 8 non-reference B-frames (--bframes 8)", chunks="15s-1s-keys-fastdecode-b8"),
        Rung("hybrid-nvdec", f"+ hybrid decoding, {nvdec_workers} NVDEC worker(s)",
             {("decoder", "nvdec_workers"): nvdec_workers}),
    )  # fmt: skip


RUNG_NAMES: tuple[str, ...] = tuple(r.name for r in rungs("cudnn"))


def recipe_default(name: str, config: type = LavilaConfig) -> Any:
    """The recipe default of a group of a job's config (LavilaConfig by default: the ladder starts from the
    training recipe)."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    return f.default_factory()  # type: ignore[misc]


@dataclass(frozen=True)
class LadderConfig:
    """The ladder's rows, batches, time per row and inputs; the job's other settings are its recipe's."""

    inputs: BenchInputs = field(default_factory=BenchInputs)
    job: JobName = job_option()
    kinetics_chunks: Literal["kinetics", "kinetics-fastdecode-b8"] = option(
        "kinetics", panel="Data", metavar="SET",
        help="--job videomae: the Kinetics clips' chunk set: kinetics (whole clips at short side 320, 1-s "
        "keyframes, as Kinetics users re-encode them) or kinetics-fastdecode-b8 (the same with --tune fastdecode "
        "--bframes 8).",
    )  # fmt: skip
    workers_sweep: tuple[int, ...] = option(
        (4, 8, 12, 16), panel="Run", metavar="N,...",
        help="--job videomae: the loader workers per GPU of each pair of rows (Fig. 7: 4-16).",
    )  # fmt: skip
    repeated_sampling: int = option(
        1, panel="Run", unit="views", metavar="N",
        help="--job videomae: with N > 1, a third row per worker count, fused with VideoMAE V2's repeated "
        "sampling (N views per decoded clip; the row's clips/s counts decoded clips).",
    )  # fmt: skip
    rows: tuple[str, ...] = option(
        RUNG_NAMES, flags="--rows", panel="Run", metavar="NAME,...", show_default="all",
        help=f"Rows to time, by name: {', '.join(RUNG_NAMES)}. Each row has the changes of every row below it, "
        "timed or not (see --without).",
    )  # fmt: skip
    without: tuple[str, ...] = option(
        (), panel="Run", metavar="NAME,...", show_default="none",
        help="Changes left out of the ladder altogether, by row name (fused-mlp where quack is missing, say): "
        "the rows above them are measured without them.",
    )  # fmt: skip
    batch_sizes: tuple[int, ...] = option(
        (64, 256), flags="--batch-size", panel="Optimisation", unit="clips",
        help="Clips per GPU of each ladder, repeatable (Table 4: 64 and 256).",
    )  # fmt: skip
    model: ModelConfig = field(default_factory=lambda: recipe_default("model"))
    best_attn: AttnImpl = option(
        "cudnn", panel="Model", help="Kernel of the best-attn row (cudnn, flash, fa4, ...; see --attn of train)."
    )
    hybrid_nvdec_workers: int = option(
        2, panel="Data", help="Loader workers that decode on NVDEC in the hybrid-nvdec row (the rest on the CPU)."
    )
    seconds: float = option(60.0, panel="Run", unit="s", help="Timed seconds per row, after warm-up.")
    warmup_steps: int = option(10, panel="Run", help="Untimed steps per row before timing (compiling included).")
    min_steps: int = option(20, panel="Run", help="Timed steps per row at least, however long they take.")
    workers: int = workers_option()
    drop_page_cache: bool = option(
        True, panel="Data", help="Evict each chunk file from the page cache after reading it, so reads come from "
        "the storage (--no-drop-page-cache: cache-warm, as a dataset that fits in memory)."
    )  # fmt: skip
    read_limit: float | None = read_limit_option()
    precision: Precision = precision_option()
    device: Device = device_option()
    seed: int = seed_option("weights, shuffling, frames and crops")
    output_dir: Path = output_option("results", "ladder.csv and ladder.json (every row's full configuration)")
    name: str = option("ladder", panel="Output", help="Base name of the result files.")

    def rungs(self) -> tuple[Rung, ...]:
        return rungs(self.best_attn, self.hybrid_nvdec_workers)

    def problems(self) -> list[str]:
        out = self.inputs.problems() + self.model.problems()
        unknown = sorted((set(self.rows) | set(self.without)) - set(RUNG_NAMES))
        if unknown:
            out.append(f"unknown row(s) {', '.join(unknown)}: the rows are {', '.join(RUNG_NAMES)}")
        if both := sorted(set(self.rows) & set(self.without)):
            out.append(f"row(s) {', '.join(both)} both timed (--rows) and left out (--without)")
        if "baseline" in self.without:
            out.append("the baseline cannot be left out: every other row is a change to it")
        if self.job not in ("lavila", "videomae"):
            out.append(f"job={self.job!r} is not lavila or videomae")
        if self.repeated_sampling < 1:
            out.append(f"--repeated-sampling {self.repeated_sampling} must be at least 1")
        if self.kinetics_chunks not in ("kinetics", "kinetics-fastdecode-b8"):
            out.append(f"--kinetics-chunks {self.kinetics_chunks!r} is not kinetics or kinetics-fastdecode-b8")
        if not self.workers_sweep or min(self.workers_sweep) < 0:
            out.append("--workers-sweep needs worker counts of 0 or more")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            out.append("batch sizes must be at least 1")
        out += timing_problems(self.seconds, self.warmup_steps, self.min_steps, self.read_limit)
        if self.workers < 0:
            out.append(f"workers={self.workers} must be 0 or more")
        if "hybrid-nvdec" in self.rows and not 1 <= self.hybrid_nvdec_workers <= max(self.workers, 1):
            out.append(f"hybrid_nvdec_workers={self.hybrid_nvdec_workers} is not in 1..--workers ({self.workers})")
        if problem := check_attn_impl(self.best_attn, on_cuda=self.device != "cpu" and torch.cuda.is_available()):
            out.append(f"best_attn: {problem}")
        return out


@dataclass(frozen=True)
class LadderRow:
    """One measured row (one CSV row)."""

    job: str
    batch_size: int
    row: str
    change: str
    status: str
    """ok, OOM, or what failed."""
    chunks: str
    steps: int = 0
    data_s_per_it: float | None = None
    """Seconds per iteration waiting for the batch (Table 4's data-loading overhead)."""
    s_per_it: float | None = None
    """Seconds per iteration (Table 4's training speed)."""
    videos_per_s: float | None = None
    data_wait_share: float | None = None
    """Share of the iteration spent waiting for data, 0-1."""
    peak_memory_gb: float | None = None
    loader_clips_per_s: float | None = None
    """Clips/s the workers could deliver (their measured seconds per clip × workers)."""
    cpu_utilisation: float | None = None
    """Busy share of all cores, 0-1."""
    read_mb_per_s: float | None = None
    """MB/s the workers read (page-cache hits included)."""
    storage_mb_per_s: float | None = None
    """MB/s that came from the storage device."""
    cache: str = "dropped"
    steady: bool = True
    """False: the loader's prefetch may not have drained in the window (throughput above its steady state)."""

    @classmethod
    def measured(cls, base: dict[str, Any], timing: Timing, cache: str) -> LadderRow:
        usage = timing.usage
        return cls(
            **base, status="ok", steps=timing.steps, data_s_per_it=timing.data_s, s_per_it=timing.iteration_s,
            videos_per_s=timing.clips_per_s,
            data_wait_share=timing.data_seconds / timing.seconds if timing.seconds else None,
            peak_memory_gb=timing.peak_memory_gb, loader_clips_per_s=timing.loader_clips_per_s,
            cpu_utilisation=usage.cpu_utilisation, read_mb_per_s=usage.read_mb_per_s(),
            storage_mb_per_s=usage.storage_mb_per_s(), cache=cache, steady=timing.steady,
        )  # fmt: skip


@dataclass
class LadderResult:
    rows: list[LadderRow]
    configs: list[dict[str, Any]]
    """Each row's full job configuration, in row order."""


def job_config(values: dict[tuple[str, ...], Any], root: Path, metadata: Path, model: ModelConfig,
               run: RunConfig) -> LavilaConfig:  # fmt: skip
    """The job's full configuration of a row: the recipe with the bench's model and run settings, then the
    rungs' changes (``values``, by path)."""
    return build(LavilaConfig, values, default=LavilaConfig(root=root, metadata=metadata, model=model, run=run))


PlannedRow = tuple[int, Rung, str, dict[tuple[str, ...], Any]]
"""(batch size, rung, chunk set, the settings of the job's config it runs with, by path)."""


def ladder_plan(cfg: LadderConfig) -> list[PlannedRow]:
    """The rows to time: each with the changes of every rung below it, timed or not, except --without's."""
    plans: list[PlannedRow] = []
    for batch_size in cfg.batch_sizes:
        values: dict[tuple[str, ...], Any] = {}
        chunks = "300s"
        for rung in cfg.rungs():
            if rung.name in cfg.without:
                continue
            values = {**values, **rung.values}
            chunks = rung.chunks or chunks
            if rung.name in cfg.rows:
                plans.append((batch_size, rung, chunks, values))
    return plans


def _run_settings(cfg: LadderConfig, batch_size: int) -> RunConfig:
    return RunConfig(output_dir=Path(cfg.output_dir) / cfg.name, batch_size=batch_size, workers=cfg.workers,
                     precision=cfg.precision, device=cfg.device, seed=cfg.seed)  # fmt: skip


def run_ladder(cfg: LadderConfig, report: Callable[[str], None] = lambda line: None,
               on_row: Callable[[LadderRow], None] | None = None) -> LadderResult:  # fmt: skip
    """Prepare the inputs, check every row's configuration, then time the rows (the API of `bench ladder`)."""
    raise_problems("bench ladder", cfg.problems())
    flush_denormals(resolve_device(cfg.device))
    if cfg.job == "videomae":
        return _run_fig7(cfg, report, on_row)
    videos, metadata = prepare_sources(cfg.inputs, report)
    plans = ladder_plan(cfg)
    roots = {name: prepare_chunks(cfg.inputs, videos, name, report) for name in dict.fromkeys(p[2] for p in plans)}
    configs = [job_config(values, roots[chunks], metadata, cfg.model, _run_settings(cfg, b))
               for b, _, chunks, values in plans]  # fmt: skip
    for row_cfg in configs:  # everything a row will read and build, before the first one runs
        row_cfg.check()
        dual_encoder_config(row_cfg.model)
    timed = [(b, rung.name, rung.change, chunks, LavilaJob(row_cfg), row_cfg.run, row_cfg.optim)
             for (b, rung, chunks, _), row_cfg in zip(plans, configs, strict=True)]  # fmt: skip
    return LadderResult(_time_rows(cfg, timed, report, on_row), [to_jsonable(c) for c in configs])


def _time_rows(cfg: LadderConfig, timed: list[tuple], report: Callable[[str], None],
               on_row: Callable[[LadderRow], None] | None) -> list[LadderRow]:  # fmt: skip
    """Time each (batch size, name, change, chunk set, job, run, optim) in turn, reporting every row as it ends."""
    env = DistEnv(0, 0, 1, resolve_device(cfg.device))
    rows = []
    for batch_size, name, change, chunks, job, run, optim in timed:
        report(f"B={batch_size} {name}: {change}")
        base = {"job": cfg.job, "batch_size": batch_size, "row": name, "change": change, "chunks": chunks}
        rows.append(_run_row(cfg, job, run, optim, env, base))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _run_fig7(cfg: LadderConfig, report: Callable[[str], None], on_row: Callable[[LadderRow], None] | None
              ) -> LadderResult:  # fmt: skip
    """The VideoMAE rows (``avtool.bench.fig7``): every worker count in both decoding modes."""
    from avtool.bench.fig7 import fig7_rows, fig7_size, prepare_kinetics
    from avtool.train.videomae import VideoMAEJob

    root, train_list = prepare_kinetics(cfg.inputs, report, cfg.kinetics_chunks)
    size = fig7_size(cfg.model)
    plans = fig7_rows(root, train_list, cfg.workers_sweep, cfg.batch_sizes, _run_settings(cfg, 1), size,
                      cfg.repeated_sampling)  # fmt: skip
    for *_, row_cfg in plans:
        row_cfg.check()
    VideoMAEJob(plans[0][-1]).train_dataset()  # the rows share the clips and list: a bad list fails here, once
    timed = [(b, name, change, cfg.kinetics_chunks, VideoMAEJob(c), c.run, c.optim) for b, name, change, c in plans]
    return LadderResult(_time_rows(cfg, timed, report, on_row), [to_jsonable(c) for *_, c in plans])


def _run_row(cfg: LadderConfig, job: Job, run: RunConfig, optim: OptimConfig, env: DistEnv,
             base: dict[str, Any]) -> LadderRow:  # fmt: skip
    """Time one row of ``job``; out of memory is a result, not a failure."""
    torch.manual_seed(cfg.seed)
    loader = training = None
    try:
        training = build_training(job, run, optim, env)
        dataset, loader = timed_loader(job, run, env, read_limit_mb_per_s=cfg.read_limit,
                                       drop_page_cache=cfg.drop_page_cache)  # fmt: skip
        timing = time_training(
            job, training, iter(loader), env, warmup_steps=cfg.warmup_steps, seconds=cfg.seconds,
            min_steps=cfg.min_steps, workers=run.workers,
        )  # fmt: skip
        return LadderRow.measured(base, timing, dataset.cache)
    except torch.OutOfMemoryError:
        return LadderRow(**base, status="OOM")
    except RuntimeError as e:  # out of memory inside a compiled graph arrives wrapped
        if "out of memory" not in str(e).lower():
            raise
        return LadderRow(**base, status="OOM")
    finally:
        if loader is not None:
            close_loader(loader)
        del loader, training, job
        release_memory(env.device)
