"""The conversion state shared by the op converters: tensors, their layout, their quantization.

**Layout.** ONNX tensors are NCHW; TFLite kernels want NHWC. Every converted tensor records a
``perm``: its physical (TFLite) shape is the logical (ONNX) shape permuted by ``perm``, e.g.
``NHWC = (0, 2, 3, 1)`` for a 4-D activation. Ops that do not care about layout (element-wise,
activations) keep their input's perm; ops that do (convolution, pooling, resize) ask for the perm
they need with ``get``, which inserts one TRANSPOSE the first time a tensor is needed in another
layout and reuses it afterwards. Axis attributes (concat, reduce, slice, pad, softmax) are mapped
through the perm. So a CNN gets one TRANSPOSE at its input and none inside.

**Quantization.** In an int8 model every activation is an int8 tensor whose (scale, zero point)
come from the ONNX QuantizeLinear that followed it. A tensor without one inherits through ops
that preserve scale (reshape-like, max-pool, pad, slice), or takes the scale of the reshape-like
consumer that quantizes it. Nothing is calibrated: if no scale can be found, conversion stops
and names the tensor.

**Float fallback.** With ``float_fallback`` an int8 model may keep ops in float where the ONNX
file does (LayerNormalization, an L2 norm, a tensor without a QuantizeLinear): such a node reads
DEQUANTIZE'd copies of its int8 inputs and its output is QUANTIZE'd where the file gives it a
scale, as TFLite's "integer with float fallback" quantization does. Without it, a full-integer
model is required and such a node fails the export, naming it.

**Types.** Tensors the ONNX model types as integers or booleans (token ids, attention masks,
the masks built from them) keep that type (INT32, INT64, BOOL) and are never quantized: only
float32 tensors become int8 in an int8 model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edgekd.errors import ExportError
from edgekd.export.tflite.builder import ModelBuilder, Quant
from edgekd.export.tflite.graph import Graph, Node
from edgekd.registry import Registry

NHWC = (0, 2, 3, 1)

CONVERTERS: Registry = Registry("ONNX operator")  # op type -> fn(ctx, node)

RESHAPE_LIKE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
SCALE_PRESERVING = RESHAPE_LIKE | {"MaxPool", "Pad", "Slice", "Identity", "Dropout", "Relu", "Clip",
                                   "Resize", "Upsample", "GlobalMaxPool"}


class NoInt8Kernel(ExportError):
    """A node TFLite has no int8 kernel for (converted in float under ``float_fallback``)."""


@dataclass
class Ref:
    """A converted ONNX tensor: its TFLite tensor index and layout."""

    index: int
    perm: tuple[int, ...]
    feature_perm: np.ndarray | None = None  # flattened NHWC features: physical k = logical fp[k]


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def permuted(shape, perm) -> list[int]:
    return [int(shape[a]) for a in perm]


def same_order(shape, perm) -> bool:
    """True when permuting by ``perm`` only moves size-1 axes (memory order is unchanged)."""
    moved = [a for a in perm if shape[a] != 1]
    return moved == sorted(moved)


class Context:
    def __init__(self, graph: Graph, builder: ModelBuilder, *, int8: bool):
        self.g, self.b, self.int8 = graph, builder, int8
        self.refs: dict[str, Ref] = {}
        self._views: dict[tuple[str, tuple], Ref] = {}
        self._consts: dict[tuple, int] = {}
        self.transposes = 0
        self.coarse: dict[str, float] = {}  # tensor -> step of a fixed scale coarser than its own
        self.island = False  # converting one node in float inside an int8 model (float fallback)
        self.float_nodes: list[str] = []  # the nodes converted so

    # -- ONNX-side facts ---------------------------------------------------------------------
    def shape(self, name: str, node: Node | None = None) -> tuple[int, ...]:
        return self.g.shape(name, node)

    def is_const(self, name: str) -> bool:
        return name in self.g.constants

    def dtype(self, name: str) -> np.dtype:
        """The ONNX element type of tensor ``name`` (float32 where the file does not say)."""
        if name in self.g.constants:
            return np.dtype(self.g.constants[name].dtype)
        return np.dtype(self.g.dtypes.get(name, np.float32))

    def is_float(self, name: str) -> bool:
        return np.issubdtype(self.dtype(name), np.floating)

    def const_value(self, name: str, node: Node, what: str) -> np.ndarray:
        if name not in self.g.constants:
            raise ExportError(f"{self.g.path}: {node.where()}: {what} ({name!r}) must be a constant "
                              f"for TFLite; it is computed at run time")
        return self.g.constants[name]

    def fail(self, node: Node, message: str) -> ExportError:
        return ExportError(f"{self.g.path}: {node.where()}: {message}")

    def no_int8(self, node: Node, message: str) -> NoInt8Kernel:
        """The error of a node without an int8 kernel; raise it before emitting anything."""
        return NoInt8Kernel(f"{self.g.path}: {node.where()}: {message}; convert with float_fallback "
                            f"to run it in float between DEQUANTIZE and QUANTIZE")

    # -- float fallback ------------------------------------------------------------------------
    def has_scale(self, name: str, node: Node) -> bool:
        """Whether float tensor ``name`` (written by ``node``) is int8 in the converted model."""
        if self.file_quant(name):
            return True
        first = next((n for n in node.inputs if n and not self.is_const(n)), None)
        return (node.op in SCALE_PRESERVING and first in self.refs
                and self.b.quant_of(self.refs[first].index) is not None)

    def needs_float(self, node: Node) -> bool:
        """An int8 model's node that reads a float activation or writes a float tensor without a scale."""
        reads_float = any(n in self.refs and self.is_float(n) and self.b.quant_of(self.refs[n].index) is None
                          for n in node.inputs if n and not self.is_const(n))
        return reads_float or any(self.is_float(o) and not self.has_scale(o, node) for o in node.outputs if o)

    @contextmanager
    def float_island(self, node: Node):
        """Convert ``node`` in float: int8 inputs are read through DEQUANTIZE, and an output the
        ONNX file quantizes is written through QUANTIZE."""
        self.int8, self.island = False, True
        try:
            yield
        finally:
            self.int8, self.island = True, False
        self.float_nodes.append(node.name)

    # -- activations in a layout -------------------------------------------------------------
    def get(self, name: str, perm: tuple[int, ...] | None = None, node: Node | None = None) -> Ref:
        """The activation ``name``, physically in ``perm`` (None: as stored)."""
        if name not in self.refs:
            where = f" (input of {node.where()})" if node else ""
            raise ExportError(f"{self.g.path}: tensor {name!r}{where} was never produced; is the "
                              f"graph topologically sorted?")
        ref = self.refs[name]
        if self.island and self.b.quant_of(ref.index) is not None:
            return self._dequantized(name, perm)
        if perm is None or tuple(perm) == ref.perm:
            return ref
        if ref.feature_perm is not None:
            raise ExportError(f"{self.g.path}: tensor {name!r} holds NHWC-ordered features and is "
                              f"also needed in ONNX order; this graph shape is not supported")
        key = (name, tuple(perm))
        if key not in self._views:
            shape = self.shape(name)
            rel = [ref.perm.index(a) for a in perm]  # physical_new[i] = physical_old[rel[i]]
            if same_order(shape, ref.perm) and same_order(shape, perm):
                out = self.tensor(f"{name}/as{''.join(map(str, perm))}", permuted(shape, perm),
                                  like=ref.index)
                self.b.op("RESHAPE", *self.reshape_args(ref.index, permuted(shape, perm), out,
                                                        name if perm[0] == 0 else None))
            else:
                out = self.tensor(f"{name}/transposed{''.join(map(str, perm))}", permuted(shape, perm),
                                  like=ref.index)
                self.b.op("TRANSPOSE", [ref.index, self.int_const(rel)], [out])
                self.transposes += 1
            self._views[key] = Ref(out, tuple(perm))
        return self._views[key]

    def _dequantized(self, name: str, perm: tuple[int, ...] | None) -> Ref:
        """A float copy of int8 activation ``name`` (in ``perm``), made once."""
        self.island = False
        try:
            ref = self.get(name, perm)
        finally:
            self.island = True
        key = (name, ref.perm, "float")
        if key not in self._views:
            out = self.tensor(f"{name}/dequantized", self.b.shape_of(ref.index), dtype=np.float32)
            self.b.op("DEQUANTIZE", [ref.index], [out])
            self._views[key] = Ref(out, ref.perm, ref.feature_perm)
        return self._views[key]

    def bind(self, name: str, index: int, perm: tuple[int, ...], feature_perm=None) -> Ref:
        self.refs[name] = Ref(index, tuple(perm), feature_perm)
        return self.refs[name]

    # -- tensors ----------------------------------------------------------------------------
    def tensor(self, name: str, shape, *, like: int | None = None, dtype=None,
               quant: Quant | None = None) -> int:
        """A new non-constant tensor; dtype and quantization copied from ``like`` unless given."""
        if like is not None:
            dtype = dtype or self.b.dtype_of(like)
            quant = quant or (self.b.quant_of(like) if np.dtype(dtype) != np.float32 else None)
        dtype = dtype or (np.int8 if self.int8 else np.float32)
        return self.b.tensor(name, shape, dtype, quant=quant)

    def int_const(self, values, name: str = "const") -> int:
        data = np.asarray(values, np.int32)
        key = ("i32", data.shape, data.tobytes())
        if key not in self._consts:
            self._consts[key] = self.b.tensor(f"{name}/{len(self._consts)}", data.shape, np.int32, data=data)
        return self._consts[key]

    def shape_const(self, shape) -> int:
        return self.int_const(np.asarray(shape, np.int32), "shape")

    def reshape_args(self, index: int, shape, out: int, tensor: str | None) -> tuple[list[int], list[int], object]:
        """Inputs, outputs and options of a RESHAPE of ``index`` to ``shape`` (the stored shape of
        ONNX tensor ``tensor``). When that tensor's first axis is the ONNX model's dynamic batch,
        it is written as -1 so the model can be resized."""
        shape = [int(d) for d in shape]
        if tensor is not None and tensor in self.g.batched:
            shape[0] = -1
        return [index, self.shape_const(shape)], [out], self.b.options("Reshape", newShape=shape)

    def float_const(self, values, name: str) -> int:
        data = np.asarray(values, np.float32)
        return self.b.tensor(name, data.shape, np.float32, data=data)

    def operand_const(self, values: np.ndarray, name: str, quant: Quant | None = None) -> int:
        """A constant operand of an element-wise op: float, or int8 in an int8 model.

        In an int8 model the constant keeps the scale it had in the ONNX file (DequantizeLinear);
        a plain float constant gets the exact per-tensor scale of its own range.
        """
        if not self.int8:
            return self.float_const(values, name)
        if quant is None or quant.per_channel:  # element-wise operands take one per-tensor scale
            quant = range_quant(float(values.min(initial=0.0)), float(values.max(initial=0.0)))
        return self.b.tensor(name, values.shape, np.int8, data=quant.quantize(values), quant=quant)

    # -- quantization ---------------------------------------------------------------------
    def quant_of(self, name: str, node: Node | None = None, inherit: Quant | None = None) -> Quant | None:
        """The int8 parameters of activation ``name`` (None in float models)."""
        if not self.int8 or not self.is_float(name):
            return None
        q = self.file_quant(name)
        if q is None:
            q = inherit if node is not None and node.op in SCALE_PRESERVING else None
        if q is None:
            where = f" (output of {node.where()})" if node else ""
            raise ExportError(f"{self.g.path}: tensor {name!r}{where} has no QuantizeLinear; a "
                              f"full-integer TFLite model needs a scale for every activation. "
                              f"Quantize this tensor in the ONNX model (edgekd never re-calibrates), or "
                              f"convert with float_fallback to compute it in float")
        return q

    def file_quant(self, name: str) -> Quant | None:
        """The scale the ONNX file gives ``name``: its own QuantizeLinear, or the one of the
        reshape-like op alone reading it."""
        return self.g.act_quant.get(name) or self._forward_quant(name, set())

    def _forward_quant(self, name: str, seen: set) -> Quant | None:
        consumers = self.g.consumers(name)
        if len(consumers) != 1 or consumers[0].op not in RESHAPE_LIKE or name in seen:
            return None
        seen.add(name)
        out = consumers[0].outputs[0]
        return self.g.act_quant.get(out) or self._forward_quant(out, seen)

    def requantize(self, index: int, quant: Quant, name: str) -> int:
        """``index`` re-expressed with ``quant`` (a QUANTIZE op), or itself when already so."""
        if quant.same_as(self.b.quant_of(index)):
            return index
        out = self.tensor(name, self.b.shape_of(index), dtype=np.int8, quant=quant)
        self.b.op("QUANTIZE", [index], [out])
        return out

    # -- emitting an op that produces an ONNX tensor -------------------------------------
    def emit(self, op: str, inputs: list[int], node: Node, *, perm, options=None, version: int = 1,
             out: str | None = None, fixed_quant: Quant | None = None, inherit: Quant | None = None,
             shape=None, feature_perm=None) -> Ref:
        """Add ``op`` writing ONNX tensor ``out`` (default: the node's first output) in ``perm``.

        In int8 models the op writes with ``fixed_quant`` when its kernel dictates the output
        scale (softmax, logistic, pooling), and a QUANTIZE moves it to the tensor's own scale.
        """
        out = out or node.outputs[0]
        logical = shape if shape is not None else self.shape(out, node)
        phys = permuted(logical, perm) if shape is None else list(shape)
        if not self.is_float(out):  # integer and boolean tensors keep their ONNX type
            index = self.tensor(out, phys, dtype=tflite_dtype(self.dtype(out), self.g.path, out))
            self.b.op(op, inputs, [index], options, version)
            return self.bind(out, index, perm, feature_perm)
        if self.island:  # float op; int8 again where the ONNX file quantizes the result
            quant = self.file_quant(out)
            index = self.tensor(out if quant is None else f"{out}/float", phys, dtype=np.float32)
            self.b.op(op, inputs, [index], options, version)
            if quant is not None:
                real, index = index, self.tensor(out, phys, dtype=np.int8, quant=quant)
                self.b.op("QUANTIZE", [real], [index])
            return self.bind(out, index, perm, feature_perm)
        quant = self.quant_of(out, node, inherit=inherit or fixed_quant)
        if fixed_quant is not None and not fixed_quant.same_as(quant):
            if fixed_quant.scale[0] > quant.scale[0] * 1.001:  # precision TFLite cannot give back
                self.coarse[out] = fixed_quant.scale[0]
            tmp = self.tensor(f"{out}/fixed_scale", phys, quant=fixed_quant)
            self.b.op(op, inputs, [tmp], options, version)
            index = self.requantize(tmp, quant, out)
        else:
            index = self.tensor(out, phys, quant=quant)
            self.b.op(op, inputs, [index], options, version)
        return self.bind(out, index, perm, feature_perm)

    def activation(self, node: Node) -> int:
        return self.b.enum("ActivationFunctionType", node.attr("_activation") or "NONE")


