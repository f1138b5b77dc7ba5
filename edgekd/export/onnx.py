"""Export to ONNX, with int8 weights stored as int8.

Float and frozen-QAT models go through ``torch.onnx.export`` (the TorchScript exporter: it maps
``torch.fake_quantize_*`` to QuantizeLinear/DequantizeLinear with constant scales; the dynamo
exporter does not handle these ops). The exporter leaves each weight as a float initializer
feeding QuantizeLinear; ``store_int8_weights`` replaces every such pair by the int8 initializer
the runtime would compute (round half to even, saturate, as the ONNX spec says), so the file on
disk holds one byte per weight and onnxruntime/OpenVINO see ordinary QDQ weights.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgekd import atomic
from edgekd.errors import ExportError, ModelLoadError


def export_onnx(model: torch.nn.Module, path: str | Path, input_shape: tuple[int, ...], *,
                opset: int = 17) -> Path:
    """Write ``model`` (eval mode) to ``path`` with a dynamic batch axis; check it loads.

    Raises:
        ExportError: PyTorch could not export an operator (named in the message).
    """
    model = model.eval()
    example = torch.zeros((1, *input_shape))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as err:  # torch raises several types; all mean "this op did not export"
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    graph = onnx.load_from_string(buffer.getvalue())
    inline_constant_identities(graph)
    store_int8_weights(graph)
    onnx.checker.check_model(graph)
    return atomic.write_bytes(path, graph.SerializeToString())


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Drop Identity nodes over initializers (the exporter adds them for shared constants), so
    every QDQ scale and zero point is visibly an initializer. Returns how many were removed."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


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
