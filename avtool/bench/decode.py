"""`avtool bench decode`: the CPU side of video loading (paper Fig. 5) and the chunk-length comparison.

Fig. 5 protocol: N chunk files are loaded into memory (so no disk IO is measured), every clip samples
``frames`` frames over its chunk and is cropped to ``size``; M worker processes, each single-threaded,
share the N clips, or, with a time budget (``seconds``), each cycles through all N clips from its own
offset until the budget is spent, so that every row takes the same time whatever its speed and no
process idles while a slower one finishes its share. For each backend × mode × access × M the rows
hold the latency per video, the throughput per process, the overall throughput and the CPU time per
video (user + system time of the worker processes, their decoder and driver threads included: what
NVDEC saves the CPU); PyAV rows also split a video's time into open, demux, decode, convert (colour
conversion; with crop and scale when fused), resize (crop and resize after conversion) and other
(Python); decord rows count conversion as decode.

Chunk-length comparison: the same clips read from chunks of two lengths (15 s and 300 s by default)
cut from the same source videos with ``avtool.prep.chunk``: bytes read from the file and time per
clip (page cache warm: the bytes show the IO difference; the time shows the extra demuxing and
decoding of long chunks).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avtool.errors import AvtoolError
from avtool.options import option
from avtool.train.config import output_option, seed_option
from avtool.video.clips import ChunkedVideo, ChunkIndex, ChunkRead, plan_clip, segment_frame_ids
from avtool.video.crops import Crop, random_resized_crop
from avtool.video.decode import ACCESSES, BACKENDS, MODES, DecoderConfig, StageTimes, make_decoder

TINY_DECODE: dict = dict(videos=6, procs=(1, 2), backends=("pyav", "decord"), chunk_lengths=(2, 10),
                         comparison_clips=3, preset="ultrafast")  # fmt: skip
"""What `--tiny` changes: a few seconds on two cores, for CI and a first look."""


@dataclass(frozen=True)
class DecodeBenchConfig:
    root: Path = option(
        panel="Data",
        flags="--root",
        positional=True,
        metavar="DIR",
        help="Chunk root made by `avtool chunk` (its chunk files are loaded into memory).",
    )
    videos: int = option(1024, help="N: chunk files loaded into memory (the paper's toy set: 1,024 15-s clips); "
                         "fewer distinct files are cycled.")  # fmt: skip
    frames: int = option(4, unit="frames", help="Frames sampled per clip (paper: 4).")
    size: int = option(224, unit="pixels", help="Side of the output crop (paper: 224).")
    procs: tuple[int, ...] = option(
        (), show_default="1, 2, 4 and so on up to the cores", help="Process counts M, repeatable or comma-separated."
    )
    backends: tuple[str, ...] = option(
        ("pyav", "decord"),
        flags="--backends",
        help="Decoders, repeatable or comma-separated: pyav, pyav-nvdec, decord.",
    )
    modes: tuple[str, ...] = option(MODES, help="decode-then-crop and/or fused, repeatable or comma-separated.")
    accesses: tuple[str, ...] = option(ACCESSES, help="sequential (from the chunk start, as the reference) and/or "
                                       "seek, repeatable or comma-separated.")  # fmt: skip
    clip_seconds: float | None = option(None, unit="s", show_default="the whole chunk (paper)",
                                        help="Clip length: the frames are spread over a clip this long at a random "
                                        "place.")  # fmt: skip
    skip_nonref: bool = True
    """Let seek access skip unrequested non-reference frames (PyAV)."""
    repeats: int = 1
    """Passes over the N clips per measurement (without ``seconds``)."""
    seconds: float | None = option(
        None, unit="s", show_default="none: the N clips once, split among the processes",
        help="Time budget per row: every process decodes clips this long (the same time for fast and slow rows, "
        "no idle processes at the end).",
    )  # fmt: skip
    seed: int = seed_option("chunk choice, frame jitter and crops (the same clips for every row)")
    sources: Path | None = option(None, flags=("--chunk-len-compare", "--sources"), metavar="DIR",
                                  help="Raw videos to re-chunk at each --chunk-lengths and read the same clips "
                                  "from (Table 4's shorter chunks).")  # fmt: skip
    chunk_lengths: tuple[int, ...] = option(
        (15, 300), unit="s", help="Chunk lengths compared by --chunk-len-compare, comma-separated."
    )
    comparison_clips: int = 32
    """Clips read per chunk length in the comparison."""
    comparison_clip_seconds: float = 1.0
    """Length of each comparison clip (Ego4D narration clips last about a second)."""
    preset: str = "medium"
    """libx264 preset of the comparison's chunks (other settings: avtool chunk's defaults)."""
    scratch: Path | None = None
    """Folder for the comparison's chunks, kept for reruns; None uses a temporary folder."""
    ceiling: bool = option(
        False, help="Also run a fixed single-threaded CPU task (zlib inflate) with each M: how far this machine's "
        "cores scale at all, the ceiling for the decoders' scaling (decode-ceiling.csv).",
    )  # fmt: skip
    output_dir: Path = output_option("results", "decode.csv/json (and decode-chunk-length.csv/json)")

    def __post_init__(self) -> None:
        problems = []
        if self.videos < 1 or self.frames < 1 or self.size < 1 or self.repeats < 1:
            problems.append("videos, frames, size and repeats must be positive")
        if any(m < 1 for m in self.procs):
            problems.append(f"procs must be positive, got {self.procs}")
        for name, allowed in (("backends", BACKENDS), ("modes", MODES), ("accesses", ACCESSES)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                problems.append(f"{name} must be among {', '.join(allowed)}, got {', '.join(bad)}")
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            problems.append(f"clip_seconds must be positive, got {self.clip_seconds}")
        if self.seconds is not None and self.seconds <= 0:
            problems.append(f"seconds must be positive, got {self.seconds}")
        if self.sources is not None and (len(self.chunk_lengths) < 2 or min(self.chunk_lengths) < 1):
            problems.append(f"chunk_lengths needs two or more lengths >= 1 s, got {self.chunk_lengths}")
        if problems:
            raise AvtoolError("; ".join(problems))

    @property
    def pool_sizes(self) -> tuple[int, ...]:
        if self.procs:
            return tuple(self.procs)
        cores = os.cpu_count() or 1
        sizes = [2**k for k in range(cores.bit_length()) if 2**k <= cores]
        return tuple(sizes if sizes[-1] == cores else [*sizes, cores])

    @classmethod
    def tiny(cls, root: Path, sources: Path | None = None, scratch: Path | None = None) -> DecodeBenchConfig:
        """A few seconds on two cores: for tests and a first look."""
        return cls(root=root, sources=sources, scratch=scratch, **TINY_DECODE)


@dataclass
class DecodeBenchResult:
    rows: list[dict]
    """One row per backend × mode × access × pool size (Fig. 5)."""
    chunk_rows: list[dict]
    """One row per chunk length × access (empty without ``sources``)."""
    ceiling_rows: list[dict] = field(default_factory=list)
    """One row per pool size of the fixed CPU task (empty without ``ceiling``)."""


@dataclass(frozen=True)
class BenchItem:
    """One clip of the benchmark: its chunk in memory, frames and crop (the same for every row)."""

    read: ChunkRead
    crop: Crop


def run_decode_bench(cfg: DecodeBenchConfig, on_row: Callable[[dict], None] | None = None) -> DecodeBenchResult:
    """Run every Fig. 5 measurement (and the chunk-length comparison when ``cfg.sources`` is set)."""
    items = load_items(cfg)
    rows = []
    for backend in cfg.backends:
        for mode in cfg.modes:
            for access in cfg.accesses:
                decoder = DecoderConfig(backend=backend, mode=mode, access=access, skip_nonref=cfg.skip_nonref)
                for procs in cfg.pool_sizes:
                    row = measure_pool(items, decoder, cfg.size, procs, cfg.repeats, cfg.seconds)
                    row.update(frames=cfg.frames, size=cfg.size, clip_seconds=cfg.clip_seconds or "chunk")
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    ceiling_rows = []
    if cfg.ceiling:
        for procs in cfg.pool_sizes:
            row = measure_pool(items, None, cfg.size, procs, cfg.repeats, cfg.seconds)
            ceiling_rows.append(row)
            if on_row is not None:
                on_row(row)
    add_scaling(rows)
    add_scaling(ceiling_rows)
    chunk_rows = compare_chunk_lengths(cfg, on_row) if cfg.sources is not None else []
    return DecodeBenchResult(rows, chunk_rows, ceiling_rows)


def add_scaling(rows: list[dict]) -> None:
    """Each row's ``scaling``: its throughput over M times the same setting's one-process throughput
    (1.0 = linear), where a one-process row was measured."""
    single = {(r["backend"], r["mode"], r["access"]): r["throughput"] for r in rows if r["procs"] == 1}
    for r in rows:
        base = single.get((r["backend"], r["mode"], r["access"]))
        r["scaling"] = round(r["throughput"] / (r["procs"] * base), 3) if base else None


CEILING_BACKEND = "zlib-inflate"
"""The ``backend`` of the ceiling rows."""


class InflateTask:
    """The ceiling measurement's work item, in a decoder's clothes: inflate 4 MiB that zlib deflated
    (pure single-threaded C over a few MiB, like entropy decoding; 20-30 ms per item measured on the dev
    VM and the H200 host)."""

    device = "cpu"
    config = None

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._blob = zlib.compress(rng.integers(0, 16, 4 << 20, dtype=np.uint8).tobytes(), 6)

    def decode(self, read: ChunkRead, crop: Crop, size: int, times: StageTimes | None = None) -> None:
        t = time.perf_counter()
        zlib.decompress(self._blob)
        if times is not None:
            elapsed = time.perf_counter() - t
            times.add(StageTimes(decode=elapsed, total=elapsed, reads=1))


def load_items(cfg: DecodeBenchConfig) -> list[BenchItem]:
    """N clips over chunks of ``cfg.root``, their chunk files read into memory, frames and crops drawn."""
    index = ChunkIndex(cfg.root)
    keys = index.keys()
    if not keys:
        raise AvtoolError(f"{cfg.root}: no chunked videos found (run avtool chunk first)")
    videos = [v for v in index.get_many(keys).values() if isinstance(v, ChunkedVideo)]
    if not videos:
        raise AvtoolError(f"{cfg.root}: none of the {len(keys)} videos could be read")
    chunks = _full_chunks(videos)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(chunks))[: cfg.videos]
    chosen = [chunks[i] for i in order]
    data = {video.paths[i]: video.paths[i].read_bytes() for video, i in chosen}
    items = []
    for k in range(cfg.videos):
        video, i = chosen[k % len(chosen)]
        frames, fps = video.frames[i], video.fps[i]
        if cfg.clip_seconds is None:
            first, end = 0, frames
        else:
            length = min(frames, max(1, round(cfg.clip_seconds * fps)))
            first = int(rng.integers(0, frames - length + 1))
            end = first + length
        ids = tuple(segment_frame_ids(first, end, cfg.frames, rng))
        path = video.paths[i]
        read = ChunkRead(data[path], ids, fps, video.width, video.height, name=str(path))
        items.append(BenchItem(read, random_resized_crop(video.width, video.height, rng)))
    return items


