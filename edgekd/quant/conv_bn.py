"""Conv + BatchNorm trained together under QAT, with BN statistics frozen after a chosen epoch.

Folding BN before QAT (``fold.py``) fixes the normalisation at the float model's statistics. Keeping
BN live for the first QAT epochs lets its statistics follow the quantized weights, then freezes them
(Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference", sec. 3.2;
Jacob et al. 2018, sec. 3.2). The convolution always sees the weights the runtime will hold,
folded with the running statistics and fake-quantized:

    f = gamma / sqrt(running_var + eps)                      (per output channel)
    y = conv(x, q(W * f)) / f (+ b)                          # (N, C, H, W)
    out = BN(y)        training: batch statistics (running ones updated)
                       frozen or eval: running statistics, which is exactly
                       conv(x, q(W * f)) + (b - mean) * f + beta: the folded conv

``fold_conv_bn`` turns each pair into that folded ``QuantConv2d`` when the model is frozen, so
the export is identical to one folded before QAT.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from edgekd.quant.fake_quant import PerChannelWeightQuantizer, QuantConv2d
from edgekd.quant.fold import _fold_into, layer_bn_pairs, remove_bn_node


def _bn(y: torch.Tensor, bn: nn.BatchNorm2d, use_batch_stats: bool) -> torch.Tensor:
    """BatchNorm of ``y`` with ``bn``'s parameters: batch statistics (updating the running ones)
    or, frozen, the running statistics alone."""
    return nn.functional.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch_stats,
                                    bn.momentum if bn.momentum is not None else 0.1, bn.eps)


class ConvBn2d(nn.Conv2d):
    """A float Conv2d with its BatchNorm attached (``bn``), as fused for QAT; a layer kept in
    float freezes its statistics with the quantized ones (``bn_frozen``)."""

    @classmethod
    def fuse(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> ConvBn2d:
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        m.load_state_dict(conv.state_dict())
        m.bn = bn
        m.bn_frozen = False
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _bn(self._conv_forward(x, self.weight, self.bias), self.bn, self.training and not self.bn_frozen)


class QuantConvBn2d(QuantConv2d):
    """Conv2d + BatchNorm whose folded weight is fake-quantized (see the module docstring)."""

    @classmethod
    def from_float(cls, conv: ConvBn2d, weight_quant: PerChannelWeightQuantizer | None = None) -> QuantConvBn2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        q.weight_quant = weight_quant or PerChannelWeightQuantizer(conv.out_channels)
        q.bn = conv.bn
        q.bn_frozen = False
        return q

    def _factor(self) -> torch.Tensor:  # (C,)
        gamma = self.bn.weight if self.bn.affine else torch.ones_like(self.bn.running_var)
        return gamma * torch.rsqrt(self.bn.running_var + self.bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self._factor()
        w = self.weight * factor.reshape(-1, 1, 1, 1)
        y = self._conv_forward(x, self.weight_quant(w), None) / factor.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return _bn(y, self.bn, self.training and not self.bn_frozen)


def fuse_conv_bn(gm: fx.GraphModule) -> list[str]:
    """Replace every Conv2d -> BatchNorm2d pair (the conv used only by the BN) by a ``ConvBn2d``
    at the conv's path; the BN node is removed. Returns the fused conv paths."""
    fused = []
    for src, node in layer_bn_pairs(gm, layers=(nn.Conv2d,), norms=(nn.BatchNorm2d,), exact=True):
        gm.set_submodule(src.target, ConvBn2d.fuse(gm.get_submodule(src.target), gm.get_submodule(node.target)))
        remove_bn_node(gm, src, node)
        fused.append(src.target)
    gm.graph.lint()
    gm.recompile()
    return fused


def freeze_bn_stats(model: nn.Module) -> int:
    """From now on every QAT conv+BN (quantized, or kept in float) normalises with its running
    statistics. Returns how many."""
    pairs = [m for m in model.modules() if isinstance(m, (ConvBn2d, QuantConvBn2d))]
    for m in pairs:
        m.bn_frozen = True
    return len(pairs)


@torch.no_grad()
def fold_conv_bn(model: nn.Module) -> int:
    """Fold every (Quant)ConvBn2d into a plain (Quant)Conv2d with the running statistics, exactly
    as ``fold.fold_batchnorm`` folds before QAT. Returns how many were folded."""
    count = 0
    for name, m in list(model.named_modules()):
        if not isinstance(m, (ConvBn2d, QuantConvBn2d)):
            continue
        if isinstance(m, QuantConvBn2d):
            plain = QuantConv2d.from_float(_plain_conv(m), m.weight_quant)
        else:
            plain = _plain_conv(m)
        _fold_into(plain, m.bn)
        model.set_submodule(name, plain)
        count += 1
    if count and isinstance(model, fx.GraphModule):
        model.recompile()
    return count


def _plain_conv(m: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                     m.groups, m.bias is not None, m.padding_mode)
    conv.weight.copy_(m.weight)
    if m.bias is not None:
        conv.bias.copy_(m.bias)
    return conv


__all__ = ["ConvBn2d", "QuantConvBn2d", "fold_conv_bn", "freeze_bn_stats", "fuse_conv_bn"]
