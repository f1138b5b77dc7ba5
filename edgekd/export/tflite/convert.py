"""ONNX -> TFLite: drive the op converters, write the file atomically, check it against onnxruntime.

The exported interface (documented in the README):

- inputs and outputs keep their ONNX names, shapes and order; 4-D tensors are NCHW, with one
  TRANSPOSE after each 4-D input and before each 4-D output, unless ``layout="nhwc"`` asks for
  an NHWC interface (no transposes at all);
- integer and boolean inputs (token ids, attention masks) are fed as they are: int64 ones become
  int32 inputs (what mobile apps and LiteRT's text models feed), widened by one CAST inside the
  model, unless ``int_inputs="keep"``; int32 and bool keep their type;
- a QDQ model becomes a full-integer model (with ``float_fallback``, ops the ONNX file leaves
  float, or that TFLite has no int8 kernel for, run in float between DEQUANTIZE and QUANTIZE). ``io="float"`` (default) keeps float32 inputs and
  outputs with a QUANTIZE/DEQUANTIZE at the edges; ``io="int8"`` exposes the int8 tensors and
  their (scale, zero point) so the caller quantizes;
- the output tail (data movement after the last quantized op: a detection head's join of boxes
  and scores, which edgekd's QAT leaves float because one int8 scale cannot hold both) runs in
  float even in a full-integer model, after a DEQUANTIZE of each part: ``io="float"`` only;
- the batch dimension is fixed (``batch``, default 1); the LiteRT runner resizes it on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edgekd import atomic
from edgekd.errors import ExportError
from edgekd.export.tflite.builder import ModelBuilder
from edgekd.export.tflite.context import (
    CONVERTERS,
    NHWC,
    Context,
    NoInt8Kernel,
    identity,
    permuted,
    tflite_dtype,
)
from edgekd.export.tflite.graph import Graph, load_graph


@dataclass
class Conversion:
    """What ``convert`` produced: the flatbuffer and facts tests and reports read."""

    data: bytes
    graph: Graph
    int8: bool
    ops: list[str] = field(default_factory=list)
    transposes: int = 0
    coarse: dict[str, float] = field(default_factory=dict)  # output -> TFLite's coarser step
    float_nodes: list[str] = field(default_factory=list)  # int8 model's nodes run in float (fallback)
    builder: ModelBuilder | None = None  # to write the file again with metadata (the export check)


def supported_ops() -> list[str]:
    import edgekd.export.tflite.ops  # noqa: F401  (registers the converters)

    return CONVERTERS.names()


def convert(onnx_path: str | Path, *, io: Literal["float", "int8"] = "float",
            layout: Literal["nchw", "nhwc"] = "nchw", batch: int = 1,
            float_fallback: bool = False, int_inputs: Literal["int32", "keep"] = "int32") -> Conversion:
    """Convert an ONNX model (float, or QDQ int8) to TFLite flatbuffer bytes.

    ``float_fallback``: an int8 model's ops that the ONNX file leaves float, or that have no
    TFLite int8 kernel (LayerNormalization, ReduceL2, LRN, division by a tensor), run in float
    between DEQUANTIZE and QUANTIZE (``Conversion.float_nodes`` lists them). Off: the model must
    be full-integer and such an op fails the export, naming it.

    Raises:
        ExportError: an unsupported op (names op type, node and the supported list), an int8
            tensor without a scale, or anything else the format cannot express.
    """
    if io not in ("float", "int8"):
        raise ExportError(f"io must be 'float' or 'int8', got {io!r}")
    if layout not in ("nchw", "nhwc"):
        raise ExportError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    if int_inputs not in ("int32", "keep"):
        raise ExportError(f"int_inputs must be 'int32' or 'keep', got {int_inputs!r}")
    supported = supported_ops()
    g = load_graph(onnx_path, batch=batch)
    unsupported: dict[str, list[str]] = {}  # op type -> its nodes: every distinct blocker is named once
    for n in g.nodes:
        if n.op not in CONVERTERS:
            unsupported.setdefault(n.op, []).append(n.name)
    if unsupported:
        found = ", ".join(f"{op} x{len(names)} (node {names[0]!r}{', ...' if len(names) > 1 else ''})"
                          for op, names in unsupported.items())
        raise ExportError(f"{onnx_path}: cannot convert to TFLite: unsupported ONNX op(s) {found}. "
                          f"Supported: {', '.join(supported)}")
    if io == "int8" and not g.quantized:
        raise ExportError(f"{onnx_path}: io='int8' needs a quantized (QDQ) ONNX model; this one is float")
    builder = ModelBuilder(description=f"edgekd: converted from {Path(onnx_path).name}")
    ctx = Context(g, builder, int8=g.quantized)
    for name in g.inputs:
        _add_input(ctx, name, io, layout, int_inputs)
    tail = output_tail(g)
    for node in g.nodes:
        try:
            _convert_node(ctx, node, float_fallback or node.name in tail)
        except ExportError:
            raise
        except Exception as err:  # a converter bug must still name the node it failed on
            raise ExportError(f"{onnx_path}: converting {node.where()} failed: "
                              f"{type(err).__name__}: {err}") from err
    for name, onnx_name in zip(g.outputs, g.output_names):
        _add_output(ctx, name, onnx_name, io, layout)
    return Conversion(builder.serialize(), g, g.quantized, builder.op_names(), ctx.transposes,
                      {n: ctx.coarse[n] for n in g.outputs if n in ctx.coarse}, ctx.float_nodes, builder)


def _convert_node(ctx: Context, node, float_fallback: bool) -> None:
    """One node: int8 in an int8 model, or (``float_fallback``) in float where it must be."""
    convert_op = CONVERTERS.get(node.op)
    if float_fallback and ctx.int8 and ctx.needs_float(node):
        with ctx.float_island(node):
            convert_op(ctx, node)
        return
    try:
        convert_op(ctx, node)
    except NoInt8Kernel:
        if not float_fallback:
            raise
        with ctx.float_island(node):
            convert_op(ctx, node)


TAIL_OPS = {"Concat", "Slice", "Split", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


def output_tail(g: Graph) -> set[str]:
    """Names of the nodes that only move data on its way to the outputs (``TAIL_OPS`` whose
    every output is a graph output or read by such nodes alone)."""
    tail: set[str] = set()
    for node in reversed(g.nodes):  # (a graph output another op also reads is not tail)
        if node.op in TAIL_OPS and all(all(c.name in tail for c in g.consumers(o)) for o in node.outputs if o):
            tail.add(node.name)
    return tail


def _interface_perm(rank: int, layout: str) -> tuple[int, ...]:
    return NHWC if rank == 4 and layout == "nhwc" else identity(rank)


def _add_input(ctx: Context, name: str, io: str, layout: str, int_inputs: str = "int32") -> None:
    shape = ctx.shape(name)
    perm = _interface_perm(len(shape), layout)
    phys = permuted(shape, perm)
    dtype = ctx.dtype(name)
    if dtype == np.int64 and int_inputs == "int32":  # token ids, masks: int32 in, int64 inside
        index = ctx.b.tensor(name, phys, np.int32)
        wide = ctx.b.tensor(f"{name}/int64", phys, np.int64)
        ctx.b.op("CAST", [index], [wide])
        ctx.bind(name, wide, perm)
        ctx.b.inputs.append(index)
        return
    if not ctx.is_float(name):  # token ids, masks: fed as they are, never quantized
        index = ctx.b.tensor(name, phys, tflite_dtype(dtype, ctx.g.path, name))
    elif dtype != np.float32:
        raise ExportError(f"{ctx.g.path}: input {name!r} is {dtype}; float inputs must be float32")
    elif not ctx.int8:
        index = ctx.b.tensor(name, phys, np.float32)
    else:
        quant = ctx.quant_of(name)
        if io == "int8":
            index = ctx.b.tensor(name, phys, np.int8, quant=quant)
        else:
            index = ctx.b.tensor(name, phys, np.float32)
            q = ctx.b.tensor(f"{name}/quantized", phys, np.int8, quant=quant)
            ctx.b.op("QUANTIZE", [index], [q])
            ctx.bind(name, q, perm)
            ctx.b.inputs.append(index)
            return
    ctx.bind(name, index, perm)
    ctx.b.inputs.append(index)


def _add_output(ctx: Context, name: str, onnx_name: str, io: str, layout: str) -> None:
    if name in ctx.g.constants:
        raise ExportError(f"{ctx.g.path}: output {onnx_name!r} is a constant; TFLite outputs "
                          f"must be computed")
    rank = len(ctx.shape(name))
    ref = ctx.get(name, _interface_perm(rank, layout))
    if ref.feature_perm is not None:
        raise ExportError(f"{ctx.g.path}: output {onnx_name!r} holds NHWC-ordered features")
    index = ref.index
    if ctx.int8 and io == "int8" and ctx.is_float(name) and ctx.b.quant_of(ref.index) is None:
        producer = next((n for n in ctx.g.nodes if name in n.outputs), None)
        by = f" by {producer.where()}" if producer is not None else ""
        raise ExportError(f"{ctx.g.path}: output {onnx_name!r} is computed in float{by} (the output tail, e.g. a "
                          f"join of parts with their own int8 scales such as a detection head's boxes and scores, "
                          f"or an op converted with float_fallback); export it with io='float'")
    if ctx.b.quant_of(ref.index) is not None and io == "float":
        out = ctx.b.tensor(onnx_name, ctx.b.shape_of(index), np.float32)
        ctx.b.op("DEQUANTIZE", [index], [out])
        index = out
    elif index in ctx.b.inputs or index in ctx.b.outputs:  # the same tensor cannot be listed twice
        shape = ctx.b.shape_of(index)
        out = ctx.tensor(onnx_name, shape, like=index)
        ctx.b.op("RESHAPE", *ctx.reshape_args(index, shape, out, name if ref.perm[:1] == (0,) else None))
        index = out
    else:
        ctx.b.tensors[index].name = onnx_name
    ctx.b.outputs.append(index)


EXPORT_CHECK_KEY = "edgekd.export_check"  # TFLite metadata: what the export check measured, per output


def onnx_to_tflite(onnx_path: str | Path, out_path: str | Path, *, io: Literal["float", "int8"] = "float",
                   layout: Literal["nchw", "nhwc"] = "nchw", batch: int = 1, check: bool = True,
                   float_fallback: bool = False, check_samples=None,
                   int_inputs: Literal["int32", "keep"] = "int32") -> Path:
    """Write ``out_path`` (.tflite) from ``onnx_path``; with ``check``, compare with onnxruntime.
    ``float_fallback``: see ``convert``. ``check_samples``: real inputs to check on (a list of
    samples, each a list of batch-1 arrays in the ONNX inputs' order: the pipeline passes test
    data); without them the check feeds ``parity.sample_inputs``. What it measured (tolerance,
    errors, how many inputs of which source, per output) is stored in the file's metadata
    (``EXPORT_CHECK_KEY``; ``read_export_check``).

    Raises:
        ExportError: the model cannot be converted, or (with ``check``) the TFLite file does not
            reproduce onnxruntime's outputs (float: 1e-4 relative; int8: 99% of the outputs
            within ceil(sqrt(L)) quantization steps for L requantizing ops, see ``parity``).
    """
    result = convert(onnx_path, io=io, layout=layout, batch=batch, float_fallback=float_fallback,
                     int_inputs=int_inputs)
    data = result.data
    if check:  # before writing: a file that does not reproduce the model is never left behind
        from edgekd.export.tflite.parity import check_parity, int8_steps

        parities = check_parity(onnx_path, result.data, result.graph, layout=layout, coarse=result.coarse,
                                steps=int8_steps(result.ops), samples=check_samples)
        result.builder.metadata[EXPORT_CHECK_KEY] = json.dumps([p.to_dict() for p in parities]).encode()
        data = result.builder.serialize()
    return atomic.write_bytes(Path(out_path).with_suffix(".tflite"), data)


def read_export_check(path: str | Path) -> list[dict] | None:
    """The export check stored in a TFLite file written by ``onnx_to_tflite`` (one dict per
    output: tolerance, passed, inputs, source, errors), or None when it was not checked."""
    from edgekd.export.tflite.builder import read_metadata

    stored = read_metadata(Path(path).read_bytes(), EXPORT_CHECK_KEY)
    return json.loads(stored) if stored else None
