"""Detection losses on a dense head's joined outputs (N, A, 4 + K): boxes ``[x1, y1, x2, y2]``
in pixels and sigmoid class scores per anchor point (``edgekd.tasks.detection``).

- ``detection``: the ground-truth loss of an anchor-free one-stage detector. An anchor point is
  positive for a box when it lies inside the box (FCOS: Tian et al. 2019, "FCOS: Fully
  Convolutional One-Stage Object Detection"), and so is the point nearest to its centre (a box
  smaller than the finest stride holds none); a point inside several boxes takes the smallest. With B = binary cross-entropy over every (point,
  class) against the one-hot class of positives, and GIoU (Rezatofighi et al. 2019),
      L = [ sum BCE(p, onehot) + 2 * sum_pos (1 - GIoU(box, gt)) ] / #positives
  over the labelled images of the batch (an image whose label rows are all -1 has no labels).
- ``detection-kd``: the teacher's head as soft targets on every point (Chen et al. 2017,
  "Learning Efficient Object Detection Models with Knowledge Distillation": soft class targets
  plus regression towards the teacher). With teacher scores q and student scores p, softened at
  temperature T in logit space (p_T = sigmoid(logit(p) / T)), and w = max_k q the teacher's
  confidence at a point,
      L = [ T^2 * sum KL_bernoulli(q_T || p_T) + 2 * sum w * (1 - GIoU(box_s, box_t)) ] / sum w
  so boxes are pulled towards the teacher's only where the teacher sees an object. A teacher
  whose head has other anchor points (a YOLO teacher at strides 8/16/32 for a student at 4/8)
  is read at each student point from its nearest point (the finest stride on ties): boxes are
  in image pixels, so the teacher's box there is the object it sees near that point.

Both read the anchor points from the task (``bind``), because a head's outputs do not carry them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import LOSSES, Batch

BOX_WEIGHT = 2.0
EPS = 1e-6


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of boxes ``a`` and ``b`` elementwise.  # (..., 4), (..., 4) -> (...)"""
    area = lambda x: (x[..., 2] - x[..., 0]).clamp_min(0) * (x[..., 3] - x[..., 1]).clamp_min(0)  # noqa: E731
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area(a) + area(b) - inter
    hull_lt, hull_rb = torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])
    hull = (hull_rb - hull_lt).clamp_min(0).prod(-1)
    iou = inter / union.clamp_min(EPS)
    return iou - (hull - union) / hull.clamp_min(EPS)


