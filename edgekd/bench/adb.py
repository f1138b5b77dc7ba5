"""Benchmark on an Android phone over adb with LiteRT's ``benchmark_model`` binary.

The target profile names the ``benchmark_model`` binary built for the phone (LiteRT's
``android_aarch64_benchmark_model``), the device serial and the delegate. edgekd pushes the
binary and the .tflite file (under a content-hash name) to ``remote_dir``, runs the binary with
the profile's delegate flags and the benchmark settings, and parses its console output into the
same fields local runs report.

What ``benchmark_model`` reports, and so what an adb row holds: the timed run's count, mean,
std, min and max (microseconds), the init time, the first inference, the warm-up mean, the peak
memory footprint the tool measures ("init" and "overall" MB, which it calls approximate), the
delegate and how much of the graph it took ("completely", or "partially ... w/ N delegate
kernels"), and with ``--enable_op_profiling`` the per-op tables. It prints no percentiles, so
an adb row's p50/p90 stay empty (a budget on them fails as "metric missing", never passes).

Profile section (``connection: adb``)::

    adb:
      serial: 1A2B3C4D                        # `adb devices`; empty: the only device attached
      benchmark_model: ~/bin/android_aarch64_benchmark_model
      remote_dir: /data/local/tmp/edgekd
      delegate: xnnpack                       # cpu, xnnpack, gpu, nnapi
      extra_flags: ["--gpu_precision_loss_allowed=false"]
      push: []                                # delegate libraries to copy next to the binary
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgekd.config import Config, FieldError
from edgekd.errors import BenchmarkError, RuntimeBackendError
from edgekd.hashing import content_name

DELEGATE_FLAGS = {  # the profile's delegate -> benchmark_model flags
    "cpu": ["--use_xnnpack=false"],
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}


@dataclass
class AdbConfig(Config):
    """How to reach an Android device and run ``benchmark_model`` on it (module docstring).

    Attributes:
        benchmark_model: local path of the ``benchmark_model`` binary built for the device.
        serial: device serial (``adb devices``); None: the only device attached.
        adb: the adb executable.
        remote_dir: device folder for the binary and models.
        delegate: cpu (built-in kernels), xnnpack, gpu or nnapi.
        extra_flags: more ``benchmark_model`` flags, each ``--name=value`` (e.g. an external
            delegate: ``--external_delegate_path=/data/local/tmp/edgekd/libQnnTFLiteDelegate.so``).
        push: more local files pushed to ``remote_dir`` before the run (delegate libraries).
        timeout_s: seconds before an adb command is abandoned.
    """

    benchmark_model: str
    serial: str | None = None
    adb: str = "adb"
    remote_dir: str = "/data/local/tmp/edgekd"
    delegate: Literal["cpu", "xnnpack", "gpu", "nnapi"] = "xnnpack"
    extra_flags: list[str] = field(default_factory=list)
    push: list[str] = field(default_factory=list)
    timeout_s: float = 600.0

    def __post_init__(self):
        if self.serial is not None and (not self.serial or self.serial.startswith("-")):
            raise FieldError("serial", f"expected a device serial (see `adb devices`), got {self.serial!r}")
        if not self.remote_dir.startswith("/"):
            raise FieldError("remote_dir", f"expected an absolute device path, got {self.remote_dir!r}")
        for i, flag in enumerate(self.extra_flags):
            if not re.fullmatch(r"--[A-Za-z0-9_]+=[^\s]*", flag):
                raise FieldError(f"extra_flags.{i}", f"expected --name=value, got {flag!r}")

    def _adb(self) -> list[str]:
        return [self.adb] + (["-s", self.serial] if self.serial else [])


def adb_commands(config: AdbConfig, artifact: Path, *, threads: int, warmup_runs: int, min_runs: int,
                 min_seconds: float, max_seconds: float, profile: bool = False) -> list[list[str]]:
    """The exact commands, in order, that benchmark ``artifact`` on the device. ``adb shell``
    joins its arguments into one device command line, so that line is built with ``shlex``."""
    adb = config._adb()
    remote_bin = f"{config.remote_dir}/benchmark_model"
    remote_model = f"{config.remote_dir}/{device_name(artifact)}"
    run = [remote_bin, f"--graph={remote_model}", f"--num_threads={threads}", f"--warmup_runs={warmup_runs}",
           f"--num_runs={min_runs}", f"--min_secs={min_seconds:g}", f"--max_secs={max_seconds:g}",
           "--report_peak_memory_footprint=true", *DELEGATE_FLAGS[config.delegate], *config.extra_flags]
    if profile:
        run.append("--enable_op_profiling=true")
    extra = [adb + ["push", str(Path(f).expanduser()), f"{config.remote_dir}/{Path(f).name}"] for f in config.push]
    return [adb + ["shell", shlex.join(["mkdir", "-p", config.remote_dir])],
            adb + ["push", str(Path(config.benchmark_model).expanduser()), remote_bin],
            adb + ["shell", shlex.join(["chmod", "755", remote_bin])], *extra,
            adb + ["push", str(artifact), remote_model],
            adb + ["shell", shlex.join(run)],
            adb + ["shell", shlex.join(["rm", "-f", remote_model])]]


def device_name(path: Path) -> str:
    """The model's name on the device: content hash + suffix, never the local file name."""
    return content_name(path)


