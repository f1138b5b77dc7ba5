"""What both LiteRT APIs share (``litert.py``: the Interpreter; ``litert_compiled.py``: LiteRT 2's
CompiledModel): options, the float32 interface over int8/uint8 model inputs and outputs, and the
batch handling of a static-shaped TFLite model with one or several inputs.

A full-integer model with an int8/uint8 interface gets float inputs quantized with the input
tensor's (scale, zero point), ``q = clamp(round(x / s) + z)`` rounding half away from zero as
TFLite's QUANTIZE kernel does, and its output dequantized, ``x = (q - z) * s`` (Jacob et al.
2018). Integer inputs that are not quantized (token ids, masks) are fed as they are.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import ai_edge_litert as _package
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError:  # the standalone TFLite interpreter wheel has the same interpreter API
    try:
        import tflite_runtime as _package
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise ImportError("neither ai_edge_litert nor tflite_runtime is installed") from None

from edgekd.errors import ConfigError, ModelLoadError, RuntimeBackendError, did_you_mean
from edgekd.runtime.api import PhasedSession
from edgekd.tasks.spec import TensorSpec

OPTIONS = {"xnnpack": True, "accelerator": "cpu", "api": "interpreter"}
APIS = ("interpreter", "compiled_model")


@dataclass
class ModelInput:
    """One input of a TFLite model: name, the model's dtype, its quantization (None: fed as is)
    and its stored shape."""

    name: str
    dtype: np.dtype
    quant: tuple[float, int] | None
    shape: list[int]

    def spec(self, resizable: bool) -> TensorSpec:
        """The interface edgekd presents: float32 where the model quantizes the input itself."""
        dtype = "float32" if self.quant is not None else self.dtype.name
        return TensorSpec(self.name, dtype, (None if resizable else self.shape[0], *self.shape[1:]))


class LiteRTBatching(PhasedSession, abc.ABC):
    """A TFLite input shape is static, so a session probes once whether the model follows another
    batch size (``input_shape[0]`` None) and resizes every input to each new batch; otherwise the
    batch is fixed. Subclasses give ``_allocate(batch)`` (shape the model for ``batch``,
    ModelLoadError when it cannot) and ``_output_batch()``."""

    path: Path
    input_shape: list[int | None]
    _model_inputs: list[ModelInput]
    _batch: int  # what the model is shaped for now
    _stored_batch: int  # the batch size in the file
    _logged_first_run: bool = False

    def infer(self) -> None:
        """Run on what was fed. The first run creates the XNNPACK delegate, which logs to fd 2:
        that one is held back (``native_log``); later runs are not wrapped (they are timed)."""
        if self._logged_first_run:
            self._invoke()
            return
        with native_log():
            self._invoke()
        self._logged_first_run = True

    @abc.abstractmethod
    def _invoke(self) -> None:
        """Run the model once on its input buffers."""

    def _describe_inputs(self) -> None:
        """``inputs`` and ``input_shape`` once ``_model_inputs`` and the batch are known."""
        resizable = self._batch_is_resizable()
        self.inputs = [i.spec(resizable) for i in self._model_inputs]
        self.input_shape = list(self.inputs[0].shape)

    def _model_arrays(self, x) -> list[np.ndarray]:
        """``x`` checked against every input's sample shape, the model shaped for its batch, and
        each array as the model takes it (quantized where the model's input is)."""
        arrays = list(self.arrays(x).values())
        for a, inp in zip(arrays, self._model_inputs):
            if list(a.shape[1:]) != inp.shape[1:]:
                raise RuntimeBackendError(f"{self.path}: input {inp.name!r} of shape {tuple(a.shape)} does not fit "
                                          f"the model's {[None, *inp.shape[1:]]} (only the batch may differ)")
        batch = arrays[0].shape[0]
        if batch != self._batch:
            if self.input_shape[0] is not None:
                raise ModelLoadError(f"{self.path}: the model's batch size is fixed at {self._stored_batch}; "
                                     f"it cannot run a batch of {batch} (re-export it with a resizable "
                                     f"batch or run batches of {self._stored_batch})")
            self._allocate(batch)
        return [to_model_input(a, inp.dtype, inp.quant) for a, inp in zip(arrays, self._model_inputs)]

    def _batch_is_resizable(self) -> bool:
        """Allocate for another batch size and back: does the output's batch follow the input's?"""
        batch = self._batch
        probe = 2 if batch == 1 else 1
        try:
            self._allocate(probe)
            follows = self._output_batch() == probe
        except ModelLoadError:
            follows = False
        self._allocate(batch)
        return follows

    @abc.abstractmethod
    def _allocate(self, batch: int) -> None:
        """Shape the model for ``batch``; ModelLoadError when it cannot."""

    @abc.abstractmethod
    def _output_batch(self) -> int:
        """The first output's batch size as the model is shaped now."""


def to_model_input(x: np.ndarray, dtype, quant: tuple[float, int] | None) -> np.ndarray:
    """Float32 ``x`` as the model's input: cast, or quantized with (scale, zero point)."""
    if quant is None:
        return np.ascontiguousarray(x, dtype)
    scale, zero_point = quant
    info = np.iinfo(dtype)
    q = round_half_away_from_zero(np.asarray(x, np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def from_model_output(out: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    """The model's output as float32: dequantized with (scale, zero point) when it is integer."""
    if quant is None:
        return out.astype(np.float32, copy=False)
    scale, zero_point = quant
    return (out.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def round_half_away_from_zero(v: np.ndarray) -> np.ndarray:
    """std::round, as TFLite's QUANTIZE uses (numpy's round goes half to even); exact in float."""
    whole = np.trunc(v)
    return whole + np.trunc(2 * (v - whole))


def io_quantization(path: Path, detail: dict, role: str) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized integer input/output; None for a float tensor and for
    an integer one without quantization (token ids, masks, class indices: passed as they are)."""
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return None
    params = detail.get("quantization_parameters") or {}
    scales, zero_points = list(params.get("scales", [])), list(params.get("zero_points", []))
    if not scales and detail.get("quantization", (0.0, 0))[0]:  # older interpreters: per tensor only
        scales, zero_points = [detail["quantization"][0]], [detail["quantization"][1]]
    if not scales and (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        return None
    if len(scales) != 1 or not np.issubdtype(dtype, np.integer):
        kind = "no quantization parameters" if not scales else f"{len(scales)} scales"
        raise ModelLoadError(f"{path}: the model's {role} {detail['name']!r} is {dtype.name} with {kind}; "
                             f"edgekd runs models with a float32 {role} or a per-tensor quantized "
                             f"int8/uint8 {role}")
    return float(scales[0]), int(zero_points[0])


def check_options(options: dict) -> dict:
    """The options merged over the defaults; ConfigError for a bad one, RuntimeBackendError for a
    GPU/NPU accelerator the chosen API cannot reach (never a silent CPU run)."""
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise ConfigError(f"unknown LiteRT option {unknown[0]!r}{did_you_mean(unknown[0], OPTIONS)}; "
                          f"valid options: {', '.join(OPTIONS)}")
    merged = OPTIONS | options
    if not isinstance(merged["xnnpack"], bool):
        raise ConfigError(f"LiteRT option xnnpack: expected true or false, got {merged['xnnpack']!r}")
    if merged["accelerator"] not in ("cpu", "gpu", "npu"):
        raise ConfigError(f"LiteRT option accelerator: expected cpu, gpu or npu, got {merged['accelerator']!r}")
    if merged["api"] not in APIS:
        raise ConfigError(f"LiteRT option api: expected {' or '.join(APIS)}, got {merged['api']!r}"
                          f"{did_you_mean(str(merged['api']), APIS)}")
    if merged["accelerator"] != "cpu" and merged["api"] == "interpreter":
        raise RuntimeBackendError(f"LiteRT {merged['accelerator'].upper()} accelerator is not available to the "
                                  f"Interpreter API, which runs on the CPU; use api: compiled_model (LiteRT's "
                                  f"CompiledModel reaches GPU and NPU accelerators where the machine has them) or "
                                  f"an adb target (benchmark_model --use_gpu / an NPU delegate)")
    return merged


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def delegated_share(interpreter) -> float:
    """Share of a model's ops the delegate (XNNPACK) took in ``interpreter``. The interpreter lists
    the original ops and the DELEGATE ops that replaced some of them; an original op belongs to a
    delegate partition when it lies between that DELEGATE's inputs and its outputs."""
    ops = interpreter._get_ops_details()  # no public API for the execution plan
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): i for i, op in enumerate(originals) for t in op["outputs"]}
    delegated: set[int] = set()
    for op in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in op["inputs"]}
        stack = [int(t) for t in op["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in originals[index]["inputs"] if int(t) >= 0)
    return len(delegated) / len(originals) if originals else 1.0


class NativeLog:
    """What native code wrote to fd 2 inside ``native_log()``."""

    def __init__(self, text: str = ""):
        self.text = text

    def errors(self) -> list[str]:
        """The lines that report an error (LiteRT's ``ERROR:``/``E0000`` lines), shortened."""
        return [ln.strip()[:200] for ln in self.text.splitlines()
                if ln.startswith(("ERROR", "E0"))]


@contextlib.contextmanager
def native_log():
    """Hold what native code writes to file descriptor 2 (LiteRT's INFO lines on every load and
    on the first inference: "Created TensorFlow Lite XNNPACK delegate", accelerator registry)
    instead of letting it reach the user's terminal; the caller reads it for error messages.
    With ``EDGEKD_DEBUG`` set (``edgekd --debug``) the held text is written out afterwards."""
    log = NativeLog()
    hush_at_exit()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            log.text = held.read().decode(errors="replace")
            if log.text and os.environ.get("EDGEKD_DEBUG"):
                sys.stderr.write(log.text)
                sys.stderr.flush()


_HUSHED = False


def hush_at_exit() -> None:
    """When the process exits, LiteRT's accelerator registry logs each accelerator it destroys
    ("DestroyAccelerator") from C++ destructors that run after Python's last line: point fd 2
    at /dev/null at that point (not under ``EDGEKD_DEBUG``). Registered once, by ``native_log``."""
    global _HUSHED
    if _HUSHED or os.environ.get("EDGEKD_DEBUG"):
        return
    _HUSHED = True

    def hush() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    atexit.register(hush)  # atexit runs last-registered first: this runs after edgekd's own handlers


def xnnpack_coverage(path: Path, threads: int) -> float:
    """``delegated_share`` of ``path`` in an Interpreter with XNNPACK (the partitions LiteRT's
    CPU path makes of the same file)."""
    with native_log():
        interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                  experimental_op_resolver_type=OpResolverType.AUTO)
        interpreter.allocate_tensors()
    return delegated_share(interpreter)
