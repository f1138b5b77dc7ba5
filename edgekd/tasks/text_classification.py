"""``text-classification``: one class per text, quality = accuracy, with macro F1 beside it.

Inputs are token ids and an attention mask (``edgekd.tasks.text``); labels come from the data:
a ``.jsonl``/``.csv`` file's ``text.label_column``, or the built-in ``stdlib-topics`` (standard
library sentences labelled with the topic they document). The teacher is a pretrained encoder
with a classification head that the teacher stage fine-tunes (``teacher.arch: minilm-l6-v2``,
``teacher_training.epochs`` >= 1), or a user's checkpoint; students distil its class logits
(``kd``), hidden states and attention (feature losses by module path).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.tasks.classification import ClassificationTask
from edgekd.tasks.spec import TensorSpec
from edgekd.tasks.text import TextTask


class TextClassification(TextTask, ClassificationTask):
    """Token ids and attention mask (N, L) in, class logits (N, K) out."""

    name = "text-classification"

    def load_data(self, config) -> Any:
        from edgekd.errors import DataError

        data = super().load_data(config)
        if not data.class_names:
            raise DataError(f"{config.source}: text-classification needs labelled text: set data.text.label_column "
                            f"to the label field of a .jsonl or .csv file, or use data.source: stdlib-topics "
                            f"(built in)")
        return data

    def output_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", data.num_classes))]

    def model_args(self, data) -> dict[str, Any]:
        return {**super().model_args(data), "num_labels": data.num_classes}  # (Hugging Face's name for a text head)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        out = super().metrics(logits, labels)
        y = np.asarray(labels).reshape(-1)
        keep = y >= 0
        if keep.any():
            out["macro_f1"] = macro_f1(np.asarray(logits).argmax(-1)[keep], y[keep], np.asarray(logits).shape[-1])
        return out

    def describe(self, data) -> str:
        return f"{data.num_classes} classes, {data.input_shape[0]} tokens"


def macro_f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class absent from both the labels
    and the predictions is left out (its F1 is undefined)."""
    scores = []
    for c in range(classes):
        tp = int(((predicted == c) & (labels == c)).sum())
        wrong = int(((predicted == c) != (labels == c)).sum())  # FP + FN
        if tp or wrong:
            scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores)) if scores else float("nan")
