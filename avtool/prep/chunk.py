"""`avtool chunk`: cut a tree of raw long videos into the AVION chunk layout, resumably and in parallel.

``SRC/a/b.mp4`` becomes ``DST/a/b.mp4/0.mp4, 15.mp4, …``. Each video is encoded into a hidden
partial folder, verified, and renamed into place; so a finished folder is always complete, a rerun
skips it, and an interrupted run leaves only partial folders that the next run removes.

``--plan`` weighs two budgets: the disk's (Eq. 3) and the CPUs' decode budget, from trial encodes at
the asked settings, at the other libx264 tune and with non-reference B-frames. ``--quality`` compares a
few seconds of each video's chunks with the source (PSNR, SSIM) and writes DST/quality.json.
"""

from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from avtool.atomic import atomic_write_text
from avtool.errors import AvtoolError, output_error
from avtool.options import option
from avtool.prep.encode import (
    X264_TUNES,
    ChunkFile,
    EncodeError,
    EncodeSettings,
    encode_chunks,
    source_notes,
    verify_chunks,
)
from avtool.prep.quality import Quality, combine, measure_quality
from avtool.prep.sizing import Candidate, ChunkSizing, DecodeBudget, Quantity
from avtool.prep.trial import TrialClip, TrialResult, run_trial
from avtool.readspeed import measure_sequential_read
from avtool.video.probe import VideoInfo, probe_video

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".webm", ".avi"}
STATE_DIR = ".avtool"
MANIFEST_COLUMNS = [
    "video", "chunk", "start", "duration", "frames", "fps", "width", "height", "bytes", "bitrate",
]  # fmt: skip


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` as (i, n)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AvtoolError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return i, n


@dataclass(frozen=True)
class ChunkConfig:
    """Cut the videos under SRC into chunks under DST."""

    src: Path = option(
        panel="Data",
        flags="--src",
        positional=True,
        metavar="DIR",
        help="Folder searched recursively for videos (mp4, mkv, mov, webm, avi), or one video file.",
    )
    dst: Path = option(
        panel="Data",
        flags="--dst",
        positional=True,
        metavar="DIR",
        help="Output root: DST/<relative path of the video>/<start second>.mp4.",
    )
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    batch_size: int = option(
        1024,
        panel="Chunks",
        unit="clips/step",
        help="B: clips per training step on the whole node, for Eq. 3 (paper: 1024).",
    )
    step_time: float = option(4.0, panel="Chunks", unit="s", help="Δ: seconds per training step, for Eq. 3.")
    read_speed: float | None = option(
        None,
        panel="Chunks",
        unit="MB/s",
        show_default="measured on DST's volume",
        help="S_r for Eq. 3 (256 MB test file when measured).",
    )
    safety: float = option(0.04, panel="Chunks", help="Fraction of the read budget kept in reserve, 0-1 (4% turns "
                           "the paper's 15.6 s into its 15 s).")  # fmt: skip
    workers: int = option(
        default_factory=lambda: os.cpu_count() or 1,
        flags="--encoders",
        panel="Run",
        show_default="all cores",
        help="Videos encoded in parallel; FFmpeg threads split the cores.",
    )
    shard: tuple[int, int] = option(
        (0, 1),
        panel="Run",
        metavar="i/n",
        show_default="0/1",
        parse=parse_shard,
        help="Do only shard i (0-based) of n, e.g. one task of a Slurm job array.",
    )
    gpu_clips_per_s: float | None = option(
        None, flags="--gpu-clips-per-s", panel="Chunks", unit="clips/s", show_default="B/Δ",
        help="Clips/s the GPUs train on, for --plan's decode budget.",
    )  # fmt: skip
    cores: int = option(
        default_factory=lambda: os.cpu_count() or 1, panel="Chunks", show_default="this machine's cores",
        help="CPU cores that decode for training, for --plan's decode budget (clips/s per core · cores).",
    )  # fmt: skip
    clip_frames: int = option(4, panel="Chunks", unit="frames", help="Frames per clip in --plan's decode trial.")
    clip_seconds: float = option(
        1.0, panel="Chunks", unit="s", help="Clip length in --plan's decode trial (Ego4D narrations: about 1 s)."
    )
    quality: bool = option(
        False, panel="Encoding", help="Compare chunks with the source (PSNR, SSIM): --quality-seconds per video."
    )
    quality_seconds: float = option(
        2.0, panel="Encoding", unit="s", help="Seconds per video compared by --quality, mid-video."
    )
    trial_videos: int = 3
    """Videos trial-encoded to measure ρ (and clips/s per core)."""
    decode_trial_seconds: float = 1.5
    """Seconds spent decoding each candidate encoding's trial clips (all trial videos together)."""

    @property
    def auto_chunk_len(self) -> bool:
        """Whether the chunk length comes from B·ρ·T ≤ S_r·Δ (``--chunk-len auto``)."""
        return self.encode.chunk_len == "auto"

    def __post_init__(self) -> None:
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise AvtoolError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.workers < 1:
            raise AvtoolError(f"--encoders must be at least 1, got {self.workers}")
        if self.batch_size < 1 or self.step_time <= 0:
            raise AvtoolError("--batch-size and --step-time must be positive")
        if not 0 <= self.safety < 1:
            raise AvtoolError(f"--safety must be in [0, 1), got {self.safety}")
        if self.read_speed is not None and self.read_speed <= 0:
            raise AvtoolError(f"--read-speed must be positive, got {self.read_speed}")
        if self.gpu_clips_per_s is not None and self.gpu_clips_per_s <= 0:
            raise AvtoolError(f"--gpu-clips-per-s must be positive, got {self.gpu_clips_per_s}")
        if self.cores < 1 or self.clip_frames < 1 or self.clip_seconds <= 0 or self.quality_seconds <= 0:
            raise AvtoolError("--cores, --clip-frames, --clip-seconds and --quality-seconds must be positive")


@dataclass(frozen=True)
class VideoJob:
    info: VideoInfo
    rel: Path
    """Path relative to SRC; also the chunk folder's path relative to DST."""

    @property
    def ext(self) -> str:
        # Chunks are MP4 files; keep the source's spelling (EK-100's .MP4) when it is MP4.
        suffix = self.rel.suffix.lstrip(".")
        return suffix if suffix.lower() == "mp4" else "mp4"


@dataclass
class Failure:
    video: str
    reason: str


@dataclass
class ChunkPlan:
    config: ChunkConfig
    jobs: list[VideoJob]
    """Videos of this shard that still need chunking."""
    done: list[str]
    """Videos of this shard already chunked by an earlier run."""
    failures: list[Failure]
    """Videos that cannot be read at all."""
    sizing: ChunkSizing | None
    """Eq. 3's derivation (when ρ and S_r were measured or given)."""
    chunk_len: int
    decode: DecodeBudget | None = None
    """The decode budget weighed against Eq. 3 (``--plan``)."""
    skipped_outputs: list[Path] = field(default_factory=list)
    """Folders under SRC that are earlier chunk output, left out of the inputs."""

    @property
    def notes(self) -> list[str]:
        """What the encode changes in the videos to chunk beyond size and rate (``source_notes``)."""
        return [f"{job.rel.as_posix()}: {note}" for job in self.jobs for note in source_notes(job.info)]

    @property
    def seconds(self) -> float:
        return sum(job.info.duration for job in self.jobs)

    @property
    def predicted_chunks(self) -> int:
        return sum(math.ceil(job.info.duration / self.chunk_len - 1e-6) for job in self.jobs)

    @property
    def predicted_bytes(self) -> float | None:
        if self.sizing is None:
            return None
        return self.sizing.bitrate.value * self.seconds / 8


@dataclass
class ChunkReport:
    plan: ChunkPlan
    chunked: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    """Seconds of source video chunked in this run."""
    wall_seconds: float = 0.0
    cores: int = 1
    interrupted: bool = False
    aborted: str | None = None
    """Why the run stopped early (e.g. a full disk)."""
    quality: list[Quality] = field(default_factory=list)
    """``--quality``: one measurement per video chunked in this run."""
    quality_failures: list[Failure] = field(default_factory=list)
    """Videos chunked fine whose quality could not be measured."""

    @property
    def quality_summary(self) -> Quality | None:
        return combine(self.quality)

    @property
    def realtime_factor(self) -> float:
        """Hours of video chunked per wall-clock hour."""
        return self.seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def mean_bitrate(self) -> float:
        return 8 * self.bytes / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.plan.failures and not self.interrupted and not self.aborted


def find_videos(src: Path) -> tuple[list[Path], list[Path]]:
    """Video files under ``src`` (or ``src`` itself), sorted, skipping hidden partial files; and, skipped
    with them, the folders under ``src`` that an earlier `avtool chunk` wrote (they hold its settings file:
    their chunks are outputs, not videos to chunk again)."""
    if not src.exists():
        raise AvtoolError(f"{src}: no such file or folder")
    if src.is_file():
        return [src], []
    found, outputs = [], []
    for folder, dirs, files in os.walk(src):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            sub = Path(folder) / d
            (outputs if _settings_path(sub).is_file() else kept).append(sub)
        dirs[:] = [d.name for d in kept]
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS and f[0] != "."]
    return sorted(p for p in found if p.is_file()), sorted(outputs)


def in_shard(rel: Path, shard: tuple[int, int]) -> bool:
    """Stable across machines and runs: adding videos never moves an existing one to another shard."""
    i, n = shard
    return zlib.crc32(rel.as_posix().encode()) % n == i


def plan_chunking(cfg: ChunkConfig, measure: bool = False) -> ChunkPlan:
    """Probe the inputs of this shard, find what is already done, and size the chunks (Eq. 3).

    ρ and S_r are measured (seconds of work) for ``--chunk-len auto`` or when ``measure`` is set."""
    src, dst = Path(cfg.src), Path(cfg.dst)
    if dst.resolve().is_relative_to(src.resolve()) and src.is_dir():
        raise AvtoolError(f"DST {dst} lies inside SRC {src}: chunks would be found as inputs next time")
    paths, skipped_outputs = find_videos(src)
    if not paths:
        raise AvtoolError(f"{src}: no videos found ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    root = src if src.is_dir() else src.parent
    rels = [p.relative_to(root) for p in paths if in_shard(p.relative_to(root), cfg.shard)]
    jobs, done, failures = [], [], []
    for rel in rels:
        if _is_done(dst, rel):
            done.append(rel.as_posix())
            continue
        try:
            jobs.append(VideoJob(probe_video(root / rel), rel))
        except AvtoolError as e:
            failures.append(Failure(rel.as_posix(), _strip_path(str(e), root / rel)))

    sizing, decode = None, None
    chunk_len = cfg.encode.chunk_len
    if jobs and (cfg.auto_chunk_len or measure):
        sizing, decode = size_chunks(cfg, [j.info for j in jobs], decode=measure)
        if cfg.auto_chunk_len:
            chunk_len = sizing.chosen_chunk_seconds
    if chunk_len == "auto":  # nothing left to size: the length DST was made with (15 for an empty DST)
        chunk_len = _recorded_chunk_len(dst) or 15
    cfg = replace(cfg, encode=replace(cfg.encode, chunk_len=chunk_len))
    _check_settings(dst, cfg)
    return ChunkPlan(cfg, jobs, done, failures, sizing, chunk_len, decode, skipped_outputs)


def size_chunks(
    cfg: ChunkConfig, infos: list[VideoInfo], decode: bool = False
) -> tuple[ChunkSizing, DecodeBudget | None]:
    """Measure ρ by trial encodes and S_r on DST's volume (unless given), for Eq. 3; with ``decode``,
    also clips/s per core of each of ``trial_variants``, for the decode budget."""
    sample = sorted(infos, key=lambda i: i.path)[: max(1, cfg.trial_videos)]
    # With --chunk-len auto the trial places keyframes as 15-s chunks would; ρ and clips/s barely depend on it.
    trial = replace(cfg.encode, chunk_len=15) if cfg.auto_chunk_len else cfg.encode
    variants = trial_variants(trial) if decode else [trial]
    clip = TrialClip(frames=cfg.clip_frames, seconds=cfg.clip_seconds) if decode else None
    per_video = cfg.decode_trial_seconds / len(sample)
    with tempfile.TemporaryDirectory(prefix="avtool-trial-") as tmp:
        trials = {
            variant: [(run_trial(info, variant, Path(tmp), clip, per_video), info.duration) for info in sample]
            for variant in variants
        }
    rho = _mean_bitrate(trials[trial])
    if cfg.read_speed is not None:
        read = Quantity("S_r", cfg.read_speed * 1e6, "B/s", "--read-speed")
    else:
        result = measure_sequential_read(_existing_parent(Path(cfg.dst)), size_bytes=256_000_000)
        read = Quantity("S_r", result.bytes_per_second, "B/s", f"measured on DST's volume, {result.cache}")
    sizing = ChunkSizing(
        batch_size=Quantity("B", cfg.batch_size, "clips/step", "--batch-size"),
        bitrate=Quantity(
            "ρ",
            rho,
            "b/s",
            f"trial encode of {len(sample)} video(s), crf {cfg.encode.crf}, {cfg.encode.preset}"
            + (f", tune {cfg.encode.tune}" if cfg.encode.tune != "none" else ""),
        ),
        read_speed=read,
        step_time=Quantity("Δ", cfg.step_time, "s", "--step-time"),
        safety=cfg.safety,
    )
    if clip is None:
        return sizing, None
    candidates = tuple(
        Candidate(_encode_flags(variant), _mean_bitrate(runs), _clips_per_core([r for r, _ in runs]), variant == trial)
        for variant, runs in trials.items()
    )
    gpu_rate = None
    if cfg.gpu_clips_per_s is not None:
        gpu_rate = Quantity("needed", cfg.gpu_clips_per_s, "clips/s", "--gpu-clips-per-s")
    given = cfg.cores != (os.cpu_count() or 1)
    cores = Quantity("cores", cfg.cores, "", "--cores" if given else "this machine's cores, --cores")
    description = f"{clip.describe()}, 1 thread; trial encodes of {len(sample)} video(s)"
    chunk_len = None if cfg.auto_chunk_len else cfg.encode.chunk_len
    return sizing, DecodeBudget(sizing, cores, description, candidates, chunk_len, gpu_rate)


PLAN_BFRAMES = 8
"""The non-reference B-frames the decode budget tries when none are asked: the most that cost no quality
worth naming on the sample (benchmarks/README.md, "Non-reference B-frames")."""


def trial_variants(asked: EncodeSettings) -> list[EncodeSettings]:
    """The encodings the decode budget weighs: the asked one first, then each libx264 tune, with the asked
    B-frames and, where none were asked, with ``PLAN_BFRAMES`` non-reference ones."""
    bframes = [asked.bframes] + ([PLAN_BFRAMES] if asked.bframes is None else [])
    out = [asked]
    for tune in X264_TUNES:
        for b in bframes:
            variant = replace(asked, tune=tune, bframes=b)
            if variant not in out:
                out.append(variant)
    return out


def _encode_flags(settings: EncodeSettings) -> str:
    """How to ask for ``settings``'s tune and B-frames, e.g. ``--tune fastdecode --bframes 8``."""
    return f"--tune {settings.tune}" + (f" --bframes {settings.bframes}" if settings.bframes is not None else "")


def _mean_bitrate(runs: list[tuple[TrialResult, float]]) -> float:
    """ρ of trial encodes, each video weighted by its duration (long videos make most of the chunks)."""
    return sum(r.bitrate * d for r, d in runs) / sum(d for _, d in runs)


def _clips_per_core(results: list[TrialResult]) -> float:
    cpu = sum(r.cpu_seconds for r in results)
    return sum(r.clips for r in results) / cpu if cpu > 0 else 0.0


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _state_dir(dst: Path) -> Path:
    return dst / STATE_DIR


def _piece_path(dst: Path, rel: Path) -> Path:
    return _state_dir(dst) / "manifest" / f"{rel.as_posix()}.csv"


def _is_done(dst: Path, rel: Path) -> bool:
    return (dst / rel).is_dir() and _piece_path(dst, rel).is_file()


class _Interrupted(Exception):
    pass


def run_chunking(
    plan: ChunkPlan,
    on_progress: Callable[[float], None] | None = None,
    on_video_done: Callable[[str, str | None], None] | None = None,
) -> ChunkReport:
    """Chunk every video of the plan. ``on_progress`` gets seconds of footage encoded;
    ``on_video_done(video, failure_reason_or_None)`` is called as each video finishes."""
    cfg = plan.config
    dst = Path(cfg.dst)
    _check_settings(dst, cfg)
    try:  # the first write: a read-only or full DST is found before any encoding
        if not _settings_path(dst).exists():
            atomic_write_text(_settings_path(dst), json.dumps(_settings_record(cfg), indent=2))
    except OSError as e:
        raise output_error(e, f"DST {dst}") from None
    cores = os.cpu_count() or 1
    workers = max(1, min(cfg.workers, len(plan.jobs) or 1))
    threads = max(1, cores // workers)
    report = ChunkReport(plan, cores=min(cores, workers * threads))
    processes: set[subprocess.Popen] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def register(proc: subprocess.Popen) -> None:
        with lock:
            processes.add(proc)
        if stop.is_set():
            proc.kill()

    def run_one(job: VideoJob) -> tuple[list[ChunkFile], Quality | str | None]:
        if stop.is_set():
            raise _Interrupted
        final = dst / job.rel
        # A folder of this process's own: an FFmpeg orphaned by a killed run may still be writing into
        # the old one, which is removed here (its writes then fail) rather than reused.
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        for stale in final.parent.glob(f".{glob.escape(final.name)}.partial*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            if final.is_dir():
                # Renamed by a run killed before it wrote the manifest: verify instead of re-encoding.
                chunks = verify_chunks(job.info, final, job.ext, cfg.encode)
            else:
                chunks = encode_chunks(job.info, partial, job.ext, cfg.encode, threads, on_progress, register)
                if stop.is_set():
                    raise _Interrupted
                os.replace(partial, final)
                chunks = [replace(c, path=final / c.path.name) for c in chunks]
            # Before the manifest piece, which marks the video done: a run killed in between measures again.
            quality = _measure_quality(dst, job, chunks, cfg, threads) if cfg.quality else None
            _write_piece(dst, job, chunks)
            return chunks, quality
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers)
    futures: dict[Future, VideoJob] = {}
    pending = sorted(plan.jobs, key=lambda j: -j.info.duration)  # longest first: fewer idle workers at the end
    try:
        with _sigterm_as_interrupt():
            while pending or futures:
                while pending and len(futures) < workers and not report.aborted:
                    job = pending.pop(0)
                    futures[pool.submit(run_one, job)] = job
                if not futures:
                    break
                finished, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = futures.pop(future)
                    name = job.rel.as_posix()
                    try:
                        chunks, quality = future.result()
                    except (EncodeError, AvtoolError, OSError) as e:
                        reason = str(e) if not isinstance(e, OSError) else f"{e.strerror or e}"
                        report.failures.append(Failure(name, reason))
                        if "disk full" in reason or getattr(e, "errno", None) == 28:
                            report.aborted = f"disk full while writing {dst}: free space and rerun to resume"
                            pending.clear()
                        if on_video_done is not None:
                            on_video_done(name, reason)
                        continue
                    report.chunked.append(name)
                    report.chunks += len(chunks)
                    report.bytes += sum(c.bytes for c in chunks)
                    report.seconds += job.info.duration
                    if isinstance(quality, Quality):
                        report.quality.append(quality)
                    elif quality is not None:
                        report.quality_failures.append(Failure(name, quality))
                    if on_video_done is not None:
                        on_video_done(name, None)
    except KeyboardInterrupt:
        report.interrupted = True
        stop.set()
        with lock:
            for proc in processes:
                if proc.poll() is None:
                    proc.kill()
        for future in futures:
            future.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        report.wall_seconds = time.perf_counter() - start
        try:
            write_manifest(dst)
            write_quality(dst)
        except OSError as e:  # the finished videos' pieces are kept: the next run writes the manifest
            report.aborted = report.aborted or str(output_error(e, f"the manifest of {dst}"))
    return report


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (kill, a scheduler's preemption) like Ctrl-C so the cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _settings_record(cfg: ChunkConfig) -> dict:
    return {"format": 1, **asdict(cfg.encode)}


LEGACY_SETTINGS = {"tune": "none", "bframes": None}
"""Settings a DST made before they existed was made with (records lack them; the encoding matched)."""


def _settings_path(dst: Path) -> Path:
    return _state_dir(dst) / "chunk_settings.json"


def _recorded_chunk_len(dst: Path) -> int | None:
    try:
        return int(json.loads(_settings_path(dst).read_text())["chunk_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_settings(dst: Path, cfg: ChunkConfig) -> None:
    """Refuse to mix chunks of different settings in one DST: resume must mean the same encoding."""
    record_path = _settings_path(dst)
    wanted = _settings_record(cfg)
    if record_path.exists():
        try:
            found = {**LEGACY_SETTINGS, **json.loads(record_path.read_text())}
        except (json.JSONDecodeError, TypeError):
            found = None
        if found != wanted:
            differing = sorted(k for k in wanted if not found or found.get(k) != wanted[k])
            raise AvtoolError(
                f"{dst} holds chunks made with other settings ({', '.join(differing)} differ): "
                "use another DST or the same settings"
            )


def _write_piece(dst: Path, job: VideoJob, chunks: list[ChunkFile]) -> None:
    rows = [
        {
            "video": job.rel.as_posix(),
            "chunk": (job.rel / c.path.name).as_posix(),
            "start": c.start,
            "duration": round(c.duration, 6),
            "frames": c.frames,
            "fps": round(c.fps, 6),
            "width": c.width,
            "height": c.height,
            "bytes": c.bytes,
            "bitrate": round(c.bitrate),
        }
        for c in chunks
    ]
    atomic_write_text(_piece_path(dst, job.rel), pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(index=False))


def _quality_piece_path(dst: Path, rel: Path) -> Path:
    return _state_dir(dst) / "quality" / f"{rel.as_posix()}.json"


def _measure_quality(
    dst: Path, job: VideoJob, chunks: list[ChunkFile], cfg: ChunkConfig, threads: int
) -> Quality | str:
    """The video's quality (also written as its piece of DST/quality.json), or why it could not be measured:
    a failed measurement does not fail the chunks."""
    try:
        quality = measure_quality(job.info, chunks, cfg.encode, cfg.quality_seconds, threads)
    except EncodeError as e:
        return str(e)
    atomic_write_text(_quality_piece_path(dst, job.rel), json.dumps(quality.to_dict()))
    return quality


def write_quality(dst: Path) -> Path | None:
    """Gather the per-video quality pieces into DST/quality.json: every video and their pooled PSNR and SSIM."""
    pieces_dir = _state_dir(dst) / "quality"
    pieces = sorted(p for p in pieces_dir.rglob("*.json") if not p.name.startswith(".")) if pieces_dir.is_dir() else []
    if not pieces:
        return None
    videos = {p.relative_to(pieces_dir).as_posix().removesuffix(".json"): json.loads(p.read_text()) for p in pieces}
    overall = combine([Quality.from_dict(v) for v in videos.values()])
    settings = json.loads(_settings_path(dst).read_text()) if _settings_path(dst).exists() else None
    record = {"overall": overall.to_dict() if overall else None, "settings": settings, "videos": videos}
    path = dst / "quality.json"
    atomic_write_text(path, json.dumps(record, indent=2))
    return path


def write_manifest(dst: Path) -> Path | None:
    """Gather the per-video pieces into DST/manifest.csv (one row per chunk), whichever shard made them."""
    pieces_dir = _state_dir(dst) / "manifest"
    if not pieces_dir.is_dir():
        return None
    # One merge at a time (shards finishing together): the last merge then holds every shard's pieces.
    with open(_state_dir(dst) / "manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pieces = [p for p in sorted(pieces_dir.rglob("*.csv")) if not p.name.startswith(".")]
        if not pieces:
            return None
        table = pd.concat([pd.read_csv(p) for p in pieces], ignore_index=True)
        table = table.sort_values(["video", "start"], kind="stable")
        path = dst / "manifest.csv"
        atomic_write_text(path, table.to_csv(index=False))
        return path
