"""What re-encoding costs in fidelity: PSNR and SSIM of chunks against their source at the chunk size.

A few seconds per video are compared with FFmpeg's ``psnr`` and ``ssim`` filters. The source goes
through the encode's own filters (rotation, frame-rate conversion, scaling), so the only difference
left is the encoder's. The comparison window sits in the middle of the video's middle chunk (not on
its first, freshly coded keyframe); the source is decoded from just before it, and its frames keep
their timestamps from the start of the video, so the frame-rate filter picks the same source frame
for every output frame as the encode did and the two streams line up frame for frame.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from avtool.prep.encode import ChunkFile, EncodeError, EncodeSettings, output_rate, output_size
from avtool.video.ffmpeg import ffmpeg_exe
from avtool.video.probe import VideoInfo

PEAK = 255.0
"""Largest 8-bit sample value (the chunks are 8-bit 4:2:0)."""
SEEK_MARGIN_S = 0.5
"""Source decoded before the window, so that the frame-rate filter sees the frames before the window's
first output frame (it picks the last source frame at or before each output time)."""


@dataclass(frozen=True)
class Quality:
    """Fidelity of one video's chunks (or of several videos together) against the source."""

    mse: float
    """Mean squared error per sample over the frames compared (Y, U and V by their sample counts)."""
    ssim: float
    """Mean SSIM (FFmpeg's ``All``: Y, U and V weighted by their sizes) over the frames compared."""
    frames: int
    seconds: float
    videos: int = 1

    @property
    def psnr(self) -> float:
        """PSNR in dB of the mean MSE, as FFmpeg's ``average`` (inf for identical frames)."""
        return 10 * math.log10(PEAK**2 / self.mse) if self.mse > 0 else math.inf

    def to_dict(self) -> dict:
        return {
            "psnr_db": round(self.psnr, 3) if math.isfinite(self.psnr) else None,
            "ssim": round(self.ssim, 5),
            "mse": round(self.mse, 5),
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "videos": self.videos,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Quality:
        return cls(float(data["mse"]), float(data["ssim"]), int(data["frames"]), float(data["seconds"]),
                   int(data.get("videos", 1)))  # fmt: skip

    def summary(self) -> str:
        psnr = f"{self.psnr:.1f} dB" if math.isfinite(self.psnr) else "inf (lossless)"
        return f"PSNR {psnr}, SSIM {self.ssim:.3f} ({self.seconds:.1f} s of {self.videos} video(s))"


def combine(parts: list[Quality]) -> Quality | None:
    """Several videos' measurements as one: MSE and SSIM weighted by frames compared (PSNR from the
    pooled MSE, as FFmpeg pools frames)."""
    frames = sum(q.frames for q in parts)
    if not frames:
        return None
    return Quality(
        mse=sum(q.mse * q.frames for q in parts) / frames,
        ssim=sum(q.ssim * q.frames for q in parts) / frames,
        frames=frames,
        seconds=sum(q.seconds for q in parts),
        videos=sum(q.videos for q in parts),
    )


def measure_quality(
    info: VideoInfo, chunks: list[ChunkFile], settings: EncodeSettings, seconds: float = 2.0, threads: int = 1
) -> Quality:
    """PSNR and SSIM of ``seconds`` of the middle chunk of ``chunks`` (one video's, in order) against
    the source. Raises EncodeError when FFmpeg fails or the frames do not pair up."""
    rate = output_rate(info, settings)
    k = len(chunks) // 2
    chunk = chunks[k]
    count = max(1, min(chunk.frames, round(seconds * float(rate))))
    offset = (chunk.frames - count) // 2
    first = sum(c.frames for c in chunks[:k]) + offset
    """Index of the window's first frame in the whole encode (the fps filter's output ticks)."""
    with tempfile.TemporaryDirectory(prefix="avtool-quality-") as tmp:
        psnr_log, ssim_log = Path(tmp) / "psnr.log", Path(tmp) / "ssim.log"
        args = _compare_args(info, settings, chunk.path, first, offset, count, rate, psnr_log, ssim_log, threads)
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
            raise EncodeError(f"quality measurement failed: {last[0][:200]}")
        mse = _column(psnr_log, "mse_avg")
        ssim = _column(ssim_log, "All")
    if len(mse) != count or len(ssim) != count:
        raise EncodeError(f"quality measurement paired {len(mse)} of {count} frames of {chunk.path.name}")
    return Quality(sum(mse) / count, sum(ssim) / count, count, count / float(rate))


def _compare_args(
    info: VideoInfo, settings: EncodeSettings, chunk: Path, first: int, offset: int, count: int, rate: Fraction,
    psnr_log: Path, ssim_log: Path, threads: int,
) -> list[str]:  # fmt: skip
    width, height = output_size(info, settings)
    origin = _first_frame_pts(info.path)
    seek = max(0.0, first / float(rate) - SEEK_MARGIN_S)
    # -copyts keeps the source's timestamps after the seek; subtracting the first frame's, as the encode's
    # setpts=PTS-STARTPTS did, puts every frame at the time the encode saw it. Trimming by output tick
    # (pts in 1/rate after the fps filter) then selects exactly the chunk's frames.
    source = (
        f"[0:v]setpts=PTS-{origin},fps={rate.numerator}/{rate.denominator},"
        f"trim=start_pts={first}:end_pts={first + count},setpts=PTS-STARTPTS,"
        f"scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p,split[s0][s1]"
    )
    encoded = f"[1:v]trim=start_frame={offset}:end_frame={offset + count},setpts=PTS-STARTPTS,split[c0][c1]"
    compare = f"[c0][s0]psnr=stats_file={psnr_log}[p];[c1][s1]ssim=stats_file={ssim_log}[q]"
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", str(threads),
        "-copyts", "-ss", f"{seek:.6f}", "-i", info.path, "-i", str(chunk),
        "-filter_complex", f"{source};{encoded};{compare}",
        "-map", "[p]", "-f", "null", "-", "-map", "[q]", "-f", "null", "-",
    ]  # fmt: skip


def _first_frame_pts(path: str) -> int:
    """Presentation timestamp (in the stream's time base) of the first decoded frame: the origin the
    encode's setpts=PTS-STARTPTS subtracted."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                return int(frame.pts or 0)
    except (av.error.FFmpegError, IndexError) as e:
        raise EncodeError(f"quality measurement could not read the source: {e}") from None
    raise EncodeError("quality measurement found no frame in the source")


def _column(log: Path, key: str) -> list[float]:
    """One value per frame from a psnr/ssim stats file (``n:1 mse_avg:0.52 …`` / ``n:1 Y:0.98 … All:0.97 (15.2)``)."""
    values = []
    for line in log.read_text().splitlines():
        fields = dict(part.split(":", 1) for part in line.split() if ":" in part)
        if key in fields:
            values.append(float(fields[key]))
    return values
