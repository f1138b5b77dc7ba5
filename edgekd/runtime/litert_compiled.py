"""LiteRT sessions through LiteRT 2's ``CompiledModel`` API (``api: compiled_model``).

The API ``litert-benchmark`` times (``run_by_name`` on input/output TensorBuffers filled once),
and the one that reaches GPU and NPU accelerators: the ``accelerator`` option is asked of LiteRT
alone, without the CPU beside it, so a machine without that accelerator fails to load
(RuntimeBackendError) instead of running on the CPU. The contract is that of every session
(float inputs in float32, integer ones such as token ids as they are, float32 first output;
int8/uint8 interfaces quantized as in ``litert_common.py``); quantization
parameters come from the flatbuffer, since CompiledModel's tensor details carry none.
"""

from __future__ import annotations

import atexit
import gc
import re
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, ModelLoadError, RuntimeBackendError
from edgekd.runtime.litert_common import (LiteRTBatching, native_log, ModelInput, check_options, first_line,
                                          from_model_output, io_quantization, xnnpack_coverage)

try:
    import ai_edge_litert as _package
    from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
    from ai_edge_litert.environment import Environment, EnvironmentOptions
    from ai_edge_litert.options import CpuKernelMode, CpuOptions, Options
    from ai_edge_litert.schema_py_generated import Model
except ImportError:
    raise ConfigError("LiteRT option api: compiled_model needs ai-edge-litert 2 or newer (pip install "
                      "ai-edge-litert); tflite_runtime has the Interpreter only: use api: interpreter") from None

ACCELERATORS = {"cpu": HardwareAccelerator.CPU, "gpu": HardwareAccelerator.GPU, "npu": HardwareAccelerator.NPU}


