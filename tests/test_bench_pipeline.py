"""`avtool bench ladder` and `bench pipeline` on a CPU: tiny towers over real chunk files of the small sample.

The pipeline's verdict is checked on three planted bottlenecks (one worker decoding the reference
pipeline's way: CPU; a read limit: IO; a ViT-B on clips of one frame: GPU), with margins wide enough
(more than 3×) that a busy machine does not flip them.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avtool.bench import ladder as ladder_module
from avtool.bench.inputs import BenchInputs
from avtool.bench.ladder import RUNG_NAMES, LadderConfig, ladder_plan, run_ladder
from avtool.bench.pipeline import PipelineConfig, PipelineRow, bound_of, run_pipeline, verdict
from avtool.prep.encode import EncodeSettings
from avtool.train.model_config import ModelConfig

AVTOOL = shutil.which("avtool", path=str(Path(sys.executable).parent)) or "avtool"
TINY_RUN = dict(seconds=1.0, warmup_steps=3, min_steps=2, workers=1, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_compute_thread():
    """The step on one thread: flushing denormals (engine.flush_denormals) reaches only threads started after
    it, and a thread pool an earlier test started would compute AdamW's denormal moments 35× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench_inputs(small_sample, tmp_path_factory) -> BenchInputs:
    """The sample's Ego4D videos with 48 one-second narrations over them (enough for batches of 8), chunked
    at 96 pixels into a data folder the tests of this module share."""
    videos = small_sample / "ego4d" / "v1" / "full_scale"
    uids = sorted(p.stem for p in videos.glob("*.mp4"))
    rows = [(uid, float(t), float(t) + 1.0, f"#C C moves object {t}") for uid in uids for t in range(0, 11, 1)]
    metadata = tmp_path_factory.mktemp("narrations") / "dense.pkl"
    metadata.write_bytes(pickle.dumps(rows * 2))
    data_dir = tmp_path_factory.mktemp("bench_data")
    return BenchInputs(videos=videos, metadata=metadata, data_dir=data_dir,
                       encode=EncodeSettings(short_side=96, preset="veryfast"))  # fmt: skip


@pytest.fixture(scope="module")
def kinetics_data_dir(tmp_path_factory) -> Path:
    """A data folder the VideoMAE benches share: the sample's Kinetics layout (1 clip per class) and its chunks,
    made by the first of them."""
    return tmp_path_factory.mktemp("kinetics_bench_data")


def _tiny_model(**changes) -> ModelConfig:
    return ModelConfig(name="tiny", freeze_temperature=True, **changes)


def test_ladder_rows_are_cumulative_with_every_column_and_config(bench_inputs, tmp_path):
    cfg = LadderConfig(inputs=bench_inputs, rows=("baseline", "chunks-15s", "fused-decodecrop"),
                       without=("mem-eff-attn",), batch_sizes=(4,), model=_tiny_model(), best_attn="sdpa",
                       output_dir=tmp_path, **TINY_RUN)  # fmt: skip
    result = run_ladder(cfg)
    assert [r.row for r in result.rows] == ["baseline", "chunks-15s", "fused-decodecrop"]
    assert [r.status for r in result.rows] == ["ok"] * 3
    assert [r.chunks for r in result.rows] == ["300s", "15s", "15s"]
    for row in result.rows:
        assert row.steps >= 2 and row.s_per_it > 0 and row.videos_per_s > 0
        assert 0 <= row.data_s_per_it <= row.s_per_it
        assert 0 <= row.data_wait_share <= 1
        assert row.loader_clips_per_s > 0
        assert 0 < row.cpu_utilisation <= 1
        assert row.read_mb_per_s > 0  # the workers really read chunk files
        assert row.cache.startswith("dropped")
    # Each row's full job configuration: the baseline's, plus the changes of the rows below it; the
    # memory-efficient attention change was left out (--without), so it is not there.
    base, shorter, fused = result.configs
    assert base["model"]["attn"] == "math" and base["decoder"]["mode"] == "decode-then-crop"
    assert base["decoder"]["access"] == "sequential" and base["root"].endswith("300s-96p")
    assert shorter["root"].endswith("15s-96p") and shorter["decoder"]["mode"] == "decode-then-crop"
    assert fused["model"]["attn"] == "math" and fused["decoder"]["mode"] == "fused"
    assert fused["decoder"]["access"] == "sequential" and fused["root"].endswith("15s-96p")
    assert fused["run"]["batch_size"] == 4


