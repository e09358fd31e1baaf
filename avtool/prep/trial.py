"""Trial encodes for `avtool chunk --plan`: a few seconds of a video at candidate settings, measured for
ρ (Eq. 3) and for how fast the default loader's decoder reads clips from them (the decode budget).

The decoder is the training loader's default (PyAV, Fused DecodeCrop, seek access, one thread), fed
from memory as `avtool bench decode` feeds one process; its speed is counted per CPU-second, which is
what one core gives when nothing else runs on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avtool.prep.encode import EncodeSettings, count_frames, output_rate, trial_encode
from avtool.video.clips import ChunkRead, segment_frame_ids
from avtool.video.crops import random_resized_crop
from avtool.video.decode import DecoderConfig, make_decoder
from avtool.video.probe import VideoInfo


@dataclass(frozen=True)
class TrialClip:
    """What one clip of the decode trial is."""

    frames: int = 4
    seconds: float = 1.0
    size: int = 224
    decoder: DecoderConfig = DecoderConfig()

    def describe(self) -> str:
        d = self.decoder
        return f"{self.frames} frames over {self.seconds:g} s, {self.size}-px crop, {d.backend} {d.mode} {d.access}"


@dataclass(frozen=True)
class TrialResult:
    seconds: float
    """Seconds of video encoded."""
    bytes: int
    clips: int = 0
    """Clips decoded (0 without a decode trial)."""
    cpu_seconds: float = 0.0

    @property
    def bitrate(self) -> float:
        return 8 * self.bytes / self.seconds

    @property
    def clips_per_core(self) -> float:
        return self.clips / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def run_trial(
    info: VideoInfo, settings: EncodeSettings, scratch: Path, clip: TrialClip | None = None,
    decode_seconds: float = 1.0, seed: int = 0,
) -> TrialResult:  # fmt: skip
    """Trial-encode ``info`` at ``settings``; with ``clip``, also decode such clips from it for about
    ``decode_seconds`` (wall time)."""
    out = scratch / f"trial-{Path(info.path).stem}-{settings.tune}.mp4"
    try:
        seconds = trial_encode(info, settings, out)
        size = out.stat().st_size
        if clip is None:
            return TrialResult(seconds, size)
        clips, cpu = decode_speed(out, float(output_rate(info, settings)), clip, decode_seconds, seed)
        return TrialResult(seconds, size, clips, cpu)
    finally:
        out.unlink(missing_ok=True)


def decode_speed(path: Path, fps: float, clip: TrialClip, budget_s: float, seed: int = 0) -> tuple[int, float]:
    """(clips, CPU seconds) of decoding random clips of ``path`` (held in memory) for ``budget_s``."""
    frames, _, width, height = count_frames(path)
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    length = min(frames, max(1, round(clip.seconds * fps)))
    decoder = make_decoder(clip.decoder)

    def one() -> None:
        first = int(rng.integers(0, frames - length + 1))
        ids = tuple(segment_frame_ids(first, first + length, clip.frames, rng))
        read = ChunkRead(data, ids, fps, width, height, name=path.name)
        decoder.decode(read, random_resized_crop(width, height, rng), clip.size)

    one()  # the first clip sets up the decoder and the scaler: not counted
    clips, cpu, deadline = 0, time.process_time(), time.perf_counter() + budget_s
    while clips == 0 or time.perf_counter() < deadline:
        one()
        clips += 1
    return clips, time.process_time() - cpu
