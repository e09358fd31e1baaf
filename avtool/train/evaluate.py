"""EK-100 evaluation of trained models: multi-instance retrieval (mAP, nDCG) and action recognition
(verb / noun / action top-1), sharded over the ranks of a distributed run and gathered on all of them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from avtool.data import EK100CLS, EK100MIR, KineticsList
from avtool.models import DualEncoder, VideoClassifier
from avtool.train.distributed import DistEnv, gather_objects
from avtool.train.metrics import (
    ClassificationMetrics,
    RetrievalMetrics,
    classification_metrics,
    retrieval_metrics,
    similarity,
    top_k_accuracy,
)
from avtool.train.text import Tokenizer
from avtool.video.augment import AugmentConfig, augment_batch


def _shard_outputs(dataset: Dataset, env: DistEnv, batch_size: int, workers: int, compute: Any,
                   normalise: AugmentConfig | None = None) -> np.ndarray:  # fmt: skip
    """``compute(video batch)`` over this rank's share of ``dataset`` (every world_size-th clip), then
    every rank's rows gathered back into dataset order. Items of several views (V, T, H, W, 3) are computed
    view by view and averaged per item."""
    indices = list(range(env.rank, len(dataset), env.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=env.device.type == "cuda")  # fmt: skip
    rows = []
    for batch in loader:
        video = batch["video"].to(env.device, non_blocking=True)
        if video.dim() == 6:  # (B, V, T, H, W, 3): every view of the batch's items at once
            items, views = video.shape[:2]
            out = compute(augment_batch(video.flatten(0, 1), normalise)).float().reshape(items, views, -1).mean(1)
        else:
            out = compute(augment_batch(video, normalise)).float()
        rows.append(out.cpu().numpy())
    local = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    parts = gather_objects((indices, local), env)
    width = max(part[1].shape[1] for part in parts if part[1].size) if any(p[1].size for p in parts) else 0
    out = np.zeros((len(dataset), width), dtype=np.float32)
    for part_indices, part_rows in parts:
        if len(part_indices):
            out[part_indices] = part_rows
    return out


def embed_texts(model: DualEncoder, texts: list[str], batch_size: int, device: torch.device) -> np.ndarray:
    tokenize = Tokenizer(model.cfg.text.context_length)
    rows = [
        model.encode_text(tokenize(texts[i : i + batch_size]).to(device)).float().cpu().numpy()
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, model.cfg.embed_dim), dtype=np.float32)


@torch.no_grad()
def evaluate_mir(
    model: DualEncoder, dataset: EK100MIR, env: DistEnv, batch_size: int = 64, workers: int = 4
) -> RetrievalMetrics:
    """Embed every test clip and every test sentence, rank by (v·t + 1)/2, score against the relevancy
    matrix (V→T and T→V mAP and nDCG)."""
    video = _shard_outputs(dataset, env, batch_size, workers, model.encode_video)
    text = embed_texts(model, dataset.sentences, batch_size, env.device)
    return retrieval_metrics(similarity(video, text), dataset.relevancy)


@torch.no_grad()
def predict_actions(
    model: VideoClassifier, dataset: EK100CLS, env: DistEnv, batch_size: int = 64, workers: int = 4
) -> np.ndarray:
    """Softmax over the actions for every clip, (clips, actions)."""
    return _shard_outputs(dataset, env, batch_size, workers, lambda v: model(v).float().softmax(dim=-1))


def evaluate_cls(
    model: VideoClassifier, dataset: EK100CLS, env: DistEnv, batch_size: int = 64, workers: int = 4
) -> ClassificationMetrics:
    probs = predict_actions(model, dataset, env, batch_size, workers)
    labels = np.array([dataset.labels(i) for i in range(len(dataset))], dtype=np.int64).reshape(-1, 3)
    return classification_metrics(
        probs, dataset.action_verbs, dataset.action_nouns, labels[:, 1], labels[:, 2], labels[:, 0]
    )


def majority_class_accuracy(train: EK100CLS, test: EK100CLS) -> dict[str, float]:
    """Top-1 (percent) of always predicting the training set's most frequent action, verb and noun: the
    floor a trained classifier must beat."""
    train_labels = np.array([train.labels(i) for i in range(len(train))]).reshape(-1, 3)
    test_labels = np.array([test.labels(i) for i in range(len(test))]).reshape(-1, 3)
    out = {}
    for column, name in enumerate(("action_top1", "verb_top1", "noun_top1")):
        values, counts = np.unique(train_labels[:, column], return_counts=True)
        out[name] = float((test_labels[:, column] == values[counts.argmax()]).mean() * 100)
    return out


@torch.no_grad()
def predict_classes(
    model: nn.Module, dataset: KineticsList, env: DistEnv, batch_size: int = 32, workers: int = 4,
    normalise: AugmentConfig | None = None,
) -> np.ndarray:  # fmt: skip
    """(videos, classes): the softmax of each video, averaged over its views when the dataset gives several
    (VideoMAE's 5 clips × 3 crops); ``normalise``: the model's input statistics."""
    return _shard_outputs(dataset, env, batch_size, workers, lambda v: model(v).float().softmax(dim=-1), normalise)


def evaluate_kinetics(
    model: nn.Module, dataset: KineticsList, env: DistEnv, batch_size: int = 32, workers: int = 4,
    normalise: AugmentConfig | None = None,
) -> dict[str, float]:  # fmt: skip
    """Top-1 and top-5 (percent) of the view-averaged softmax against the list's labels."""
    probs = predict_classes(model, dataset, env, batch_size, workers, normalise)
    return top_k_accuracy(probs, dataset.labels, (1, 5))


def majority_label_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Top-1 (percent) of always predicting the training labels' most frequent class."""
    values, counts = np.unique(train_labels, return_counts=True)
    return float((test_labels == values[counts.argmax()]).mean() * 100) if len(test_labels) else 0.0
