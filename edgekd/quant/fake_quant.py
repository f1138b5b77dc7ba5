"""Fake-quantization modules: int8 arithmetic simulated in float, exported as QDQ by ONNX.

Quantization follows the affine scheme of Jacob et al. 2018 (q = clamp(round(x / s) + z)):

- ``ActivationQuantizer``: per-tensor, asymmetric int8 in [-128, 127]. The range is observed as
  min/max during calibration, then tracked by an exponential moving average during QAT until it
  is frozen. The range always includes 0 so that zero (padding, ReLU) is exact.
- ``PerChannelWeightQuantizer``: symmetric int8 per output channel, s = max|w| / 127, z = 0.
  Values lie in [-127, 127] (narrow range, as XNNPACK/TFLite and oneDNN expect); the op is
  declared with [-128, 127] because that is what the TorchScript ONNX exporter accepts.

Gradients pass straight through inside the range and are zero outside it (Bengio et al. 2013),
which is what ``torch.fake_quantize_*`` implement. With ``make_learnable`` (QAT option
``learnable_scales``) the scales are parameters trained with the weights, LSQ (Esser et al.
2020): the gradient of the scale is the LSQ step-size gradient, scaled by 1 / sqrt(N * Qmax)
(``torch._fake_quantize_learnable_*``); activation zero points stay as calibrated. ``freeze()`` turns every scale and zero point
into a constant buffer, so the exported graph holds constants, never a scale computed at run time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

QMIN, QMAX = -128, 127


class ActivationQuantizer(nn.Module):
    """Observe a tensor's range and fake-quantize it per tensor (asymmetric int8)."""

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.observing = False  # calibration: widen the range with min/max (or ``observer``)
        self.tracking = False  # QAT: follow the range by moving average
        self.enabled = True  # fake-quantize in forward
        self.observer = None  # during calibration: an edgekd.quant.observers observer
        self.learnable = False  # LSQ: ``learned_scale`` is trained (see make_learnable)
        self.frozen = False

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.min_val) and torch.isfinite(self.max_val))

    def make_learnable(self) -> None:
        """LSQ: the scale becomes a parameter (initialised from calibration, trained with QAT)."""
        self.learnable = True
        self.learned_scale = nn.Parameter(self.scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or self.tracking:
            self._observe(x.detach())
        if not self.enabled or not self.calibrated:
            return x
        if self.learnable and not self.frozen:
            grad_factor = 1.0 / math.sqrt(x.numel() * QMAX)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.learned_scale.abs().clamp_min(1e-8).reshape(1),
                self.zero_point.float().reshape(1), QMIN, QMAX, grad_factor)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the scale (a learned one is copied into the constant buffer the export reads)."""
        if self.learnable:
            self.scale.copy_(self.learned_scale.abs().clamp_min(1e-8))
        self.frozen = True

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min(), x.max()
        if not torch.isfinite(lo) or not torch.isfinite(hi):
            return  # a NaN/inf batch must not poison the range; the trainer reports it
        if self.observing and self.observer is not None:
            self.observer.update(x)
            return
        if self.learnable and not self.observing:
            return  # LSQ: the scale is learned, not tracked
        if self.observing or not self.calibrated:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        self.scale.copy_(self._scale())
        self.zero_point.copy_(self._zero_point())

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Cover the real interval [lo, hi] (widened to contain 0)."""
        self.min_val.fill_(lo)
        self.max_val.fill_(hi)
        self.scale.copy_(self._scale())
        self.zero_point.copy_(self._zero_point())
        if self.learnable:
            self.learned_scale.copy_(self.scale)

    def _scale(self) -> torch.Tensor:
        lo, hi = torch.clamp(self.min_val, max=0.0), torch.clamp(self.max_val, min=0.0)
        return torch.clamp((hi - lo) / (QMAX - QMIN), min=1e-8).float()

    def _zero_point(self) -> torch.Tensor:
        lo = torch.clamp(self.min_val, max=0.0)
        zp = torch.round(QMIN - lo / self.scale)
        return torch.clamp(zp, QMIN, QMAX).to(torch.int32)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.6g}, zero_point={int(self.zero_point)}"


class PerChannelWeightQuantizer(nn.Module):
    """Symmetric per-output-channel int8 weights; scales follow the weights until frozen."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))
        self.frozen = False
        self.learnable = False

    def make_learnable(self) -> None:
        """LSQ: per-channel scales become parameters, initialised to max|w| / 127 on first use."""
        self.learnable = True
        self.learned_scale = nn.Parameter(torch.ones_like(self.scale))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # (Cout, ...) -> same
        if self.learnable and not self.frozen:
            if not self.initialised:
                with torch.no_grad():
                    self.learned_scale.copy_(self.compute_scale(w))
                    self.initialised.fill_(True)
            grad_factor = 1.0 / math.sqrt(w.numel() * QMAX)
            return torch._fake_quantize_learnable_per_channel_affine(
                w, self.learned_scale.abs().clamp_min(1e-8), self.zero_point.float(), 0, QMIN, QMAX,
                grad_factor)
        if not self.frozen:
            with torch.no_grad():
                self.scale.copy_(self.compute_scale(w))
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero_point, 0, QMIN, QMAX)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> None:
        """Fix the scales (learned ones, or those of the final weights ``w``); forward then uses
        constants only."""
        if self.learnable and self.initialised:
            self.scale.copy_(self.learned_scale.abs().clamp_min(1e-8))
        else:
            self.scale.copy_(self.compute_scale(w))
        self.frozen = True

    @staticmethod
    def compute_scale(w: torch.Tensor) -> torch.Tensor:
        max_abs = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)  # (Cout,)
        return torch.clamp(max_abs / QMAX, min=1e-8).float()


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weight is fake-quantized per channel (bias stays float; runtimes use int32)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> QuantConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q.load_state_dict(conv.state_dict())
        q.weight_quant = PerChannelWeightQuantizer(conv.out_channels)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """Linear layer whose weight is fake-quantized per output feature."""

    @classmethod
    def from_float(cls, linear: nn.Linear) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q.weight_quant = PerChannelWeightQuantizer(linear.out_features)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)


QUANT_MODULES = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
QUANT_LAYERS = (QuantConv2d, QuantLinear)
