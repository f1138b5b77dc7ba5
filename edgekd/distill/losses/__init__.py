"""Distillation and label losses: one registry, one calling convention.

Every loss is an ``nn.Module`` called with a ``Batch`` (student logits and features, labels,
what the teacher provided) and returning a scalar tensor, so the objective can weight, schedule
and log each term separately. Class attributes say what a loss needs:

- ``needs``: "teacher_logits" (the teacher's full logits), "teacher_output" (logits, top-k
  probabilities or labels: black-box teachers), "features" (student and teacher features at
  module paths), "labels" (ground truth) or nothing;
- ``kind``: "logit", "feature" or "label", for reports;
- ``targets``: the task targets (``Task.teacher_target``) a loss reads, e.g. ("detection",);
  absent: any.

Logit losses live in ``logit.py``, feature losses in ``feature.py``, detection-head losses in
``detection.py``, sentence-embedding losses in ``embedding.py``, MiniLM's self-attention losses in ``relation.py``; importing this package
registers them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from edgekd.registry import Registry

LOSSES: Registry = Registry("loss")


def list_losses() -> list[str]:
    return LOSSES.names()


@dataclass
class TeacherOutput:
    """What a teacher gave for one batch: full logits, top-k probabilities, or only labels."""

    kind: Literal["logits", "topk", "labels"]
    logits: torch.Tensor | None = None        # (N, K)
    probs: torch.Tensor | None = None         # (N, k) top-k probabilities, descending
    indices: torch.Tensor | None = None       # (N, k) their classes; (N,) labels for "labels"


@dataclass
class Batch:
    """Everything a loss may read for one training batch."""

    logits: torch.Tensor                       # student (N, K)
    labels: torch.Tensor | None = None         # (N,); -1 marks an unlabelled sample
    teacher: TeacherOutput | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)          # student, by path
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher, by path
    class_dim: int = -1  # the task's class axis: logits (N, K) or per-token (N, L, V)
    positions: torch.Tensor | None = None  # (N, L) bool: the real tokens of a text batch (None: every position)

    def classes_last(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with the class axis last and every other axis flattened: one row per
        prediction, so a logit loss reads (N, K) and (N, L, V) alike.  # (..., K) -> (M, K)"""
        t = t.movedim(self.class_dim, -1)
        return t.reshape(-1, t.shape[-1])

    def flat_labels(self) -> torch.Tensor | None:
        """Labels with one entry per row of ``classes_last``.  # (M,)"""
        return None if self.labels is None else self.labels.reshape(-1)


from edgekd.distill.losses import detection, embedding, feature, logit, relation  # noqa: F401  (register the losses)

__all__ = ["LOSSES", "Batch", "TeacherOutput", "list_losses"]
