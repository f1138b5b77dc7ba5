"""Read an ONNX model into the plain graph the TFLite converter walks.

``load_graph`` does everything that does not depend on TFLite:

1. fixes the batch dimension (TFLite tensors have static shapes);
2. folds constant subgraphs (``Constant``, ``ConstantOfShape``, ``Shape`` of static tensors and
   any node whose inputs are all constant) with onnx's reference evaluator;
3. reads QDQ quantization: ``DequantizeLinear`` over a constant becomes a *quantized constant*
   (its integer values and scales are kept exactly); a ``QuantizeLinear``/``DequantizeLinear``
   pair over an activation is removed and its (scale, zero point) annotate that tensor. uint8
   parameters become int8 ones (q - 128, zero point - 128: the same real values);
4. drops ``Identity``/``Dropout``, folds ``BatchNormalization`` into a preceding float ``Conv``,
   and fuses ``Relu``/``Clip`` into the producing op as a TFLite fused activation;
5. records the static shape of every tensor (onnx shape inference, or one onnxruntime run for
   the tensors it cannot infer).

Scales are only ever *read* from the file: nothing here calibrates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekd.errors import ExportError
from edgekd.export.tflite.builder import Quant


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def where(self) -> str:
        return f"{self.op} node {self.name!r}"


FOUR_BIT = ("int4", "uint4")
UNSIGNED_OFFSET = {"uint8": 128, "uint4": 8}  # unsigned codes become signed ones minus this


@dataclass
class QConst:
    """A constant stored as integers: real = scale * (values - zero_point)."""

    values: np.ndarray  # int8/uint8/int32, as in the file (4-bit codes held in int8)
    quant: Quant
    bits: int = 8  # 4: the file stores int4/uint4 weights (written packed as TFLite INT4)


@dataclass
class Graph:
    path: str
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    output_names: list[str]  # the ONNX names of the outputs (``outputs`` may be aliases)
    constants: dict[str, np.ndarray]
    qconst: dict[str, QConst]
    act_quant: dict[str, Quant]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    opset: int
    batch: int = 1
    dynamic_batch: bool = False  # the ONNX inputs had a free batch dimension (fixed to ``batch``)
    batched: set[str] = field(default_factory=set)  # tensors whose axis 0 follows that batch

    @property
    def quantized(self) -> bool:
        return bool(self.act_quant)

    def shape(self, name: str, node: Node | None = None) -> tuple[int, ...]:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        if name not in self.shapes:
            where = f" (input of {node.where()})" if node else ""
            raise ExportError(f"{self.path}: the shape of tensor {name!r}{where} is unknown; "
                              f"TFLite needs static shapes")
        return self.shapes[name]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]


ACTIVATIONS = {"Relu": "RELU"}  # ONNX op -> TFLite fused activation (Clip handled by bounds)
_CLIP_ACTIVATIONS = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, float("inf")): "RELU"}
FUSES_ACTIVATION = {"Conv", "ConvTranspose", "Gemm", "Add", "Sub", "Mul", "Div", "BatchNormalization"}  # (BN: its ADD)
_NO_FOLD = {"DequantizeLinear", "RandomNormal", "RandomUniform",
            "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def load_graph(path: str | Path, *, batch: int = 1) -> Graph:
    """Load and simplify ``path``; see the module docstring for what happens.

    Raises:
        ExportError: the file is missing or invalid, an input has a dynamic non-batch dimension,
            or its quantization cannot be read (names the node).
    """
    path = str(path)
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise ExportError(f"{path}: ONNX file not found") from None
    except Exception as err:
        raise ExportError(f"{path}: not a valid ONNX model, the file is truncated or corrupt "
                          f"({str(err)[:200]})") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if any(o.domain not in ("", "ai.onnx") for o in model.opset_import if o.version):
        domains = sorted(o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx"))
        used = {n.domain for n in model.graph.node} & set(domains)
        if used:
            raise ExportError(f"{path}: nodes of custom domains {sorted(used)} cannot be converted "
                              f"to TFLite; export with standard ONNX operators")
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    dynamic = _fix_static_inputs(model, inputs, batch, path)
    shapes, dtypes = _infer(model)
    _measure_shapes(model, shapes, dtypes)
    batched = set()
    if dynamic:  # infer again at another batch: the tensors whose axis 0 moves with it
        _fix_static_inputs(probe, [i for i in probe.graph.input if i.name not in init_names], batch + 1, path)
        other, other_dtypes = _infer(probe)
        _measure_shapes(probe, other, other_dtypes)
        batched = {n for n, s in shapes.items() if s[:1] == (batch,) and other.get(n, ())[:1] == (batch + 1,)}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    g = Graph(path, [], [i.name for i in inputs], [o.name for o in model.graph.output],
              [o.name for o in model.graph.output], constants, {}, {}, shapes, dtypes, opset,
              batch, dynamic, batched)
    _walk(model, g)
    _fold_batchnorm(g)
    _fuse_gelu(g)
    _fuse_matmul_bias(g)
    _fuse_activations(g)
    _fuse_channel_affine(g)  # (after: an activation fused into the Add carries over)
    _fill_missing_shapes(model, g)
    _lift_1d(g)
    return g


def _fix_static_inputs(model: onnx.ModelProto, inputs, batch: int, path: str) -> bool:
    """Give every input a static shape (batch on a free axis 0); True if any batch was free."""
    dynamic = False
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis == 0:
                dim.Clear()
                dim.dim_value = batch
                dynamic = True
            else:
                raise ExportError(f"{path}: input {inp.name!r} has a dynamic dimension at axis {axis} "
                                  f"({dim.dim_param or '?'}); TFLite needs static shapes: re-export "
                                  f"the ONNX model with a fixed input size")
    return dynamic


def _infer(model: onnx.ModelProto) -> tuple[dict, dict]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best-effort; onnxruntime fills the gaps
        inferred = model
    shapes, dtypes = {}, {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type:
            dtypes[vi.name] = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    return shapes, dtypes


def _measure_shapes(model: onnx.ModelProto, shapes: dict, dtypes: dict) -> None:
    """Shapes onnx's inference leaves unknown (it loses them after chains such as Shape ->
    Gather -> Range -> Reshape, as in YOLO's anchor grid or two consecutive ``chunk``s): run the
    model once in onnxruntime at the static input shapes and read every tensor's shape, so each
    Shape node folds to a constant and what it feeds folds after it."""
    missing = [o for n in model.graph.node for o in n.output
               if o and o not in shapes and n.op_type not in ("Constant", "QuantizeLinear")]
    try:
        _run_for_shapes(model, missing, shapes, dtypes)
    except Exception:
        pass  # best effort: what stays unknown is filled (or named) after the walk


def _run_for_shapes(model: onnx.ModelProto, names: list[str], shapes: dict, dtypes: dict) -> None:
    """Run ``model`` once in onnxruntime on zeros of the inputs' static ``shapes`` with ``names``
    as extra outputs, and record their shapes and dtypes. Raises what onnxruntime raises."""
    if not names:
        return
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(shapes[i.name], dtypes.get(i.name, np.float32)) for i in session.get_inputs()}
    for name, value in zip(names, session.run(names, feeds)):
        shapes[name] = tuple(value.shape)
        dtypes.setdefault(name, value.dtype)


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _walk(model: onnx.ModelProto, g: Graph) -> None:
    """Fold constants, read QDQ, drop identities: fills ``g.nodes`` with the compute nodes."""
    alias: dict[str, str] = {}
    pending_q: dict[str, tuple[str, Quant, np.dtype, Node]] = {}  # Q output -> (x, quant, dtype)
    for i, proto in enumerate(model.graph.node):
        node = Node(proto.op_type, proto.name or f"{proto.op_type}_{i}",
                    [alias.get(n, n) for n in proto.input], list(proto.output), _attrs(proto))
        if proto.domain not in ("", "ai.onnx"):
            raise ExportError(f"{g.path}: {node.where()} is in custom domain {proto.domain!r}")
        if node.op == "Constant":
            g.constants[node.outputs[0]] = numpy_helper.to_array(proto.attribute[0].t) \
                if proto.attribute[0].type == onnx.AttributeProto.TENSOR else np.asarray(_attrs(proto)[proto.attribute[0].name])
            continue
        real_inputs = [n for n in node.inputs if n]
        if node.op == "DequantizeLinear":
            _dequantize(node, g, alias, pending_q)
            continue
        if node.op == "QuantizeLinear" and node.inputs[0] not in g.constants:
            out_dtype = node.attr("output_dtype", 0)
            quant, dtype = _read_quant(node, g, helper.tensor_dtype_to_np_dtype(out_dtype)
                                       if out_dtype else np.uint8)
            pending_q[node.outputs[0]] = (node.inputs[0], quant, dtype, node)
            continue
        if node.op in ("Identity", "Dropout") and node.outputs[0] not in g.output_names:
            if len(node.outputs) > 1 and node.outputs[1] and _is_read(model, node.outputs[1]):
                raise ExportError(f"{g.path}: {node.where()}: the Dropout mask output is used; "
                                  f"export the model in eval mode")
            alias[node.outputs[0]] = node.inputs[0]
            continue
        if node.op == "Shape" and node.inputs[0] in g.shapes:
            g.constants[node.outputs[0]] = _shape_value(node, g.shapes[node.inputs[0]])
            continue
        if node.op not in _NO_FOLD and real_inputs and all(n in g.constants for n in real_inputs):
            _fold(proto, node, g)
            continue
        if node.op == "ConstantOfShape" and node.inputs[0] in g.constants:
            _fold(proto, node, g)
            continue
        for name in node.inputs:
            if name in pending_q:
                _, _, _, qnode = pending_q[name]
                raise ExportError(f"{g.path}: {node.where()} reads the integer output of "
                                  f"QuantizeLinear node {qnode.name!r} directly; only "
                                  f"QuantizeLinear -> DequantizeLinear pairs are supported")
        g.nodes.append(node)
    g.outputs = [alias.get(n, n) for n in g.outputs]
    for name in g.outputs:
        if name in pending_q:
            raise ExportError(f"{g.path}: graph output {name!r} is the integer output of a "
                              f"QuantizeLinear; export a float output (end with DequantizeLinear)")


def _is_read(model: onnx.ModelProto, name: str) -> bool:
    return any(name in n.input for n in model.graph.node) or any(o.name == name for o in model.graph.output)


def _read_quant(node: Node, g: Graph, default_dtype=np.uint8) -> tuple[Quant, np.dtype]:
    """Scale and zero point of a Q/DQ node; a missing zero point is 0 of ``default_dtype`` (the
    constant's type for DequantizeLinear, ``output_dtype`` or uint8 for QuantizeLinear)."""
    if node.attr("block_size", 0):
        raise ExportError(f"{g.path}: {node.where()}: blocked quantization (block_size) has no "
                          f"TFLite equivalent; use per-channel or per-tensor scales")
    scale = g.constants.get(node.inputs[1])
    if scale is None:
        raise ExportError(f"{g.path}: {node.where()}: the scale {node.inputs[1]!r} is computed at run "
                          f"time; TFLite needs constant scales (freeze the quantizers before export)")
    if len(node.inputs) > 2 and node.inputs[2]:
        if node.inputs[2] not in g.constants:
            raise ExportError(f"{g.path}: {node.where()}: zero point {node.inputs[2]!r} is not constant")
        zp = g.constants[node.inputs[2]]
    else:
        zp = np.zeros_like(scale, default_dtype)
    dtype = np.dtype(zp.dtype)
    if dtype in (np.dtype(np.int16), np.dtype(np.uint16)):
        raise ExportError(f"{g.path}: {node.where()}: {dtype} activations (16-bit) are not supported: "
                          f"edgekd's TFLite writer has no 16x8 mode; export ONNX for onnxruntime, "
                          f"or quantize activations to 8 bits")
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)) and dtype.name not in FOUR_BIT:
        raise ExportError(f"{g.path}: {node.where()}: {dtype} quantization is not supported "
                          f"(int8, uint8, int4/uint4 weights and int32 bias are)")
    axis = int(node.attr("axis", 1)) if np.asarray(scale).size > 1 else 0
    zp = np.asarray(zp, np.int64) - UNSIGNED_OFFSET.get(dtype.name, 0)
    return Quant.of(scale, zp, axis), dtype


