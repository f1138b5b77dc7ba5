"""Benchmark child process: ``python -m edgekd.bench.child '<json request>'``.

Runs in a fresh interpreter so that one measurement's memory and caches never pollute another's.
Prints one JSON line on stdout. It imports numpy and the one runtime it needs, never torch.

Memory is the resident-set high-water mark (``VmHWM`` from /proc/self/status; ``ru_maxrss``
where /proc is absent): ``baseline`` is taken after the interpreter and the runtime library are
imported and before the model is loaded; ``after_load`` once the model is compiled; ``peak`` after
all inferences. ``model_peak_bytes = peak - baseline`` is what loading and running the model added.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def rss_high_water_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(request: dict) -> dict:
    from edgekd.runtime.api import RUNTIMES, open_session

    runtime = request["runtime"]
    importlib.import_module(RUNTIMES.get(runtime).module)  # count the library in the baseline
    baseline = rss_high_water_bytes()
    t0 = time.perf_counter()
    session = open_session(request["path"], runtime, request["threads"], request.get("options"))
    load_ms = (time.perf_counter() - t0) * 1e3
    after_load = rss_high_water_bytes()
    shape = [d if isinstance(d, int) else 1 for d in session.input_shape]
    shape[0] = request.get("batch", 1) if session.input_shape[0] is None else shape[0]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    t0 = time.perf_counter()
    session.run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(request["warmup_runs"]):
        session.run(x)
    samples, start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        session.run(x)
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1e3)
        elapsed = t1 - start
        if (len(samples) >= request["min_runs"] and elapsed >= request["min_seconds"]) \
                or elapsed >= request["max_seconds"]:
            break
    peak = rss_high_water_bytes()
    return {"ok": True, "info": session.info, "input_shape": shape, "load_ms": load_ms,
            "first_inference_ms": first_ms, "timed_seconds": elapsed, "samples_ms": samples,
            "memory": {"baseline_bytes": baseline, "after_load_bytes": after_load, "peak_bytes": peak,
                       "model_peak_bytes": max(peak - baseline, 0)}}


def main() -> int:
    request = json.loads(sys.argv[1])
    try:
        result = measure(request)
    except Exception as err:  # reported to the parent, which raises a typed error
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
