"""Object detection: an image in, a dense head out (boxes and class scores per anchor point, no
NMS in the model), quality = mAP@0.5.

The head contract (what YOLOv8/FCOS-style exports give once NMS is left out):

- two outputs, ``boxes`` (N, A, 4) as ``[x1, y1, x2, y2]`` pixels and ``scores`` (N, A, K) class
  probabilities (sigmoid, not softmax: several classes may score at one point);
- the A anchor points are the grids of the head's strides in ascending order, each row-major,
  centred at ``((x + 0.5) * s, (y + 0.5) * s)``. The strides are the ones whose grids add up to A
  for the data's image size (for 32x32 images and A = 80: strides 4 and 8); a head for which that
  is ambiguous says so.

``forward`` joins the two outputs into one tensor (N, A, 4 + K) for the trainer, the losses and
the teacher cache; ``join_outputs`` does the same for a runtime's outputs, so PyTorch, onnxruntime,
OpenVINO and LiteRT go through the same post-processing (``edgekd.tasks.boxes``): scores above
``CONF`` per class, greedy NMS at ``NMS_IOU``. Labels are int64 rows ``[class, x1, y1, x2, y2]``
(N, M, 5), ``-1`` rows padding images with fewer objects (``edgekd.data.detection``).

No augmentation: a shifted image would need shifted boxes, and the trainer's augmentations move
only pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgekd.errors import ConfigError
from edgekd.tasks import boxes as box_ops
from edgekd.tasks.base import Task
from edgekd.tasks.spec import TensorSpec

CONF = 0.25  # score threshold of the detections agreement and precision/recall count
MAP_CONF = 0.01  # mAP is read from the whole precision/recall curve: keep the low scores
NMS_IOU = 0.5
MAX_DET = 100
AGREEMENT_IOU = 0.5
STRIDE_CHOICES = (2, 4, 8, 16, 32, 64, 128)


class ObjectDetection(Task):
    """Float images (N, C, H, W) in; ``boxes`` (N, A, 4) and ``scores`` (N, A, K) out."""

    quality_metric = "map50"
    teacher_target = "detection"
    class_dim = -1
    output_names = ("boxes", "scores")
    label_loss = "detection"
    distill_loss = "detection-kd"
    augments = False  # (see the module doc)

    def load_data(self, config) -> Any:
        from edgekd.data.detection import load_detection_data

        return load_detection_data(config)

    def input_spec(self, data) -> list[TensorSpec]:
        c, h, w = data.input_shape
        return [TensorSpec("input", "float32", ("batch", c, h, w), 0.0, 1.0)]

    def output_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("boxes", "float32", ("batch", None, 4)),
                TensorSpec("scores", "float32", ("batch", None, data.num_classes))]

    def model_args(self, data) -> dict[str, Any]:
        c, h, w = data.input_shape
        return {"in_channels": c, "num_classes": data.num_classes, "image_size": (h, w)}

    def forward(self, model, x) -> torch.Tensor:
        out = model(x)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ConfigError(f"a detection model returns (boxes (N, A, 4), scores (N, A, K)); "
                              f"{type(model).__name__} returned {_described(out)}")
        boxes, scores = out
        return torch.cat([boxes, scores], -1)  # (N, A, 4 + K)

    def join_outputs(self, outputs: list[np.ndarray], names: list[str] | None = None) -> np.ndarray:
        """A runtime's outputs as ``forward`` gives them: boxes and scores joined on the last axis,
        found by name when the artifact names them (else in order).  # (N, A, 4 + K)"""
        if names and set(self.output_names) <= set(names):
            outputs = [outputs[names.index(n)] for n in self.output_names]
        if len(outputs) != 2:
            raise ConfigError(f"a detection artifact gives boxes and scores; this one gives {len(outputs)} outputs")
        return np.concatenate([np.asarray(o, np.float32) for o in outputs], -1)

    def num_classes_of(self, out: torch.Tensor) -> int | None:
        return out.shape[-1] - 4 if out.dim() == 3 else None

    def detections(self, outputs: np.ndarray, conf: float = CONF) -> list[box_ops.Detections]:
        """Each image's detections after NMS, from joined outputs (N, A, 4 + K)."""
        outputs = np.asarray(outputs)
        return [box_ops.detect(o[:, :4], o[:, 4:], conf=conf, iou=NMS_IOU, max_det=MAX_DET) for o in outputs]

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        outputs = np.asarray(logits)
        truth = box_ops.ground_truth(labels)
        k = outputs.shape[-1] - 4
        curve = self.detections(outputs, MAP_CONF)  # NMS once, for both IoU thresholds and the counts
        map50, _ = box_ops.mean_average_precision(curve, truth, k, 0.5)
        map75, _ = box_ops.mean_average_precision(curve, truth, k, 0.75)
        _, counts = box_ops.mean_average_precision([d.above(CONF) for d in curve], truth, k, 0.5)
        return {"map50": map50, "map75": map75, **counts}

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """The number of detections per image (at ``CONF``), a summary for reports."""
        return np.asarray([len(d) for d in self.detections(logits)])

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """Dice agreement of the detections (same class, IoU >= 0.5) of ``outputs`` and ``reference``."""
        return box_ops.agreement(self.detections(outputs), self.detections(reference), AGREEMENT_IOU)

    def parity(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        """Per output: largest and mean absolute difference. Scores (probability) at every point;
        boxes (pixels) at the points where the reference scores a class >= ``CONF`` (``points``):
        a background point's box is never read, and a head may put anything there."""
        out, ref = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
        confident = ref[..., 4:].max(-1) >= CONF  # (N, A)
        boxes = np.abs(out[..., :4] - ref[..., :4])[confident]  # (P, 4)
        scores = np.abs(out[..., 4:] - ref[..., 4:])
        return {"boxes": {"max_abs": float(boxes.max()) if boxes.size else 0.0,
                          "mean_abs": float(boxes.mean()) if boxes.size else 0.0, "points": int(confident.sum())},
                "scores": {"max_abs": float(scores.max()), "mean_abs": float(scores.mean())}}

    def anchor_points(self, num_anchors: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's anchor centres (A, 2) and strides (A,) for ``num_anchors`` on images
        ``image_size`` (see the module doc).

        Raises:
            ConfigError: no set of strides gives ``num_anchors`` points, or more than one does.
        """
        h, w = image_size
        found = _stride_sets(num_anchors, h, w)
        if len(found) != 1:
            why = "no set of strides" if not found else f"several stride sets ({found})"
            raise ConfigError(f"detection head with {num_anchors} anchor points on {h}x{w} images: {why} "
                              f"from {STRIDE_CHOICES} gives that many grid points; the head's points must "
                              f"be its stride grids in ascending order (edgekd.tasks.detection)")
        centres, strides = [], []
        for s in found[0]:
            gy, gx = -(-h // s), -(-w // s)
            ys, xs = torch.meshgrid(torch.arange(gy), torch.arange(gx), indexing="ij")
            centres.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))  # (gy*gx, 2)
            strides.append(torch.full((gy * gx,), float(s)))
        return torch.cat(centres), torch.cat(strides)

    def describe(self, data) -> str:
        objects = int((data.y_train[..., 0] >= 0).sum())
        return (f"{data.num_classes} classes, input {tuple(data.input_shape)}, "
                f"{objects} boxes in {len(data.y_train)} train images")


def _stride_sets(num_anchors: int, h: int, w: int) -> list[tuple[int, ...]]:
    """Every ascending set of strides whose grids on an h x w image hold ``num_anchors`` points."""
    found = []

    def grow(chosen: tuple[int, ...], start: int, total: int) -> None:
        if total == num_anchors and chosen:
            found.append(chosen)
        for i in range(start, len(STRIDE_CHOICES)):
            s = STRIDE_CHOICES[i]
            if s > min(h, w):  # a stride beyond the image adds nothing a head would have
                break
            points = (-(-h // s)) * (-(-w // s))
            if total + points <= num_anchors:
                grow(chosen + (s,), i + 1, total + points)

    grow((), 0, 0)
    return found


def _described(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"one tensor {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"{len(out)} values"
    return type(out).__name__
