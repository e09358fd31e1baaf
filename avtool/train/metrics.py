"""EK-100 retrieval and recognition metrics, as defined by the EPIC-Kitchens-100 MIR benchmark.

Ties in similarity are broken by candidate index (a stable sort) so that results are reproducible;
the official code's unstable sort may order tied candidates differently. Queries with no relevant
candidate have no defined AP or nDCG (the official code yields NaN); they are left out of the mean
and counted in ``skipped_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def similarity(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """S = (v·tᵀ + 1) / 2 on L2-normalised embeddings: clips × sentences, in [0, 1]."""
    v = video / np.linalg.norm(video, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    return (v @ t.T + 1) / 2


def _ranked_relevance(sim: np.ndarray, relevancy: np.ndarray) -> np.ndarray:
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.take_along_axis(relevancy, order, axis=1)


def average_precision(sim: np.ndarray, relevancy: np.ndarray) -> np.ndarray:
    """AP per query (row): mean over the ranks k holding a fully relevant item (relevance 1) of c_k / k,
    where c_k sums the relevance values of the top k. NaN for rows with no fully relevant item."""
    ranked = _ranked_relevance(sim, relevancy)
    cumulative = np.cumsum(ranked, axis=1)
    hits = ranked == 1
    ranks = np.arange(1, ranked.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hits, cumulative / ranks, 0).sum(axis=1) / hits.sum(axis=1)


def ndcg(sim: np.ndarray, relevancy: np.ndarray) -> np.ndarray:
    """nDCG per query over its top k_q = #{relevance > 0} ranks, gain = relevance, discount log2(i + 1),
    normalised by the ideal ordering. NaN for rows with no relevant item."""
    k = (relevancy > 0).sum(axis=1, keepdims=True)
    discounts = 1 / np.log2(np.arange(relevancy.shape[1]) + 2)
    in_top_k = np.arange(relevancy.shape[1])[None, :] < k

    def dcg(ranked: np.ndarray) -> np.ndarray:
        return (ranked * discounts * in_top_k).sum(axis=1)

    ideal = dcg(-np.sort(-relevancy, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return dcg(_ranked_relevance(sim, relevancy)) / ideal


@dataclass(frozen=True)
class RetrievalMetrics:
    map_v2t: float
    map_t2v: float
    ndcg_v2t: float
    ndcg_t2v: float
    clips: int
    sentences: int
    skipped_queries: int
    """Queries (either direction) without any relevant item, left out of the means."""

    @property
    def map_avg(self) -> float:
        return (self.map_v2t + self.map_t2v) / 2

    @property
    def ndcg_avg(self) -> float:
        return (self.ndcg_v2t + self.ndcg_t2v) / 2

    def to_dict(self) -> dict:
        return {
            "mAP_V2T": self.map_v2t, "mAP_T2V": self.map_t2v, "mAP_avg": self.map_avg,
            "nDCG_V2T": self.ndcg_v2t, "nDCG_T2V": self.ndcg_t2v, "nDCG_avg": self.ndcg_avg,
            "clips": self.clips, "sentences": self.sentences, "skipped_queries": self.skipped_queries,
        }  # fmt: skip


def retrieval_metrics(sim: np.ndarray, relevancy: np.ndarray) -> RetrievalMetrics:
    """EK-100 MIR metrics in percent from a clips × sentences similarity and relevancy matrix."""
    if sim.shape != relevancy.shape:
        raise ValueError(f"similarity {sim.shape} and relevancy {relevancy.shape} differ in shape")
    per_query = {
        "map_v2t": average_precision(sim, relevancy),
        "map_t2v": average_precision(sim.T, relevancy.T),
        "ndcg_v2t": ndcg(sim, relevancy),
        "ndcg_t2v": ndcg(sim.T, relevancy.T),
    }
    skipped = int(np.isnan(per_query["ndcg_v2t"]).sum() + np.isnan(per_query["ndcg_t2v"]).sum())
    means = {name: float(np.nanmean(values) * 100) if not np.isnan(values).all() else float("nan")
             for name, values in per_query.items()}  # fmt: skip
    return RetrievalMetrics(**means, clips=sim.shape[0], sentences=sim.shape[1], skipped_queries=skipped)


def chance_retrieval_metrics(relevancy: np.ndarray, trials: int = 100, seed: int = 0) -> RetrievalMetrics:
    """The metrics of random rankings averaged over ``trials``: the floor a trained model must beat."""
    rng = np.random.default_rng(seed)
    runs = [retrieval_metrics(rng.random(relevancy.shape), relevancy) for _ in range(trials)]
    means = {name: float(np.mean([getattr(r, name) for r in runs])) for name in ("map_v2t", "map_t2v", "ndcg_v2t",
                                                                                  "ndcg_t2v")}  # fmt: skip
    return RetrievalMetrics(**means, clips=runs[0].clips, sentences=runs[0].sentences,
                            skipped_queries=runs[0].skipped_queries)  # fmt: skip


@dataclass(frozen=True)
class ClassificationMetrics:
    verb_top1: float
    noun_top1: float
    action_top1: float
    clips: int

    def to_dict(self) -> dict:
        return {"verb_top1": self.verb_top1, "noun_top1": self.noun_top1, "action_top1": self.action_top1,
                "clips": self.clips}  # fmt: skip


def marginal_probabilities(action_probs: np.ndarray, action_to_class: np.ndarray, num_classes: int) -> np.ndarray:
    """Verb (or noun) probabilities as sums of the probabilities of the actions that contain them."""
    out = np.zeros((action_probs.shape[0], num_classes), dtype=action_probs.dtype)
    np.add.at(out.T, action_to_class, action_probs.T)
    return out


def classification_metrics(
    action_probs: np.ndarray,
    action_to_verb: np.ndarray,
    action_to_noun: np.ndarray,
    verb_labels: np.ndarray,
    noun_labels: np.ndarray,
    action_labels: np.ndarray,
) -> ClassificationMetrics:
    """EK-100 CLS top-1 accuracies in percent; verb and noun predictions are the argmax of the marginals
    of the action softmax (``action_probs``: clips × actions, rows summing to 1)."""
    verbs = marginal_probabilities(action_probs, action_to_verb, int(action_to_verb.max()) + 1)
    nouns = marginal_probabilities(action_probs, action_to_noun, int(action_to_noun.max()) + 1)
    return ClassificationMetrics(
        verb_top1=float((verbs.argmax(1) == verb_labels).mean() * 100),
        noun_top1=float((nouns.argmax(1) == noun_labels).mean() * 100),
        action_top1=float((action_probs.argmax(1) == action_labels).mean() * 100),
        clips=len(action_labels),
    )


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``top{k}`` (percent) for each k: the share of rows whose label is among their k highest scores (k capped
    at the number of classes)."""
    if len(labels) == 0:
        return {f"top{k}": 0.0 for k in ks}
    order = np.argsort(-probs, axis=1, kind="stable")
    return {f"top{k}": float((order[:, :k] == labels[:, None]).any(axis=1).mean() * 100) for k in ks}
