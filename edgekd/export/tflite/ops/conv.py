"""Conv (regular, depthwise, grouped), ConvTranspose -> CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV.

Filters are laid out as TFLite wants: CONV_2D ``[O, kh, kw, I]``, DEPTHWISE_CONV_2D
``[1, kh, kw, C*m]``, TRANSPOSE_CONV ``[O, kh, kw, I]``. In int8 models the filter keeps the
integers of the ONNX file, per output channel and symmetric (TFLite quantization spec:
quantized_dimension 0 for CONV_2D/TRANSPOSE_CONV, 3 for DEPTHWISE_CONV_2D), and the bias is int32
with scale input_scale * filter_scale[c] and zero point 0. A grouped convolution that is not
depthwise is one CONV_2D (version 6) whose filters hold Cin / groups input channels: TFLite and
XNNPACK run groups natively (splitting it into one CONV_2D per group cut regnetx_002 into 25
XNNPACK partitions).
"""

from __future__ import annotations

import numpy as np

from edgekd.export.tflite.builder import Quant
from edgekd.export.tflite.context import CONVERTERS, NHWC, Context
from edgekd.export.tflite.graph import Node
from edgekd.export.tflite.ops.spatial import pad_nhwc, tflite_padding, window


def filter_tensor(ctx: Context, node: Node, name: str, axes: tuple[int, ...], channel_axis: int,
                  select: slice = slice(None), scale_by: float = 1.0) -> tuple[int, np.ndarray | None]:
    """The filter constant ``name`` transposed by ``axes`` (its dim 0 = output channels before).

    Returns the tensor index and, in int8 models, the per-output-channel scales.
    """
    if not ctx.int8:
        w = ctx.const_value(name, node, "the weight")[select] * scale_by
        data = np.ascontiguousarray(w.transpose(axes))
        return ctx.float_const(data, f"{node.name}/filter"), None
    qc = ctx.g.qconst.get(name)
    if qc is None:
        raise ctx.fail(node, f"weight {name!r} is float in a quantized model; the ONNX file must "
                             f"quantize it (DequantizeLinear of int8 weights) for a full-integer TFLite; a "
                             f"mixed-precision layer left in float cannot go to TFLite: give it int8 "
                             f"(qat.layers, or qat.mixed_precision.higher: int8)")
    if any(qc.quant.zero_point):
        raise ctx.fail(node, "weights are quantized asymmetrically (zero point != 0); TFLite int8 "
                             "kernels need symmetric weights")
    if qc.values.dtype != np.int8:
        raise ctx.fail(node, f"weights are {qc.values.dtype}; TFLite int8 kernels need int8 weights")
    out_channels = qc.values.shape[0]
    if qc.quant.per_channel and qc.quant.axis != 0:
        raise ctx.fail(node, f"weights are quantized along axis {qc.quant.axis}; TFLite needs "
                             f"per-output-channel scales (axis 0)")
    scales = np.broadcast_to(np.asarray(qc.quant.scale, np.float64), (out_channels,))[select] * scale_by
    data = np.ascontiguousarray(qc.values[select].transpose(axes))
    quant = Quant.of(scales, np.zeros(len(scales), np.int64), channel_axis)
    return ctx.b.tensor(f"{node.name}/filter", data.shape, np.int8, data=data, quant=quant,
                        bits=qc.bits), scales


MAX_REQUANTIZATION = 256.0  # XNNPACK's limit on input scale x weight scale / output scale


def _check_requantization(ctx: Context, node: Node, accumulator_scale: float) -> None:
    """Refuse an output scale so small that int8 kernels cannot requantize to it: XNNPACK
    rejects a ratio >= 256, and LiteRT 2.x then aborts the process (a double free while it falls
    back), so the file must never be written. It comes from an output range calibration saw as
    (almost) constant: a dead layer."""
    out = ctx.quant_of(node.outputs[0], node)
    ratio = accumulator_scale / out.scale[0]
    if ratio >= MAX_REQUANTIZATION:
        raise ctx.fail(node, f"int8 output scale {out.scale[0]:.3g} is too small for its inputs: input scale x "
                             f"weight scale / output scale = {ratio:.0f}, and int8 kernels (XNNPACK) take less "
                             f"than {MAX_REQUANTIZATION:.0f}. Calibration saw an almost constant output (a dead "
                             f"layer): calibrate on data that activates it, or keep the layer float")


