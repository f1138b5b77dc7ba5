"""Benchmark child process: ``python -m edgekd.bench.child '<json request>'``.

Runs in a fresh interpreter (locally, or on a remote host over ssh) so that one measurement's
memory and caches never pollute another's. Prints one JSON line on stdout. It imports numpy and
the one runtime it needs, never torch.

Inputs come from the model's input specs (``Session.inputs``, completed by the specs edgekd
writes into the files it exports): floats uniform in [0, 1), token ids within the declared
vocabulary, masks, several inputs by name. Dynamic axes are bound from the request's ``shapes``
(the target profile's, then ``--shape``); the batch from ``batch``; any other dynamic axis with
no length is an error (``edgekd.tasks.spec.TensorSpec.bind``), never length 1.

Phases, each timed apart: load/compile (cold; with ``"warm_load": true`` the request only loads,
reading the runtime's compile cache the previous child filled, and reports that time), first
inference, ``warmup_runs`` untimed runs, then timed runs until both ``min_runs`` and
``min_seconds`` are reached (capped by ``max_seconds``); then, outside the timed phase, the
accelerator coverage and, when asked, a per-op profile.

Two timed loops, each until both ``min_runs`` and ``min_seconds`` (capped by ``max_seconds``):
- ``samples_ms``: ``infer`` alone, again and again on an input fed once, as the vendors' tools
  time inference (``benchmark_app -inference_only``, ``litert-benchmark``, ``benchmark_model``);
  by the runtime binding's native clock where it has one (OpenVINO) and ``perf_counter`` around
  the call otherwise;
- ``call_samples_ms``: the whole call, ``feed`` (the input copied into the runtime's buffers),
  ``infer``, ``fetch`` (the output copied out, dequantized): what a Python caller pays per
  batch. Besides the copies it includes their effect on the inference that follows them (caches
  and buffer hand-over: +3% per side for the 20 µs demo student in LiteRT).

Memory is the resident-set high-water mark (``VmHWM`` from /proc/self/status; ``ru_maxrss``
where /proc is absent), never virtual size or tracemalloc:
- ``baseline_bytes``: after the interpreter, numpy and the runtime library are imported, before
  the model is read;
- ``after_load_bytes``: the high-water mark once the model is loaded and compiled
  (``load_peak_bytes`` = that minus the baseline: what loading added at its peak);
- the high-water mark is then reset (``/proc/self/clear_refs``, Linux) to the current resident
  size, so ``inference_peak_bytes`` is the peak reached while running, and
  ``inference_added_bytes`` what inference added on top of the loaded model (input/output
  buffers, scratch arenas allocated on first run);
- ``peak_bytes``: the process's overall peak; ``model_peak_bytes`` = peak minus baseline.
Where the reset is not possible (``hwm_reset: false``) the inference peak is the overall peak.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError
from edgekd.tasks.spec import TensorSpec


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_high_water_bytes() -> int:
    value = _status("VmHWM")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    value = _status("VmRSS")
    return value if value is not None else rss_high_water_bytes()


def reset_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_manifest() -> dict:
    """Facts about the machine the measurement ran on (the local host or the remote one)."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith(("model name", "Hardware", "Model"))), cpu)
    except OSError:
        pass
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        governor = "unknown (no cpufreq in this system, e.g. a VM)"
    return {"hostname": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "governor": governor,
            "kernel": platform.release(), "machine": platform.machine(), "python": platform.python_version()}


def timed_loop(step, request: dict) -> tuple[list[float], float]:
    """Run ``step`` until ``min_runs`` and ``min_seconds`` are both reached (or ``max_seconds``);
    its times in ms (the native time it returns, where it returns one) and the loop's seconds."""
    samples, start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        native_ms = step()
        t1 = time.perf_counter()
        samples.append(native_ms if native_ms is not None else (t1 - t0) * 1e3)
        elapsed = t1 - start
        if (len(samples) >= request["min_runs"] and elapsed >= request["min_seconds"]) \
                or elapsed >= request["max_seconds"]:
            return samples, elapsed


