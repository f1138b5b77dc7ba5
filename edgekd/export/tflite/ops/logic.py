"""Types and masks: Cast, comparisons (Equal, Less, Greater, ...), And/Or/Xor/Not, Where.

Transformers build their attention masks from an integer input: ``attention_mask`` (int64) is
cast to bool, combined with And, broadcast, and turned into an additive float mask by Where
(0 where attended, the lowest float elsewhere). Each step is one TFLite builtin here: CAST,
EQUAL/LESS/..., LOGICAL_AND/OR/NOT, SELECT_V2, all broadcasting like ONNX.

In int8 models comparisons read int8 operands (TFLite rescales both to a common scale); SELECT_V2
writes the tensor's own scale, so both branches are moved onto it first. A float tensor made from
a boolean (``mask.float()``) that the ONNX model does not quantize gets the exact scale of [0, 1].
"""

from __future__ import annotations

import numpy as np
import onnx

from edgekd.export.tflite.context import CONVERTERS, Context, Ref, identity, laid_out, range_quant
from edgekd.export.tflite.graph import Node

_COMPARISONS = {"Equal": "EQUAL", "Less": "LESS", "LessOrEqual": "LESS_EQUAL", "Greater": "GREATER",
                "GreaterOrEqual": "GREATER_EQUAL"}
_LOGICAL = {"And": "LOGICAL_AND", "Or": "LOGICAL_OR", "Xor": "NOT_EQUAL"}  # Xor of bools: !=


def _aligned(ctx: Context, node: Node, names: list[str]) -> tuple[dict[str, Ref], tuple[int, ...]]:
    """The activation operands in one layout: the first one's when all have its rank, else ONNX order."""
    acts = [n for n in names if not ctx.is_const(n)]
    if not acts:
        raise ctx.fail(node, "every operand is constant (should have been folded)")
    ranks = {len(ctx.shape(n, node)) for n in acts}
    first = ctx.get(acts[0], None if len(ranks) == 1 else identity(len(ctx.shape(acts[0], node))), node)
    refs = {n: ctx.get(n, first.perm if len(ranks) == 1 else identity(len(ctx.shape(n, node))), node)
            for n in acts}
    lead = max(acts, key=lambda n: len(ctx.shape(n, node)))
    return refs, refs[lead].perm


def _constant(ctx: Context, node: Node, name: str, perm: tuple[int, ...], dtype, quant=None) -> int:
    """Constant operand ``name`` in ``perm``'s layout, as ``dtype`` (int8 codes with ``quant``)."""
    value = laid_out(ctx.g.constants[name], perm)
    data = quant.quantize(value) if quant is not None else value.astype(dtype)
    return ctx.b.tensor(f"{node.name}/{name}", value.shape, data.dtype, data=data, quant=quant)


def _operands(ctx: Context, node: Node, names: list[str]) -> tuple[list[int], tuple[int, ...]]:
    """Activations in one layout; constants in the type (and int8 scale) of the first activation."""
    refs, perm = _aligned(ctx, node, names)
    like = next(iter(refs.values())).index
    return [refs[n].index if n in refs else
            _constant(ctx, node, n, perm, ctx.b.dtype_of(like), ctx.b.quant_of(like)) for n in names], perm


@CONVERTERS.register("Equal")
@CONVERTERS.register("Less")
@CONVERTERS.register("LessOrEqual")
@CONVERTERS.register("Greater")
@CONVERTERS.register("GreaterOrEqual")
def compare(ctx: Context, node: Node) -> None:
    inputs, perm = _operands(ctx, node, node.inputs[:2])
    consts = [i for i, n in enumerate(node.inputs[:2]) if ctx.is_const(n)]
    quant = ctx.b.quant_of(inputs[1 - consts[0]]) if len(consts) == 1 else None
    if quant is not None and node.op != "Equal":  # an int8 activation against a constant
        inputs[consts[0]] = _threshold(ctx, node, consts[0], perm, quant)
    ctx.emit(_COMPARISONS[node.op], inputs, node, perm=perm, version=2 if ctx.int8 else 1)


# x OP c on codes q: the constant's code rounded so that the integer comparison decides as the
# real one does (q > t iff q > floor(t); q >= t iff q >= ceil(t); ...), not to the nearest code
_ROUNDING = {("Greater", 1): np.floor, ("LessOrEqual", 1): np.floor, ("GreaterOrEqual", 1): np.ceil,
             ("Less", 1): np.ceil, ("Greater", 0): np.ceil, ("LessOrEqual", 0): np.ceil,
             ("GreaterOrEqual", 0): np.floor, ("Less", 0): np.floor}


