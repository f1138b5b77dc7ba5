"""LayerNorm on integers, in the form full-integer TFLite computes it.

TFLite has no layer-norm kernel. Spelled out step by step in int8 (mean, centre, square, mean,
rsqrt, multiply) it needs an int8 variance and an int8 reciprocal square root: per-token
variances span orders of magnitude, so the tokens with small variance round to a few codes and
come out mis-normalized. TFLite's int8 ``L2_NORMALIZATION`` kernel instead sums the squares of
its int8 input in int32 and writes ``x / ||x||`` at the fixed scale 1/128, zero point 0, and a
LayerNorm over the last axis of C values is exactly an L2 normalization of the centred values:

    (x - mean) / sqrt(var + eps) * gamma + beta  =  l2_normalize(x - mean) * (sqrt(C) * gamma) + beta

up to ``eps``, which matters only for a row whose variance is below it (about 1e-5: a constant
row, which both forms map to beta). ``decompose_layer_norm`` rewrites each LayerNorm over the last
axis so; the QAT passes then quantize the mean (TFLite ``MEAN``), the centred values (``SUB``),
the normalized values (the target's fixed ``l2_normalize`` output scale) and the per-channel
affine (one ``DEPTHWISE_CONV_2D`` with a 1x1 filter in the TFLite file: its per-channel int8
weight holds sqrt(C) * gamma exactly, and beta is its int32 bias). The LayerNorm module stays in
the model, so its parameters keep their names, train, and load from a checkpoint as before.

A LayerNorm over several axes (``normalized_shape`` of more than one size) is left as it is.

``F.normalize(x, dim=-1)`` (a sentence embedding's last step) is that same L2 normalization and
becomes ``l2_normalize`` too (``rewrite_normalize``). A division of x by a positive value shared
by the whole normalized row (mean pooling's token count, clamped above 0) changes nothing the
normalization keeps, and full-integer TFLite has no usable int8 division (LiteRT's DIV aborts on a
divisor at its zero point), so it is dropped there: ``normalize(sum / count) = normalize(sum)``.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from edgekd.quant.rewrite import rewrite_nodes

TINY = 1e-24  # an all-zero row normalizes to zeros (as onnxruntime's and OpenVINO's LpNormalization do)


class _L2NormalizeExport(torch.autograd.Function):
    """Exported as one ONNX ``LpNormalization`` (p=2, last axis), which the TFLite converter
    writes as ``L2_NORMALIZATION``; used only during ONNX export (no backward)."""

    @staticmethod
    def forward(ctx, x):
        return _l2_normalize(x)

    @staticmethod
    def symbolic(g, x):
        out = g.op("LpNormalization", x, axis_i=-1, p_i=2)
        out.setType(x.type())
        return out


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=TINY))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||`` over the last axis (zeros for an all-zero row)."""
    if torch.onnx.is_in_onnx_export():
        return _L2NormalizeExport.apply(x)
    return _l2_normalize(x)


def channel_affine(x: torch.Tensor, weight, bias) -> torch.Tensor:
    """``x * weight + bias`` per channel of the last axis: one op (one rounding) in int8."""
    y = x * weight
    return y if bias is None else y + bias


def decompose_layer_norm(gm: fx.GraphModule) -> int:
    """Rewrite every LayerNorm over the last axis of ``gm`` in place (see the module docstring);
    returns how many."""
    return rewrite_nodes(gm, _spelled_out)


