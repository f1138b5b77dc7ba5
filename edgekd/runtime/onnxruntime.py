"""onnxruntime sessions; execution providers come from the target profile (default CPU)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekd.errors import ModelLoadError, RuntimeBackendError
from edgekd.runtime.api import PhasedSession, per_op_rows


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
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "device": "CPU",
                     "providers": self._session.get_providers(), "threads": threads,
                     "inference_clock": "perf_counter around InferenceSession.run"}
        self._feeds: dict[str, np.ndarray] = {}
        self._outputs: list = []

    def feed(self, x: np.ndarray) -> None:
        self._feeds = {self._input: x}  # onnxruntime reads a contiguous float32 array in place

    def infer(self) -> None:
        self._outputs = self._session.run(None, self._feeds)

    def fetch(self) -> np.ndarray:
        return self._outputs[0]

    def _node_events(self, x: np.ndarray, runs: int) -> list[dict]:
        """onnxruntime's own profiler: one event per node and run, with its provider and time."""
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = self._threads, 1
            so.log_severity_level = 3
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(str(self._path), so, providers=self._requested)
            session.run(None, {self._input: x})  # warm-up, profiled too: dropped below
            for _ in range(runs):
                session.run(None, {self._input: x})
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        per_run = len(nodes) // (runs + 1)
        return nodes[per_run:]  # without the warm-up run

    def coverage(self, x: np.ndarray) -> float:
        """Share of the executed nodes assigned to the first requested provider."""
        nodes = {e["name"]: e["args"].get("provider") for e in self._node_events(x, 1)}
        return sum(p == self._requested[0] for p in nodes.values()) / len(nodes) if nodes else 1.0

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        """Nodes by mean time per inference (ms), slowest first."""
        total: dict[str, dict] = {}
        for e in self._node_events(x, runs):
            name = e["name"][: -len("_kernel_time")]
            row = total.setdefault(name, {"name": name, "op": e["args"].get("op_name", "?"),
                                          "provider": e["args"].get("provider"), "total_us": 0.0})
            row["total_us"] += float(e.get("dur", 0))
        return per_op_rows(total, runs)


def open_session(path: Path, threads: int, options: dict) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads, options)
