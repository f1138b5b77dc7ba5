"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean, ReduceSum, ReduceL2 -> MAX_POOL_2D,
AVERAGE_POOL_2D, MEAN, REDUCE_MAX, SUM, SQRT(SUM(x * x)).

Pooling keeps the input's scale in int8 models (TFLite quantization spec); if the ONNX model
quantized the output with another scale, a QUANTIZE follows. TFLite's SAME average pooling
excludes padding from the mean, like ONNX ``count_include_pad=0``; other padding is an explicit
PAD (zeros for average pooling with ``count_include_pad=1``, the lowest value for max pooling).
An int8 average pool without padding is a DEPTHWISE_CONV_2D with a 1 / area filter, which XNNPACK
delegates (it runs AVERAGE_POOL_2D in float only).
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.context import CONVERTERS, NHWC, Context
from edgekd.export.tflite.graph import Node
from edgekd.export.tflite.ops.conv import constant_depthwise
from edgekd.export.tflite.ops.spatial import pad_nhwc, tflite_padding, window


def _pool(ctx: Context, node: Node, op: str) -> None:
    x_shape = ctx.shape(node.inputs[0], node)
    if len(x_shape) != 4:
        raise ctx.fail(node, f"{len(x_shape) - 2}-D pooling is not supported (2-D only)")
    if list(node.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.fail(node, "dilated pooling is not supported by TFLite")
    if len([o for o in node.outputs if o]) > 1:
        raise ctx.fail(node, "MaxPool's Indices output is not supported")
    kernel = list(node.attr("kernel_shape"))
    win = window(ctx, node, list(x_shape[2:]), kernel)
    out_hw = list(ctx.shape(node.outputs[0], node)[2:])
    if win.out != out_hw:  # ceil_mode edge cases where onnx shape inference and the kernels differ
        raise ctx.fail(node, f"the model declares output size {out_hw}, but the pooling window "
                             f"computes {win.out} (onnxruntime and PyTorch agree with the latter); "
                             f"re-export the model without ceil_mode")
    padding, explicit = tflite_padding(win, list(x_shape[2:]))
    x = ctx.get(node.inputs[0], NHWC, node)
    in_quant = ctx.b.quant_of(x.index)
    correction = None
    include_pad = bool(node.attr("count_include_pad", 0))
    if op == "MAX_POOL_2D" and explicit:
        # after a ReLU (ResNet's stem) the lowest value is 0: zeros pad the same, and PAD is what
        # XNNPACK delegates (PADV2 splits the graph into two XNNPACK partitions)
        lowest = None if _non_negative(ctx, node.inputs[0], in_quant) else _lowest(in_quant)
        x = pad_nhwc(ctx, x, explicit, node.name, value=lowest)
    elif op == "AVERAGE_POOL_2D" and (explicit or (padding == "SAME" and include_pad)):
        # zeros are padded in and averaged over the whole window; then each output is rescaled to
        # ONNX's divisor (pixels inside the input, or inside input + pads with count_include_pad)
        pads = explicit or [win.pads[0], win.pads[1], *_used_end(win, x_shape)]
        x = pad_nhwc(ctx, x, pads, node.name)
        padding = "VALID"
        factor = _divisor_factor(win, x_shape, pads, include_pad)
        correction = None if np.allclose(factor, 1.0) else factor
    options = ctx.b.options("Pool2D", padding=ctx.b.enum("Padding", padding), strideH=win.strides[0],
                            strideW=win.strides[1], filterHeight=kernel[0], filterWidth=kernel[1])
    if correction is None and ctx.int8 and op == "AVERAGE_POOL_2D" and padding == "VALID":
        _average_as_depthwise(ctx, node, x, kernel, win.strides, in_quant)
        return
    if correction is None:
        ctx.emit(op, [x.index], node, perm=NHWC, options=options, fixed_quant=in_quant,
                 version=2 if ctx.int8 else 1)
        return
    # zeros were averaged in: rescale each output from the kernel area to ONNX's divisor
    out_shape = ctx.shape(node.outputs[0], node)
    pooled = ctx.tensor(f"{node.name}/pooled", [out_shape[0], out_shape[2], out_shape[3], out_shape[1]],
                        like=x.index)
    ctx.b.op(op, [x.index], [pooled], options, 2 if ctx.int8 else 1)
    factor = ctx.operand_const(correction, f"{node.name}/exclude_pad", None)
    ctx.emit("MUL", [pooled, factor], node, perm=NHWC, options=ctx.b.options("Mul"),
             version=2 if ctx.int8 else 1)


def _average_as_depthwise(ctx: Context, node: Node, x, kernel: list[int], strides: list[int], in_quant) -> None:
    """An int8 average pool without padding as a DEPTHWISE_CONV_2D whose filter is 1 / area
    (int8 127 at scale 1 / (127 * area): exact) and bias 0, writing the input's scale: XNNPACK
    runs AVERAGE_POOL_2D in float only, so DenseNet's int8 transitions left it three times."""
    channels = ctx.b.shape_of(x.index)[3]
    mean = np.full((kernel[0], kernel[1], channels), 1.0 / (kernel[0] * kernel[1]))
    consts, options, _ = constant_depthwise(ctx, node, mean, np.zeros(channels), in_quant.scale[0], strides)
    ctx.emit("DEPTHWISE_CONV_2D", [x.index, *consts], node, perm=NHWC, options=options, fixed_quant=in_quant,
             version=3)


def _divisor_factor(win, x_shape, pads, include_pad: bool) -> np.ndarray:
    """(1, Ho, Wo, 1): kernel area / ONNX's divisor at each output. The divisor counts the window
    pixels inside the input (count_include_pad=0) or inside input + ONNX pads (=1; the extra
    window of ceil_mode is not counted)."""
    counts = []
    for i in range(2):
        start = np.arange(win.out[i]) * win.strides[i] - pads[i]
        lo, hi = (-win.pads[i], x_shape[2 + i] + win.pads[i + 2]) if include_pad else (0, x_shape[2 + i])
        counts.append(np.maximum(np.minimum(start + win.kernel[i], hi) - np.maximum(start, lo), 1))
    area = win.kernel[0] * win.kernel[1]
    return (area / np.outer(counts[0], counts[1])).astype(np.float32).reshape(1, win.out[0], win.out[1], 1)


def _used_end(win, x_shape) -> list[int]:
    return [max((win.out[i] - 1) * win.strides[i] + win.effective(i) - x_shape[2 + i] - win.pads[i], 0)
            for i in range(2)]


def _non_negative(ctx: Context, name: str, quant) -> bool:
    """``name`` never holds a value below 0: its int8 grid starts at 0, or a ReLU/ReLU6 wrote it."""
    if quant is not None:
        return _lowest(quant) == 0.0
    producer = next((n for n in ctx.g.nodes if name in n.outputs), None)
    return producer is not None and (producer.op == "Relu" or producer.attr("_activation") in ("RELU", "RELU6"))


def _lowest(quant) -> float:
    if quant is None:
        return float(np.finfo(np.float32).min)
    return (-128 - quant.zero_point[0]) * quant.scale[0]


@CONVERTERS.register("MaxPool")
def max_pool(ctx: Context, node: Node) -> None:
    _pool(ctx, node, "MAX_POOL_2D")


@CONVERTERS.register("AveragePool")
def average_pool(ctx: Context, node: Node) -> None:
    _pool(ctx, node, "AVERAGE_POOL_2D")


def _reduced_perm(perm: tuple[int, ...], axes: list[int], keep: bool) -> tuple[int, ...]:
    """The stored layout of a reduction's output: the input's, or (without keepdims) the kept
    axes in the order they are stored, renumbered."""
    if keep:
        return perm
    kept = [a for a in perm if a not in axes]
    renumber = {a: i for i, a in enumerate(sorted(kept))}
    return tuple(renumber[a] for a in kept)


def _reduce(ctx: Context, node: Node, op: str, axes: list[int], keep: bool) -> None:
    shape = ctx.shape(node.inputs[0], node)
    rank = len(shape)
    axes = sorted({a % rank for a in axes})
    x = ctx.get(node.inputs[0], None, node)
    physical = [x.perm.index(a) for a in axes]
    out_perm = _reduced_perm(x.perm, axes, keep)
    fixed = ctx.b.quant_of(x.index) if op == "REDUCE_MAX" else None
    ctx.emit(op, [x.index, ctx.int_const(physical)], node, perm=out_perm,
             options=ctx.b.options("Reducer", keepDims=keep), fixed_quant=fixed,
             version=2 if ctx.int8 else 1)


@CONVERTERS.register("GlobalAveragePool")
def global_average_pool(ctx: Context, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0], node))
    _reduce(ctx, node, "MEAN", list(range(2, rank)), keep=True)


