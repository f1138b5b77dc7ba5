"""Losses on sentence embeddings (tasks whose teacher target is ``embedding``).

- ``embedding``: 1 - cos(student, label), where the label is the reference embedding of the text
  (``sentence-embedding`` labels every text with its teacher's embedding): the student learns
  the teacher's embeddings alone, the baseline that hidden-state distillation must beat.
- ``embedding-kd``: 1 - cos(student, teacher), the teacher run live or from its cache.

Averaged over the batch; a student of another width needs a projection in the model (cosine
compares directions of the same width).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import LOSSES, Batch

EMBEDDING_TARGETS = ("embedding",)


class _CosineDistance(nn.Module, abc.ABC):
    """1 - cos(student, reference), averaged over the batch; ``reference`` picks what to compare with."""

    targets = EMBEDDING_TARGETS
    what = "reference"

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    @abc.abstractmethod
    def reference(self, batch: Batch) -> torch.Tensor | None:
        """The embedding to compare the student's with (None: nothing in this batch)."""

    def forward(self, batch: Batch) -> torch.Tensor:
        reference, student = self.reference(batch), batch.logits
        if reference is None:
            return student.sum() * 0.0
        if student.shape != reference.shape:
            raise ValueError(f"the student's embedding is {tuple(student.shape)}, the {self.what} "
                             f"{tuple(reference.shape)}: give the student the same width (or a projection to it)")
        cos = F.cosine_similarity(student.flatten(1), reference.flatten(1).to(student.dtype), dim=1)
        return (1.0 - cos).mean()


@LOSSES.register("embedding")
class EmbeddingLoss(_CosineDistance):
    """1 - cosine to the reference embedding each text is labelled with."""

    needs, kind, what = "labels", "label", "reference embedding"

    def reference(self, batch: Batch) -> torch.Tensor | None:
        return batch.labels


@LOSSES.register("embedding-kd")
class EmbeddingKDLoss(_CosineDistance):
    """1 - cosine to the teacher's embedding of the same text."""

    needs, kind, what = "teacher_logits", "logit", "teacher's"

    def reference(self, batch: Batch) -> torch.Tensor | None:
        return batch.teacher.logits
