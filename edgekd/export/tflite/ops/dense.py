"""Gemm, MatMul -> FULLY_CONNECTED (constant weights) or BATCH_MATMUL (two activations).

FULLY_CONNECTED weights are ``[out, in]``; int8 weights are per output channel, symmetric, with
an int32 bias of scale input_scale * weight_scale[c]. When the input holds flattened NHWC
features (a Flatten after a convolution), the weight columns are permuted to that order instead
of transposing the activation back to NCHW.
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.builder import Quant
from edgekd.export.tflite.context import CONVERTERS, Context, identity
from edgekd.export.tflite.graph import Node
from edgekd.export.tflite.ops.conv import bias_tensor


def _fc_weights(ctx: Context, node: Node, name: str, transposed: bool, alpha: float,
                feature_perm: np.ndarray | None) -> tuple[int, np.ndarray | None]:
    """Weight constant ``name`` as [out, in] (``transposed``: the file stores [in, out])."""
    if not ctx.int8:
        w = ctx.const_value(name, node, "the weight matrix").astype(np.float32) * alpha
        w = w.T if transposed else w
        if feature_perm is not None:
            w = w[:, feature_perm]
        return ctx.float_const(np.ascontiguousarray(w), f"{node.name}/weights"), None
    qc = ctx.g.qconst.get(name)
    if qc is None:
        raise ctx.fail(node, f"weight {name!r} is float in a quantized model; quantize it in the ONNX "
                             f"file (DequantizeLinear of int8 weights); a mixed-precision layer left in "
                             f"float cannot go to TFLite: give it int8 (qat.layers, or "
                             f"qat.mixed_precision.higher: int8)")
    if any(qc.quant.zero_point) or qc.values.dtype != np.int8:
        raise ctx.fail(node, "weights must be int8 with zero point 0 (symmetric) for TFLite")
    out_axis = 1 if transposed else 0
    if qc.quant.per_channel and qc.quant.axis != out_axis:
        raise ctx.fail(node, f"weights are quantized along axis {qc.quant.axis}; TFLite needs "
                             f"per-output-channel scales")
    values = qc.values.T if transposed else qc.values
    if feature_perm is not None:
        values = values[:, feature_perm]
    scales = np.broadcast_to(np.asarray(qc.quant.scale, np.float64), (values.shape[0],)) * abs(alpha)
    if alpha < 0:
        values = -values.astype(np.int16).clip(-127, 127).astype(np.int8)
    data = np.ascontiguousarray(values)
    quant = Quant.of(scales, np.zeros(len(scales), np.int64), 0)
    return ctx.b.tensor(f"{node.name}/weights", data.shape, np.int8, data=data, quant=quant,
                        bits=qc.bits if alpha > 0 else 8), scales


def _fully_connected(ctx: Context, node: Node, a: str, b: str, transposed: bool, alpha: float,
                     bias_name: str | None, bias_scale: float, keep_dims: bool) -> None:
    rank = len(ctx.shape(a, node))
    x = ctx.get(a, None if rank == 2 else identity(rank), node)
    if x.perm != identity(rank) and rank == 2:
        x = ctx.get(a, identity(rank), node)
    w, scales = _fc_weights(ctx, node, b, transposed, alpha, x.feature_perm)
    out_features = ctx.b.shape_of(w)[0]
    in_quant = ctx.b.quant_of(x.index)
    bias = _bias(ctx, node, bias_name, bias_scale, out_features, in_quant, scales)
    options = ctx.b.options("FullyConnected", fusedActivationFunction=ctx.activation(node),
                            keepNumDims=keep_dims)
    ctx.emit("FULLY_CONNECTED", [x.index, w, bias], node, perm=identity(len(ctx.shape(node.outputs[0]))),
             options=options, version=5 if ctx.int8 else 1)


def _bias(ctx, node, name, scale, features, in_quant, w_scales) -> int:
    if name is None:
        return bias_tensor(ctx, node, None, features, in_quant, w_scales)
    value = ctx.const_value(name, node, "the bias")
    if value.size not in (1, features):
        raise ctx.fail(node, f"bias of shape {value.shape} is not a per-feature vector")
    if value.size == 1 and name not in ctx.g.qconst:
        ctx.g.constants[f"{node.name}/bias_vector"] = np.full(features, float(value.ravel()[0]), np.float32)
        name = f"{node.name}/bias_vector"
    elif value.ndim != 1:
        ctx.g.constants[f"{node.name}/bias_vector"] = value.reshape(features).astype(np.float32)
        name = f"{node.name}/bias_vector"
    return bias_tensor(ctx, node, name, features, in_quant, w_scales, scale_by=scale)


@CONVERTERS.register("Gemm")
def gemm(ctx: Context, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if node.attr("transA", 0):
        raise ctx.fail(node, "transA=1 is not supported (the activation must be [batch, features])")
    if not ctx.is_const(b):
        _batch_matmul(ctx, node, a, b, transpose_b=bool(node.attr("transB", 0)))
        return
    _fully_connected(ctx, node, a, b, transposed=not node.attr("transB", 0),
                     alpha=float(node.attr("alpha", 1.0)), bias_name=c,
                     bias_scale=float(node.attr("beta", 1.0)), keep_dims=False)


@CONVERTERS.register("MatMul")
def matmul(ctx: Context, node: Node) -> None:
    a, b = node.inputs
    if ctx.is_const(b) and len(ctx.shape(b)) == 2 and len(ctx.shape(a, node)) >= 2:
        _fully_connected(ctx, node, a, b, transposed=True, alpha=1.0, bias_name=node.attr("_bias"),
                         bias_scale=1.0, keep_dims=len(ctx.shape(a, node)) > 2)  # _bias: a fused Add
        return
    _batch_matmul(ctx, node, a, b, transpose_b=False)


def _batch_matmul(ctx: Context, node: Node, a: str, b: str, transpose_b: bool) -> None:
    """BATCH_MATMUL of two tensors; a Gemm's alpha and bias follow as MUL and ADD (float)."""
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    c = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2] and beta else None
    if ctx.int8 and (alpha != 1.0 or c):
        raise ctx.no_int8(node, "int8 Gemm of two activations with alpha or a bias is not supported "
                             "(no scale for the intermediate product)")
    ra, rb = len(ctx.shape(a, node)), len(ctx.shape(b, node))
    if ra < 2 or rb < 2:
        raise ctx.fail(node, "MatMul with 1-D operands is not supported")
    ins = []
    for name, rank in ((a, ra), (b, rb)):
        if ctx.is_const(name):
            ins.append(ctx.operand_const(ctx.g.constants[name], f"{node.name}/{name}",
                                         ctx.g.qconst[name].quant if name in ctx.g.qconst else None))
        else:
            ins.append(ctx.get(name, identity(rank), node).index)
    options = ctx.b.options("BatchMatMul", adjY=transpose_b)
    out = node.outputs[0]
    shape = ctx.shape(out, node)
    perm = identity(len(shape))
    if alpha == 1.0 and c is None:
        ctx.emit("BATCH_MATMUL", ins, node, perm=perm, options=options, version=2 if ctx.int8 else 1)
        return
    product = ctx.tensor(f"{node.name}/product", shape)
    ctx.b.op("BATCH_MATMUL", ins, [product], options)
    steps = ([("MUL", ctx.float_const(np.float32(alpha), f"{node.name}/alpha"))] if alpha != 1.0 else [])
    if c is not None:
        if ctx.is_const(c):
            bias = ctx.g.constants[c].astype(np.float32) * beta  # ADD broadcasts as ONNX does
            steps.append(("ADD", ctx.float_const(bias, f"{node.name}/bias")))
        elif beta == 1.0:
            steps.append(("ADD", ctx.get(c, identity(len(ctx.shape(c, node))), node).index))
        else:
            raise ctx.fail(node, "Gemm with a run-time bias and beta != 1 is not supported")
    for i, (op, operand) in enumerate(steps):
        options = ctx.b.options("Mul" if op == "MUL" else "Add")
        if i == len(steps) - 1:
            ctx.emit(op, [product, operand], node, perm=perm, options=options)
        else:
            nxt = ctx.tensor(f"{node.name}/{op.lower()}", shape)
            ctx.b.op(op, [product, operand], [nxt], options)
            product = nxt
