"""Logit losses: KD, DKD, MSE on logits, and cross-entropy with the labels.

- ``kd``: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".
  With teacher logits t, student logits s and temperature T,
      L_kd = T^2 * KL( softmax(t / T) || softmax(s / T) )
  averaged over the batch; T^2 keeps gradient magnitudes comparable across T. From a black-box
  teacher that returns only top-k probabilities p_1..p_k, the distributions are reduced to k + 1
  buckets (the k classes and "the rest", teacher mass 1 - sum p) at the teacher's own
  temperature: L = KL([p, 1 - sum p] || [q_topk, 1 - sum q_topk]). From one that returns only
  labels, L = CE(s, teacher label) (hard-label distillation).
- ``dkd``: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation". With b the
  binary (target, rest) probabilities and p-hat the distribution over non-target classes,
      L_dkd = alpha * T^2 * KL(b_t || b_s) + beta * T^2 * KL(p-hat_t || p-hat_s)
  (TCKD + NCKD). The target is the label, or the teacher's top-1 class for unlabelled samples.
- ``mse``: mean squared error between student and teacher logits (Ba & Caruana 2014).
- ``ce``: cross-entropy with the ground-truth labels over the labelled samples of the batch.

The class axis comes from the task (``Batch.class_dim``): per-token logits (N, L, V) are read as
N*L rows of V classes (``Batch.classes_last``), so "batchmean" averages over every prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import LOSSES, Batch

CLASS_TARGETS = ("class_logits", "token_logits")  # the tasks whose outputs are class logits


@LOSSES.register("kd")
class HintonKDLoss(nn.Module):
    """T^2 * KL(teacher_T || student_T); adapted to top-k or label-only teachers."""

    needs, kind = "teacher_output", "logit"
    targets = CLASS_TARGETS

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        teacher, s = batch.teacher, batch.classes_last(batch.logits)  # (M, K)
        if teacher.kind == "labels":
            return F.cross_entropy(s, teacher.indices.reshape(-1))
        if teacher.kind == "topk":
            k = teacher.probs.shape[-1]
            return _topk_kl(s, teacher.probs.reshape(-1, k), teacher.indices.reshape(-1, k))
        t = self.temperature
        log_p_student = F.log_softmax(s / t, dim=1)                                     # (M, K)
        log_p_teacher = F.log_softmax(batch.classes_last(teacher.logits) / t, dim=1)   # (M, K)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * t * t


def _topk_kl(student: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """KL over k + 1 buckets: the teacher's top-k classes and everything else."""
    eps = 1e-8
    q = F.softmax(student, dim=1).gather(1, indices)                               # (N, k)
    p_rest = (1 - probs.sum(1, keepdim=True)).clamp_min(eps)                        # (N, 1)
    q_rest = (1 - q.sum(1, keepdim=True)).clamp_min(eps)
    p = torch.cat([probs.clamp_min(eps), p_rest], 1)                                # (N, k+1)
    log_q = torch.cat([q.clamp_min(eps), q_rest], 1).log()
    return (p * (p.log() - log_q)).sum(1).mean()


@LOSSES.register("dkd")
class DecoupledKDLoss(nn.Module):
    """alpha * TCKD + beta * NCKD (Zhao et al. 2022), both at temperature T, scaled by T^2."""

    needs, kind = "teacher_logits", "logit"
    targets = CLASS_TARGETS

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
        super().__init__()
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def forward(self, batch: Batch) -> torch.Tensor:
        s, t_logits = batch.classes_last(batch.logits), batch.classes_last(batch.teacher.logits)  # (M, K)
        T = self.temperature
        target = t_logits.argmax(1)  # unlabelled samples: the teacher's top-1 class
        labels = batch.flat_labels()
        if labels is not None:
            target = torch.where(labels >= 0, labels.clamp_min(0), target)
        gt = F.one_hot(target, s.shape[1]).bool()                                  # (N, K)
        p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t_logits / T, dim=1)
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1).clamp_min(1e-8)  # (N, 2)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1).clamp_min(1e-8)
        tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * T * T
        masked = 1000.0 * gt  # remove the target class from both distributions
        log_q = F.log_softmax(s / T - masked, dim=1)
        log_p = F.log_softmax(t_logits / T - masked, dim=1)
        nckd = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * T * T
        return self.alpha * tckd + self.beta * nckd


@LOSSES.register("mse")
class LogitMSELoss(nn.Module):
    """mean((s - t)^2) over batch and classes (logit matching, Ba & Caruana 2014)."""

    needs, kind = "teacher_logits", "logit"

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, batch: Batch) -> torch.Tensor:
        return F.mse_loss(batch.logits, batch.teacher.logits)  # elementwise: any class axis


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy with the labels, over the labelled samples (0 when the batch has none)."""

    needs, kind = "labels", "label"
    targets = CLASS_TARGETS

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None:
            return batch.logits.sum() * 0.0
        labels = batch.flat_labels()  # (M,)
        # ignore_index skips unlabelled (-1) samples; a batch without labels gives 0, not NaN
        loss = F.cross_entropy(batch.classes_last(batch.logits), labels, ignore_index=-1, reduction="sum")
        return loss / (labels >= 0).sum().clamp_min(1)
