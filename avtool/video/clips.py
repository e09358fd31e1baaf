"""Where the frames of a clip live: the chunked layout, frame sampling, and clip → chunk-file reads.

A video ``ROOT/<video>/`` is a folder of chunks ``<start-second>.<ext>`` (``avtool chunk`` writes
them; EK-100: ``ROOT/P01/P01_01.MP4/0.MP4``), or a plain video file, which counts as one chunk. The
frames of a video are numbered across its chunks in order (chunk i's frames follow chunk i-1's), so
a clip [t0, t1] maps to global frame ids and then to (chunk file, chunk-relative id) pairs; a clip
that crosses a chunk boundary reads both chunks. Chunks keep their own frame rate (EK-100 has 50
and 60 fps videos): times are turned into frames with the rate of the chunk that holds them.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import av
import numpy as np
import pandas as pd

from avtool.errors import AvtoolError

_CHUNK_EXTENSIONS = {".mp4", ".mkv", ".mov", ".webm", ".avi"}
# avtool chunk forces a chunk's first keyframe at the first frame whose time + 1e-4 s reaches the
# chunk start; estimating chunk boundaries with the same nudge puts each frame in the same chunk.
_BOUNDARY_NUDGE = 1e-4
# Slack in frames when turning times into frame ids, so that float error never moves a frame.
_FRAME_EPS = 1e-3


@dataclass(frozen=True)
class ChunkedVideo:
    """One video of the chunked layout, from the manifest or from the chunk files' headers."""

    key: str
    """Path of the video (its chunk folder, or its file) relative to the index root, POSIX style."""
    paths: tuple[Path, ...]
    """Chunk files in time order (one entry for a plain video file)."""
    starts: tuple[float, ...]
    """Start second of each chunk in the video."""
    frames: tuple[int, ...]
    """Frames in each chunk."""
    fps: tuple[float, ...]
    """Frame rate of each chunk, frames/s."""
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.starts[-1] + self.frames[-1] / self.fps[-1]

    @property
    def num_frames(self) -> int:
        return sum(self.frames)

    def first_frames(self) -> list[int]:
        """Global id of each chunk's first frame."""
        return [0, *np.cumsum(self.frames[:-1]).tolist()]

    def frame_at(self, seconds: float) -> int:
        """Global id of the frame shown at ``seconds`` (clamped to the video)."""
        i = max(0, bisect.bisect_right(self.starts, seconds + 1e-9) - 1)
        local = math.floor((seconds - self.starts[i]) * self.fps[i] + _FRAME_EPS)
        return self.first_frames()[i] + min(max(local, 0), self.frames[i] - 1)

    def frame_end(self, seconds: float) -> int:
        """Global id one past the last frame that starts before ``seconds`` (an exclusive clip end)."""
        i = max(0, bisect.bisect_left(self.starts, seconds - 1e-9) - 1)
        local = math.ceil((seconds - self.starts[i]) * self.fps[i] - _FRAME_EPS)
        return self.first_frames()[i] + min(max(local, 0), self.frames[i])


@dataclass(frozen=True)
class ChunkRead:
    """The frames wanted from one chunk file: what a decoder is asked for."""

    source: Path | bytes
    """The chunk file, or its bytes already in memory."""
    frame_ids: tuple[int, ...]
    """Chunk-relative frame ids in ascending order (repeats allowed for clips shorter than the sample)."""
    fps: float
    """Frame rate the ids were computed with; decoders check it against the chunk's real rate."""
    width: int
    height: int
    name: str = ""
    """Name used in error messages (defaults to the path)."""

    @property
    def label(self) -> str:
        return self.name or (str(self.source) if isinstance(self.source, Path) else "<in-memory chunk>")


@dataclass(frozen=True)
class ClipPlan:
    """A clip's sampled frames and the chunk reads that produce them, in frame order."""

    video: ChunkedVideo
    frame_ids: tuple[int, ...]
    """Global (video-wide) frame ids, ascending."""
    reads: tuple[ChunkRead, ...]


