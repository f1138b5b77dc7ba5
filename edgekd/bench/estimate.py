"""Estimates before any device: per-layer MACs, parameters, weight bytes, peak activation memory,
and a roofline latency, read from an ONNX file (float or QDQ int8/int4).

Everything here is *estimated* and labelled so in every output:

- **MACs** of Conv (N x Cout x Hout x Wout x Cin/groups x kH x kW), ConvTranspose, Gemm/MatMul
  (M x N x K); other compute ops count their output elements as operations.
- **Weights**: parameter count and bytes as stored (int8/uint8: 1 byte, int4: 1/2, float: 4), read
  from the initializer behind each DequantizeLinear.
- **Activations**: a QuantizeLinear -> DequantizeLinear pair marks its tensor as stored in the
  integer type (1 byte, or 2 for 16 bits), others are float32. An activation right after a
  conv/linear (ReLU, Clip, ...) is fused into it and reshape-like ops are views, as runtimes
  do, so neither holds a tensor of its own. Running the compute nodes in
  the file's (topological) order, a tensor lives from the node that writes it to the last node
  that reads it; the peak of the summed live bytes is the activation arena a runtime that
  frees tensors as early as possible needs (Q/DQ nodes are annotations, not tensors).
- **Roofline latency** (Williams et al. 2009): each layer takes max(ops / peak ops, bytes moved
  / memory bandwidth), with peak int8 ops for layers whose inputs are quantized and peak fp32
  otherwise, bytes moved = its input and output activations plus its weights; plus the
  profile's fixed per-inference runtime overhead. The peaks come from the target profile's
  ``compute:`` section (datasheet figures), so the estimate is a lower bound a real kernel
  approaches, not a measurement; ``benchmarks/harness_fidelity.py`` states its error on this
  machine's CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekd.config import Config, FieldError

DTYPE_BYTES = {1: 4.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 2.0, 6: 4.0, 7: 8.0, 10: 2.0, 11: 8.0, 16: 2.0,
               21: 0.5, 22: 0.5}  # ONNX TensorProto type -> bytes per element
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ANNOTATIONS = ("QuantizeLinear", "DequantizeLinear", "Constant", "Identity", "Shape")
VIEWS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout")  # no data moved
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "HardSwish")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")  # seq x batch x (W + R elements) MACs
# ops whose cost is about one operation per output element (element-wise, pooling, normalisation,
# data movement): the estimate counts their output elements. Anything else that is not a MAC,
# recurrent or Einsum node is *unmodeled*: the MAC total is then marked incomplete.
ELEMENT_OPS = frozenset("""
    Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization BitShift Cast CastLike Ceil Celu Clip
    Compress Concat ConstantOfShape Cos CumSum DepthToSpace Div Dropout Elu Equal Erf Exp Expand Flatten Floor Gather
    GatherElements GatherND Gelu GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization
    HardSigmoid HardSwish Hardmax InstanceNormalization IsInf IsNaN LRN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax LpNormalization LpPool MaxPool Max Mean Min Mish Mod Mul Neg NonZero Not OneHot Or PRelu Pad Pow Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shrink Sigmoid Sign Sin Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor""".split())


@dataclass
class ComputeSpec(Config):
    """A device's peak throughput, as a target profile's ``compute:`` section states it.

    Attributes:
        peak_gops_int8: integer operations per second, in 1e9 (a MAC is 2 operations).
        peak_gflops_fp32: float operations per second, in 1e9.
        memory_bandwidth_gbps: bytes per second between memory and the compute units, in 1e9.
        overhead_us: fixed cost of one inference call (dispatch, input/output copies) per
            runtime, in µs, e.g. ``{onnxruntime: 30, litert: 12}``: measured, as it depends on
            the runtime, not the device.
        source: where the figures come from (datasheet, vendor page, measured).
    """

    peak_gops_int8: float
    peak_gflops_fp32: float
    memory_bandwidth_gbps: float
    overhead_us: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        for name in ("peak_gops_int8", "peak_gflops_fp32", "memory_bandwidth_gbps"):
            if not getattr(self, name) > 0:
                raise FieldError(name, f"must be > 0, got {getattr(self, name)}")
        for runtime, value in self.overhead_us.items():
            if value < 0:
                raise FieldError(f"overhead_us.{runtime}", f"must be >= 0, got {value}")


@dataclass
class LayerEstimate:
    name: str
    op: str
    macs: int
    ops: int                # 2 x MACs for MAC ops, output elements otherwise
    params: int
    weight_bytes: float
    activation_bytes: float  # inputs read + output written
    integer: bool           # reads quantized activations (runs on the int8 peak)
    latency_us: float = 0.0
    bound: str = ""          # "compute" or "memory"


@dataclass
class Estimate:
    """The estimate of one artifact on one target (all figures estimated, never measured)."""

    artifact: str
    target: str
    layers: list[LayerEstimate] = field(default_factory=list)
    peak_activation_bytes: float = 0.0
    compute: dict = field(default_factory=dict)
    runtime: str = ""
    overhead_us: float = 0.0
    unmodeled: dict[str, int] = field(default_factory=dict)  # op type -> nodes whose work is not counted
    float_on_integer_only: list[str] = field(default_factory=list)  # float MAC layers a target cannot run

    @property
    def macs(self) -> int:
        """MACs of the layers the estimator models (see ``complete``)."""
        return sum(layer.macs for layer in self.layers)

    @property
    def complete(self) -> bool:
        """Every compute node's work is modelled (no ``unmodeled`` op): ``macs`` is the total."""
        return not self.unmodeled

    def unmodeled_text(self) -> str:
        return ", ".join(f"{op} x{n}" for op, n in sorted(self.unmodeled.items()))

    def mac_fields(self) -> dict:
        """What a report entry records of the MAC count: ``macs`` (None when incomplete, so a
        ``max_macs`` budget says "not measured") and ``macs_unmodeled`` naming the ops left out."""
        if self.complete:
            return {"macs": self.macs}
        return {"macs": None, "macs_unmodeled": self.unmodeled_text()}

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def weight_bytes(self) -> float:
        return sum(layer.weight_bytes for layer in self.layers)

    @property
    def latency_ms(self) -> float:
        return (sum(layer.latency_us for layer in self.layers) + self.overhead_us) / 1e3

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "target": self.target, "runtime": self.runtime, "estimated": True,
                "overhead_us": self.overhead_us, "macs": self.macs if self.complete else None,
                "macs_counted": self.macs, "unmodeled_ops": dict(self.unmodeled),
                "float_on_integer_only": list(self.float_on_integer_only),
                "params": self.params, "weight_bytes": self.weight_bytes,
                "peak_activation_bytes": self.peak_activation_bytes, "latency_ms": self.latency_ms,
                "compute": dict(self.compute), "layers": [asdict(layer) for layer in self.layers]}

    def on(self, compute: ComputeSpec, target: str = "", runtime: str = "", integer_only: bool = False) -> Estimate:
        """This analysis on a device with ``compute``: each layer's roofline latency,
        max(ops / peak, bytes moved / bandwidth), plus ``runtime``'s call overhead. On an
        ``integer_only`` device (a scheme with ``float_fallback: false``) float MAC layers cannot
        run at all: they are listed in ``float_on_integer_only`` and the latency is not stated."""
        layers = [replace(layer) for layer in self.layers]
        for layer in layers:
            flops_peak = compute.peak_gops_int8 if layer.integer else compute.peak_gflops_fp32
            t_compute = layer.ops / (flops_peak * 1e9) * 1e6
            t_memory = (layer.activation_bytes + layer.weight_bytes) / (compute.memory_bandwidth_gbps * 1e9) * 1e6
            layer.latency_us = max(t_compute, t_memory)
            layer.bound = "compute" if t_compute >= t_memory else "memory"
        blocked = [f"{layer.op} {layer.name!r}" for layer in layers if integer_only and layer.macs
                   and not layer.integer]
        return Estimate(self.artifact, target, layers, self.peak_activation_bytes, compute.to_dict(), runtime=runtime,
                        overhead_us=compute.overhead_us.get(runtime, 0.0), unmodeled=dict(self.unmodeled),
                        float_on_integer_only=blocked)

    def not_runnable(self) -> str | None:
        """Why this model cannot run on the estimated target at all, or None."""
        if not self.float_on_integer_only:
            return None
        shown = ", ".join(self.float_on_integer_only[:5]) + (", ..." if len(self.float_on_integer_only) > 5 else "")
        return (f"target {self.target!r} runs integer kernels only, but {len(self.float_on_integer_only)} layer(s) "
                f"compute in float ({shown}); quantize the model for it first (edgekd ptq MODEL.pt --target "
                f"{self.target})")

    def record_into(self, entry) -> None:
        """Write this estimate into a report ``Entry``: latency and info labelled estimated. A
        model the target cannot run gets no latency; an incomplete MAC count gets no ``macs``
        (budgets on them then fail as not measured, with the reason)."""
        blocked = self.not_runnable()
        entry.latency = None if blocked else {"p50_ms": self.latency_ms, "estimated": True}
        entry.info.update(estimated=True, estimate={k: v for k, v in self.to_dict().items() if k != "layers"},
                          weight_bytes=self.weight_bytes, peak_activation_bytes=self.peak_activation_bytes,
                          **self.mac_fields())
        if blocked:
            entry.info["not_runnable"] = blocked

    def table(self, top: int | None = None) -> str:
        rows = sorted(self.layers, key=lambda layer: -layer.latency_us)[:top] if top else self.layers
        lines = [f"ESTIMATED for target {self.target} (roofline from the profile's compute figures; not a measurement)",
                 f"{'layer':40s} {'op':14s} {'MACs':>12s} {'params':>9s} {'weights':>10s} {'int8':>5s} "
                 f"{'est. µs':>9s} {'bound':>7s}"]
        for layer in rows:
            lines.append(f"{layer.name[:40]:40s} {layer.op:14s} {layer.macs:12,d} {layer.params:9,d} "
                         f"{_bytes(layer.weight_bytes):>10s} {'yes' if layer.integer else 'no':>5s} "
                         f"{layer.latency_us:9.2f} {layer.bound:>7s}")
        if not self.complete:
            lines.append(f"INCOMPLETE: the estimator does not model {self.unmodeled_text()}; their MACs and time "
                         f"are not in the totals below")
        blocked = self.not_runnable()
        if blocked:
            lines.append(f"CANNOT RUN: {blocked}")
        lines.append(f"total: {self.macs:,d} MACs{'' if self.complete else ' counted (incomplete)'}, "
                     f"{self.params:,d} parameters, weights "
                     f"{_bytes(self.weight_bytes)}, peak activations {_bytes(self.peak_activation_bytes)}, "
                     f"estimated latency {self.latency_ms * 1e3:.1f} µs "
                     f"(incl. {self.overhead_us:g} µs {self.runtime or 'runtime'} call overhead)")
        return "\n".join(lines)


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB" if n >= 1e3 else f"{n:.0f} B"


