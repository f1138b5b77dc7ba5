"""Convert ONNX to OpenVINO IR (``.xml`` graph + ``.bin`` weights) with ``openvino.convert_model``.

QDQ pairs become FakeQuantize nodes that OpenVINO's low-precision transformations run as int8.
Weights are not compressed to fp16 (``compress_to_fp16=False``), so float parity is exact.
Models with 16-bit activations are refused (OpenVINO mis-runs 16-bit QDQ, see
``_refuse_16bit_activations``).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekd import atomic
from edgekd.errors import ExportError
from edgekd.export.onnx import check_onnx_file
from edgekd.tasks.spec import IR_RT_INFO_KEY, METADATA_KEY


def onnx_to_openvino(onnx_path: Path, out_path: Path) -> Path:
    """Write ``out_path`` (.xml) and its .bin; both appear only when both are complete."""
    import openvino as ov

    if not Path(onnx_path).is_file():
        raise ExportError(f"{onnx_path}: ONNX file not found")
    out_path = Path(out_path).with_suffix(".xml")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_model = check_onnx_file(onnx_path)  # parsed once: the 16-bit check and the declared inputs
    _refuse_16bit_activations(onnx_path, onnx_model)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as err:
        check_onnx_file(onnx_path)  # a corrupt file gets the precise ModelLoadError, naming it
        raise ExportError(f"{onnx_path}: OpenVINO could not convert the model: "
                          f"{str(err).strip().splitlines()[-1][:300]}") from None
    declared = next((p.value for p in onnx_model.metadata_props if p.key == METADATA_KEY), None)
    if declared:  # IR dims lose their names: keep edgekd's input specs beside the graph
        model.set_rt_info(declared, IR_RT_INFO_KEY)
    tmp = out_path.with_name(f".{out_path.stem[:48]}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), out_path.with_suffix(".bin"))
        os.replace(tmp, out_path)
    except (OSError, RuntimeError) as err:  # a full disk reaches us as OpenVINO's RuntimeError
        raise atomic.write_error(out_path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    atomic.record(out_path.with_suffix(".bin"))
    atomic.record(out_path)
    return out_path


def _refuse_16bit_activations(onnx_path: Path, model) -> None:
    """OpenVINO (2026.4) mis-runs 16-bit QuantizeLinear/DequantizeLinear: measured here, a
    uint16-activation CNN that onnxruntime runs exactly came out of OpenVINO at 10% accuracy, and
    a lone uint16 QDQ pair fails to compile ("FQ stripping failed"). Refuse, rather than write an
    IR that computes something else."""
    import onnx

    types = {i.name: i.data_type for i in model.graph.initializer}
    wide = {onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16"}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and types.get(node.input[2]) in wide:
            raise ExportError(f"{onnx_path}: node {node.name!r} quantizes to {wide[types[node.input[2]]]}; "
                              f"OpenVINO does not run 16-bit QuantizeLinear/DequantizeLinear correctly "
                              f"(measured with openvino 2026.4), so no IR is written. Use the ONNX file "
                              f"with onnxruntime (e.g. its QNN execution provider), or 8-bit activations")

