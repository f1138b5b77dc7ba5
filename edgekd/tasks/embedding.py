"""``sentence-embedding``: a text encoder's pooled, normalized embedding, measured against its teacher.

Inputs are token ids and an attention mask (``edgekd.tasks.text``); the output is one embedding
(N, D) per text. Texts have no labels of their own: once the teacher is ready, every text of every split is labelled with the teacher's embedding
(``teacher_labels``), so the student is measured as a stand-in for its teacher
(``edgekd.tasks.similarity``: Spearman of pairwise similarities, the quality figure; nearest-
neighbour top-1 and recall@10; cosine), the label loss ``embedding`` learns the teacher's
embeddings alone (the baseline), and ``embedding-kd`` (or any feature loss on hidden states)
distils from the teacher run live.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from edgekd.data import inputs as model_inputs
from edgekd.tasks.spec import TensorSpec
from edgekd.tasks.text import TextTask


class SentenceEmbedding(TextTask):
    """Token ids and attention mask (N, L) in, an embedding (N, D) out."""

    name = "sentence-embedding"
    quality_metric = "spearman"
    teacher_target = "embedding"
    class_dim = -1
    label_loss = "embedding"
    distill_loss = "embedding-kd"

    def output_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("embedding", "float32", ("batch", None))]

    def teacher_labels(self, data, teacher: torch.nn.Module, batch_size: int = 64):
        """``data`` with every split labelled by ``teacher``'s embeddings (N, D), computed in
        batches of similar length, each cut to its longest text (padding changes nothing)."""
        from edgekd.data.text import trim_to_bucket

        def embed(x):
            ids, mask = x[0], x[1]
            order = mask.sum(1).argsort()
            parts = []
            teacher.eval()
            with torch.no_grad():
                for rows in order.split(batch_size):
                    parts.append(model_inputs.call(teacher, trim_to_bucket(ids[rows], mask[rows], [])).float())
            if not parts:
                return torch.empty(0)
            out = torch.empty(len(ids), *parts[0].shape[1:])
            out[order] = torch.cat(parts)  # back to sample order
            return out

        return dataclasses.replace(data, y_train=embed(data.x_train), y_val=embed(data.x_val),
                                   y_test=embed(data.x_test), train_labelled=None)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from edgekd.tasks.similarity import embedding_metrics

        labels = np.asarray(labels)
        if labels.ndim != 2:  # not labelled by a teacher yet (the dry run): nothing to compare with
            return {"spearman": float("nan")}
        return embedding_metrics(np.asarray(logits), labels)

    def num_classes_of(self, out: torch.Tensor) -> int | None:
        return None  # an embedding, not class scores

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Each text's nearest neighbour among the others (what retrieval would return)."""
        unit = np.asarray(logits, np.float64)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    def parity(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        out = super().parity(outputs, reference)
        a, b = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return {"embedding": {**out["logits"], "min_cosine": float(cos.min())}}