@CONVERTERS.register("GlobalMaxPool")
def global_max_pool(ctx: Context, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0], node))
    _reduce(ctx, node, "REDUCE_MAX", list(range(2, rank)), keep=True)


@CONVERTERS.register("ReduceMean")
@CONVERTERS.register("ReduceSum")
def reduce_mean(ctx: Context, node: Node) -> None:
    """ReduceMean -> MEAN, ReduceSum -> SUM (a sentence encoder's masked mean pooling)."""
    rank = len(ctx.shape(node.inputs[0], node))
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = [int(a) for a in ctx.const_value(node.inputs[1], node, "axes")]
    else:
        axes = list(node.attr("axes", []))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            x = ctx.get(node.inputs[0], None, node)
            ctx.bind(node.outputs[0], x.index, x.perm)
            return
        axes = list(range(rank))
    _reduce(ctx, node, "SUM" if node.op == "ReduceSum" else "MEAN", axes, keep=bool(node.attr("keepdims", 1)))


def _reduce_axes(ctx: Context, node: Node, rank: int) -> list[int]:
    if len(node.inputs) > 1 and node.inputs[1]:
        return [int(a) % rank for a in ctx.const_value(node.inputs[1], node, "axes")]
    return [int(a) % rank for a in node.attr("axes", [])] or list(range(rank))


@CONVERTERS.register("ReduceL2")
def reduce_l2(ctx: Context, node: Node) -> None:
    """ReduceL2 (``F.normalize``'s norm) as SQRT(SUM(x * x)), float only."""
    if ctx.int8:
        raise ctx.no_int8(node, "int8 ReduceL2 has no TFLite kernel (the sum of squares needs its own scale)")
    rank = len(ctx.shape(node.inputs[0], node))
    axes = sorted(set(_reduce_axes(ctx, node, rank)))
    keep = bool(node.attr("keepdims", 1))
    x = ctx.get(node.inputs[0], None, node)
    phys = ctx.b.shape_of(x.index)
    square = ctx.tensor(f"{node.name}/square", phys, like=x.index)
    ctx.b.op("MUL", [x.index, x.index], [square], ctx.b.options("Mul"))
    summed_shape = [1 if a in axes else d for a, d in zip(x.perm, phys) if keep or a not in axes]
    summed = ctx.tensor(f"{node.name}/sum_of_squares", summed_shape, like=x.index)
    ctx.b.op("SUM", [square, ctx.int_const([x.perm.index(a) for a in axes])], [summed],
             ctx.b.options("Reducer", keepDims=keep))
    ctx.emit("SQRT", [summed], node, perm=_reduced_perm(x.perm, axes, keep))

