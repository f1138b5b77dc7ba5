"""Benchmark harness: each measurement in a fresh child process (local, over ssh, or with
benchmark_model over adb); latency, memory by phase, accelerator coverage, per-op profiles;
estimates for devices edgekd cannot run on."""

from edgekd.bench.harness import BenchResult, BenchSettings, benchmark, benchmark_on_target
from edgekd.bench.stats import LatencyStats

__all__ = ["BenchResult", "BenchSettings", "LatencyStats", "benchmark", "benchmark_on_target"]
