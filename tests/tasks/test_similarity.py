"""Sentence-embedding agreement metrics, against scipy's Spearman and by construction."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.tasks.similarity import cosine, embedding_metrics, ranks, retrieval, spearman


def _embeddings(n=200, d=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_identical_and_rotated_embeddings_agree_fully():
    t = _embeddings()
    same = embedding_metrics(t, t)
    assert same == pytest.approx({"spearman": 1.0, "retrieval_top1": 1.0, "retrieval_recall@10": 1.0,
                                  "cosine_mean": 1.0, "cosine_min": 1.0})
    rotation, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((32, 32)))
    rotated = embedding_metrics(t @ rotation * 3.0, t)  # a rotation and a scale keep every similarity
    assert rotated["spearman"] == pytest.approx(1.0) and rotated["retrieval_top1"] == 1.0
    assert rotated["cosine_mean"] < 0.5  # but not the embeddings themselves


def test_unrelated_embeddings_do_not_agree():
    m = embedding_metrics(_embeddings(seed=2), _embeddings(seed=3))
    assert abs(m["spearman"]) < 0.1 and m["retrieval_top1"] < 0.05 and m["retrieval_recall@10"] < 0.2


def test_noise_lowers_the_metrics_in_order():
    t = _embeddings()
    rng = np.random.default_rng(4)
    small, large = (embedding_metrics(t + rng.standard_normal(t.shape) * s, t) for s in (0.2, 1.0))
    assert 1.0 > small["spearman"] > large["spearman"] > 0.3
    assert small["retrieval_recall@10"] >= large["retrieval_recall@10"]
    assert small["retrieval_top1"] <= small["retrieval_recall@10"]


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    s, t = _embeddings(40, 8, 5), _embeddings(40, 8, 6)
    upper = np.triu_indices(40, 1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = stats.spearmanr((unit(s) @ unit(s).T)[upper], (unit(t) @ unit(t).T)[upper]).statistic
    assert spearman(s, t) == pytest.approx(expected, abs=1e-12)
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_a_different_width_is_compared_by_similarities_only():
    t = _embeddings(50, 32)
    narrow = t[:, :16]
    m = embedding_metrics(narrow, t)
    assert "cosine_mean" not in m and 0 < m["spearman"] < 1
    with pytest.raises(ValueError, match="same shape"):
        cosine(narrow, t)
    with pytest.raises(ValueError, match="N >= 2"):
        retrieval(t[:1], t[:1])
