"""Fake-quantization modules: int8 arithmetic simulated in float, exported as QDQ by ONNX.

Quantization follows the affine scheme of Jacob et al. 2018 (q = clamp(round(x / s) + z)):

- ``ActivationQuantizer``: per tensor, asymmetric (default) or symmetric, over the integer codes
  [qmin, qmax] of the target's activation dtype (int8 [-128, 127] by default; uint8, int16,
  uint16). The range is observed as min/max during calibration, then tracked by an exponential
  moving average during QAT until it is frozen. The range always includes 0 so that zero
  (padding, ReLU) is exact. A fixed output quantization (TFLite's softmax: 1/256, -128) is set
  once and never observed.
- ``PerChannelWeightQuantizer``: symmetric per output channel by default, s = max|w| / qmax,
  z = 0; int8 values lie in [-127, 127] (narrow range, as XNNPACK/TFLite and oneDNN expect),
  while the op is declared over the dtype's full range because that is what the TorchScript ONNX
  exporter accepts. Per-tensor and asymmetric weights (and int4 codes) follow the target's
  scheme (``edgekd.quant.scheme``).

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


# Attention masks are added to the scores as 0, or as a large negative number (-10000 in older
# BERT code, the dtype's lowest value in newer): a value below MASKED_BELOW is a masked position,
# not a score. A quantizer of masked scores observes only the scores, and its range reaches at
# least MASK_MARGIN below their maximum, so a masked position (the lowest code) gets a softmax
# weight of at most exp(-MASK_MARGIN) of the row's largest.
MASKED_BELOW = -5e3
MASK_MARGIN = 20.0

# The smallest activation scale (a range of 2.4e-4 over 256 codes): below it, the int32 bias of
# the layer that reads the tensor (bias / (input scale x weight scale)) overflows.
MIN_ACTIVATION_SCALE = 2.0 ** -20


def affine_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
                   symmetric: bool, min_scale: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering [lo, hi] (widened to contain 0) with codes [qmin, qmax].

    Symmetric: the zero point is 0 for signed codes (the mid code for unsigned ones) and the
    scale covers max(|lo|, |hi|). Works elementwise (per-channel weights). The scale is at least
    ``min_scale``.
    """
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        zp = torch.zeros_like(lo) if qmin < 0 else torch.full_like(lo, (qmax + 1) // 2)
        half = torch.clamp(torch.maximum(-lo / (zp - qmin), hi / (qmax - zp)), min=min_scale)
        return half.float(), zp.to(torch.int32)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=min_scale).float()
    zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale, zp


