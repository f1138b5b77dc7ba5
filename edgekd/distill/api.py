"""``distill`` and ``train_scratch``: the two ways a student is trained, under the same budget.

``train_scratch`` is the baseline every report shows next to ``distill``, so users always see
what the teacher bought them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from edgekd.config import Config, FieldError, check_name
from edgekd.data.datasets import DataSplits
from edgekd.distill.losses import LOSSES
from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import Term, TrainConfig, TrainResult, train
from edgekd.errors import ConfigError


@dataclass
class TermConfig(Config):
    """One loss term of a distillation objective.

    Attributes:
        loss: a registered loss (``edgekd list losses``).
        weight: a number or a ``Schedule`` mapping (constant, linear_warmup, cosine).
        temperature: for losses that have one (kd, dkd); a number or a schedule.
        student: module path of the student feature (feature losses), e.g. ``features.block1``.
        teacher: module path of the teacher feature (feature losses), e.g. ``features.block2``.
        options: extra loss arguments, e.g. ``{alpha: 1.0, beta: 8.0}`` for dkd.
    """

    loss: str = "kd"
    weight: float | Schedule = 1.0
    temperature: float | Schedule | None = None
    student: str | None = None
    teacher: str | None = None
    options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        check_name(LOSSES, self.loss, "loss")
        cls = LOSSES.get(self.loss)
        if getattr(cls, "needs", "") == "features":
            for side in ("student", "teacher"):
                if not getattr(self, side):
                    raise FieldError(side, f"feature loss {self.loss!r} needs a module path "
                                           f"(e.g. student: features.block1, teacher: features.block2)")
        elif self.student or self.teacher:
            raise FieldError("student", f"{self.loss!r} is not a feature loss; module paths do not apply")
        for name, strict in (("weight", False), ("temperature", True)):
            spec = getattr(self, name)
            values = [] if spec is None else spec.values() if isinstance(spec, Schedule) else [spec]
            bad = [v for v in values if v < 0 or strict and v == 0]
            if bad:
                raise FieldError(name, f"must be {'> 0' if strict else '>= 0'}, got {bad[0]:g}")

    @property
    def name(self) -> str:
        return f"{self.loss}:{self.student}" if self.student else self.loss

    def loss_class(self) -> type:
        return LOSSES.get(self.loss)

    def build(self, task=None) -> Term:
        """The term, its loss resolved for ``task`` (``ce``/``kd`` mean the task's label and
        distillation losses: ``Task.loss_name``)."""
        loss_name = task.loss_name(self.loss) if task is not None else self.loss
        kwargs = dict(self.options)
        if self.student:
            kwargs.update(student=self.student, teacher=self.teacher)
        if self.temperature is not None:
            kwargs["temperature"] = _first(self.temperature)
        try:
            loss = LOSSES.get(loss_name)(**kwargs)
        except TypeError as err:
            raise ConfigError(f"loss {loss_name!r}: bad options {self.options} ({err})") from None
        return Term(self.name, self.weight, loss, self.temperature)


def _first(spec) -> float:
    return spec.value_at(0, 1) if isinstance(spec, Schedule) else float(spec)


@dataclass
class DistillConfig(Config):
    """How the student learns from the teacher.

    The short form is one logit loss plus cross-entropy (``loss``, ``temperature``,
    ``kd_weight``, ``ce_weight``). ``terms`` replaces it with any list of weighted, possibly
    scheduled terms (logit, feature and label losses).

    Attributes:
        loss: registered logit-distillation loss (see ``edgekd list losses``).
        temperature: softmax temperature T of the soft targets.
        kd_weight: weight of the distillation term.
        ce_weight: weight of cross-entropy on the labels.
        terms: the full objective; when given, the four fields above are not used.
        teacher_output: what the student may see of the teacher: "logits" (all of them),
            "topk" (its top ``top_k`` probabilities) or "labels" (its top-1 class): a black-box
            teacher, as behind an API.
        top_k: k for ``teacher_output: topk``.
        cache: run the teacher once per (sample, augmentation view) and reuse its outputs from a
            memory-mapped cache (``cache_views`` fixed augmentation views per sample).
        cache_views: augmentation views per sample when caching.
        init_from_teacher: start the distilled student from every other block of the teacher
            (DistilBERT-style; ``edgekd.models.transfer``); the scratch baseline keeps the random
            initialisation, so the report shows what the teacher's weights and targets bought.
        init_widths: with ``init_from_teacher``, "match" (the student's blocks have the
            teacher's widths) or "truncate" (a narrower student, e.g. hidden 256 with 8 heads of
            the teacher's size, takes the leading slice of every teacher tensor).
        prune_vocabulary: text students keep only the token embeddings the training split uses
            (``edgekd.models.vocab``; the scratch and distilled students alike, after their
            initialisation), behind a table that still takes the tokenizer's ids.
    """

    loss: str = "kd"
    # Defaults that do not hurt a student too small or too briefly trained to fit the teacher's
    # softened distribution (benchmarks/kd_hurts.py, README "When distillation hurts"): T=4 with
    # 0.9/0.1 weights left a 10-epoch student 6 points below its scratch baseline on 32x32 RGB
    # data; T=1 with 0.5/0.5 was the one setting at or above it.
    temperature: float = 1.0
    kd_weight: float = 0.5
    ce_weight: float = 0.5
    terms: list[TermConfig] = field(default_factory=list)
    teacher_output: Literal["logits", "topk", "labels"] = "logits"
    top_k: int = 5
    cache: bool = False
    cache_views: int = 8
    init_from_teacher: bool = False
    init_widths: Literal["match", "truncate"] = "match"
    prune_vocabulary: bool = False

    def __post_init__(self):
        check_name(LOSSES, self.loss, "loss")
        if self.temperature <= 0:
            raise FieldError("temperature", f"must be > 0, got {self.temperature}")
        for name in ("kd_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        if not self.terms and self.kd_weight == 0 and self.ce_weight == 0:
            raise FieldError("kd_weight", "kd_weight and ce_weight are both 0: nothing to learn from")
        if self.top_k < 1:
            raise FieldError("top_k", f"must be >= 1, got {self.top_k}")
        if self.cache_views < 1:
            raise FieldError("cache_views", f"must be >= 1, got {self.cache_views}")
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise FieldError("terms", f"two terms have the same name: {names}")

    def objective(self) -> list[TermConfig]:
        """The objective as term configs (the short form expanded)."""
        if self.terms:
            return list(self.terms)
        terms = [TermConfig(self.loss, self.kd_weight, self.temperature)] if self.kd_weight > 0 else []
        if self.ce_weight > 0:
            terms.append(TermConfig("ce", self.ce_weight))
        return terms

    def build_terms(self, task=None) -> list[Term]:
        return [t.build(task) for t in self.objective()]


def check_distill_setup(config: DistillConfig, *, onnx_teacher: bool, num_classes: int, task=None) -> None:
    """Refuse, before any training, an objective the teacher cannot feed.

    Raises:
        ConfigError: a feature loss or ``init_from_teacher`` with an ONNX or black-box teacher, a
            logit-hungry loss (dkd, mse) with a black-box teacher, ``top_k`` > classes, or a loss
            made for another task's outputs (``dkd`` on a detection head).
    """
    black_box = config.teacher_output != "logits"
    for term in config.objective():
        name = task.loss_name(term.loss) if task is not None else term.loss
        targets = getattr(LOSSES.get(name), "targets", None)
        if task is not None and targets is not None and task.teacher_target not in targets:
            own = [n for n in dict.fromkeys((task.loss_name("kd"), task.loss_name("ce"))) if n != name
                   and task.teacher_target in (getattr(LOSSES.get(n), "targets", None) or (task.teacher_target,))]
            use = f"use {' and '.join(map(repr, own))}, or a feature loss" if own else "use a feature loss"
            raise ConfigError(f"distill: loss {name!r} reads {' or '.join(targets)} outputs; task {task.name!r} gives "
                              f"{task.teacher_target} outputs ({use})")
        needs = getattr(LOSSES.get(name), "needs", "")
        if needs == "features" and (onnx_teacher or black_box):
            raise ConfigError(f"distill: loss {term.name!r} needs teacher features; an ONNX or "
                              f"black-box teacher gives logits only (feature losses need a PyTorch teacher)")
        if needs == "teacher_logits" and black_box:
            raise ConfigError(f"distill: loss {term.name!r} needs the teacher's logits; "
                              f"teacher_output {config.teacher_output!r} hides them (use 'kd')")
    if config.init_from_teacher and onnx_teacher:
        raise ConfigError("distill.init_from_teacher needs a PyTorch teacher, not an ONNX file")
    if config.teacher_output == "topk" and config.top_k > num_classes:
        raise ConfigError(f"distill.top_k is {config.top_k} but the data has {num_classes} classes")


def distill(student: nn.Module, teacher: nn.Module, data: DataSplits, config: DistillConfig,
            train_config: TrainConfig, *, desc: str = "distill", **kwargs) -> TrainResult:
    """Train ``student`` in place from ``teacher``'s soft targets (and labels, per ``config``)."""
    return train(student, data, train_config, config.build_terms(kwargs.get("task")), teacher=teacher, desc=desc,
                 **kwargs)


def train_scratch(model: nn.Module, data: DataSplits, train_config: TrainConfig, *,
                  desc: str = "scratch", **kwargs) -> TrainResult:
    """Train ``model`` in place on the labels only (no teacher): cross-entropy, or the task's
    label loss (``Task.label_loss``)."""
    task = kwargs.get("task")
    loss = LOSSES.get(task.label_loss if task is not None else "ce")()
    return train(model, data, train_config, [Term("ce", 1.0, loss)], desc=desc, **kwargs)
