"""Run one benchmark in a child process and turn its samples into a ``BenchResult``.

Methodology: load (timed), one first inference (timed apart), ``warmup_runs`` untimed runs, then
timed runs until both ``min_runs`` and ``min_seconds`` are reached (capped at ``max_seconds``),
as MLPerf's single-stream scenario does. Threads are an explicit, recorded parameter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.bench.stats import LatencyStats
from edgekd.config import Config, FieldError
from edgekd.errors import BenchmarkError, ModelLoadError


@dataclass
class BenchSettings(Config):
    """How long to measure.

    Attributes:
        warmup_runs: untimed inferences before timing starts.
        min_runs: at least this many timed inferences...
        min_seconds: ...and at least this long.
        max_seconds: stop timing after this long even if min_runs is not reached.
        batch: batch size for artifacts with a dynamic batch axis.
    """

    warmup_runs: int = 20
    min_runs: int = 200
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    batch: int = 1

    def __post_init__(self):
        for name in ("min_runs", "batch"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.warmup_runs < 0 or self.min_seconds < 0:
            raise FieldError("warmup_runs" if self.warmup_runs < 0 else "min_seconds", "must be >= 0")
        if self.max_seconds < self.min_seconds:
            raise FieldError("max_seconds", f"must be >= min_seconds ({self.min_seconds})")


@dataclass
class BenchResult:
    """Latency and memory of one artifact in one runtime."""

    path: str
    runtime: str
    threads: int
    latency: LatencyStats
    load_ms: float
    first_inference_ms: float
    timed_seconds: float  # wall time of the timed phase (>= min_seconds unless max_seconds hit)
    memory: dict[str, int]
    info: dict[str, Any]
    samples_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def peak_memory_bytes(self) -> int:
        return self.memory["peak_bytes"]

    def to_dict(self) -> dict:
        return {"path": self.path, "runtime": self.runtime, "threads": self.threads,
                "latency": self.latency.to_dict(), "noisy": self.latency.noisy,
                "load_ms": self.load_ms, "first_inference_ms": self.first_inference_ms,
                "timed_seconds": self.timed_seconds, "memory": self.memory, "info": self.info, "samples_ms": self.samples_ms}


def benchmark(path: str | Path, runtime: str, *, threads: int = 1,
              settings: BenchSettings | None = None, options: dict | None = None,
              timeout: float | None = None) -> BenchResult:
    """Benchmark ``path`` in ``runtime`` in a fresh child process.

    Raises:
        ModelLoadError: the artifact does not exist.
        BenchmarkError: the child failed (load error, missing device) or timed out.
    """
    settings = settings or BenchSettings()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: artifact not found")
    request = {"path": str(path.resolve()), "runtime": runtime, "threads": threads,
               "options": options or {}, **settings.to_dict()}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])  # the child imports this same edgekd
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekd.bench.child", json.dumps(request)],
                              capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=timeout or settings.max_seconds + 120)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{path}: benchmark in {runtime} timed out") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:500]
        raise BenchmarkError(f"{path}: benchmark process for {runtime} exited with code "
                             f"{proc.returncode} and no result ({tail or 'no output'})")
    result = json.loads(lines[-1])
    if not result["ok"]:
        raise BenchmarkError(f"{path}: benchmark in {runtime} failed: {result['error']}")
    return BenchResult(path=str(path), runtime=runtime, threads=threads,
                       latency=LatencyStats.from_samples(result["samples_ms"]),
                       load_ms=result["load_ms"], first_inference_ms=result["first_inference_ms"],
                       timed_seconds=result["timed_seconds"], memory=result["memory"], info=result["info"], samples_ms=result["samples_ms"])


__all__ = ["BenchResult", "BenchSettings", "benchmark"]
