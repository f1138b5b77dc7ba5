"""``distill`` and ``train_scratch``: the two ways a student is trained, under the same budget.

``train_scratch`` is the baseline every report shows next to ``distill``, so users always see
what the teacher bought them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgekd.config import Config, FieldError, check_name
from edgekd.data.datasets import DataSplits
from edgekd.distill.losses import LOSSES
from edgekd.distill.trainer import Term, TrainConfig, TrainResult, train


@dataclass
class DistillConfig(Config):
    """How the student learns from the teacher.

    Attributes:
        loss: registered logit-distillation loss (see ``edgekd losses``).
        temperature: softmax temperature T of the soft targets.
        kd_weight: weight of the distillation term.
        ce_weight: weight of cross-entropy on the labels.
    """

    loss: str = "kd"
    temperature: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1

    def __post_init__(self):
        check_name(LOSSES, self.loss, "loss")
        if self.temperature <= 0:
            raise FieldError("temperature", f"must be > 0, got {self.temperature}")
        for name in ("kd_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise FieldError("kd_weight", "kd_weight and ce_weight are both 0: nothing to learn from")

    def terms(self) -> list[Term]:
        terms = [Term(self.loss, self.kd_weight, LOSSES.get(self.loss)(temperature=self.temperature))]
        if self.ce_weight > 0:
            terms.append(Term("ce", self.ce_weight, LOSSES.get("ce")()))
        return [t for t in terms if t.weight > 0]


def distill(student: nn.Module, teacher: nn.Module, data: DataSplits, config: DistillConfig,
            train_config: TrainConfig, *, desc: str = "distill", **kwargs) -> TrainResult:
    """Train ``student`` in place from ``teacher``'s soft targets (and labels, per ``config``)."""
    return train(student, data, train_config, config.terms(), teacher=teacher, desc=desc, **kwargs)


def train_scratch(model: nn.Module, data: DataSplits, train_config: TrainConfig, *,
                  desc: str = "scratch", **kwargs) -> TrainResult:
    """Train ``model`` in place with cross-entropy on the labels only (no teacher)."""
    return train(model, data, train_config, [Term("ce", 1.0, LOSSES.get("ce")())], desc=desc, **kwargs)
