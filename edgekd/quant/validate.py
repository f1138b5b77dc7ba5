"""Check an exported QDQ ONNX artifact against a target's quantization scheme.

The ONNX file is what every other format is converted from (OpenVINO IR, TFLite), so checking
it checks what the device will be asked to compute. Each rule of ``edgekd.quant.scheme`` is read
back from the graph, not from the PyTorch model:

- weights of Conv/ConvTranspose/Gemm/MatMul: an integer initializer behind a DequantizeLinear of
  the rule's dtype; per channel (one scale per output channel) or per tensor; symmetric (every
  zero point at the symmetric code); every value within the rule's codes (narrow range: none at
  the lowest code; reduce_range: within [-64, 64]);
- activations: every QuantizeLinear of a non-constant tensor has the dtype and symmetry of the
  rule of the op kind that wrote it (walking back over fused ReLU/Clip), and the fixed scale and
  zero point where the scheme fixes one (softmax, sigmoid, tanh, l2_normalize);
- shared scales: a max-pool, average-pool, reshape or concat (as the scheme lists) that is
  re-quantized must keep its input's scale and zero point (all inputs' for concat);
- integer-only targets (``float_fallback: false``): every compute op must read quantized values,
  directly from a DequantizeLinear or through ops that keep a scale (pool, reshape);
- integer-only and full-integer targets (``full_integer: true``: TFLite int8): every compute op
  that reads quantized values must also write quantized values (a QuantizeLinear after it, or
  after the ReLU/Clip fused into it): a BatchNormalization, Sigmoid or Mul left in float between
  two quantized convs is a float kernel the target does not run.

Each violation names the ONNX node, the rule and what the graph has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.quant.scheme import QuantScheme, TensorRule

ONNX_DTYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 21: "uint4", 22: "int4"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
KEEPS_SCALE = {"MaxPool": "max_pool", "Reshape": "reshape", "Flatten": "reshape", "Squeeze": "reshape",
               "Unsqueeze": "reshape", "Transpose": "reshape", "Identity": "reshape", "Dropout": "reshape"}
MOVES_VALUES = {"Slice", "Split", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}  # pick, never compute
SHARED_KINDS = {**KEEPS_SCALE, "AveragePool": "avg_pool", "GlobalAveragePool": "avg_pool", "Concat": "concat"}
FUSED_OPS = {"Relu", "Clip"}
OUTPUT_KINDS = {"Add": "add", "Concat": "concat", "Softmax": "softmax", "Sigmoid": "sigmoid", "Tanh": "tanh",
                "LpNormalization": "l2_normalize"}
NO_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Identity"}


@dataclass
class Violation:
    node: str
    rule: str
    found: str

    def __str__(self) -> str:
        return f"{self.node}: {self.rule}; found {self.found}"


@dataclass
class ValidationResult:
    """Violations of one artifact against one scheme; ``checked`` counts what was looked at."""

    artifact: str
    scheme_runtime: str
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: {"weights": 0, "activations": 0, "shared": 0})

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "scheme_runtime": self.scheme_runtime, "passed": self.passed,
                "checked": dict(self.checked), "violations": [str(v) for v in self.violations]}

    def summary(self) -> str:
        scheme = "the default int8 scheme" if self.scheme_runtime in (None, "", "any") else \
            f"the {self.scheme_runtime} scheme"
        head = (f"{self.artifact}: {'conforms to' if self.passed else 'VIOLATES'} {scheme} "
                f"({self.checked['weights']} weights, {self.checked['activations']} activation "
                f"quantizations, {self.checked['shared']} shared-scale ops checked)")
        return "\n".join([head] + [f"  - {v}" for v in self.violations])


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        graph = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.init_types = {i.name: i.data_type for i in graph.initializer}
        self.nodes = list(graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.inputs = {i.name for i in graph.input}
        self.readers: dict[str, list] = {}
        for n in self.nodes:
            for name in dict.fromkeys(n.input):
                self.readers.setdefault(name, []).append(n)
        self.unit_output: dict[int, str] = {}  # first node of an exact-GELU pattern -> its output
        self.inside: set[int] = set()  # the pattern's other nodes: one GELU kernel with it
        for erf in (n for n in self.nodes if n.op_type == "Erf"):
            self._gelu(erf)

    def _gelu(self, erf) -> None:
        """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5 (torch's exact GELU below opset 20), which
        runtimes fuse into one GELU (the TFLite writer does too)."""
        first = self.producer.get(erf.input[0])
        if first is None or first.op_type not in ("Div", "Mul"):
            return
        chain, node = [erf], erf
        for op in ("Add", "Mul", "Mul"):
            users = self.users(node.output[0])
            if len(users) != 1 or users[0].op_type != op:
                return
            node = users[0]
            chain.append(node)
        self.unit_output[id(first)] = node.output[0]
        self.inside |= {id(n) for n in chain}

    def users(self, name: str) -> list:
        """The nodes that read tensor ``name``."""
        return self.readers.get(name, [])

    def produced_by(self, name: str):
        return self.producer.get(name)

    def const(self, name: str):
        return self.inits.get(name)


def validate_onnx(path: str | Path, scheme: QuantScheme, layers: dict[str, str] | None = None) -> ValidationResult:
    """Check the QDQ ONNX file ``path`` against ``scheme``; returns every violation found.

    ``layers``: per-layer precisions of a mixed-precision model ({module path: float | int8 |
    int4}, as ``edgekd.quant.qat.layer_precisions`` resolves them): those layers are checked
    against their own weight dtype, and a float layer is allowed where the target falls back to
    float. A layer is recognised by the initializer names the exporter gives its weight
    (``<path>.weight``) or weight scale (``<path>.weight_quant.scale``).

    Raises:
        ModelLoadError: the file is missing or not a valid ONNX model.
    """
    from edgekd.export.onnx import check_onnx_file

    g = _Graph(check_onnx_file(path))
    result = ValidationResult(str(path), scheme.runtime)
    for node in g.nodes:
        if node.op_type in WEIGHTED_OPS:
            _check_weights(g, node, scheme, result, layers or {})
        elif node.op_type == "QuantizeLinear" and g.const(node.input[0]) is None:
            _check_activation(g, node, scheme, result)
        if SHARED_KINDS.get(node.op_type) in scheme.shared_scales:
            _check_shared(g, node, result)
        if id(node) in g.inside:
            continue  # checked as the GELU it is part of
        if not scheme.float_fallback and node.op_type not in NO_COMPUTE and not _fused_into_producer(g, node, scheme):
            _check_integer_only(g, node, result)
        if (scheme.full_integer or not scheme.float_fallback) and node.op_type not in (
                NO_COMPUTE | KEEPS_SCALE.keys() | MOVES_VALUES) and SHARED_KINDS.get(node.op_type) not in scheme.shared_scales:
            _check_writes_quantized(g, node, result)  # (an op that keeps its input's scale writes on that grid)
    return result


def _name(node) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _weight_kind(g: _Graph, node, weight: np.ndarray | None) -> str:
    if node.op_type != "Conv":
        return "conv" if node.op_type == "ConvTranspose" else "linear"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return "depthwise_conv" if weight is not None and group > 1 and weight.shape[1] == 1 and group == weight.shape[0] else "conv"


def _check_weights(g: _Graph, node, scheme: QuantScheme, result: ValidationResult,
                   layers: dict[str, str]) -> None:
    if len(node.input) < 2:
        return
    dq = g.produced_by(node.input[1])
    transposed = dq is not None and dq.op_type == "Transpose"  # a Linear on 3-D tensors: MatMul(x, W^T)
    if transposed:
        dq = g.produced_by(dq.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is None:
        if g.const(node.input[1]) is not None:
            result.checked["weights"] += 1
            declared = layers.get(node.input[1].removesuffix(".weight")) == "float"
            if not (declared and scheme.float_fallback):
                result.violations.append(Violation(
                    _name(node), "weights must be integer (QDQ) on this target",
                    "float weights" + (" (a float layer on an integer-only target)" if declared else "")))
        return  # otherwise a product of two activations: no weight
    q = g.const(dq.input[0])
    kind = _weight_kind(g, node, q)
    rule = scheme.weight_rule(kind).with_precision(layers.get(dq.input[1].removesuffix(".weight_quant.scale")))
    result.checked["weights"] += 1
    where = f"{_name(node)} ({kind} weights)"
    dtype = ONNX_DTYPES.get(g.init_types[dq.input[0]], f"type {g.init_types[dq.input[0]]}")
    if dtype != rule.dtype:
        result.violations.append(Violation(where, f"weights must be {rule.dtype}", dtype))
    scale = g.const(dq.input[1])
    zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int64)
    channels = q.shape[1] if node.op_type in ("Gemm", "MatMul") and not _trans_b(node) and not transposed else q.shape[0]
    per_channel = scale is not None and scale.size > 1
    if rule.per_channel and not per_channel and channels > 1:
        result.violations.append(Violation(where, "weights must be per-channel", "one scale per tensor"))
    if not rule.per_channel and per_channel:
        result.violations.append(Violation(where, "weights must be per-tensor", f"{scale.size} scales"))
    _check_symmetry(where, "weights", rule, zp, result)
    qmin, qmax = rule.qrange()
    if q.size and (int(q.min()) < qmin or int(q.max()) > qmax):
        why = (" (reduce_range: 7-bit weights, or x86 int8 kernels without VNNI saturate)" if rule.reduces_range
               else " (narrow range)" if rule.narrow_range and rule.signed else "")
        result.violations.append(Violation(where, f"weights must lie in [{qmin}, {qmax}]{why}",
                                           f"values in [{int(q.min())}, {int(q.max())}]"))


def _trans_b(node) -> bool:
    return node.op_type == "Gemm" and next((a.i for a in node.attribute if a.name == "transB"), 0) == 1


def _check_symmetry(where: str, what: str, rule: TensorRule, zp: np.ndarray, result: ValidationResult) -> None:
    if rule.symmetric and np.any(zp.astype(np.int64) != rule.symmetric_zero_point()):
        result.violations.append(Violation(where, f"{what} must be symmetric (zero point "
                                                  f"{rule.symmetric_zero_point()})",
                                           f"zero point(s) {sorted(set(zp.reshape(-1).tolist()))[:4]}"))


def _writer_kind(g: _Graph, name: str) -> tuple[str, object]:
    """The op kind whose output ``name`` is (fused ReLU/Clip belong to the op before them)."""
    if name in g.inputs:
        return "input", None
    node = g.produced_by(name)
    if node is None:
        return "activation", None
    if node.op_type in FUSED_OPS:
        before = g.produced_by(node.input[0])
        if before is not None and before.op_type in WEIGHTED_OPS | {"Add"}:
            node = before
    if node.op_type in WEIGHTED_OPS:
        dq = g.produced_by(node.input[1]) if len(node.input) > 1 else None
        weight = g.const(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else g.const(node.input[1])
        return _weight_kind(g, node, weight), node
    return OUTPUT_KINDS.get(node.op_type, "activation"), node


def _check_activation(g: _Graph, q, scheme: QuantScheme, result: ValidationResult) -> None:
    kind, writer = _writer_kind(g, q.input[0])
    rule = scheme.activation_rule(kind)
    result.checked["activations"] += 1
    where = f"{_name(q)} (output of {kind}{'' if writer is None else ' ' + repr(writer.name or writer.output[0])})"
    zp_name = q.input[2] if len(q.input) > 2 and q.input[2] else None
    dtype = ONNX_DTYPES.get(g.init_types.get(zp_name), "uint8") if zp_name else "uint8"  # ONNX default
    if dtype != rule.dtype:
        result.violations.append(Violation(where, f"activations must be {rule.dtype}", dtype))
    zp = g.const(zp_name) if zp_name else np.zeros(1, np.int64)
    scale = g.const(q.input[1])
    _check_symmetry(where, "activations", rule, np.asarray(zp), result)
    fixed = scheme.fixed_output(kind)
    if fixed is not None and scale is not None and (
            not np.isclose(float(scale.reshape(-1)[0]), fixed[0], rtol=1e-6) or int(np.asarray(zp).reshape(-1)[0]) != fixed[1]):
        result.violations.append(Violation(where, f"{kind} output must be fixed at scale {fixed[0]:g}, "
                                                  f"zero point {fixed[1]}",
                                           f"scale {float(scale.reshape(-1)[0]):g}, zero point "
                                           f"{int(np.asarray(zp).reshape(-1)[0])}"))


def _qparams_of(g: _Graph, name: str):
    """(scale, zero point) a tensor is dequantized with, following scale-keeping ops back."""
    node = g.produced_by(name)
    while node is not None and node.op_type in KEEPS_SCALE:
        node = g.produced_by(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return None
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int64)
    return g.const(node.input[1]), zp


def _check_shared(g: _Graph, node, result: ValidationResult) -> None:
    q = _requantizer(g, node.output[0])
    if q is None:
        return  # not re-quantized: the output keeps its input's scale by construction
    out = (g.const(q.input[1]), g.const(q.input[2]) if len(q.input) > 2 else np.zeros(1))
    inputs = node.input if node.op_type == "Concat" else node.input[:1]
    result.checked["shared"] += 1
    for name in inputs:
        got = _qparams_of(g, name)
        if got is None or got[0] is None or out[0] is None:
            continue
        if not (np.allclose(got[0], out[0], rtol=1e-6) and np.array_equal(np.asarray(got[1]).reshape(-1),
                                                                          np.asarray(out[1]).reshape(-1))):
            result.violations.append(Violation(
                _name(node), f"{SHARED_KINDS[node.op_type]} must keep one scale for inputs and output",
                f"input {name!r} at scale {float(np.asarray(got[0]).reshape(-1)[0]):g}, output at "
                f"{float(np.asarray(out[0]).reshape(-1)[0]):g}"))


def _requantizer(g: _Graph, name: str):
    """The QuantizeLinear that re-quantizes ``name``, following scale-keeping ops forward."""
    while True:
        users = g.users(name)
        if len(users) != 1:
            return None
        if users[0].op_type == "QuantizeLinear":
            return users[0]
        if users[0].op_type not in KEEPS_SCALE:
            return None
        name = users[0].output[0]


def _fused_into_producer(g: _Graph, node, scheme: QuantScheme) -> bool:
    """A Relu/Clip the runtime fuses into the conv/linear before it (its output re-quantized):
    it reads the accumulator inside the kernel, never a float tensor."""
    if node.op_type not in FUSED_OPS or not scheme.fuse:
        return False
    producer = g.produced_by(node.input[0])
    users = g.users(node.output[0])
    return (producer is not None and producer.op_type in WEIGHTED_OPS
            and len(users) == 1 and users[0].op_type == "QuantizeLinear")


def _check_integer_only(g: _Graph, node, result: ValidationResult) -> None:
    for i, name in enumerate(node.input):
        if not name or g.const(name) is not None:
            continue
        if node.op_type in WEIGHTED_OPS and i > 0:
            continue  # weights are checked by _check_weights
        producer = g.produced_by(name)
        if producer is not None and producer.op_type in ("Constant", "Shape"):
            continue
        if _qparams_of(g, name) is None:
            result.violations.append(Violation(_name(node), "integer-only target: every op must read "
                                                            "quantized values", f"float input {name!r}"))
            return


def _is_channel_scale(g: _Graph, node) -> bool:
    """A Mul by a constant: with the constant Add after it, a per-channel affine (a LayerNorm's
    gamma and beta) that full-integer TFLite computes as one 1x1 depthwise convolution."""
    consts = [g.const(i) for i in node.input if g.const(i) is not None]
    return (node.op_type == "Mul" and len(consts) == 1
            and all(d == 1 for d in np.shape(consts[0])[:-1]))  # (per channel of the last axis)


def _check_writes_quantized(g: _Graph, node, result: ValidationResult) -> None:
    """An op that reads quantized values writes them too (through a fused ReLU/Clip and ops
    that keep the scale)."""
    if not any(name and g.const(name) is None and _qparams_of(g, name) is not None for name in node.input):
        return  # not between quantized values (shape arithmetic, a float region's inside)
    out = g.unit_output.get(id(node), node.output[0])
    users = g.users(out)
    if (len(users) == 1 and (node.op_type in WEIGHTED_OPS or _is_channel_scale(g, node)) and users[0].op_type == "Add"
            and any(g.const(i) is not None for i in users[0].input)):
        # a 3-D Linear (MatMul, then its bias), or a per-channel x * gamma + beta (one depthwise op)
        out = users[0].output[0]
        users = g.users(out)
    if len(users) == 1 and users[0].op_type in FUSED_OPS:
        out = users[0].output[0]
    if _requantizer(g, out) is None:
        result.violations.append(Violation(_name(node), "this target runs it on integers: its output must be "
                                                        "quantized (a QuantizeLinear after it)",
                                           "a float output; QAT/PTQ with this target quantizes it"))


__all__ = ["ValidationResult", "Violation", "validate_onnx"]
