"""edgekd.recipe: the demo recipe, round trips and error messages that name the line."""

from __future__ import annotations

import pytest

from edgekd.config import dump_yaml, parse_yaml
from edgekd.errors import ConfigError
from edgekd.recipe import Recipe, demo_recipe, demo_recipe_text, load_recipe


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def recipe_error(text: str, name: str = "r.yaml") -> str:
    data, source = parse_yaml(text, name)
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(data, source)
    return str(info.value)


def test_demo_recipe_parses_with_its_values():
    r = demo_recipe()
    assert r.name == "digits-demo"
    assert (r.teacher.arch, r.student.arch) == ("cnn-teacher", "cnn-student-s")
    assert (r.teacher_training.epochs, r.student_training.epochs) == (30, 100)
    assert (r.data.shift, r.teacher_training.shift, r.student_training.shift) == (1, None, 2)
    assert (r.distill.loss, r.distill.temperature, r.distill.kd_weight) == ("kd", 2.0, 0.5)
    assert r.data.split == [0.6, 0.2, 0.2]
    assert (r.qat.enabled, r.qat.epochs, r.qat.freeze_observers_epoch) == (True, 6, 3)
    assert r.export.formats == ["onnx", "openvino", "tflite"]
    assert (r.export.tflite.io, r.export.tflite.layout) == ("float", "nchw")
    assert r.targets == ["x86-cpu"]
    [rule] = r.budgets
    assert rule.patterns == ["student-int8.onnx", "student-int8.openvino", "student-int8.tflite"]
    assert rule.limits["max_size"] == 64_000
    assert rule.limits["max_p90_latency"] == 5.0
    assert rule.limits["max_peak_memory"] == 400_000_000
    assert rule.limits["max_accuracy_drop"] == pytest.approx(0.015)
    assert rule.limits["min_agreement"] == pytest.approx(0.99)


def test_round_trip_through_dict():
    r = demo_recipe()
    assert Recipe.from_dict(r.to_dict()) == r


def test_round_trip_through_yaml_text():
    r = demo_recipe()
    data, source = parse_yaml(dump_yaml(r.to_dict()), "dumped.yaml")
    assert Recipe.from_dict(data, source) == r


def test_default_recipe_round_trips():
    assert Recipe.from_dict(Recipe().to_dict()) == Recipe()


def test_load_recipe_from_file(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(demo_recipe_text())
    assert load_recipe(path) == demo_recipe()


def test_load_recipe_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_typo_in_nested_field_names_line_and_suggests():
    text = demo_recipe_text().replace("temperature: 2.0", "temprature: 2.0")
    line = line_of(text, "temprature")
    assert recipe_error(text).startswith(
        f"r.yaml:{line}: distill.temprature: unknown field; did you mean 'temperature'?; valid fields: ")


def test_typo_in_budget_rule_names_list_index():
    text = demo_recipe_text().replace("max_size: 64KB", "max_sise: 64KB")
    line = line_of(text, "max_sise")
    assert recipe_error(text).startswith(
        f"r.yaml:{line}: budgets.0.max_sise: unknown field; did you mean 'max_size'?")


def test_unknown_export_format_lists_valid_formats():
    text = demo_recipe_text().replace("formats: [onnx, openvino, tflite]", "formats: [onnx, tflit]")
    line = line_of(text, "tflit]")
    assert recipe_error(text) == (
        f"r.yaml:{line}: export.formats.1: unknown export format 'tflit'; did you mean 'tflite'?; "
        f"valid export formats: onnx, openvino, tflite")


def test_bad_tflite_option_names_field_and_line():
    text = demo_recipe_text().replace("io: float", "io: int4")
    line = line_of(text, "io: int4")
    assert recipe_error(text).startswith(f"r.yaml:{line}: export.tflite.io: expected one of 'float', 'int8'")


def test_unknown_model_arch_suggests_and_lists_valid_models():
    text = demo_recipe_text().replace("arch: cnn-student-s", "arch: cnn-studnt-s")
    line = line_of(text, "cnn-studnt-s")
    assert recipe_error(text) == (
        f"r.yaml:{line}: student.arch: unknown model 'cnn-studnt-s'; did you mean 'cnn-student-s'?; "
        f"valid models: bert-student, cnn-student-m, cnn-student-s, cnn-student-xs, cnn-teacher, cnn-teacher-half, "
        f"det-student, det-teacher, minilm-l6-v2, mobilenetv2, mobilenetv2-050 (or write package.module:callable)")


def test_bad_budget_unit_names_line_and_field():
    text = demo_recipe_text().replace("max_p90_latency: 5ms", "max_p90_latency: 5 parsecs")
    line = line_of(text, "parsecs")
    assert recipe_error(text) == (
        f"r.yaml:{line}: budgets.0.max_p90_latency: expected a time such as '8ms' or '1.5s', "
        f"got '5 parsecs'; known units: ns, us, µs, ms, s")


def test_unsupported_schema_version():
    text = demo_recipe_text().replace("version: 1", "version: 2")
    assert recipe_error(text) == (
        f"r.yaml:{line_of(text, 'version: 2')}: version: recipe schema 2 is not supported "
        f"(this edgekd reads version 1)")


def test_empty_targets_rejected():
    text = demo_recipe_text().replace("targets: [x86-cpu]", "targets: []")
    line = line_of(text, "targets: []")
    assert recipe_error(text) == f"r.yaml:{line}: targets: name at least one target (see `edgekd targets`)"


def test_opset_out_of_range():
    assert Recipe.from_dict({"export": {"opset": 21}}).export.opset == 21
    with pytest.raises(ConfigError, match=r"^<dict>: export\.opset: expected an ONNX opset in 13\.\.21, got 12$"):
        Recipe.from_dict({"export": {"opset": 12}})
