"""`avtool bench pipeline`: which of IO, CPU and GPU bounds training on this machine (the paper's Fig. 2),
and what to do about it.

For one job configuration, four throughputs in clips/s:

- GPU: the job's training step on a batch already on the device (``avtool.bench.loop.time_resident``);
- CPU: the job's loader alone, into pinned memory, with the cores' share of workers (``time_loader``);
- IO: the volume's read speed over the bytes the loader read per clip (Eq. 3 of the paper, with the bytes
  measured rather than assumed: with seeking a clip reads part of its chunk);
- actual: the whole loop, end to end (``time_training``).

For g GPUs the machine's cores are shared: each GPU's loader gets cores/g − 1 workers (a core runs the GPU's
training process). GPU and CPU throughput at g are g times one GPU's step and one share's loader, measured
here (on a machine with fewer GPUs than g this is an emulation, said so in the rows); IO is the volume's,
whatever g. The verdict names the smallest of the three at each g, by how much, and the remedies measured
here, best first.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from avtool.bench.inputs import CHUNK_SETS, BenchInputs, prepare_chunks, prepare_sources
from avtool.bench.ladder import JobName, job_config, job_option, recipe_default, rungs
from avtool.bench.loop import (
    LOAD_SECONDS,
    Timing,
    close_loader,
    read_limit_option,
    release_memory,
    time_loader,
    time_resident,
    time_training,
    timed_loader,
    timing_problems,
)
from avtool.options import option, to_jsonable
from avtool.readspeed import measure_random_chunk_reads
from avtool.train.config import (
    Device,
    Precision,
    RunConfig,
    device_option,
    output_option,
    precision_option,
    raise_problems,
    seed_option,
)
from avtool.train.distributed import DistEnv, resolve_device
from avtool.train.engine import Job, build_training, flush_denormals
from avtool.train.lavila import LavilaConfig, LavilaJob
from avtool.train.model_config import ModelConfig
from avtool.train.videomae import VideoMAEJob, VideoMAETrainConfig
from avtool.video.decode import DecoderConfig

Bound = Literal["GPU", "CPU", "IO"]
FAST_CHUNKS = "15s-1s-keys-fastdecode-b8"
"""The chunk set of the CPU remedy the verdict measures (--job lavila; videomae: its Kinetics counterpart)."""
REMEDY_VIEWS = 2
"""--job videomae: views per decoded clip in the repeated-sampling remedy (VideoMAE V2's)."""
JobConfig = LavilaConfig | VideoMAETrainConfig


@dataclass(frozen=True)
class PipelineConfig:
    """One job configuration measured part by part, for g = 1, 2, 4, 8 GPUs' shares of this machine."""

    inputs: BenchInputs = field(default_factory=BenchInputs)
    job: JobName = job_option()
    chunks: str = option(
        "15s-1s-keys", panel="Data", metavar="SET",
        help=f"Chunk set the lavila job reads: {', '.join(CHUNK_SETS)} (made with avtool chunk and kept in "
        "--data-dir); --job videomae reads the kinetics set.",
    )  # fmt: skip
    model: ModelConfig = field(default_factory=lambda: recipe_default("model"))
    decoder: DecoderConfig = field(default_factory=lambda: recipe_default("decoder"))
    batch_size: int | None = option(
        None, panel="Optimisation", unit="clips", show_default="the job's recipe: 256 lavila, 64 videomae",
        help="Clips per GPU per step.",
    )  # fmt: skip
    gpus: tuple[int, ...] = option((1, 2, 4, 8), flags="--gpus", panel="Run", help="GPU counts to assess, "
                                   "repeatable.")  # fmt: skip
    cores: int = option(
        default_factory=lambda: os.cpu_count() or 1, panel="Run", show_default="all cores",
        help="Cores shared by the GPUs: each of g GPUs gets cores/g of them, one for its training process and "
        "the rest as loader workers (the end-to-end run: all cores for one GPU).",
    )  # fmt: skip
    reference: bool = option(
        True, panel="Run", help="Also measure the reference pipeline (LaViLa's: 300-s chunks, decode-then-crop "
        "from the chunk start, math attention), Fig. 2's left panel.",
    )  # fmt: skip
    remedies: bool = option(True, panel="Run", help="Measure what would lift a CPU bound (fast-decode chunks) "
                            "for the verdict.")  # fmt: skip
    seconds: float = option(20.0, panel="Run", unit="s", help="Timed seconds of each measurement.")
    warmup_steps: int = option(5, panel="Run", help="Untimed steps before the GPU and end-to-end timings.")
    min_steps: int = option(10, panel="Run", help="Timed steps of the GPU and end-to-end timings at least.")
    loader_batch: int = option(32, panel="Run", unit="clips", help="Batch of the loader-alone timings (clips/s "
                               "does not depend on it; small batches finish whole rounds sooner).")  # fmt: skip
    read_limit: float | None = read_limit_option()
    drop_page_cache: bool = option(True, panel="Data", help="Evict each chunk file from the page cache after "
                                   "reading it (--no-drop-page-cache: cache-warm).")  # fmt: skip
    precision: Precision = precision_option()
    device: Device = device_option()
    seed: int = seed_option("weights, shuffling, frames and crops")
    output_dir: Path = output_option("results", "pipeline.csv, pipeline.json and the verdict (pipeline.txt)")
    name: str = option("pipeline", panel="Output", help="Base name of the result files.")

    def problems(self) -> list[str]:
        out = self.inputs.problems() + self.model.problems()
        if self.chunks not in CHUNK_SETS:
            out.append(f"--chunks {self.chunks!r} is not one of {', '.join(CHUNK_SETS)}")
        if not self.gpus or min(self.gpus) < 1:
            out.append("--gpus must be at least 1")
        if self.cores < 1 or self.clips_per_gpu < 1 or self.loader_batch < 1:
            out.append("cores, batch size and loader batch must be at least 1")
        return out + timing_problems(self.seconds, self.warmup_steps, self.min_steps, self.read_limit)

    @property
    def clips_per_gpu(self) -> int:
        """--batch-size, else the job's recipe batch."""
        if self.batch_size is not None:
            return self.batch_size
        if self.job == "videomae":
            return recipe_default("run", VideoMAETrainConfig).batch_size
        return recipe_default("run").batch_size


@dataclass(frozen=True)
class PipelineRow:
    """Throughputs of one pipeline at g GPUs (one CSV row)."""

    pipeline: str
    gpus: int
    workers_per_gpu: int
    gpu_clips_per_s: float
    cpu_clips_per_s: float
    io_clips_per_s: float | None
    actual_clips_per_s: float | None
    """Measured end to end (g = 1 only)."""
    bound: str
    emulated: bool
    """True when g exceeds this machine's GPUs: g × one GPU's measured throughput."""

    @property
    def expected(self) -> float:
        return min(x for x in (self.gpu_clips_per_s, self.cpu_clips_per_s, self.io_clips_per_s) if x is not None)


@dataclass
class PipelineResult:
    rows: list[PipelineRow]
    measurements: dict[str, Any]
    """The raw figures behind the rows: per pipeline, GPU step, loader per worker count, reads."""
    verdict: list[str]
    configs: dict[str, Any]


@dataclass(frozen=True)
class Remedy:
    """A measured change and the CPU throughput it gives at the same workers."""

    change: str
    cpu_clips_per_s: float


def pipeline_rows(
    pipeline: str, gpu: float, cpu_by_workers: dict[int, float], io: float | None, actual: float | None,
    cfg: PipelineConfig, local_gpus: int,
) -> list[PipelineRow]:  # fmt: skip
    """The rows of one pipeline for each g of the config, from its measurements."""
    rows = []
    for g in cfg.gpus:
        workers = workers_per_gpu(cfg.cores, g)
        total = {"GPU": gpu * g, "CPU": cpu_by_workers[workers] * g, "IO": io}
        bound = bound_of(total)
        rows.append(PipelineRow(pipeline, g, workers, total["GPU"], total["CPU"], io, actual if g == 1 else None,
                                bound, g > local_gpus))  # fmt: skip
    return rows


def workers_per_gpu(cores: int, gpus: int) -> int:
    """Loader workers of each of ``gpus`` GPUs sharing ``cores``: its share less the core its training
    process runs on (measured on the H200 host: 16 workers on 16 cores delivered less than 8 × 2)."""
    return max(1, cores // gpus - 1)


def bound_of(throughputs: dict[str, float | None]) -> Bound:
    """The smallest of the GPU, CPU and IO throughputs (IO may be unknown)."""
    known = {k: v for k, v in throughputs.items() if v is not None}
    return min(known, key=known.__getitem__)  # type: ignore[return-value]


def verdict(rows: list[PipelineRow], remedies: list[Remedy], read_mb_per_s: float | None,
            bytes_per_clip: float | None) -> list[str]:  # fmt: skip
    """Plain sentences: the bound at each g and by how much, then what to do, best measured remedy first."""
    lines = []
    for row in rows:
        parts = {"GPU": row.gpu_clips_per_s, "CPU": row.cpu_clips_per_s, "IO": row.io_clips_per_s}
        known = sorted((v, k) for k, v in parts.items() if v is not None)
        (low, bound), (nxt, second) = known[0], known[1] if len(known) > 1 else known[0]
        takes = "the GPU takes" if row.gpus == 1 else f"the {row.gpus} GPUs take"
        who = {"GPU": takes, "CPU": f"{row.workers_per_gpu * row.gpus} loader workers deliver",
               "IO": "the volume's reads allow"}  # fmt: skip
        line = (
            f"{_gpus(row.gpus)}{' (emulated)' if row.emulated else ''}: {bound}-bound: {who[bound]} "
            f"{rate(low)} clips/s, against {rate(nxt)} the {second} side allows "
            + (f"({nxt / low:.1f}× headroom)" if low > 0 else "(none measured: lengthen --seconds)")
        )
        if row.actual_clips_per_s is not None:
            line += f"; measured end to end: {rate(row.actual_clips_per_s)} clips/s"
        lines.append(line)
    lines += _advice(rows, remedies, read_mb_per_s, bytes_per_clip)
    return lines


def rate(value: float) -> str:
    """Clips/s as the verdict writes them: whole numbers with separators, three figures below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _gpus(g: int) -> str:
    return f"{g} GPU{'s' if g > 1 else ''}"


def _advice(rows: list[PipelineRow], remedies: list[Remedy], read_mb_per_s: float | None,
            bytes_per_clip: float | None) -> list[str]:  # fmt: skip
    out = []
    cpu_bound = [r for r in rows if r.bound == "CPU"]
    if cpu_bound:
        first = cpu_bound[0]
        share = first.cpu_clips_per_s / first.gpus
        takes = first.gpu_clips_per_s / first.gpus
        out.append(f"CPU-bound from {_gpus(first.gpus)}: each GPU's {first.workers_per_gpu} workers decode "
                   f"{rate(share)} clips/s against {rate(takes)} its GPU takes.")  # fmt: skip
        for remedy in sorted(remedies, key=lambda r: -r.cpu_clips_per_s):
            gain = remedy.cpu_clips_per_s / share - 1 if share else 0.0
            out.append(f"  - {remedy.change}: {rate(remedy.cpu_clips_per_s)} clips/s per GPU's workers "
                       f"({gain:+.0%}), measured here")  # fmt: skip
        out.append("  - fewer decoded pixels per clip: shorter --short-side chunks, or fewer frames per clip")
    io_bound = [r for r in rows if r.bound == "IO"]
    if io_bound and bytes_per_clip:
        first = io_bound[0]
        out.append(
            f"IO-bound from {_gpus(first.gpus)}: the loader reads {bytes_per_clip / 1e6:.2f} MB per clip and the "
            f"volume gives {rate(read_mb_per_s or 0)} MB/s. Shorter chunks (avtool chunk --chunk-len auto sizes "
            "them by Eq. 3), a higher --crf, or a faster volume."
        )
    elif rows and rows[-1].io_clips_per_s and read_mb_per_s:
        worst = rows[-1]
        out.append(f"IO is {worst.io_clips_per_s / worst.expected:.0f}× below the volume's limit "
                   f"({rate(read_mb_per_s)} MB/s) even at {_gpus(worst.gpus)}.")  # fmt: skip
    gpu_bound = [r for r in rows if r.bound == "GPU"]
    if gpu_bound:
        gs = ", ".join(str(r.gpus) for r in gpu_bound)
        out.append(f"GPU-bound at g = {gs}: the loader keeps up; a faster step (avtool bench ladder's rows: "
                   "attention kernel, compile, fused MLP, checkpointing) raises throughput directly.")  # fmt: skip
    return out


def run_pipeline(cfg: PipelineConfig, report: Callable[[str], None] = lambda line: None) -> PipelineResult:
    """Measure both pipelines part by part and give the verdict (the API of `bench pipeline`)."""
    raise_problems("bench pipeline", cfg.problems())
    env = DistEnv(0, 0, 1, resolve_device(cfg.device))
    flush_denormals(env.device)
    run = RunConfig(output_dir=Path(cfg.output_dir) / cfg.name, batch_size=cfg.clips_per_gpu,
                    workers=workers_per_gpu(cfg.cores, 1),
                    precision=cfg.precision, device=cfg.device, seed=cfg.seed)  # fmt: skip
    configs, roots, read_root = (
        _videomae_configs(cfg, run, report) if cfg.job == "videomae" else _lavila_configs(cfg, run, report)
    )
    for row_cfg in configs.values():
        row_cfg.check()
    read = _read_speed(read_root, cfg)
    local_gpus = torch.cuda.device_count() if env.device.type == "cuda" else 1
    worker_counts = sorted({workers_per_gpu(cfg.cores, g) for g in cfg.gpus}, reverse=True)

    rows, measurements, remedies = [], {"read_MB_per_s": read / 1e6}, []
    for name, row_cfg in configs.items():
        report(f"{name}: GPU step on resident batches")
        gpu = _gpu_throughput(cfg, row_cfg, env)
        report(f"  {rate(gpu.clips_per_s)} clips/s")  # as each part ends: a run stopped later keeps its numbers
        cpu, per_clip = {}, None
        for workers in worker_counts:
            report(f"{name}: loader alone, {workers} worker(s)")
            timing = _loader_throughput(cfg, row_cfg, env, workers)
            cpu[workers] = timing.clips_per_s
            report(f"  {rate(timing.clips_per_s)} clips/s")
            per_clip = per_clip or timing.bytes_per_clip
        io = read / per_clip if per_clip else None
        actual = None
        if name == "avtool":
            report(f"{name}: end to end, {row_cfg.run.workers} worker(s)")
            actual = _actual_throughput(cfg, row_cfg, env).clips_per_s
            report(f"  {rate(actual)} clips/s")
        measurements[name] = {"gpu_clips_per_s": gpu.clips_per_s, "gpu_peak_memory_gb": gpu.peak_memory_gb,
                              "loader_clips_per_s_by_workers": cpu, "bytes_per_clip": per_clip,
                              "actual_clips_per_s": actual}  # fmt: skip
        rows += pipeline_rows(name, gpu.clips_per_s, cpu, io, actual, cfg, local_gpus)
    avtool_rows = [r for r in rows if r.pipeline == "avtool"]
    cpu_bound = [r for r in avtool_rows if r.bound == "CPU"]
    if cfg.remedies and cpu_bound:
        remedies = _measure_remedies(cfg, configs["avtool"], roots.get(FAST_CHUNKS), env,
                                     cpu_bound[0].workers_per_gpu, report)  # fmt: skip
    lines = verdict(avtool_rows, remedies, read / 1e6, measurements["avtool"]["bytes_per_clip"])
    measurements["remedies"] = [dataclasses.asdict(r) for r in remedies]
    return PipelineResult(rows, measurements, lines, {k: to_jsonable(v) for k, v in configs.items()})


def _read_speed(root: Path, cfg: PipelineConfig) -> float:
    """Bytes/s reading whole chunk files of the set at random (page cache dropped), capped by --read-limit."""
    files = chunk_files(root)[:64]
    measured = measure_random_chunk_reads(files, threads=min(8, cfg.cores), seed=cfg.seed).bytes_per_second
    return min(measured, cfg.read_limit * 1e6) if cfg.read_limit else measured


def _lavila_configs(cfg: PipelineConfig, run: RunConfig, report: Callable[[str], None]
                    ) -> tuple[dict[str, JobConfig], dict[str, Path], Path]:  # fmt: skip
    """(the pipelines' job configurations, the chunk sets they and the remedies read, the avtool set)."""
    videos, metadata = prepare_sources(cfg.inputs, report)
    decoder = {("decoder", f.name): getattr(cfg.decoder, f.name) for f in dataclasses.fields(DecoderConfig)}
    pipelines = {"avtool": (cfg.chunks, decoder)}
    if cfg.reference:
        baseline = rungs("cudnn")[0]
        pipelines["reference"] = (baseline.chunks, baseline.values)
    wanted = {chunks for chunks, _ in pipelines.values()} | ({FAST_CHUNKS} if cfg.remedies else set())
    roots = {name: prepare_chunks(cfg.inputs, videos, name, report) for name in sorted(wanted)}
    configs: dict[str, JobConfig] = {name: job_config(values, roots[chunks], metadata, cfg.model, run)
                                     for name, (chunks, values) in pipelines.items()}  # fmt: skip
    return configs, roots, roots[cfg.chunks]


def _videomae_configs(cfg: PipelineConfig, run: RunConfig, report: Callable[[str], None]
                      ) -> tuple[dict[str, JobConfig], dict[str, Path], Path]:  # fmt: skip
    """As ``_lavila_configs`` for VideoMAE on the Kinetics set: avtool's decoder, and Fig. 7's reference
    (decode-then-crop)."""
    from avtool.bench.fig7 import FAST_KINETICS_CHUNKS, KINETICS_CHUNKS, fig7_size, prepare_kinetics

    root, train_list = prepare_kinetics(cfg.inputs, report)
    roots = {KINETICS_CHUNKS: root}
    if cfg.remedies:
        roots[FAST_CHUNKS] = prepare_kinetics(cfg.inputs, report, FAST_KINETICS_CHUNKS)[0]
    size = fig7_size(cfg.model)

    def config(decoder: DecoderConfig) -> VideoMAETrainConfig:
        return VideoMAETrainConfig(root=root, train_list=train_list, size=size, decoder=decoder, run=run)  # type: ignore[arg-type]

    configs: dict[str, JobConfig] = {"avtool": config(cfg.decoder)}
    if cfg.reference:
        configs["reference"] = config(DecoderConfig(mode="decode-then-crop"))
    return configs, roots, root


def _measure_remedies(cfg: PipelineConfig, row_cfg: JobConfig, fast_root: Path | None, env: DistEnv, workers: int,
                      report: Callable[[str], None]) -> list[Remedy]:  # fmt: skip
    """The CPU side with each remedy, at the first CPU-bound g's workers per GPU."""
    out = []
    if isinstance(row_cfg, VideoMAETrainConfig):
        report(f"remedy: repeated sampling ({REMEDY_VIEWS} views per clip), loader alone, {workers} worker(s)")
        repeated = dataclasses.replace(row_cfg, repeated_sampling=REMEDY_VIEWS)
        views = _loader_throughput(cfg, repeated, env, workers).clips_per_s * REMEDY_VIEWS
        out.append(Remedy(f"repeated sampling (--repeated-sampling {REMEDY_VIEWS}; views/s, each decoded clip "
                          f"trains {REMEDY_VIEWS} views)", views))  # fmt: skip
        report(f"  {rate(views)} views/s")
    if fast_root is not None:
        report(f"remedy: fast-decode chunks, loader alone, {workers} worker(s)")
        fast = dataclasses.replace(row_cfg, root=fast_root)
        out.append(Remedy("fast-decode chunks (avtool chunk --tune fastdecode --bframes 8)",
                          _loader_throughput(cfg, fast, env, workers).clips_per_s))  # fmt: skip
        report(f"  {rate(out[-1].cpu_clips_per_s)} clips/s")
    if env.device.type == "cuda" and row_cfg.decoder.backend == "pyav":
        k = max(1, workers // 4)
        report(f"remedy: hybrid decoding, {k} of {workers} worker(s) on NVDEC, loader alone")
        hybrid = dataclasses.replace(row_cfg, decoder=dataclasses.replace(row_cfg.decoder, nvdec_workers=k))
        hybrid_rate = _loader_throughput(cfg, hybrid, env, workers).clips_per_s
        out.append(Remedy(f"hybrid decoding (--nvdec-workers {k})", hybrid_rate))
        report(f"  {rate(hybrid_rate)} clips/s")
    return out


def chunk_files(root: Path) -> list[Path]:
    """The chunk files under ``root`` (``<video>.mp4/<start>.mp4``, video folders at any depth, as Kinetics'
    ``train/<class>/<clip>.mp4/0.mp4``), sorted; unfinished output (hidden folders) left out."""
    root = Path(root)
    return sorted(
        p for p in root.rglob("*.mp4")
        if p.is_file() and p.parent != root and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )  # fmt: skip


def _job_parts(cfg: PipelineConfig, row_cfg: JobConfig, env: DistEnv, workers: int, batch_size: int,
               limited: bool = False):  # fmt: skip
    """The job of a pipeline with ``workers`` and ``batch_size``, and its loader; ``limited``: reads capped
    by --read-limit (only end to end: the CPU side is measured without the cap, the IO side with it)."""
    run = dataclasses.replace(row_cfg.run, workers=workers, batch_size=batch_size)
    job = _job(dataclasses.replace(row_cfg, run=run))
    _, loader = timed_loader(job, run, env, read_limit_mb_per_s=cfg.read_limit if limited else None,
                             drop_page_cache=cfg.drop_page_cache)  # fmt: skip
    return job, run, loader


def _job(row_cfg: JobConfig) -> Job:
    return VideoMAEJob(row_cfg) if isinstance(row_cfg, VideoMAETrainConfig) else LavilaJob(row_cfg)


def _gpu_throughput(cfg: PipelineConfig, row_cfg: JobConfig, env: DistEnv) -> Timing:
    # One real batch, gathered from small batches that the workers make in parallel: one worker alone would
    # take B clips' decoding time (minutes for the reference pipeline at B = 256).
    job, run, loader = _job_parts(cfg, row_cfg, env, workers=min(row_cfg.run.workers, cfg.cores),
                                  batch_size=cfg.loader_batch)  # fmt: skip
    training = None
    try:
        batch = _gather(loader, math.ceil(cfg.clips_per_gpu / cfg.loader_batch), cfg.clips_per_gpu)
        close_loader(loader)
        torch.manual_seed(cfg.seed)
        training = build_training(job, dataclasses.replace(run, batch_size=cfg.clips_per_gpu), row_cfg.optim, env)
        return time_resident(job, training, batch, env, warmup_steps=cfg.warmup_steps, seconds=cfg.seconds,
                             min_steps=cfg.min_steps)  # fmt: skip
    finally:
        close_loader(loader)
        del training
        release_memory(env.device)


def _gather(loader: Any, batches: int, size: int) -> dict[str, Any]:
    """``batches`` batches of the loader as one batch of ``size`` clips."""
    parts = list(itertools.islice(iter(loader), batches))

    def joined(key: str) -> Any:
        if key == LOAD_SECONDS:
            return parts[0][key]
        if isinstance(parts[0][key], torch.Tensor):
            return torch.cat([p[key] for p in parts])[:size]
        return [item for p in parts for item in p[key]][:size]  # strings (texts, bad-clip reasons)

    return {key: joined(key) for key in parts[0]}


def _loader_throughput(cfg: PipelineConfig, row_cfg: JobConfig, env: DistEnv, workers: int) -> Timing:
    _, _, loader = _job_parts(cfg, row_cfg, env, workers=workers, batch_size=cfg.loader_batch)
    return time_loader(loader, seconds=cfg.seconds)


def _actual_throughput(cfg: PipelineConfig, row_cfg: JobConfig, env: DistEnv) -> Timing:
    job, run, loader = _job_parts(cfg, row_cfg, env, row_cfg.run.workers, cfg.clips_per_gpu, limited=True)
    training = None
    try:
        torch.manual_seed(cfg.seed)
        training = build_training(job, run, row_cfg.optim, env)
        return time_training(job, training, iter(loader), env, warmup_steps=cfg.warmup_steps, seconds=cfg.seconds,
                             min_steps=cfg.min_steps, workers=run.workers)  # fmt: skip
    finally:
        close_loader(loader)
        del training
        release_memory(env.device)
