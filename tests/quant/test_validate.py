"""The artifact validator reads the arithmetic back from an exported ONNX graph."""

import pytest

from edgekd.quant.validate import validate_onnx
from edgekd.targets import load_target


def scheme(name):
    return load_target(name).quantization


def test_int8_export_conforms_to_its_own_scheme(exported):
    result = validate_onnx(exported[("int8", "onnx")].path, scheme("x86-cpu"))
    assert result.passed, result.summary()
    assert result.checked["weights"] == 4 and result.checked["activations"] >= 5


def test_int8_activations_violate_a_uint8_target_by_node(exported):
    result = validate_onnx(exported[("int8", "onnx")].path, scheme("qnn-htp"))
    assert not result.passed
    assert any("input_quant/QuantizeLinear" in str(v) and "activations must be uint8; found int8" in str(v)
               for v in result.violations)


def test_float_model_violates_an_integer_only_target(exported):
    result = validate_onnx(exported[("float", "onnx")].path, scheme("ethos-u55"))
    messages = [str(v) for v in result.violations]
    assert sum("weights must be integer (QDQ)" in m for m in messages) == 4
    assert any("integer-only target" in m for m in messages)


def test_corrupt_file_is_a_clear_error(tmp_path):
    from edgekd.errors import ModelLoadError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="bad.onnx: not a valid ONNX model"):
        validate_onnx(bad, scheme("x86-cpu"))


def test_full_range_weights_violate_a_reduce_range_target(tmp_path, digits, float_student):
    """An export made for a VNNI CPU (8-bit weights) names each layer whose weights x86 kernels
    without VNNI would saturate on."""
    from edgekd.export import export
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat

    model = prepare_qat(float_student, QATConfig(target="x86-cpu-vnni").resolved())
    calibrate(model, [digits.x_train[:64]])
    path = export(freeze(model), ["onnx"], tmp_path, "vnni", digits.input_shape)[0].path
    assert validate_onnx(path, scheme("x86-cpu-vnni")).passed
    result = validate_onnx(path, scheme("x86-cpu"))
    messages = [str(v) for v in result.violations]
    assert len(messages) == 4, messages
    assert all("weights must lie in [-64, 64] (reduce_range" in m and "found values in [-127, 127]" in m
               for m in messages)
