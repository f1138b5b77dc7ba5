"""Mixed precision: per-layer overrides (paths, globs), the sensitivity pass, and the pipeline."""

import onnx
import pytest
import torch
from torch import nn

from edgekd.config import FieldError
from edgekd.errors import ConfigError
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import QUANT_LAYERS


def _int8(model, config, digits):
    q = prepare_qat(model, config)
    calibrate(q, [digits.x_train[i:i + 64] for i in range(0, 256, 64)])
    return freeze(q)


def _weight_types(path) -> dict[str, int]:
    """{Conv/Gemm node: ONNX dtype of its weight initializer}."""
    m = onnx.load(path)
    inits = {i.name: i.data_type for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    return {n.name: inits[producer[n.input[1]].input[0]] for n in m.graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in producer}


def test_a_float_layer_is_left_unquantized_and_runs_in_onnxruntime(tmp_path, digits, float_student):
    from edgekd.export import export
    from edgekd.runtime import evaluate_session, open_session

    q = _int8(float_student, QATConfig(layers={"features.block0.conv": "float"}), digits)
    layers = {n: type(m) for n, m in q.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert layers["features.block0.conv"] is nn.Conv2d
    assert sum(issubclass(t, QUANT_LAYERS) for t in layers.values()) == 3
    [art] = export(q, ["onnx"], tmp_path, "mixed", digits.input_shape)
    assert len(_weight_types(art.path)) == 3  # block0's conv reads a float weight
    reference = q(digits.x_test).argmax(1).numpy()
    result = evaluate_session(open_session(art.path), digits.x_test.numpy(), digits.y_test.numpy(), reference)
    assert result.agreement >= 0.99


def test_glob_overrides_mix_int8_and_int4_weights(tmp_path, digits, float_student):
    from edgekd.export import export

    cfg = QATConfig(weight_bits=4, target="x86-cpu", layers={"features.*": "int8"})
    q = _int8(float_student, cfg, digits)
    assert q.get_submodule("features.block1.conv").weight_quant.dtype == "int8"
    assert q.get_submodule("classifier").weight_quant.dtype == "int4"
    [art] = export(q, ["onnx"], tmp_path, "w4-mixed", digits.input_shape)
    types = sorted(_weight_types(art.path).values())
    assert types == [onnx.TensorProto.INT8] * 3 + [onnx.TensorProto.INT4]


def test_bad_overrides_name_the_layer_and_the_valid_ones(float_student):
    with pytest.raises(FieldError, match=r"layers\.features\.block9\.conv.*did you mean 'features\.block2\.conv'"):
        prepare_qat(float_student, QATConfig(layers={"features.block9.conv": "float"}))
    with pytest.raises(FieldError, match="int4 weights are not supported by this target"):
        prepare_qat(float_student, QATConfig(target="ethos-u55", layers={"classifier": "int4"}))
    with pytest.raises(FieldError, match="expected one of float, int8, int4, got 'fp16'"):
        QATConfig(layers={"classifier": "fp16"})
    with pytest.raises(ConfigError, match="mixed_precision.max_accuracy_drop: expected a percentage"):
        QATConfig.from_dict({"mixed_precision": {"max_accuracy_drop": "lots"}})


def test_sensitivity_pass_raises_the_most_sensitive_layers_first(digits, float_student):
    from edgekd.quant.mixed_precision import choose_mixed_precision

    cfg = QATConfig.from_dict({"weight_bits": 4, "target": "x86-cpu", "mixed_precision": {
        "enabled": True, "max_accuracy_drop": 0.0, "higher": "int8"}}).resolved()
    batches = [digits.x_train[i:i + 64] for i in range(0, 256, 64)]
    result = choose_mixed_precision(float_student, cfg, batches, digits.x_val, digits.y_val)
    assert [s.layer for s in result.sensitivity][0] != "classifier" or len(result.sensitivity) == 1
    kls = [s.kl for s in result.sensitivity]
    assert kls == sorted(kls, reverse=True) and kls[0] > 0
    order = [s.layer for s in result.sensitivity]
    assert [step["layer"] for step in result.steps] == order[:len(result.steps)]  # greedy, in order
    assert result.layers == {layer: "int8" for layer in order[:len(result.steps)]}
    assert result.steps  # 4-bit weights cost accuracy on this student: something was raised
    assert result.accuracy >= result.base_accuracy
    lenient = QATConfig.from_dict({**cfg.to_dict(), "mixed_precision": {"enabled": True, "max_accuracy_drop": 0.5}})
    assert choose_mixed_precision(float_student, lenient, batches, digits.x_val, digits.y_val).layers == {}


def test_pipeline_reports_and_rebuilds_a_mixed_precision_student(tmp_path):
    import edgekd.pipeline as pipeline
    from edgekd.models import load_checkpoint
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=3, qat_epochs=1)
    recipe.qat.weight_bits = 4
    recipe.qat.mixed_precision.enabled, recipe.qat.mixed_precision.higher = True, "int8"
    recipe.qat.mixed_precision.max_accuracy_drop = 0.0
    recipe.ptq.enabled = True
    result = pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    entry = result.report.entry("student-int8.pytorch")
    chosen = entry.info["mixed_precision"]["layers"]
    assert chosen and set(chosen.values()) == {"int8"}
    assert result.report.entry("student-int8.onnx").agreement >= 0.99
    assert result.report.entry("student-ptq.onnx").agreement >= 0.99
    model, _ = load_checkpoint(tmp_path / "out/models/student-int8.pt")
    for layer in chosen:
        assert model.get_submodule(layer).weight_quant.dtype == "int8"
    x = torch.zeros(2, 1, 8, 8)
    assert model(x).shape == (2, 10)


def test_tflite_refuses_a_float_layer_and_says_how_to_fix_it(tmp_path, digits, float_student):
    from edgekd.errors import ExportError
    from edgekd.export import export

    q = _int8(float_student, QATConfig(layers={"features.block1.conv": "float"}), digits)
    with pytest.raises(ExportError, match=r"Conv node '/conv_1/Conv'.*float.*give it int8 \(qat.layers"):
        export(q, ["tflite"], tmp_path, "mixed", digits.input_shape)
    assert not (tmp_path / "mixed.tflite").exists()
