"""Export to ONNX, with int8 weights stored as int8.

Float and frozen-QAT models go through ``torch.onnx.export`` (the TorchScript exporter: it maps
``torch.fake_quantize_*`` to QuantizeLinear/DequantizeLinear with constant scales; the dynamo
exporter does not handle these ops). The exporter leaves each weight as a float initializer
feeding QuantizeLinear; ``store_int8_weights`` replaces every such pair by the int8 initializer
the runtime would compute (round half to even, saturate, as the ONNX spec says), so the file on
disk holds one byte per weight and onnxruntime/OpenVINO see ordinary QDQ weights. 4-bit
weights (W4A8) are stored packed, two per byte, as ONNX INT4/UINT4 (opset 21): onnxruntime and
OpenVINO read them and dequantize them for a float convolution (on x86 there is no int4 x int8
conv kernel), so the file shrinks but the arithmetic is unchanged. 16-bit activations (e.g.
QNN HTP's uint16) become int16/uint16 QuantizeLinear/DequantizeLinear pairs at opset 21.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgekd import atomic
from edgekd.errors import ExportError, ModelLoadError
from edgekd.tasks.spec import METADATA_KEY, TensorSpec, specs_to_json


def export_onnx(model: torch.nn.Module, path: str | Path,
                inputs: tuple[int, ...] | Sequence[TensorSpec], *, outputs: Sequence[TensorSpec] | None = None,
                opset: int = 17) -> Path:
    """Write ``model`` (eval mode) to ``path`` with its inputs' named dynamic axes; check it loads.

    Args:
        inputs: the task's input specs (``Task.input_spec``: names, dtypes, named dynamic axes),
            or the sample shape (C, H, W) of a one-image model (input ``input``, batch dynamic).
        outputs: the output specs (default: one output ``logits`` with a dynamic batch).

    The specs are also written to the file's metadata (``edgekd.inputs``), so a benchmark of the
    file knows its axis names and value ranges (token ids within the vocabulary).

    Raises:
        ExportError: PyTorch could not export an operator (named in the message).
    """
    specs = _input_specs(inputs)
    outputs = list(outputs) if outputs else [TensorSpec("logits", "float32", ("batch", None))]
    model = model.eval()
    trace_axes = {axis: TRACE_LENGTH for spec in specs for i, axis in spec.dynamic_axes().items() if i > 0}
    example = tuple(torch.from_numpy(np.zeros(spec.bind(trace_axes, batch=1), np.dtype(spec.dtype)))
                    for spec in specs)
    dynamic = {s.name: s.dynamic_axes() for s in [*specs, *outputs] if s.dynamic_axes()}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, buffer, dynamo=False, opset_version=opset,
                              input_names=[s.name for s in specs], output_names=[s.name for s in outputs],
                              dynamic_axes=dynamic,
                              custom_opsets={CUSTOM_DOMAIN: 1} if _has_16bit_activations(model) else None)
    except Exception as err:  # torch raises several types; all mean "this op did not export"
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    graph = onnx.load_from_string(buffer.getvalue())
    inline_constant_identities(graph)
    drop_float_casts(graph)
    graph = expand_16bit_fake_quant(graph)
    store_int8_weights(graph)
    four_bit = _four_bit_scales(model)
    if four_bit:
        graph = pack_4bit_weights(graph, four_bit)
    requantize_scale_keeping_outputs(graph)
    onnx.helper.set_model_props(graph, {METADATA_KEY: specs_to_json(specs)})
    onnx.checker.check_model(graph)
    return atomic.write_bytes(path, graph.SerializeToString())


TRACE_LENGTH = 8  # length of the non-batch dynamic axes in the example the exporter traces


def _input_specs(inputs) -> list[TensorSpec]:
    """Input specs from a task's specs, or from the (C, H, W) of a one-image model."""
    inputs = list(inputs)
    if inputs and all(isinstance(d, int) for d in inputs):
        return [TensorSpec("input", "float32", ("batch", *inputs), 0.0, 1.0)]
    if not inputs or not all(isinstance(s, TensorSpec) for s in inputs):
        raise ExportError(f"export needs the model's input specs (Task.input_spec) or a sample shape "
                          f"(C, H, W); got {inputs!r}")
    return inputs


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Drop Identity nodes over initializers (the exporter adds them for shared constants), so
    every QDQ scale and zero point is visibly an initializer. Returns how many were removed."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    return _bypass(graph, "Identity", alias)


def _bypass(graph: onnx.GraphProto, op_type: str, alias: dict[str, str]) -> int:
    """Remove the ``op_type`` nodes whose output is in ``alias`` (output -> the tensor to read
    instead), rewiring their readers through chains of them. Returns how many went."""
    keep = [n for n in graph.node if not (n.op_type == op_type and n.output[0] in alias)]
    for node in keep:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