def segment_frame_ids(start: int, end: int, num_frames: int, rng: np.random.Generator | None = None) -> list[int]:
    """Frame ids of ``num_frames`` samples over frames [start, end): the midpoint of each of
    ``num_frames`` equal segments, moved by up to ±half a segment when ``rng`` is given (training)."""
    if num_frames < 1:
        raise AvtoolError(f"a clip needs at least one frame, got {num_frames}")
    end = max(end, start + 1)
    segment = (end - start) / num_frames
    offsets = np.arange(num_frames) + 0.5
    if rng is not None:
        offsets = offsets + rng.uniform(-0.5, 0.5, size=num_frames)
    ids = np.floor(start + offsets * segment).astype(np.int64)
    return np.clip(ids, start, end - 1).tolist()


def stride_frame_ids(total: int, num_frames: int, stride: int, rng: np.random.Generator | None = None) -> list[int]:
    """``num_frames`` ids ``stride`` apart (VideoMAE-style) from a random start in training, the
    centred start otherwise; ids past the end repeat the last frame."""
    span = (num_frames - 1) * stride + 1
    room = max(total - span, 0)
    first = int(rng.integers(0, room + 1)) if rng is not None else room // 2
    return [min(first + i * stride, total - 1) for i in range(num_frames)]


def jittered_stride_frame_ids(total: int, num_frames: int, stride: int, rng: np.random.Generator) -> list[int]:
    """AVION's VideoMAE sampling: a start uniform in [0, total − (num_frames + 1)·stride) (0 when the video is
    shorter), then start + k·stride + a jitter in [0, stride) per frame, modulo ``total``; returned in order."""
    room = total - (num_frames + 1) * stride
    first = int(rng.integers(0, room)) if room > 0 else 0
    jitter = rng.integers(0, stride, size=num_frames)
    return sorted((first + k * stride + int(j)) % total for k, j in enumerate(jitter))


def test_clip_frame_ids(total: int, num_frames: int, stride: int | None, clip: int, clips: int) -> list[int]:
    """Frame ids of test clip ``clip`` of ``clips`` spaced evenly over the video (VideoMAE's multi-clip test):
    with ``stride``, starts spread over [0, total − span] (the centred start for one clip); without, the
    segment points shifted by (clip + ½)/clips of a segment (the midpoints for one clip)."""
    if not 0 <= clip < clips:
        raise AvtoolError(f"test clip {clip} is not one of {clips}")
    if stride is None:
        segment = max(total, 1) / num_frames
        ids = np.floor((np.arange(num_frames) + (clip + 0.5) / clips) * segment).astype(np.int64)
        return np.clip(ids, 0, max(total, 1) - 1).tolist()
    span = (num_frames - 1) * stride + 1
    room = max(total - span, 0)
    first = room // 2 if clips == 1 else room * clip // (clips - 1)
    return [min(first + i * stride, total - 1) for i in range(num_frames)]


def plan_frames(video: ChunkedVideo, frame_ids: Sequence[int]) -> ClipPlan:
    """Group global frame ids by the chunk that holds them."""
    ids = sorted(int(i) for i in frame_ids)
    if not ids:
        raise AvtoolError(f"{video.key}: no frames requested")
    if ids[0] < 0 or ids[-1] >= video.num_frames:
        raise AvtoolError(f"{video.key}: frame {ids[-1] if ids[0] >= 0 else ids[0]} is outside the video "
                          f"(0..{video.num_frames - 1})")  # fmt: skip
    firsts = video.first_frames()
    by_chunk: dict[int, list[int]] = {}
    for g in ids:
        i = bisect.bisect_right(firsts, g) - 1
        by_chunk.setdefault(i, []).append(g - firsts[i])
    reads = tuple(
        ChunkRead(video.paths[i], tuple(local), video.fps[i], video.width, video.height)
        for i, local in sorted(by_chunk.items())
    )
    return ClipPlan(video, tuple(ids), reads)


def plan_clip(
    video: ChunkedVideo,
    start_sec: float,
    end_sec: float,
    num_frames: int,
    rng: np.random.Generator | None = None,
) -> ClipPlan:
    """Frames of the clip [start_sec, end_sec] (segment midpoints, jittered when ``rng`` is given)
    and the chunk files that hold them."""
    first = video.frame_at(start_sec)
    end = max(video.frame_end(end_sec), first + 1)
    return plan_frames(video, segment_frame_ids(first, end, num_frames, rng))


