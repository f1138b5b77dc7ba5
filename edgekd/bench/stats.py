"""Latency statistics from raw per-inference samples (milliseconds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NOISY_CV = 0.25  # coefficient of variation above which a run is flagged as too noisy to trust


@dataclass
class LatencyStats:
    n: int
    p50_ms: float | None  # None where a tool reports no percentiles (benchmark_model over adb)
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float  # std / mean
    throughput_per_s: float  # inferences per second at batch 1, from the mean

    @classmethod
    def from_samples(cls, samples_ms) -> LatencyStats:
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no latency samples")
        mean = float(s.mean())
        p50, p90, p99 = (float(v) for v in np.percentile(s, [50, 90, 99]))
        return cls(n=int(s.size), p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=mean,
                   std_ms=float(s.std()), min_ms=float(s.min()), max_ms=float(s.max()),
                   cv=float(s.std() / mean) if mean > 0 else 0.0,
                   throughput_per_s=1000.0 / mean if mean > 0 else 0.0)

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def to_dict(self) -> dict:
        return asdict(self)
