"""Run one benchmark in a child process and turn its samples into a ``BenchResult``.

Methodology: load (timed, cold; plus a warm load in a second child where the runtime has a
compile cache: OpenVINO's ``CACHE_DIR``), one first inference (timed apart), ``warmup_runs``
untimed runs, then timed runs until both ``min_runs`` and ``min_seconds`` are reached (capped at
``max_seconds``), as MLPerf's single-stream scenario does. ``latency`` is inference on inputs
already in the runtime's buffers, the scope of the vendors' tools; ``call_latency`` the whole
call with the input copied in and the output copied out (see ``child.py``). Threads are an explicit, recorded
parameter. Every result carries a manifest (edgekd, runtime and provider versions, device,
threads, CPU model and frequency governor, precision hint; host and serial for remote runs),
the accelerator coverage (share of nodes on the requested device or provider) and, when asked,
a per-op profile. ``benchmark_on_target`` picks the runner from the target profile: a local
child process, the same child on an ssh host, or ``benchmark_model`` on an adb device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.bench.stats import LatencyStats
from edgekd.config import Config, FieldError
from edgekd.errors import BenchmarkError, ConfigError, ModelLoadError, RuntimeBackendError


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
    """Latency and memory of one artifact in one runtime, with how and where it was measured."""

    path: str
    runtime: str
    threads: int
    latency: LatencyStats
    load_ms: float
    first_inference_ms: float
    timed_seconds: float  # wall time of the two timed loops (each >= min_seconds unless max_seconds hit)
    memory: dict[str, Any]
    info: dict[str, Any]
    samples_ms: list[float] = field(repr=False, default_factory=list)
    warm_load_ms: float | None = None  # load with the runtime's compile cache filled
    coverage: float | None = None  # share of nodes on the requested device/provider
    profile: list[dict] | dict | None = None  # per-op times, slowest first (with --profile)
    manifest: dict[str, Any] = field(default_factory=dict)
    call_latency: LatencyStats | None = None  # the whole feed-infer-fetch call (latency: infer alone)
    inputs: list[str] = field(default_factory=list)  # what was fed: "input_ids int64[1,128] in [0, 30522)"

    @property
    def peak_memory_bytes(self) -> int | None:
        return self.memory.get("peak_bytes")

    def record_into(self, entry) -> None:
        """Write this measurement into a report ``Entry`` (latency with raw samples, memory, and
        how it was measured in ``info``)."""
        entry.latency = {**self.latency.to_dict(), "samples_ms": self.samples_ms}
        entry.memory, entry.peak_memory_bytes = self.memory, self.peak_memory_bytes
        entry.info.update(self.info, load_ms=self.load_ms, warm_load_ms=self.warm_load_ms,
                          first_inference_ms=self.first_inference_ms, noisy=self.latency.noisy,
                          accelerator_coverage=self.coverage, manifest=self.manifest, inputs=self.inputs,
                          call_latency=self.call_latency.to_dict() if self.call_latency else None)

    def to_dict(self) -> dict:
        return {"path": self.path, "runtime": self.runtime, "threads": self.threads, "available": True,
                "latency": self.latency.to_dict(), "noisy": self.latency.noisy,
                "load_ms": self.load_ms, "warm_load_ms": self.warm_load_ms,
                "first_inference_ms": self.first_inference_ms, "timed_seconds": self.timed_seconds,
                "memory": self.memory, "coverage": self.coverage, "profile": self.profile,
                "manifest": self.manifest, "info": self.info, "samples_ms": self.samples_ms,
                "call_latency": self.call_latency.to_dict() if self.call_latency else None,
                "inputs": self.inputs}


def _edgekd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekd")
    except PackageNotFoundError:
        return "unknown"


def _child_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])  # the child imports this same edgekd
    # (an empty entry would mean the working directory: only the user's own entries follow)
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def _run_child(request: dict, threads: int, timeout: float, what: str) -> dict:
    try:
        # -P: the working directory is not put on the child's sys.path, so a user's random.py or
        # bisect.py beside their recipe cannot shadow the standard library in the child
        proc = subprocess.run([sys.executable, "-P", "-m", "edgekd.bench.child", json.dumps(request)],
                              capture_output=True, text=True, env=_child_env(threads), stdin=subprocess.DEVNULL,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what} timed out after {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:500]
        raise BenchmarkError(f"{what}: the benchmark process exited with code {proc.returncode} and no "
                             f"result ({tail or 'no output'})")
    return json.loads(lines[-1])


def benchmark(path: str | Path, runtime: str, *, threads: int = 1,
              settings: BenchSettings | None = None, options: dict | None = None,
              timeout: float | None = None, profile: bool = False, ssh=None,
              shapes: dict[str, int] | None = None, value_ranges: dict[str, list] | None = None) -> BenchResult:
    """Benchmark ``path`` in ``runtime`` in a fresh child process (on the ``ssh`` host when given,
    an ``edgekd.bench.ssh.SshConfig``).

    Inputs are made from the model's input specs (``edgekd.tasks.spec``): ``shapes`` binds its
    dynamic axes by name (``{"sequence": 128}``, or ``{"input_ids:1": 128}`` for an unnamed one;
    the batch is ``settings.batch``), ``value_ranges`` overrides integer ranges by input name
    (``{"input_ids": [0, 30522]}``).

    Raises:
        ConfigError: a dynamic axis other than the batch has no length in ``shapes``, or a
            value range names no input.
        ModelLoadError: the artifact does not exist.
        RuntimeBackendError: the requested device or provider is not there (never a silent
            fallback to another one).
        BenchmarkError: the child failed (load error) or timed out.
    """
    settings = settings or BenchSettings()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: artifact not found")
    options = dict(options or {})
    request = {"path": str(path.resolve()), "runtime": runtime, "threads": threads, "options": options,
               "profile": profile, "shapes": dict(shapes or {}), "value_ranges": dict(value_ranges or {}),
               **settings.to_dict()}
    timeout = timeout or settings.max_seconds + 120
    where = f"{path}: benchmark in {runtime}" + (f" on {ssh.destination}" if ssh is not None else "")
    warm = None
    with tempfile.TemporaryDirectory() as cache:
        if runtime == "openvino" and ssh is None and "cache_dir" not in options:
            options["cache_dir"] = cache  # (request shares this dict) the cold load fills the cache
        if ssh is not None:
            from edgekd.bench.ssh import run_remote_child

            result = run_remote_child(path, request, ssh, threads)
        else:
            result = _run_child(request, threads, timeout, where)
        if result.get("ok") and options.get("cache_dir") and ssh is None:
            warm = _run_child({**request, "warm_load": True}, threads, timeout, where + " (warm load)")
    if not result["ok"]:
        kind, _, message = result["error"].partition(": ")
        if kind in ("ModelLoadError", "ConfigError"):  # a bad file or option: bad input, exit 2
            raise (ModelLoadError if kind == "ModelLoadError" else ConfigError)(message)
        error = RuntimeBackendError if kind == "RuntimeBackendError" else BenchmarkError  # missing device: exit 3
        raise error(f"{where} failed: {result['error']}")
    manifest = {"edgekd": _edgekd_version(), "runtime": runtime, "runtime_version": result["info"].get("runtime_version"),
                "device": result["info"].get("device"), "threads": threads,
                "precision_hint": result["info"].get("precision_hint"),
                "providers": result["info"].get("providers"), **result.get("manifest", {})}
    return BenchResult(path=str(path), runtime=runtime, threads=threads,
                       latency=LatencyStats.from_samples(result["samples_ms"]),
                       load_ms=result["load_ms"], first_inference_ms=result["first_inference_ms"],
                       timed_seconds=result["timed_seconds"], memory=result["memory"], info=result["info"],
                       samples_ms=result["samples_ms"], warm_load_ms=warm["load_ms"] if warm and warm.get("ok") else None,
                       coverage=result.get("coverage"), profile=result.get("profile"), manifest=manifest,
                       call_latency=LatencyStats.from_samples(result["call_samples_ms"])
                       if result.get("call_samples_ms") else None, inputs=result.get("inputs") or [])


MAX_REMOTE_THREADS = 64  # phones and boards: more is a typo, not a device


def check_threads(threads: int, target) -> int:
    """``threads`` if the target can run that many, else ConfigError: at most the local CPU's
    cores (more only oversubscribes them, and a runtime may stall creating the pool), or
    ``MAX_REMOTE_THREADS`` on a remote device; the profile's own ``threads`` is always allowed."""
    cores = os.cpu_count() or 1
    limit = max(cores if target.connection == "local" else MAX_REMOTE_THREADS, target.threads)
    if not 1 <= threads <= limit:
        where = f"this machine has {cores} CPU core(s)" if target.connection == "local" else \
            f"at most {limit} on a remote {target.connection} device"
        raise ConfigError(f"threads {threads}: {where}; target {target.name!r} benchmarks with 1..{limit} "
                          f"threads (its profile says {target.threads})")
    return threads


