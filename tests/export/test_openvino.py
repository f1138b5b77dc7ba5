import pytest

from edgekd.export import export_onnx_file
from edgekd.runtime import open_session


def test_ir_has_xml_and_bin(exported):
    artifact = exported[("int8", "openvino")]
    assert artifact.path.suffix == ".xml"
    assert artifact.path.with_suffix(".bin").is_file()
    assert artifact.size_bytes == artifact.path.stat().st_size + artifact.path.with_suffix(".bin").stat().st_size


def test_openvino_runs_convolutions_in_int8(exported):
    session = open_session(exported[("int8", "openvino")].path, "openvino")
    convs = {name: precision for name, (layer, precision) in session.runtime_precisions().items()
             if layer == "Convolution"}
    assert len(convs) == 3
    assert set(convs.values()) <= {"u8", "i8"}, convs


def test_float_model_runs_at_recorded_f32(exported):
    session = open_session(exported[("float", "openvino")].path, "openvino")
    assert session.info["precision_hint"] == "f32"
    convs = [p for layer, p in session.runtime_precisions().values() if layer == "Convolution"]
    assert convs and set(convs) == {"f32"}


def test_convert_existing_onnx_file(tmp_path, exported):
    (artifact,) = export_onnx_file(exported[("int8", "onnx")].path, ["openvino"], tmp_path, "again")
    assert artifact.path == tmp_path / "again.xml"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temp files left behind


def test_missing_onnx_file(tmp_path):
    from edgekd.errors import ExportError

    with pytest.raises(ExportError, match="nothing.onnx: ONNX file not found"):
        export_onnx_file(tmp_path / "nothing.onnx", ["openvino"], tmp_path)
