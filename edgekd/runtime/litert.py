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

Callers see the same contract as every runtime (float inputs in float32, integer inputs such
as token ids as they are, float32 first output), with int8/uint8 interfaces quantized as
``litert_common`` says, and the same batch handling: at load the session tries another batch size
(``resize_tensor_input`` + ``allocate_tensors``); if the model follows, the batch axis is dynamic
and every input is resized to each new batch; if not, the batch is fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import ModelLoadError
from edgekd.runtime.litert_common import (  # noqa: F401  (re-exported: the runtime's public names)
    APIS,
    OPTIONS,
    Interpreter,
    LiteRTBatching,
    OpResolverType,
    _package,
    delegated_share,
    ModelInput,
    check_options,
    first_line,
    from_model_output,
    io_quantization,
    native_log,
    round_half_away_from_zero,
    to_model_input,
)


class LiteRTSession(LiteRTBatching):
    """A .tflite model in a LiteRT interpreter: ``info``, ``inputs``, ``input_shape`` and ``run(x)``."""

    def __init__(self, path: Path, threads: int, options: dict):
        xnnpack = check_options(options)["xnnpack"]
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.path = path
        try:
            with native_log():
                self._interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                                experimental_op_resolver_type=resolver)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:  # not a TFLite flatbuffer; an op failed to prepare
            raise ModelLoadError(f"{path}: LiteRT cannot load it ({first_line(err)})") from None
        self._details = self._interpreter.get_input_details()
        self._model_inputs = [ModelInput(d["name"], np.dtype(d["dtype"]), io_quantization(path, d, "input"),
                                         [int(n) for n in d["shape"]]) for d in self._details]
        self._output_details = self._interpreter.get_output_details()
        self._output_quants = [io_quantization(path, d, "output") for d in self._output_details]
        self._batch = self._stored_batch = self._model_inputs[0].shape[0]  # what the interpreter is allocated for
        self._describe_inputs()
        self.outputs = [ModelInput(d["name"], np.dtype(d["dtype"]), q, [int(n) for n in d["shape"]]).spec(False)
                        for d, q in zip(self._output_details, self._output_quants)]
        self.info = {"runtime": "litert", "runtime_version": _package.__version__, "device": "CPU",
                     "threads": threads, "xnnpack": xnnpack, "interpreter": _package.__name__,
                     "input_dtype": self._model_inputs[0].dtype.name, "api": "interpreter",
                     "inference_clock": "perf_counter around Interpreter.invoke"}

    def feed(self, x) -> None:
        """Put one batch ``x`` (one array, a tuple in input order, or {name: array}) into the
        input tensors, quantized where the model's input is."""
        for detail, a in zip(self._details, self._model_arrays(x)):
            self._interpreter.set_tensor(detail["index"], a)

    def _invoke(self) -> None:
        self._interpreter.invoke()

    def fetch(self) -> np.ndarray:
        return from_model_output(self._interpreter.get_tensor(self._output_details[0]["index"]), self._output_quants[0])

    def fetch_all(self) -> list[np.ndarray]:
        return [from_model_output(self._interpreter.get_tensor(d["index"]), q)
                for d, q in zip(self._output_details, self._output_quants)]

    def coverage(self, x=None) -> float:
        """Share of the model's ops the XNNPACK delegate took (1.0 when built-in kernels were
        asked for: they run every op); see ``litert_common.delegated_share``."""
        return delegated_share(self._interpreter) if self.info["xnnpack"] else 1.0

    def _allocate(self, batch: int) -> None:
        try:
            for detail, inp in zip(self._details, self._model_inputs):
                self._interpreter.resize_tensor_input(detail["index"], [batch, *inp.shape[1:]])
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{self.path}: the model's batch size is fixed at {self._stored_batch}; "
                                 f"LiteRT cannot resize it to {batch} ({first_line(err)})") from None
        self._batch = batch

    def _output_batch(self) -> int:
        return int(self._interpreter.get_output_details()[0]["shape"][0])


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