def benchmark_on_target(path: str | Path, target, runtime: str | None = None, *, threads: int | None = None,
                        profile: bool = False, shapes: dict[str, int] | None = None) -> BenchResult:
    """Benchmark ``path`` on a target profile (``edgekd.targets.TargetProfile``): locally, over
    ssh, or with ``benchmark_model`` over adb, with the profile's runtime options and settings.
    ``shapes`` (dynamic axis lengths) are laid over the profile's ``shapes``.

    Raises:
        ConfigError: the target cannot run artifacts (connection: none) or lacks the runtime.
        RuntimeBackendError, BenchmarkError: as ``benchmark``.
    """
    from edgekd.runtime.api import runtime_for

    target.require_reachable("benchmark")
    runtime = runtime or runtime_for(path)
    if runtime not in target.runtimes:
        raise ConfigError(f"target {target.name!r} has no runtime {runtime!r}; it lists {', '.join(target.runtimes)}")
    threads = check_threads(threads or target.threads, target)
    axes = {**target.shapes, **(shapes or {})}
    if target.connection == "adb":
        if axes:
            raise ConfigError(f"target {target.name!r} runs LiteRT's benchmark_model over adb, which benchmarks "
                              f"the model's stored input shapes; lengths for dynamic axes ({', '.join(axes)}) "
                              f"cannot be passed there: export the model with those lengths fixed")
        return _benchmark_adb(Path(path), target, threads, profile)
    return benchmark(path, runtime, threads=threads, settings=target.benchmark,
                     options=target.runtime_options(runtime), profile=profile,
                     ssh=target.ssh if target.connection == "ssh" else None, shapes=axes)


