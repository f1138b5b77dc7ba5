"""Typed errors of edgekd.

Every error says what was wrong, where (file, field, graph node) and how to fix it. The CLI turns
them into one clean paragraph and an exit code; Python users catch them by type.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeKDError(Exception):
    """Base class of every error edgekd raises on purpose."""

    exit_code = 2


class ConfigError(EdgeKDError, ValueError):
    """A recipe, budget file, target profile or config value is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in a registry (model, loss, exporter, runtime, target) does not exist."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        hint = " (or write package.module:callable)" if kind == "model" else ""
        plural = f"{kind}es" if kind.endswith(("s", "x", "sh", "ch")) else f"{kind}s"  # "losses", not "losss"
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.valid)}; "
                         f"valid {plural}: {', '.join(self.valid) or '(none registered)'}{hint}")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class DataError(EdgeKDError):
    """A dataset file or folder cannot be used (missing, wrong format, wrong shapes or labels)."""


class WriteError(EdgeKDError, OSError):
    """A file could not be written (full disk, no permission); names the file and the free space."""

    def __str__(self) -> str:
        return self.args[0]


class ModelLoadError(EdgeKDError):
    """A model, checkpoint or artifact file is missing, corrupt or of the wrong kind."""


class ExportError(EdgeKDError):
    """A model could not be exported; the message names the operator or node when known."""


class RuntimeBackendError(EdgeKDError):
    """A runtime (onnxruntime, OpenVINO, ...) is missing or failed to load or run an artifact."""

    exit_code = 3


class BenchmarkError(RuntimeBackendError):
    """A benchmark child process failed or returned no result."""


class BudgetError(ConfigError):
    """A budget file is invalid (unknown metric, bad unit, bad glob)."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class QuantizationError(EdgeKDError):
    """A model cannot be prepared for, calibrated or converted by quantization."""


class TrainingError(EdgeKDError):
    """Training cannot continue (e.g. the loss became NaN); the message names epoch and loss term."""


class EstimateError(EdgeKDError):
    """An artifact cannot be estimated (e.g. a tensor shape cannot be inferred); names the tensor."""


class DryRunError(ConfigError):
    """The run's dry run (before any training) found a step after training that would fail for
    this model: an export format or the target cannot take it. Names the model, step and format."""
