"""Schedules for loss weights and temperatures: constant, linear warm-up, cosine.

In a recipe a weight or temperature is a number, or a mapping::

    weight: {kind: linear_warmup, value: 2.0, warmup_epochs: 5}   # rises toward 2.0 over 5 epochs
    temperature: {kind: cosine, value: 8.0, final: 2.0}          # 8 -> 2 along a half cosine

``value_at(epoch, epochs)`` gives the value for 0-based ``epoch`` of a stage of ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from edgekd.config import Config, FieldError


@dataclass
class Schedule(Config):
    """A value that changes with the epoch.

    Attributes:
        kind: "constant", "linear_warmup" (rises linearly from ``start`` toward ``value``:
            epoch e < warmup_epochs gets start + (value - start) * (e + 1) / (warmup_epochs + 1),
            later epochs ``value``) or "cosine" (from ``value`` at the first epoch to ``final`` at
            the last, along a half cosine).
        value: the constant value, the value after warm-up, or the cosine's start.
        start: warm-up start value.
        warmup_epochs: length of the warm-up.
        final: the cosine's end value.
    """

    kind: Literal["constant", "linear_warmup", "cosine"] = "constant"
    value: float = 1.0
    start: float = 0.0
    warmup_epochs: int = 0
    final: float = 0.0

    def __post_init__(self):
        if self.warmup_epochs < 0:
            raise FieldError("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        if self.kind == "linear_warmup" and self.warmup_epochs == 0:
            raise FieldError("warmup_epochs", "linear_warmup needs warmup_epochs >= 1")

    def values(self) -> list[float]:
        """The values this schedule moves between (for validation)."""
        return {"constant": [self.value], "linear_warmup": [self.start, self.value],
                "cosine": [self.value, self.final]}[self.kind]

    def value_at(self, epoch: int, epochs: int) -> float:
        if self.kind == "linear_warmup" and epoch < self.warmup_epochs:
            return self.start + (self.value - self.start) * (epoch + 1) / (self.warmup_epochs + 1)
        if self.kind == "cosine" and epochs > 1:
            progress = epoch / (epochs - 1)
            return self.final + (self.value - self.final) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.value
