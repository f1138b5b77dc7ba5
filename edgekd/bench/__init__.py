"""Benchmark harness: each measurement in a fresh child process, latency and peak memory."""

from edgekd.bench.harness import BenchResult, BenchSettings, benchmark
from edgekd.bench.stats import LatencyStats

__all__ = ["BenchResult", "BenchSettings", "LatencyStats", "benchmark"]
