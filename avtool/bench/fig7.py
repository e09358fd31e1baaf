"""`avtool bench ladder --job videomae`: the paper's Fig. 7 on this machine.

VideoMAE pretraining (`avtool train videomae`'s job, its recipe) timed end to end as the ladder times
LaViLa's rows, for each loader-worker count of ``--workers-sweep`` in both decoding modes: decode-then-crop
(the reference pipeline) and Fused DecodeCrop. With the encoder seeing a tenth of the tokens the step is
cheap and loading is the bound, which is what the figure shows: seconds per iteration and the data-loading
overhead against workers per GPU. The clips are Kinetics-style (``--videos`` and ``--metadata``: a folder
of clips and its list, else the sample's Kinetics layout, generated once), chunked with a chunk length
above the clips' so that each clip is re-encoded whole at short side 320 with 1-s keyframes, as Kinetics
users prepare Kinetics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from avtool.bench.inputs import BenchInputs, prepare_chunks
from avtool.train.config import RunConfig
from avtool.train.videomae import VideoMAETrainConfig
from avtool.video.decode import DecoderConfig

KINETICS_CHUNKS = "kinetics"
"""The chunk set of the Kinetics clips (``avtool.bench.inputs.CHUNK_SETS``)."""
MODES = ("decode-then-crop", "fused")
BENCH_KINETICS_CLIPS = 40
"""Sample clips per class for the bench: 200 training clips of 10 s (33 min of footage)."""


def prepare_kinetics(inputs: BenchInputs, report: Callable[[str], None], clips_per_class: int) -> tuple[Path, Path]:
    """(chunked Kinetics root, its training list): the given clips and list, else the sample's Kinetics layout
    (generated once, without long Ego4D videos), chunked into the ``kinetics`` set."""
    if inputs.videos is not None and inputs.metadata is not None:
        videos, train_list = Path(inputs.videos), Path(inputs.metadata)
    else:
        from avtool.prep.sample import SampleConfig, make_sample

        dest = Path(inputs.data_dir) / f"sample-kinetics-{clips_per_class}"
        report(f"sample Kinetics clips ({clips_per_class} per class) in {dest}")
        make_sample(SampleConfig(dest=dest, ego4d_durations=(4.0,), ek100_videos=(("P01_01", 30, 3.0),),
                                 kinetics_clips=clips_per_class))  # fmt: skip
        videos, train_list = dest / "kinetics", dest / "kinetics" / "train.csv"
    return prepare_chunks(inputs, videos, KINETICS_CHUNKS, report), train_list


def fig7_rows(
    root: Path, train_list: Path, sweep: tuple[int, ...], batch_sizes: tuple[int, ...], run: RunConfig, size: str
) -> list[tuple[int, str, str, VideoMAETrainConfig]]:
    """(batch size, row name, change, job configuration) of each row: every worker count in both modes."""
    rows = []
    for batch_size in batch_sizes:
        for workers in sweep:
            for mode in MODES:
                cfg = VideoMAETrainConfig(
                    root=root, train_list=train_list, size=size,  # type: ignore[arg-type]
                    run=replace(run, batch_size=batch_size, workers=workers), decoder=DecoderConfig(mode=mode),
                )  # fmt: skip
                rows.append((batch_size, f"{mode}-w{workers}", f"{mode}, {workers} workers", cfg))
    return rows


def workers_of(row: str) -> int:
    """The worker count in a Fig. 7 row's name (``fused-w8`` → 8)."""
    return int(row.rsplit("-w", 1)[1])