def _benchmark_adb(path: Path, target, threads: int, profile: bool) -> BenchResult:
    from edgekd.bench.adb import run_adb

    s = target.benchmark
    out = run_adb(target.adb, path, threads=threads, warmup_runs=s.warmup_runs, min_runs=s.min_runs,
                  min_seconds=s.min_seconds, max_seconds=s.max_seconds, profile=profile)
    lat = out["latency"]
    stats = LatencyStats(n=lat["n"], p50_ms=None, p90_ms=None, p99_ms=None, mean_ms=lat["mean_ms"],
                         std_ms=lat["std_ms"], min_ms=lat["min_ms"], max_ms=lat["max_ms"], cv=lat["cv"],
                         throughput_per_s=lat["throughput_per_s"])
    memory = out["memory"] or {}
    info = {"runtime": "litert", "tool": "benchmark_model", "device": f"adb:{target.adb.delegate}",
            "delegate": out["delegate"], "threads": out["threads"] or threads,
            "percentiles": lat["percentiles"], "warmup_mean_ms": out["warmup_mean_ms"]}
    return BenchResult(path=str(path), runtime="litert", threads=threads, latency=stats, load_ms=out["load_ms"],
                       first_inference_ms=out["first_inference_ms"], timed_seconds=0.0, memory=memory, info=info,
                       coverage=out["accelerator_coverage"], profile=out["profile"] if profile else None,
                       manifest={"edgekd": _edgekd_version(), **out["manifest"]})


__all__ = ["BenchResult", "BenchSettings", "benchmark", "benchmark_on_target"]
