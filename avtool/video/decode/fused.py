"""Fused DecodeCrop for PyAV frames: crop the YUV frame (a pointer shift, no copy), scale the crop
to size² in YUV, and only then convert those size² pixels to RGB, for the requested frames only.

Where the time goes (x86, the FFmpeg that PyAV 18 ships, 288p chunks, 224² output; per frame):
- A filter graph ``crop,scale,format`` built per clip costs ~0.55 ms to configure plus ~0.3 ms of
  lazy set-up on its first frame, against ~0.1 ms of real work per frame: with 4 frames per clip
  that set-up was most of the fused path. So the crop runs in one small graph per frame geometry,
  reused across clips (the crop filter takes new w/h/x/y as commands), and scaling runs in swscale
  directly.
- An swscale context costs ~0.05-0.1 ms to set up for new sizes, which ``frame.to_ndarray(format=...)``
  pays on every frame (each new frame gets a new context): the size²→RGB context is kept for the
  converter's life, the crop→size² one is set up again only when the crop size changes (once a clip).
- Scaling and converting in one swscale call (yuv420p → rgb24 at another size) takes its C path
  (~0.25 ms); scaling in YUV (~0.07 ms) and then converting size² pixels unscaled (SIMD, ~0.02 ms)
  is faster; the RGB frame and its mirror are numpy views that the caller's stack copies once.
- Cropping the YUV planes in numpy and rebuilding a frame costs a copy of the crop (~0.2 ms).
"""

from __future__ import annotations

import av
import numpy as np
from av.filter import Graph
from av.video.reformatter import Interpolation, VideoReformatter

from avtool.video.crops import Crop


def geometry(frame: av.VideoFrame) -> tuple[int, int, str]:
    """What a FusedConverter is built for: frames of another size or format need another one."""
    return frame.width, frame.height, frame.format.name


class FusedConverter:
    """crop → scale to size² (YUV, bilinear) → rgb24 (→ mirror) for frames of one geometry.

    Built once per decoder and geometry and reused across clips: ``start`` sets the clip's crop
    (crop filter commands, no new graph) before its frames are passed in."""

    def __init__(self, frame: av.VideoFrame, time_base) -> None:
        graph = Graph()
        self._source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                        time_base=time_base)  # fmt: skip
        # exact=1 keeps odd offsets exact on the luma plane (chroma rounds), matching a crop of RGB.
        self._crop = graph.add("crop", f"w={frame.width}:h={frame.height}:x=0:y=0:exact=1")
        self._sink = graph.add("buffersink")
        self._source.link_to(self._crop)
        self._crop.link_to(self._sink)
        graph.configure()
        self._graph = graph  # the filter contexts above live as long as their graph
        self._region: tuple[int, int, int, int] | None = None
        self._scale = VideoReformatter()
        self._to_rgb = VideoReformatter()
        self._size = 0
        self._flip = False

    def start(self, crop: Crop, size: int) -> None:
        """Crop and output size of the frames that follow (one clip's)."""
        region = (crop.w, crop.h, crop.x, crop.y)
        if region != self._region:
            # w/h before x/y: the filter checks x/y against the new size when it re-evaluates.
            for name, value in zip(("w", "h", "x", "y"), region, strict=True):
                self._crop.process_command(name, str(value))
            self._region = region
        self._size, self._flip = size, crop.flip

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        self._source.push(frame)
        cropped = self._sink.pull()
        small = self._scale.reformat(cropped, self._size, self._size, interpolation=Interpolation.BILINEAR, threads=1)
        plane = self._to_rgb.reformat(small, format="rgb24", threads=1).planes[0]
        # A view of the frame's buffer (which it keeps alive), not to_ndarray's copy: the caller's
        # np.stack makes the one copy the clip needs.
        rgb = np.frombuffer(plane, np.uint8).reshape(self._size, plane.line_size)[:, : 3 * self._size]
        rgb = rgb.reshape(self._size, self._size, 3)
        return rgb[:, ::-1] if self._flip else rgb
