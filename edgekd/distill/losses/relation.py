"""MiniLM's self-attention losses: the student copies how the teacher's tokens attend to each other.

Wang, Wei, Dong, Bao, Yang & Zhou 2020, "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers". Both losses name a self-attention module
(``encoder.layer.5.attention.self``, Hugging Face's and edgekd's path) on each side and read the
outputs of its ``query``, ``key`` and ``value`` projections through the feature hooks, so they
work on any BERT-style model whose projections are modules (fused SDPA kernels never expose the
attention probabilities, but they always call the projections), float or int8-simulated.

With A_h, B_h the h-th head's slice of two projections of one sequence, (L, d) each,

    R_h(A, B) = softmax(A_h B_h^T / sqrt(d))     # (L, L): one distribution over keys per token
    L = mean over heads h and real tokens i of KL(R_t[h, i] || R_s[h, i])

- ``attention-kl``: R(Q, K), the attention distributions themselves (MiniLM's first loss).
- ``value-relation``: R(V, V), the scaled dot products among values (its second loss).

Padding tokens are never attended to (their columns are masked, as the model masks them) and
their rows are not averaged (``Batch.positions``). ``heads`` is the number of heads both sides are
split into; it must divide both widths. Set it to the models' attention heads (12 for BERT-base
and MiniLM) and ``attention-kl`` is exactly KL between the two models' attention maps; with
other counts the losses are MiniLMv2's relation heads (Wang et al. 2021), which lets a student
with fewer heads learn from its teacher. The paper distils the last block of each (student's last
from teacher's last) with weight 1 on each loss; the student and teacher widths may differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from edgekd.distill.losses import LOSSES, Batch
from edgekd.distill.losses.feature import FeatureLoss, _first_tensor
from edgekd.errors import ConfigError


class SelfAttentionRelationLoss(FeatureLoss):
    """KL between the teacher's and the student's relation between two projections (module docstring)."""

    projections: tuple[str, str] = ("query", "key")

    def __init__(self, student: str, teacher: str, temperature: float = 1.0, heads: int = 12):
        super().__init__(student, teacher)
        if int(heads) != heads or heads < 1:
            raise ValueError(f"heads must be a positive whole number, got {heads}")
        self.heads = int(heads)

    @classmethod
    def taps(cls, path: str) -> list[str]:
        return [f"{path}.{name}" for name in dict.fromkeys(cls.projections)]

    def gather(self, features: Mapping, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.student_path if side == "student" else self.teacher_path
        paths = [f"{base}.{name}" for name in self.projections]
        return tuple(_first_tensor(features[p], side, p) for p in paths)

    def prepare(self, student_feature, teacher_feature) -> None:
        for side, (a, _), base in (("student", student_feature, self.student_path),
                                   ("teacher", teacher_feature, self.teacher_path)):
            if a.dim() != 3 or a.shape[-1] % self.heads:
                raise self._error(f"the {side}'s {base}.{self.projections[0]} gives {tuple(a.shape)}; "
                                  f"expected (N, L, D) token states with D divisible by heads={self.heads} "
                                  f"(name a self-attention module whose query/key/value are Linear layers, "
                                  f"or set options: {{heads: ...}})")
        s, t = student_feature[0], teacher_feature[0]
        if s.shape[:2] != t.shape[:2]:
            raise self._error(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in batch "
                              f"size or sequence length")
        self.prepared = True

    def forward(self, batch: Batch) -> torch.Tensor:
        s = self.gather(batch.features, "student")
        t = tuple(x.detach() for x in self.gather(batch.teacher_features, "teacher"))
        if not self.prepared:
            self.prepare(s, t)
        real = batch.positions  # (N, L) bool, or None: every token is real

        def rows(log_relation):  # (N, heads, L, L) -> (M, heads, L): the real tokens' distributions
            by_token = log_relation.transpose(1, 2)
            return by_token[real] if real is not None else by_token.flatten(0, 1)

        return self.compare(rows(self._log_relation(*s, real)), rows(self._log_relation(*t, real)))

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean KL(teacher || student) of (M, heads, L) log-distributions. A padded key has the
        lowest float as its log-probability on both sides: it adds 0 * 0."""
        return (teacher.exp() * (teacher - student)).sum(-1).mean()

    def _log_relation(self, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        n, length, width = a.shape
        size = width // self.heads

        def split(x):  # (N, L, D) -> (N, heads, L, size)
            return x.reshape(n, length, self.heads, size).transpose(1, 2)

        scores = split(a) @ split(b).transpose(-1, -2) / math.sqrt(size)       # (N, heads, L, L)
        if real is not None:
            scores = scores.masked_fill(~real[:, None, None, :], torch.finfo(scores.dtype).min)
        return scores.log_softmax(-1)

    def _error(self, why: str) -> ConfigError:
        return ConfigError(f"loss {self.name!r} ({self.student_path!r} -> {self.teacher_path!r}): {why}")


@LOSSES.register("attention-kl")
class AttentionKLLoss(SelfAttentionRelationLoss):
    """MiniLM's attention-distribution loss: KL of softmax(Q K^T / sqrt(d)) per head and token."""

    name = "attention-kl"
    projections = ("query", "key")


@LOSSES.register("value-relation")
class ValueRelationLoss(SelfAttentionRelationLoss):
    """MiniLM's value-relation loss: KL of softmax(V V^T / sqrt(d)) per head and token."""

    name = "value-relation"
    projections = ("value", "value")