class ChunkIndex:
    """The videos under a chunked root, described from ``manifest.csv`` when ``avtool chunk`` wrote
    one (in the root or a folder above it) and from the chunk files' headers otherwise.

    Entries are built on first use and kept, so each data-loader worker reads a header at most once.
    """

    def __init__(self, root: str | os.PathLike, manifest: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AvtoolError(f"{self.root}: no such folder (the chunked video root)")
        path = Path(manifest) if manifest is not None else _find_manifest(self.root)
        self._manifest = _Manifest(path, self.root) if path is not None else None
        self.manifest_path = path
        self._videos: dict[str, ChunkedVideo] = {}

    def __contains__(self, key: str) -> bool:
        if key_problem(key) is not None:
            return False
        in_manifest = self._manifest is not None and key in self._manifest.spans
        return key in self._videos or in_manifest or (self.root / key).exists()

    def get(self, key: str) -> ChunkedVideo:
        """The video ``key`` (a path relative to the root). Raises AvtoolError naming what is missing."""
        video = self._videos.get(key)
        if video is None:
            if (problem := key_problem(key)) is not None:
                raise AvtoolError(f"video {key!r}: {problem}")
            video = self._manifest.video(key) if self._manifest is not None else None
            if video is None:
                video = _from_files(self.root, key)
            self._videos[key] = video
        return video

    def keys(self) -> list[str]:
        """Every video under the root: the manifest's, else every folder holding chunk files."""
        if self._manifest is not None and self._manifest.spans:
            return sorted(self._manifest.spans)
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if any(Path(f).suffix.lower() in _CHUNK_EXTENSIONS and Path(f).stem.isdigit() for f in files):
                found.append(Path(folder).relative_to(self.root).as_posix())
                dirs.clear()
        return found

    def get_many(self, keys: Iterable[str], threads: int = 8) -> dict[str, ChunkedVideo | AvtoolError]:
        """Entries for many videos at once (headers read in parallel); failures are returned, not raised."""

        def one(key: str) -> ChunkedVideo | AvtoolError:
            try:
                return self.get(key)
            except AvtoolError as e:
                return e

        keys = list(dict.fromkeys(keys))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return dict(zip(keys, pool.map(one, keys), strict=True))


def key_problem(key: str) -> str | None:
    """Why a video key from metadata cannot name a folder under the root, or None: keys are untrusted, and
    an absolute one or one that climbs with ``..`` would read files elsewhere."""
    if not isinstance(key, str) or not key or "\x00" in key:
        return "not a video name"
    path = PurePosixPath(key.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(key).drive:
        return "an absolute path (video names are relative to the chunk root)"
    if ".." in path.parts:
        return "leaves the chunk root (..)"
    return None


def _find_manifest(root: Path) -> Path | None:
    for folder in (root, *root.resolve().parents):
        candidate = folder / "manifest.csv"
        if candidate.is_file() and (folder / ".avtool").is_dir():
            return candidate
    return None


class _Manifest:
    """The manifest's rows of the videos under one root, as columns: a million chunks stay a few
    arrays (shared by forked workers) rather than a million Python dicts."""

    def __init__(self, path: Path, root: Path) -> None:
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise AvtoolError(f"{path}: unreadable manifest ({e})") from None
        needed = {"video", "chunk", "start", "frames", "fps", "width", "height"}
        missing = sorted(needed - set(table.columns))
        if missing:
            raise AvtoolError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
        self.base = path.parent.resolve()
        try:
            inside = root.resolve().relative_to(self.base).as_posix()
            prefix = "" if inside == "." else f"{inside}/"
            keep = table["video"].astype(str).str.startswith(prefix)
        except ValueError:  # the root is outside the manifest's tree: the manifest says nothing about it
            prefix, keep = "", np.zeros(len(table), dtype=bool)
        table = table[keep]
        table = table.assign(key=table["video"].astype(str).str.slice(len(prefix)))
        table = table.sort_values(["key", "start"], kind="stable")
        self.chunks = table["chunk"].astype(str).to_numpy(dtype=str)
        self.starts = table["start"].to_numpy(np.float64)
        self.frames = table["frames"].to_numpy(np.int64)
        self.fps = table["fps"].to_numpy(np.float64)
        self.sizes = table[["width", "height"]].to_numpy(np.int64)
        self.bytes = (table["bytes"].fillna(-1).to_numpy(np.int64) if "bytes" in table.columns
                      else np.full(len(table), -1, np.int64))  # fmt: skip
        keys = table["key"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True]) if len(keys) else np.array([0])
        self.spans = {str(keys[a]): (int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)}

    def video(self, key: str) -> ChunkedVideo | None:
        span = self.spans.get(key)
        if span is None:
            return None
        a, b = span
        paths = []
        # Cheap checks before any decoding: every chunk the manifest lists is inside its tree, there, and of
        # the size it was written at (a truncated copy would otherwise fail mid-epoch).
        for chunk, size in zip(self.chunks[a:b], self.bytes[a:b], strict=True):
            if (problem := key_problem(chunk)) is not None:
                raise AvtoolError(f"manifest chunk {chunk!r}: {problem}")
            path = self.base / chunk
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise AvtoolError(f"{path}: chunk file missing (listed in the manifest)") from None
            if size >= 0 and actual != size:
                raise AvtoolError(f"{path}: {actual} bytes, the manifest records {size} (truncated or replaced)")
            paths.append(path)
        return ChunkedVideo(
            key=key,
            paths=tuple(paths),
            starts=tuple(self.starts[a:b].tolist()),
            frames=tuple(self.frames[a:b].tolist()),
            fps=tuple(self.fps[a:b].tolist()),
            width=int(self.sizes[a, 0]),
            height=int(self.sizes[a, 1]),
        )


@dataclass(frozen=True)
class _Header:
    frames: int
    fps: float
    width: int
    height: int


def _read_header(path: Path) -> _Header:
    """Frame count, rate and size of a chunk from its container header (nothing is decoded)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise AvtoolError(f"{path}: unknown frame rate")
            frames = stream.frames
            if not frames and stream.duration is not None and stream.time_base is not None:
                frames = round(float(stream.duration * stream.time_base * rate))
            return _Header(int(frames), float(rate), stream.width, stream.height)
    except FileNotFoundError:
        raise AvtoolError(f"{path}: chunk file missing") from None
    except (av.error.FFmpegError, IndexError) as e:
        raise AvtoolError(f"{path}: unreadable chunk ({e})") from None


def _from_files(root: Path, key: str) -> ChunkedVideo:
    path = root / key
    if path.is_file():
        header = _read_header(path)
        return ChunkedVideo(key, (path,), (0.0,), (header.frames,), (header.fps,), header.width, header.height)
    if not path.is_dir():
        raise AvtoolError(f"{path}: video not found (no chunk folder or file)")
    chunks = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in _CHUNK_EXTENSIONS and p.stem.isdigit()),
        key=lambda p: int(p.stem),
    )
    if not chunks:
        raise AvtoolError(f"{path}: no chunk files (<start-second>.mp4) in the video's folder")
    starts = [int(p.stem) for p in chunks]
    if starts[0] != 0:
        raise AvtoolError(f"{path}: chunk 0.{chunks[0].suffix[1:]} missing (first chunk starts at {starts[0]} s)")
    if len(starts) > 1:
        # Every chunk but a video's last has one length, so the smallest gap between starts is that length
        # even when the second chunk is the one missing.
        step = math.gcd(*(b - a for a, b in zip(starts, starts[1:], strict=False)))
        gaps = [s for s in range(0, starts[-1], step) if s not in set(starts)]
        if gaps or any(b - a != step for a, b in zip(starts, starts[1:], strict=False)):
            missing = ", ".join(f"{s}{chunks[0].suffix}" for s in gaps[:5]) or "irregular start seconds"
            raise AvtoolError(f"{path}: chunk(s) missing: {missing} (chunks every {step} s expected)")
    first = _read_header(chunks[0])
    last = _read_header(chunks[-1]) if len(chunks) > 1 else first
    # Inner chunks are full: their frame counts follow from the chunk boundaries, no header needed.
    bounds = [math.ceil((s - _BOUNDARY_NUDGE) * first.fps - 1e-9) for s in starts]
    frames = [b - a for a, b in zip(bounds, bounds[1:], strict=False)] + [last.frames]
    if len(chunks) > 1:
        frames[0] = first.frames
    fps = [first.fps] * (len(chunks) - 1) + [last.fps]
    return ChunkedVideo(key, tuple(chunks), tuple(float(s) for s in starts), tuple(frames), tuple(fps),
                        first.width, first.height)  # fmt: skip