def analyze(path: str | Path) -> Estimate:
    """MACs, parameters, weight bytes and peak activation memory of an ONNX file (batch 1), with
    no device assumed (latencies 0): ``.on(compute)`` adds the roofline of a target, so a file is
    parsed once for any number of targets.

    Raises:
        ModelLoadError: the file is missing or not a valid ONNX model.
        EstimateError: a tensor's shape cannot be inferred (dynamic shapes other than the batch).
    """
    import onnx

    from edgekd.errors import EstimateError
    from edgekd.export.onnx import check_onnx_file

    model = check_onnx_file(path)
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.dim_value:
                dim.dim_value = 1  # batch 1
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = _Graph(model)
    layers, live, peak = [], {}, 0.0
    last_use = graph.last_use()
    for name in graph.inputs:
        live[name] = graph.activation_bytes(name)
    for step, node in enumerate(graph.compute_nodes()):
        layers.append(graph.layer(node))
        for out in node.output:
            if out:
                live[out] = graph.activation_bytes(out)
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= step and n not in graph.outputs]:
            del live[name]
    if not layers:
        raise EstimateError(f"{path}: no compute node found")
    unmodeled: dict[str, int] = {}
    for node, layer in zip(graph.compute_nodes(), layers):
        counted = node.op_type in ELEMENT_OPS or node.op_type in MAC_OPS + RECURRENT_OPS or (
            node.op_type == "Einsum" and layer.macs > 0)  # an Einsum with '...' is not counted
        if not counted:
            unmodeled[node.op_type] = unmodeled.get(node.op_type, 0) + 1
    return Estimate(str(path), "", layers, peak, unmodeled=unmodeled)


