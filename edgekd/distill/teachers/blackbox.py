"""A black-box teacher: only the top-k probabilities, or only the labels, of another provider.

A model behind an API answers with a few class probabilities or a single class, never logits or
features. ``BlackBoxTeacher`` wraps any provider that gives logits and reveals only that much, so
a run can measure what distillation keeps under the restriction:

- ``output="topk"``: p = softmax(logits) at temperature 1, as an API returns it; the k largest
  probabilities in descending order (N, k) and their classes (N, k). Their sum is <= 1; the
  rest of the mass is not revealed.
- ``output="labels"``: argmax(logits) only (N,): hard-label distillation (Touvron et al. 2021,
  "Training data-efficient image transformers & distillation through attention").

The ``kd`` loss adapts to both (k + 1 bucket KL for top-k, cross-entropy with the teacher's
label for labels; ``edgekd/distill/losses/logit.py``); losses that need full logits refuse such a
teacher, and feature losses are impossible (``feature_paths`` is empty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import TeacherOutput
from edgekd.distill.teachers.live import LiveTeacher
from edgekd.errors import ConfigError, did_you_mean

OUTPUTS = ("topk", "labels")


class BlackBoxTeacher:
    """Reveals only the top-``k`` softmax probabilities (``output="topk"``) or the argmax label
    (``output="labels"``) of ``inner``, a provider that returns logits."""

    def __init__(self, inner, output: str = "topk", k: int = 5):
        """Wrap ``inner``.

        Args:
            inner: a teacher provider of kind "logits" (LiveTeacher, OnnxTeacher, a logits
                CachedTeacher, ...) or a PyTorch model (wrapped as a LiveTeacher).
            output: "topk" or "labels": what the wrapper reveals (its ``kind``).
            k: how many probabilities "topk" reveals.

        Raises:
            ConfigError: unknown ``output``, ``k`` < 1, or ``inner`` does not give logits.
        """
        if isinstance(inner, nn.Module):
            inner = LiveTeacher(inner)
        if output not in OUTPUTS:
            raise ConfigError(f"unknown black-box output {output!r}{did_you_mean(output, OUTPUTS)}; "
                              f"expected one of {', '.join(OUTPUTS)}")
        if output == "topk" and (not isinstance(k, int) or k < 1):
            raise ConfigError(f"black-box top-k needs k >= 1, got {k!r}")
        if getattr(inner, "kind", None) != "logits":
            raise ConfigError(f"BlackBoxTeacher wraps a provider that gives logits; "
                              f"{type(inner).__name__} gives {getattr(inner, 'kind', 'no kind')!r}")
        self.inner, self.kind = inner, output
        self.k = k if output == "topk" else None
        self.feature_paths: list[str] = []  # a black box gives no features

    @property
    def fingerprint(self) -> str:
        """The inner teacher's fingerprint plus what is revealed, e.g. ``3f2a...-top5``.

        Raises:
            ConfigError: the inner provider has no fingerprint (and is no PyTorch model).
        """
        from edgekd.distill.teachers.cache import provider_fingerprint

        return f"{provider_fingerprint(self.inner)}-{'top' + str(self.k) if self.k else 'labels'}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor, view: int) -> tuple[TeacherOutput, dict]:
        out, _ = self.inner(x, index, view)  # the inner features are never revealed
        logits = out.logits.float()  # (N, K); per token (N, L, V): classes on the last axis
        if self.kind == "labels":
            return TeacherOutput("labels", indices=logits.argmax(-1)), {}  # (N,) / (N, L)
        if self.k > logits.shape[-1]:
            raise ConfigError(f"black-box top-k: k={self.k} is more than the teacher's "
                              f"{logits.shape[-1]} classes")
        probs, indices = F.softmax(logits, dim=-1).topk(self.k, dim=-1)  # (N, k) each, descending
        return TeacherOutput("topk", probs=probs, indices=indices), {}
