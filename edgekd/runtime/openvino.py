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
from edgekd.runtime.api import Feed, PhasedSession, per_op_rows
from edgekd.tasks.spec import IR_RT_INFO_KEY, METADATA_KEY, TensorSpec, merge_declared, specs_from_json


class OpenVinoSession(PhasedSession):
    def __init__(self, path: Path, threads: int, options: dict):
        core = ov.Core()
        device = options.get("device", "CPU")
        if device not in core.available_devices:
            raise RuntimeBackendError(f"OpenVINO device {device!r} is not available here; available: "
                                      f"{', '.join(core.available_devices)}")
        config = {"INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY").upper()}
        hint = options.get("precision_hint", "f32")
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        if options.get("cache_dir"):  # compiled blobs are reused by the next load (warm load)
            config["CACHE_DIR"] = str(options["cache_dir"])
        self._core, self._path, self._device, self._config = core, path, device, config
        weights = Path(path).with_suffix(".bin")
        if Path(path).suffix.lower() == ".xml" and not weights.is_file():
            raise ModelLoadError(f"{path}: its weights file {weights.name} is missing; an OpenVINO IR is the "
                                 f".xml and the .bin beside it (copy both)")
        try:
            self._compiled = core.compile_model(str(path), device, config)
        except Exception as err:
            raise ModelLoadError(f"{path}: OpenVINO cannot load it "
                                 f"({str(err).strip().splitlines()[0][:300]})") from None
        self._request = self._compiled.create_infer_request()
        self._buffers: dict[str, np.ndarray] = {}  # each input's buffer in the request, once set
        self._result = None  # outputs of the last infer (copies)
        self.path = path
        self.inputs = merge_declared([_spec(p, i) for i, p in enumerate(self._compiled.inputs)], _declared(core, path))
        self.outputs = [_spec(p, i, "output") for i, p in enumerate(self._compiled.outputs)]
        self._index = {s.name: i for i, s in enumerate(self.inputs)}
        self.input_shape = [d if isinstance(d, int) else None for d in self.inputs[0].shape]
        self.info = {"runtime": "openvino", "runtime_version": ov.__version__, "device": device,
                     "device_name": core.get_property(device, "FULL_DEVICE_NAME"), "threads": threads,
                     "performance_hint": config["PERFORMANCE_HINT"],
                     "precision_hint": self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                     "execution_devices": list(self._compiled.get_property("EXECUTION_DEVICES")),
                     "inference_clock": "OpenVINO's native clock around infer (InferRequest.latency)"}

    def feed(self, x) -> None:
        # copy into the request's own input tensors when the shape is unchanged: handing OpenVINO
        # a new tensor per call (infer({0: x})) re-validates shapes and costs ~100 µs per call
        # on a dynamic-batch model (measured: 195 µs vs 93 µs for the demo student)
        for spec, (name, a) in zip(self.inputs, self.arrays(x).items()):
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != a.shape:
                index = self._index[name]
                self._request.set_input_tensor(index, ov.Tensor(np.ascontiguousarray(a, np.dtype(spec.dtype))))
                self._buffers[name] = self._request.get_input_tensor(index).data
            else:
                np.copyto(self._buffers[name], a, casting="unsafe")

    def infer(self) -> float:
        """Run the request as benchmark_app (OpenVINO's Python tool) does, ``InferRequest.infer()``
        with the outputs copied out; returns the binding's native clock around
        ``InferRequest::infer`` (ms), the figure benchmark_app reports. The Python call around it
        costs 10-15 µs more on this machine, which the benchmark's call latency includes."""
        self._result = self._request.infer()
        return self._request.latency

    def fetch(self) -> np.ndarray:
        # already a copy (the request's buffers are reused by the next call); to_tuple: OVDict[0]
        # looks the port up by name and costs 4.5 µs, a quarter of a tiny model's inference
        return self._result.to_tuple()[0].astype(np.float32, copy=False)

    def fetch_all(self) -> list[np.ndarray]:
        return list(self._result.to_tuple())

    def coverage(self, x: Feed) -> float | None:
        """1.0 when the compiled model runs on the requested device alone, 0.0 when not at all;
        None when OpenVINO split it over several devices (HETERO/AUTO: see execution_devices)."""
        devices = {d.split(".")[0] for d in self.info["execution_devices"]}
        wanted = self._device.split(".")[0]
        return 1.0 if devices == {wanted} else 0.0 if wanted not in devices else None

    def profile(self, x: Feed, runs: int) -> list[dict]:
        """OpenVINO's performance counters (a second compile with PERF_COUNT), by mean time."""
        compiled = self._core.compile_model(str(self._path), self._device, {**self._config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        feeds = {self._index[name]: np.ascontiguousarray(a, np.dtype(self.inputs[self._index[name]].dtype))
                 for name, a in self.arrays(x).items()}
        for _ in range(5):  # the first runs compile kernels and fill caches: not part of the profile
            request.infer(feeds)
        total: dict[str, dict] = {}
        for _ in range(runs):
            request.infer(feeds)
            for info in request.profiling_info:
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_RUN"):
                    row = total.setdefault(info.node_name, {"name": info.node_name, "op": info.node_type,
                                                            "exec_type": info.exec_type, "total_us": 0.0})
                    row["total_us"] += info.real_time.total_seconds() * 1e6
        return per_op_rows(total, runs)

    def runtime_precisions(self) -> dict[str, str]:
        """Executed layer name -> runtime precision, for layers of the compiled (runtime) graph."""
        out = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            out[op.get_friendly_name()] = (rt["layerType"].astype(str), rt["runtimePrecision"].astype(str))
        return out


def _spec(port, index: int, role: str = "input") -> TensorSpec:
    """A compiled model's port as a TensorSpec (OpenVINO dims carry no names: dynamic is None)."""
    try:
        name = port.get_any_name()
    except RuntimeError:  # a port without a tensor name
        name = f"{role}{index}"
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name, dtype, shape)


def _declared(core, path: Path) -> list[TensorSpec]:
    """The input specs edgekd exported with the model: the IR's ``rt_info`` entry (written by
    ``edgekd.export.openvino``), or the ONNX file's metadata; [] for other files."""
    try:
        if path.suffix == ".xml":
            model = core.read_model(str(path))
            if model.has_rt_info(IR_RT_INFO_KEY):
                return specs_from_json(model.get_rt_info(IR_RT_INFO_KEY).astype(str))
        elif path.suffix == ".onnx":
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            if METADATA_KEY in meta:
                return specs_from_json(meta[METADATA_KEY])
    except Exception:  # no or unreadable declaration: the runtime's own view of the inputs stands
        return []
    return []


def open_session(path: Path, threads: int, options: dict) -> OpenVinoSession:
    return OpenVinoSession(path, threads, options)
