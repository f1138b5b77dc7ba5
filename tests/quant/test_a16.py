"""16-bit activations (QNN HTP's uint16): exported as opset-21 QDQ, run by onnxruntime, refused
clearly where a format cannot hold them."""

import onnx
import pytest

from edgekd.errors import ExportError


@pytest.fixture(scope="module")
def a16(digits, float_student, tmp_path_factory):
    from edgekd.export import export
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat

    model = prepare_qat(float_student, QATConfig(target="qnn-htp-a16"))
    calibrate(model, [digits.x_train[i:i + 64] for i in range(0, 256, 64)])
    out = tmp_path_factory.mktemp("a16")
    return freeze(model), export(freeze(model), ["onnx"], out, "a16", digits.input_shape)[0].path, out


def test_onnx_holds_uint16_qdq_at_opset_21_and_conforms(a16):
    from edgekd.quant.validate import validate_onnx
    from edgekd.targets import load_target

    _, path, _ = a16
    m = onnx.load(path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert not any(n.domain for n in m.graph.node)  # no custom op left
    zero_points = {i.name: i.data_type for i in m.graph.initializer}
    activation_q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(zero_points[n.input[2]] == onnx.TensorProto.UINT16 for n in activation_q)
    result = validate_onnx(path, load_target("qnn-htp-a16").quantization)
    assert result.passed, result.summary()


def test_onnxruntime_agrees_with_the_16_bit_simulation(a16, digits):
    from edgekd.runtime import evaluate_session, open_session

    model, path, _ = a16
    reference = model(digits.x_test).argmax(1).numpy()
    result = evaluate_session(open_session(path), digits.x_test.numpy(), digits.y_test.numpy(), reference)
    assert result.agreement >= 0.99


@pytest.mark.parametrize("fmt, message", [
    ("openvino", "OpenVINO does not run 16-bit QuantizeLinear/DequantizeLinear correctly"),
    ("tflite", "uint16 activations \\(16-bit\\) are not supported: edgekd's TFLite writer has no 16x8 mode"),
])
def test_formats_that_cannot_run_16_bit_refuse_it(a16, fmt, message):
    from edgekd.export.api import export_onnx_file

    _, path, out = a16
    with pytest.raises(ExportError, match=message):
        export_onnx_file(path, [fmt], out / fmt)
    assert not list((out / fmt).glob("a16.*"))  # nothing half-written


def test_a_recipe_asking_for_16_bit_in_openvino_is_refused_before_training(tmp_path):
    import edgekd.pipeline as pipeline
    from edgekd.errors import ConfigError
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=1, qat_epochs=1)
    recipe.qat.target = "qnn-htp-a16"
    recipe.export.formats = ["onnx", "openvino"]
    with pytest.raises(ConfigError, match="export.formats: openvino cannot hold the uint16 activations"):
        pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "models").exists()