def run_adb(config: AdbConfig, artifact: Path, *, threads: int, warmup_runs: int, min_runs: int,
            min_seconds: float, max_seconds: float, profile: bool = False) -> dict:
    """Run ``adb_commands`` and parse the benchmark output (``parse_benchmark_model``), adding
    the device serial and model to the result's manifest."""
    artifact = Path(artifact)
    if artifact.suffix.lower() != ".tflite":
        raise BenchmarkError(f"{artifact}: adb targets run LiteRT's benchmark_model, which takes .tflite files")
    if not Path(config.benchmark_model).expanduser().is_file():
        raise RuntimeBackendError(f"{config.benchmark_model}: benchmark_model binary not found (the profile's "
                                  f"adb.benchmark_model; build or download LiteRT's android_aarch64_benchmark_model)")
    commands = adb_commands(config, artifact, threads=threads, warmup_runs=warmup_runs, min_runs=min_runs,
                            min_seconds=min_seconds, max_seconds=max_seconds, profile=profile)
    outputs = [_call(cmd, config.timeout_s) for cmd in commands[:-1]]
    _call(commands[-1], config.timeout_s, check=False)  # cleanup
    result = parse_benchmark_model(outputs[-1])
    model = _call(config._adb() + ["shell", "getprop ro.product.model"], config.timeout_s, check=False).strip()
    serial = config.serial or _call(config._adb() + ["get-serialno"], config.timeout_s, check=False).strip()
    result["manifest"] = {"device_serial": serial, "device_model": model, "delegate": config.delegate,
                          "tool": "benchmark_model", "command": commands[-2]}
    return result


def _call(cmd: list[str], timeout: float, check: bool = True) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeBackendError(f"{cmd[0]} not found: install Android platform-tools (adb) or set "
                                  f"the profile's adb.adb") from None
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"timed out after {timeout:.0f} s: {shlex.join(cmd)}") from None
    if check and proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:500]
        raise BenchmarkError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {tail or 'no output'}")
    return proc.stdout


# -- parsing ----------------------------------------------------------------------------------

_PREFIX = re.compile(r"^(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+\S+\s*:\s?|"
                     r"(?:INFO|WARN|WARNING|ERROR|VERBOSE): )")
_COUNT = re.compile(r"count=(\d+) first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) std=(\d+)")
_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
                      r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_MEMORY = re.compile(r"(Peak memory footprint|Memory footprint delta from the start of the tool) "
                     r"\(MB\): init=([\d.]+) overall=([\d.]+)")
_DELEGATED = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be (completely|partially) "
                        r"executed by the delegate(?: w/ (\d+) delegate kernels)?")
_THREADS = re.compile(r"(?:Num threads|#threads used for CPU inference): \[(\d+)\]")


