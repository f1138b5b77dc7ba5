"""How well a student's sentence embeddings stand in for its teacher's, on held-out text.

- ``cosine``: the cosine between the student's and the teacher's embedding of each text (mean and
  minimum); needs the same width (a projected student is compared through its projection).
- ``spearman``: Spearman's rank correlation between the two models' cosine similarities of every
  pair of texts: whether the student orders pairs as the teacher does, whatever its width.
- ``retrieval``: each text as a query against all the others: ``top1`` is the fraction whose
  nearest neighbour under the student is the teacher's nearest neighbour, ``recall@10`` the
  fraction whose teacher's nearest neighbour is among the student's ten nearest.

All in numpy, on (N, D) arrays; rows need not be normalized.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Row-wise cosine between two (N, D) arrays of the same width."""
    s, t = _unit(student), _unit(teacher)
    if s.shape != t.shape:
        raise ValueError(f"cosine needs embeddings of the same shape, got {s.shape} and {t.shape}")
    per_row = (s * t).sum(1)
    return {"cosine_mean": float(per_row.mean()), "cosine_min": float(per_row.min())}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as Spearman's rho needs)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    out = np.empty(len(values), np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        out[order[start:end]] = (start + end + 1) / 2.0
    return out


def spearman(student: np.ndarray, teacher: np.ndarray) -> float:
    """Spearman's rho between the pairwise cosine similarities of the two embeddings (N >= 3)."""
    s, t = _unit(student), _unit(teacher)
    if len(s) != len(t) or len(s) < 3:
        raise ValueError(f"spearman needs the same N >= 3 texts in both, got {len(s)} and {len(t)}")
    upper = np.triu_indices(len(s), 1)
    a, b = ranks((s @ s.T)[upper]), ranks((t @ t.T)[upper])
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def retrieval(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> dict[str, float]:
    """Nearest-neighbour agreement (see the module docstring); each text queries the others."""
    s, t = _unit(student), _unit(teacher)
    if len(s) != len(t) or len(s) < 2:
        raise ValueError(f"retrieval needs the same N >= 2 texts in both, got {len(s)} and {len(t)}")
    sim_s, sim_t = s @ s.T, t @ t.T
    np.fill_diagonal(sim_s, -np.inf)
    np.fill_diagonal(sim_t, -np.inf)
    target = sim_t.argmax(1)  # (N,) the teacher's nearest neighbour of each text
    k = min(k, len(s) - 1)
    top = np.argsort(-sim_s, axis=1, kind="stable")[:, :k]  # (N, k)
    return {"retrieval_top1": float((top[:, 0] == target).mean()),
            f"retrieval_recall@{k}": float((top == target[:, None]).any(1).mean())}


def embedding_metrics(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """All of them (``cosine`` only when the widths match)."""
    metrics = {"spearman": spearman(student, teacher), **retrieval(student, teacher)}
    if np.shape(student) == np.shape(teacher):
        metrics.update(cosine(student, teacher))
    return metrics


__all__ = ["cosine", "embedding_metrics", "ranks", "retrieval", "spearman"]