def _dequantize(node: Node, g: Graph, alias: dict, pending_q: dict) -> None:
    x = node.inputs[0]
    x_dtype = g.constants[x].dtype if x in g.constants else pending_q[x][2] if x in pending_q else np.uint8
    quant, _ = _read_quant(node, g, x_dtype)
    if x in g.constants:  # a quantized weight, bias or constant operand
        values = g.constants[x]
        bits = 4 if values.dtype.name in FOUR_BIT else 8
        if values.dtype.name in UNSIGNED_OFFSET:  # as signed codes, zero point shifted alike
            values = (values.astype(np.int16) - UNSIGNED_OFFSET[values.dtype.name]).astype(np.int8)
        elif bits == 4:
            values = values.astype(np.int8)
        if quant.axis < 0:
            quant = Quant(quant.scale, quant.zero_point, quant.axis + values.ndim)
        g.qconst[node.outputs[0]] = QConst(values, quant, bits)
        shape = [1] * values.ndim
        if quant.per_channel:
            shape[quant.axis] = -1
        g.constants[node.outputs[0]] = ((values.astype(np.float64) - np.reshape(quant.zero_point, shape))
                                        * np.reshape(quant.scale, shape)).astype(np.float32)
        return
    if x not in pending_q:
        raise ExportError(f"{g.path}: {node.where()} dequantizes {x!r}, which is neither a constant "
                          f"nor the output of a QuantizeLinear; integer graph inputs are not supported")
    source, q_quant, _, qnode = pending_q[x]
    if not q_quant.same_as(quant):
        raise ExportError(f"{g.path}: {node.where()} uses other scales than QuantizeLinear node "
                          f"{qnode.name!r}; a Q/DQ pair must share scale and zero point")
    if q_quant.per_channel:
        raise ExportError(f"{g.path}: QuantizeLinear node {qnode.name!r} quantizes activation "
                          f"{source!r} per channel; TFLite activations are quantized per tensor")
    known = g.act_quant.get(source)
    if known is not None and not known.same_as(q_quant):
        # a second scale for one tensor: a requantization (e.g. an input moved onto a concat's
        # grid). TFLite gives each tensor one scale, so it becomes a tensor of its own, written
        # by a QUANTIZE op (the "QuantizeLinear" converter)
        requantized = f"{source}/requantized_by_{qnode.name}"
        g.nodes.append(Node("QuantizeLinear", qnode.name, [source], [requantized], {}))
        g.act_quant[requantized] = q_quant
        if source in g.shapes:
            g.shapes[requantized] = g.shapes[source]
        alias[node.outputs[0]] = requantized
        return
    g.act_quant[source] = q_quant
    alias[node.outputs[0]] = source


