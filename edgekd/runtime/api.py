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

from edgekd.errors import ConfigError, DataError, ModelLoadError, RuntimeBackendError
from edgekd.registry import Registry
from edgekd.tasks.spec import TensorSpec


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
    inputs: list[TensorSpec]  # every input: name, dtype, shape (named or None where dynamic)
    outputs: list[TensorSpec]
    input_shape: list[int | None]  # the first input's shape, None where dynamic

    def feed(self, x) -> None: ...  # x (one array, a tuple in input order, or {name: array}) into the runtime

    def infer(self) -> float | None: ...  # run on what was fed

    def fetch(self) -> np.ndarray: ...  # float32 first output of the last infer

    def fetch_all(self) -> list[np.ndarray]: ...  # every output of the last infer

    def run(self, x) -> np.ndarray: ...


Feed = np.ndarray | tuple | list | dict


class PhasedSession:
    """Base of the runtime sessions: ``run(x)`` is ``feed(x)``, ``infer()``, ``fetch()``."""

    inputs: list[TensorSpec]

    def run(self, x: Feed) -> np.ndarray:
        self.feed(x)
        self.infer()
        return self.fetch()

    def arrays(self, x: Feed) -> dict[str, np.ndarray]:
        """``x`` as {input name: array}: one array for a one-input model, a tuple or list in
        input order, or a dict by name.

        Raises:
            RuntimeBackendError: the inputs given do not match the model's (names or count).
        """
        names = [s.name for s in self.inputs]
        if isinstance(x, dict):
            missing, unknown = [n for n in names if n not in x], [n for n in x if n not in names]
            if missing or unknown:
                raise RuntimeBackendError(f"{getattr(self, 'path', 'model')}: inputs {sorted(x)} do not match the "
                                          f"model's {names}")
            return {n: np.asarray(x[n]) for n in names}
        values = list(x) if isinstance(x, (tuple, list)) else [x]
        if len(values) != len(names):
            raise RuntimeBackendError(f"{getattr(self, 'path', 'model')}: the model has {len(names)} input(s) "
                                      f"{names}, got {len(values)} array(s)")
        return {n: np.asarray(v) for n, v in zip(names, values)}


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
    """An artifact's outputs on a dataset: accuracy against labels (classes on ``class_axis``),
    top-1 agreement with reference predictions (or the task's agreement with reference outputs),
    the logits themselves (for other metrics), and per-output parity with the reference outputs."""

    accuracy: float | None
    agreement: float | None
    predictions: np.ndarray = field(repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    parity: dict[str, Any] | None = None


def per_op_rows(total: dict[str, dict], runs: int) -> list[dict]:
    """Per-op profile rows from ``{op: {..., "total_us": summed over runs}}``: each row with
    ``mean_ms`` per inference instead of the total, slowest first."""
    rows = [{k: v for k, v in r.items() if k != "total_us"} | {"mean_ms": r["total_us"] / runs / 1e3}
            for r in total.values()]
    return sorted(rows, key=lambda r: -r["mean_ms"])


def run_joined(session: Session, x: Feed, task) -> np.ndarray:
    """Run ``x`` and return every output joined as ``task.join_outputs`` does (a detection head's
    boxes and scores as one (N, A, 4 + K) array, found by the artifact's output names)."""
    session.feed(x)
    session.infer()
    return task.join_outputs(session.fetch_all(), [s.name for s in getattr(session, "outputs", None) or []])


def evaluate_session(session: Session, x, y: np.ndarray | None = None, reference: np.ndarray | None = None,
                     batch_size: int = 256, class_axis: int = -1, *, task=None,
                     reference_outputs: np.ndarray | None = None) -> Evaluation:
    """Run ``x`` through ``session`` in batches and score the first output's top-1 (classes on
    ``class_axis``) against labels ``y`` (-1: no label) and ``reference`` predictions.

    With a ``task`` (``edgekd.tasks``), every output is fetched and joined as the task's
    ``forward`` joins the model's (a detection head's boxes and scores); ``reference_outputs``
    (PyTorch's outputs on ``x``) then give the task's agreement (e.g. matching detections) and
    per-output parity instead of top-1 agreement.

    ``x`` is one array (N, ...) or a tuple of arrays in the model's input order (several inputs,
    the same N); each is cast to its input's dtype (token ids stay integers).

    Raises:
        DataError: a sample shape does not fit the artifact's input, or a dtype is not numeric.
    """
    if task is not None and reference is not None:
        raise ConfigError("evaluate_session: with a task, compare with reference_outputs (PyTorch's outputs), "
                          "not reference predictions")
    arrays = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    specs = getattr(session, "inputs", None) or [TensorSpec("input", "float32", tuple(session.input_shape))]
    if len(arrays) != len(specs):
        raise DataError(f"the data has {len(arrays)} input array(s), the artifact takes {len(specs)}: "
                        f"{', '.join(s.describe() for s in specs)}")
    for a, spec in zip(arrays, specs):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
                or a.dtype == np.bool_ and spec.dtype == "bool"):
            raise DataError(f"data of dtype {a.dtype} cannot feed the artifact's input {spec.name!r}; give integer "
                            f"or floating-point samples")
        expected = list(spec.shape[1:])
        if len(expected) != a.ndim - 1 or any(isinstance(e, int) and e >= 0 and e != d
                                              for e, d in zip(expected, a.shape[1:])):
            shown = [None if not isinstance(d, int) else d for d in spec.shape]
            raise DataError(f"data of shape {tuple(a.shape)} does not fit the artifact's input {spec.name!r} "
                            f"{shown} (batch first); export the model for this data or give "
                            f"data of the shape it was trained on")
    batch = specs[0].shape[0] if specs[0].shape else None
    fixed = isinstance(batch, int) and batch > 0
    step = batch if fixed else batch_size  # fixed-batch artifacts: their size
    n = len(arrays[0])
    if fixed and n % step:
        raise ConfigError(f"artifact has a fixed batch size {batch} that does not divide {n} samples")
    chunks = []
    for i in range(0, n, step):
        feed = [np.ascontiguousarray(a[i:i + step], np.dtype(spec.dtype)) for a, spec in zip(arrays, specs)]
        one = feed[0] if len(feed) == 1 else tuple(feed)
        chunks.append(session.run(one) if task is None else run_joined(session, one, task))
    logits = np.concatenate(chunks)
    if task is not None:
        pred = task.predictions(logits)
        parity = agreement = None
        if reference_outputs is not None:
            agreement, parity = task.agreement(logits, reference_outputs), task.parity(logits, reference_outputs)
        accuracy = None
        if y is not None and task.teacher_target in ("class_logits", "token_logits"):  # (detection: mAP, elsewhere)
            value = task.metrics(logits, y).get("accuracy")
            accuracy = None if value is None or value != value else value  # NaN: no labelled sample
        return Evaluation(accuracy, agreement, pred, logits, parity)
    pred = logits.argmax(class_axis)
    accuracy = None
    if y is not None:
        keep = np.asarray(y) >= 0
        accuracy = float((pred[keep] == np.asarray(y)[keep]).mean()) if keep.any() else None
    agreement = None if reference is None else float((pred == reference).mean())
    return Evaluation(accuracy, agreement, pred, logits)
