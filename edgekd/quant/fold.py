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


def layer_bn_pairs(gm: fx.GraphModule, layers=FOLDABLE, norms=BATCHNORMS, exact: bool = False):
    """(layer node, BN node) for every BN whose input is a layer of ``layers`` (``exact``: of
    exactly those types, not subclasses) used only by that BN."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), norms):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and (type(modules.get(src.target)) in layers if exact
                     else isinstance(modules.get(src.target), layers))):
            yield src, node


def remove_bn_node(gm: fx.GraphModule, layer: fx.Node, bn: fx.Node) -> None:
    """Drop ``bn`` from the graph (its users read ``layer``) and delete its module; submodules it
    held (timm's ``BatchNormAct2d.act``) stay at their paths in an empty holder."""
    bn.replace_all_uses_with(layer)
    gm.graph.erase_node(bn)
    children = list(gm.get_submodule(bn.target).named_children())
    gm.delete_submodule(bn.target)
    if children:
        holder = nn.Module()
        for name, child in children:
            holder.add_module(name, child)
        gm.set_submodule(bn.target, holder)


@torch.no_grad()
def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold every BN whose input is a conv/linear used only by that BN. Returns the folded BN paths."""
    folded = []
    for src, node in layer_bn_pairs(gm):
        _fold_into(gm.get_submodule(src.target), gm.get_submodule(node.target))
        remove_bn_node(gm, src, node)
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