def _shape_value(node: Node, shape: tuple[int, ...]) -> np.ndarray:
    start, end = node.attr("start", 0), node.attr("end", None)
    return np.asarray(shape[start:end], np.int64)


def _gather_elements(node: Node, g: Graph, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """GatherElements in numpy (onnx's reference evaluator fails on long axes, e.g. BERT's
    512-long token_type_ids buffer: it uses np.choose, limited to 64 choices)."""
    axis = node.attr("axis", 0)
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ExportError(f"{g.path}: {node.where()}: an index is outside [-{size}, {size - 1}] on axis {axis}")
    return np.take_along_axis(data, np.where(indices < 0, indices + size, indices), axis)


def _quantize_linear(node: Node, g: Graph, x: np.ndarray, scale: np.ndarray, zero_point=None) -> np.ndarray:
    """QuantizeLinear of a constant, saturating as the spec says also for values beyond float
    range after division (a causal mask's lowest float; onnx's evaluator casts inf to int)."""
    dtype = np.dtype(zero_point.dtype if zero_point is not None else np.uint8)
    if node.attr("output_dtype", 0) or dtype.kind not in "iu" or node.attr("block_size", 0):
        return _reference_fold(node, g)
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale, dtype) if zero_point is None else np.asarray(zero_point)
    if scale.size > 1:  # per axis
        shape = [1] * x.ndim
        shape[int(node.attr("axis", 1)) % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    info = np.iinfo(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(np.clip(x.astype(np.float32) / scale, -2.0 ** 40, 2.0 ** 40))  # (finite before the cast)
    return np.clip(q + zp.astype(np.int64), info.min, info.max).astype(dtype)


NUMPY_FOLDS = {"GatherElements": _gather_elements,  # folded here instead of by onnx's reference evaluator
               "QuantizeLinear": _quantize_linear}


def _fold(proto: onnx.NodeProto, node: Node, g: Graph) -> None:
    _fold_values(proto, node, g)
    _carry_qconst(node, g)


_MOVES_VALUES = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _carry_qconst(node: Node, g: Graph) -> None:
    """A quantized constant moved by a folded Transpose/Reshape (a Linear's weight, transposed
    for MatMul) stays quantized: same codes, moved alike, the channel axis following them."""
    qc = g.qconst.get(node.inputs[0]) if node.inputs else None
    if qc is None or node.op not in _MOVES_VALUES:
        return
    out = node.outputs[0]
    values = g.constants[out]
    if node.op == "Transpose":
        perm = list(node.attr("perm", reversed(range(qc.values.ndim))))
        g.qconst[out] = QConst(qc.values.transpose(perm), Quant(qc.quant.scale, qc.quant.zero_point,
                                                              perm.index(qc.quant.axis)), qc.bits)
    elif not qc.quant.per_channel:
        g.qconst[out] = QConst(qc.values.reshape(values.shape), qc.quant, qc.bits)


def _fold_values(proto: onnx.NodeProto, node: Node, g: Graph) -> None:
    if node.op in NUMPY_FOLDS:
        value = NUMPY_FOLDS[node.op](node, g, *(g.constants[n] for n in node.inputs if n))
        g.constants[node.outputs[0]] = np.asarray(value)
        return
    _reference_fold(node, g, proto)


def _reference_fold(node: Node, g: Graph, proto: onnx.NodeProto | None = None) -> np.ndarray:
    """Fold ``node`` with onnx's reference evaluator; returns (and stores) its first output."""
    from onnx.reference import ReferenceEvaluator

    if proto is None:
        proto = helper.make_node(node.op, node.inputs, node.outputs, name=node.name,
                                 **{k: v for k, v in node.attrs.items() if not k.startswith("_")})

    names = [n for n in node.inputs if n]
    graph = helper.make_graph(
        [proto], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(g.constants[n].dtype), None)
         for n in dict.fromkeys(names)],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.outputs if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    renamed = onnx.NodeProto()
    renamed.CopyFrom(proto)
    del renamed.input[:]
    renamed.input.extend(node.inputs)
    model.graph.node[0].CopyFrom(renamed)
    try:
        values = ReferenceEvaluator(model).run(None, {n: g.constants[n] for n in names})
    except Exception as err:
        raise ExportError(f"{g.path}: cannot fold constant {node.where()}: {str(err)[:200]}") from None
    for out, value in zip([o for o in node.outputs if o], values):
        g.constants[out] = np.asarray(value)
    return g.constants[node.outputs[0]]


def _fold_batchnorm(g: Graph) -> None:
    """Conv(float const weights) -> BatchNormalization(const params): scale the weights."""
    by_output = {o: n for n in g.nodes for o in n.outputs}
    keep = []
    for node in g.nodes:
        if node.op == "BatchNormalization" and len([o for o in node.outputs if o]) == 1:
            conv = by_output.get(node.inputs[0])
            params = node.inputs[1:5]
            if (conv is not None and conv.op == "Conv" and conv.inputs[1] in g.constants
                    and conv.inputs[1] not in g.qconst and all(p in g.constants for p in params)
                    and len(g.consumers(conv.outputs[0])) == 1 and conv.outputs[0] not in g.outputs
                    and conv.outputs[0] not in g.act_quant):
                gamma, beta, mean, var = (g.constants[p].astype(np.float64) for p in params)
                factor = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
                w = g.constants[conv.inputs[1]].astype(np.float64)
                bias = g.constants[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
                wname, bname = f"{conv.name}/folded_weight", f"{conv.name}/folded_bias"
                g.constants[wname] = (w * factor.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
                g.constants[bname] = ((bias - mean) * factor + beta).astype(np.float32)
                conv.inputs = [conv.inputs[0], wname, bname]
                conv.outputs = [node.outputs[0]]
                continue
        keep.append(node)
    g.nodes = keep


def _clip_bounds(node: Node, g: Graph) -> tuple[float, float] | None:
    if node.op != "Clip":
        return None
    lo, hi = node.attr("min", float("-inf")), node.attr("max", float("inf"))
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i]:
            if node.inputs[i] not in g.constants:
                return None
            bound = np.asarray(g.constants[node.inputs[i]]).reshape(-1)
            if bound.size != 1:
                return None
            value = float(bound[0])
            lo, hi = (value, hi) if i == 1 else (lo, value)
    return float(lo), float(hi)


def activation_of(node: Node, g: Graph) -> str | None:
    """The TFLite fused activation equal to ``node`` (Relu, or Clip to [0,6]/[-1,1]/[0,inf))."""
    if node.op in ACTIVATIONS:
        return ACTIVATIONS[node.op]
    bounds = _clip_bounds(node, g)
    return _CLIP_ACTIVATIONS.get(bounds) if bounds else None


def _fuse_gelu(g: Graph) -> None:
    """The exact GELU torch exports below opset 20, x * (1 + erf(x / sqrt(2))) * 0.5 (Div or Mul
    by the constant, Erf, Add 1, Mul by x, Mul 0.5), becomes one ``Gelu`` node: TFLite's GELU
    (there is no ERF builtin), one kernel instead of five, delegated by XNNPACK."""
    by_output = {o: n for n in g.nodes for o in n.outputs}

    def const(node: Node, name: str) -> float | None:
        other = [i for i in node.inputs if i != name]
        if len(other) != 1 or other[0] not in g.constants or g.constants[other[0]].size != 1:
            return None
        return float(np.asarray(g.constants[other[0]]).reshape(-1)[0])

    def sole(name: str, op: str) -> Node | None:
        users = g.consumers(name)
        return users[0] if len(users) == 1 and users[0].op == op and name not in g.outputs else None

    fused: dict[int, Node] = {}
    dropped: set[int] = set()
    for erf in [n for n in g.nodes if n.op == "Erf"]:
        pre = by_output.get(erf.inputs[0])
        if pre is None or pre.op not in ("Div", "Mul") or len(g.consumers(pre.outputs[0])) != 1:
            continue
        x = pre.inputs[0]
        c = const(pre, x)
        if c is None or not np.isclose(c if pre.op == "Div" else 1 / c, np.sqrt(2), rtol=1e-3):
            continue
        add = sole(erf.outputs[0], "Add")
        if add is None or not np.isclose(const(add, erf.outputs[0]) or 0.0, 1.0):
            continue
        times_x = sole(add.outputs[0], "Mul")
        if times_x is None or sorted(times_x.inputs) != sorted([x, add.outputs[0]]):
            continue
        half = sole(times_x.outputs[0], "Mul")
        if half is None or not np.isclose(const(half, times_x.outputs[0]) or 0.0, 0.5):
            continue
        fused[id(half)] = Node("Gelu", erf.name, [x], [half.outputs[0]], {"approximate": "none"})
        dropped |= {id(pre), id(erf), id(add), id(times_x)}
    if fused:
        g.nodes = [fused.get(id(n), n) for n in g.nodes if id(n) not in dropped]


def _fuse_matmul_bias(g: Graph) -> None:
    """MatMul(x, W) -> Add(constant bias): torch exports a Linear on a 3-D tensor (every
    transformer's) so. One FULLY_CONNECTED with its bias computes both; in int8 models the product
    between them has no scale of its own, so it must be one op."""
    by_output = {o: n for n in g.nodes for o in n.outputs}
    dropped = set()
    for add in g.nodes:
        if add.op != "Add":
            continue
        for i, name in enumerate(add.inputs[:2]):
            mm, bias = by_output.get(name), add.inputs[1 - i]
            if (mm is None or mm.op != "MatMul" or mm.outputs[0] in g.outputs or len(g.consumers(name)) != 1
                    or mm.inputs[1] not in g.constants or bias not in g.constants or bias in g.qconst):
                continue
            weight, value = g.constants[mm.inputs[1]], g.constants[bias]
            if weight.ndim != 2 or value.size != weight.shape[1] or value.ndim > 1 and value.shape[:-1] != (1,) * (value.ndim - 1):
                continue
            mm.attrs["_bias"] = bias
            mm.outputs = [add.outputs[0]]
            dropped.add(id(add))
            break
    g.nodes = [n for n in g.nodes if id(n) not in dropped]


def _fuse_channel_affine(g: Graph) -> None:
    """In an int8 model, Mul(x, gamma) -> Add(beta) with constants per channel of the last axis
    and no scale between them (edgekd.quant.layer_norm's affine: one rounding, after the Add)
    becomes one ``ChannelAffine`` node (a 1x1 DEPTHWISE_CONV_2D, whose per-channel int8 filter
    holds gamma exactly)."""
    if not g.quantized:
        return
    by_output = {o: n for n in g.nodes for o in n.outputs}

    def per_channel(name: str, channels: int) -> bool:
        shape = g.constants[name].shape
        return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, channels))

    fused, dropped = {}, set()
    for add in g.nodes:
        if add.op != "Add" or add.outputs[0] not in g.act_quant:
            continue
        for i, name in enumerate(add.inputs[:2]):
            mul, beta = by_output.get(name), add.inputs[1 - i]
            if (mul is None or mul.op != "Mul" or name in g.act_quant or name in g.outputs
                    or len(g.consumers(name)) != 1 or beta not in g.constants):
                continue
            consts = [n for n in mul.inputs if n in g.constants]
            acts = [n for n in mul.inputs if n not in g.constants]
            if len(consts) != 1 or len(acts) != 1 or acts[0] not in g.act_quant or acts[0] not in g.shapes:
                continue
            channels = g.shapes[acts[0]][-1] if g.shapes[acts[0]] else 1
            if not (per_channel(consts[0], channels) and per_channel(beta, channels)):
                continue
            fused[id(add)] = Node("ChannelAffine", mul.name, [acts[0], consts[0], beta], [add.outputs[0]],
                                  {k: v for k, v in add.attrs.items() if k == "_activation"})
            dropped.add(id(mul))
            break
    if fused:
        g.nodes = [fused.get(id(n), n) for n in g.nodes if id(n) not in dropped]


