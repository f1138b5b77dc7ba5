"""Write a TFLite flatbuffer with the object API of the schema module ai-edge-litert ships.

``ModelBuilder`` collects tensors, constant buffers and operators of one subgraph and serialises
them with ``flatbuffers`` (``ModelT.Pack`` + ``builder.Finish(..., file_identifier=b"TFL3")``).
Nothing here knows about ONNX: the converter decides shapes, dtypes and quantization; the builder
only records them in the schema's terms (TFLite schema v3, ``tensorflow/lite/schema/schema.fbs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def schema():
    """The generated TFLite schema module (imported on first use: it lives in ai-edge-litert)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # tflite-runtime does not ship the schema; the converter needs litert
        raise ImportError("TFLite export needs the schema module of ai-edge-litert: "
                          "pip install ai-edge-litert flatbuffers") from None
    return schema_py_generated


_DTYPES = {  # numpy dtype -> TensorType member name
    np.dtype(np.float32): "FLOAT32", np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8",
    np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.int16): "INT16",
    np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class Quant:
    """Affine quantization of one tensor: real = scale * (q - zero_point).

    ``scale``/``zero_point`` have one entry (per tensor) or one per slice of ``axis``.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @staticmethod
    def of(scale, zero_point, axis: int = 0) -> Quant:
        s = np.atleast_1d(np.asarray(scale, np.float64))
        z = np.atleast_1d(np.asarray(zero_point, np.int64))
        if z.size == 1 and s.size > 1:
            z = np.repeat(z, s.size)
        return Quant(tuple(float(v) for v in s), tuple(int(v) for v in z), axis)

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def same_as(self, other: Quant | None, rtol: float = 1e-6) -> bool:
        return (other is not None and self.zero_point == other.zero_point
                and np.allclose(self.scale, other.scale, rtol=rtol, atol=0))

    def quantize(self, x: np.ndarray, dtype=np.int8) -> np.ndarray:
        """Round half to even and saturate, as QuantizeLinear does (per-tensor or on ``axis``)."""
        shape = [1] * x.ndim
        if self.per_channel:
            shape[self.axis] = -1
        s = np.asarray(self.scale).reshape(shape)
        z = np.asarray(self.zero_point).reshape(shape)
        info = np.iinfo(dtype)
        return np.clip(np.rint(x / s) + z, info.min, info.max).astype(dtype)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Int8 values in [-8, 7] packed two per byte, first value in the low nibble (TFLite INT4)."""
    flat = codes.astype(np.int8).ravel()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 codes must lie in [-8, 7], got [{flat.min()}, {flat.max()}]")
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    return ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)


