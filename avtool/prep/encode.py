"""Re-encode one long video into fixed-length libx264 chunks in a single FFmpeg pass, and verify them.

The segment muxer cuts the encoder's output at chunk boundaries; keyframes are forced (as IDR
frames) at every chunk start, so each chunk decodes on its own, and every ``gop`` seconds inside a
chunk, so sparse frame sampling can seek instead of decoding the chunk from its start. With ``gop``
``default`` only the chunk starts are forced and libx264 places the rest itself (keyint 250 and
scene cuts: the LaViLa and AVION chunks).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av

from avtool.errors import AvtoolError
from avtool.options import option
from avtool.video.ffmpeg import die_with_parent, ffmpeg_exe
from avtool.video.probe import VideoInfo

X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
X264Tune = Literal["none", "fastdecode"]
X264_TUNES: tuple[X264Tune, ...] = ("none", "fastdecode")
"""The tunes that matter for training chunks: the others (film, grain, animation, …) trade bytes for how
footage looks to people, zerolatency for live streaming."""
Gop = float | Literal["default"]


@dataclass(frozen=True)
class EncodeSettings:
    """How each chunk is encoded (one libx264 pass per video)."""

    chunk_len: int | Literal["auto"] = option(
        15, flags="--chunk-len", unit="s", metavar="INT|auto", panel="Chunks",
        help="Chunk length in whole seconds, or auto to solve B·ρ·T ≤ S_r·Δ for T (§4.3, Eq. 3).",
    )  # fmt: skip
    crf: int = option(23, panel="Encoding", help="libx264 constant rate factor, 0-51 (lower: better, larger).")
    preset: X264Preset = option(
        "medium", panel="Encoding", metavar="ultrafast...veryslow", help="libx264 preset: encoding speed against bytes."
    )
    fps: float | None = option(
        None, panel="Encoding", unit="frames/s", show_default="the source's rate", help="Output frame rate (constant)."
    )
    short_side: int = option(
        288,
        panel="Encoding",
        unit="pixels",
        help="Short side of the chunks (aspect kept, even sizes); 0 keeps the size.",
    )
    upscale: bool = option(False, panel="Encoding", help="Also scale videos smaller than --short-side up.")
    tune: X264Tune = option(
        "none", panel="Encoding", metavar="none|fastdecode",
        help="libx264 tune. fastdecode drops CABAC, deblocking and weighted prediction: faster decoding for more "
        "bytes (--plan measures both, --quality the cost).",
    )  # fmt: skip
    gop: Gop = option(
        1.0,
        panel="Encoding",
        unit="s",
        metavar="FLOAT|default",
        help="Keyframe interval inside a chunk in seconds (sparse frame sampling seeks to them); default: only "
        "chunk starts are forced, libx264 places the rest (keyint 250, scene cuts; LaViLa's and AVION's chunks).",
    )
    bframes: int | None = option(
        None, panel="Encoding", metavar="INT", show_default="libx264's (up to 3, some of them references)",
        help="B-frames between reference frames, none of them a reference (fixed pattern, no B-pyramid): a "
        "decoder going to a sampled frame skips the B-frames before it. 0: no B-frames.",
    )  # fmt: skip
    audio: bool = option(False, panel="Encoding", help="Keep the first audio track (AAC); dropped by default.")

    def __post_init__(self) -> None:
        if self.chunk_len != "auto" and (isinstance(self.chunk_len, bool) or not isinstance(self.chunk_len, int)
                                         or self.chunk_len < 1):  # fmt: skip
            raise AvtoolError(
                f"--chunk-len must be a whole number of seconds (at least 1) or auto, got {self.chunk_len!r}"
            )
        longest = 15 if self.chunk_len == "auto" else self.chunk_len
        if self.gop != "default" and (isinstance(self.gop, (bool, str)) or not 0 < self.gop <= longest):
            raise AvtoolError(f"--gop must be default or in (0, chunk length] seconds, got {self.gop!r}")
        if self.tune not in X264_TUNES:
            raise AvtoolError(f"--tune must be one of {', '.join(X264_TUNES)}, got {self.tune!r}")
        if self.bframes is not None and (isinstance(self.bframes, bool) or not 0 <= self.bframes <= 16):
            raise AvtoolError(f"--bframes must be in 0..16 (libx264's limit), got {self.bframes!r}")
        if not 0 <= self.crf <= 51:
            raise AvtoolError(f"--crf must be in 0..51, got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise AvtoolError(f"--preset must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}")


def output_size(info: VideoInfo, settings: EncodeSettings) -> tuple[int, int]:
    """(width, height) of the chunks: display orientation, short side scaled, both even."""
    width, height = info.display_size
    short = min(width, height)
    if settings.short_side and (short > settings.short_side or settings.upscale):
        scale = settings.short_side / short
        width, height = width * scale, height * scale
    return max(2, int(round(width / 2)) * 2), max(2, int(round(height / 2)) * 2)


def source_notes(info: VideoInfo) -> list[str]:
    """What the encode changes in a video beyond its size and rate, one line each (the plan prints them)."""
    notes = []
    if info.sample_aspect != "1/1":
        notes.append(f"non-square pixels (SAR {info.sample_aspect.replace('/', ':')}): scaled to square pixels")
    if info.interlaced:
        notes.append("interlaced: deinterlaced (bwdif, one frame per frame)")
    if info.rotation % 90:
        notes.append(f"rotated {info.rotation}°: turned by {info.applied_rotation}°, the nearest multiple of 90° "
                     "(only those are applied)")  # fmt: skip
    return notes


def output_rate(info: VideoInfo, settings: EncodeSettings) -> Fraction:
    if settings.fps:
        return Fraction(settings.fps).limit_denominator(1001)
    return Fraction(info.fps_fraction)


def encoder_args(info: VideoInfo, settings: EncodeSettings, threads: int) -> list[str]:
    """FFmpeg arguments from the input to the encoder, shared by chunking and the trial encode."""
    width, height = output_size(info, settings)
    rate = output_rate(info, settings)
    now, last = _keyframe_key(settings, "t+0.0001"), _keyframe_key(settings, "prev_forced_t+0.0001")
    tune = ["-tune", settings.tune] if settings.tune != "none" else []
    if settings.bframes is not None:
        # b-adapt 0 keeps the pattern fixed: adaptive placement drops B-frames in motion, where decoding costs most.
        tune += ["-x264-params", f"bframes={settings.bframes}:b-pyramid=none:b-adapt=0"]
    audio = ["-map", "0:a:0?", "-c:a", "aac", "-b:a", "128k"] if settings.audio else ["-an"]
    # autorotate (FFmpeg's default) turns the frames upright before our filters see them; an angle between
    # multiples of 90° would be turned inside the frame (black corners), so the nearest multiple replaces it.
    rotation = ["-display_rotation", str(info.applied_rotation)] if info.rotation % 90 else []
    # bwdif makes one frame of each interlaced frame (its rate kept); frames flagged progressive pass as they are.
    deinterlace = "bwdif=mode=send_frame:deint=interlaced," if info.interlaced else ""
    return [
        "-threads", str(threads), *rotation, "-i", info.path,
        "-map", "0:v:0", *audio, "-sn", "-dn", "-map_metadata", "-1",
        # The fps filter makes the rate constant by dropping/duplicating to the nearest frame, so the
        # chunk holds round(duration·rate) frames (``-r`` alone pads the end by up to two frames). The
        # scale to the display size makes non-square pixels square.
        "-vf", f"{deinterlace}setpts=PTS-STARTPTS,fps={rate.numerator}/{rate.denominator},"
        f"scale={width}:{height}:flags=bicubic,setsar=1",
        "-fps_mode", "cfr",
        "-c:v", "libx264", "-preset", settings.preset, *tune, "-crf", str(settings.crf), "-pix_fmt", "yuv420p",
        "-force_key_frames", f"expr:if(isnan(prev_forced_t),1,gt({now},{last}))", "-forced-idr", "1",
        "-threads", str(threads),
    ]  # fmt: skip


def _keyframe_key(settings: EncodeSettings, t: str) -> str:
    """An FFmpeg expression that changes at every chunk start and every gop inside a chunk: a frame whose
    key differs from the last forced keyframe's is forced. The caller's 1e-4 s nudge absorbs float error
    in t. With gop default the key is the chunk index alone, so only chunk starts are forced."""
    L, G = settings.chunk_len, settings.gop
    chunk = f"floor(({t})/{L})"
    if G == "default":
        return chunk
    return f"({chunk}*1000000+floor((({t})-{chunk}*{L})/{G}))"


@dataclass(frozen=True)
class ChunkFile:
    path: Path
    start: int
    """Start second in the source video; also the file's name."""
    frames: int
    fps: float
    width: int
    height: int
    bytes: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def bitrate(self) -> float:
        return 8 * self.bytes / self.duration if self.frames else 0.0


