"""PyAV decoding of chunk reads on the CPU or on NVDEC, in seek or sequential access.

Seek access jumps to the keyframe before the first requested frame, then walks the packets in
decode order and feeds the decoder lazily: packets are held back until a requested frame's packet
appears, so groups of pictures without a requested frame are never decoded (and when the next
requested frame is more than a second ahead, the demuxer seeks there instead of reading up to it);
with ``skip_nonref`` the decoder also skips non-reference frames nobody asked for. Only the
requested frames are converted to RGB. Sequential access decodes every frame from the chunk start,
as the reference loader does. Either way a frame that cannot be found raises BadChunkError: no
fallback to another frame.

On NVDEC (``pyav-nvdec``) only the requested frames leave the GPU, and they arrive in the software
decoder's layout (yuv420p, not NVDEC's nv12): H.264 decoding is exact, so a clip decoded on NVDEC is
the CPU decoder's clip bit for bit, which a hybrid data loader (some workers on NVDEC, the others on
the CPU, ``DecoderConfig.nvdec_workers``) needs so that a sample does not depend on which worker
loaded it. NVDEC sessions open on this process's GPU (torchrun's ``LOCAL_RANK``), and ``close``
frees them while CUDA is still up, before a data-loader worker exits.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from time import perf_counter

import av
import numpy as np
from av.codec.hwaccel import HWAccel
from av.video.reformatter import VideoReformatter

from avtool.errors import AvtoolError
from avtool.video.clips import ChunkRead
from avtool.video.crops import Crop
from avtool.video.decode.base import BadChunkError, DecoderConfig, StageTimes, check_rate
from avtool.video.decode.fused import FusedConverter, geometry
from avtool.video.decode.resize import crop_resize


class _Incomplete(Exception):
    """The seek path could not deliver every frame (odd timestamps, open GOPs): decode sequentially."""


class PyAVDecoder:
    """``pyav`` and ``pyav-nvdec`` backends (see ``DecoderConfig``)."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config
        self._hw_failure: str | None = None
        self._hw_keepalive: tuple[HWAccel, HWAccel] | None = None
        self._software_frames = False
        """pyav-nvdec: some frame came out of the software decoder (FFmpeg's silent fallback)."""
        self._fused: dict[tuple[int, int, str, int], FusedConverter] = {}
        """Fused mode: one crop graph and scaler per frame geometry and view, reused across chunks and clips."""
        self._contexts: dict[tuple, av.CodecContext] = {}
        """Decoders by stream parameters, least recently used first (see ``_context_for``)."""
        self._owner = os.getpid()
        """The process the decoders in ``_contexts`` were made in."""
        self._inherited: list[av.CodecContext] = []
        """Decoders a forked process (a data-loader worker) inherited with this object: never used nor
        freed there, since a frame-threaded or NVDEC decoder would wait on threads or a CUDA context
        that the child does not have."""
        self._to_rgb: VideoReformatter | None = None
        """Decode-then-crop mode: one swscale context for full frames (``frame.to_ndarray(format=…)``
        would set up a new one for every frame, ~0.1 ms each)."""
        self._to_host: VideoReformatter | None = None
        """pyav-nvdec: one swscale context for the GPU-to-host copies of requested frames."""

    @property
    def device(self) -> str:
        if self.config.backend != "pyav-nvdec":
            return "cpu"
        if self._hw_failure:
            return f"cpu ({self._hw_failure})"
        return "cuda (NVDEC; some streams decoded on the CPU)" if self._software_frames else "cuda (NVDEC)"

    def decode(self, read: ChunkRead, crop: Crop, size: int, times: StageTimes | None = None) -> np.ndarray:
        return self.decode_views(read, (crop,), size, times)[0]

    def decode_views(
        self, read: ChunkRead, crops: Sequence[Crop], size: int, times: StageTimes | None = None
    ) -> np.ndarray:
        stage = StageTimes(reads=1)
        begin = perf_counter()
        wanted = sorted(set(read.frame_ids))
        frames: dict[int, list[np.ndarray]] = {}
        try:
            try:
                if self.config.access == "seek":
                    frames = self._run(read, wanted, crops, size, stage, seek=True)
            except _Incomplete:
                frames = {}
            if len(frames) < len(wanted):
                frames = self._run(read, wanted, crops, size, stage, seek=False)
        except av.error.FFmpegError as e:
            raise BadChunkError(f"{read.label}: undecodable chunk ({_reason(e)})") from None
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise BadChunkError(
                f"{read.label}: frame(s) {', '.join(map(str, missing[:5]))} not found in the chunk "
                "(metadata says the chunk is longer than it is)"
            )
        if self.config.mode == "decode-then-crop":
            t = perf_counter()
            full = np.stack([frames[i][0] for i in wanted])
            views = [crop_resize(full, crop, size) for crop in crops]
            frames = {i: [view[k] for view in views] for k, i in enumerate(wanted)}
            stage.resize += perf_counter() - t
        out = np.empty((len(crops), len(read.frame_ids), size, size, 3), np.uint8)  # the one copy of the pixels
        for k, i in enumerate(read.frame_ids):
            for v, array in enumerate(frames[i]):
                out[v, k] = array
        stage.total = perf_counter() - begin
        if times is not None:
            times.add(stage)
        return out

    def _run(
        self, read: ChunkRead, wanted: list[int], crops: Sequence[Crop], size: int, stage: StageTimes, seek: bool
    ) -> dict[int, list[np.ndarray]]:
        t = perf_counter()
        container = _open(read)  # demuxing only: the decoder is this object's own, kept across chunks
        try:
            stream = container.streams.video[0]
            context = self._context_for(stream)
            rate = stream.average_rate or stream.guessed_rate
            check_rate(read, float(rate))
            scale = float(stream.time_base * rate)
            start = stream.start_time or 0
            stage.open += perf_counter() - t

            frames: dict[int, list[np.ndarray]] = {}
            convert = self._converter(stream, crops, size, stage)

            def emit(index: int, frame: av.VideoFrame) -> None:
                if frame.is_corrupt:
                    raise BadChunkError(f"{read.label}: frame {index} is corrupt")
                frames[index] = convert(frame)

            def index_of(pts: int) -> int:
                return round((pts - start) * scale)

            if seek:

                def pts_of(index: int) -> int:
                    return start + round(index / scale)

                jump = max(1, round(float(rate)))  # a second: seeking beats demuxing that far
                self._seek_decode(container, stream, context, set(wanted), index_of, pts_of, jump, emit, stage)
            else:
                self._sequential_decode(container, stream, context, set(wanted), index_of, emit, stage)
            return frames
        finally:
            container.close()

    def _converter(
        self, stream, crops: Sequence[Crop], size: int, stage: StageTimes
    ) -> Callable[[av.VideoFrame], list[np.ndarray]]:
        """frame -> one RGB array per crop (fused mode), or the one full RGB frame (decode-then-crop)."""
        fused = self.config.mode == "fused"
        nvdec = self.config.backend == "pyav-nvdec"
        converters: list[FusedConverter] = []
        checked = False

        def convert(frame: av.VideoFrame) -> list[np.ndarray]:
            nonlocal converters, checked
            t = perf_counter()
            if not checked:
                for crop in crops:
                    crop.check(frame.width, frame.height)
                checked = True
            if nvdec:
                frame = self._download(frame)
            if fused:
                if not converters:
                    # One converter per view: each keeps its crop, so the views of a frame need no new commands.
                    for view, crop in enumerate(crops):
                        key = (*geometry(frame), view)
                        if key not in self._fused:
                            self._fused[key] = FusedConverter(frame, stream.time_base)
                        converters.append(self._fused[key])
                        converters[-1].start(crop, size)
                arrays = [converter(frame) for converter in converters]
            else:
                if self._to_rgb is None:
                    self._to_rgb = VideoReformatter()
                arrays = [self._to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()]
            stage.convert += perf_counter() - t
            return arrays

        return convert

    def _download(self, frame: av.VideoFrame) -> av.VideoFrame:
        """An NVDEC frame (still in GPU memory: only requested frames cross to the host) as yuv420p in
        host memory; a frame the software decoder made is noted and passed through."""
        if frame.format.name != "cuda":
            if self._hw_failure is None:  # NVDEC is up, yet FFmpeg fell back for this stream
                self._software_frames = True
            return frame
        if self._to_host is None:
            self._to_host = VideoReformatter()
        return to_software_layout(frame, self._to_host)

    def _seek_decode(
        self, container, stream, context, wanted: set[int], index_of, pts_of, jump: int, emit, stage
    ) -> None:
        """Seek before the first requested frame, then walk packets; jump again (seek) when the next
        requested frame is more than ``jump`` frames ahead, instead of demuxing up to it."""
        skip = self.config.skip_nonref and self.config.threads == 1
        remaining = set(wanted)
        got: set[int] = set()
        held: list[tuple[av.Packet, int]] = []
        skipping = False

        def seek_to(index: int):
            t = perf_counter()
            if index > 0:
                container.seek(pts_of(index), stream=stream, backward=True, any_frame=False)
            stage.demux += perf_counter() - t
            return container.demux(stream)

        def feed(packet: av.Packet | None, index: int) -> None:
            nonlocal skipping
            if skip and (index not in wanted) != skipping:
                skipping = not skipping
                context.skip_frame = "NONREF" if skipping else "DEFAULT"
            t = perf_counter()
            decoded = _decode(context, packet)
            stage.decode += perf_counter() - t
            for frame in decoded:
                stage.frames_decoded += 1
                i = index_of(frame.pts)
                if i in wanted and i not in got:
                    got.add(i)
                    emit(i, frame)

        packets = seek_to(min(remaining))
        seen_keyframe = False
        while remaining:
            t = perf_counter()
            packet = next(packets, None)
            stage.demux += perf_counter() - t
            if packet is None:
                break
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise _Incomplete
            index = index_of(packet.pts)
            if packet.is_keyframe:
                if not seen_keyframe and index > min(remaining):
                    raise _Incomplete  # the seek landed after the first requested frame
                seen_keyframe = True
                held.clear()  # nothing requested since the last keyframe: never decode those packets
            elif not seen_keyframe:
                continue
            held.append((packet, index))
            if index in remaining:
                remaining.discard(index)
                for p, i in held:
                    feed(p, i)
                held.clear()
                if remaining and min(remaining) - index > jump:
                    feed(None, -1)  # drain before seeking: the decoder may still hold requested frames
                    packets = seek_to(min(remaining))
                    seen_keyframe = False
        feed(None, -1)  # drain the frames the decoder still holds for reordering
        if got != wanted:
            raise _Incomplete

    def _sequential_decode(self, container, stream, context, wanted: set[int], index_of, emit, stage) -> None:
        got: set[int] = set()
        count = 0
        packets = container.demux(stream)
        while len(got) < len(wanted):
            t = perf_counter()
            packet = next(packets, None)
            stage.demux += perf_counter() - t
            if packet is not None and packet.size == 0:
                continue
            t = perf_counter()
            decoded = _decode(context, packet)
            stage.decode += perf_counter() - t
            for frame in decoded:
                stage.frames_decoded += 1
                i = index_of(frame.pts) if frame.pts is not None else count
                count += 1
                if i in wanted and i not in got:
                    got.add(i)
                    emit(i, frame)
            if packet is None:
                break

    def _context_for(self, stream) -> av.CodecContext:
        """A decoder for ``stream``'s parameters, reset for a new clip, and kept for the chunks that
        follow. Chunks of one video share their parameter sets, so one decoder serves them all:
        opening a decoder per chunk costs ~1 ms on the CPU, and on NVDEC a new hardware decoder
        session of ~0.25 s that the driver serialises across processes (measured on the H200 host:
        3.5 clips/s per process when every chunk opened its own)."""
        if os.getpid() != self._owner:  # forked since the decoders were made: start afresh
            self._inherited += self._contexts.values()
            self._contexts, self._owner = {}, os.getpid()
        source = stream.codec_context
        key = (source.name, bytes(source.extradata or b""), source.width, source.height)
        context = self._contexts.pop(key, None)
        if context is None:
            hwaccel = self._nvdec() if self.config.backend == "pyav-nvdec" else None
            try:
                context = av.CodecContext.create(source.name, "r", hwaccel=hwaccel)
            except av.error.FFmpegError as e:
                if hwaccel is None:
                    raise
                self._fail(f"NVDEC unavailable: {_reason(e)}")
                context = av.CodecContext.create(source.name, "r")
            context.extradata = source.extradata
            context.thread_count = self.config.threads
            if self.config.threads > 1:
                context.thread_type = "FRAME"
        else:
            context.flush_buffers()
        context.skip_frame = "DEFAULT"
        self._contexts[key] = context  # most recently used last
        while len(self._contexts) > MAX_DECODERS:
            del self._contexts[next(iter(self._contexts))]
        return context

    def _nvdec(self) -> HWAccel | None:
        """Settings to create NVDEC decoders with, or None once NVDEC proved unusable (CPU fallback).

        FFmpeg creates a device context for every decoder; with ``primary_ctx`` they all share
        CUDA's primary context, which one kept-alive context holds open (and which creating it here
        proves usable), so a new decoder does not pay for a new CUDA context."""
        if self._hw_failure is not None:
            return None
        if self._hw_keepalive is None:
            # is_hw_owned: decoded frames stay on the GPU, so frames decoded only as references are
            # never copied to the host (sequential access decodes ~100× more frames than it keeps).
            settings = HWAccel(
                device_type="cuda", device=_local_gpu(), allow_software_fallback=self.config.fallback,
                options={"primary_ctx": "1"}, is_hw_owned=True,
            )  # fmt: skip
            try:
                self._hw_keepalive = (settings, settings.create(av.codec.Codec("h264", "r")))
            except (av.error.FFmpegError, NotImplementedError) as e:
                self._fail(f"NVDEC unavailable: {_reason(e)}")
                return None
        return self._hw_keepalive[0]

    def _fail(self, reason: str) -> None:
        if not self.config.fallback:
            raise AvtoolError(f"pyav-nvdec: {reason}; use the pyav decoder on this machine")
        self._hw_failure = reason
        warnings.warn(f"pyav-nvdec: {reason}; decoding on the CPU instead", RuntimeWarning, stacklevel=6)

    def close(self) -> None:
        """Free this process's decoders (NVDEC sessions) and its hold on the CUDA context, now rather
        than in the interpreter's teardown, where CUDA may already be gone; the decoder makes new ones
        if used again. Decoders inherited through a fork are left alone (see ``_inherited``)."""
        if os.getpid() == self._owner:
            self._contexts.clear()
        self._fused.clear()
        self._to_rgb = self._to_host = None
        self._hw_keepalive = None  # after the decoders: each holds a reference to the device context

    def __getstate__(self) -> dict:
        # The CUDA device context belongs to this process, filter graphs and swscale contexts cannot
        # be pickled: a worker that unpickles the decoder makes its own.
        return {**self.__dict__, "_hw_keepalive": None, "_fused": {}, "_to_rgb": None, "_to_host": None,
                "_contexts": {}, "_inherited": []}  # fmt: skip


