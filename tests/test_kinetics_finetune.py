"""Kinetics fine-tuning and its multi-view test: the classifier over a VideoMAE encoder, RandAugment and random
erasing per clip, view averaging, `avtool train kinetics` from a `train videomae` checkpoint and `avtool eval
kinetics` (tiny models on the small sample's real chunks)."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from avtool.models.videomae import VIDEOMAE_SIZES, VideoMAE, VideoMAEClassifier

pytest_plugins = ("tests.clip_fixtures",)

TINY = VIDEOMAE_SIZES["tiny"]
AVTOOL = shutil.which("avtool", path=str(Path(sys.executable).parent)) or "avtool"


def test_classifier_takes_the_pretrained_encoder_and_starts_near_uniform():
    torch.manual_seed(0)
    pretrained = VideoMAE(TINY)
    classifier = VideoMAEClassifier(TINY, num_classes=7)
    assert classifier.load_encoder(pretrained.state_dict()) == sum(
        1 for name in classifier.state_dict() if name.startswith(("patch_embed.", "encoder."))
    )
    video = torch.randn(2, 3, TINY.num_frames, TINY.image_size, TINY.image_size)
    # The encoder over every cube is the pretrained one (VideoMAE's with nothing masked), pooled and normed.
    tokens = pretrained.encoder(pretrained.patch_embed(video) + pretrained.pos_embed)
    torch.testing.assert_close(classifier.features(video), classifier.fc_norm(tokens.mean(dim=1)))
    logits = classifier(video)
    assert logits.shape == (2, 7) and logits.abs().max() < 0.05  # the head starts 1000× smaller
    bigger = VideoMAE(dataclasses.replace(TINY, width=96))
    with pytest.raises(ValueError, match="shaped differently: patch_embed"):
        classifier.load_encoder(bigger.state_dict())


def test_layer_decay_of_the_classifier_follows_videomae_ids():
    from avtool.train.optim import layer_scales

    model = VideoMAEClassifier(TINY, num_classes=3)
    n = TINY.depth
    scales = layer_scales(model, 0.75)
    assert scales["patch_embed.proj.weight"] == pytest.approx(0.75 ** (n + 1))  # id 0
    for i in range(n):
        assert scales[f"encoder.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.75 ** (n - i))  # id i + 1
    assert scales["fc_norm.weight"] == scales["head.weight"] == 1.0  # id n + 1


def test_rand_augment_is_one_draw_per_clip_seeded_and_leaves_python_random_alone():
    from avtool.video.randaugment import ClipRandAugment

    augment = ClipRandAugment(image_size=48)
    frame = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    clip = np.stack([frame] * 4)
    random.seed(123)
    before = random.random()
    random.seed(123)
    outputs = [augment(clip, np.random.default_rng([0, i])) for i in range(8)]
    assert random.random() == before  # the level functions' Python draws were on a private state
    for out in outputs:
        assert out.shape == clip.shape and out.dtype == np.uint8
        assert all(np.array_equal(f, out[0]) for f in out)  # the same operations on every frame
    assert np.array_equal(augment(clip, np.random.default_rng([0, 3])), outputs[3])
    assert len({o.tobytes() for o in outputs}) == len(outputs)
    assert sum(not np.array_equal(o, clip) for o in outputs) >= 6


def test_random_erasing_puts_one_box_in_every_frame_of_a_clip():
    from avtool.video.augment import random_erase

    torch.manual_seed(0)
    video = torch.full((6, 3, 4, 40, 40), 7.0)
    erased = random_erase(video, prob=1.0)
    changed = erased != 7.0  # noise never equals 7 exactly
    for clip in changed:
        box = clip[0, 0]
        assert 0.02 * 1600 * 0.5 <= box.sum() <= 1600 / 3 * 1.5  # area within (0.02, 1/3), rounding aside
        assert (clip == box).all()  # the same pixels in every channel and frame
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box.sum() == len(rows) * len(cols)  # a rectangle
    assert torch.equal(random_erase(video, prob=0.0), video)


class _Views(Dataset):
    """Items of 3 views whose pixels are constant per view: a model reading the mean pixel gives known logits."""

    def __init__(self) -> None:
        self.values = torch.tensor([[10, 200, 90], [250, 0, 30]], dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.values[i].view(3, 1, 1, 1, 1).expand(3, 2, 4, 4, 3).clone(), "label": 0}


class _MeanToLogits(torch.nn.Module):
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        m = video.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, -m, 2 * m], dim=1)


def test_views_are_averaged_as_softmax_probabilities_per_video():
    from avtool.train.distributed import DistEnv
    from avtool.train.evaluate import predict_classes
    from avtool.train.metrics import top_k_accuracy
    from avtool.video.augment import AugmentConfig, augment_batch

    env = DistEnv(0, 0, 1, torch.device("cpu"))
    data, model = _Views(), _MeanToLogits()
    probs = predict_classes(model, data, env, batch_size=2, workers=0)
    for i in range(len(data)):
        views = augment_batch(data[i]["video"], AugmentConfig())
        expected = model(views).softmax(dim=-1).mean(dim=0)  # the mean of probabilities, not of logits
        np.testing.assert_allclose(probs[i], expected.numpy(), rtol=1e-5)
        assert not np.allclose(probs[i], model(views).mean(dim=0).softmax(dim=-1).numpy(), rtol=1e-3)
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    assert top_k_accuracy(scores, np.array([1, 2, 0]), (1, 2, 5)) == {
        "top1": pytest.approx(100 / 3),
        "top2": pytest.approx(200 / 3),
        "top5": 100.0,
    }


def _lists(chunks: Path, folder: Path) -> tuple[Path, Path]:
    """Training and validation lists (AVION's format) over the chunked sample's videos, 3 classes."""
    import pandas as pd

    frames = pd.read_csv(chunks / "manifest.csv").groupby("video").frames.sum()
    lines = [f"{video} {count} {k % 3}" for k, (video, count) in enumerate(frames.items())]
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "val.txt").write_text("\n".join(lines[:3]) + "\n")
    return folder / "train.txt", folder / "val.txt"


def test_train_kinetics_from_a_videomae_checkpoint_resumes_and_eval_tests_15_views(chunked_sample, tmp_path):
    from avtool.errors import AvtoolError
    from avtool.train import kinetics, videomae
    from avtool.train.checkpoint import latest_checkpoint, load_checkpoint
    from avtool.train.config import RunConfig

    train_list, val_list = _lists(chunked_sample, tmp_path)
    run = dict(epochs=2, batch_size=2, workers=0, log_every=1, save_every=100, seed=3)
    pretrain_run = RunConfig(output_dir=tmp_path / "mae", **{**run, "epochs": 1})
    videomae.run(videomae.VideoMAETrainConfig(chunked_sample, train_list, size="tiny", mask_ratio=0.75,
                                              run=pretrain_run))  # fmt: skip
    mae = latest_checkpoint(tmp_path / "mae")

    def config(out: str, **changes: object) -> kinetics.KineticsFinetuneConfig:
        settings = RunConfig(output_dir=tmp_path / out, **{**run, **changes})
        return kinetics.KineticsFinetuneConfig(chunked_sample, train_list, val_list, pretrained_checkpoint=mae,
                                               size="tiny", run=settings)  # fmt: skip

    full = kinetics.run(config("full"))
    assert full.state.epoch == 2 and full.state.step >= 4
    records = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 2 and all(0 <= r["top1"] <= r["top5"] <= 100 for r in evals)
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    assert checkpoint["model_config"]["kind"] == "videomae_classifier" and checkpoint["job"] == "kinetics"
    encoder = load_checkpoint(mae)["model"]["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(checkpoint["model"]["encoder.blocks.0.attn.qkv.weight"], encoder)  # fine-tuned
    # Stopped and resumed: the same weights (RandAugment, erasing and Mixup all drawn from the seeds).
    kinetics.run(config("resumed", stop_after=full.state.step // 2 + 1))
    kinetics.run(config("resumed"))
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))["model"]
    for name, value in checkpoint["model"].items():
        torch.testing.assert_close(value, resumed[name], msg=name)
    # A fine-tuning checkpoint is not a pretraining one: one line before the first step.
    wrong = kinetics.KineticsFinetuneConfig(chunked_sample, train_list, pretrained_checkpoint=latest_checkpoint(
        tmp_path / "full"), size="tiny", run=RunConfig(output_dir=tmp_path / "wrong", **run))  # fmt: skip
    with pytest.raises(AvtoolError, match="holds a videomae_classifier; fine-tuning starts from"):
        kinetics.run(wrong)

    out = subprocess.run([AVTOOL, "eval", "kinetics", str(latest_checkpoint(tmp_path / "full")),
                          str(chunked_sample), str(val_list), "--device", "cpu", "--workers", "0",
                          "--output", str(tmp_path / "eval")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 videos x 15 views = 45 views, 3 classes" in out.stdout and "majority class" in out.stdout
    result = json.loads(next((tmp_path / "eval").glob("*.eval-kinetics.json")).read_text())
    assert set(result["metrics"]) == {"top1", "top5"} and result["views_per_video"] == 15
    bad = subprocess.run([AVTOOL, "eval", "kinetics", str(mae), str(chunked_sample), str(val_list),
                          "--device", "cpu"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "needs an `avtool train kinetics` checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_checkpoint_model_record_avtool_did_not_write_is_one_error():
    from avtool.errors import AvtoolError
    from avtool.train.model_factory import model_config_dict, model_from_config_dict

    record = model_config_dict(VideoMAEClassifier(TINY, num_classes=3))
    assert isinstance(model_from_config_dict(record), VideoMAEClassifier)
    broken = [
        {**record, "kind": "gpt"},
        {**record, "config": {**record["config"], "evil": 1}},
        {k: v for k, v in record.items() if k != "num_classes"},
        {**record, "config": {**record["config"], "num_frames": 3}},  # not a whole number of tubelets
    ]
    for bad in broken:
        with pytest.raises(AvtoolError, match="model record .* is not one avtool writes"):
            model_from_config_dict(bad)