class EncodeError(Exception):
    """FFmpeg failed or its output did not verify; the message is the one-line reason."""


def encode_chunks(
    info: VideoInfo,
    out_dir: Path,
    ext: str,
    settings: EncodeSettings,
    threads: int,
    on_progress: Callable[[float], None] | None = None,
    register: Callable[[subprocess.Popen], None] | None = None,
) -> list[ChunkFile]:
    """Cut ``info.path`` into ``out_dir/<start>.<ext>`` chunks and verify them.

    ``on_progress`` receives seconds of source encoded since its last call; ``register`` receives
    the FFmpeg process so that an interrupted run can stop it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = output_rate(info, settings)
    args = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        *encoder_args(info, settings, threads),
        "-f", "segment", "-segment_time", str(settings.chunk_len),
        "-segment_time_delta", f"{0.5 / float(rate):.6f}", "-reset_timestamps", "1",
        "-segment_format", "mp4", "-segment_format_options", "movflags=+faststart",
        "-progress", "pipe:1", "-nostats",
        str(out_dir / f"%06d.{ext}"),
    ]  # fmt: skip
    # A session of its own: Ctrl-C reaches avtool, which stops FFmpeg and removes the partial output; and
    # the parent-death signal ends FFmpeg when avtool is killed outright.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=die_with_parent())  # fmt: skip
    if register is not None:
        register(proc)
    stderr_lines: list[str] = []
    drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    drain.start()
    done = 0.0
    for line in proc.stdout:
        if line.startswith("out_time_us=") and on_progress is not None:
            try:
                seconds = int(line.split("=", 1)[1]) / 1e6
            except ValueError:
                continue
            if seconds > done:
                on_progress(min(seconds, info.duration) - done)
                done = min(seconds, info.duration)
    code = proc.wait()
    drain.join()
    if code != 0:
        raise EncodeError(_ffmpeg_reason(stderr_lines, code))
    if on_progress is not None and info.duration > done:
        on_progress(info.duration - done)
    name_segments(out_dir, ext, settings.chunk_len)
    return verify_chunks(info, out_dir, ext, settings)


def _ffmpeg_reason(stderr_lines: list[str], code: int) -> str:
    text = " ".join(line.strip() for line in stderr_lines if line.strip())
    if "No space left on device" in text:
        return "disk full (No space left on device)"
    if code < 0:
        return f"ffmpeg was stopped by signal {-code}"
    last = stderr_lines[-1].strip() if stderr_lines else f"exit code {code}"
    return f"ffmpeg failed: {last[:200]}"


def name_segments(out_dir: Path, ext: str, chunk_len: int) -> None:
    """Rename FFmpeg's numbered segments (000000, 000001, …) to their start seconds (0, 15, …)."""
    numbered = sorted(p for p in out_dir.iterdir() if p.suffix == f".{ext}" and len(p.stem) == 6)
    for index, path in enumerate(numbered):
        if int(path.stem) != index:
            raise EncodeError(f"segment numbering has a gap at {path.name}")
        path.rename(out_dir / f"{index * chunk_len}.{ext}")


