import math

import numpy as np
import pytest

from avtool.train.metrics import average_precision, ndcg, retrieval_metrics, similarity


def test_average_precision_hand_computed():
    # Ranking by similarity: candidates 2, 0, 3, 1 with relevance 1, 0.5, 1, 0.
    sim = np.array([[0.8, 0.1, 0.9, 0.3]])
    rel = np.array([[0.5, 0.0, 1.0, 1.0]])
    # c_k: 1, 1.5, 2.5, 2.5; fully relevant at k=1 and k=3 -> AP = (1/1 + 2.5/3) / 2
    assert average_precision(sim, rel)[0] == pytest.approx((1 + 2.5 / 3) / 2)


def test_ties_are_broken_by_candidate_index():
    sim = np.array([[0.5, 0.5, 0.5]])
    rel = np.array([[0.0, 1.0, 0.0]])
    # Stable order 0, 1, 2: the relevant item is second -> AP = 1/2
    assert average_precision(sim, rel)[0] == pytest.approx(0.5)


def test_ndcg_hand_computed():
    sim = np.array([[0.8, 0.1, 0.9, 0.3]])
    rel = np.array([[0.5, 0.0, 1.0, 1.0]])
    # k = 3 relevant items; ranking gains 1, 0.5, 1 -> DCG = 1/log2(2) + 0.5/log2(3) + 1/log2(4)
    dcg = 1 + 0.5 / math.log2(3) + 1 / 2
    ideal = 1 + 1 / math.log2(3) + 0.5 / 2
    assert ndcg(sim, rel)[0] == pytest.approx(dcg / ideal)


def test_perfect_ranking_scores_100_and_rows_without_relevant_items_are_skipped():
    rel = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    sim = rel + np.array([0.0, -0.01, -0.02])  # sorts exactly as the relevance does
    m = retrieval_metrics(sim, rel)
    assert m.map_v2t == pytest.approx(100) and m.ndcg_v2t == pytest.approx(100)
    # Row 2 and column 2 have no relevant item: skipped in both directions.
    assert m.skipped_queries == 2 and (m.clips, m.sentences) == (3, 3)
    assert m.to_dict()["mAP_avg"] == pytest.approx((m.map_v2t + m.map_t2v) / 2)


def test_random_scores_are_near_chance_and_similarity_is_in_unit_range():
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(200, 8)), rng.normal(size=(50, 8))
    sim = similarity(v, t)
    assert sim.min() >= 0 and sim.max() <= 1
    rel = (rng.random((200, 50)) < 0.1).astype(float)
    m = retrieval_metrics(sim, rel)
    assert 5 < m.map_v2t < 25  # chance AP is about the 10% positive rate


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((3, 2)))


def test_verb_and_noun_come_from_the_marginals_not_the_top_action():
    from avtool.train.metrics import classification_metrics

    # Actions: 0 = (verb 0, noun 0), 1 = (verb 1, noun 0), 2 = (verb 1, noun 1)
    action_to_verb, action_to_noun = np.array([0, 1, 1]), np.array([0, 0, 1])
    # The top action is 0 (verb 0), but verb 1 has 0.6 of the mass.
    probs = np.array([[0.4, 0.3, 0.3]])
    m = classification_metrics(probs, action_to_verb, action_to_noun, np.array([1]), np.array([0]), np.array([0]))
    assert (m.verb_top1, m.noun_top1, m.action_top1, m.clips) == (100.0, 100.0, 100.0, 1)
    m = classification_metrics(probs, action_to_verb, action_to_noun, np.array([0]), np.array([1]), np.array([2]))
    assert (m.verb_top1, m.noun_top1, m.action_top1) == (0.0, 0.0, 0.0)