def bias_tensor(ctx: Context, node: Node, name: str | None, channels: int, in_quant: Quant | None,
                w_scales: np.ndarray | None, select: slice = slice(None), scale_by: float = 1.0) -> int:
    """float32 bias, or int32 with scale in_scale * w_scale[c] (zeros when the node has none)."""
    bias = (ctx.const_value(name, node, "the bias")[select] * scale_by if name
            else np.zeros(channels, np.float32))
    if not ctx.int8:
        return ctx.float_const(bias.astype(np.float32), f"{node.name}/bias")
    scales = in_quant.scale[0] * w_scales
    _check_requantization(ctx, node, float(np.max(scales)))
    qc = ctx.g.qconst.get(name) if name else None
    if qc is not None and qc.values.dtype == np.int32 and np.allclose(
            np.broadcast_to(qc.quant.scale, (len(qc.values),))[select] * scale_by, scales, rtol=1e-5):
        values = qc.values[select]  # the file's int32 bias already has the spec's scale
    else:
        values = np.clip(np.rint(bias / scales), -2**31, 2**31 - 1).astype(np.int32)
    quant = Quant.of(scales, np.zeros(len(scales), np.int64), 0)
    return ctx.b.tensor(f"{node.name}/bias", values.shape, np.int32, data=values, quant=quant)


def constant_depthwise(ctx: Context, node: Node, weights: np.ndarray, bias: np.ndarray, in_scale: float,
                       strides=(1, 1), activation: str = "NONE") -> tuple[list[int], object, np.ndarray]:
    """An int8 DEPTHWISE_CONV_2D the writer makes up (a mean, a per-channel affine): float
    ``weights`` (kh, kw, C) quantized per channel at max|w| / 127 (one value per channel is
    exact), ``bias`` (C,) in int32 at input scale x weight scale. Returns [filter, bias], the
    options (VALID padding) and the weight scales."""
    kh, kw, channels = weights.shape
    peak = np.abs(weights.astype(np.float64)).reshape(-1, channels).max(0)
    w_scales = np.where(peak > 0, peak / 127, 1.0)
    zeros = np.zeros(channels, np.int64)
    codes = np.rint(weights / w_scales).astype(np.int8).reshape(1, kh, kw, channels)
    w = ctx.b.tensor(f"{node.name}/filter", codes.shape, np.int8, data=codes, quant=Quant.of(w_scales, zeros, 3))
    b_scales = in_scale * w_scales
    b_codes = np.clip(np.rint(np.asarray(bias, np.float64) / b_scales), -2**31, 2**31 - 1).astype(np.int32)
    b = ctx.b.tensor(f"{node.name}/bias", [channels], np.int32, data=b_codes, quant=Quant.of(b_scales, zeros, 0))
    options = ctx.b.options("DepthwiseConv2D", padding=ctx.b.enum("Padding", "VALID"), strideH=strides[0],
                            strideW=strides[1], depthMultiplier=1, dilationHFactor=1, dilationWFactor=1,
                            fusedActivationFunction=ctx.b.enum("ActivationFunctionType", activation))
    return [w, b], options, w_scales


def _operands(ctx: Context, node: Node) -> tuple[str, str, str | None, tuple[int, ...]]:
    """(input, weight, bias or None, input shape) of a 2-D Conv/ConvTranspose."""
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    x_shape = ctx.shape(x_name, node)
    if len(x_shape) != 4:
        raise ctx.fail(node, f"{len(x_shape) - 2}-D {node.op} is not supported (2-D, and 1-D lifted to 2-D)")
    return x_name, w_name, b_name, x_shape


