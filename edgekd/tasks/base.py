"""The ``Task`` interface: everything edgekd needs to know about a kind of model.

A task answers, for one problem:

- **inputs** (``input_spec``): names, dtypes and shapes with named dynamic axes (``batch``,
  ``sequence``), as the exporters, runtime sessions and benchmark inputs use them; and the
  **outputs** (``output_spec``) with the axis that holds the classes (``class_dim``);
- **data** (``load_data``): train/val/test splits whose inputs are one tensor or a tuple of
  tensors in ``input_spec`` order (``edgekd.data.inputs``), and labels;
- **batches** (``augment``): how a training batch is augmented, the same way for a given
  (sample, view) when the teacher's outputs are cached;
- **calling** (``forward``): how the model is called on a batch;
- **the teacher target** (``teacher_target``): class logits, per-token logits, embeddings or
  detection head outputs; the logit losses read the class axis from ``class_dim``;
- **metrics** (``metrics``) and **the quality figure** (``quality_metric``) that budgets, the
  best-epoch rule and reports read.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from edgekd.data import inputs as model_inputs
from edgekd.tasks.spec import TensorSpec


class Task(abc.ABC):
    """Base of every task; subclasses are registered with ``edgekd.tasks.register_task``."""

    name: ClassVar[str] = "task"
    quality_metric: ClassVar[str] = "accuracy"  # the metric budgets and best-epoch selection read
    teacher_target: ClassVar[str] = "class_logits"  # class_logits | token_logits | embedding | detection
    class_dim: ClassVar[int] = -1  # axis of the classes in the logits: -1 for (N, K) and (N, L, V)
    label_loss: ClassVar[str] = "ce"  # the loss a recipe's `ce` (labels) term means for this task
    distill_loss: ClassVar[str | None] = None  # what `kd` means for it; None: the recipe's logit loss
    augments: ClassVar[bool] = True  # whether ``augment`` changes a batch (a teacher cache then keeps views)

    @abc.abstractmethod
    def load_data(self, config) -> Any:
        """Train/val/test splits (``edgekd.data.DataSplits``) for ``config`` (a ``DataConfig``)."""

    @abc.abstractmethod
    def input_spec(self, data) -> list[TensorSpec]:
        """The model's inputs, in call order, with named dynamic axes."""

    @abc.abstractmethod
    def output_spec(self, data) -> list[TensorSpec]:
        """The model's outputs (the first one is what losses and metrics read)."""

    @abc.abstractmethod
    def model_args(self, data) -> dict[str, Any]:
        """Keyword arguments the model factory passes to an architecture that accepts them
        (e.g. ``in_channels`` and ``num_classes``; ``vocab_size`` for token inputs)."""

    @abc.abstractmethod
    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Every metric of this task for ``logits`` against ``labels``; it includes
        ``quality_metric``. Higher is better for the quality metric."""

    def augment(self, x, index: torch.Tensor, *, shift: int, seed: int, generator: torch.Generator,
                view: int | None = None):
        """A training batch ``x`` (samples ``index``) as the model sees it; ``view`` set: the
        fixed augmentation view a teacher cache is keyed by. Default: no augmentation."""
        return x

    def batch_order(self, order: torch.Tensor, data, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The epoch's sample order (``order``: shuffled indices into the training split) as the
        trainer steps through it, ``batch_size`` at a time. Default: as shuffled."""
        return order

    def trim(self, x, data):
        """A training batch ``x`` cut to what the model needs (text: its longest text). Default: as is."""
        return x

    def teacher_labels(self, data, teacher: nn.Module):
        """``data`` relabelled by the ready ``teacher`` (a sentence embedding's reference is its
        teacher's embedding), or None: the data's own labels stand."""
        return None

    def token_positions(self, x) -> torch.Tensor | None:
        """(N, L) bool: which positions of a token batch are real tokens (feature losses on
        token states leave the padding out); None: every position counts (images)."""
        return None

    def forward(self, model: nn.Module, x) -> torch.Tensor:
        """The model's first output on a batch (one tensor, or a tuple in input order)."""
        return model_inputs.call(model, x)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Predicted classes, for the agreement between a runtime and PyTorch."""
        return np.asarray(logits).argmax(self.class_dim)

    def join_outputs(self, outputs: list[np.ndarray], names: list[str] | None = None) -> np.ndarray:
        """A runtime's outputs (``names`` when the artifact has them) as ``forward`` gives the
        model's: by default the first output, as float32 (like ``Session.fetch``)."""
        return np.asarray(outputs[0], np.float32)

    def num_classes_of(self, out: torch.Tensor) -> int | None:
        """The number of classes ``out`` (what ``forward`` returned) predicts."""
        return out.shape[self.class_dim] if out.dim() else None

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """How often a runtime's outputs predict what PyTorch's ``reference`` outputs predict."""
        return float((self.predictions(outputs) == self.predictions(reference)).mean())

    def parity(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        """Per output: largest and mean absolute difference from PyTorch's ``reference``."""
        diff = np.abs(np.asarray(outputs, np.float64) - np.asarray(reference, np.float64))
        return {"logits": {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}}

    def loss_name(self, name: str) -> str:
        """The registered loss a recipe term ``name`` means for this task (``ce`` and ``kd`` are
        the short form's label and distillation terms)."""
        if name == "ce":
            return self.label_loss
        if name == "kd" and self.distill_loss:
            return self.distill_loss
        return name

    def describe(self, data) -> str:
        """One line for the run log."""
        return ", ".join(s.describe() for s in self.input_spec(data))

    def to_dict(self, data=None) -> dict[str, Any]:
        """What a report and a checkpoint record of the task."""
        out: dict[str, Any] = {"name": self.name, "quality_metric": self.quality_metric,
                               "teacher_target": self.teacher_target, "class_dim": self.class_dim}
        if data is not None:
            out["inputs"] = [s.to_dict() for s in self.input_spec(data)]
            out["outputs"] = [s.to_dict() for s in self.output_spec(data)]
        return out