class CompiledModelSession(LiteRTBatching):
    """A .tflite model compiled by LiteRT for one accelerator: ``info``, ``inputs``, ``outputs``,
    ``input_shape``, ``run(x)`` (x: one array, a tuple in input order or {name: array})."""

    def __init__(self, path: Path, threads: int, options: dict):
        merged = check_options(options)
        self.path, self._threads, self._accelerator = path, threads, merged["accelerator"]
        self._xnnpack = merged["xnnpack"]
        kernels = CpuKernelMode.XNNPACK if self._xnnpack else CpuKernelMode.BUILTIN
        with native_log() as log:  # LiteRT logs every accelerator it registers to fd 2
            try:
                self._model = CompiledModel.from_file(
                    str(path), environment=_environment(),
                    options=Options(hardware_accelerators=ACCELERATORS[self._accelerator],
                                    cpu_options=CpuOptions(num_threads=threads, kernel_mode=kernels)))
                error = None
            except (RuntimeError, ValueError) as err:
                error = err
        if error is not None:
            said = first_line(error)  # often only a source location: the reason is in the log
            why = "; ".join(([] if re.fullmatch(r"ERROR: \[[^\]]+\]", said) else [said]) + log.errors()[-2:])
            if self._accelerator != "cpu":
                raise RuntimeBackendError(f"LiteRT {self._accelerator.upper()} accelerator is not available here "
                                          f"({why}); it is never replaced by the CPU")
            raise ModelLoadError(f"{path}: LiteRT cannot load it ({why})")
        self._signature = next(iter(self._model.get_signature_list()), "serving_default")
        inputs = self._model.get_input_tensor_details(self._signature)
        outputs = self._model.get_output_tensor_details(self._signature)
        self._output_order = list(outputs)  # signature output names; fetch() reads the first
        self._out_dtypes = {name: np.dtype(d["dtype"]) for name, d in outputs.items()}
        tensors = _tensor_quantization(path)
        self._model_inputs = [ModelInput(name, np.dtype(d["dtype"]), io_quantization(path, _detail(d, tensors), "input"),
                                         [int(n) for n in d["shape"]]) for name, d in inputs.items()]
        self._input_order = list(inputs)  # signature input names, in the model's order
        self._output_quants = {name: io_quantization(path, _detail(d, tensors), "output")
                               for name, d in outputs.items()}
        self._batch = self._stored_batch = self._model_inputs[0].shape[0]
        self._allocate(self._batch)
        self._describe_inputs()
        self.outputs = [ModelInput(name, np.dtype(d["dtype"]), self._output_quants[name],
                                   [int(n) for n in d["shape"]]).spec(False) for name, d in outputs.items()]
        self.info = {"runtime": "litert", "runtime_version": _package.__version__,
                     "device": self._accelerator.upper(), "threads": threads, "xnnpack": self._xnnpack,
                     "interpreter": _package.__name__, "input_dtype": self._model_inputs[0].dtype.name,
                     "api": "compiled_model",
                     "fully_accelerated": bool(self._model.is_fully_accelerated()),
                     "inference_clock": "perf_counter around CompiledModel.run_by_name (as litert-benchmark)"}

    def feed(self, x) -> None:
        for name, a in zip(self._input_order, self._model_arrays(x)):
            self._inputs[name].write(a)

    def _invoke(self) -> None:
        self._model.run_by_name(self._signature, self._inputs, self._outputs)

    def fetch(self) -> np.ndarray:
        return self._read(self._output_order[0])

    def fetch_all(self) -> list[np.ndarray]:
        return [self._read(name) for name in self._output_order]

    def _read(self, name: str) -> np.ndarray:
        """Output ``name`` of the last run, float32 where the model quantizes it."""
        shape = self._out_shapes[name]
        out = self._outputs[name].read(int(np.prod(shape)), self._out_dtypes[name]).reshape(shape)
        return from_model_output(out, self._output_quants[name])

    def coverage(self, x=None) -> float | None:
        """1.0 when LiteRT reports the model fully accelerated; on the CPU otherwise the share of
        ops the XNNPACK delegate takes (the Interpreter's partitions of the same file); None for a
        GPU/NPU model LiteRT split with ops it could not place (it does not say how many)."""
        if self.info["fully_accelerated"] or not self._xnnpack:
            return 1.0
        if self._accelerator != "cpu":
            return None
        return xnnpack_coverage(self.path, self._threads)

    def _allocate(self, batch: int) -> None:
        """Shape the model for ``batch`` and make its buffers (TensorBuffers follow the shape)."""
        with native_log():
            self._reshape(batch)

    def _reshape(self, batch: int) -> None:
        try:
            if batch != self._batch:
                self._batch = batch  # what the model is shaped for, even if its buffers fail below
                for i, inp in enumerate(self._model_inputs):
                    self._model.resize_input_tensor(i, [batch, *inp.shape[1:]], strict=False)
            inputs = {name: self._model.create_input_buffer_by_name(self._signature, name) for name in self._input_order}
            outputs = {name: self._model.create_output_buffer_by_name(self._signature, name)
                       for name in self._output_order}
        except (RuntimeError, ValueError) as err:  # the resize, or the kernels' reshape it triggers
            raise ModelLoadError(f"{self.path}: the model's batch size is fixed at {self._stored_batch}; "
                                 f"LiteRT cannot resize it to {batch} ({first_line(err)})") from None
        self._inputs, self._outputs = inputs, outputs
        # the first write into a buffer sets LiteRT up (and logs it): done here, held back
        for name, inp in zip(self._input_order, self._model_inputs):
            inputs[name].write(np.zeros([batch, *inp.shape[1:]], inp.dtype))
        details = self._model.get_output_tensor_details(self._signature)
        self._out_shapes = {name: [int(d) for d in details[name]["shape"]] for name in self._output_order}

    def _output_batch(self) -> int:
        return self._out_shapes[self._output_order[0]][0]


_ENVIRONMENT = None


def _environment() -> Environment:
    """One LiteRT environment per process (LiteRT's default one for ``from_file``), so its
    accelerators are registered once rather than with every model."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        _ENVIRONMENT = Environment.create(options=EnvironmentOptions(runtime_path=str(Path(_package.__file__).parent)))
        atexit.register(_release_environment)
    return _ENVIRONMENT


def _release_environment() -> None:
    """At exit: free the environment (and the models still holding it) with its log held back."""
    global _ENVIRONMENT
    with native_log():
        _ENVIRONMENT = None
        gc.collect()


def _tensor_quantization(path: Path) -> dict[int, tuple[list[float], list[int]]]:
    """Tensor index -> (scales, zero points) of the first subgraph, read from the flatbuffer."""
    model = Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.TensorsLength()):
        q = graph.Tensors(i).Quantization()
        if q is not None and q.ScaleLength():
            out[i] = ([float(q.Scale(k)) for k in range(q.ScaleLength())],
                      [int(q.ZeroPoint(k)) for k in range(q.ZeroPointLength())])
    return out


def _detail(detail: dict, tensors: dict) -> dict:
    """A CompiledModel tensor detail in the Interpreter's form, for ``litert.io_quantization``."""
    scales, zero_points = tensors.get(int(detail["index"]), ([], []))
    return {"name": detail["name"], "dtype": np.dtype(detail["dtype"]),
            "quantization_parameters": {"scales": scales, "zero_points": zero_points}}
