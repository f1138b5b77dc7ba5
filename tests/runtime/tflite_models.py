"""Tiny TFLite flatbuffers written with LiteRT's schema object API, to test the LiteRT runtime
without a TFLite exporter: one FULLY_CONNECTED (float or int8) or one RESHAPE (an identity that
exposes the runtime's quantize/dequantize of int8/uint8 interfaces).

Schema: https://github.com/google-ai-edge/LiteRT/blob/main/tflite/converter/schema/schema.fbs.
Buffer 0 is the empty sentinel every TFLite model starts with; ``version`` is 3. Import this
module only after ``pytest.importorskip("ai_edge_litert")``.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

TENSOR_TYPES = {np.float32: schema.TensorType.FLOAT32, np.int8: schema.TensorType.INT8,
                np.uint8: schema.TensorType.UINT8, np.int32: schema.TensorType.INT32}


class ModelBuilder:
    """One subgraph, built tensor by tensor and op by op."""

    def __init__(self):
        self.model = schema.ModelT()
        self.model.version = 3
        self.model.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.model.operatorCodes = []
        self.graph = schema.SubGraphT()
        self.graph.tensors, self.graph.operators = [], []

    def tensor(self, name: str, shape, dtype, data: np.ndarray | None = None,
               quant: tuple[float, int] | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type = name, list(shape), TENSOR_TYPES[np.dtype(dtype).type]
        if data is not None:
            buf = schema.BufferT()
            buf.data = np.ascontiguousarray(data, dtype).tobytes()
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(quant[0])], [int(quant[1])]
            t.quantization = q
        self.graph.tensors.append(t)
        return len(self.graph.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options,
           version: int = 1) -> None:
        opcode = schema.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), version
        self.model.operatorCodes.append(opcode)
        op = schema.OperatorT()
        op.opcodeIndex = len(self.model.operatorCodes) - 1
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.graph.operators.append(op)

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        self.graph.inputs, self.graph.outputs = inputs, outputs
        self.model.subgraphs = [self.graph]
        builder = flatbuffers.Builder(1024)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        Path(path).write_bytes(bytes(builder.Output()))
        return Path(path)


def fully_connected(path: Path, weight: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...]) -> Path:
    """Float32 ``y = flatten(x) @ weight.T + bias``; x of ``input_shape`` (N, ...), y (N, out)."""
    b = ModelBuilder()
    x = b.tensor("input", input_shape, np.float32)
    w = b.tensor("weight", weight.shape, np.float32, weight)
    bias_t = b.tensor("bias", bias.shape, np.float32, bias)
    y = b.tensor("logits", (input_shape[0], weight.shape[0]), np.float32)
    b.op(schema.BuiltinOperator.FULLY_CONNECTED, [x, w, bias_t], [y],
         schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT())
    return b.write(path, [x], [y])


def fully_connected_int8(path: Path, weight_q: np.ndarray, weight_scale: float, bias_q: np.ndarray,
                         input_shape: tuple[int, ...], input_quant: tuple[float, int],
                         output_quant: tuple[float, int]) -> Path:
    """The int8 version with an int8 interface: int8 input/output, int8 weights (zero point 0),
    int32 bias at scale ``input_scale * weight_scale``, as TFLite's full-integer models are."""
    b = ModelBuilder()
    x = b.tensor("input", input_shape, np.int8, quant=input_quant)
    w = b.tensor("weight", weight_q.shape, np.int8, weight_q, quant=(weight_scale, 0))
    bias_t = b.tensor("bias", bias_q.shape, np.int32, bias_q, quant=(input_quant[0] * weight_scale, 0))
    y = b.tensor("logits", (input_shape[0], weight_q.shape[0]), np.int8, quant=output_quant)
    b.op(schema.BuiltinOperator.FULLY_CONNECTED, [x, w, bias_t], [y],
         schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT(), version=4)
    return b.write(path, [x], [y])


def identity(path: Path, shape: tuple[int, ...], dtype, quant: tuple[float, int] | None = None,
             fixed_batch: bool = False) -> Path:
    """RESHAPE to the same shape: output = input (same dtype and quantization).

    With ``fixed_batch`` the target shape spells the batch out, so the batch cannot be resized.
    """
    b = ModelBuilder()
    x = b.tensor("input", shape, dtype, quant=quant)
    new_shape = np.array([shape[0] if fixed_batch else -1, *shape[1:]], np.int32)
    s = b.tensor("shape", (len(shape),), np.int32, new_shape)
    y = b.tensor("output", shape, dtype, quant=quant)
    options = schema.ReshapeOptionsT()
    options.newShape = new_shape.tolist()
    b.op(schema.BuiltinOperator.RESHAPE, [x, s], [y], schema.BuiltinOptions.ReshapeOptions, options)
    return b.write(path, [x], [y])


def add(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """ADD of two inputs ``a`` and ``b`` of one shape and dtype (float32 or int32): a two-input model."""
    b = ModelBuilder()
    x, y = b.tensor("a", shape, dtype), b.tensor("b", shape, dtype)
    out = b.tensor("sum", shape, dtype)
    b.op(schema.BuiltinOperator.ADD, [x, y], [out], schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
    return b.write(path, [x, y], [out])


def add_and_mul(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """``a + b`` (output ``sum``) and ``a * b`` (output ``product``): two inputs, two outputs."""
    b = ModelBuilder()
    x, y = b.tensor("a", shape, dtype), b.tensor("b", shape, dtype)
    total, product = b.tensor("sum", shape, dtype), b.tensor("product", shape, dtype)
    b.op(schema.BuiltinOperator.ADD, [x, y], [total], schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
    b.op(schema.BuiltinOperator.MUL, [x, y], [product], schema.BuiltinOptions.MulOptions, schema.MulOptionsT())
    return b.write(path, [x, y], [total, product])


def random_int8_classifier(path: Path, input_shape: tuple[int, ...] = (1, 1, 8, 8), classes: int = 10,
                           seed: int = 0) -> dict:
    """An int8 FULLY_CONNECTED classifier with random weights, inputs expected in [0, 1].

    Returns its integer parameters (``weight_q``, ``weight_scale``, ``bias_q``, ``input_quant``,
    ``output_quant``) for a numpy reference.
    """
    rng = np.random.default_rng(seed)
    features = int(np.prod(input_shape[1:]))
    params = {"weight_q": rng.integers(-127, 128, (classes, features)).astype(np.int8),
              "weight_scale": 0.02, "bias_q": rng.integers(-2000, 2000, classes).astype(np.int32),
              "input_quant": (1 / 255, -128), "output_quant": (0.25, 4)}
    fully_connected_int8(path, input_shape=input_shape, **params)
    return params
