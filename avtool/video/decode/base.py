"""What every decoder backend promises: chunk reads in, uint8 T×S×S×3 crops out, with stage timings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

import numpy as np

from avtool.errors import AvtoolError
from avtool.options import option
from avtool.video.clips import ChunkRead
from avtool.video.crops import Crop

Mode = Literal["fused", "decode-then-crop"]
Access = Literal["seek", "sequential"]
Backend = Literal["pyav", "pyav-nvdec", "decord"]
MODES: tuple[Mode, ...] = ("decode-then-crop", "fused")
ACCESSES: tuple[Access, ...] = ("sequential", "seek")
BACKENDS: tuple[Backend, ...] = ("pyav", "pyav-nvdec", "decord")


class BadChunkError(AvtoolError):
    """A chunk file cannot give the frames a clip needs (missing, unreadable, truncated, corrupt): a fault of
    the data, not of the configuration, so a training run may replace the clip (``--on-bad-clip``)."""


@dataclass(frozen=True)
class DecoderConfig:
    """Backend, mode and access of the clip decoder; with ``nvdec_workers`` a data loader gives K of its
    workers NVDEC and the others the CPU (``for_worker``, applied in ``avtool.data.loader``)."""

    backend: Backend = option(
        "pyav",
        flags="--decoder",
        panel="Data",
        help="Video decoder: pyav (CPU), pyav-nvdec (the GPU's NVDEC) or decord.",
    )
    mode: Mode = option(
        "fused", flags="--decode-mode", panel="Data",
        help="fused: crop and scale inside decoding, requested frames only (Fused DecodeCrop, §4.2); "
        "decode-then-crop: full RGB frames, then a torch crop and resize (the usual pipeline).",
        switches=(("--fused-decode-crop", "fused", "AVION's flag for --decode-mode fused."),),
    )  # fmt: skip
    access: Access = option(
        "seek", panel="Data",
        help="seek: jump to the keyframe before each requested frame and decode only what it needs; "
        "sequential: decode every frame from the chunk start (as the reference loader does).",
    )  # fmt: skip
    threads: int = 1
    """Decoder threads per process (data-loader workers and the benchmark's pool want 1)."""
    skip_nonref: bool = True
    """In seek mode, do not decode non-reference frames that were not requested (PyAV backends,
    single-threaded decoding); the pixels of the requested frames are unchanged."""
    fallback: bool = True
    """``pyav-nvdec`` decodes on the CPU, with a one-line warning, where no NVDEC device opens;
    False raises instead."""
    nvdec_workers: int = option(
        0, panel="Data", unit="workers", metavar="K",
        help="Hybrid decoding: K of the data-loader workers decode on the GPU's NVDEC, the others with pyav on "
        "the CPU, the same frames and pixels either way (with --decoder pyav). Each NVDEC worker holds a CUDA "
        "context on the training GPU: keep K small (1-2) and measure the step time.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"decoder must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mode not in MODES:
            problems.append(f"decode mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.access not in ACCESSES:
            problems.append(f"access must be one of {', '.join(ACCESSES)}, got {self.access!r}")
        if self.threads < 1:
            problems.append(f"decoder threads must be at least 1, got {self.threads}")
        if self.nvdec_workers < 0:
            problems.append(f"--nvdec-workers must be 0 or more, got {self.nvdec_workers}")
        elif self.nvdec_workers and self.backend != "pyav":
            # The CPU workers of a hybrid loader must decode exactly as the NVDEC ones do: PyAV's FFmpeg.
            problems.append(
                f"--nvdec-workers {self.nvdec_workers} needs --decoder pyav (the workers that do not use NVDEC "
                f"decode with it), got --decoder {self.backend}"
                + ("; --decoder pyav-nvdec alone puts every worker on NVDEC" if self.backend == "pyav-nvdec" else "")
            )
        if problems:
            raise AvtoolError("; ".join(problems))

    def for_worker(self, worker: int | None) -> DecoderConfig:
        """The decoder of data-loader worker ``worker`` (None: the main process): with ``nvdec_workers``
        K, workers 0…K-1 decode on NVDEC and the rest, and the main process, with pyav on the CPU."""
        if not self.nvdec_workers:
            return self
        nvdec = worker is not None and worker < self.nvdec_workers
        return replace(self, backend="pyav-nvdec" if nvdec else "pyav", nvdec_workers=0)


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the reads it was passed to."""

    open: float = 0.0
    """Opening the container and reading its header."""
    demux: float = 0.0
    """Reading packets (and seeking)."""
    decode: float = 0.0
    """Decompressing packets into YUV frames."""
    convert: float = 0.0
    """Colour conversion of the requested frames (with crop and scale in fused mode)."""
    resize: float = 0.0
    """Crop and resize after conversion (decode-then-crop mode)."""
    total: float = 0.0
    frames_decoded: int = 0
    reads: int = 0

    @property
    def other(self) -> float:
        """Python bookkeeping and everything not in a named stage."""
        return max(0.0, self.total - self.open - self.demux - self.decode - self.convert - self.resize)

    def add(self, other: StageTimes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Decoder(Protocol):
    """A backend in one mode and access pattern. Instances hold no open files and can be pickled
    into data-loader workers."""

    config: DecoderConfig

    @property
    def device(self) -> str:
        """Where decoding really runs, e.g. ``cpu`` or ``cpu (NVDEC unavailable: …)``."""
        ...

    def decode(self, read: ChunkRead, crop: Crop, size: int, times: StageTimes | None = None) -> np.ndarray:
        """uint8 array (len(read.frame_ids), size, size, 3): frame ``read.frame_ids[i]`` cropped to
        ``crop`` and resized to size×size. Raises AvtoolError naming the chunk on any failure."""
        ...

    def decode_views(
        self, read: ChunkRead, crops: Sequence[Crop], size: int, times: StageTimes | None = None
    ) -> np.ndarray:
        """uint8 array (len(crops), len(read.frame_ids), size, size, 3): the read's frames decoded once and
        cropped once per crop (VideoMAE V2's repeated sampling, the spatial crops of multi-view testing)."""
        ...


def check_rate(read: ChunkRead, rate: float) -> None:
    """Frame ids were computed with ``read.fps``: a chunk of another rate means stale metadata."""
    if read.fps > 0 and abs(rate - read.fps) > 1e-3 * read.fps:
        raise AvtoolError(
            f"{read.label}: the chunk runs at {rate:g} fps but its metadata says {read.fps:g} fps "
            "(manifest.csv out of date? rerun avtool chunk or delete the manifest)"
        )