@CONVERTERS.register("Conv")
def conv(ctx: Context, node: Node) -> None:
    x_name, w_name, b_name, x_shape = _operands(ctx, node)
    out_ch, in_per_group, kh, kw = ctx.shape(w_name, node)
    channels, group = x_shape[1], int(node.attr("group", 1))
    win = window(ctx, node, list(x_shape[2:]), [kh, kw])
    padding, explicit = tflite_padding(win, list(x_shape[2:]))
    x = ctx.get(x_name, NHWC, node)
    in_quant = ctx.b.quant_of(x.index)
    if explicit:
        x = pad_nhwc(ctx, x, explicit, node.name)
    common = {"padding": ctx.b.enum("Padding", padding), "strideH": win.strides[0],
              "strideW": win.strides[1], "dilationHFactor": win.dilations[0],
              "dilationWFactor": win.dilations[1], "fusedActivationFunction": ctx.activation(node)}
    depthwise = group > 1 and group == channels and in_per_group == 1
    if not depthwise:  # grouped filters (Cout, kH, kW, Cin / groups): CONV_2D takes them natively
        w, scales = filter_tensor(ctx, node, w_name, (0, 2, 3, 1), 0)
        b = bias_tensor(ctx, node, b_name, out_ch, in_quant, scales)
        version = 6 if group > 1 else 3 if ctx.int8 else 1  # CONV_2D v6: grouped convolution
        ctx.emit("CONV_2D", [x.index, w, b], node, perm=NHWC, options=ctx.b.options("Conv2D", **common),
                 version=version)
    else:
        w, scales = filter_tensor(ctx, node, w_name, (1, 2, 3, 0), 3)
        b = bias_tensor(ctx, node, b_name, out_ch, in_quant, scales)
        ctx.emit("DEPTHWISE_CONV_2D", [x.index, w, b], node, perm=NHWC,
                 options=ctx.b.options("DepthwiseConv2D", depthMultiplier=out_ch // channels, **common),
                 version=3 if ctx.int8 else 1)


@CONVERTERS.register("ConvTranspose")
def conv_transpose(ctx: Context, node: Node) -> None:
    x_name, w_name, b_name, x_shape = _operands(ctx, node)
    _, out_per_group, kh, kw = ctx.shape(w_name, node)
    if int(node.attr("group", 1)) != 1:
        raise ctx.fail(node, "grouped ConvTranspose is not supported by TFLite's TRANSPOSE_CONV")
    if list(node.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.fail(node, "dilated ConvTranspose is not supported by TFLite's TRANSPOSE_CONV")
    strides = list(node.attr("strides", [1, 1]))
    pads = list(node.attr("pads", [0, 0, 0, 0]))
    out_shape = ctx.shape(node.outputs[0], node)  # N, O, H, W
    auto_pad = node.attr("auto_pad", "NOTSET")
    if node.attr("output_shape") is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # the ONNX spec's pads for a requested output size (output_shape, or SAME: in * stride)
        out_pad = list(node.attr("output_padding", [0, 0]))
        total = [strides[i] * (x_shape[2 + i] - 1) + out_pad[i] + (kh, kw)[i] - out_shape[2 + i]
                 for i in range(2)]
        if any(t < 0 for t in total):
            raise ctx.fail(node, f"output size {out_shape[2:]} is larger than the transposed "
                                 f"convolution produces")
        upper = auto_pad == "SAME_UPPER"
        pads = [t // 2 if upper else t - t // 2 for t in total] + [t - t // 2 if upper else t // 2 for t in total]
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    # full (VALID) result, then crop the ONNX pads off; output_padding rows come out as bias only
    full = [(x_shape[2 + i] - 1) * strides[i] + (kh, kw)[i] for i in range(2)]
    full = [max(full[i], out_shape[2 + i] + pads[i]) for i in range(2)]
    x = ctx.get(x_name, NHWC, node)
    in_quant = ctx.b.quant_of(x.index)
    if ctx.int8:
        qc = ctx.g.qconst.get(w_name)
        if qc is not None and qc.quant.per_channel and qc.quant.axis != 1:
            raise ctx.fail(node, "ConvTranspose weights must be quantized per output channel (axis 1)")
    w, scales = _transpose_filter(ctx, node, w_name)
    b = bias_tensor(ctx, node, b_name, out_per_group, in_quant, scales)
    options = ctx.b.options("TransposeConv", padding=ctx.b.enum("Padding", "VALID"), strideH=strides[0],
                            strideW=strides[1], fusedActivationFunction=ctx.activation(node))
    sizes = ctx.int_const([out_shape[0], full[0], full[1], out_shape[1]])
    crop = full != [out_shape[2] + pads[0], out_shape[3] + pads[1]] or any(pads)
    if not crop:
        ctx.emit("TRANSPOSE_CONV", [sizes, w, x.index, b], node, perm=NHWC, options=options,
                 version=3 if ctx.int8 else 4)
        return
    quant = ctx.quant_of(node.outputs[0], node)
    tmp = ctx.tensor(f"{node.name}/uncropped", [out_shape[0], full[0], full[1], out_shape[1]], quant=quant)
    ctx.b.op("TRANSPOSE_CONV", [sizes, w, x.index, b], [tmp], options, 3 if ctx.int8 else 4)
    begin = [0, pads[0], pads[1], 0]
    end = [out_shape[0], pads[0] + out_shape[2], pads[1] + out_shape[3], out_shape[1]]
    ctx.emit("STRIDED_SLICE", [tmp, ctx.int_const(begin), ctx.int_const(end), ctx.int_const([1] * 4)],
             node, perm=NHWC, options=ctx.b.options("StridedSlice"))


def _transpose_filter(ctx: Context, node: Node, name: str) -> tuple[int, np.ndarray | None]:
    """ONNX ConvTranspose weight [I, O, kh, kw] -> TFLite [O, kh, kw, I], per-channel on O."""
    if not ctx.int8:
        w = ctx.const_value(name, node, "the weight")
        return ctx.float_const(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), f"{node.name}/filter"), None
    qc = ctx.g.qconst.get(name)
    if qc is None or any(qc.quant.zero_point) or qc.values.dtype != np.int8:
        raise ctx.fail(node, "ConvTranspose weights must be int8, symmetric, from a DequantizeLinear")
    out_ch = qc.values.shape[1]
    scales = np.broadcast_to(np.asarray(qc.quant.scale, np.float64), (out_ch,)).copy()
    data = np.ascontiguousarray(qc.values.transpose(1, 2, 3, 0))
    quant = Quant.of(scales, np.zeros(out_ch, np.int64), 0)
    return ctx.b.tensor(f"{node.name}/filter", data.shape, np.int8, data=data, quant=quant), scales
