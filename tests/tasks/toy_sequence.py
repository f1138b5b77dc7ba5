"""A toy sequence task, defined outside edgekd the way a user (or the text-student issue) adds
one: token ids and a mask in, one class per sequence out. Nothing in edgekd's trainer,
exporters or runtime sessions knows about it.

Data: sequences of ``LENGTH`` token ids from a vocabulary of ``VOCAB`` (0 is padding), each with
4..LENGTH real tokens; the class is the group (token id mod 3) whose tokens are most frequent in
the sequence (ties are redrawn), a function a mean-pooled embedding learns.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from edgekd.data.datasets import DataSplits
from edgekd.tasks import register_task
from edgekd.tasks.classification import ClassificationTask
from edgekd.tasks.spec import TensorSpec

VOCAB, LENGTH, CLASSES = 16, 12, 3


class BagOfTokens(nn.Module):
    """Embedding, masked mean over the sequence, a hidden layer, a classifier."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.hidden = nn.Linear(dim, dim)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (N, L, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (N, D)
        return self.classifier(self.relu(self.hidden(pooled)))  # (N, K)


def teacher(vocab_size: int = VOCAB, num_classes: int = CLASSES) -> BagOfTokens:
    """arch ``tests.tasks.toy_sequence:teacher`` (a user's ``module:callable``)."""
    return BagOfTokens(vocab_size, num_classes, 64)


def student(vocab_size: int = VOCAB, num_classes: int = CLASSES) -> BagOfTokens:
    return BagOfTokens(vocab_size, num_classes, 12)


def make_sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids, masks, labels = [], [], []
    while len(labels) < n:
        length = int(rng.integers(4, LENGTH + 1))
        tokens = rng.integers(1, VOCAB, size=length)
        counts = np.bincount(tokens % 3, minlength=3)
        if (counts == counts.max()).sum() > 1:
            continue  # a tie has no class
        ids.append(np.pad(tokens, (0, LENGTH - length)))
        masks.append(np.pad(np.ones(length, np.int64), (0, LENGTH - length)))
        labels.append(int(counts.argmax()))
    return np.stack(ids).astype(np.int64), np.stack(masks), np.asarray(labels, np.int64)


@register_task("toy-sequence-classification")
class ToySequenceClassification(ClassificationTask):
    """Token ids and attention mask (N, L) int64 in, class logits (N, K) out."""

    def load_data(self, config) -> DataSplits:
        ids, masks, y = make_sequences(600, config.seed)
        cut = [int(f * len(y)) for f in np.cumsum(config.split)[:2]]
        parts = np.split(np.arange(len(y)), cut)  # (train, val, test) indices
        x = [(torch.from_numpy(ids[p]), torch.from_numpy(masks[p])) for p in parts]
        t = [torch.from_numpy(y[p]) for p in parts]
        digest = hashlib.sha256(ids.tobytes() + masks.tobytes() + y.tobytes()).hexdigest()[:16]
        return DataSplits(x[0], t[0], x[1], t[1], x[2], t[2], class_names=["a", "b", "c"],
                          source="toy-sequences", fingerprint=digest)

    def input_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("input_ids", "int64", ("batch", "sequence"), 0, VOCAB),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"), 0, 2)]

    def output_spec(self, data) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", data.num_classes))]

    def model_args(self, data) -> dict:
        return {"vocab_size": VOCAB, "num_classes": data.num_classes}
