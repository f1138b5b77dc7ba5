"""Range observers for activation calibration: min/max, moving average, percentile, MSE-optimal.

An observer sees the float activations of each calibration batch (``update``) and then proposes
the real interval [lo, hi] the integer grid should cover (``range``); the activation quantizer
turns it into a scale and zero point (its target's codes, e.g. asymmetric int8, the interval
widened to contain 0). Every observer is built with that grid (``qmin``, ``qmax``,
``symmetric``), so the MSE search measures the error of the arithmetic the target runs.

- ``minmax``: the extremes seen (exact for the calibration data, sensitive to outliers).
- ``moving_average``: an exponential moving average of each batch's min and max (momentum m),
  as PyTorch's MovingAverageMinMaxObserver: steadier than the extremes of one odd batch.
- ``percentile``: the p-th and (100-p)-th percentiles of a random sample of the values (p=99.99
  by default): clips rare outliers so the grid is finer where the values are.
- ``mse``: the clipping of the min/max interval (a shrink factor a in (0, 1], on a grid) that
  minimises the mean squared quantization error of the sampled values, as in Banner et al.
  2019 / TensorRT-style range search.

Percentile and MSE keep at most ``max_samples`` values (a seeded random subsample per batch), so
memory stays bounded on large calibration sets.
"""

from __future__ import annotations

import torch

from edgekd.quant.fake_quant import QMAX, QMIN, affine_qparams
from edgekd.registry import Registry

OBSERVERS: Registry = Registry("observer")


def list_observers() -> list[str]:
    return OBSERVERS.names()


@OBSERVERS.register("minmax")
class MinMaxObserver:
    def __init__(self, **_):
        self.lo, self.hi = float("inf"), float("-inf")

    def update(self, x: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


@OBSERVERS.register("moving_average")
class MovingAverageObserver(MinMaxObserver):
    def __init__(self, momentum: float = 0.1, **_):
        super().__init__()
        self.momentum, self.seen = momentum, False

    def update(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if not self.seen:
            self.lo, self.hi, self.seen = lo, hi, True
            return
        self.lo += self.momentum * (lo - self.lo)
        self.hi += self.momentum * (hi - self.hi)


class _SampledObserver:
    """Keeps a bounded random sample of the observed values (and their extremes)."""

    def __init__(self, max_samples: int = 200_000, seed: int = 0, **_):
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.extremes = MinMaxObserver()

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        self.extremes.update(flat)
        keep = min(len(flat), max(1, self.max_samples // 8))
        if keep < len(flat):
            flat = flat[torch.randperm(len(flat), generator=self.generator)[:keep]]
        self.samples.append(flat)
        self.count += len(flat)
        if self.count > 2 * self.max_samples:  # thin out: keep a uniform subsample of everything
            everything = torch.cat(self.samples)
            self.samples = [everything[torch.randperm(len(everything), generator=self.generator)[:self.max_samples]]]
            self.count = self.max_samples

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples)


@OBSERVERS.register("percentile")
class PercentileObserver(_SampledObserver):
    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        v = self.values()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(v, q).tolist()
        return lo, hi


@OBSERVERS.register("mse")
class MSEObserver(_SampledObserver):
    def __init__(self, grid: int = 100, qmin: int = QMIN, qmax: int = QMAX, symmetric: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.grid, self.qmin, self.qmax, self.symmetric = grid, qmin, qmax, symmetric

    def range(self) -> tuple[float, float]:
        v = self.values()
        lo, hi = self.extremes.range()
        best, best_err = (lo, hi), float("inf")
        for shrink in torch.linspace(1.0 / self.grid, 1.0, self.grid).tolist():
            c_lo, c_hi = min(lo * shrink, 0.0), max(hi * shrink, 0.0)
            err = float(((fake_quantize(v, c_lo, c_hi, self.qmin, self.qmax, self.symmetric) - v) ** 2).mean())
            if err <= best_err:  # ties go to the wider range (later in the grid)
                best, best_err = (c_lo, c_hi), err
        return best


def fake_quantize(v: torch.Tensor, lo: float, hi: float, qmin: int = QMIN, qmax: int = QMAX,
                  symmetric: bool = False) -> torch.Tensor:
    """Quantize-dequantize of ``v`` over [lo, hi] (lo <= 0 <= hi) with codes [qmin, qmax]
    (asymmetric int8 by default)."""
    scale, zero_point = affine_qparams(torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric)
    return torch.fake_quantize_per_tensor_affine(v, float(scale), int(zero_point), qmin, qmax)
