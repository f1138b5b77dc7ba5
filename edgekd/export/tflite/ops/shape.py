"""Data movement: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Gather, Pad, Slice,
Resize, Expand (to a constant shape).

These ops keep the input's scale in int8 models (Concat requantizes inputs whose scale differs
from the output's, as the TFLite spec requires). Layout is where care is needed:

- a reshape reads memory in order, so it needs its input in ONNX order, unless the stored
  layout only moves size-1 axes (e.g. N x C x 1 x 1 after global pooling), or it flattens
  convolution features straight into a fully connected layer, whose weight columns are then
  permuted to NHWC order instead (no transpose);
- Transpose never emits an op: the output is recorded with the layout that makes the stored
  bytes already right;
- axis attributes are mapped through the stored layout.
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.context import (
    CONVERTERS,
    NHWC,
    Context,
    identity,
    permuted,
    same_order,
)
from edgekd.export.tflite.graph import Node

_FC_CONSUMERS = {"Gemm", "MatMul"}


def _reshape_to(ctx: Context, node: Node, out_shape: tuple[int, ...]) -> None:
    name = node.inputs[0]
    shape = ctx.shape(name, node)
    x = ctx.get(name, None, node)
    feature_perm = None
    out_perm = carried_perm(shape, x.perm, out_shape)
    if out_perm is None:
        if not same_order(shape, x.perm):
            if _flatten_into_fc(ctx, node, shape, out_shape):
                feature_perm = np.arange(int(np.prod(shape[1:]))).reshape(shape[1:]).transpose(
                    [a - 1 for a in x.perm[1:]]).ravel()
            else:
                x = ctx.get(name, identity(len(shape)), node)
        out_perm = NHWC if len(out_shape) == 4 and same_order(out_shape, NHWC) else identity(len(out_shape))
    phys = permuted(out_shape, out_perm)
    inputs, _, options = ctx.reshape_args(x.index, phys, -1, node.outputs[0] if out_perm[:1] == (0,) else None)
    inherit = ctx.b.quant_of(x.index)
    ctx.emit("RESHAPE", inputs, node, perm=out_perm, options=options, inherit=inherit, fixed_quant=inherit,
             feature_perm=feature_perm)


def carried_perm(shape, perm, out_shape) -> tuple[int, ...] | None:
    """A layout for ``out_shape`` whose bytes are those of ``shape`` stored in ``perm``, when the
    reshape only adds or removes size-1 axes (Squeeze/Unsqueeze, N x C x 1 x 1 <-> N x C, the
    1-D convolutions lifted to 2-D); None otherwise."""
    big_in = [a for a in range(len(shape)) if shape[a] != 1]
    big_out = [a for a in range(len(out_shape)) if out_shape[a] != 1]
    if [shape[a] for a in big_in] != [out_shape[a] for a in big_out]:
        return None
    to_out = dict(zip(big_in, big_out))
    stored = [to_out[a] for a in perm if shape[a] != 1]  # out axes in the order the bytes hold them
    rank = len(out_shape)
    candidates = ([NHWC] if rank == 4 else []) + [identity(rank),
                                                  tuple(stored + [a for a in range(rank) if a not in stored])]
    for cand in candidates:
        if [a for a in cand if out_shape[a] != 1] == stored:
            return tuple(cand)
    return None


def _flatten_into_fc(ctx: Context, node: Node, shape, out_shape) -> bool:
    """True when ``node`` flattens [N, ...] to [N, F] and only constant-weight FCs read it."""
    if len(out_shape) != 2 or out_shape[0] != shape[0] or ctx.refs[node.inputs[0]].perm[0] != 0:
        return False
    consumers = ctx.g.consumers(node.outputs[0])
    return bool(consumers) and node.outputs[0] not in ctx.g.outputs and all(
        c.op in _FC_CONSUMERS and c.inputs[0] == node.outputs[0] and ctx.is_const(c.inputs[1])
        and not c.attr("transA", 0) for c in consumers)


@CONVERTERS.register("Reshape")
@CONVERTERS.register("Flatten")
@CONVERTERS.register("Squeeze")
@CONVERTERS.register("Unsqueeze")
def reshape(ctx: Context, node: Node) -> None:
    _reshape_to(ctx, node, ctx.shape(node.outputs[0], node))


@CONVERTERS.register("Transpose")
def transpose(ctx: Context, node: Node) -> None:
    x = ctx.get(node.inputs[0], None, node)
    rank = len(x.perm)
    t = list(node.attr("perm", list(reversed(range(rank)))))
    # out_logical axis i is in_logical axis t[i]; store it so the physical bytes do not move
    out_perm = tuple(t.index(p) for p in x.perm)
    index = x.index
    if ctx.int8:  # a different output scale (rare) still needs its QUANTIZE
        index = ctx.requantize(index, ctx.quant_of(node.outputs[0], node, inherit=ctx.b.quant_of(index)),
                               node.outputs[0])
    ctx.bind(node.outputs[0], index, out_perm)


@CONVERTERS.register("QuantizeLinear")
def requantize(ctx: Context, node: Node) -> None:
    """A QuantizeLinear -> DequantizeLinear pair over an already-quantized tensor, with another
    scale: an int8 -> int8 QUANTIZE (QDQ pairs that only annotate a tensor never get here)."""
    x = ctx.get(node.inputs[0], None, node)
    index = ctx.requantize(x.index, ctx.quant_of(node.outputs[0], node), node.outputs[0])
    ctx.bind(node.outputs[0], index, x.perm, x.feature_perm)


@CONVERTERS.register("Identity")
@CONVERTERS.register("Dropout")
def identity_op(ctx: Context, node: Node) -> None:
    """Only reached when the node writes a graph output (others are dropped while loading)."""
    x = ctx.get(node.inputs[0], None, node)
    ctx.bind(node.outputs[0], x.index, x.perm, x.feature_perm)


@CONVERTERS.register("Expand")
def expand(ctx: Context, node: Node) -> None:
    """Expand to a constant shape (folded from Shape, as ``F.normalize`` exports) as BROADCAST_TO
    in the input's stored layout; int8 keeps the input's scale."""
    out_shape = list(ctx.shape(node.outputs[0], node))
    x = ctx.get(node.inputs[0], None, node)
    if len(x.perm) != len(out_shape):
        x = ctx.get(node.inputs[0], identity(len(x.perm)), node)
        if len(x.perm) != len(out_shape):
            raise ctx.fail(node, f"Expand from rank {len(x.perm)} to rank {len(out_shape)} is not supported")
    phys = permuted(out_shape, x.perm)
    inherit = ctx.b.quant_of(x.index)
    ctx.emit("BROADCAST_TO", [x.index, ctx.int_const(phys)], node, perm=x.perm, inherit=inherit,
             fixed_quant=inherit, version=2)  # LiteRT registers BROADCAST_TO from version 2


@CONVERTERS.register("Concat")
def concat(ctx: Context, node: Node) -> None:
    rank = len(ctx.shape(node.outputs[0], node))
    axis = int(node.attr("axis")) % rank
    acts = [n for n in node.inputs if n and not ctx.is_const(n)]
    if not acts:
        raise ctx.fail(node, "all inputs are constant (should have been folded)")
    perm = ctx.get(acts[0], None, node).perm
    out_quant = ctx.quant_of(node.outputs[0], node, inherit=ctx.b.quant_of(ctx.refs[acts[0]].index))
    inputs = []
    for i, name in enumerate(n for n in node.inputs if n):
        if ctx.is_const(name):
            value = np.ascontiguousarray(ctx.g.constants[name].astype(np.float32).transpose(perm))
            inputs.append(ctx.operand_const(value, f"{node.name}/const{i}", out_quant))
            continue
        index = ctx.get(name, perm, node).index
        if ctx.int8:
            index = ctx.requantize(index, out_quant, f"{node.name}/input{i}_requantized")
        inputs.append(index)
    if len(inputs) == 1:  # a join of one tensor (timm DenseNet's first layer in each block) is that
        ctx.bind(node.outputs[0], inputs[0], perm)  # tensor: XNNPACK takes no one-input CONCATENATION
        return
    options = ctx.b.options("Concatenation", axis=perm.index(axis))
    while len(inputs) > MAX_DELEGATED_CONCAT:  # DenseNet joins up to 32 feature maps at once
        head, inputs = inputs[:MAX_DELEGATED_CONCAT], inputs[MAX_DELEGATED_CONCAT:]
        shape = ctx.b.shape_of(head[0])
        shape[perm.index(axis)] = sum(ctx.b.shape_of(i)[perm.index(axis)] for i in head)
        part = ctx.tensor(f"{node.outputs[0]}/part{len(inputs)}", shape, like=head[0], quant=out_quant)
        ctx.b.op("CONCATENATION", head, [part], options)
        inputs = [part, *inputs]
    ctx.emit("CONCATENATION", inputs, node, perm=perm, options=options, fixed_quant=out_quant)


MAX_DELEGATED_CONCAT = 5  # inputs XNNPACK takes in one CONCATENATION; more is split into a chain of them


@CONVERTERS.register("Pad")
def pad(ctx: Context, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0], node))
    if len(node.inputs) > 1 and node.inputs[1]:
        pads = [int(p) for p in ctx.const_value(node.inputs[1], node, "pads")]
    else:
        pads = list(node.attr("pads"))
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        axes = [int(a) % rank for a in ctx.const_value(node.inputs[3], node, "axes")]
    full = {a: (pads[i], pads[i + len(axes)]) for i, a in enumerate(axes)}
    if any(p < 0 for pair in full.values() for p in pair):
        raise ctx.fail(node, "negative pads (cropping) are not supported; use Slice")
    value = float(node.attr("value", 0.0))
    if len(node.inputs) > 2 and node.inputs[2]:
        value = float(ctx.const_value(node.inputs[2], node, "the constant value"))
    mode = node.attr("mode", "constant")
    x = ctx.get(node.inputs[0], None, node)
    paddings = ctx.int_const([list(full.get(a, (0, 0))) for a in x.perm])
    inherit = ctx.b.quant_of(x.index)
    if inherit is not None and mode == "constant" and value != 0.0:
        # pad on the output's grid, which the ONNX model chose to hold the value (EfficientViT pads
        # with 1.0, beyond its input's range: padded at the input's scale it would saturate)
        inherit = ctx.quant_of(node.outputs[0], node, inherit=inherit)
        x = ctx.bind(f"{node.outputs[0]}/input", ctx.requantize(x.index, inherit, f"{node.name}/requantized"), x.perm)
    if mode == "reflect":
        ctx.emit("MIRROR_PAD", [x.index, paddings], node, perm=x.perm, inherit=inherit, fixed_quant=inherit,
                 options=ctx.b.options("MirrorPad", mode=ctx.b.enum("MirrorPadMode", "REFLECT")))
    elif mode != "constant":
        raise ctx.fail(node, f"Pad mode {mode!r} is not supported (constant and reflect are)")
    elif value == 0.0:
        ctx.emit("PAD", [x.index, paddings], node, perm=x.perm, inherit=inherit, fixed_quant=inherit)
    else:
        fill = ctx.operand_const(np.asarray(value, np.float32), f"{node.name}/value", inherit)
        ctx.emit("PADV2", [x.index, paddings, fill], node, perm=x.perm, inherit=inherit, fixed_quant=inherit)


def split_sizes(node: Node, dim: int, opset: int, sizes_input: np.ndarray | None) -> list[int]:
    """The lengths of a Split's parts along its axis: the ``split`` input (opset 13+) or
    attribute, else equal parts (opset 18 ``num_outputs``: ceil(dim / n), the last one shorter)."""
    count = len(node.outputs)
    if sizes_input is not None:
        sizes = [int(v) for v in np.asarray(sizes_input).reshape(-1)]
    elif node.attr("split") is not None:
        sizes = [int(v) for v in node.attr("split")]
    elif opset >= 18 and node.attr("num_outputs") is not None:
        part = -(-dim // int(node.attr("num_outputs")))
        sizes = [min(part, dim - i * part) for i in range(count)]
    else:
        sizes = [dim // count] * count if dim % count == 0 else []
    if len(sizes) != count or sum(sizes) != dim or min(sizes, default=0) < 0:
        raise ValueError(f"cannot split length {dim} into {count} parts (sizes {sizes or 'unequal'})")
    return sizes


@CONVERTERS.register("Split")
def split(ctx: Context, node: Node) -> None:
    """Split (``x.split``, ``chunk``, ``unbind``'s first step) as one STRIDED_SLICE per output: the
    Slice converter's layout and int8 handling (each part keeps the input's scale, a QUANTIZE
    follows where the model requantized a part), and XNNPACK delegates it."""
    shape = ctx.shape(node.inputs[0], node)
    axis = int(node.attr("axis", 0)) % len(shape)
    sizes_input = (ctx.const_value(node.inputs[1], node, "the split sizes")
                   if len(node.inputs) > 1 and node.inputs[1] else None)
    try:
        sizes = split_sizes(node, shape[axis], ctx.g.opset, sizes_input)
    except ValueError as err:
        raise ctx.fail(node, str(err)) from None
    start = 0
    for i, (out, size) in enumerate(zip(node.outputs, sizes)):
        if out:
            names = [f"{node.name}/part{i}/{what}" for what in ("starts", "ends", "axes")]
            for name, value in zip(names, (start, start + size, axis)):
                ctx.g.constants[name] = np.asarray([value], np.int64)
            part = Node("Slice", f"{node.name}/part{i}", [node.inputs[0], *names], [out],
                        {"starts": [start], "ends": [start + size], "axes": [axis]})
            slice_(ctx, part)
        start += size


@CONVERTERS.register("Gather")
def gather(ctx: Context, node: Node) -> None:
    """Gather as GATHER in ONNX order: an embedding lookup (a constant table at run-time token
    ids), an activation at constant indices (``x[:, 0]``: a class token; a fixed channel pick) or
    at run-time ones. Int8 keeps the input's scale; a float table read by an int8 model is stored
    at the output's scale (selecting rows commutes with quantizing them: exact). Run-time indices
    must lie in [0, size): TFLite's GATHER, unlike ONNX, does not wrap negative ones."""
    data, positions = node.inputs[:2]
    shape = ctx.shape(data, node)
    rank = len(shape)
    axis = int(node.attr("axis", 0)) % rank
    if ctx.is_const(positions):
        indices = np.asarray(ctx.const_value(positions, node, "the indices")).astype(np.int64)
        if indices.size and (indices.min() < -shape[axis] or indices.max() >= shape[axis]):
            raise ctx.fail(node, f"an index is outside [-{shape[axis]}, {shape[axis] - 1}] on axis {axis}")
        indices = np.where(indices < 0, indices + shape[axis], indices)
        index_tensor = ctx.int_const(indices)
    else:
        index_tensor = ctx.get(positions, identity(len(ctx.shape(positions, node))), node).index
        indices = np.zeros(ctx.shape(positions, node))
    if ctx.is_const(data):
        table, inherit = _lookup_table(ctx, node, data)
    else:
        table = ctx.get(data, identity(rank), node).index
        inherit = ctx.b.quant_of(table)
    ctx.emit("GATHER", [table, index_tensor], node, perm=identity(rank - 1 + indices.ndim),
             options=ctx.b.options("Gather", axis=axis), inherit=inherit, fixed_quant=inherit,
             version=2 if ctx.int8 else 1)