def estimate_onnx(path: str | Path, compute: ComputeSpec, target: str = "", runtime: str = "") -> Estimate:
    """Estimate ``path`` (ONNX, batch 1) on a device with ``compute`` (see the module docstring),
    adding ``runtime``'s call overhead when the profile states one.

    Raises:
        ModelLoadError: the file is missing or not a valid ONNX model.
        EstimateError: a tensor's shape cannot be inferred (dynamic shapes other than the batch).
    """
    return analyze(path).on(compute, target, runtime)


class _Graph:
    """The compute view of a (QDQ) ONNX graph: Q/DQ pairs become the dtype of their tensor."""

    def __init__(self, model):
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.values = {v.name: v for v in list(g.value_info) + list(g.input) + list(g.output)}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = {o.name for o in g.output}
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        # tensors stored as integers: the input of a QuantizeLinear (and the DQ output, its alias)
        self.alias: dict[str, str] = {}  # DQ output -> the float tensor that was quantized
        self.quantized_bytes: dict[str, float] = {}
        for node in self.nodes:
            if node.op_type == "QuantizeLinear" and node.input[0] not in self.inits:
                zp = node.input[2] if len(node.input) > 2 else ""
                width = DTYPE_BYTES.get(self.inits[zp].data_type, 1.0) if zp in self.inits else 1.0
                self.quantized_bytes[node.input[0]] = width
        consumers: dict[str, int] = {}
        for node in self.nodes:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
        self.fused = set()  # activation nodes run inside the conv/linear before them
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.input[0] in self.producer:
                q = self.producer[node.input[0]]
                if q.op_type == "QuantizeLinear":
                    self.alias[node.output[0]] = self._resolve(q.input[0])
            elif node.op_type in VIEWS and node.input and node.output[0] not in self.outputs:
                self.alias[node.output[0]] = self._resolve(node.input[0])
            elif node.op_type in FUSED_ACTIVATIONS and consumers.get(node.input[0]) == 1:
                source = self.producer.get(self._resolve(node.input[0]))
                if source is not None and source.op_type in MAC_OPS:
                    self.fused.add(id(node))
                    self.alias[self._resolve(node.input[0])] = node.output[0]  # one tensor: the output
        for name, width in list(self.quantized_bytes.items()):  # a view quantized (Flatten -> Q) is
            self.quantized_bytes.setdefault(self._resolve(name), width)  # its source stored as integers

    def _resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def compute_nodes(self):
        return [n for n in self.nodes if n.op_type not in ANNOTATIONS + VIEWS and id(n) not in self.fused
                and not self._is_constant(n)]

    def _is_constant(self, node) -> bool:
        return all(i in self.inits or not i for i in node.input) and node.op_type not in MAC_OPS

    def last_use(self) -> dict[str, int]:
        last = {}
        for step, node in enumerate(self.compute_nodes()):
            for name in node.input:
                last[self._resolve(name)] = step
        return last

    def shape(self, name: str) -> list[int]:
        """The tensor's own shape (a view's, not its source's), else its source's."""
        if name in self.inits:
            return list(self.inits[name].dims)
        value = self.values.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            name = self._resolve(name)
            value = self.values.get(name)
        if name in self.inits:
            return list(self.inits[name].dims)
        if value is None or not value.type.tensor_type.HasField("shape"):
            from edgekd.errors import EstimateError

            raise EstimateError(f"the shape of tensor {name!r} cannot be inferred; export the model "
                                f"with static shapes (only the batch may be dynamic)")
        return [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]

    def elements(self, name: str) -> int:
        return int(np.prod(self.shape(name), dtype=np.int64))

    def activation_bytes(self, name: str) -> float:
        name = self._resolve(name)
        return self.elements(name) * self.quantized_bytes.get(name, 4.0)

    def weight(self, name: str) -> tuple[int, float]:
        """(parameters, stored bytes) of a constant operand, looking through a DequantizeLinear."""
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.inits:
            init = self.inits[node.input[0]]
        elif name in self.inits:
            init = self.inits[name]
        else:
            return 0, 0.0
        count = int(np.prod(init.dims, dtype=np.int64))
        return count, count * DTYPE_BYTES.get(init.data_type, 4.0)

    def is_constant(self, name: str) -> bool:
        node = self.producer.get(name)
        return name in self.inits or (node is not None and node.op_type == "DequantizeLinear"
                                      and node.input[0] in self.inits)

    def layer(self, node) -> LayerEstimate:
        acts = [i for i in node.input if i and not self.is_constant(i)]
        consts = [i for i in node.input if i and self.is_constant(i)]
        params, wbytes = 0, 0.0
        for name in consts:
            p, b = self.weight(name)
            params, wbytes = params + p, wbytes + b
        out = node.output[0]
        macs = self._macs(node, acts, out)
        ops = 2 * macs if macs else self.elements(out)
        act_bytes = sum(self.activation_bytes(a) for a in acts) + self.activation_bytes(out)
        integer = bool(acts) and all(self._resolve(a) in self.quantized_bytes for a in acts)
        return LayerEstimate(node.name or f"{node.op_type}_{id(node)}", node.op_type, macs, ops, params,
                             wbytes, act_bytes, integer)

    def _macs(self, node, acts: list[str], out: str) -> int:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv":
            w = self.shape(node.input[1])  # (Cout, Cin/groups, kH, kW...)
            return self.elements(out) * int(np.prod(w[1:], dtype=np.int64))
        if node.op_type == "ConvTranspose":
            w = self.shape(node.input[1])  # (Cin, Cout/groups, kH, kW...)
            return self.elements(node.input[0]) * int(np.prod(w[1:], dtype=np.int64))
        if node.op_type == "Gemm":
            a = self.shape(node.input[0])
            k = a[0] if attrs.get("transA") and attrs["transA"].i else a[-1]
            return self.elements(out) * k
        if node.op_type == "MatMul":
            return self.elements(out) * self.shape(node.input[0])[-1]
        if node.op_type in RECURRENT_OPS:  # X (seq, batch, in); W (dirs, gates*H, in); R (dirs, gates*H, H)
            x = self.shape(node.input[0])
            steps = x[0] * x[1]  # seq x batch (layout 1: batch x seq, the same product)
            return steps * (int(np.prod(self.shape(node.input[1]), dtype=np.int64))
                            + int(np.prod(self.shape(node.input[2]), dtype=np.int64)))
        if node.op_type == "Einsum":  # every combination of every index is one multiply-add
            equation = attrs["equation"].s.decode().replace(" ", "")
            terms = equation.split("->")[0].split(",")
            sizes: dict[str, int] = {}
            for term, name in zip(terms, node.input):
                if "..." in term:
                    return 0  # broadcast dims: left to the unmodeled count
                for letter, dim in zip(term, self.shape(name)):
                    sizes[letter] = max(sizes.get(letter, 1), dim)
            return int(np.prod(list(sizes.values()), dtype=np.int64))
        return 0


__all__ = ["ComputeSpec", "Estimate", "LayerEstimate", "analyze", "estimate_onnx"]
