"""Proof that the training jobs learn: tiny models trained on the CPU on the built-in sample (rendered
with longer EK-100 videos so that the held-out splits hold ~50 clips) must beat the trivial baselines on
held-out clips. Real decoding, real models, a few hundred steps each."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from avtool.cli.train import learning_line
from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
from avtool.prep.encode import EncodeSettings
from avtool.prep.sample import SampleConfig, make_sample
from avtool.train import cls, lavila
from avtool.train.config import OptimConfig, RunConfig
from avtool.train.evaluate import majority_class_accuracy
from avtool.train.metrics import chance_retrieval_metrics
from avtool.train.mixup import MixupConfig
from avtool.train.model_factory import ModelConfig

TINY = ModelConfig(name="tiny", num_frames=4, grad_checkpointing=False, fast_conv1=False)
STEPS = 300


@pytest.fixture(scope="module")
def learning_data(tmp_path_factory) -> tuple[Path, Path]:
    """The default sample with 150-s EK-100 videos, cut into 15-s chunks at 144p (cheap to decode)."""
    sample = tmp_path_factory.mktemp("learning_sample")
    make_sample(SampleConfig(dest=sample, seed=0, ek100_videos=(("P01_01", 60, 150.0), ("P01_02", 50, 150.0),
                                                                 ("P02_01", 30, 150.0)), kinetics_clips=0))  # fmt: skip
    chunks = tmp_path_factory.mktemp("learning_chunks")
    encode = EncodeSettings(chunk_len=15, short_side=144, preset="veryfast")
    report = run_chunking(plan_chunking(ChunkConfig(src=sample, dst=chunks, encode=encode, workers=2)))
    assert report.ok, report.failures
    return sample, chunks


def test_pretraining_raises_zero_shot_retrieval_above_chance(learning_data, tmp_path):
    sample, chunks = learning_data
    cfg = lavila.LavilaConfig(
        root=chunks / "ego4d" / "v1" / "full_scale",
        metadata=sample / "ego4d" / "ego4d_train.pkl",
        metadata_aux=(sample / "ego4d" / "ego4d_train.rephraser.pkl",),
        ek100_root=chunks / "ek100",
        ek100_annotations=sample / "ek100" / "annotations",
        run=RunConfig(
            output_dir=tmp_path,
            epochs=1,
            batch_size=32,
            workers=2,
            eval_every=0,
            eval_at_start=True,
            save_every=10_000,
            save_every_epochs=10_000,
            log_every=25,
        ),  # fmt: skip
        model=TINY,
        optim=OptimConfig(lr=2e-3, fixed_lr=True, weight_decay=0.01),
    )
    job = lavila.LavilaJob(cfg)
    steps_per_epoch = len(job.train_dataset()) // cfg.run.batch_size
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, epochs=math.ceil(STEPS / steps_per_epoch)))
    result = lavila.run(cfg)

    evals = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 2  # before and after training
    before, after = (json.loads(line)["mAP_avg"] for line in evals)
    chance = chance_retrieval_metrics(job.eval_dataset().relevancy).map_avg
    print(f"EK-100 MIR zero-shot on {len(job.eval_dataset())} held-out clips: mAP_avg chance {chance:.1f}, "
          f"initial {before:.1f}, after {result.state.step} steps {after:.1f}")  # fmt: skip
    # Footage with handheld statistics makes this harder than the flat scenes it was first set for:
    # 300 steps of the tiny towers measured 38.9 against chance 30.1 (torch 2.14, 2-core VM).
    assert after >= chance + 6 and after > before + 4
    # The training summary's one line says the same.
    line = learning_line("lavila", cfg, tmp_path)
    assert line == (f"learned: mAP_avg at step 0: {before:.2f}, at step {result.state.step}: {after:.2f}; "
                    f"chance {chance:.2f} on these {len(job.eval_dataset())} test clips")  # fmt: skip


def test_fine_tuning_beats_the_majority_class(learning_data, tmp_path):
    sample, chunks = learning_data
    cfg = cls.CLSConfig(
        ek100_root=chunks / "ek100",
        ek100_annotations=sample / "ek100" / "annotations",
        run=RunConfig(
            output_dir=tmp_path,
            epochs=40,
            batch_size=16,
            workers=2,
            eval_every=0,
            save_every=10_000,
            save_every_epochs=10_000,
            log_every=25,
        ),  # fmt: skip
        model=TINY,
        # From scratch, a tiny model needs Adam; the paper's SGD recipe fine-tunes a pretrained one.
        optim=OptimConfig(optimizer="adamw", lr=1e-3, warmup_epochs=2, lr_start=1e-5, lr_end=1e-5),
        mixup=MixupConfig(mixup_alpha=0, cutmix_alpha=0),  # ~100 clips: mixing only blurs what there is
        dropout=0.0,
        flip=0.0,  # flips turn push-left into push-right
    )
    job = cls.CLSJob(cfg)
    majority = majority_class_accuracy(job.train_dataset(), job.eval_dataset())
    result = cls.run(cfg)
    print(f"EK-100 CLS on {len(job.eval_dataset())} held-out clips: majority {majority}, trained {result.last_eval}")
    assert result.last_eval["action_top1"] > majority["action_top1"]
    assert result.last_eval["noun_top1"] > majority["noun_top1"] + 10


@pytest.fixture(scope="module")
def kinetics_learning_data(tmp_path_factory) -> Path:
    """The sample's Kinetics layout with 16 training and 8 held-out 4-s clips per class, chunked whole at 64p."""
    sample = tmp_path_factory.mktemp("kinetics_sample")
    make_sample(SampleConfig(dest=sample, ego4d_durations=(4.0,), ek100_videos=(("P01_01", 30, 3.0),),
                             kinetics_clips=16, kinetics_val_clips=8, kinetics_seconds=4.0))  # fmt: skip
    encode = EncodeSettings(chunk_len=60, short_side=64, preset="veryfast")
    report = run_chunking(plan_chunking(ChunkConfig(src=sample / "kinetics", dst=sample / "chunks", encode=encode,
                                                    workers=2)))  # fmt: skip
    assert report.ok, report.failures
    return sample


def test_kinetics_fine_tuning_beats_the_majority_class(kinetics_learning_data, tmp_path):
    from avtool.train import kinetics
    from avtool.train.evaluate import majority_label_accuracy

    lists = kinetics_learning_data / "kinetics"
    cfg = kinetics.KineticsFinetuneConfig(
        kinetics_learning_data / "chunks", lists / "train.csv", lists / "val.csv", size="tiny",
        # 80 clips of 5 classes from scratch: the recipe's augmentations and Mixup only blur so little data,
        # and flips would turn push-left into push-right.
        flip=0.0, rand_augment="none", random_erase=0.0, drop_path=0.0, crop_scale=(0.4, 1.0),
        mixup=MixupConfig(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.0),
        run=RunConfig(output_dir=tmp_path, epochs=40, batch_size=16, workers=2, eval_every=0, log_every=50,
                      save_every=10_000),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05, warmup_epochs=2, lr_start=1e-5, lr_end=1e-5),
    )  # fmt: skip
    job = kinetics.KineticsJob(cfg)
    majority = majority_label_accuracy(job.train_dataset().labels, job.eval_dataset().labels)
    result = kinetics.run(cfg)
    top1 = result.last_eval["top1"]
    print(f"Kinetics on {len(job.eval_dataset())} held-out clips x 15 views: majority {majority:.1f}, top-1 {top1:.1f}")
    # Measured 45 and 52 (seeds 0 and 1) against 20 on the 2-core VM; 18 of 40 right by chance has p < 0.001.
    assert top1 >= majority + 15