def _spelled_out(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    parts = _layer_norm_parts(gm, node)
    if parts is None:
        return None
    x, size, weight, bias = parts
    graph = gm.graph
    mean = graph.call_method("mean", (x, -1), {"keepdim": True})
    centred = graph.call_function(operator.sub, (x, mean))
    unit = graph.call_function(l2_normalize, (centred,))
    gain = math.sqrt(size)
    scale = gain if weight is None else graph.call_function(operator.mul, (weight, gain))
    return graph.call_function(channel_affine, (unit, scale, bias))


def _layer_norm_parts(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """(input, normalized size, weight node or None, bias node or None) of a LayerNorm over the
    last axis: an ``nn.LayerNorm`` module call, or ``F.layer_norm`` (what a zoo's own LayerNorm
    subclass, such as timm's ``LayerNorm2d``, traces to)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if type(module) is not nn.LayerNorm or len(module.normalized_shape) != 1 or len(node.args) != 1:
            return None
        weight = gm.graph.get_attr(f"{node.target}.weight") if module.weight is not None else None
        bias = gm.graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
        return node.args[0], module.normalized_shape[0], weight, bias
    if node.op == "call_function" and node.target is nn.functional.layer_norm:
        args = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), node.args), **node.kwargs)
        shape = args.get("normalized_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 1 or not isinstance(shape[0], int):
            return None
        return args["input"], shape[0], args.get("weight"), args.get("bias")
    return None


POSITIVE_CLAMPS = {"clamp_min", "clamp"}  # x.clamp_min(eps), x.clamp(min=eps) with eps > 0


def rewrite_normalize(gm: fx.GraphModule, example: tuple | None) -> int:
    """Replace every ``F.normalize(x, p=2, dim=-1)`` of ``gm`` by ``l2_normalize(x)``, dropping a
    division of x by a positive per-row value first (see the module docstring; ``example``, the
    model's inputs, gives the shapes that show the divisor is one per row). Returns how many."""
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is nn.functional.normalize
             and _normalize_args(n) is not None]
    if not calls:
        return 0
    shapes = _shapes(gm, example)
    calls = [n for n in calls if _over_last_axis(n, shapes)]
    for node in calls:
        x = node.args[0]
        divisor = x.args[1] if (x.op == "call_function" and x.target in (operator.truediv, torch.div)
                                and len(x.users) == 1 and isinstance(x.args[1], fx.Node)) else None
        if divisor is not None and _positive(divisor) and _one_per_row(shapes, x, divisor):
            x = x.args[0]  # normalize(a / c) = normalize(a) for c > 0 shared by the row
        with gm.graph.inserting_before(node):
            unit = gm.graph.call_function(l2_normalize, (x,))
        node.replace_all_uses_with(unit)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return len(calls)


def _normalize_args(node: fx.Node) -> dict | None:
    args = dict(zip(("input", "p", "dim", "eps"), node.args), **node.kwargs)
    p, dim = args.get("p", 2.0), args.get("dim", 1)
    return args if isinstance(p, (int, float)) and float(p) == 2.0 and isinstance(dim, int) else None


def _over_last_axis(node: fx.Node, shapes: dict) -> bool:
    """The normalization is over the last axis (``dim=-1``, or the last by the traced shapes)."""
    dim = _normalize_args(node).get("dim", 1)
    shape = shapes.get(node.args[0])
    return dim == -1 or shape is not None and dim == len(shape) - 1


def _positive(node: fx.Node) -> bool:
    """``node`` is a clamp from below at a positive bound."""
    if node.op == "call_method" and node.target in POSITIVE_CLAMPS:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    elif node.op == "call_function" and node.target in (torch.clamp, torch.clamp_min):
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    else:
        return False
    return isinstance(low, (int, float)) and low > 0


def _shapes(gm: fx.GraphModule, example: tuple | None) -> dict:
    if example is None:
        return {}
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example)
    except Exception:  # shapes are a bonus: without them no division is dropped
        return {}
    return {n: n.meta["tensor_meta"].shape for n in gm.graph.nodes
            if isinstance(n.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata)}


def _one_per_row(shapes: dict, quotient: fx.Node, divisor: fx.Node) -> bool:
    q, d = shapes.get(quotient), shapes.get(divisor)
    return q is not None and d is not None and len(d) >= 1 and d[-1] == 1 and q[-1] > 1


__all__ = ["channel_affine", "decompose_layer_norm", "l2_normalize", "rewrite_normalize"]