def to_software_layout(frame: av.VideoFrame, reformatter: VideoReformatter) -> av.VideoFrame:
    """An NVDEC frame (on the GPU, or already copied to the host as nv12) in host memory as yuv420p,
    the layout FFmpeg's software H.264 decoder gives 8-bit 4:2:0 streams (what ``avtool chunk``
    writes): the same samples, de-interleaved exactly. In nv12 the converters would not give the CPU
    decoder's pixels: the crop filter moves nv12's interleaved chroma by whole bytes, so an odd crop
    offset swaps U and V, and swscale takes other (rounding) paths for it."""
    return reformatter.reformat(frame, format="yuv420p", threads=1)


def _local_gpu() -> str | None:
    """The GPU of this process's rank (torchrun's LOCAL_RANK, which data-loader workers inherit; None:
    the default, GPU 0): without it every rank's NVDEC workers would decode on GPU 0."""
    rank = os.environ.get("LOCAL_RANK", "0")
    return rank if rank.isdigit() and rank != "0" else None


# Decoders kept per PyAV decoder object (one per data-loader worker): enough for the videos of
# differing geometry that interleave in a batch without holding many NVDEC sessions per process.
MAX_DECODERS = 4


def _decode(context: av.CodecContext, packet: av.Packet | None) -> list[av.VideoFrame]:
    """Decode one packet; ``None`` drains the frames held for reordering, after which the decoder is
    reset so that it takes packets again (after a seek, or the next clip's)."""
    frames = context.decode(packet)
    if packet is None:
        context.flush_buffers()
    return frames


# avformat_find_stream_info decodes the first keyframe only to learn what the mp4 header and the
# SPS already say (size, pixel format, reorder depth): 1.4 ms of a 288p clip's ~15 ms, 3.9 ms at 540p,
# for both modes alike. Its probing decoder skips every frame and stops after 0.1 s of packets
# instead; the decoder that really decodes is a separate context and does not see these options.
# The frame rate comes from the mp4 sample table either way (and check_rate compares it with the
# manifest).
PROBE_OPTIONS = {"skip_frame": "all"}
PROBE_CONTAINER_OPTIONS = {"analyzeduration": "100000"}


def _open(read: ChunkRead) -> av.container.InputContainer:
    source = io.BytesIO(read.source) if isinstance(read.source, bytes) else str(read.source)
    try:
        container = av.open(source, options=PROBE_OPTIONS, container_options=PROBE_CONTAINER_OPTIONS)
    except FileNotFoundError:
        raise BadChunkError(f"{read.label}: chunk file missing") from None
    except av.error.InvalidDataError as e:
        raise BadChunkError(f"{read.label}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise BadChunkError(f"{read.label}: no video stream")
    return container


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
