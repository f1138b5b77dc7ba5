"""W4A8: int4 weights with int8 activations, exported packed where the format has int4."""

import onnx
import pytest


@pytest.fixture(scope="module")
def w4a8(tmp_path_factory, digits, float_student):
    """The test student with int4 weights (x86-cpu scheme), calibrated and exported to every format."""
    from edgekd.export import export, list_exporters
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat

    model = prepare_qat(float_student, QATConfig(weight_bits=4, target="x86-cpu"))
    calibrate(model, [digits.x_train[i:i + 64] for i in range(0, 512, 64)])
    freeze(model)
    out = tmp_path_factory.mktemp("w4a8")
    return model, {a.format: a for a in export(model, list_exporters(), out, "w4a8", digits.input_shape)}


def test_weights_are_simulated_with_4_bit_codes(w4a8):
    model, _ = w4a8
    wq = model.get_submodule("features.block1.conv").weight_quant
    assert wq.dtype == "int4" and (wq.qmin, wq.qmax) == (-7, 7)  # x86-cpu: narrow range


def test_onnx_stores_packed_int4_at_opset_21(w4a8, exported):
    _, artifacts = w4a8
    m = onnx.load(artifacts["onnx"].path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21
    int4 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert len(int4) >= 4  # 3 convs + the classifier, plus their zero points
    int8_size = exported[("int8", "onnx")].path.stat().st_size
    assert artifacts["onnx"].path.stat().st_size < 0.85 * int8_size


def test_tflite_filters_are_int4(w4a8):
    from ai_edge_litert import schema_py_generated as schema

    _, artifacts = w4a8
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(artifacts["tflite"].path.read_bytes(), 0))
    types = {t.name.decode(): t.type for t in model.subgraphs[0].tensors}
    filters = {n: t for n, t in types.items() if n.endswith(("/filter", "/weights"))}
    assert len(filters) == 4 and set(filters.values()) == {schema.TensorType.INT4}, filters


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_every_runtime_agrees_with_the_w4a8_simulation(w4a8, digits, fmt):
    from edgekd.runtime import evaluate_session, open_session

    model, artifacts = w4a8
    reference = model(digits.x_test).argmax(1).numpy()
    result = evaluate_session(open_session(artifacts[fmt].path), digits.x_test.numpy(),
                              digits.y_test.numpy(), reference)
    assert result.agreement >= 0.99
    assert result.accuracy >= 0.85  # 4-bit weights, calibrated only (no QAT): still a classifier


def test_validator_accepts_int4_where_listed_and_names_it_elsewhere(w4a8):
    from edgekd.quant import QATConfig
    from edgekd.quant.validate import validate_onnx
    from edgekd.targets import load_target

    _, artifacts = w4a8
    assert validate_onnx(artifacts["onnx"].path, QATConfig(weight_bits=4, target="x86-cpu").resolved().scheme).passed
    result = validate_onnx(artifacts["onnx"].path, load_target("x86-cpu").quantization)
    assert any("weights must be int8; found int4" in str(v) for v in result.violations)

