"""Classification tasks: one class per sample (or per position), quality = top-1 accuracy.

``ClassificationTask`` holds what every classifier shares (metrics: top-1 accuracy and, with more
than five classes, top-5 accuracy; samples labelled -1 are left out). ``ImageClassification`` is
the built-in task: one float image input (N, C, H, W) from ``edgekd.data.datasets``, random
pixel shifts as augmentation, class logits (N, K) as the teacher's target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgekd.tasks.base import Task
from edgekd.tasks.spec import TensorSpec


class ClassificationTask(Task):
    """Logits with the classes on ``class_dim``; labels are class indices (-1: no label)."""

    quality_metric = "accuracy"
    teacher_target = "class_logits"

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        logits = np.moveaxis(np.asarray(logits), self.class_dim, -1)
        k = logits.shape[-1]
        flat, y = logits.reshape(-1, k), np.asarray(labels).reshape(-1)  # (M, K), (M,)
        keep = y >= 0
        flat, y = flat[keep], y[keep]
        if len(y) == 0:
            return {"accuracy": float("nan")}
        out = {"accuracy": float((flat.argmax(-1) == y).mean())}
        if k > 5:
            top5 = np.argpartition(-flat, 5, axis=-1)[:, :5]  # (M, 5), unordered
            out["top5_accuracy"] = float((top5 == y[:, None]).any(-1).mean())
        return out


class ImageClassification(ClassificationTask):
    """Float images (N, C, H, W) in, class logits (N, K) out."""

    def load_data(self, config) -> Any:
        from edgekd.data.datasets import load_data

        return load_data(config)

    def input_spec(self, data) -> list[TensorSpec]:
        c, h, w = data.input_shape
        return [TensorSpec("input", "float32", ("batch", c, h, w), 0.0, 1.0)]

    def output_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", data.num_classes))]

    def model_args(self, data) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes}

    def augment(self, x, index: torch.Tensor, *, shift: int, seed: int, generator: torch.Generator,
                view: int | None = None):
        from edgekd.data.datasets import random_shift, view_shift

        if view is not None:
            return view_shift(x, index, view, shift, seed)
        return random_shift(x, shift, generator)

    def describe(self, data) -> str:
        return f"{data.num_classes} classes, input {tuple(data.input_shape)}"