def verify_chunks(info: VideoInfo, out_dir: Path, ext: str, settings: EncodeSettings) -> list[ChunkFile]:
    """Check the chunks of one video: starts at every chunk_len seconds, each begins with a keyframe,
    each but the last holds chunk_len seconds to a frame, and together they cover the source's
    duration to a frame per chunk."""
    files = sorted(
        (p for p in out_dir.iterdir() if p.suffix == f".{ext}" and p.stem.isdigit()),
        key=lambda p: int(p.stem),
    )
    if not files:
        raise EncodeError("no chunk was written (the input has no decodable video?)")
    rate = float(output_rate(info, settings))
    per_chunk = settings.chunk_len * rate
    chunks = []
    for index, path in enumerate(files):
        start = index * settings.chunk_len
        if int(path.stem) != start:
            raise EncodeError(f"expected chunk {start}.{ext}, found {path.name}")
        frames, first_is_key, width, height = count_frames(path)
        if not first_is_key:
            raise EncodeError(f"chunk {path.name} does not start with a keyframe")
        is_last = index == len(files) - 1
        if frames == 0 or (not is_last and abs(frames - per_chunk) > 1) or frames > per_chunk + 1:
            raise EncodeError(f"chunk {path.name} holds {frames} frames, expected {per_chunk:g}")
        chunks.append(ChunkFile(path, start, frames, rate, width, height, path.stat().st_size))
    covered = sum(c.frames for c in chunks) / rate
    if abs(covered - info.duration) > (len(chunks) + 1) / rate:
        raise EncodeError(
            f"chunks cover {covered:.2f} s of the source's {info.duration:.2f} s (truncated or corrupt input)"
        )
    return chunks


def count_frames(path: Path) -> tuple[int, bool, int, int]:
    """(video packets, first packet is a keyframe, width, height) without decoding."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames, first_is_key = 0, False
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if frames == 0:
                    first_is_key = packet.is_keyframe
                frames += 1
            return frames, first_is_key, stream.width, stream.height
    except (av.error.FFmpegError, IndexError) as e:
        raise EncodeError(f"chunk {path.name} is unreadable: {e}") from None


def trial_encode(info: VideoInfo, settings: EncodeSettings, out: Path, seconds: float = 8.0) -> float:
    """Encode ``seconds`` from the middle of the video at ``settings`` into ``out`` (an MP4 whose keyframes
    fall as a chunk's would); the seconds encoded. For ρ in Eq. 3 and the decode budget's clips/s."""
    length = min(seconds, info.duration)
    start = max(0.0, info.duration / 2 - length / 2)
    args = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-ss", f"{start:.3f}",
        *encoder_args(info, settings, threads=0), "-t", f"{length:.3f}", "-f", "mp4", str(out),
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.exists():
        raise EncodeError(_ffmpeg_reason(result.stderr.splitlines(), result.returncode))
    return length


def trial_bitrate(info: VideoInfo, settings: EncodeSettings, scratch: Path, seconds: float = 8.0) -> float:
    """Bits/s of ``seconds`` from the middle of the video encoded at ``settings`` (for ρ in Eq. 3)."""
    out = scratch / f"trial-{Path(info.path).stem}.mp4"
    try:
        length = trial_encode(info, settings, out, seconds)
        return 8 * out.stat().st_size / length
    finally:
        out.unlink(missing_ok=True)
