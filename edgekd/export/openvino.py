"""Convert ONNX to OpenVINO IR (``.xml`` graph + ``.bin`` weights) with ``openvino.convert_model``.

QDQ pairs become FakeQuantize nodes that OpenVINO's low-precision transformations run as int8.
Weights are not compressed to fp16 (``compress_to_fp16=False``), so float parity is exact.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekd.errors import ExportError
from edgekd.export.onnx import check_onnx_file


def onnx_to_openvino(onnx_path: Path, out_path: Path) -> Path:
    """Write ``out_path`` (.xml) and its .bin; both appear only when both are complete."""
    import openvino as ov

    if not Path(onnx_path).is_file():
        raise ExportError(f"{onnx_path}: ONNX file not found")
    out_path = Path(out_path).with_suffix(".xml")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as err:
        check_onnx_file(onnx_path)  # a corrupt file gets the precise ModelLoadError, naming it
        raise ExportError(f"{onnx_path}: OpenVINO could not convert the model: "
                          f"{str(err).strip().splitlines()[-1][:300]}") from None
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), out_path.with_suffix(".bin"))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return out_path
