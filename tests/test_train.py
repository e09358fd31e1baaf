"""The training engine on real chunked sample videos with tiny models on the CPU: resume, the
sampler's mid-epoch skip, MIR positives, the CLI's errors, and `avtool eval` on a trained checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avtool.data import EK100Layout, make_loader, set_epoch
from avtool.data.loader import LoaderConfig
from avtool.errors import AvtoolError
from avtool.train import lavila, mir
from avtool.train.checkpoint import latest_checkpoint, load_checkpoint
from avtool.train.config import OptimConfig, RunConfig
from avtool.train.model_factory import ModelConfig, dual_encoder_config
from avtool.train.run_eval import EvalConfig, evaluate_checkpoint

pytest_plugins = ("tests.clip_fixtures",)

TINY = ModelConfig(name="tiny", num_frames=2, grad_checkpointing=False, fast_conv1=False)


def _ek100(sample: Path, chunks: Path) -> EK100Layout:
    return EK100Layout(chunks / "ek100", sample / "ek100" / "annotations")


def _lavila(sample: Path, chunks: Path, out: Path, **run: object) -> lavila.LavilaConfig:
    fields = dict(output_dir=out, epochs=3, batch_size=2, workers=0, log_every=1, save_every=2, seed=3)
    return lavila.LavilaConfig(
        root=chunks / "ego4d" / "v1" / "full_scale",
        metadata=sample / "ego4d" / "ego4d_train.pkl",
        run=RunConfig(**{**fields, **run}),
        model=TINY,
        optim=OptimConfig(lr=1e-3, fixed_lr=False, warmup_epochs=1, lr_start=1e-5, lr_end=1e-4),
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resumed_run_matches_an_uninterrupted_one(small_sample, chunked_sample, tmp_path):
    full = lavila.run(_lavila(small_sample, chunked_sample, tmp_path / "full"))
    total = full.state.step
    assert total >= 4 and full.state.epoch == 3

    stopped = lavila.run(_lavila(small_sample, chunked_sample, tmp_path / "resumed", stop_after=total // 2 + 1))
    assert stopped.state.step == total // 2 + 1  # stopped inside an epoch, with a checkpoint
    assert latest_checkpoint(tmp_path / "resumed").name == f"checkpoint_step{total // 2 + 1:08d}.pt"
    resumed = lavila.run(_lavila(small_sample, chunked_sample, tmp_path / "resumed"))

    assert resumed.state.step == total and resumed.state.epoch == 3
    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["type"] == "train"]
    assert steps == list(range(1, total + 1))  # every step once, none repeated or skipped
    assert [r["lr"] for r in lines] == [r["lr"] for r in reference]  # the same schedule
    a = _weights(latest_checkpoint(tmp_path / "full"))
    b = _weights(latest_checkpoint(tmp_path / "resumed"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["run"]["batch_size"] == 2 and config["model"]["name"] == "tiny"


def test_a_finished_run_reruns_as_a_no_op_and_resume_off_refuses(small_sample, chunked_sample, tmp_path):
    cfg = _lavila(small_sample, chunked_sample, tmp_path / "run", epochs=1)
    first = lavila.run(cfg)
    again = lavila.run(cfg)
    assert again.state.step == first.state.step
    with pytest.raises(AvtoolError, match="already holds checkpoints"):
        lavila.run(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="off")))


def test_sampler_skip_starts_the_epoch_where_a_run_stopped(small_sample, chunked_sample):
    dataset = list(range(10))
    loader = make_loader(dataset, LoaderConfig(batch_size=2, workers=0, seed=1), rank=0, world_size=1)
    set_epoch(loader, 4)
    order = [key for key in loader.sampler]
    set_epoch(loader, 4, skip=6)
    assert list(loader.sampler) == order[6:] and len(loader) == 2
    set_epoch(loader, 5)
    next_order = list(loader.sampler)
    # One pass over epochs 4 and 5 (the training loop's single iterator), resumed at sample 6 of epoch 4.
    set_epoch(loader, 4, skip=6, until=6)
    assert list(loader.sampler) == order[6:] + next_order and len(loader) == 2 + 5
    loader.sampler.whole = 4  # whole optimiser steps of 2 micro-batches: 8 of the 10 samples per epoch
    set_epoch(loader, 4, until=6)
    assert list(loader.sampler) == order[:8] + next_order[:8]


def test_mir_positives_come_from_the_relevancy_matrix(small_sample, chunked_sample, tmp_path):
    layout = _ek100(small_sample, chunked_sample)
    cfg = mir.MIRConfig(layout.root, layout.annotations, run=RunConfig(output_dir=tmp_path), model=TINY)
    job = mir.MIRJob(cfg)
    relevancy = job.train_dataset().relevancy
    assert relevancy.shape[0] >= 2
    last = relevancy.shape[1] - 1
    clips, sentences = torch.tensor([1, 0, 1]), torch.tensor([last, -1, 0])
    positives = job.positives(clips, sentences).numpy()
    expected = relevancy[np.ix_([1, 0, 1], [last, last, 0])] > 0.1
    expected[:, 1] = False  # sentence -1: the clip's own narration, positive for that clip only
    np.fill_diagonal(expected, True)
    np.testing.assert_array_equal(positives, expected)


def test_train_mir_and_eval_both_checkpoints(small_sample, chunked_sample, tmp_path):
    pre = lavila.run(_lavila(small_sample, chunked_sample, tmp_path / "pre", epochs=1))
    layout = _ek100(small_sample, chunked_sample)
    cfg = mir.MIRConfig(
        ek100_root=layout.root, ek100_annotations=layout.annotations,
        pretrained_checkpoint=latest_checkpoint(pre.output_dir),
        run=RunConfig(output_dir=tmp_path / "mir", epochs=1, batch_size=2, workers=0, log_every=1),
        # 2 -> 4 frames: interpolated. Selective checkpointing in training; evaluation turns it off.
        model=dataclasses.replace(TINY, num_frames=4, drop_path=0.1, grad_checkpointing=True, ckpt_keep_attention=1),
    )  # fmt: skip
    result = mir.run(cfg)
    assert result.last_eval is not None and 0 <= result.last_eval["mAP_avg"] <= 100
    assert (tmp_path / "mir" / "checkpoint_best.pt").exists()

    report = evaluate_checkpoint(
        EvalConfig(tmp_path / "mir" / "checkpoint_best.pt", layout.root, layout.annotations, "mir", frames=2, workers=0)
    )
    assert report["frames"] == 2 and "clips ×" in report["counts"]
    assert set(report["metrics"]) == {"mAP_V2T", "mAP_T2V", "mAP_avg", "nDCG_V2T", "nDCG_T2V", "nDCG_avg"}
    assert report["baseline_name"] == "chance"
    with pytest.raises(AvtoolError, match="needs a classifier"):
        evaluate_checkpoint(
            EvalConfig(
                tmp_path / "mir" / "checkpoint_best.pt",
                layout.root,
                layout.annotations,
                "cls",
                split="validation",
                workers=0,
            )
        )


def test_model_config_problems_of_selective_checkpointing():
    for fields, expected in (
        (dict(ckpt_keep_attention=-1), "at least 0"),
        (dict(ckpt_keep_attention=1), "needs gradient checkpointing"),
        (dict(ckpt_keep_attention=1, grad_checkpointing=True, attn="math"), "not 'math'"),
    ):
        assert any(expected in p for p in dataclasses.replace(TINY, **fields).problems()), expected
    assert dataclasses.replace(TINY, grad_checkpointing=True, ckpt_keep_attention=2).problems() == []
    # More kept blocks than the model has is known once its shape is: still one line, not a traceback.
    too_many = dataclasses.replace(TINY, grad_checkpointing=True, ckpt_keep_attention=3)
    with pytest.raises(AvtoolError, match=r"^--model tiny: invalid VideoTowerConfig: \S+=3 is outside 0\.\.2") as e:
        dual_encoder_config(too_many)
    assert "\n" not in str(e.value)


def _avtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avtool.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_reports_missing_inputs_in_one_line(tmp_path, avtool_main):
    result = avtool_main("train", "lavila", str(tmp_path / "nowhere"), str(tmp_path / "none.pkl"), "--model", "tiny",
                     "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    assert "nowhere does not exist" in result.stderr and "none.pkl does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    result = avtool_main("train", "cls", str(tmp_path), str(tmp_path), "--nproc-per-node", "2", "--nnodes", "2")
    assert result.returncode == 2 and "--rdzv-endpoint" in result.stderr


def test_bad_metadata_is_one_line_before_training(small_sample, chunked_sample, tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    result = _avtool("train", "lavila", str(chunked_sample / "ego4d" / "v1" / "full_scale"), str(bad),
                     "--model", "tiny", "--device", "cpu", "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2 and "not a readable pickle" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_two_process_ddp_run_through_torchrun(small_sample, chunked_sample, tmp_path):
    """`--nproc-per-node 2` launches torchrun; both ranks train (gloo on the CPU) with a global batch of 2×2."""
    out = tmp_path / "ddp"
    result = _avtool(
        "train", "lavila", str(chunked_sample / "ego4d" / "v1" / "full_scale"),
        str(small_sample / "ego4d" / "ego4d_train.pkl"), "--model", "tiny", "--frames", "2", "--no-grad-ckpt",
        "--device", "cpu", "--batch-size", "2", "--workers", "0", "--epochs", "1", "--log-every", "1",
        "--output", str(out), "--nproc-per-node", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "global batch 4 = 2 per process × 2" in result.stdout.replace("\n", " ")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["videos_per_s"] == pytest.approx(2 * r["videos_per_s_per_gpu"]) for r in records)


def test_model_config_fused_mlp_reaches_both_towers() -> None:
    from avtool.models import DualEncoder

    cfg = dual_encoder_config(dataclasses.replace(TINY, fused_mlp=True))
    assert cfg.video.fused_mlp and cfg.text.fused_mlp
    model = DualEncoder(cfg)
    mlps = [m for m in model.modules() if type(m).__name__ == "Mlp"]
    assert mlps and all(m.fused for m in mlps)
    assert not dual_encoder_config(TINY).video.fused_mlp  # off by default


def test_model_config_takes_bench_models_step_options() -> None:
    """`avtool train` accepts what `bench model` measures: first-k checkpointing, the low-precision residual
    (both towers) and a compile mode (checked against --compile)."""
    cfg = dual_encoder_config(dataclasses.replace(TINY, grad_checkpointing=True, ckpt_blocks=1,
                                                  low_precision_residual=True))  # fmt: skip
    assert cfg.video.grad_checkpointing_blocks == 1
    assert cfg.video.low_precision_residual and cfg.text.low_precision_residual
    assert "needs compile" in " ".join(RunConfig(output_dir=Path("o"), compile_mode="max-autotune-gemm").problems())
    assert RunConfig(output_dir=Path("o"), compile=True, compile_mode="max-autotune-gemm").problems() == []


def test_a_bad_validation_split_stops_the_run_before_its_first_step(small_sample, chunked_sample, tmp_path):
    from avtool.train import cls

    layout = _ek100(small_sample, chunked_sample)
    annotations = tmp_path / "annotations"
    shutil.copytree(layout.annotations, annotations)
    validation = annotations / "EPIC_100_validation.csv"
    table = pd.read_csv(validation)
    table.loc[0, "video_id"], table.loc[0, "participant_id"] = "P09_99", "P09"  # a video not among the chunks
    table.to_csv(validation, index=False)
    out = tmp_path / "cls"
    cfg = cls.CLSConfig(layout.root, annotations, model=TINY, run=RunConfig(output_dir=out, epochs=1, batch_size=2,
                                                                            workers=0))  # fmt: skip
    with pytest.raises(AvtoolError, match=r"EPIC_100_validation.csv: 1 problem\(s\): .*video P09/P09_99.MP4"):
        cls.run(cfg)
    assert not out.exists()  # nothing trained, nothing written


def test_an_unreadable_chunk_is_replaced_and_counted_or_fails_after_saving_the_steps_done(
    small_sample, chunked_sample, tmp_path
):
    # A chunk that passes the start-up checks (present, of the recorded size) but is garbage inside.
    chunks = tmp_path / "chunks"
    shutil.copytree(chunked_sample, chunks)
    manifest = pd.read_csv(chunks / "manifest.csv")
    ego4d = manifest[manifest.chunk.str.startswith("ego4d/")]
    bad = chunks / ego4d[ego4d.start == ego4d.start.max()].chunk.iloc[0]  # the 15-s chunk of the 20-s video
    bad.write_bytes(bytes(bad.stat().st_size))

    def config(out: Path, **run: object) -> lavila.LavilaConfig:
        cfg = _lavila(small_sample, chunks, out, epochs=2, save_every=100, **run)
        return dataclasses.replace(cfg, root=chunks / "ego4d" / "v1" / "full_scale")

    skipped = lavila.run(config(tmp_path / "skip"))
    records = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == skipped.state.step and skipped.state.bad_clips > 0
    assert sum(r["bad_clips"] for r in train) == skipped.state.bad_clips
    assert load_checkpoint(latest_checkpoint(tmp_path / "skip"))["state"]["bad_clips"] == skipped.state.bad_clips
    # The replacements come from (seed, epoch, index): a second run replaces the same clips the same way.
    again = lavila.run(config(tmp_path / "again"))
    torch.testing.assert_close(_weights(latest_checkpoint(tmp_path / "skip")),
                               _weights(latest_checkpoint(tmp_path / "again")))  # fmt: skip

    first_bad = min(r["step"] for r in train if r["bad_clips"])
    assert first_bad > 1, "the test needs a chunk that the first step does not read"
    assert again.state.bad_clips == skipped.state.bad_clips
    with pytest.raises(AvtoolError) as failed:
        lavila.run(config(tmp_path / "fail", on_bad_clip="fail"))
    message = str(failed.value)
    assert "\n" not in message and bad.name in message and "not a readable video" in message
    assert f"saved step {first_bad - 1} first" in message  # the steps before the bad clip are not lost
    assert latest_checkpoint(tmp_path / "fail").name == f"checkpoint_step{first_bad - 1:08d}.pt"
