"""onnxruntime sessions; execution providers come from the target profile (default CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekd.errors import ModelLoadError, RuntimeBackendError


class OnnxRuntimeSession:
    def __init__(self, path: Path, threads: int, options: dict):
        providers = list(options.get("providers") or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeBackendError(
                f"onnxruntime {ort.__version__} has no provider {', '.join(missing)}; available: "
                f"{', '.join(ort.get_available_providers())}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.get("optimized_model_path"):
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(options["optimized_model_path"])
        try:
            self._session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as err:  # ort raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it "
                                 f"({str(err).strip().splitlines()[0][:300]})") from None
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "device": "CPU",
                     "providers": self._session.get_providers(), "threads": threads}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]


def open_session(path: Path, threads: int, options: dict) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads, options)
