"""Teacher providers: where a student's soft targets come from.

A provider is called with an input batch, the dataset indices of its samples and the
augmentation view, and returns a ``TeacherOutput`` (logits, top-k probabilities or labels) plus
the teacher features requested by feature losses (live PyTorch teachers only):

- ``LiveTeacher`` (``live.py``): a PyTorch model in eval mode, without gradients, outside the
  optimizer and never checkpointed with the student;
- ``OnnxTeacher`` (``onnx.py``): a deployed teacher file run in onnxruntime (logits only);
- ``BlackBoxTeacher`` (``blackbox.py``): wraps a provider and reveals only its top-k
  probabilities or its labels, as a model behind an API would;
- ``CachedTeacher`` (``cache.py``): runs a provider once per (sample, view) and stores the
  outputs in a memory-mapped file keyed by dataset, teacher and augmentation.

``build_teacher_provider`` (``provider.py``) stacks them as a recipe's ``distill`` section says.
"""

from __future__ import annotations

from typing import Protocol

import torch

from edgekd.distill.losses import TeacherOutput


class TeacherProvider(Protocol):
    kind: str                      # "logits" | "topk" | "labels": what ``__call__`` returns
    feature_paths: list[str]       # teacher features it can return (empty: none)

    def __call__(self, x, index: torch.Tensor, view: int) -> tuple[TeacherOutput, dict]:
        """Outputs for batch ``x`` (the task's inputs: one tensor such as (N, C, H, W), or a tuple)
        holding samples ``index`` (N,) in augmentation ``view``; returns (TeacherOutput,
        {path: feature})."""
        ...


# none of these imports onnxruntime: OnnxTeacher opens it through the runtime layer when created
from edgekd.distill.teachers.blackbox import BlackBoxTeacher
from edgekd.distill.teachers.cache import (
    CachedTeacher,
    model_fingerprint,
    provider_fingerprint,
)
from edgekd.distill.teachers.live import LiveTeacher
from edgekd.distill.teachers.onnx import OnnxTeacher

__all__ = ["BlackBoxTeacher", "CachedTeacher", "LiveTeacher", "OnnxTeacher", "TeacherProvider",
           "model_fingerprint", "provider_fingerprint"]
