"""LiteRT (TensorFlow Lite) sessions: the interpreter of ``ai_edge_litert``, or of the older
``tflite_runtime`` wheel when that is the one installed.

Options (a target profile's ``runtimes: {litert: {...}}``):
    xnnpack (bool, default True): apply the XNNPACK delegate, as TFLite does by default
        (``OpResolverType.AUTO``); False runs the built-in kernels only
        (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
    accelerator (cpu, default; gpu, npu): with the Interpreter, gpu and npu are refused
        (RuntimeBackendError): it has no GPU/NPU path, and a silent CPU run would mislead. With
        the CompiledModel they are asked of LiteRT alone, without the CPU: a machine without
        that accelerator is a RuntimeBackendError too.
    api (interpreter, default; compiled_model): the classic ``Interpreter`` (the one API of
        ``tflite_runtime``), or LiteRT 2's ``CompiledModel`` (``runtime/litert_compiled.py``),
        the API ``litert-benchmark`` times and the one with GPU/NPU accelerators.

Callers see the same contract as every runtime: float32 in, float32 logits out. A full-integer
model with an int8/uint8 interface gets its input quantized with the input tensor's (scale,
zero point), ``q = clamp(round(x / s) + z)`` rounding half away from zero as TFLite's QUANTIZE
kernel does, and its output dequantized, ``x = (q - z) * s`` (Jacob et al. 2018).

A TFLite input shape is static. At load the session tries another batch size
(``resize_tensor_input`` + ``allocate_tensors``): if the model follows, ``input_shape[0]`` is None
and ``run`` resizes to each new batch; if not, the batch is fixed and reported as an int.
"""

from __future__ import annotations

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

OPTIONS = {"xnnpack": True, "accelerator": "cpu", "api": "interpreter"}
APIS = ("interpreter", "compiled_model")


class LiteRTBatching(PhasedSession):
    """What both LiteRT APIs share: a TFLite input shape is static, so a session probes once
    whether the model follows another batch size (``input_shape[0]`` None) and resizes to each
    new batch; otherwise the batch is fixed. Subclasses give ``_allocate(batch)`` (shape the
    model for ``batch``, ModelLoadError when it cannot) and ``_output_batch()``."""

    path: Path
    input_shape: list[int | None]
    _batch: int  # what the model is shaped for now
    _stored_batch: int  # the batch size in the file

    def _fit_batch(self, x: np.ndarray) -> None:
        """Check ``x``'s sample shape and shape the model for its batch."""
        if list(x.shape[1:]) != self.input_shape[1:]:
            raise RuntimeBackendError(f"{self.path}: input of shape {tuple(x.shape)} does not fit the "
                                      f"model's input {self.input_shape} (only the batch may differ)")
        if x.shape[0] == self._batch:
            return
        if self.input_shape[0] is not None:
            raise ModelLoadError(f"{self.path}: the model's batch size is fixed at {self._stored_batch}; "
                                 f"it cannot run a batch of {x.shape[0]} (re-export it with a resizable "
                                 f"batch or run batches of {self._stored_batch})")
        self._allocate(x.shape[0])

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

    def _allocate(self, batch: int) -> None:
        raise NotImplementedError

    def _output_batch(self) -> int:
        raise NotImplementedError


class LiteRTSession(LiteRTBatching):
    """A .tflite model in a LiteRT interpreter: ``info``, ``input_shape`` and ``run(x)``."""

    def __init__(self, path: Path, threads: int, options: dict):
        xnnpack = check_options(options)["xnnpack"]
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.path = path
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                            experimental_op_resolver_type=resolver)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:  # not a TFLite flatbuffer; an op failed to prepare
            raise ModelLoadError(f"{path}: LiteRT cannot load it ({first_line(err)})") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._input_quant = io_quantization(path, self._input, "input")
        self._output_quant = io_quantization(path, self._output, "output")
        shape = [int(d) for d in self._input["shape"]]
        self._batch = self._stored_batch = shape[0]  # _batch: what the interpreter is allocated for
        self.input_shape: list[int | None] = [None if self._batch_is_resizable() else shape[0], *shape[1:]]
        self.info = {"runtime": "litert", "runtime_version": _package.__version__, "device": "CPU",
                     "threads": threads, "xnnpack": xnnpack, "interpreter": _package.__name__,
                     "input_dtype": np.dtype(self._input["dtype"]).name, "api": "interpreter",
                     "inference_clock": "perf_counter around Interpreter.invoke"}

    def feed(self, x: np.ndarray) -> None:
        """Put one batch ``x`` (float32, the model's input layout) into the input tensor."""
        self._fit_batch(x)
        self._interpreter.set_tensor(self._input["index"], to_model_input(x, self._input["dtype"], self._input_quant))

    def infer(self) -> None:
        self._interpreter.invoke()

    def fetch(self) -> np.ndarray:
        return from_model_output(self._interpreter.get_tensor(self._output["index"]), self._output_quant)

    def coverage(self, x: np.ndarray) -> float:
        """Share of the model's ops the XNNPACK delegate took (1.0 when built-in kernels were
        asked for: they run every op). The interpreter lists the original ops and the DELEGATE
        ops that replaced some of them; an original op belongs to a delegate partition when it
        lies between that DELEGATE's inputs and its outputs."""
        if not self.info["xnnpack"]:
            return 1.0
        ops = self._interpreter._get_ops_details()  # no public API for the execution plan
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

    def _allocate(self, batch: int) -> None:
        shape = [batch, *(int(d) for d in self._input["shape"][1:])]
        try:
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{self.path}: the model's batch size is fixed at {self._stored_batch}; "
                                 f"LiteRT cannot resize it to {batch} ({first_line(err)})") from None
        self._batch = batch

    def _output_batch(self) -> int:
        return int(self._interpreter.get_output_details()[0]["shape"][0])


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
    """(scale, zero point) of an integer input/output; None for a float tensor."""
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return None
    params = detail.get("quantization_parameters") or {}
    scales, zero_points = list(params.get("scales", [])), list(params.get("zero_points", []))
    if not scales and detail.get("quantization", (0.0, 0))[0]:  # older interpreters: per tensor only
        scales, zero_points = [detail["quantization"][0]], [detail["quantization"][1]]
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


def open_session(path: Path, threads: int, options: dict):
    """Load ``path`` in LiteRT (``edgekd.runtime.open_session(path, "litert", ...)``).

    Args:
        path: a .tflite file.
        threads: interpreter threads (``num_threads``), recorded in ``info["threads"]``.
        options: ``{"xnnpack": bool, "accelerator": "cpu"|"gpu"|"npu", "api": "interpreter"|
            "compiled_model"}`` (defaults: XNNPACK, CPU, the Interpreter), recorded in ``info``.

    Raises:
        ModelLoadError: not a loadable TFLite model, or an input/output edgekd cannot feed.
        ConfigError: an unknown option or value; the CompiledModel API asked of a package
            without it (tflite_runtime).
        RuntimeBackendError: a GPU/NPU accelerator that is not there.
    """
    if check_options(options)["api"] == "compiled_model":
        from edgekd.runtime.litert_compiled import CompiledModelSession

        return CompiledModelSession(path, threads, options)
    return LiteRTSession(path, threads, options)
