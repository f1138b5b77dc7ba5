"""What the stages of a run share: the ``RunContext`` (recipe, task, data, resume store, log,
timings, what each stage produced) and the ``Product`` a stage leaves (a float or quantized model,
or a teacher given as an ONNX file)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.distill.trainer import TrainConfig, TrainResult
from edgekd.models.factory import ModelSpec, create_model, load_checkpoint, save_checkpoint
from edgekd.recipe import Recipe
from edgekd.resume import RunStore

Log = Callable[[str], None]


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


@dataclass
class Product:
    """What one stage produced.

    Attributes:
        stage: the stage's name (report entries are ``<stage>.<format>``).
        model: the PyTorch model; None for a teacher given as an ONNX file (``onnx_path``).
        spec: the architecture it was built from.
        quantized: a frozen int8 model (QAT or PTQ): exported with an integer interface where
            the format has one, and validated against the target's scheme.
        exported: written to every export format (the scratch baseline is compared in PyTorch only).
        qat: the QATConfig dict an int8 checkpoint is rebuilt from.
        fit: the training summary (``TrainResult``) or what the stage records instead.
        base: the float model a quantized product was made from (its layers name the precisions).
        info: extra report fields (e.g. ``mixed_precision``).
        onnx_path: a teacher given as an ONNX file.
    """

    stage: str
    model: nn.Module | None
    spec: ModelSpec
    quantized: bool = False
    exported: bool = True
    qat: dict | None = None
    fit: TrainResult | dict | None = None
    base: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    onnx_path: str | None = None


@dataclass
class RunContext:
    """The state a run's stages read and extend, in stage order."""

    recipe: Recipe
    out: Path
    task: Any  # edgekd.tasks.base.Task
    data: Any  # edgekd.data.DataSplits
    store: RunStore
    qat_config: Any  # the resolved QATConfig (mixed precision may add per-layer precisions)
    targets: list = field(default_factory=list)  # the recipe's TargetProfiles
    log: Log = lambda msg: None
    cache_dir: Path = field(default_factory=default_cache_dir)
    resume: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    teacher: nn.Module | None = None  # the PyTorch teacher (None: an ONNX teacher, or not built yet)
    teacher_provider: Any = None  # what students learn from (edgekd.distill.teachers)
    provider_fit: dict[str, Any] = field(default_factory=dict)
    student: nn.Module | None = None  # the distilled float student, which quantization starts from
    mixed: Any = None  # the mixed-precision result, when that pass ran
    _student_init: nn.Module | None = None
    _teacher_checkpoint: nn.Module | None = None

    def stage_shift(self, training: TrainConfig) -> int:
        """The augmentation shift of one training stage: its own ``shift``, else ``data.shift``
        (0 when ``data.augment`` is off)."""
        return stage_shift(self.recipe, training)

    def fit_kwargs(self, training: TrainConfig) -> dict[str, Any]:
        """The trainer arguments every training stage shares."""
        return {"task": self.task, "augment_shift": self.stage_shift(training),
                "batch_size": self.recipe.data.batch_size, "resume": self.resume, "run_key": self.store.key}

    def model_args(self) -> dict[str, Any]:
        return self.task.model_args(self.data)

    def student_init(self) -> nn.Module:
        """A copy of the students' common initialisation, so the scratch baseline and the
        distilled student start from the same weights: random (seeded by the recipe), or the
        weights of ``student.checkpoint``."""
        if self._student_init is None:
            torch.manual_seed(self.recipe.seed)
            spec = self.recipe.student
            self._student_init = (load_student_checkpoint(spec, self.log) if spec.checkpoint
                                  else create_model(spec, **self.model_args()))
        return copy.deepcopy(self._student_init)

    def teacher_checkpoint(self) -> nn.Module:
        """The model of ``teacher.checkpoint``, read once (the compatibility check and the teacher
        stage share it; a teacher from a checkpoint is never trained)."""
        if self._teacher_checkpoint is None:
            self._teacher_checkpoint, _ = load_checkpoint(self.recipe.teacher.checkpoint)
        return self._teacher_checkpoint

    def checkpoint_fields(self) -> dict[str, Any]:
        """What every checkpoint of this run records about the task and data."""
        fields = {"model_args": self.model_args(), "task": self.task.to_dict(self.data)}
        if not isinstance(self.data.x_train, tuple):
            fields["input_shape"] = tuple(self.data.input_shape)
        return fields

    def trained(self, stage: str, spec: ModelSpec, qat: dict | None,
                train_fn: Callable[[Path], tuple[nn.Module, Any]]) -> tuple[nn.Module, Any]:
        """Run ``train_fn(state_path) -> (model, fit)`` for ``stage``, or load the model a resumed
        run already finished; the finished model is saved to ``models/<stage>.pt`` (rank 0)."""
        done = self.store.finished(stage)
        if done is not None:
            model, meta = load_checkpoint(done)
            return model, meta["extra"].get("training")
        model, fit = train_fn(self.store.state_path(stage))
        if self.store.lead:
            save_checkpoint(self.store.model_path(stage), model, spec, qat=qat, **self.checkpoint_fields(),
                            extra={"data_fingerprint": self.data.fingerprint, "run_key": self.store.key,
                                   "training": fit_summary(fit)})
            self.store.state_path(stage).unlink(missing_ok=True)  # the finished model supersedes it
        return model, fit


def load_student_checkpoint(spec: ModelSpec, log: Log) -> nn.Module:
    """The float model of ``student.checkpoint``, which both students start from.

    Raises:
        ModelLoadError: the file is missing or unreadable.
        ConfigError: it holds another architecture than ``student.arch``, or an int8 model.
    """
    model, meta = load_checkpoint(spec.checkpoint)
    saved = meta["model"].get("arch")
    if saved != spec.arch:
        raise ConfigError(f"student.checkpoint {spec.checkpoint} holds architecture {saved!r} but student.arch "
                          f"is {spec.arch!r}; set student.arch: {saved}, or name a checkpoint of {spec.arch!r}")
    if meta.get("qat"):
        raise ConfigError(f"student.checkpoint {spec.checkpoint} is an int8 (quantized) checkpoint; the students "
                          f"start from a float model (the run quantizes it itself)")
    log(f"students: start from the weights of {spec.checkpoint}")
    return model.train()


def stage_shift(recipe: Recipe, training: TrainConfig) -> int:
    """The augmentation shift of one training stage: its own ``shift``, else ``data.shift``
    (0 when ``data.augment`` is off)."""
    if not recipe.data.augment:
        return 0
    return training.shift if training.shift is not None else recipe.data.shift


def fit_summary(fit) -> dict:
    if isinstance(fit, TrainResult):
        return {"epochs": len(fit.history), "best_epoch": fit.best_epoch,
                "best_val_accuracy": fit.best_val_accuracy, "metric": fit.metric,
                "seconds": round(fit.seconds, 2), "history": fit.history}
    return dict(fit or {})
