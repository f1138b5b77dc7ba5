"""Losses on sentence embeddings (tasks whose teacher target is ``embedding``).

- ``embedding``: 1 - cos(student, label), where the label is the reference embedding of the text
  (``sentence-embedding`` labels every text with its teacher's embedding): the student learns
  the teacher's embeddings alone, the baseline that hidden-state distillation must beat.
- ``embedding-kd``: 1 - cos(student, teacher), the teacher run live or from its cache.

Averaged over the batch; a student of another width needs a projection in the model (cosine
compares directions of the same width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import LOSSES, Batch

EMBEDDING_TARGETS = ("embedding",)


def _cosine_distance(student: torch.Tensor, reference: torch.Tensor, what: str) -> torch.Tensor:
    if student.shape != reference.shape:
        raise ValueError(f"the student's embedding is {tuple(student.shape)}, the {what} {tuple(reference.shape)}: "
                         f"give the student the same width (or a projection to it)")
    return (1.0 - F.cosine_similarity(student.flatten(1), reference.flatten(1).to(student.dtype), dim=1)).mean()


@LOSSES.register("embedding")
class EmbeddingLoss(nn.Module):
    """1 - cosine to the reference embedding each text is labelled with."""

    needs, kind = "labels", "label"
    targets = EMBEDDING_TARGETS

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None:
            return batch.logits.sum() * 0.0
        return _cosine_distance(batch.logits, batch.labels, "reference embedding")


@LOSSES.register("embedding-kd")
class EmbeddingKDLoss(nn.Module):
    """1 - cosine to the teacher's embedding of the same text."""

    needs, kind = "teacher_logits", "logit"
    targets = EMBEDDING_TARGETS

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, batch: Batch) -> torch.Tensor:
        return _cosine_distance(batch.logits, batch.teacher.logits, "teacher's")