def _full_chunks(videos: list[ChunkedVideo]) -> list[tuple[ChunkedVideo, int]]:
    """Chunks of full length (the last chunk of a video is usually shorter), else every chunk."""
    longest = max(f / r for v in videos for f, r in zip(v.frames, v.fps, strict=True))
    full = [(v, i) for v in videos for i in range(len(v.paths)) if v.frames[i] / v.fps[i] >= 0.95 * longest]
    return full or [(v, i) for v in videos for i in range(len(v.paths))]


# A worker that has not reached the start line by then is stuck (a CUDA context that never comes
# up, say): the others stop waiting and report it.
START_TIMEOUT_S = 300.0
# No clip finished and no report arrived for this long: a worker hangs (a decoder stuck in a bad
# stream, a start that never ends), and the row fails with a message instead of the run hanging.
STALL_S = 300.0


def measure_pool(
    items: list[BenchItem], decoder: DecoderConfig | None, size: int, procs: int, repeats: int = 1,
    seconds: float | None = None,
) -> dict:  # fmt: skip
    """Decode ``items`` with ``procs`` single-threaded worker processes started together; one result
    row. Without ``seconds`` the workers split the clips (each clip ``repeats`` times); with it, each
    worker cycles through all clips from its own offset until ``seconds`` have passed. ``decoder``
    None runs ``InflateTask`` instead of decoding (the machine's scaling ceiling)."""
    # Forked workers share the in-memory chunks without copies; NVDEC needs CUDA, which a process
    # forked from one that touched CUDA cannot use, so its workers are spawned.
    fork = "fork" in mp.get_all_start_methods() and (decoder is None or decoder.backend != "pyav-nvdec")
    context = mp.get_context("fork" if fork else "spawn")
    barrier = context.Barrier(procs)
    results = context.Queue()
    progress = context.Array("q", procs, lock=False)  # clips done by each worker, for stall detection
    if seconds is None:
        shares = [items[r::procs] * repeats for r in range(procs)]
    else:
        shares = [_rotate(items, r * len(items) // procs) for r in range(procs)]
    workers = [
        context.Process(
            target=_worker, args=(share, decoder, size, barrier, results, seconds, progress, slot), daemon=True
        )  # fmt: skip
        for slot, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    reports = _collect(results, workers, progress)
    # The worker that failed first says why; the others only saw the start line break.
    errors = sorted((r.get("waiting", False), r["error"]) for r in reports if r.get("error"))
    if errors:
        what = "ceiling task" if decoder is None else f"{decoder.backend} {decoder.mode} {decoder.access}"
        raise AvtoolError(f"{what}: {errors[0][1]}")
    latencies = np.concatenate([r["latencies"] for r in reports])
    wall = max(r["end"] for r in reports) - min(r["begin"] for r in reports)
    times = StageTimes()
    for r in reports:
        times.add(r["times"])
    n = len(latencies)
    row = {
        "backend": CEILING_BACKEND if decoder is None else decoder.backend,
        "mode": "-" if decoder is None else decoder.mode,
        "access": "-" if decoder is None else decoder.access,
        "procs": procs,
        "videos": n,
        "latency_ms": round(1e3 * float(latencies.mean()), 3),
        "latency_p90_ms": round(1e3 * float(np.percentile(latencies, 90)), 3),
        "throughput_per_proc": round(n / wall / procs, 3),
        "throughput": round(n / wall, 3),
        "cpu_ms_per_video": round(1e3 * sum(r["cpu"] for r in reports) / n, 3),
        "wall_s": round(wall, 3),
        "frames_decoded_per_video": round(times.frames_decoded / n, 1),
        "device": "; ".join(sorted({r["device"] for r in reports})),
        "skip_nonref": None if decoder is None else decoder.skip_nonref,
    }
    # decord decodes and converts in one call: its rows split only open, decode(+convert) and resize.
    for stage in ("open", "demux", "decode", "convert", "resize", "other"):
        row[f"{stage}_ms"] = round(1e3 * getattr(times, stage) / n, 3)
    return row


def _rotate(items: list, start: int) -> list:
    return items[start:] + items[:start]


def _collect(results, workers, progress=None, stall_s: float = STALL_S) -> list[dict]:
    """One report per worker. A worker that dies without reporting (a crash in a decoder) is an
    error, and so is a stall: ``stall_s`` seconds without a report and without a clip finished by any
    worker (``progress`` holds each worker's count). On error the remaining workers are killed."""
    reports = []
    done, active = -1, time.monotonic()
    while len(reports) < len(workers):
        try:
            reports.append(results.get(timeout=1.0))
            active = time.monotonic()
            continue
        except queue.Empty:
            pass
        if progress is not None and (finished := sum(progress)) != done:
            done, active = finished, time.monotonic()
        dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
        problem = f"a benchmark worker died (exit code {dead[0].exitcode})" if dead else None
        if problem is None and all(not w.is_alive() for w in workers):
            try:  # a report may have arrived between the wait above and the last exit
                reports.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                problem = "benchmark workers exited without reporting"
        if problem is None and time.monotonic() - active > stall_s:
            problem = f"no clip decoded and no worker reported for {stall_s:.0f} s (a decoder hung?)"
        if problem is not None:
            for w in workers:
                w.kill()
            raise AvtoolError(problem)
    for w in workers:
        w.join()
    return reports


def _worker(
    items: list[BenchItem], config: DecoderConfig | None, size: int, barrier, results, seconds: float | None,
    progress, slot: int,
) -> None:  # fmt: skip
    """One pool process: warm up, wait for the others, decode (its share, or until the budget is
    spent) counting clips in ``progress[slot]``, report its latencies, stage times and CPU time."""
    try:
        import torch

        torch.set_num_threads(1)
        decoder = make_decoder(config) if config is not None else InflateTask()
        decoder.decode(items[0].read, items[0].crop, size)  # imports, CUDA context, first graphs: not timed
        barrier.wait(timeout=START_TIMEOUT_S)
        times = StageTimes()
        latencies = []
        # process_time: user + system time of every thread of this process (decoder, CUDA driver).
        cpu = time.process_time()
        begin = time.perf_counter()
        deadline = None if seconds is None else begin + seconds
        for k in range(len(items) if deadline is None else sys.maxsize):
            item = items[k % len(items)]
            t = time.perf_counter()
            decoder.decode(item.read, item.crop, size, times)
            latencies.append(time.perf_counter() - t)
            progress[slot] = k + 1
            if deadline is not None and latencies[-1] + t >= deadline:
                break
        end = time.perf_counter()
        cpu = time.process_time() - cpu
        results.put({"latencies": np.array(latencies), "begin": begin, "end": end, "times": times, "cpu": cpu,
                     "device": decoder.device})  # fmt: skip
    except Exception as e:  # reported to the parent, which raises it as one line
        barrier.abort()
        if isinstance(e, threading.BrokenBarrierError):
            results.put({"error": "a worker failed or did not start in time", "waiting": True})
        else:
            results.put({"error": str(e) if isinstance(e, AvtoolError) else f"{type(e).__name__}: {e}"})


def compare_chunk_lengths(cfg: DecodeBenchConfig, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Chunk ``cfg.sources`` at each length, read the same clips from each, and report bytes and time."""
    if cfg.scratch is not None:
        return _compare_in(cfg, Path(cfg.scratch), on_row)
    with tempfile.TemporaryDirectory(prefix="avtool-chunk-lengths-") as tmp:
        return _compare_in(cfg, Path(tmp), on_row)


def _compare_in(cfg: DecodeBenchConfig, scratch: Path, on_row) -> list[dict]:
    from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
    from avtool.prep.encode import EncodeSettings

    indexes = {}
    for length in cfg.chunk_lengths:
        dst = scratch / f"chunks-{length}s"
        encode = EncodeSettings(chunk_len=length, preset=cfg.preset, gop=min(1.0, float(length)))
        report = run_chunking(plan_chunking(ChunkConfig(src=Path(cfg.sources), dst=dst, encode=encode)))
        failures = report.failures + report.plan.failures
        if failures:
            raise AvtoolError(f"chunking {cfg.sources} at {length} s failed: {failures[0].video}: {failures[0].reason}")
        indexes[length] = ChunkIndex(dst)
    reference = indexes[cfg.chunk_lengths[0]]
    keys = reference.keys()
    rng = np.random.default_rng([cfg.seed, 1])
    clips = []
    for _ in range(cfg.comparison_clips):
        video = reference.get(keys[int(rng.integers(len(keys)))])
        start = float(rng.uniform(0, max(0.0, video.duration - cfg.comparison_clip_seconds)))
        clips.append((video.key, start, start + cfg.comparison_clip_seconds, int(rng.integers(2**31))))
    rows = []
    for access in cfg.accesses:
        decoder = make_decoder(DecoderConfig(backend="pyav", mode="fused", access=access, skip_nonref=cfg.skip_nonref))
        for length, index in indexes.items():
            row = _read_clips(index, clips, decoder, cfg)
            row = {"chunk_len": length, "access": access, "mode": "fused", "backend": "pyav", **row}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _read_clips(index: ChunkIndex, clips: list, decoder, cfg: DecodeBenchConfig) -> dict:
    file_bytes, read_bytes, seconds = 0, 0, 0.0
    times = StageTimes()
    reads = 0
    for key, start, end, seed in clips:
        video = index.get(key)
        clip_rng = np.random.default_rng(seed)
        plan = plan_clip(video, start, end, cfg.frames, clip_rng)
        crop = random_resized_crop(video.width, video.height, clip_rng)
        before = _bytes_read()
        t = time.perf_counter()
        for read in plan.reads:
            decoder.decode(read, crop, cfg.size, times)
        seconds += time.perf_counter() - t
        after = _bytes_read()
        if before is not None and after is not None:
            read_bytes += after - before
        file_bytes += sum(Path(r.source).stat().st_size for r in plan.reads)
        reads += len(plan.reads)
    n = len(clips)
    return {
        "clips": n,
        "chunks_per_clip": round(reads / n, 2),
        "file_bytes_per_clip": round(file_bytes / n),
        "bytes_read_per_clip": round(read_bytes / n) if _bytes_read() is not None else None,
        "ms_per_clip": round(1e3 * seconds / n, 3),
        "frames_decoded_per_clip": round(times.frames_decoded / n, 1),
        "cache": "warm",
    }


def _bytes_read() -> int | None:
    """Bytes this process has read through read() calls so far (Linux), None where unknown."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def write_decode_results(out_dir: Path, result: DecodeBenchResult, cfg: DecodeBenchConfig) -> list[Path]:
    """``decode.csv/json`` (Fig. 5 rows) and, with a comparison, ``decode-chunk-length.csv/json``."""
    from avtool.results import write_results

    paths = list(write_results(out_dir, "decode", result.rows, cfg))
    if result.chunk_rows:
        paths += write_results(out_dir, "decode-chunk-length", result.chunk_rows, cfg)
    if result.ceiling_rows:
        paths += write_results(out_dir, "decode-ceiling", result.ceiling_rows, cfg)
    return paths