def test_ladder_rows_not_timed_still_apply_their_changes_and_without_leaves_them_out():
    def top(**changes) -> dict:
        batch_size, rung, chunks, values = ladder_plan(LadderConfig(rows=("hybrid-nvdec",), **changes))[-1]
        assert rung.name == "hybrid-nvdec" and chunks == "15s-1s-keys-fastdecode-b8"
        return values

    full = top()
    assert full[("model", "attn")] == "cudnn" and full[("decoder", "mode")] == "fused"
    assert full[("decoder", "access")] == "seek" and full[("model", "grad_checkpointing")] is False
    assert full[("run", "compile")] is True and full[("model", "fused_mlp")] is True
    assert full[("decoder", "nvdec_workers")] == 2
    assert ("model", "fused_mlp") not in top(without=("fused-mlp",))
    assert top(without=("best-attn",))[("model", "attn")] == "sdpa"  # the memory-efficient attention row's
    plans = ladder_plan(LadderConfig(rows=("baseline", "compile"), batch_sizes=(64, 256)))
    assert [(b, r.name) for b, r, _, _ in plans] == [(64, "baseline"), (64, "compile"), (256, "baseline"),
                                                      (256, "compile")]  # fmt: skip
    assert LadderConfig(rows=("compile",), without=("compile", "nope")).problems()[:2] == [
        "unknown row(s) nope: the rows are " + ", ".join(RUNG_NAMES),
        "row(s) compile both timed (--rows) and left out (--without)",
    ]


def test_ladder_records_out_of_memory_and_goes_on(bench_inputs, tmp_path, monkeypatch):
    real = ladder_module.time_training
    calls = []

    def first_runs_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(ladder_module, "time_training", first_runs_out_of_memory)
    cfg = LadderConfig(inputs=bench_inputs, rows=("baseline", "mem-eff-attn"), batch_sizes=(4,),
                       model=_tiny_model(), best_attn="sdpa", output_dir=tmp_path, **TINY_RUN)  # fmt: skip
    rows = run_ladder(cfg).rows
    assert [(r.row, r.status) for r in rows] == [("baseline", "OOM"), ("mem-eff-attn", "ok")]
    assert rows[0].videos_per_s is None and rows[1].videos_per_s > 0


def _pipeline(inputs: BenchInputs, tmp_path: Path, **changes) -> PipelineConfig:
    settings = dict(inputs=inputs, model=_tiny_model(), batch_size=8, loader_batch=4, gpus=(1, 2), cores=2,
                    reference=False, remedies=False, output_dir=tmp_path,
                    **{k: v for k, v in TINY_RUN.items() if k != "workers"})  # fmt: skip
    return PipelineConfig(**{**settings, **changes})


def test_pipeline_finds_a_planted_cpu_bound(bench_inputs, tmp_path):
    # One worker per GPU, decoding as the reference loader does (whole 288p frames from the start of a
    # 5-minute chunk), against a tiny model's quick step.
    from avtool.video.decode import DecoderConfig

    slow = DecoderConfig(mode="decode-then-crop", access="sequential")
    inputs = dataclasses.replace(bench_inputs, encode=dataclasses.replace(bench_inputs.encode, short_side=288))
    result = run_pipeline(_pipeline(inputs, tmp_path, chunks="300s", decoder=slow, cores=1, gpus=(1,),
                                    model=_tiny_model(grad_checkpointing=False)))  # fmt: skip
    (row,) = result.rows
    assert row.bound == "CPU", result.verdict
    assert row.cpu_clips_per_s * 3 < row.gpu_clips_per_s
    assert result.verdict[0].startswith("1 GPU: CPU-bound: 1 loader workers deliver")
    assert any(line.startswith("CPU-bound from 1 GPU") for line in result.verdict)
    assert row.actual_clips_per_s < row.gpu_clips_per_s


