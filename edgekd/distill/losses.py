"""Distillation and label losses, registered by name.

- ``kd``: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".
  With teacher logits t, student logits s and temperature T,
      L_kd = T^2 * KL( softmax(t / T) || softmax(s / T) )
  averaged over the batch. The T^2 factor keeps gradient magnitudes comparable across T.
- ``ce``: cross-entropy with the ground-truth labels (the "hard" target).

Every loss takes ``(student_logits, teacher_logits, labels)`` and returns a scalar tensor, so the
objective can weight and log each term separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.registry import Registry

LOSSES: Registry = Registry("loss")


def list_losses() -> list[str]:
    return LOSSES.names()


@LOSSES.register("kd")
class HintonKDLoss(nn.Module):
    """T^2 * KL(teacher_T || student_T) on temperature-softened logits."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student / t, dim=1)  # (N, K)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)  # (N, K)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * t * t


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy with the labels; ignores the teacher."""

    needs_teacher = False

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student, labels)