def measure(request: dict) -> dict:
    from edgekd.runtime.api import RUNTIMES, open_session

    runtime = request["runtime"]
    importlib.import_module(RUNTIMES.get(runtime).module)  # count the library in the baseline
    baseline = rss_high_water_bytes()
    t0 = time.perf_counter()
    session = open_session(request["path"], runtime, request["threads"], request.get("options"))
    load_ms = (time.perf_counter() - t0) * 1e3
    if request.get("warm_load"):
        return {"ok": True, "load_ms": load_ms, "info": session.info}
    after_load = rss_high_water_bytes()
    before_inference = rss_bytes()
    hwm_reset = reset_high_water()
    specs = with_value_ranges(session.inputs, request.get("value_ranges") or {})
    rng = np.random.default_rng(0)
    # every input from its spec: dynamic axes bound from the request (never 1 by default)
    arrays = [spec.example(request.get("shapes") or {}, request.get("batch", 1), rng) for spec in specs]
    x = arrays[0] if len(arrays) == 1 else {spec.name: a for spec, a in zip(specs, arrays)}
    shape = list(arrays[0].shape)
    t0 = time.perf_counter()
    session.run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(request["warmup_runs"]):
        session.run(x)
    session.feed(x)
    samples, elapsed = timed_loop(session.infer, request)  # inference on the input in place

    def call() -> None:
        session.feed(x)
        session.infer()
        session.fetch()

    calls, call_seconds = timed_loop(call, request)  # what a caller pays per batch
    inference_peak = rss_high_water_bytes()
    peak = max(after_load, inference_peak)
    coverage = session.coverage(x) if hasattr(session, "coverage") else None
    profile = None
    if request.get("profile"):
        profile = (session.profile(x, request.get("profile_runs", 20)) if hasattr(session, "profile") else
                   {"unavailable": f"{runtime} has no per-op profiler in this Python API"})
    inputs = [TensorSpec(spec.name, a.dtype.name, a.shape, spec.low, spec.high).describe()
              for spec, a in zip(specs, arrays)]  # as fed: bound shapes, value ranges
    return {"ok": True, "info": session.info, "input_shape": shape, "inputs": inputs, "load_ms": load_ms,
            "first_inference_ms": first_ms, "timed_seconds": elapsed + call_seconds, "samples_ms": samples,
            "call_samples_ms": calls,
            "coverage": coverage, "profile": profile, "manifest": machine_manifest(),
            "memory": {"baseline_bytes": baseline, "after_load_bytes": after_load,
                       "load_peak_bytes": max(after_load - baseline, 0),
                       "inference_peak_bytes": inference_peak,
                       "inference_added_bytes": max(inference_peak - before_inference, 0) if hwm_reset else None,
                       "peak_bytes": peak, "model_peak_bytes": max(peak - baseline, 0), "hwm_reset": hwm_reset}}


def with_value_ranges(specs: list, ranges: dict) -> list:
    """``specs`` with the value ranges the request declares ({name: [low, high)}) over the file's."""
    unknown = sorted(set(ranges) - {s.name for s in specs})
    if unknown:
        raise ConfigError(f"value range for {', '.join(map(repr, unknown))}: the model has no such input "
                          f"(its inputs: {', '.join(s.name for s in specs)})")
    for name, bounds in ranges.items():
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds)):
            raise ConfigError(f"value range for {name!r}: expected [low, high) as two numbers, e.g. "
                              f"{{{name}: [0, 30522]}}, got {bounds!r}")
    return [TensorSpec(s.name, s.dtype, s.shape, *ranges[s.name]) if s.name in ranges else s for s in specs]


def main() -> int:
    request = json.loads(sys.argv[1])
    try:
        result = measure(request)
    except Exception as err:  # reported to the parent, which raises a typed error
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}  # the parent maps the class name
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