NON_FLOAT_TYPES = (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_))


def tflite_dtype(dtype: np.dtype, path: str, tensor: str) -> np.dtype:
    """The TFLite type of a non-float ONNX tensor: its own (int32, int64, bool), or an error."""
    dtype = np.dtype(dtype)
    if dtype not in NON_FLOAT_TYPES:
        raise ExportError(f"{path}: tensor {tensor!r} is {dtype}; the TFLite writer takes float32, "
                          f"int32, int64 and bool tensors: cast it in the model")
    return dtype


def laid_out(value: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    """A constant operand aligned to an activation stored in ``perm``: a scalar stays 0-d (it
    broadcasts in any layout), anything else is left-padded to its rank and permuted alike."""
    value = np.asarray(value)
    if value.size == 1:
        return value.reshape(())
    if value.ndim:
        value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape).transpose(perm)
    return np.ascontiguousarray(value)


def range_quant(lo: float, hi: float) -> Quant:
    """Exact int8 parameters for the real interval [lo, hi] (widened to contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return Quant.of(1.0, 0)
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return Quant.of(scale, zero_point)


MIN_ADD_SCALE_RATIO = 1 / 1024  # XNNPACK delegates an int8 ADD only if input scale / output scale >= 2^-10


def addend_quant(lo: float, hi: float, sum_scale: float) -> Quant:
    """``range_quant`` of an int8 ADD input the writer makes (not one the ONNX file gives), widened
    where needed so that its scale is at least ``MIN_ADD_SCALE_RATIO`` of the sum's: XNNPACK leaves
    such an ADD to LiteRT's own kernel, splitting the delegate (7 of torchvision MobileNetV3's SE
    gates). The coarser step stays below 1/1024 of the sum's, far inside the sum's rounding."""
    q = range_quant(lo, hi)
    floor = sum_scale * MIN_ADD_SCALE_RATIO
    if q.scale[0] >= floor:
        return q
    middle, half = (lo + hi) / 2, 255 * floor / 2
    return range_quant(middle - half, middle + half)


def symmetric_quant(values: np.ndarray) -> Quant:
    peak = float(np.abs(values).max(initial=0.0))
    return Quant.of(peak / 127.0 if peak > 0 else 1.0, 0)
