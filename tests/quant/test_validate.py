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


def _silu_graph(tmp_path, gate_quantized: bool):
    """x -> Q/DQ -> Sigmoid -> [Q/DQ] -> Mul(x) -> Q/DQ -> y: a SiLU, its gate quantized or not."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(1 / 256, np.float32), "gs"),
             numpy_helper.from_array(np.array(-128, np.int8), "gz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sigmoid", ["xd"], ["g"], name="gate")]
    if gate_quantized:
        nodes += [helper.make_node("QuantizeLinear", ["g", "gs", "gz"], ["gq"]),
                  helper.make_node("DequantizeLinear", ["gq", "gs", "gz"], ["gd"])]
    nodes += [helper.make_node("Mul", ["xd", "gd" if gate_quantized else "g"], ["m"], name="product"),
              helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
              helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"])]
    return _saved(tmp_path / f"silu-{gate_quantized}.onnx", nodes, inits)


def _saved(path, nodes, inits):
    """An opset-17 model x (1, 8) -> y (1, 8) of ``nodes`` written to ``path``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_float_op_between_quantized_ones_violates_a_full_integer_target(tmp_path):
    """TFLite int8 (full_integer): the float sigmoid between quantized tensors is named; the same
    graph conforms where onnxruntime may run it in float; quantizing the gate fixes it."""
    float_gate = _silu_graph(tmp_path, gate_quantized=False)
    result = validate_onnx(float_gate, scheme("arm-litert-xnnpack"))
    assert not result.passed and "VIOLATES" in result.summary()
    assert [v.node for v in result.violations] == ["Sigmoid node 'gate'"]
    assert "output must be quantized" in result.violations[0].rule
    assert validate_onnx(float_gate, scheme("x86-cpu")).passed
    assert validate_onnx(_silu_graph(tmp_path, gate_quantized=True), scheme("arm-litert-xnnpack")).passed


def _gelu_graph(tmp_path, quantized: bool):
    """x -> Q/DQ -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5) -> [Q/DQ] -> y: torch's exact
    GELU below opset 20, its output quantized or not."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
             [("s", 0.02), ("r2", np.sqrt(2)), ("one", 1.0), ("half", 0.5)]] + [
        numpy_helper.from_array(np.array(0, np.int8), "z")]
    out = "g" if quantized else "y"
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Div", ["xd", "r2"], ["d"], name="gelu/div"),
             helper.make_node("Erf", ["d"], ["e"], name="gelu/erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="gelu/add"),
             helper.make_node("Mul", ["xd", "a"], ["m"], name="gelu/mul"),
             helper.make_node("Mul", ["m", "half"], [out], name="gelu/half")]
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["g", "s", "z"], ["gq"]),
                  helper.make_node("DequantizeLinear", ["gq", "s", "z"], ["y"])]
    return _saved(tmp_path / f"gelu-{quantized}.onnx", nodes, inits)


def test_an_exact_gelu_pattern_is_checked_as_one_op(tmp_path):
    assert validate_onnx(_gelu_graph(tmp_path, quantized=True), scheme("arm-litert-xnnpack")).passed
    result = validate_onnx(_gelu_graph(tmp_path, quantized=False), scheme("arm-litert-xnnpack"))
    assert [v.node for v in result.violations] == ["Div node 'gelu/div'"]  # once, not for each step


def _linear_3d_graph(tmp_path, weight_zero_point: int):
    """x -> Q/DQ -> MatMul(x, Transpose(DQ(W))) -> Q/DQ -> y, as torch exports a Linear on 3-D
    tensors (every transformer's): the int8 weight sits behind a Transpose."""
    import numpy as np
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).integers(-127, 128, (8, 8)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.full(8, weight_zero_point, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["xd", "wt"], ["m"], name="fc/MatMul"),
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"])]
    return _saved(tmp_path / f"linear3d-{weight_zero_point}.onnx", nodes, inits)


def test_weights_behind_a_transpose_are_checked(tmp_path):
    """A transformer's Linear layers (MatMul of a transposed weight) were taken for products of
    two activations and their weights never checked."""
    good = validate_onnx(_linear_3d_graph(tmp_path, 0), scheme("arm-litert-xnnpack"))
    assert good.passed and good.checked["weights"] == 1
    bad = validate_onnx(_linear_3d_graph(tmp_path, 3), scheme("arm-litert-xnnpack"))
    assert [v.node for v in bad.violations] == ["MatMul node 'fc/MatMul' (linear weights)"]
    assert "symmetric" in bad.violations[0].rule
