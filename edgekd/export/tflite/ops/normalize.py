"""LpNormalization (p=2) -> L2_NORMALIZATION; ChannelAffine -> a 1x1 DEPTHWISE_CONV_2D (int8) or
MUL and ADD (float).

Together they are LayerNorm on integers (``edgekd.quant.layer_norm``): MEAN, SUB,
L2_NORMALIZATION (int8 output fixed at 1/128, zero point 0, as TFLite's kernel writes it) and
x * gamma + beta per channel of the last axis. ``ChannelAffine`` is graph.py's fusion of that
Mul and Add: in int8 its filter holds each gamma as +-127 at scale |gamma| / 127 (exact) and beta
is the int32 bias, so the affine rounds once, at its output, as the simulation does.
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.builder import Quant
from edgekd.export.tflite.context import CONVERTERS, Context
from edgekd.export.tflite.graph import Node
from edgekd.export.tflite.ops.conv import MAX_REQUANTIZATION, constant_depthwise
from edgekd.export.tflite.ops.elementwise import const_like

L2_QUANT = Quant.of(1 / 128, 0)  # TFLite's int8 L2_NORMALIZATION output


def _last_axis_last(ctx: Context, name: str, axis: int, node: Node):
    """Activation ``name`` stored with logical ``axis`` as its physical last axis."""
    x = ctx.get(name, None, node)
    rank = len(x.perm)
    if x.perm.index(axis) != rank - 1:
        x = ctx.get(name, tuple(a for a in range(rank) if a != axis) + (axis,), node)
    return x


@CONVERTERS.register("LpNormalization")
def lp_normalization(ctx: Context, node: Node) -> None:
    """x / ||x||_2 along ``axis`` (moved last: TFLite normalizes the last axis)."""
    if int(node.attr("p", 2)) != 2:
        raise ctx.fail(node, "LpNormalization with p=1 has no TFLite kernel (L2_NORMALIZATION is p=2)")
    rank = len(ctx.shape(node.inputs[0], node))
    if rank > 4:
        raise ctx.fail(node, f"L2_NORMALIZATION takes tensors of rank 4 or less, got rank {rank}")
    x = _last_axis_last(ctx, node.inputs[0], int(node.attr("axis", -1)) % rank, node)
    options = ctx.b.options("L2Norm", fusedActivationFunction=ctx.b.enum("ActivationFunctionType", "NONE"))
    ctx.emit("L2_NORMALIZATION", [x.index], node, perm=x.perm, options=options,
             fixed_quant=L2_QUANT if ctx.int8 else None, version=2 if ctx.int8 else 1)


@CONVERTERS.register("ChannelAffine")
def channel_affine(ctx: Context, node: Node) -> None:
    """x * gamma + beta, gamma and beta per channel of x's last axis (graph.py's fusion)."""
    x_name, gamma_name, beta_name = node.inputs
    shape = ctx.shape(x_name, node)
    rank, channels = len(shape), shape[-1]
    x = _last_axis_last(ctx, x_name, rank - 1, node)
    gamma = np.broadcast_to(ctx.const_value(gamma_name, node, "the scale").reshape(-1), (channels,))
    beta = np.broadcast_to(ctx.const_value(beta_name, node, "the shift").reshape(-1), (channels,))
    if not ctx.int8:
        phys = ctx.b.shape_of(x.index)
        scaled = ctx.tensor(f"{node.name}/scaled", phys, like=x.index)
        ctx.b.op("MUL", [x.index, const_like(ctx, node, gamma, x, f"{node.name}/gamma")], [scaled],
                 ctx.b.options("Mul"))
        ctx.emit("ADD", [scaled, const_like(ctx, node, beta, x, f"{node.name}/beta")], node, perm=x.perm,
                 options=ctx.b.options("Add", fusedActivationFunction=ctx.activation(node)))
        return
    if rank > 4:
        raise ctx.fail(node, f"a per-channel affine on a rank-{rank} tensor (int8: a depthwise convolution "
                             f"of rank 4 at most)")
    phys = ctx.b.shape_of(x.index)
    nhwc = phys if rank == 4 else [phys[0], 1, int(np.prod(phys[1:-1], dtype=np.int64)), channels] \
        if rank > 1 else [1, 1, 1, channels]
    x4 = x.index
    if rank != 4:
        x4 = ctx.tensor(f"{node.name}/nhwc", nhwc, like=x.index)
        ctx.b.op("RESHAPE", *ctx.reshape_args(x.index, nhwc, x4, x_name))
    in_scale = float(ctx.b.quant_of(x.index).scale[0])
    out = ctx.quant_of(node.outputs[0], node)
    consts, options, w_scales = constant_depthwise(ctx, node, gamma.reshape(1, 1, channels), beta, in_scale,
                                                   activation=node.attr("_activation") or "NONE")
    if float(np.max(in_scale * w_scales)) / out.scale[0] >= MAX_REQUANTIZATION:
        raise ctx.fail(node, f"int8 output scale {out.scale[0]:.3g} is too small for its per-channel scale "
                             f"(XNNPACK needs input scale x weight scale / output scale < {MAX_REQUANTIZATION:.0f})")
    if rank == 4:
        ctx.emit("DEPTHWISE_CONV_2D", [x4, *consts], node, perm=x.perm, options=options, version=3)
        return
    y4 = ctx.tensor(f"{node.name}/nhwc_out", nhwc, dtype=np.int8, quant=out)
    ctx.b.op("DEPTHWISE_CONV_2D", [x4, *consts], [y4], options, 3)
    inputs, _, reshape_options = ctx.reshape_args(y4, phys, -1, node.outputs[0])
    ctx.emit("RESHAPE", inputs, node, perm=x.perm, options=reshape_options, inherit=out)