class _HeadLoss(nn.Module):
    """A loss that needs the task's anchor points (given by ``bind`` before training)."""

    targets = ("detection",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self._task, self._image_size, self._anchors = None, None, None

    def bind(self, task, data) -> None:
        self._task, self._image_size = task, tuple(data.input_shape[-2:])
        self._anchors = None

    def anchors(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor centres (A, 2) and strides (A,) of the head that gave ``outputs`` (N, A, 4 + K)."""
        if self._task is None:
            from edgekd.errors import ConfigError

            raise ConfigError(f"loss {type(self).__name__} is used outside a detection run: call "
                              f"bind(task, data) first (the trainer does)")
        if self._anchors is None or len(self._anchors[0]) != outputs.shape[1]:
            self._anchors = self._task.anchor_points(outputs.shape[1], self._image_size)
        return tuple(t.to(outputs.device) for t in self._anchors)


@LOSSES.register("detection")
class DetectionLoss(_HeadLoss):
    """Ground-truth loss: BCE on class scores + GIoU on the boxes of positive points."""

    needs, kind = "labels", "label"

    def forward(self, batch: Batch) -> torch.Tensor:
        out, labels = batch.logits, batch.labels  # (N, A, 4 + K), (N, M, 5)
        if labels is None:
            return out.sum() * 0.0
        labelled = (labels[..., 0] >= 0).any(-1)  # (N,)
        if not labelled.any():
            return out.sum() * 0.0
        out, labels = out[labelled], labels[labelled]
        centres, strides = self.anchors(out)  # (A, 2), (A,)
        boxes, scores = out[..., :4], out[..., 4:]  # (N, A, 4), (N, A, K)
        gt_cls, gt_box = labels[..., 0], labels[..., 1:].float()  # (N, M), (N, M, 4)
        valid = gt_cls >= 0  # (N, M)
        cx, cy = centres[:, 0], centres[:, 1]  # (A,)
        inside = ((cx > gt_box[..., 0, None]) & (cx < gt_box[..., 2, None])
                  & (cy > gt_box[..., 1, None]) & (cy < gt_box[..., 3, None]))  # (N, M, A)
        gt_centre = (gt_box[..., :2] + gt_box[..., 2:]) / 2  # (N, M, 2)
        distance = (centres[None, None] - gt_centre[..., None, :]).norm(dim=-1)  # (N, M, A)
        nearest = F.one_hot(distance.argmin(-1), centres.shape[0]).bool()  # (N, M, A)
        candidate = (inside | nearest) & valid[..., None]
        area = ((gt_box[..., 2] - gt_box[..., 0]) * (gt_box[..., 3] - gt_box[..., 1]))  # (N, M)
        cost = torch.where(candidate, area[..., None], torch.full_like(distance, float("inf")))
        owner = cost.argmin(1)  # (N, A): the smallest box a point lies in
        positive = candidate.any(1)  # (N, A)
        k = scores.shape[-1]
        owner_cls = gt_cls.gather(1, owner).clamp_min(0)  # (N, A)
        target = F.one_hot(owner_cls, k).float() * positive[..., None]  # (N, A, K)
        num_pos = positive.sum().clamp_min(1)
        cls_loss = F.binary_cross_entropy(scores.float().clamp(EPS, 1 - EPS), target, reduction="sum")
        owner_box = gt_box.gather(1, owner[..., None].expand(-1, -1, 4))  # (N, A, 4)
        box_loss = (1 - giou(boxes[positive], owner_box[positive])).sum()
        return (cls_loss + BOX_WEIGHT * box_loss) / num_pos


@LOSSES.register("detection-kd")
class DetectionKDLoss(_HeadLoss):
    """The teacher's scores as soft targets on every point, its boxes where it is confident."""

    needs, kind = "teacher_logits", "logit"

    def forward(self, batch: Batch) -> torch.Tensor:
        out, teacher = batch.logits, batch.teacher.logits.to(batch.logits.dtype)  # (N, A, 4 + K), (N, A_t, 4 + K)
        if teacher.shape[-1] != out.shape[-1] or teacher.shape[0] != out.shape[0]:
            from edgekd.errors import ConfigError

            raise ConfigError(f"detection-kd: the teacher's head gives {tuple(teacher.shape[1:])} per image and the "
                              f"student's {tuple(out.shape[1:])}; teacher and student need the same classes")
        if teacher.shape[1] != out.shape[1]:
            teacher = teacher[:, self._nearest(out, teacher)]  # (N, A, 4 + K): the teacher at the student's points
        t = float(self.temperature)
        p = _soften(out[..., 4:], t)
        q = _soften(teacher[..., 4:], t).detach()
        kl = q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())  # (N, A, K)
        weight = teacher[..., 4:].max(-1).values.detach()  # (N, A)
        norm = weight.sum().clamp_min(1)
        box_loss = (weight * (1 - giou(out[..., :4], teacher[..., :4].detach()))).sum()
        return (t * t * kl.sum() + BOX_WEIGHT * box_loss) / norm

    def _nearest(self, out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """For each of the student's anchor points, the index of the teacher's nearest one.  # (A,)"""
        key = (out.shape[1], teacher.shape[1])
        if getattr(self, "_nearest_key", None) != key:
            student_points, _ = self.anchors(out)
            teacher_points, _ = self._task.anchor_points(teacher.shape[1], self._image_size)
            self._nearest_index = torch.cdist(student_points, teacher_points).argmin(1)  # first = finest stride
            self._nearest_key = key
        return self._nearest_index.to(out.device)


def _soften(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at ``temperature`` in logit space, kept off 0 and 1."""
    p = p.float().clamp(EPS, 1 - EPS)
    if temperature != 1.0:
        p = torch.sigmoid(torch.logit(p) / temperature)
    return p.clamp(EPS, 1 - EPS)
