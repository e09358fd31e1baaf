"""Read a video's metadata (size, pixel shape, frame rate, duration, rotation, interlacing) without decoding
more than one frame."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from avtool.errors import AvtoolError


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    """Coded width in pixels (before rotation)."""
    height: int
    fps: float
    """Average frame rate in frames/s."""
    fps_fraction: str
    """The exact average frame rate as ``num/den`` (e.g. ``30000/1001``)."""
    duration: float
    """Duration of the video stream in seconds."""
    num_frames: int
    """Frame count from the container header, or estimated as duration·fps when it has none."""
    codec: str
    rotation: int
    """Display rotation in degrees counterclockwise from the stream's display matrix, any angle in 0..359."""
    bytes: int
    has_audio: bool
    sample_aspect: str = "1/1"
    """Shape of a pixel (SAR) as ``num/den``: its width over its height; 1/1 for square pixels."""
    interlaced: bool = False
    """The first frame is flagged interlaced (two fields of different times woven together)."""

    @property
    def applied_rotation(self) -> int:
        """The rotation the chunks get: the nearest multiple of 90 degrees (what FFmpeg turns frames by
        without resampling them)."""
        return (self.rotation + 45) // 90 * 90 % 360

    @property
    def display_size(self) -> tuple[float, float]:
        """(width, height) as shown to a viewer: pixels made square, then the rotation applied."""
        width = float(self.width * Fraction(self.sample_aspect))
        if self.applied_rotation % 180:
            return self.height, width
        return width, self.height

    @property
    def bitrate(self) -> float:
        """Mean bitrate of the whole file in bits/s."""
        return 8 * self.bytes / self.duration if self.duration > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Metadata of the first video stream of ``path``.

    Raises AvtoolError with a one-line reason for missing, empty, unreadable and audio-only files.
    """
    path = Path(path)
    if not path.is_file():
        raise AvtoolError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise AvtoolError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise AvtoolError(f"{path}: not a readable video ({_reason(e)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AvtoolError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise AvtoolError(f"{path}: unknown frame rate")
        rotation, interlaced = _first_frame(container, stream, path)
        duration = _stream_duration(container, stream)  # seeks: after the first frame's decode
        if duration <= 0:
            raise AvtoolError(f"{path}: zero duration")
        frames = stream.frames or round(duration * float(rate))
        return VideoInfo(
            path=str(path),
            width=stream.width,
            height=stream.height,
            fps=float(rate),
            fps_fraction=f"{Fraction(rate).numerator}/{Fraction(rate).denominator}",
            duration=duration,
            num_frames=int(frames),
            codec=stream.codec_context.name,
            rotation=rotation,
            bytes=size,
            has_audio=bool(container.streams.audio),
            sample_aspect=_sample_aspect(stream),
            interlaced=interlaced,
        )


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Seconds of video the encode reads: from the first to the last frame's timestamp, edit lists applied.

    MP4 and MOV give the video track's own duration. Containers without one (Matroska, WebM, …) give the
    file's, which some muxers count from zero and others from the first timestamp: footage whose clock
    starts at an hour would read as an hour long. The last timestamp decides, measured by seeking to the
    end; a header that promises more than either reading is kept, so a truncated file still fails the
    chunks' verification."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is None:
        return 0.0
    header = container.duration / av.time_base
    offset = (container.start_time or 0) / av.time_base
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else offset
    end = _last_timestamp(container, stream, header)
    if end is None:
        return header - offset if header > offset else header
    frame = 1 / float(stream.average_rate or stream.guessed_rate or 30)
    if abs(header - end) <= 2 * frame or abs(header - (end - start)) <= 2 * frame:
        return end - start
    return max(header - offset, end - start)


def _last_timestamp(container, stream, header: float) -> float | None:
    """Seconds at which the last readable frame ends (timestamp plus duration), or None if unknown."""
    try:
        container.seek(int(header / stream.time_base), stream=stream, backward=True)
        end = None
        for packet in container.demux(stream):
            if packet.pts is not None:
                t = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                end = t if end is None else max(end, t)
        return end
    except (av.error.FFmpegError, OverflowError, ZeroDivisionError):
        return None


def _sample_aspect(stream) -> str:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or sar <= 0:  # unset (0/1) or missing: square pixels
        return "1/1"
    sar = Fraction(sar)
    return f"{sar.numerator}/{sar.denominator}"


def _first_frame(container, stream, path: Path) -> tuple[int, bool]:
    """(display rotation in degrees, interlaced) of the first frame."""
    # PyAV exposes the display matrix only on decoded frames, so decode exactly one.
    try:
        for frame in container.decode(stream):
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360, bool(frame.interlaced_frame)
    except av.error.FFmpegError as e:
        raise AvtoolError(f"{path}: cannot decode its first frame ({_reason(e)})") from None
    raise AvtoolError(f"{path}: the video stream has no decodable frame")


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error).split(":")[0] or type(error).__name__