def drop_float_casts(model: onnx.ModelProto) -> int:
    """Remove Casts from float32 to float32 (``x.float()``, ``x.to(x.dtype)``, as timm's
    attention under ``autocast(enabled=False)`` exports): between a DequantizeLinear and a MatMul
    or Conv such a Cast keeps onnxruntime from fusing the int8 kernel. Returns how many."""
    graph = model.graph
    try:
        types = {vi.name: vi.type.tensor_type.elem_type
                 for vi in [*onnx.shape_inference.infer_shapes(model).graph.value_info, *graph.input]}
    except Exception:  # inference is best effort: without types nothing is dropped
        return 0
    outputs = {o.name for o in graph.output}
    float32 = onnx.TensorProto.FLOAT
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Cast" and n.output[0] not in outputs and types.get(n.input[0]) == float32
             and next((a.i for a in n.attribute if a.name == "to"), None) == float32}
    return _bypass(graph, "Cast", alias)


def store_int8_weights(model: onnx.ModelProto) -> int:
    """Fold QuantizeLinear(constant float weight) into an int8 initializer; returns how many."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in graph.node:
        ins = list(node.input)
        if (node.op_type == "QuantizeLinear" and len(ins) >= 3 and all(n in inits for n in ins[:3])
                and consumers.get(ins[0]) == 1):
            w, scale, zp = (numpy_helper.to_array(inits[n]) for n in ins[:3])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and w.ndim > 1:
                shape = [1] * w.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(w / scale) + zp.astype(np.int64), info.min, info.max).astype(zp.dtype)
            graph.initializer.remove(inits[ins[0]])
            graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return folded


def _has_16bit_activations(model: torch.nn.Module) -> bool:
    """Whether a quantizer in ``model`` uses codes beyond 8 bits (it exports as edgekd::FakeQuantize16)."""
    return any(getattr(m, "qmin", 0) < -128 or getattr(m, "qmax", 0) > 255 for m in model.modules()
               if not hasattr(m, "export_range"))  # weight quantizers declare 8-bit ranges


def _four_bit_scales(model: torch.nn.Module) -> dict[str, str]:
    """{scale initializer name: "int4"/"uint4"} of the 4-bit weight quantizers in ``model`` (the
    TorchScript exporter names a buffer's initializer by its module path)."""
    return {f"{name}.scale": module.dtype for name, module in model.named_modules()
            if getattr(module, "dtype", None) in FOUR_BIT and hasattr(module, "export_range")}


FOUR_BIT = ("int4", "uint4")
FOUR_BIT_OPSET = SIXTEEN_BIT_OPSET = 21  # QuantizeLinear/DequantizeLinear take int4 and int16 from 21
CUSTOM_DOMAIN = "edgekd"


def _at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < opset:
        model = version_converter.convert_version(model, opset)
    model.ir_version = max(model.ir_version, 10)
    return model


def expand_16bit_fake_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each ``edgekd::FakeQuantize16`` node (16-bit activation fake-quant, see
    ``edgekd.quant.fake_quant``) by QuantizeLinear -> DequantizeLinear with an int16 or uint16
    zero point, at opset 21. Returns the model (unchanged when it has no such node)."""
    if not any(n.domain == CUSTOM_DOMAIN for n in model.graph.node):
        return model
    model = _at_least_opset(model, SIXTEEN_BIT_OPSET)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.domain != CUSTOM_DOMAIN:
            nodes.append(node)
            continue
        x, scale, zp = node.input
        attrs = {a.name: a.i for a in node.attribute}
        if zp not in inits:
            raise ExportError(f"node {node.name}: the 16-bit zero point {zp!r} is not a constant; "
                              f"freeze the quantizers before export")
        dtype = np.uint16 if attrs["qmin"] >= 0 else np.int16
        zp16 = f"{node.output[0]}/zero_point"
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[zp]).astype(dtype), zp16))
        q = f"{node.output[0]}/quantized"
        nodes += [onnx.helper.make_node("QuantizeLinear", [x, scale, zp16], [q], name=f"{node.name}/QuantizeLinear"),
                  onnx.helper.make_node("DequantizeLinear", [q, scale, zp16], [node.output[0]],
                                        name=f"{node.name}/DequantizeLinear")]
    del graph.node[:]
    graph.node.extend(nodes)
    for opset in [o for o in model.opset_import if o.domain == CUSTOM_DOMAIN]:
        model.opset_import.remove(opset)
    _drop_unused_initializers(graph)
    return model


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def pack_4bit_weights(model: onnx.ModelProto, scales: dict[str, str]) -> onnx.ModelProto:
    """Store the weights dequantized with a scale in ``scales`` as packed int4/uint4 (two values
    per byte, ONNX INT4/UINT4) instead of int8 codes, and raise the opset to 21, which
    DequantizeLinear needs for 4-bit inputs. Returns the converted model.

    Raises:
        ExportError: a 4-bit weight holds a code outside the 4-bit range, or none was found.
    """
    import ml_dtypes

    model = _at_least_opset(model, FOUR_BIT_OPSET)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    packed = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[1] not in scales:
            continue
        if node.input[0] not in inits:
            continue
        kind = scales[node.input[1]]
        dtype = ml_dtypes.int4 if kind == "int4" else ml_dtypes.uint4
        lo, hi = (-8, 7) if kind == "int4" else (0, 15)
        codes, zp = numpy_helper.to_array(inits[node.input[0]]), numpy_helper.to_array(inits[node.input[2]])
        if codes.size and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ExportError(f"node {node.name}: {kind} weights hold codes in [{int(codes.min())}, "
                              f"{int(codes.max())}], outside [{lo}, {hi}]")
        graph.initializer.remove(inits[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(codes.astype(dtype), node.input[0]))
        zp_name = f"{node.input[0]}/zero_point_{kind}"  # zero points may be shared with 8-bit nodes
        graph.initializer.append(numpy_helper.from_array(zp.astype(dtype), zp_name))
        node.input[2] = zp_name
        packed += 1
    if not packed:
        raise ExportError(f"the model has {len(scales)} 4-bit weight quantizer(s) but no matching "
                          f"DequantizeLinear in the exported graph")
    _drop_unused_initializers(graph)
    return model


SCALE_KEEPING_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice",
                     "Gather")  # (a ViT's class token, x[:, 0], read by its head)


def requantize_scale_keeping_outputs(model: onnx.ModelProto) -> int:
    """Give every max-pool/reshape/split-like op that reads a DequantizeLinear (directly or through
    such ops) an explicit Q/DQ pair on each output, with its input's scale and zero point (exact: such ops keep values on their
    input's grid). Returns how many pairs were added.

    Why: a quantized op after a reshape-like op needs a DequantizeLinear right before it for
    onnxruntime to fuse it (e.g. GlobalAveragePool -> Flatten -> Gemm becomes QLinear-
    GlobalAveragePool -> Flatten -> QGemm, not a float Gemm). And onnxruntime (1.32) would
    otherwise propagate DequantizeLinear past such ops itself, inserting a QuantizeLinear that
    carries an ``output_dtype`` attribute at opset 21; on x86 CPUs without VNNI its S8-to-U8
    rewrite then changes the zero point to uint8 but not the attribute, and a 4-bit (opset 21)
    model fails to load. With the pair already there, nothing is propagated.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    initializers = {i.name for i in graph.initializer}
    added, nodes = 0, []
    for node in graph.node:
        nodes.append(node)
        dq = producer.get(node.input[0]) if node.input else None
        if (node.op_type not in SCALE_KEEPING_OPS or dq is None or dq.op_type != "DequantizeLinear"
                or dq.input[0] in initializers):  # a weight (a Linear's transposed W): constant, not requantized
            continue
        params = list(dq.input[1:3])
        for i, out in enumerate(node.output):  # every output of a Split (YOLO's C2f: one part into a
            # concat that quantizes it itself, the other into a conv, which needs the pair)
            if not out or out in outputs or any(u.op_type == "QuantizeLinear" and _same_params(graph, u, dq)
                                                for u in users.get(out, [])):
                continue  # (a QuantizeLinear to another grid, a concat's, is a requantization: pair still needed)
            kept = f"{out}/kept"
            node.output[i] = kept
            nodes.append(onnx.helper.make_node("QuantizeLinear", [kept, *params], [f"{out}/q"],
                                               name=f"{node.name}/requantize{i or ''}"))
            requant = onnx.helper.make_node("DequantizeLinear", [f"{out}/q", *params], [out],
                                            name=f"{node.name}/dequantize{i or ''}")
            nodes.append(requant)
            producer[out] = requant  # a chain (Reshape -> Transpose -> Reshape -> Split) is followed
            added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return added


def _same_params(graph: onnx.GraphProto, q, dq) -> bool:
    """Whether QuantizeLinear ``q`` uses the scale and zero point of DequantizeLinear ``dq``."""
    if list(q.input[1:3]) == list(dq.input[1:3]):
        return True
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer
              if i.name in (*q.input[1:3], *dq.input[1:3])}
    pairs = list(zip(q.input[1:3], dq.input[1:3]))
    return all(a in values and b in values and np.array_equal(values[a], values[b]) for a, b in pairs)


def copy_onnx(onnx_path: Path, out_path: Path) -> Path:
    """The ``onnx`` format of an existing ONNX file: validated, then copied unless in place."""
    check_onnx_file(onnx_path)
    if Path(onnx_path).resolve() != Path(out_path).resolve():
        with atomic.atomic_path(out_path) as tmp:
            shutil.copyfile(onnx_path, tmp)
    return Path(out_path)


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; corrupt or truncated files raise ModelLoadError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, checker ValidationError
        raise ModelLoadError(f"{path}: not a valid ONNX model, the file is truncated or corrupt "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return model
