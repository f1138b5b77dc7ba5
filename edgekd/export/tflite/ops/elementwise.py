"""Element-wise ops and activations: Add, Sub, Mul, Div, Pow (constant exponent), Sqrt, Relu, Clip,
LeakyRelu, PRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Gelu (native, or the erf pattern fused by ``graph``), Softmax,
standalone BatchNormalization, LayerNormalization (float).

Layout-neutral: the output keeps the layout of the activation input; a constant operand is
broadcast to the activation's rank and permuted to its layout. In int8 models, LOGISTIC and
SOFTMAX write scale 1/256 and zero point -128, TANH 1/128 and 0 (the TFLite quantization
spec); a QUANTIZE follows when the ONNX model quantized the output differently.
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.builder import Quant
from edgekd.export.tflite.context import CONVERTERS, NHWC, Context, Ref, addend_quant, identity, laid_out, range_quant
from edgekd.export.tflite.graph import Node, activation_of

_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV"}
SIGMOID_QUANT = Quant.of(1 / 256, -128)
TANH_QUANT = Quant.of(1 / 128, 0)


def const_like(ctx: Context, node: Node, value: np.ndarray, like: Ref, name: str,
               quant: Quant | None = None) -> int:
    """Constant ``value`` broadcast-aligned to activation ``like`` (its rank and layout)."""
    rank = len(like.perm)
    value = np.asarray(value, np.float32)
    if value.ndim > rank:
        raise ctx.fail(node, f"constant of rank {value.ndim} broadcast against a rank-{rank} tensor")
    return ctx.operand_const(laid_out(value, like.perm), name, quant)


def _operands(ctx: Context, node: Node) -> tuple[list[int], tuple[int, ...]]:
    a, b = node.inputs[:2]
    acts = [n for n in (a, b) if not ctx.is_const(n)]
    if not acts:
        raise ctx.fail(node, "both operands are constant (should have been folded)")
    ranks = {n: len(ctx.shape(n, node)) for n in acts}
    if len(acts) == 2 and ranks[a] != ranks[b]:
        refs = {n: ctx.get(n, identity(ranks[n]), node) for n in acts}
    else:
        first = ctx.get(acts[0], None, node)
        refs = {n: ctx.get(n, first.perm, node) for n in acts}
    lead = max(acts, key=lambda n: ranks[n])
    indices = []
    for n in (a, b):
        if n in refs:
            indices.append(refs[n].index)
            continue
        value = ctx.g.constants[n]
        quant = ctx.g.qconst[n].quant if n in ctx.g.qconst and not ctx.g.qconst[n].quant.per_channel else None
        if node.op == "Div" and n == b:
            value, quant = 1.0 / value.astype(np.float64), None
        indices.append(const_like(ctx, node, value, refs[lead], f"{node.name}/{n}", quant))
    return indices, refs[lead].perm


@CONVERTERS.register("Sum")
@CONVERTERS.register("Max")
@CONVERTERS.register("Min")
def variadic(ctx: Context, node: Node) -> None:
    """Sum/Max/Min of N inputs: one ADD/MAXIMUM/MINIMUM per extra input (float; int8 for two)."""
    op = {"Sum": "ADD", "Max": "MAXIMUM", "Min": "MINIMUM"}[node.op]
    names = [n for n in node.inputs if n]
    if len(names) == 1:
        x = ctx.get(names[0], None, node)
        ctx.bind(node.outputs[0], x.index, x.perm)
        return
    if len(names) > 2 and ctx.int8:
        raise ctx.no_int8(node, f"int8 {node.op} of {len(names)} inputs has no scales for the partial "
                             f"results; split it into two-input ops in the model")
    if op != "ADD" and ctx.int8:  # int8 MAXIMUM/MINIMUM do not rescale: both inputs at the output's
        inputs, perm = _operands(ctx, node)
        quant = ctx.quant_of(node.outputs[0], node)
        inputs = [ctx.requantize(i, quant, f"{node.name}/input{k}_requantized") for k, i in enumerate(inputs)]
        ctx.emit(op, inputs, node, perm=perm, fixed_quant=quant)
        return
    partial = node.inputs[0]
    for i, name in enumerate(names[1:]):
        last = i == len(names) - 2
        out = node.outputs[0] if last else f"{node.name}/partial{i}"
        step = Node(node.op, node.name, [partial, name], [out])
        if not last:
            ctx.g.shapes[out] = tuple(np.broadcast_shapes(ctx.shape(partial, node), ctx.shape(name, node)))
        inputs, perm = _operands(ctx, step)
        options = ctx.b.options("Add") if op == "ADD" else None
        ctx.emit(op, inputs, step, perm=perm, options=options, out=out)
        partial = out


@CONVERTERS.register("Add")
@CONVERTERS.register("Sub")
@CONVERTERS.register("Mul")
@CONVERTERS.register("Div")
def binary(ctx: Context, node: Node) -> None:
    if node.op == "Div" and ctx.int8 and not ctx.is_const(node.inputs[1]):
        raise ctx.no_int8(node, "int8 division by a run-time tensor is not supported (only by a constant): LiteRT's "
                                "int8 DIV fails the invoke on a divisor at its zero point, and saturates quotients "
                                "far below its output step (a numerator of a few codes comes out as +-128)")
    inputs, perm = _operands(ctx, node)
    op = _BINARY[node.op]
    if node.op == "Div" and ctx.is_const(node.inputs[1]):
        op = "MUL"  # division by a constant is multiplication by its reciprocal
    kind = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div"}[op]
    options = ctx.b.options(kind, fusedActivationFunction=ctx.activation(node))
    ctx.emit(op, inputs, node, perm=perm, options=options, version=2 if ctx.int8 else 1)


def _unary(ctx: Context, node: Node, op: str, options=None, fixed_quant: Quant | None = None,
           version: int = 1) -> Ref:
    x = ctx.get(node.inputs[0], None, node)
    return ctx.emit(op, [x.index], node, perm=x.perm, options=options, fixed_quant=fixed_quant,
                    inherit=ctx.b.quant_of(x.index), version=2 if ctx.int8 else version)


@CONVERTERS.register("Relu")
def relu(ctx: Context, node: Node) -> None:
    _unary(ctx, node, "RELU")


@CONVERTERS.register("Clip")
def clip(ctx: Context, node: Node) -> None:
    act = activation_of(node, ctx.g)
    if act is not None:
        _unary(ctx, node, act)
        return
    lo, hi = node.attr("min"), node.attr("max")
    for i, what in ((1, "min"), (2, "max")):
        if len(node.inputs) > i and node.inputs[i]:
            bound = np.asarray(ctx.const_value(node.inputs[i], node, what)).reshape(-1)
            if bound.size != 1:
                raise ctx.fail(node, f"Clip {what} must be a scalar, got shape {bound.shape}")
            lo, hi = (float(bound[0]), hi) if i == 1 else (lo, float(bound[0]))
    if (lo, hi) == (0.0, 1.0):
        _unary(ctx, node, "RELU_0_TO_1")
        return
    x = ctx.get(node.inputs[0], None, node)
    steps = [(op, v) for op, v in (("MAXIMUM", lo), ("MINIMUM", hi)) if v is not None and np.isfinite(v)]
    if not steps:
        ctx.bind(node.outputs[0], x.index, x.perm)
        return
    # TFLite's int8 MAXIMUM/MINIMUM do not rescale: input, bound and output share the output scale
    quant = ctx.quant_of(node.outputs[0], node, inherit=ctx.b.quant_of(x.index))
    current = x.index if quant is None else ctx.requantize(x.index, quant, f"{node.name}/requantized")
    for i, (op, value) in enumerate(steps):
        bound = const_like(ctx, node, np.asarray(value), x, f"{node.name}/{op.lower()}", quant)
        if i == len(steps) - 1:
            ctx.emit(op, [current, bound], node, perm=x.perm, fixed_quant=quant)
        else:
            out = ctx.tensor(f"{node.name}/{op.lower()}_out", ctx.b.shape_of(current), like=current)
            ctx.b.op(op, [current, bound], [out])
            current = out


@CONVERTERS.register("LeakyRelu")
def leaky_relu(ctx: Context, node: Node) -> None:
    _unary(ctx, node, "LEAKY_RELU", ctx.b.options("LeakyRelu", alpha=float(node.attr("alpha", 0.01))))


@CONVERTERS.register("PRelu")
def prelu(ctx: Context, node: Node) -> None:
    x = ctx.get(node.inputs[0], None, node)
    slope = ctx.const_value(node.inputs[1], node, "the slope")
    shape = ctx.shape(node.inputs[0], node)
    if ctx.g.opset < 7 and slope.ndim == 1 and slope.size == shape[1] > 1:  # PRelu-6: per channel
        slope = slope.reshape((-1,) + (1,) * (len(shape) - 2))
    try:
        np.broadcast_shapes(slope.shape, shape)
    except ValueError:
        raise ctx.fail(node, f"slope of shape {slope.shape} does not broadcast to the input "
                             f"{tuple(shape)}") from None
    quant = None
    if ctx.int8:
        quant = range_quant(float(slope.min()), float(slope.max()))
    alpha = const_like(ctx, node, slope, x, f"{node.name}/alpha", quant)
    ctx.emit("PRELU", [x.index, alpha], node, perm=x.perm)


@CONVERTERS.register("Sigmoid")
def sigmoid(ctx: Context, node: Node) -> None:
    _unary(ctx, node, "LOGISTIC", fixed_quant=SIGMOID_QUANT if ctx.int8 else None)


@CONVERTERS.register("Tanh")
def tanh(ctx: Context, node: Node) -> None:
    _unary(ctx, node, "TANH", fixed_quant=TANH_QUANT if ctx.int8 else None)


@CONVERTERS.register("Sqrt")
def sqrt(ctx: Context, node: Node) -> None:
    """SQRT (LayerNorm as torch exports it below opset 17: ReduceMean, Sub, Pow, Sqrt, Div)."""
    if ctx.int8:
        raise ctx.no_int8(node, "TFLite's SQRT runs in float only")
    _unary(ctx, node, "SQRT")


@CONVERTERS.register("Pow")
def power(ctx: Context, node: Node) -> None:
    """x ** c for a constant c: 2 as MUL(x, x) (delegated to XNNPACK, int8 too), 0.5 as SQRT,
    others as POW (float)."""
    exponent = np.asarray(ctx.const_value(node.inputs[1], node, "the exponent")).reshape(-1)
    if exponent.size != 1:
        raise ctx.fail(node, "Pow with a per-element exponent is not supported (one constant only)")
    c = float(exponent[0])
    x = ctx.get(node.inputs[0], None, node)
    if c == 2.0:
        ctx.emit("MUL", [x.index, x.index], node, perm=x.perm, options=ctx.b.options("Mul"),
                 version=2 if ctx.int8 else 1)
        return
    if ctx.int8:
        raise ctx.no_int8(node, f"x ** {c:g} has no int8 TFLite kernel (only x ** 2, as a MUL)")
    if c == 0.5:
        ctx.emit("SQRT", [x.index], node, perm=x.perm)
        return
    ctx.emit("POW", [x.index, ctx.float_const(np.float32(c), f"{node.name}/exponent")], node, perm=x.perm)


@CONVERTERS.register("Gelu")
def gelu(ctx: Context, node: Node) -> None:
    """GELU (Hendrycks & Gimpel 2016): exact (erf) or the tanh approximation, as TFLite's GELU."""
    approximate = node.attr("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    _unary(ctx, node, "GELU", ctx.b.options("Gelu", approximate=approximate == "tanh"))


@CONVERTERS.register("HardSwish")
def hard_swish(ctx: Context, node: Node) -> None:
    """HARD_SWISH in float. In int8, x * hard_sigmoid(x) from ADD (RELU6 fused), MUL, MUL: XNNPACK
    does not delegate int8 HARD_SWISH, and each one split MobileNetV3's int8 file into another
    partition (20 in all); the gate is on [0, 1] at 1/255."""
    x = ctx.get(node.inputs[0], None, node)
    if not ctx.int8:
        ctx.emit("HARD_SWISH", [x.index], node, perm=x.perm)
        return
    clamped, sixth = _clamped_affine(ctx, node, x, 1.0, 3.0)  # relu6(x + 3)
    gate = ctx.tensor(f"{node.name}/gate", ctx.b.shape_of(x.index), like=x.index, quant=range_quant(0.0, 1.0))
    ctx.b.op("MUL", [clamped, sixth], [gate], ctx.b.options("Mul"), 2)
    ctx.emit("MUL", [x.index, gate], node, perm=x.perm, options=ctx.b.options("Mul"), version=2)


@CONVERTERS.register("HardSigmoid")
def hard_sigmoid(ctx: Context, node: Node) -> None:
    """max(0, min(1, alpha * x + beta)) as relu6(6 alpha x + 6 beta) / 6: MUL, ADD with a fused
    RELU6, MUL. XNNPACK delegates all three (it does not take RELU_0_TO_1, which split
    MobileNetV3 into 10 partitions).

    In int8 models the intermediate scales are derived exactly from the input's scale and the
    two constants (the interval the input can represent, mapped through the affine function);
    the clamped sum is on [0, 6].
    """
    x = ctx.get(node.inputs[0], None, node)
    clamped, sixth = _clamped_affine(ctx, node, x, 6 * float(node.attr("alpha", 0.2)), 6 * float(node.attr("beta", 0.5)))
    ctx.emit("MUL", [clamped, sixth], node, perm=x.perm, options=ctx.b.options("Mul"),
             version=2 if ctx.int8 else 1)


def _clamped_affine(ctx: Context, node: Node, x: Ref, alpha: float, beta: float) -> tuple[int, int]:
    """relu6(alpha * x + beta) (MUL unless alpha is 1, ADD with RELU6 fused; int8 scales exact
    from the input's, the ADD's input widened to XNNPACK's scale limit: ``addend_quant``, with a
    requantizing QUANTIZE when alpha is 1), and the constant 1/6 in the matching type."""
    shape = ctx.b.shape_of(x.index)
    q_mul = q_add = None
    if ctx.int8:
        q = ctx.b.quant_of(x.index)
        lo, hi = sorted(((-128 - q.zero_point[0]) * q.scale[0] * alpha, (127 - q.zero_point[0]) * q.scale[0] * alpha))
        q_add = range_quant(0.0, 6.0)
        q_mul = addend_quant(lo, hi, q_add.scale[0])
    scaled = x.index
    if alpha != 1.0:
        a = const_like(ctx, node, np.asarray(alpha), x, f"{node.name}/alpha")
        scaled = ctx.tensor(f"{node.name}/scaled", shape, like=x.index, quant=q_mul)
        ctx.b.op("MUL", [x.index, a], [scaled], ctx.b.options("Mul"), 2 if ctx.int8 else 1)
    elif ctx.int8 and q_mul.scale[0] > ctx.b.quant_of(x.index).scale[0] * (1 + 1e-6):  # too fine for XNNPACK's ADD
        scaled = ctx.tensor(f"{node.name}/requantized", shape, like=x.index, quant=q_mul)
        ctx.b.op("QUANTIZE", [x.index], [scaled])
    b = const_like(ctx, node, np.asarray(beta), x, f"{node.name}/beta")
    clamped = ctx.tensor(f"{node.name}/relu6", shape, like=x.index, quant=q_add)
    ctx.b.op("ADD", [scaled, b], [clamped], ctx.b.options("Add", fusedActivationFunction=ctx.b.enum(
        "ActivationFunctionType", "RELU6")), 2 if ctx.int8 else 1)
    return clamped, const_like(ctx, node, np.asarray(1 / 6), x, f"{node.name}/one_sixth")


@CONVERTERS.register("Softmax")
def softmax(ctx: Context, node: Node) -> None:
    shape = ctx.shape(node.inputs[0], node)
    rank = len(shape)
    axis = int(node.attr("axis", -1 if ctx.g.opset >= 13 else 1)) % rank
    fixed = SIGMOID_QUANT if ctx.int8 else None
    options = ctx.b.options("Softmax", beta=1.0)
    x = ctx.get(node.inputs[0], None, node)
    if ctx.g.opset < 13 and axis != rank - 1:  # old Softmax: over all axes from `axis` on, flattened
        flat = ctx.get(node.inputs[0], identity(rank), node)
        rows = [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]
        two_d = ctx.tensor(f"{node.name}/2d", rows, like=flat.index)
        ctx.b.op("RESHAPE", *ctx.reshape_args(flat.index, rows, two_d, None))
        out = ctx.tensor(f"{node.name}/softmax2d", rows, like=flat.index, quant=fixed)
        ctx.b.op("SOFTMAX", [two_d], [out], options, 2 if ctx.int8 else 1)
        inputs, _, reshape_options = ctx.reshape_args(out, shape, -1, node.outputs[0])
        ctx.emit("RESHAPE", inputs, node, perm=identity(rank), options=reshape_options,
                 inherit=fixed, fixed_quant=fixed)
        return
    if x.perm.index(axis) != rank - 1:  # TFLite's SOFTMAX works on the last axis only
        perm = tuple(a for a in range(rank) if a != axis) + (axis,)
        x = ctx.get(node.inputs[0], perm, node)
    ctx.emit("SOFTMAX", [x.index], node, perm=x.perm, options=options, fixed_quant=fixed,
             version=2 if ctx.int8 else 1)


@CONVERTERS.register("BatchNormalization")
def batch_norm(ctx: Context, node: Node) -> None:
    """Inference BatchNormalization not folded into a convolution: x * a + b per channel."""
    if len([o for o in node.outputs if o]) > 1 or node.attr("training_mode", 0):
        raise ctx.fail(node, "training-mode BatchNormalization cannot be exported; export in eval mode")
    gamma, beta, mean, var = (ctx.const_value(n, node, "a BatchNormalization parameter").astype(np.float64)
                              for n in node.inputs[1:5])
    a = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
    b = beta - mean * a
    x = ctx.get(node.inputs[0], None, node)
    rank = len(x.perm)
    per_channel = lambda v: v.reshape((1, -1) + (1,) * (rank - 2))
    q_mul = None
    if ctx.int8:
        q = ctx.b.quant_of(x.index)
        ends = np.outer([(-128 - q.zero_point[0]) * q.scale[0], (127 - q.zero_point[0]) * q.scale[0]], a)
        q_mul = range_quant(float(ends.min()), float(ends.max()))
    scale = const_like(ctx, node, per_channel(a), x, f"{node.name}/scale")
    scaled = ctx.tensor(f"{node.name}/scaled", ctx.b.shape_of(x.index), like=x.index, quant=q_mul)
    ctx.b.op("MUL", [x.index, scale], [scaled], ctx.b.options("Mul"), 2 if ctx.int8 else 1)
    shift = const_like(ctx, node, per_channel(b), x, f"{node.name}/shift")
    ctx.emit("ADD", [scaled, shift], node, perm=x.perm,
             options=ctx.b.options("Add", fusedActivationFunction=ctx.activation(node)),
             version=2 if ctx.int8 else 1)


@CONVERTERS.register("LRN")
def local_response_norm(ctx: Context, node: Node) -> None:
    """ONNX LRN (Krizhevsky et al. 2012): x / (bias + alpha / size * sum of x^2 over ``size``
    channels)^beta -> LOCAL_RESPONSE_NORMALIZATION (radius (size-1)/2, alpha/size), float only."""
    size = int(node.attr("size"))
    if size % 2 == 0:
        raise ctx.fail(node, f"LRN with an even size ({size}) has an asymmetric window TFLite cannot express")
    if ctx.int8:
        raise ctx.no_int8(node, "TFLite's LOCAL_RESPONSE_NORMALIZATION runs in float only")
    if len(ctx.shape(node.inputs[0], node)) != 4:
        raise ctx.fail(node, "LRN is supported on N x C x H x W tensors only")
    x = ctx.get(node.inputs[0], NHWC, node)
    options = ctx.b.options("LocalResponseNormalization", radius=(size - 1) // 2,
                            bias=float(node.attr("bias", 1.0)),
                            alpha=float(node.attr("alpha", 1e-4)) / size, beta=float(node.attr("beta", 0.75)))
    ctx.emit("LOCAL_RESPONSE_NORMALIZATION", [x.index], node, perm=NHWC, options=options)


@CONVERTERS.register("LayerNormalization")
def layer_norm(ctx: Context, node: Node) -> None:
    """LayerNormalization (Ba et al. 2016) over the axes from ``axis`` on, in float: TFLite has no
    layer-norm builtin, so mean = MEAN(x), d = x - mean, y = d * RSQRT(MEAN(d * d) + eps) * scale
    + bias, with the reduced axes mapped through the stored layout (no transposes)."""
    if ctx.int8:
        raise ctx.no_int8(node, "int8 LayerNormalization has no TFLite kernel (it would need a scale for every "
                                "step of the decomposition)")
    if len([o for o in node.outputs if o]) > 1:
        raise ctx.fail(node, "the Mean / InvStdDev outputs (training) are not supported")
    shape = ctx.shape(node.inputs[0], node)
    rank = len(shape)
    axis = int(node.attr("axis", -1)) % rank
    x = ctx.get(node.inputs[0], None, node)
    axes = ctx.int_const([x.perm.index(a) for a in range(axis, rank)])
    phys = ctx.b.shape_of(x.index)
    reduced = [1 if x.perm[i] >= axis else d for i, d in enumerate(phys)]
    mean_options = ctx.b.options("Reducer", keepDims=True)

    def step(op: str, inputs: list[int], name: str, dims, options=None) -> int:
        out = ctx.tensor(f"{node.name}/{name}", dims, like=x.index)
        ctx.b.op(op, inputs, [out], options)
        return out

    mean = step("MEAN", [x.index, axes], "mean", reduced, mean_options)
    centred = step("SUB", [x.index, mean], "centred", phys, ctx.b.options("Sub"))
    square = step("MUL", [centred, centred], "square", phys, ctx.b.options("Mul"))
    variance = step("MEAN", [square, axes], "variance", reduced, mean_options)
    eps = const_like(ctx, node, np.asarray(float(node.attr("epsilon", 1e-5))), x, f"{node.name}/epsilon")
    shifted = step("ADD", [variance, eps], "variance_eps", reduced, ctx.b.options("Add"))
    rstd = step("RSQRT", [shifted], "rstd", reduced)
    normed = step("MUL", [centred, rstd], "normalized", phys, ctx.b.options("Mul"))
    gamma = const_like(ctx, node, ctx.const_value(node.inputs[1], node, "the scale"), x, f"{node.name}/scale")
    if not (len(node.inputs) > 2 and node.inputs[2]):  # no bias
        ctx.emit("MUL", [normed, gamma], node, perm=x.perm, options=ctx.b.options("Mul"))
        return
    scaled = step("MUL", [normed, gamma], "scaled", phys, ctx.b.options("Mul"))
    beta = const_like(ctx, node, ctx.const_value(node.inputs[2], node, "the bias"), x, f"{node.name}/bias")
    ctx.emit("ADD", [scaled, beta], node, perm=x.perm, options=ctx.b.options("Add"))