def _fuse_activations(g: Graph) -> None:
    by_output = {o: n for n in g.nodes for o in n.outputs}
    dropped = set()
    for node in g.nodes:
        act = activation_of(node, g)
        if act is None:
            continue
        producer = by_output.get(node.inputs[0])
        if (producer is None or producer.op not in FUSES_ACTIVATION or producer.attr("_activation")
                or producer.outputs[0] in g.outputs or len(g.consumers(producer.outputs[0])) != 1):
            continue
        producer.attrs["_activation"] = act
        producer.outputs = [node.outputs[0]]
        dropped.add(id(node))
    g.nodes = [n for n in g.nodes if id(n) not in dropped]


def _fill_missing_shapes(model: onnx.ModelProto, g: Graph) -> None:
    """Shapes still unknown after the walk (``_measure_shapes`` could not run the model): run it
    in onnxruntime for those, or name them."""
    missing = [o for n in g.nodes for o in n.outputs if o and o not in g.shapes and o not in g.constants]
    try:
        _run_for_shapes(model, missing, g.shapes, g.dtypes)
    except Exception as err:
        raise ExportError(f"{g.path}: cannot determine the static shapes of {missing[:5]} "
                          f"({str(err).strip().splitlines()[0][:200]})") from None


_WINDOW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}


