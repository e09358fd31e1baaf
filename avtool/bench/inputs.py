"""The inputs of the end-to-end benchmarks: raw videos and narrations (by default a sample generated once),
and the chunk sets their rows read, made with `avtool chunk` and kept for the next run.

Chunk sets (``CHUNK_SETS``) are the ones the paper's ladder compares: LaViLa's 5-minute chunks and AVION's
15-s chunks, both with libx264's own keyframe placement as the reference recipes use, then avtool's 15-s
chunks with a keyframe every second (which seeking needs), the same re-encoded for fast decoding, and that with
eight non-reference B-frames between reference frames (a seeking decoder skips them). ``kinetics`` re-encodes
short clips whole (a chunk length above theirs) at short side 320, as Kinetics users prepare Kinetics;
``kinetics-fastdecode-b8`` encodes them for the decoder as the fastest 15-s set is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from avtool.errors import AvtoolError
from avtool.options import option
from avtool.prep.encode import EncodeSettings

CHUNK_SETS: dict[str, dict[str, Any]] = {
    "300s": {"chunk_len": 300, "gop": "default"},
    "15s": {"chunk_len": 15, "gop": "default"},
    "15s-1s-keys": {"chunk_len": 15, "gop": 1.0},
    "15s-1s-keys-fastdecode": {"chunk_len": 15, "gop": 1.0, "tune": "fastdecode"},
    "15s-1s-keys-fastdecode-b8": {"chunk_len": 15, "gop": 1.0, "tune": "fastdecode", "bframes": 8},
    "kinetics": {"chunk_len": 15, "gop": 1.0, "short_side": 320},
    "kinetics-fastdecode-b8": {"chunk_len": 15, "gop": 1.0, "short_side": 320, "tune": "fastdecode", "bframes": 8},
}
"""Name → the encode settings that differ from the bench's (``--crf``, ``--preset``, ``--short-side``)."""


@dataclass(frozen=True)
class BenchInputs:
    """Where an end-to-end benchmark reads from."""

    videos: Path | None = option(
        None, panel="Data", metavar="DIR", show_default="a generated sample",
        help="Raw videos to chunk (Ego4D's v1/full_scale layout); none: `avtool sample --preset bench` footage "
        "generated into --data-dir once.",
    )  # fmt: skip
    metadata: Path | None = option(
        None, panel="Data", metavar="FILE", show_default="the sample's",
        help="LaViLa narration pickle over --videos: (video_uid, start_sec, end_sec, narration) rows.",
    )  # fmt: skip
    data_dir: Path = option(
        Path("bench_data"), panel="Data", metavar="DIR",
        help="Folder for the generated sample and the chunk sets; kept, so a rerun reuses them.",
    )  # fmt: skip
    encode: EncodeSettings = dataclasses.field(default_factory=EncodeSettings)
    """How the chunk sets are encoded besides what each set changes (chunk length, keyframes, tune)."""
    sample_preset: Literal["demo", "bench"] = "bench"
    """The `avtool sample` preset generated when --videos is not given."""
    kinetics_clips: int = 40
    """--job videomae without --videos: sample clips per class (200 training clips of 10 s, 33 min of footage)."""

    def problems(self) -> list[str]:
        out = []
        if (self.videos is None) != (self.metadata is None):
            out.append("give both --videos and --metadata, or neither (then a sample is generated)")
        for path in (self.videos, self.metadata):
            if path is not None and not Path(path).exists():
                out.append(f"{path} does not exist")
        return out


def prepare_sources(inputs: BenchInputs, report: Callable[[str], None]) -> tuple[Path, Path]:
    """(raw video folder, narration pickle): the given ones, else the sample, generated if not there yet."""
    if inputs.videos is not None and inputs.metadata is not None:
        return Path(inputs.videos), Path(inputs.metadata)
    from avtool.prep.sample import SampleConfig, make_sample

    dest = Path(inputs.data_dir) / f"sample-{inputs.sample_preset}"
    sample = SampleConfig(dest=dest, preset=inputs.sample_preset, kinetics_clips=0)  # the lavila job reads Ego4D
    report(f"sample footage ({inputs.sample_preset}) in {dest}")
    make_sample(sample)
    return dest / "ego4d" / "v1" / "full_scale", dest / "ego4d" / "ego4d_train.pkl"


def chunk_set_dir(inputs: BenchInputs, name: str) -> Path:
    short_side = CHUNK_SETS.get(name, {}).get("short_side", inputs.encode.short_side)
    return Path(inputs.data_dir) / "chunks" / f"{name}-{short_side}p"


def prepare_chunks(inputs: BenchInputs, videos: Path, name: str, report: Callable[[str], None]) -> Path:
    """The chunk folder of set ``name`` over ``videos``, chunked now if it is missing or incomplete (resumed)."""
    from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking

    if name not in CHUNK_SETS:
        raise AvtoolError(f"unknown chunk set {name!r}: one of {', '.join(CHUNK_SETS)}")
    dst = chunk_set_dir(inputs, name)
    encode = dataclasses.replace(inputs.encode, **CHUNK_SETS[name])
    plan = plan_chunking(ChunkConfig(src=videos, dst=dst, encode=encode))
    if plan.failures:
        failed = "; ".join(f"{f.video}: {f.reason}" for f in plan.failures[:3])
        raise AvtoolError(f"{len(plan.failures)} video(s) of {videos} cannot be read: {failed}")
    if plan.jobs:
        report(f"chunking {len(plan.jobs)} video(s) into {dst} ({name})")
        result = run_chunking(plan)
        if result.failures or result.interrupted or result.aborted:
            failed = "; ".join(f"{f.video}: {f.reason}" for f in result.failures[:3])
            raise AvtoolError(f"chunking {videos} into {dst} did not finish: {result.aborted or failed or 'stopped'}")
    return dst
