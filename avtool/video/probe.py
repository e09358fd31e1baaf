"""Read a video's metadata (size, frame rate, duration, rotation) without decoding more than one frame."""

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
    """Display rotation in degrees (0, 90, 180, 270) from the stream's display matrix."""
    bytes: int
    has_audio: bool

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown to a viewer, i.e. after applying the rotation."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height

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
        duration = _stream_duration(container, stream)
        if duration <= 0:
            raise AvtoolError(f"{path}: zero duration")
        rotation = _first_frame_rotation(container, stream, path)
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
        )


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _first_frame_rotation(container, stream, path: Path) -> int:
    # PyAV exposes the display matrix only on decoded frames, so decode exactly one.
    try:
        for frame in container.decode(stream):
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360
    except av.error.FFmpegError as e:
        raise AvtoolError(f"{path}: cannot decode its first frame ({_reason(e)})") from None
    raise AvtoolError(f"{path}: the video stream has no decodable frame")


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error).split(":")[0] or type(error).__name__
