"""OpenVINO sessions (IR or ONNX), compiled for a device with an explicit precision hint.

On CPUs with bf16/AMX support OpenVINO runs float models in bf16 unless told otherwise, which
would make parity and latency depend on the machine; edgekd asks for ``precision_hint`` (default
f32) and records the precision the compiled model actually reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edgekd.errors import ModelLoadError, RuntimeBackendError


class OpenVinoSession:
    def __init__(self, path: Path, threads: int, options: dict):
        core = ov.Core()
        device = options.get("device", "CPU")
        if device not in core.available_devices:
            raise RuntimeBackendError(f"OpenVINO device {device!r} is not available here; available: "
                                      f"{', '.join(core.available_devices)}")
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        hint = options.get("precision_hint", "f32")
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            self._compiled = core.compile_model(str(path), device, config)
        except Exception as err:
            raise ModelLoadError(f"{path}: OpenVINO cannot load it "
                                 f"({str(err).strip().splitlines()[0][:300]})") from None
        self._request = self._compiled.create_infer_request()
        shape = self._compiled.inputs[0].get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in shape]
        self.info = {"runtime": "openvino", "runtime_version": ov.__version__, "device": device,
                     "threads": threads,
                     "precision_hint": self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._request.infer({0: x})[0].copy()

    def runtime_precisions(self) -> dict[str, str]:
        """Executed layer name -> runtime precision, for layers of the compiled (runtime) graph."""
        out = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            out[op.get_friendly_name()] = (rt["layerType"].astype(str), rt["runtimePrecision"].astype(str))
        return out


def open_session(path: Path, threads: int, options: dict) -> OpenVinoSession:
    return OpenVinoSession(path, threads, options)