def test_pipeline_finds_a_planted_io_bound(bench_inputs, tmp_path):
    # 0.2 MB/s: a few clips/s of the sample's 96p chunks, far below what the loader and the step manage.
    result = run_pipeline(_pipeline(bench_inputs, tmp_path, read_limit=0.2))
    assert [r.bound for r in result.rows] == ["IO", "IO"], result.verdict
    bytes_per_clip = result.measurements["avtool"]["bytes_per_clip"]
    assert result.rows[0].io_clips_per_s == pytest.approx(0.2e6 / bytes_per_clip)
    assert result.rows[0].io_clips_per_s * 3 < min(result.rows[0].cpu_clips_per_s, result.rows[0].gpu_clips_per_s)
    assert any(line.startswith("IO-bound from 1 GPU") for line in result.verdict)
    # The cap holds end to end too: the run cannot read faster than the limit allows.
    assert result.rows[0].actual_clips_per_s < 3 * result.rows[0].io_clips_per_s


def test_pipeline_finds_a_planted_gpu_bound_and_writes_its_files(bench_inputs, tmp_path):
    # The tiny towers on 96p chunks with seeking and Fused DecodeCrop: on a CPU the step costs several times
    # what decoding a clip does (a GPU-sized model on small clips, scaled to a CPU).
    out = tmp_path / "results"
    args = [
        AVTOOL, "bench", "pipeline", "--tiny", "--device", "cpu", "--gpus", "1,2", "--no-reference", "--no-remedies",
        "--videos", str(bench_inputs.videos), "--metadata", str(bench_inputs.metadata),
        "--data-dir", str(bench_inputs.data_dir), "--preset", "veryfast", "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "pipeline.json").read_text())
    assert [r["bound"] for r in record["rows"]] == ["GPU", "GPU"], record["verdict"]
    assert [r["emulated"] for r in record["rows"]] == [False, True]
    one = record["rows"][0]
    assert one["cpu_clips_per_s"] > 1.5 * one["gpu_clips_per_s"]
    assert record["verdict"][0].startswith("1 GPU: GPU-bound: the GPU takes")
    assert (out / "pipeline.txt").read_text().splitlines() == record["verdict"]
    assert record["config"]["model"]["name"] == "tiny" and record["env"]["python"]
    assert "GPU-bound" in done.stdout and (out / "pipeline.csv").is_file()


def test_verdict_names_the_bound_and_ranks_the_remedies():
    rows = [PipelineRow("avtool", 1, 16, 700.0, 1000.0, 9000.0, 690.0, "GPU", False),
            PipelineRow("avtool", 8, 2, 5600.0, 1200.0, 9000.0, None, "CPU", True)]  # fmt: skip
    from avtool.bench.pipeline import Remedy

    lines = verdict(rows, [Remedy("hybrid NVDEC", 190.0), Remedy("fast-decode chunks", 260.0)], 2000.0, 2.2e5)
    assert lines[0].startswith("1 GPU: GPU-bound: the GPU takes 700 clips/s, against 1,000 the CPU side allows")
    assert lines[1].startswith("8 GPUs (emulated): CPU-bound: 16 loader workers deliver 1,200 clips/s")
    cpu = lines.index(next(line for line in lines if line.startswith("CPU-bound from 8 GPUs")))
    assert "fast-decode chunks" in lines[cpu + 1] and "+73%" in lines[cpu + 1]  # 260 against 150 per GPU
    assert "hybrid NVDEC" in lines[cpu + 2]
    assert bound_of({"GPU": 5.0, "CPU": 7.0, "IO": None}) == "GPU"


def test_ladder_of_videomae_times_both_decoding_modes_per_worker_count_and_plots_fig7(kinetics_data_dir, tmp_path):
    import pandas as pd

    result = subprocess.run([
        AVTOOL, "bench", "ladder", "--tiny", "--device", "cpu", "--job", "videomae", "--batch-size", "4",
        "--workers-sweep", "1,2", "--repeated-sampling", "2", "--data-dir", str(kinetics_data_dir),
        "--output", str(tmp_path / "res"),
    ], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(tmp_path / "res/ladder.csv")
    assert list(rows.row) == [f"{v}-w{w}" for w in (1, 2) for v in ("decode-then-crop", "fused", "fused-rs2")]
    assert (rows.job == "videomae").all() and (rows.status == "ok").all() and (rows.chunks == "kinetics").all()
    assert (rows.s_per_it > 0).all() and (rows.data_s_per_it >= 0).all() and (rows.loader_clips_per_s > 0).all()
    configs = json.loads((tmp_path / "res/ladder.json").read_text())["row_configs"]
    assert [c["decoder"]["mode"] for c in configs] == ["decode-then-crop", "fused", "fused"] * 2
    assert [c["repeated_sampling"] for c in configs] == [1, 1, 2] * 2
    assert [c["run"]["workers"] for c in configs] == [1, 1, 1, 2, 2, 2] and configs[0]["mask_ratio"] == 0.9
    # The clips were chunked whole at short side 320 from the sample's Kinetics layout.
    chunks = pd.read_csv(kinetics_data_dir / "chunks/kinetics-320p/manifest.csv")
    assert (chunks.height == 320).all() and (chunks.start == 0).all()
    assert "Fig. 7 on this machine" in result.stdout and "avtool plot fig7" in result.stdout
    assert "Table 5 projection: fused:" in result.stdout and "VideoMAE 995, AVION 583" in result.stdout
    assert "fused-rs2: " in result.stdout
    plotted = subprocess.run([AVTOOL, "plot", "fig7", str(tmp_path / "res/ladder.csv")], capture_output=True, text=True)
    assert plotted.returncode == 0 and (tmp_path / "res/ladder.png").stat().st_size > 10_000, plotted.stderr


def test_table5_projection_counts_gpu_hours_of_800_kinetics_epochs():
    from avtool.bench.fig7 import projected_gpu_hours

    # The paper's fused iteration (1.55 s at 64 clips per A5000) projects to 1,298 GPU-hours: 800 epochs of
    # 241,258 clips are 3.0M steps per GPU's share (the paper's 583 does not follow from its own s/it).
    assert projected_gpu_hours(1.55, 64) == pytest.approx(800 * 241_258 / 64 * 1.55 / 3600)
    assert round(projected_gpu_hours(1.55, 64)) == 1298


def test_pipeline_of_videomae_is_cpu_bound_with_one_worker_and_measures_repeated_sampling(kinetics_data_dir, tmp_path):
    # VideoMAE's tiny step on 32² clips against one worker decoding 320p Kinetics clips the reference way
    # (whole frames, then a crop): loading is the bound, as Fig. 7 says of MAE pretraining.
    from avtool.bench.pipeline import REMEDY_VIEWS
    from avtool.video.decode import DecoderConfig

    inputs = BenchInputs(data_dir=kinetics_data_dir, kinetics_clips=1)
    cfg = _pipeline(inputs, tmp_path, job="videomae", cores=1, gpus=(1,), remedies=True, batch_size=4,
                    decoder=DecoderConfig(mode="decode-then-crop"))  # fmt: skip
    result = run_pipeline(cfg)
    (row,) = result.rows
    assert row.bound == "CPU" and row.cpu_clips_per_s * 2 < row.gpu_clips_per_s, result.verdict
    assert result.configs["avtool"]["repeated_sampling"] == 1 and result.configs["avtool"]["size"] == "tiny"
    repeated, fast = result.measurements["remedies"]  # no NVDEC on a CPU
    assert fast["change"].startswith("fast-decode chunks") and fast["cpu_clips_per_s"] > 0
    remedy = repeated
    assert remedy["change"].startswith(f"repeated sampling (--repeated-sampling {REMEDY_VIEWS}")
    # One decode gives two views: the views per second beat the clips per second of one view each.
    assert remedy["cpu_clips_per_s"] > 1.3 * row.cpu_clips_per_s, result.verdict
    assert any("repeated sampling" in line for line in result.verdict)