def _lookup_table(ctx: Context, node: Node, name: str):
    """A constant table read by GATHER, and the scale its rows keep (None: not int8)."""
    value = np.ascontiguousarray(ctx.g.constants[name])
    out = node.outputs[0]
    if not ctx.int8 or not ctx.is_float(out):
        return ctx.b.tensor(f"{node.name}/table", value.shape, value.dtype, data=value), None
    quant = ctx.file_quant(out)
    if quant is None and name in ctx.g.qconst and not ctx.g.qconst[name].quant.per_channel:
        quant = ctx.g.qconst[name].quant
    if quant is None:
        raise ctx.fail(node, f"the table {name!r} is read by an int8 model but neither it nor the "
                             f"lookup's output has a per-tensor scale: quantize the output in the ONNX model")
    return ctx.b.tensor(f"{node.name}/table", value.shape, np.int8, data=quant.quantize(value), quant=quant), quant


@CONVERTERS.register("Slice")
def slice_(ctx: Context, node: Node) -> None:
    shape = ctx.shape(node.inputs[0], node)
    rank = len(shape)
    if ctx.g.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = list(node.attr("axes", range(len(starts)))), [1] * len(starts)
    else:
        values = [ctx.const_value(n, node, what) if len(node.inputs) > i and node.inputs[i] else None
                  for i, (n, what) in enumerate(zip(node.inputs + [""] * 5,
                                                    ["", "starts", "ends", "axes", "steps"])) if i]
        starts, ends = [int(v) for v in values[0]], [int(v) for v in values[1]]
        axes = [int(v) for v in values[2]] if values[2] is not None else list(range(len(starts)))
        steps = [int(v) for v in values[3]] if values[3] is not None else [1] * len(starts)
    begin, end, stride, end_mask = [0] * rank, list(shape), [1] * rank, 0
    sliced = {a % rank for a in axes}
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        dim = shape[axis]
        if step > 0:
            b = min(max(start + dim if start < 0 else start, 0), dim)
            e = min(max(stop + dim if stop < 0 else stop, 0), dim)
        else:
            b = min(max(start + dim if start < 0 else start, 0), dim - 1)
            e = min(max(stop + dim if stop < 0 else stop, -1), dim - 1)
        begin[axis], end[axis], stride[axis] = b, e, step
    x = ctx.get(node.inputs[0], None, node)
    phys = [x.perm.index(a) for a in range(rank)]  # logical axis -> stored position
    pb, pe, ps = ([values[a] for a in x.perm] for values in (begin, end, stride))
    begin_mask = 0
    for a in range(rank):
        if stride[a] < 0 and end[a] == -1:  # run to the start: TFLite needs the end mask
            end_mask |= 1 << phys[a]
            pe[phys[a]] = 0
        if a not in sliced:  # whole axis (e.g. the batch): masks keep it whole after a resize
            begin_mask |= 1 << phys[a]
            end_mask |= 1 << phys[a]
    inherit = ctx.b.quant_of(x.index)
    ctx.emit("STRIDED_SLICE", [x.index, ctx.int_const(pb), ctx.int_const(pe), ctx.int_const(ps)], node,
             perm=x.perm, options=ctx.b.options("StridedSlice", beginMask=begin_mask, endMask=end_mask),
             inherit=inherit, fixed_quant=inherit)


