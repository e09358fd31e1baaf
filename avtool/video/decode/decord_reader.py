"""decord decoding of chunk reads: ``VideoReader.get_batch`` (decord's own keyframe seeking) or a
sequential walk with ``next`` from the chunk start.

decord has no way to decode a frame without converting it (and its ``skip_frames`` seeks to the
nearest keyframe), so the sequential walk converts every frame it passes, as a streaming reader does.

decord cannot crop inside the decoder, only resize the whole frame; so its fused mode asks the
decoder for the frame scaled such that the crop becomes size×size, then cuts the crop out of it:
colour conversion runs on a frame of about the output's scale instead of the source's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from time import perf_counter

import numpy as np

from avtool.video.clips import ChunkRead
from avtool.video.crops import Crop
from avtool.video.decode.base import BadChunkError, DecoderConfig, StageTimes, check_rate
from avtool.video.decode.resize import crop_resize


class DecordDecoder:
    """``decord`` backend (see ``DecoderConfig``)."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config

    @property
    def device(self) -> str:
        return "cpu"

    def decode_views(
        self, read: ChunkRead, crops: Sequence[Crop], size: int, times: StageTimes | None = None
    ) -> np.ndarray:
        """decord scales whole frames inside decoding, so each fused view is a decode of its own (no saving);
        decode-then-crop decodes once and crops every view."""
        if self.config.mode == "fused":
            return np.stack([self.decode(read, crop, size, times) for crop in crops])
        stage = StageTimes()
        full = self._decode(read, None, size, stage)
        t = perf_counter()
        out = np.stack([crop_resize(full, crop, size) for crop in crops])
        stage.resize += perf_counter() - t
        stage.total += perf_counter() - t
        if times is not None:
            times.add(stage)
        return out

    def decode(self, read: ChunkRead, crop: Crop, size: int, times: StageTimes | None = None) -> np.ndarray:
        stage = StageTimes()
        frames = self._decode(read, crop if self.config.mode == "fused" else None, size, stage)
        t = perf_counter()
        if self.config.mode != "fused":
            frames = crop_resize(frames, crop, size)
        stage.resize += perf_counter() - t
        stage.total += perf_counter() - t
        if times is not None:
            times.add(stage)
        return frames

    def _decode(self, read: ChunkRead, crop: Crop | None, size: int, stage: StageTimes) -> np.ndarray:
        """The read's frames in its order: scaled and cut to ``crop`` (fused) or whole (``crop`` None)."""
        import decord  # imported here: importing decord costs ~0.3 s and only this backend needs it

        stage.reads += 1
        begin = perf_counter()
        if crop is not None:
            crop.check(read.width, read.height)
        wanted = sorted(set(read.frame_ids))
        fused = crop is not None
        # Whole-frame size at which the crop measures size×size (never below the crop's reach).
        scaled_w = max(round(read.width * size / crop.w), size) if fused else -1
        scaled_h = max(round(read.height * size / crop.h), size) if fused else -1
        source = io.BytesIO(read.source) if isinstance(read.source, bytes) else str(read.source)
        if isinstance(source, str) and not read.source.exists():
            raise BadChunkError(f"{read.label}: chunk file missing")
        try:
            t = perf_counter()
            reader = decord.VideoReader(source, num_threads=self.config.threads, width=scaled_w, height=scaled_h)
            check_rate(read, reader.get_avg_fps())
            stage.open += perf_counter() - t
            if wanted[-1] >= len(reader):
                raise BadChunkError(
                    f"{read.label}: frame {wanted[-1]} not found in the chunk ({len(reader)} frames; "
                    "metadata says the chunk is longer than it is)"
                )
            t = perf_counter()
            if self.config.access == "seek":
                frames = reader.get_batch(wanted).asnumpy()
            else:
                frames = _sequential(reader, wanted)
            stage.decode += perf_counter() - t
        except decord.DECORDError as e:
            raise BadChunkError(f"{read.label}: undecodable chunk ({str(e).splitlines()[0]})") from None
        if fused:
            t = perf_counter()
            x = min(round(crop.x * size / crop.w), scaled_w - size)
            y = min(round(crop.y * size / crop.h), scaled_h - size)
            frames = frames[:, y : y + size, x : x + size]
            frames = np.ascontiguousarray(frames[:, :, ::-1] if crop.flip else frames)
            stage.resize += perf_counter() - t
        position = {i: k for k, i in enumerate(wanted)}
        out = frames[[position[i] for i in read.frame_ids]]
        stage.total += perf_counter() - begin
        return out


def _sequential(reader, wanted: list[int]) -> np.ndarray:
    """Every frame from the chunk start to the last requested one; the others are dropped."""
    keep = set(wanted)
    frames = []
    for index in range(wanted[-1] + 1):
        frame = reader.next()
        if index in keep:
            frames.append(frame.asnumpy())
    return np.stack(frames)
