"""edgekd: distil, quantize, export and benchmark PyTorch models for edge devices.

The pipeline, stage by stage: ``data -> models -> distill -> quant -> export -> bench -> budgets``;
a task (``edgekd.tasks``) says what the model takes and gives.
``import edgekd`` is light: torch and the runtimes load only when an API that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekd.errors import (
    BenchmarkError,
    BudgetError,
    ConfigError,
    DataError,
    DryRunError,
    EdgeKDError,
    EstimateError,
    ExportError,
    ModelLoadError,
    QuantizationError,
    RuntimeBackendError,
    TrainingError,
    UnknownNameError,
)

__version__ = "0.1.0"

# public name -> module that defines it; imported on first access (PEP 562)
_LAZY = {
    "DataConfig": "edgekd.data", "load_data": "edgekd.data",
    "ModelSpec": "edgekd.models", "create_model": "edgekd.models", "list_models": "edgekd.models",
    "load_checkpoint": "edgekd.models", "save_checkpoint": "edgekd.models",
    "register_model": "edgekd.models",
    "DistillConfig": "edgekd.distill", "TrainConfig": "edgekd.distill", "distill": "edgekd.distill",
    "train_scratch": "edgekd.distill", "evaluate": "edgekd.distill", "list_losses": "edgekd.distill",
    "QATConfig": "edgekd.quant", "prepare_qat": "edgekd.quant", "calibrate": "edgekd.quant",
    "freeze": "edgekd.quant",
    "export": "edgekd.export", "export_onnx_file": "edgekd.export", "list_exporters": "edgekd.export",
    "open_session": "edgekd.runtime", "evaluate_session": "edgekd.runtime",
    "list_runtimes": "edgekd.runtime",
    "benchmark": "edgekd.bench", "BenchSettings": "edgekd.bench",
    "load_target": "edgekd.targets", "list_targets": "edgekd.targets",
    "load_budget": "edgekd.budgets", "check": "edgekd.budgets",
    "Report": "edgekd.report", "load_report": "edgekd.report",
    "Recipe": "edgekd.recipe", "load_recipe": "edgekd.recipe", "demo_recipe": "edgekd.recipe",
    "run": "edgekd.pipeline", "list_stages": "edgekd.pipeline",
    "create_task": "edgekd.tasks", "list_tasks": "edgekd.tasks", "register_task": "edgekd.tasks",
    "TensorSpec": "edgekd.tasks.spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["BenchmarkError", "BudgetError", "ConfigError", "DataError", "DryRunError", "EdgeKDError", "EstimateError", "ExportError",
           "ModelLoadError", "QuantizationError", "RuntimeBackendError", "TrainingError",
           "UnknownNameError", "__version__", *_LAZY]
