"""Neutral runtime API: open an artifact in a runtime, run it, evaluate it against labels.

A runtime module (``onnxruntime.py``, ``openvino.py``, ``litert.py``) defines ``open(path, threads, options)``
returning a ``Session``; the registry maps names to those modules so nothing heavy is imported
until a session is opened. Light enough to import in the benchmark child (no torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekd.errors import ConfigError, DataError, ModelLoadError
from edgekd.registry import Registry


class Session(Protocol):
    """An artifact loaded in a runtime, ready to run one input batch.

    ``run(x)`` is ``feed(x)``, ``infer()``, ``fetch()``; the benchmark child times ``infer()`` on
    its own, as the vendors' tools time inference on inputs already in place (``benchmark_app``,
    ``litert-benchmark``, ``benchmark_model``), and the whole call apart. ``infer`` returns its own
    duration in ms where the runtime's binding clocks the native call (OpenVINO's
    ``InferRequest.latency``: the clock benchmark_app reads), else None; ``info["inference_clock"]``
    says which clock a session's inference times come from.
    """

    info: dict[str, Any]  # runtime, version, device, threads, precision hint, inference clock, ...
    input_shape: list[int | None]

    def feed(self, x: np.ndarray) -> None: ...  # x into the runtime's input buffers (quantized if need be)

    def infer(self) -> float | None: ...  # run on what was fed

    def fetch(self) -> np.ndarray: ...  # float32 outputs of the last infer

    def run(self, x: np.ndarray) -> np.ndarray: ...


class PhasedSession:
    """Base of the runtime sessions: ``run(x)`` is ``feed(x)``, ``infer()``, ``fetch()``."""

    def run(self, x: np.ndarray) -> np.ndarray:
        self.feed(x)
        self.infer()
        return self.fetch()


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    module: str
    suffixes: tuple[str, ...]
    package: str  # pip package that provides it, for the "not installed" message

    def open(self, path: str | Path, threads: int, options: dict | None) -> Session:
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise ConfigError(f"runtime {self.name!r} is not installed ({err}); "
                              f"pip install {self.package}") from None
        return module.open_session(Path(path), threads, options or {})


RUNTIMES: Registry[RuntimeEntry] = Registry("runtime")
for _entry in (
    RuntimeEntry("onnxruntime", "edgekd.runtime.onnxruntime", (".onnx",), "onnxruntime"),
    RuntimeEntry("openvino", "edgekd.runtime.openvino", (".xml", ".onnx"), "openvino"),
    RuntimeEntry("litert", "edgekd.runtime.litert", (".tflite",), "ai-edge-litert"),
):
    RUNTIMES.register(_entry.name)(_entry)


def list_runtimes() -> list[str]:
    return RUNTIMES.names()


def runtime_for(path: str | Path) -> str:
    """The native runtime of an artifact, from its suffix (.onnx -> onnxruntime, .xml -> openvino,
    .tflite -> litert)."""
    suffix = Path(path).suffix.lower()
    for name in RUNTIMES.names():
        if RUNTIMES.get(name).suffixes[0] == suffix:
            return name
    raise ModelLoadError(f"{path}: unknown artifact type {suffix!r}; expected one of "
                         f"{', '.join(RUNTIMES.get(n).suffixes[0] for n in RUNTIMES.names())}")


def open_session(path: str | Path, runtime: str | None = None, threads: int = 1,
                 options: dict | None = None) -> Session:
    """Load ``path`` in ``runtime`` (default: the artifact's native runtime).

    Raises:
        ModelLoadError: the file is missing or the runtime cannot read it.
        ConfigError: unknown or uninstalled runtime, or a file type it cannot run.
        RuntimeBackendError: a requested device/provider is not available.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: artifact not found")
    entry = RUNTIMES.get(runtime or runtime_for(path))
    if path.suffix.lower() not in entry.suffixes:
        raise ConfigError(f"{path}: runtime {entry.name!r} cannot run {path.suffix} files "
                          f"(it runs {', '.join(entry.suffixes)})")
    return entry.open(path, threads, options)


@dataclass
class Evaluation:
    """Accuracy of an artifact on labelled data, and top-1 agreement with reference predictions."""

    accuracy: float
    agreement: float | None
    predictions: np.ndarray = field(repr=False)


def per_op_rows(total: dict[str, dict], runs: int) -> list[dict]:
    """Per-op profile rows from ``{op: {..., "total_us": summed over runs}}``: each row with
    ``mean_ms`` per inference instead of the total, slowest first."""
    rows = [{k: v for k, v in r.items() if k != "total_us"} | {"mean_ms": r["total_us"] / runs / 1e3}
            for r in total.values()]
    return sorted(rows, key=lambda r: -r["mean_ms"])


def evaluate_session(session: Session, x: np.ndarray, y: np.ndarray,
                     reference: np.ndarray | None = None, batch_size: int = 256) -> Evaluation:
    """Run ``x`` (N, C, H, W) through ``session`` and score top-1 against ``y`` and ``reference``.

    Raises:
        DataError: the data's sample shape does not fit the artifact's input, or its dtype is
            not numeric (integers and floats are cast to the input's type).
    """
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"data of dtype {x.dtype} cannot feed the artifact's numeric input; give integer "
                        f"or floating-point samples")
    expected = list(session.input_shape[1:])
    if len(expected) != x.ndim - 1 or any(e is not None and e != d for e, d in zip(expected, x.shape[1:])):
        raise DataError(f"data of shape {tuple(x.shape)} does not fit the artifact's input "
                        f"{[None, *expected]} (batch first); export the model for this data or give "
                        f"data of the shape it was trained on")
    batch = session.input_shape[0]
    step = batch_size if not isinstance(batch, int) else batch  # fixed-batch artifacts: their size
    if len(x) % step and isinstance(batch, int):
        raise ConfigError(f"artifact has a fixed batch size {batch} that does not divide {len(x)} samples")
    logits = np.concatenate([session.run(np.ascontiguousarray(x[i:i + step], np.float32))
                             for i in range(0, len(x), step)])
    pred = logits.argmax(1)
    agreement = None if reference is None else float((pred == reference).mean())
    return Evaluation(float((pred == y).mean()), agreement, pred)