class _FakeQuantize16(torch.autograd.Function):
    """16-bit fake quantization, exported as the custom op ``edgekd::FakeQuantize16``: the
    TorchScript ONNX exporter maps only 8-bit fake-quant to QuantizeLinear (and stops at opset
    20, while 16-bit QuantizeLinear needs 21); ``edgekd.export.onnx`` expands the op into an
    int16/uint16 QuantizeLinear -> DequantizeLinear pair at opset 21."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin: int, qmax: int):
        out = g.op("edgekd::FakeQuantize16", x, scale, zero_point, qmin_i=qmin, qmax_i=qmax)
        out.setType(x.type())
        return out


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                             qmin: int, qmax: int) -> torch.Tensor:
    """Per-tensor fake quantization over codes [qmin, qmax] (8 or 16 bits, exportable either way)."""
    if (qmin < -128 or qmax > 255) and torch.onnx.is_in_onnx_export():
        return _FakeQuantize16.apply(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


class ActivationQuantizer(nn.Module):
    """Observe a tensor's range and fake-quantize it per tensor over codes [qmin, qmax].

    ``fixed``: (scale, zero point) that the op always writes (softmax, sigmoid, tanh on TFLite).
    """

    def __init__(self, momentum: float = 0.01, qmin: int = QMIN, qmax: int = QMAX,
                 symmetric: bool = False, fixed: tuple[float, int] | None = None):
        super().__init__()
        self.momentum = momentum
        self.qmin, self.qmax, self.symmetric, self.fixed = qmin, qmax, symmetric, fixed
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
        self.masked = False  # scores plus an additive attention mask (see MASKED_BELOW)
        if fixed is not None:
            self.scale.fill_(fixed[0])
            self.zero_point.fill_(fixed[1])
            self.min_val.fill_((qmin - fixed[1]) * fixed[0])
            self.max_val.fill_((qmax - fixed[1]) * fixed[0])

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.min_val) and torch.isfinite(self.max_val))

    def make_learnable(self) -> None:
        """LSQ: the scale becomes a parameter (initialised from calibration, trained with QAT).
        A fixed output quantization stays fixed."""
        if self.fixed is not None:
            return
        self.learnable = True
        self.learned_scale = nn.Parameter(self.scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or self.tracking:
            self._observe(x.detach())
        if not self.enabled or not self.calibrated:
            return x
        if self.learnable and not self.frozen:
            grad_factor = 1.0 / math.sqrt(x.numel() * self.qmax)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.learned_scale.abs().clamp_min(1e-8).reshape(1),
                self.zero_point.float().reshape(1), self.qmin, self.qmax, grad_factor)
        return fake_quantize_activation(x, self.scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the scale (a learned one is copied into the constant buffer the export reads)."""
        if self.learnable:
            self.scale.copy_(self.learned_scale.abs().clamp_min(1e-8))
        self.frozen = True

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        if self.fixed is not None:
            return  # the runtime writes this output at a fixed scale
        if self.masked:
            x = x[x > MASKED_BELOW]
            if not x.numel():
                return
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
        self._update_qparams()

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Cover the real interval [lo, hi] (widened to contain 0); a fixed output ignores it."""
        if self.fixed is not None:
            return
        self.min_val.fill_(lo)
        self.max_val.fill_(hi)
        self._update_qparams()
        if self.learnable:
            self.learned_scale.copy_(self.scale)

    def _update_qparams(self) -> None:
        lo, hi = self.min_val, self.max_val
        if self.masked:
            lo = torch.minimum(lo, hi - MASK_MARGIN)
        if float(lo) == float(hi) == 0.0:  # only zeros seen (a dead layer): any grid holds them exactly;
            hi = torch.ones_like(hi)       # one of unit range keeps the biases of what reads it in int32
        scale, zp = affine_qparams(lo, hi, self.qmin, self.qmax, self.symmetric, MIN_ACTIVATION_SCALE)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)

    def extra_repr(self) -> str:
        return (f"codes=[{self.qmin}, {self.qmax}]{', symmetric' if self.symmetric else ''}, "
                f"scale={self.scale.item():.6g}, zero_point={int(self.zero_point)}")


class TiedQuantizer(nn.Module):
    """Quantize with another quantizer's scale and zero point: the output of an op that must
    keep its input's scale (average pooling on TFLite and onnxruntime) is re-quantized on the
    input's grid, so the exported graph holds the same constants on both sides.

    The source is held without registering it as a submodule (it lives elsewhere in the model).
    """

    def __init__(self, source: ActivationQuantizer):
        super().__init__()
        object.__setattr__(self, "source", source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self.source
        if not src.enabled or not src.calibrated:
            return x
        scale = src.scale
        if src.learnable and not src.frozen:
            scale = src.learned_scale.detach().abs().clamp_min(1e-8)
        return fake_quantize_activation(x, scale, src.zero_point, src.qmin, src.qmax)


class MaskQuantizer(nn.Module):
    """An additive attention mask (0 where attended, very negative where masked) quantized for
    the integer add with the scores: twice the scale of the sum's quantizer ``source``, zero
    point at the top code. 0 is exact, and the lowest code, 2 x 255 of the sum's steps below 0,
    takes any score below the sum's range, so a masked position saturates to the sum's lowest
    code: the integer form of adding -inf. Held like ``TiedQuantizer`` holds its source."""

    def __init__(self, source: ActivationQuantizer):
        super().__init__()
        object.__setattr__(self, "source", source)
        self.register_buffer("zero_point", torch.tensor(source.qmax, dtype=torch.int32))  # a constant in ONNX

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self.source
        if not src.enabled or not src.calibrated:
            return x
        scale = src.learned_scale.detach().abs().clamp_min(1e-8) if src.learnable and not src.frozen else src.scale
        return fake_quantize_activation(x, scale * 2, self.zero_point, src.qmin, src.qmax)


class PerChannelWeightQuantizer(nn.Module):
    """Per-output-channel weights (symmetric int8 in [-127, 127] by default); scales follow the
    weights until frozen.

    ``qmin``/``qmax`` are the codes the values use; ``export_range`` the (qmin, qmax) the op is
    declared with (the full range of the dtype, or of int8/uint8 for 4-bit weights: what the
    TorchScript ONNX exporter accepts); ``dtype`` the type the exporter stores the codes in.
    ``per_channel=False`` gives one scale for the whole tensor.
    """

    def __init__(self, channels: int, qmin: int = QMIN + 1, qmax: int = QMAX, symmetric: bool = True,
                 per_channel: bool = True, export_range: tuple[int, int] = (QMIN, QMAX), dtype: str = "int8"):
        super().__init__()
        self.qmin, self.qmax, self.symmetric, self.per_channel = qmin, qmax, symmetric, per_channel
        self.export_range, self.dtype = export_range, dtype
        self.register_buffer("scale", torch.ones(channels if per_channel else 1))
        self.register_buffer("zero_point", torch.zeros(channels if per_channel else 1, dtype=torch.int32))
        self.frozen = False
        self.learnable = False

    def make_learnable(self) -> None:
        """LSQ: per-channel scales become parameters, initialised to max|w| / 127 on first use."""
        self.learnable = True
        self.learned_scale = nn.Parameter(torch.ones_like(self.scale))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # (Cout, ...) -> same
        lo, hi = self.export_range
        if self.learnable and not self.frozen:
            if not self.initialised:
                with torch.no_grad():
                    self.learned_scale.copy_(self.compute_qparams(w)[0])
                    self.zero_point.copy_(self.compute_qparams(w)[1])
                    self.initialised.fill_(True)
            grad_factor = 1.0 / math.sqrt(w.numel() * self.qmax)
            scale = self.learned_scale.abs().clamp_min(1e-8)
            # training only (never exported): clamp at the codes the rule allows, not the dtype's
            if not self.per_channel:
                return torch._fake_quantize_learnable_per_tensor_affine(
                    w, scale, self.zero_point.float(), self.qmin, self.qmax, grad_factor)
            return torch._fake_quantize_learnable_per_channel_affine(
                w, scale, self.zero_point.float(), 0, self.qmin, self.qmax, grad_factor)
        if not self.frozen:
            with torch.no_grad():
                scale, zp = self.compute_qparams(w)
                self.scale.copy_(scale)
                self.zero_point.copy_(zp)
        if not self.per_channel:
            return torch.fake_quantize_per_tensor_affine(w, self.scale, self.zero_point, lo, hi)
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero_point, 0, lo, hi)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> None:
        """Fix the scales (learned ones, or those of the final weights ``w``); forward then uses
        constants only."""
        if self.learnable and self.initialised:
            self.scale.copy_(self.learned_scale.abs().clamp_min(1e-8))
            # a learned scale may leave weights beyond the rule's codes (e.g. reduce_range's 64);
            # the exported op is declared over the dtype's full range, so clip the weights here
            shape = (-1,) + (1,) * (w.dim() - 1) if self.per_channel else (1,) * w.dim()
            scale, zp = self.scale.reshape(shape), self.zero_point.reshape(shape).float()
            w.copy_(torch.maximum(torch.minimum(w, (self.qmax - zp) * scale), (self.qmin - zp) * scale))
        else:
            scale, zp = self.compute_qparams(w)
            self.scale.copy_(scale)
            self.zero_point.copy_(zp)
        self.frozen = True

    def compute_qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zero points that cover ``w`` (per channel, or one for the tensor)."""
        flat = w.detach().reshape(w.shape[0] if self.per_channel else 1, -1)  # (Cout or 1, K)
        return affine_qparams(flat.amin(dim=1), flat.amax(dim=1), self.qmin, self.qmax, self.symmetric)

    def compute_scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.compute_qparams(w)[0]

    def extra_repr(self) -> str:
        return (f"{self.dtype}, codes=[{self.qmin}, {self.qmax}], {'per-channel' if self.per_channel else 'per-tensor'}"
                f"{', symmetric' if self.symmetric else ''}")


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weight is fake-quantized per channel (bias stays float; runtimes use int32)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant: PerChannelWeightQuantizer | None = None) -> QuantConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q.load_state_dict(conv.state_dict())
        q.weight_quant = weight_quant or PerChannelWeightQuantizer(conv.out_channels)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """Linear layer whose weight is fake-quantized per output feature."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant: PerChannelWeightQuantizer | None = None) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q.weight_quant = weight_quant or PerChannelWeightQuantizer(linear.out_features)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)


QUANT_MODULES = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
QUANT_LAYERS = (QuantConv2d, QuantLinear)