# ONNX (mode, coordinate_transformation_mode, nearest_mode) -> (TFLite op, align_corners, half_pixel)
_RESIZE = {
    ("linear", "half_pixel"): ("RESIZE_BILINEAR", False, True),
    ("linear", "pytorch_half_pixel"): ("RESIZE_BILINEAR", False, True),
    ("linear", "align_corners"): ("RESIZE_BILINEAR", True, False),
    ("linear", "asymmetric"): ("RESIZE_BILINEAR", False, False),
    ("nearest", "asymmetric", "floor"): ("RESIZE_NEAREST_NEIGHBOR", False, False),
    ("nearest", "align_corners", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", True, False),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", False, True),
    ("nearest", "tf_half_pixel_for_nn", "floor"): ("RESIZE_NEAREST_NEIGHBOR", False, True),
}


@CONVERTERS.register("Resize")
@CONVERTERS.register("Upsample")
def resize(ctx: Context, node: Node) -> None:
    in_shape, out_shape = ctx.shape(node.inputs[0], node), ctx.shape(node.outputs[0], node)
    if len(in_shape) != 4 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
        raise ctx.fail(node, "only 2-D spatial resizing of N x C x H x W tensors is supported")
    mode = node.attr("mode", "nearest")
    if node.op == "Upsample" or ctx.g.opset < 11:
        coord, nearest = "asymmetric", "floor"
    else:
        coord = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest = node.attr("nearest_mode", "round_prefer_floor")
    key = (mode, coord, nearest) if mode == "nearest" else (mode, coord)
    if node.attr("antialias", 0) and any(o < i for i, o in zip(in_shape[2:], out_shape[2:])):
        raise ctx.fail(node, "antialiased downscaling has no TFLite equivalent")
    if coord == "pytorch_half_pixel" and 1 in out_shape[2:]:
        raise ctx.fail(node, "pytorch_half_pixel resizing to a size of 1 has no TFLite equivalent")
    if (key not in _RESIZE and mode == "nearest" and coord in ("half_pixel", "pytorch_half_pixel")
            and nearest in ("round_prefer_floor", "round_prefer_ceil")
            and _is_integer_upscale(in_shape, out_shape)):
        key = ("nearest", "asymmetric", "floor")  # whole-number upscaling: the modes agree
    if key not in _RESIZE:
        raise ctx.fail(node, f"Resize with mode={mode}, coordinate_transformation_mode={coord}"
                             + (f", nearest_mode={nearest}" if mode == "nearest" else "")
                             + f" has no TFLite equivalent; supported: {', '.join('/'.join(k) for k in _RESIZE)}")
    op, align, half = _RESIZE[key]
    x = ctx.get(node.inputs[0], NHWC, node)
    kind = "ResizeBilinear" if op == "RESIZE_BILINEAR" else "ResizeNearestNeighbor"
    inherit = ctx.b.quant_of(x.index)
    factor = out_shape[2] // in_shape[2]
    if (op == "RESIZE_NEAREST_NEIGHBOR" and not align and not half and factor > 1
            and tuple(out_shape[2:]) == (in_shape[2] * factor, in_shape[3] * factor)):
        # k-fold nearest upscaling (YOLO's neck) as k*k copies joined along channels, then
        # DEPTH_TO_SPACE: the same values, and XNNPACK delegates both ops (not RESIZE_NEAREST_NEIGHBOR)
        phys = ctx.b.shape_of(x.index)
        tiled = ctx.tensor(f"{node.name}/tiled", phys[:3] + [phys[3] * factor * factor], like=x.index)
        ctx.b.op("CONCATENATION", [x.index] * (factor * factor), [tiled], ctx.b.options("Concatenation", axis=3))
        ctx.emit("DEPTH_TO_SPACE", [tiled], node, perm=NHWC, inherit=inherit, fixed_quant=inherit,
                 options=ctx.b.options("DepthToSpace", blockSize=factor), version=2 if ctx.int8 else 1)
        return
    ctx.emit(op, [x.index, ctx.int_const(list(out_shape[2:]))], node, perm=NHWC, inherit=inherit,
             fixed_quant=inherit, options=ctx.b.options(kind, alignCorners=align, halfPixelCenters=half))


def _is_integer_upscale(in_shape, out_shape) -> bool:
    return all(o % i == 0 and o >= i for i, o in zip(in_shape[2:], out_shape[2:]))

