"""Mixup / CutMix of whole clips and label smoothing (EK-100 CLS fine-tuning)."""

from __future__ import annotations

import math

import pytest
import torch

from avtool.train.mixup import MixupConfig, mix_batch, smooth_one_hot, soft_cross_entropy


def test_smoothed_targets_sum_to_one_and_peak_on_the_label():
    targets = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    torch.testing.assert_close(targets.sum(1), torch.ones(2))
    assert targets[0, 2] == pytest.approx(0.9 + 0.025) and targets[0, 0] == pytest.approx(0.025)


def test_mixup_blends_clips_and_targets_with_the_same_coefficient():
    torch.manual_seed(0)
    video = torch.stack([torch.zeros(3, 2, 8, 8), torch.ones(3, 2, 8, 8)])
    mixed, targets = mix_batch(video, torch.tensor([0, 1]), 2, MixupConfig(cutmix_alpha=0, label_smoothing=0))
    lam = 1 - mixed[0].mean().item()  # clip 0 (zeros) mixed with clip 1 (ones) at weight 1 - lam
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 1 - lam))
    torch.testing.assert_close(targets[0], torch.tensor([lam, 1 - lam]))


def test_cutmix_pastes_one_box_in_every_frame_and_weights_targets_by_its_area():
    torch.manual_seed(1)
    video = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    mixed, targets = mix_batch(video, torch.tensor([0, 1]), 2, MixupConfig(mixup_alpha=0, label_smoothing=0))
    pasted = mixed[0, 0]  # channel 0, all frames
    assert all(torch.equal(pasted[t], pasted[0]) for t in range(4))
    area = pasted[0].mean().item()
    torch.testing.assert_close(targets[0], torch.tensor([1 - area, area]))


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets():
    logits = torch.randn(5, 7)
    labels = torch.randint(0, 7, (5,))
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(soft_cross_entropy(logits, smooth_one_hot(labels, 7, 0.1)), expected)
    assert soft_cross_entropy(torch.zeros(1, 4), smooth_one_hot(torch.tensor([1]), 4, 0.0)).item() == pytest.approx(
        math.log(4)
    )
