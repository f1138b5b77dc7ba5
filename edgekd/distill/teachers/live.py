"""A live PyTorch teacher: eval mode, no gradients, features through forward hooks."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.data import inputs as model_inputs
from edgekd.distill.hooks import FeatureTaps
from edgekd.distill.losses import TeacherOutput


class LiveTeacher:
    """Runs ``model`` on every batch; ``feature_paths`` are tapped for feature losses."""

    kind = "logits"

    def __init__(self, model: nn.Module, feature_paths: list[str] | None = None, forward=None):
        self.model = model.eval().requires_grad_(False)
        self._forward = forward or model_inputs.call  # the task's way of calling a model
        self.feature_paths = list(feature_paths or [])
        self._taps = FeatureTaps(self.model, self.feature_paths, role="teacher") if self.feature_paths else None

    @torch.no_grad()
    def __call__(self, x, index: torch.Tensor, view: int) -> tuple[TeacherOutput, dict]:
        self.model.eval()
        logits = self._forward(self.model, x)  # (N, K), or (N, L, V) per token
        features = self._taps.collect() if self._taps is not None else {}
        return TeacherOutput("logits", logits=logits), features

    def close(self) -> None:
        if self._taps is not None:
            self._taps.remove()
