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
from avtool.train.model_config import ModelConfig
from avtool.train.videomae import VideoMAETrainConfig
from avtool.video.decode import MODES, DecoderConfig

KINETICS_CHUNKS = "kinetics"
"""The chunk set of the Kinetics clips (``avtool.bench.inputs.CHUNK_SETS``)."""
FAST_KINETICS_CHUNKS = "kinetics-fastdecode-b8"
"""The same clips encoded for the decoder (``--tune fastdecode --bframes 8``)."""


def prepare_kinetics(
    inputs: BenchInputs, report: Callable[[str], None], chunk_set: str = KINETICS_CHUNKS
) -> tuple[Path, Path]:
    """(chunked Kinetics root, its training list): the given clips and list, else the sample's Kinetics layout
    (``inputs.kinetics_clips`` per class, generated once, without long Ego4D videos), chunked into the
    ``chunk_set``."""
    clips_per_class = inputs.kinetics_clips
    if inputs.videos is not None and inputs.metadata is not None:
        videos, train_list = Path(inputs.videos), Path(inputs.metadata)
    else:
        from avtool.prep.sample import SampleConfig, make_sample

        dest = Path(inputs.data_dir) / f"sample-kinetics-{clips_per_class}"
        report(f"sample Kinetics clips ({clips_per_class} per class) in {dest}")
        make_sample(SampleConfig(dest=dest, ego4d_durations=(4.0,), ek100_videos=(("P01_01", 30, 3.0),),
                                 kinetics_clips=clips_per_class))  # fmt: skip
        videos, train_list = dest / "kinetics", dest / "kinetics" / "train.csv"
    return prepare_chunks(inputs, videos, chunk_set, report), train_list


def fig7_size(model: ModelConfig) -> str:
    """The VideoMAE size of the benches' --job videomae: ViT-B as Fig. 7, tiny with --tiny (seconds on a CPU)."""
    return "tiny" if model.name == "tiny" else "base"


def fig7_rows(
    root: Path,
    train_list: Path,
    sweep: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    run: RunConfig,
    size: str,
    repeated_sampling: int = 1,
) -> list[tuple[int, str, str, VideoMAETrainConfig]]:
    """(batch size, row name, change, job configuration) of each row: every worker count in both modes, and
    with ``repeated_sampling`` N > 1 a third, fused with N views per decoded clip (row ``fused-rsN-wK``)."""
    variants = [(mode, mode, 1) for mode in MODES]
    if repeated_sampling > 1:
        variants.append((f"fused-rs{repeated_sampling}", "fused", repeated_sampling))
    rows = []
    for batch_size in batch_sizes:
        for workers in sweep:
            for name, mode, views in variants:
                cfg = VideoMAETrainConfig(
                    root=root, train_list=train_list, size=size,  # type: ignore[arg-type]
                    run=replace(run, batch_size=batch_size, workers=workers), decoder=DecoderConfig(mode=mode),
                    repeated_sampling=views,
                )  # fmt: skip
                change = f"{mode}, {workers} workers" + (f", {views} views per clip" if views > 1 else "")
                rows.append((batch_size, f"{name}-w{workers}", change, cfg))
    return rows


KINETICS_400_CLIPS = 241_258
"""Training clips of Kinetics-400 (paper §5.5)."""
PAPER_GPU_HOURS = {"VideoMAE": 995, "AVION": 583}
"""Table 5: 800 epochs of ViT-B pretraining on Kinetics-400, A5000 GPU-hours."""


def projected_gpu_hours(s_per_it: float, batch_size: int, epochs: int = 800, clips: int = KINETICS_400_CLIPS) -> float:
    """GPU-hours of ``epochs`` over ``clips`` at ``batch_size`` clips per GPU and ``s_per_it`` seconds per step (Table
    5's projection; GPUs scale the steps down and the hours per step up alike)."""
    return epochs * clips / batch_size * s_per_it / 3600


def table5_lines(rows: list) -> list[str]:
    """Table 5 from the fastest measured row of each decoding mode (and of repeated sampling), beside the
    paper's GPU-hours."""
    lines = []
    for variant in dict.fromkeys(r.row.rsplit("-w", 1)[0] for r in rows):
        measured = [r for r in rows if r.status == "ok" and r.s_per_it and r.row.rsplit("-w", 1)[0] == variant]
        if measured:
            best = min(measured, key=lambda r: r.s_per_it)
            hours = projected_gpu_hours(best.s_per_it, best.batch_size)
            lines.append(f"{variant}: {best.s_per_it:.3f} s/it at B = {best.batch_size}, {workers_of(best.row)} "
                         f"workers -> {hours:,.0f} GPU-hours for 800 epochs of Kinetics-400")  # fmt: skip
    paper = ", ".join(f"{name} {hours}" for name, hours in PAPER_GPU_HOURS.items())
    return lines + [f"(paper, Table 5, A5000 GPU-hours: {paper})"] if lines else []


def workers_of(row: str) -> int:
    """The worker count in a Fig. 7 row's name (``fused-w8`` → 8)."""
    return int(row.rsplit("-w", 1)[1])