def _lift_1d(g: Graph) -> None:
    """1-D convolution/pooling on N x C x L becomes 2-D on N x C x 1 x L between two reshapes
    (TFLite has no 1-D kernels); the reshapes cost nothing when the layout carries through."""
    nodes = []
    for node in g.nodes:
        if node.op not in _WINDOW_OPS or len(g.shape(node.inputs[0], node)) != 3:
            nodes.append(node)
            continue
        x, out = node.inputs[0], node.outputs[0]
        n, c, length = g.shape(x, node)
        x2d, out2d = f"{x}/{node.name}/in2d", f"{out}/out2d"
        g.shapes[x2d] = (n, c, 1, length)
        g.shapes[out2d] = (*g.shape(out, node)[:2], 1, g.shape(out, node)[2])
        g.batched |= {new for new, old in ((x2d, x), (out2d, out)) if old in g.batched}
        nodes.append(Node("Reshape", f"{node.name}/to2d", [x], [x2d]))
        attrs = dict(node.attrs)
        for key, fill in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("output_padding", 0)):
            if key in attrs:
                attrs[key] = [fill, *attrs[key]]
        if "pads" in attrs:
            attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
        inputs = [x2d, *node.inputs[1:]]
        if node.op in ("Conv", "ConvTranspose"):
            inputs[1] = _lift_weight(g, node.inputs[1], node)
        nodes.append(Node(node.op, node.name, inputs, [out2d, *node.outputs[1:]], attrs))
        nodes.append(Node("Reshape", f"{node.name}/to1d", [out2d], [out]))
    g.nodes = nodes


def _lift_weight(g: Graph, name: str, node: Node) -> str:
    if name not in g.constants:
        raise ExportError(f"{g.path}: {node.where()}: the weight {name!r} must be constant")
    lifted = f"{name}/as2d"
    if lifted not in g.constants:
        g.constants[lifted] = g.constants[name][:, :, None, :]
        if name in g.qconst:
            qc = g.qconst[name]
            g.qconst[lifted] = QConst(qc.values[:, :, None, :], qc.quant)
    return lifted
