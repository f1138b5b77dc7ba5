"""onnxruntime sessions; execution providers come from the target profile (default CPU)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekd.errors import ModelLoadError, RuntimeBackendError
from edgekd.runtime.api import Feed, PhasedSession, per_op_rows
from edgekd.tasks.spec import METADATA_KEY, TensorSpec, merge_declared, specs_from_json


class OnnxRuntimeSession(PhasedSession):
    def __init__(self, path: Path, threads: int, options: dict):
        providers = list(options.get("providers") or ["CPUExecutionProvider"])
        self._path, self._threads, self._requested = path, threads, providers
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
        declared = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.inputs = merge_declared([_spec(i) for i in self._session.get_inputs()],
                                     specs_from_json(declared) if declared else [])
        self.outputs = [_spec(o) for o in self._session.get_outputs()]
        self.path = path
        self.input_shape = [d if isinstance(d, int) else None for d in self.inputs[0].shape]
        self.info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "device": "CPU",
                     "providers": self._session.get_providers(), "threads": threads,
                     "inference_clock": "perf_counter around InferenceSession.run"}
        self._feeds: dict[str, np.ndarray] = {}
        self._outputs: list = []

    def feed(self, x) -> None:
        # onnxruntime reads contiguous arrays of the input's dtype in place
        dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}
        self._feeds = {name: np.ascontiguousarray(a, dtypes[name]) for name, a in self.arrays(x).items()}

    def infer(self) -> None:
        self._outputs = self._session.run(None, self._feeds)

    def fetch(self) -> np.ndarray:
        return self._outputs[0].astype(np.float32, copy=False)

    def fetch_all(self) -> list[np.ndarray]:
        return list(self._outputs)

    def _node_events(self, x: Feed, runs: int) -> list[dict]:
        """onnxruntime's own profiler: one event per node and run, with its provider and time."""
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = self._threads, 1
            so.log_severity_level = 3
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(str(self._path), so, providers=self._requested)
            feeds = {name: np.ascontiguousarray(a, np.dtype(spec.dtype))
                     for (name, a), spec in zip(self.arrays(x).items(), self.inputs)}
            session.run(None, feeds)  # warm-up, profiled too: dropped below
            for _ in range(runs):
                session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        per_run = len(nodes) // (runs + 1)
        return nodes[per_run:]  # without the warm-up run

    def coverage(self, x: Feed) -> float:
        """Share of the executed nodes assigned to the first requested provider."""
        nodes = {e["name"]: e["args"].get("provider") for e in self._node_events(x, 1)}
        return sum(p == self._requested[0] for p in nodes.values()) / len(nodes) if nodes else 1.0

    def profile(self, x: Feed, runs: int) -> list[dict]:
        """Nodes by mean time per inference (ms), slowest first."""
        total: dict[str, dict] = {}
        for e in self._node_events(x, runs):
            name = e["name"][: -len("_kernel_time")]
            row = total.setdefault(name, {"name": name, "op": e["args"].get("op_name", "?"),
                                          "provider": e["args"].get("provider"), "total_us": 0.0})
            row["total_us"] += float(e.get("dur", 0))
        return per_op_rows(total, runs)


ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _spec(arg) -> TensorSpec:
    """onnxruntime's NodeArg as a TensorSpec (dim_param names kept, unnamed dynamic dims None)."""
    dtype = ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"input or output {arg.name!r} has type {arg.type}, which edgekd cannot feed or read")
    return TensorSpec(arg.name, dtype, tuple(d if isinstance(d, (int, str)) and d != "" else None
                                             for d in (arg.shape or [])))


def open_session(path: Path, threads: int, options: dict) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads, options)