def _threshold(ctx: Context, node: Node, position: int, perm: tuple[int, ...], quant) -> int:
    """The constant operand at ``position`` as int8 codes on ``quant``'s grid, rounded toward
    the side that keeps the comparison exact (a value between two codes is never one of them)."""
    value = laid_out(np.asarray(ctx.g.constants[node.inputs[position]], np.float64), perm)
    codes = _ROUNDING[(node.op, position)](value / quant.scale[0] + quant.zero_point[0])
    data = np.ascontiguousarray(np.clip(codes, -128, 127).astype(np.int8))
    return ctx.b.tensor(f"{node.name}/{node.inputs[position]}/threshold", data.shape, np.int8, data=data, quant=quant)


@CONVERTERS.register("And")
@CONVERTERS.register("Or")
@CONVERTERS.register("Xor")
def logical(ctx: Context, node: Node) -> None:
    inputs, perm = _operands(ctx, node, node.inputs[:2])
    ctx.emit(_LOGICAL[node.op], inputs, node, perm=perm)


@CONVERTERS.register("Not")
def logical_not(ctx: Context, node: Node) -> None:
    x = ctx.get(node.inputs[0], None, node)
    ctx.emit("LOGICAL_NOT", [x.index], node, perm=x.perm)


@CONVERTERS.register("Where")
def where(ctx: Context, node: Node) -> None:
    """Where(condition, x, y) as SELECT_V2 (broadcasting); int8 branches take the output's scale."""
    cond, x, y = node.inputs[:3]
    refs, perm = _aligned(ctx, node, [cond, x, y])
    out = node.outputs[0]
    quant = ctx.quant_of(out, node)  # None unless an int8 model's float tensor
    dtype = np.int8 if quant is not None else ctx.dtype(out)
    inputs = [refs[cond].index if cond in refs else _constant(ctx, node, cond, perm, np.bool_)]
    for i, n in enumerate((x, y)):
        if n not in refs:
            inputs.append(_constant(ctx, node, n, perm, dtype, quant))
        elif quant is not None:
            inputs.append(ctx.requantize(refs[n].index, quant, f"{node.name}/branch{i}_requantized"))
        else:
            inputs.append(refs[n].index)
    ctx.emit("SELECT_V2", inputs, node, perm=perm, fixed_quant=quant)


@CONVERTERS.register("Cast")
def cast(ctx: Context, node: Node) -> None:
    """A Cast that keeps the type (``x.float()`` on float32) is no op; others are one CAST between
    float32, int32, int64 and bool. In int8 models a float result is quantized: with the ONNX
    model's scale, or the exact one of [0, 1] when it comes from a bool."""
    source = ctx.dtype(node.inputs[0])
    target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attr("to"))))
    x = ctx.get(node.inputs[0], None, node)
    out = node.outputs[0]
    if source == target or (np.issubdtype(source, np.floating) and np.issubdtype(target, np.floating)):
        if target != np.float32 and np.issubdtype(target, np.floating):
            raise ctx.fail(node, f"a cast to {target} is not supported (float32, int32, int64, bool)")
        ctx.bind(out, x.index, x.perm, x.feature_perm)
        return
    if not np.issubdtype(target, np.floating):
        index = x.index
        if ctx.b.quant_of(index) is not None:  # int8 -> real values first
            index = ctx.tensor(f"{out}/dequantized", ctx.b.shape_of(index), dtype=np.float32, quant=None)
            ctx.b.op("DEQUANTIZE", [x.index], [index])
        ctx.emit("CAST", [index], node, perm=x.perm)
        return
    if target != np.float32:
        raise ctx.fail(node, f"a cast to {target} is not supported (float32, int32, int64, bool)")
    shape = ctx.b.shape_of(x.index)
    if not ctx.int8:
        ctx.emit("CAST", [x.index], node, perm=x.perm)
        return
    quant = ctx.file_quant(out)
    if quant is None and source == np.bool_:
        quant = range_quant(0.0, 1.0)
    if quant is None:
        raise ctx.fail(node, f"the cast of {source} tensor {node.inputs[0]!r} to float has no scale: "
                             f"quantize its output in the ONNX model")
    real = ctx.tensor(f"{out}/float", shape, dtype=np.float32, quant=None)
    ctx.b.op("CAST", [x.index], [real])
    index = ctx.tensor(out, shape, dtype=np.int8, quant=quant)
    ctx.b.op("QUANTIZE", [real], [index])
    ctx.bind(out, index, x.perm)