class ModelBuilder:
    """One-subgraph TFLite model under construction."""

    def __init__(self, description: str = "edgekd"):
        self._s = schema()
        self.tensors: list = []
        self.buffers: list = [self._s.BufferT()]  # buffer 0: the empty sentinel every model has
        self.operators: list = []
        self._opcodes: dict[tuple[int, int], int] = {}
        self._codes: list = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.description = description
        self.metadata: dict[str, bytes] = {}  # name -> bytes, written as the model's metadata entries

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, name: str, shape, dtype, *, data: np.ndarray | None = None,
               quant: Quant | None = None, bits: int = 8) -> int:
        """Add a tensor (a constant when ``data`` is given); returns its index. ``bits=4``
        writes int8 ``data`` holding codes in [-8, 7] as a packed INT4 constant."""
        s = self._s
        t = s.TensorT()
        t.name = name
        t.shape = np.asarray([int(d) for d in shape], np.int32)
        t.type = getattr(s.TensorType, "INT4" if bits == 4 else _DTYPES[np.dtype(dtype)])
        if data is not None:
            data = np.asarray(data, dtype=dtype).copy(order="C")  # (keeps 0-d scalars 0-d)
            if tuple(data.shape) != tuple(int(d) for d in shape):
                raise ValueError(f"constant {name}: data shape {data.shape} != tensor shape {tuple(shape)}")
            buf = s.BufferT()
            buf.data = pack_int4(data) if bits == 4 else np.frombuffer(data.tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = np.asarray(quant.scale, np.float32)
            q.zeroPoint = np.asarray(quant.zero_point, np.int64)
            q.quantizedDimension = quant.axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def shape_of(self, index: int) -> list[int]:
        return [int(d) for d in self.tensors[index].shape]

    def dtype_of(self, index: int) -> np.dtype:
        names = {getattr(self._s.TensorType, v): k for k, v in _DTYPES.items()}
        return names[self.tensors[index].type]

    def quant_of(self, index: int) -> Quant | None:
        q = self.tensors[index].quantization
        if q is None or q.scale is None:
            return None
        return Quant.of(q.scale, q.zeroPoint, q.quantizedDimension)

    # -- operators -----------------------------------------------------------------------------
    def op(self, name: str, inputs: list[int], outputs: list[int], options=None,
           version: int = 1) -> None:
        """Append builtin operator ``name`` (e.g. "CONV_2D"); ``options`` an ``*OptionsT``."""
        s = self._s
        code = getattr(s.BuiltinOperator, name)
        key = (code, version)
        if key not in self._opcodes:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)  # 127 = PLACEHOLDER_FOR_GREATER_OP_CODES
            oc.version = version
            self._codes.append(oc)
            self._opcodes[key] = len(self._codes) - 1
        op = s.OperatorT()
        op.opcodeIndex = self._opcodes[key]
        op.inputs = np.asarray(inputs, np.int32)
        op.outputs = np.asarray(outputs, np.int32)
        if options is not None:
            kind = type(options).__name__[:-1]  # "Conv2DOptionsT" -> "Conv2DOptions"
            op.builtinOptionsType = getattr(s.BuiltinOptions, kind)
            op.builtinOptions = options
        self.operators.append(op)

    def options(self, kind: str, **fields):
        """An options object, e.g. ``options("Conv2D", padding=..., strideW=1)``."""
        obj = getattr(self._s, f"{kind}OptionsT")()
        for key, value in fields.items():
            if not hasattr(obj, key):
                raise AttributeError(f"{kind}OptionsT has no field {key!r}")
            setattr(obj, key, value)
        return obj

    def enum(self, enum: str, member: str) -> int:
        return getattr(getattr(self._s, enum), member)

    def op_names(self) -> list[str]:
        names = {v: k for k, v in vars(self._s.BuiltinOperator).items() if not k.startswith("_")}
        return [names[self._codes[op.opcodeIndex].builtinCode] for op in self.operators]

    # -- output --------------------------------------------------------------------------------
    def serialize(self) -> bytes:
        import flatbuffers

        s = self._s
        sub = s.SubGraphT()
        sub.tensors, sub.operators = self.tensors, self.operators
        sub.inputs = np.asarray(self.inputs, np.int32)
        sub.outputs = np.asarray(self.outputs, np.int32)
        sub.name = "main"
        sig = s.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs = [self._tensor_map(i) for i in self.inputs]
        sig.outputs = [self._tensor_map(i) for i in self.outputs]
        model = s.ModelT()
        model.version = 3
        model.operatorCodes = self._codes
        model.subgraphs = [sub]
        model.buffers = list(self.buffers)
        model.description = self.description
        model.signatureDefs = [sig]
        model.metadata = []
        for name, data in self.metadata.items():
            buffer = s.BufferT()
            buffer.data = np.frombuffer(data, np.uint8)
            entry = s.MetadataT()
            entry.name, entry.buffer = name, len(model.buffers)
            model.buffers.append(buffer)
            model.metadata.append(entry)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _tensor_map(self, index: int):
        m = self._s.TensorMapT()
        m.name = self.tensors[index].name
        m.tensorIndex = index
        return m


def read_metadata(data: bytes, name: str) -> bytes | None:
    """The bytes of metadata entry ``name`` of a TFLite flatbuffer (None when absent)."""
    model = schema().Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None
