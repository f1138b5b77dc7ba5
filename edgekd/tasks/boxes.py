"""Boxes in numpy: IoU, per-class non-maximum suppression, average precision, and how well two
detectors agree. The detection task's metrics and its runtime-vs-PyTorch agreement both read
these, so an exported head is judged with exactly the post-processing the PyTorch model gets.

Boxes are ``[x1, y1, x2, y2]`` in pixels. A detection is (box, score, class). Average precision is
the area under the all-point interpolated precision/recall curve (PASCAL VOC 2010+; Everingham et
al. 2010), at IoU 0.5, averaged over the classes that have ground truth (mAP@0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections after NMS, highest score first."""

    boxes: np.ndarray   # (D, 4) xyxy
    scores: np.ndarray  # (D,)
    classes: np.ndarray  # (D,) int

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, conf: float) -> Detections:
        """Those scoring above ``conf``: what ``detect`` keeps at that threshold (greedy NMS is
        only ever suppressed by higher scores)."""
        keep = self.scores > conf
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (P, 4) with every box of ``b`` (Q, 4).  # (P, Q)"""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (P, Q, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        if len(order):
            order = order[iou_matrix(boxes[i], boxes[order])[0] <= iou]
    return np.asarray(keep, np.int64)


def detect(boxes: np.ndarray, scores: np.ndarray, *, conf: float, iou: float, max_det: int) -> Detections:
    """One image's head outputs (A, 4) boxes and (A, K) class scores -> detections: every
    (anchor, class) pair scoring above ``conf``, suppressed per class at ``iou``."""
    anchor, cls = np.nonzero(scores > conf)  # (P,), (P,)
    keep_boxes, keep_scores, keep_classes = [], [], []
    for c in np.unique(cls):
        sel = anchor[cls == c]
        b, s = boxes[sel], scores[sel, c]
        kept = nms(b, s, iou)
        keep_boxes.append(b[kept])
        keep_scores.append(s[kept])
        keep_classes.append(np.full(len(kept), c, np.int64))
    if not keep_scores:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    b, s, c = np.concatenate(keep_boxes), np.concatenate(keep_scores), np.concatenate(keep_classes)
    order = np.argsort(-s, kind="stable")[:max_det]
    return Detections(b[order], s[order], c[order])


def matches(a: Detections, b: Detections, iou: float) -> int:
    """How many detections of ``a`` find a detection of ``b`` of the same class at IoU >= ``iou``
    (greedy by ``a``'s score, each of ``b`` matched once)."""
    if not len(a) or not len(b):
        return 0
    overlap = iou_matrix(a.boxes, b.boxes) * (a.classes[:, None] == b.classes[None, :])  # (Da, Db)
    used = np.zeros(len(b), bool)
    found = 0
    for i in range(len(a)):  # a is sorted by score
        cand = np.where(used, -1.0, overlap[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            used[j] = True
            found += 1
    return found


def agreement(a: list[Detections], b: list[Detections], iou: float) -> float:
    """Dice agreement of two detectors over images: 2 * matched / (|a| + |b|); 1 when neither
    detects anything."""
    found = sum(matches(x, y, iou) for x, y in zip(a, b))
    total = sum(len(x) + len(y) for x, y in zip(a, b))
    return 1.0 if total == 0 else 2 * found / total


def ground_truth(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes (G, 4), classes (G,)) per image from label rows [class, x1, y1, x2, y2] (-1 rows: none)."""
    labels = np.asarray(labels)
    return [(rows[rows[:, 0] >= 0, 1:].astype(np.float64), rows[rows[:, 0] >= 0, 0].astype(np.int64))
            for rows in labels]


def mean_average_precision(detections: list[Detections], truth: list[tuple[np.ndarray, np.ndarray]],
                           num_classes: int, iou: float = 0.5) -> tuple[float, dict[str, float]]:
    """mAP at ``iou`` over the classes with ground truth, and precision/recall over all classes
    at the detections given (their score threshold)."""
    aps = []
    hits_total = dets_total = gt_total = 0
    for c in range(num_classes):
        scores, hits, n_gt = [], [], 0
        for det, (gt_boxes, gt_classes) in zip(detections, truth):
            gt = gt_boxes[gt_classes == c]
            n_gt += len(gt)
            mine = det.classes == c
            if not mine.any():
                continue
            boxes, s = det.boxes[mine], det.scores[mine]
            used = np.zeros(len(gt), bool)
            overlap = iou_matrix(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
            for i in np.argsort(-s, kind="stable"):
                j = int(overlap[i].argmax()) if len(gt) else -1
                hit = j >= 0 and overlap[i, j] >= iou and not used[j]
                if hit:
                    used[j] = True
                scores.append(s[i])
                hits.append(hit)
        hits_total += sum(hits)
        dets_total += len(hits)
        gt_total += n_gt
        if n_gt == 0:
            continue
        if not scores:
            aps.append(0.0)
            continue
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.cumsum(np.asarray(hits)[order])
        recall = tp / n_gt
        precision = tp / np.arange(1, len(tp) + 1)
        aps.append(_area(recall, precision))
    stats = {"precision": float(hits_total / dets_total) if dets_total else 0.0,
             "recall": float(hits_total / gt_total) if gt_total else 0.0}
    return (float(np.mean(aps)) if aps else float("nan")), stats


def _area(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under the precision/recall curve."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())
