"""Recipes: one YAML file that names every stage of a run (data, teacher, student, distillation,
QAT, export formats, targets, budgets). ``edgekd demo`` runs the built-in ``recipes/demo.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from edgekd.budgets.budget import BudgetRule
from edgekd.config import Config, FieldError, check_name, load_yaml, parse_yaml
from edgekd.data.datasets import DataConfig
from edgekd.distill.api import DistillConfig
from edgekd.distill.trainer import TrainConfig
from edgekd.errors import ConfigError, UnknownNameError
from edgekd.export.api import EXPORTERS
from edgekd.models.factory import ModelSpec
from edgekd.quant.ptq import PTQConfig
from edgekd.quant.qat import QATConfig
from edgekd.runfolder import check_run_name
from edgekd.targets import target_file
from edgekd.tasks import TASKS

SCHEMA_VERSION = 1


@dataclass
class TFLiteOptions(Config):
    """The interface of exported ``.tflite`` files.

    Attributes:
        io: "float" (quantize/dequantize inside the model) or "int8" (int8 inputs and outputs;
            the caller quantizes with the input tensor's scale and zero point). Int8 models only.
        layout: "nchw" (as the ONNX model; one transpose at each 4-D input and output) or "nhwc".
        float_fallback: int8 models may run ops the ONNX file leaves float (LayerNorm, an L2
            norm) in float between DEQUANTIZE and QUANTIZE. Unset: the target decides (allowed
            unless its scheme is ``full_integer`` or has no ``float_fallback``).
    """

    io: Literal["float", "int8"] = "float"
    layout: Literal["nchw", "nhwc"] = "nchw"
    float_fallback: bool | None = None


@dataclass
class ExportConfig(Config):
    """Formats to export (``edgekd list formats``); ONNX is always written, others derive from it."""

    formats: list[str] = field(default_factory=lambda: ["onnx", "openvino"])
    opset: int = 17
    tflite: TFLiteOptions = field(default_factory=TFLiteOptions)

    def __post_init__(self):
        for i, name in enumerate(self.formats):
            check_name(EXPORTERS, name, f"formats.{i}")
        if not 13 <= self.opset <= 21:
            raise FieldError("opset", f"expected an ONNX opset in 13..21, got {self.opset}")

    def options(self, quantized: bool = True, scheme=None) -> dict[str, dict]:
        """Per-format exporter options, as ``export(..., options=)`` takes them (a float model
        has no int8 interface, so ``tflite.io`` applies to quantized models only). ``scheme``: the
        target's quantization scheme, which decides an unset ``tflite.float_fallback``."""
        tflite = self.tflite.to_dict()
        if not quantized:
            tflite["io"] = "float"
        if tflite["float_fallback"] is None:
            tflite["float_fallback"] = scheme is not None and scheme.float_fallback and not scheme.full_integer
        return {"tflite": tflite}


@dataclass
class Recipe(Config):
    """A complete edgekd run.

    Attributes (besides the stage sections):
        task: the task (``edgekd list tasks``, or your ``package.module:Class``, a subclass of
            ``edgekd.tasks.base.Task``): inputs, data, metrics and the quality figure.
        shapes: lengths of the artifacts' dynamic axes in benchmarks, e.g. ``{sequence: 128}``
            (over the target profiles' ``shapes``; the batch comes from the benchmark settings).
    """

    name: str = "edgekd-run"
    seed: int = 0
    task: str = "image-classification"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(arch="cnn-teacher"))
    teacher_training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(arch="cnn-student-s"))
    student_training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40))
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    ptq: PTQConfig = field(default_factory=PTQConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    targets: list[str] = field(default_factory=lambda: ["x86-cpu"])
    benchmark: bool = True
    budgets: list[BudgetRule] = field(default_factory=list)
    shapes: dict[str, int] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.version != SCHEMA_VERSION:
            raise FieldError("version", f"recipe schema {self.version} is not supported "
                                        f"(this edgekd reads version {SCHEMA_VERSION})")
        try:
            check_run_name(self.name)
        except ConfigError as err:
            raise FieldError("name", str(err).removeprefix("name: ")) from None
        if ":" not in self.task:
            check_name(TASKS, self.task, "task")
        for axis, length in self.shapes.items():
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise FieldError(f"shapes.{axis}", f"expected a positive integer length, got {length!r}")
        if self.student_training.epochs < 1:
            raise FieldError("student_training.epochs", "a student trains for at least 1 epoch (0 is for "
                                                        "a pretrained teacher: teacher_training.epochs)")
        if not self.targets:
            raise FieldError("targets", "name at least one target (see `edgekd targets`)")
        for i, name in enumerate(self.targets):
            try:
                target_file(name)
            except UnknownNameError as err:
                raise FieldError(f"targets.{i}", str(err)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys, wrong types, bad values (file:line named).
    """
    data, source = load_yaml(path)
    if not data:  # an empty or comment-only file would otherwise run every default
        raise ConfigError(f"{path}: the recipe is empty (no settings, only comments or blank lines); "
                          f"start from `edgekd demo --show-recipe > {Path(path).name}` and edit it")
    return Recipe.from_dict(data, source)


DEMO_RECIPES = {"image-classification": "demo.yaml", "object-detection": "detection.yaml",
                "sentence-embedding": "sentence-embedding.yaml",
                "text-classification": "text-classification.yaml"}  # task -> file


def demo_recipe_text(task: str = "image-classification") -> str:
    """The built-in demo recipe of ``task`` (one of ``DEMO_RECIPES``), as YAML text.

    Raises:
        UnknownNameError: no demo for that task.
    """
    if task not in DEMO_RECIPES:
        from edgekd.errors import UnknownNameError

        raise UnknownNameError(f"no demo for task {task!r}; demos: {', '.join(DEMO_RECIPES)}")
    return resources.files("edgekd.recipes").joinpath(DEMO_RECIPES[task]).read_text(encoding="utf-8")


def demo_recipe(task: str = "image-classification") -> Recipe:
    data, source = parse_yaml(demo_recipe_text(task), f"<built-in {task} demo recipe>")
    return Recipe.from_dict(data, source)