def clean_lines(text: str) -> list[str]:
    """The tool's lines without logcat or ``INFO:`` prefixes."""
    return [_PREFIX.sub("", line.rstrip("\r")) for line in text.splitlines()]


def parse_benchmark_model(text: str) -> dict:
    """Timings, memory, delegation and op profile from ``benchmark_model``'s console output.

    Raises:
        BenchmarkError: the output has no timed run (the tool failed: its last lines are quoted).
    """
    lines = clean_lines(text)
    joined = "\n".join(lines)
    runs = [tuple(float(v) for v in m.groups()) for m in _COUNT.finditer(joined)]
    timings = _TIMINGS.search(joined)
    if not runs or timings is None:
        tail = " | ".join(line for line in lines[-4:] if line.strip())
        raise BenchmarkError(f"benchmark_model printed no timed run: {tail[:400] or 'no output'}")
    count, first, _, low, high, avg, std = runs[-1]
    init_us, first_us, warmup_us, inference_us = (float(v) for v in timings.groups())
    result = {
        "ok": True, "tool": "benchmark_model",
        "latency": {"n": int(count), "mean_ms": avg / 1e3, "std_ms": std / 1e3, "min_ms": low / 1e3,
                    "max_ms": high / 1e3, "cv": std / avg if avg else 0.0,
                    "throughput_per_s": 1e6 / avg if avg else 0.0, "p50_ms": None, "p90_ms": None,
                    "p99_ms": None, "percentiles": "not reported by benchmark_model"},
        "load_ms": init_us / 1e3, "first_inference_ms": first_us / 1e3, "warmup_mean_ms": warmup_us / 1e3,
        "inference_mean_ms": inference_us / 1e3, "memory": None, "delegate": None, "threads": None,
        "profile": parse_op_profile(lines)}
    memory = _MEMORY.search(joined)
    if memory:
        kind, init_mb, overall_mb = memory.groups()
        result["memory"] = {"kind": "peak footprint" if kind.startswith("Peak") else "footprint delta from tool start",
                            "init_bytes": int(float(init_mb) * 2**20), "peak_bytes": int(float(overall_mb) * 2**20),
                            "approximate": True}
    delegated = _DELEGATED.search(joined)
    if delegated:
        name, extent, kernels = delegated.groups()
        result["delegate"] = {"name": name, "complete": extent == "completely",
                              "kernels": int(kernels) if kernels else (1 if extent == "completely" else None)}
    elif "XNNPACK delegate for CPU" in joined:
        result["delegate"] = {"name": "XNNPACK", "complete": None, "kernels": None}
    threads = _THREADS.search(joined)
    if threads:
        result["threads"] = int(threads.group(1))
    result["accelerator_coverage"] = 1.0 if (result["delegate"] or {}).get("complete") else None
    return result


def parse_op_profile(lines: list[str]) -> list[dict]:
    """Rows of the "Top by Computation Time" table (else "Run Order"): op type, name, mean ms, %."""
    rows, section = {}, None
    for line in lines:
        if "==== Run Order ====" in line or "==== Top by Computation Time ====" in line:
            section = "top" if "Top by" in line else "order"
            rows.setdefault(section, [])
            continue
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if section is None and len(cells) >= 9 and _is_number(cells[3]):
            section = "order"  # rows whose table header was not captured (e.g. a cut log)
            rows.setdefault(section, [])
        if section is None:
            continue
        if len(cells) >= 9 and cells[0] != "[node type]" and _is_number(cells[3]):
            rows[section].append({"op": cells[0], "name": cells[-1].strip("[]"), "first_ms": float(cells[2]),
                                  "mean_ms": float(cells[3]), "percent": float(cells[4].rstrip("%"))})
        elif not line.strip():
            section = None
    chosen = rows.get("top") or sorted(rows.get("order", []), key=lambda r: -r["mean_ms"])
    return chosen


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


__all__ = ["AdbConfig", "adb_commands", "clean_lines", "parse_benchmark_model", "run_adb"]
