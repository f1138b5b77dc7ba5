"""Fold BatchNorm into the preceding convolution (or linear layer), as every int8 runtime does.

For a conv ``y = W * x + b`` followed by BN with running statistics (mean mu, variance var), scale
gamma and shift beta (Ioffe & Szegedy 2015; folding as in Jacob et al. 2018, sec. 3.2):

    W' = W * gamma / sqrt(var + eps)          (per output channel)
    b' = (b - mu) * gamma / sqrt(var + eps) + beta

The graph is a ``torch.fx.GraphModule``; each folded BN node is removed and its module deleted, so
module paths of every other layer stay as they were (forward hooks keep working).
"""

from __future__ import annotations

import torch
from torch import fx, nn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold every BN whose input is a conv/linear used only by that BN. Returns the folded BN paths."""
    modules = dict(gm.named_modules())
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BATCHNORMS):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), FOLDABLE)):
            continue
        layer, bn = modules[src.target], modules[node.target]
        _fold_into(layer, bn)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    return folded


def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    if bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std  # (C,)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.copy_(layer.weight * factor.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.detach().clone())
    else:
        layer.bias.copy_(new_bias)
