"""Window geometry shared by convolution and pooling: ONNX pads -> TFLite SAME/VALID (+ PAD).

TFLite windows only know SAME (TensorFlow's rule: output ceil(in/stride), the odd pixel of
padding at the end) and VALID. ONNX pads are explicit and often symmetric (PyTorch's style),
which for stride 2 is *not* SAME; those get an explicit PAD op in front and VALID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekd.export.tflite.context import NHWC, Context, Ref
from edgekd.export.tflite.graph import Node


@dataclass
class Window:
    kernel: list[int]   # (kh, kw)
    strides: list[int]
    dilations: list[int]
    pads: list[int]     # ONNX order: h_begin, w_begin, h_end, w_end
    out: list[int]      # output (H, W) the ONNX graph computes

    def effective(self, i: int) -> int:
        return (self.kernel[i] - 1) * self.dilations[i] + 1


def window(ctx: Context, node: Node, in_hw: list[int], kernel: list[int]) -> Window:
    strides = list(node.attr("strides", [1, 1]))
    dilations = list(node.attr("dilations", [1, 1]))
    pads = list(node.attr("pads", [0, 0, 0, 0]))
    auto_pad = node.attr("auto_pad", "NOTSET")
    w = Window(list(kernel), strides, dilations, pads, [0, 0])
    for i in range(2):
        eff = w.effective(i)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = math.ceil(in_hw[i] / strides[i])
            total = max((out - 1) * strides[i] + eff - in_hw[i], 0)
            small = total // 2
            w.pads[i], w.pads[i + 2] = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        elif auto_pad == "VALID":
            w.pads[i] = w.pads[i + 2] = 0
        rounding = math.ceil if node.attr("ceil_mode", 0) else math.floor
        w.out[i] = int(rounding((in_hw[i] + w.pads[i] + w.pads[i + 2] - eff) / strides[i])) + 1
        if node.attr("ceil_mode", 0) and (w.out[i] - 1) * strides[i] >= in_hw[i] + w.pads[i]:
            w.out[i] -= 1  # the last window must start inside the input or its begin padding
    return w


def tflite_padding(w: Window, in_hw: list[int]) -> tuple[str, list[int] | None]:
    """("SAME"|"VALID", explicit pads or None): explicit pads ``[hb, wb, he, we]`` go in a PAD op.

    End padding that no window reaches is dropped first, so PyTorch's symmetric padding with
    stride 1 maps to SAME and needs no PAD op.
    """
    used = []
    for i in range(2):
        needed_end = (w.out[i] - 1) * w.strides[i] + w.effective(i) - in_hw[i] - w.pads[i]
        used.append(max(needed_end, 0))
    begin = [w.pads[0], w.pads[1]]
    if begin == [0, 0] and used == [0, 0]:
        return "VALID", None
    same = True
    for i in range(2):
        out = math.ceil(in_hw[i] / w.strides[i])
        total = max((out - 1) * w.strides[i] + w.effective(i) - in_hw[i], 0)
        if out != w.out[i] or (begin[i], used[i]) != (total // 2, total - total // 2):
            same = False
    if same:
        return "SAME", None
    return "VALID", [begin[0], begin[1], used[0], used[1]]


def pad_nhwc(ctx: Context, x: Ref, pads: list[int], name: str, value: float | None = None) -> Ref:
    """PAD (zeros) or PADV2 (``value``) of an NHWC tensor; pads = [hb, wb, he, we]."""
    shape = ctx.b.shape_of(x.index)
    paddings = np.asarray([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32)
    out_shape = [shape[0], shape[1] + pads[0] + pads[2], shape[2] + pads[1] + pads[3], shape[3]]
    out = ctx.tensor(f"{name}/pad", out_shape, like=x.index)
    if value is None:
        ctx.b.op("PAD", [x.index, ctx.int_const(paddings)], [out])
    else:
        quant = ctx.b.quant_of(x.index)
        if quant is not None:
            data = quant.quantize(np.asarray(value, np.float32).reshape(()))
            fill = ctx.b.tensor(f"{name}/pad_value", [], np.int8, data=data, quant=quant)
        else:
            fill = ctx.float_const(np.asarray(value, np.float32).reshape(()), f"{name}/pad_value")
        ctx.b.op("PADV2", [x.index, ctx.int_const(paddings), fill], [out])
    return Ref(out, NHWC)
