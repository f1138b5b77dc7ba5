"""A second task through the whole pipeline: token ids in, one class per sequence out, trained
from scratch and by KD, int8 QAT, exported to ONNX and OpenVINO IR with two int64 inputs and a
named ``sequence`` axis, run in both runtimes (parity) and benchmarked at a declared length.
Nothing in edgekd was written for this task (``tests/tasks/toy_sequence.py``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgekd import pipeline
from edgekd.errors import ConfigError
from edgekd.recipe import Recipe
from edgekd.tasks import create_task, list_tasks
from tests.tasks import toy_sequence  # noqa: F401  (registers the task)

TARGET = """
name: tiny-x86
connection: local
threads: 1
runtimes: {onnxruntime: {}, openvino: {precision_hint: f32}}
benchmark: {warmup_runs: 2, min_runs: 5, min_seconds: 0.0, max_seconds: 2.0}
"""


def _recipe(tmp_path, **overrides) -> Recipe:
    target = tmp_path / "tiny-x86.yaml"
    target.write_text(TARGET)
    data = {
        "name": "toy-seq", "task": "toy-sequence-classification",
        "data": {"batch_size": 32},
        "teacher": {"arch": "tests.tasks.toy_sequence:teacher"},
        "student": {"arch": "tests.tasks.toy_sequence:student"},
        "teacher_training": {"epochs": 25, "lr": 0.01}, "student_training": {"epochs": 15, "lr": 0.01},
        "qat": {"epochs": 2, "lr": 0.0005}, "export": {"formats": ["onnx", "openvino"]},
        "targets": [str(target)], "shapes": {"sequence": toy_sequence.LENGTH},
        "budgets": [{"artifact": "student-int8.onnx", "min_quality": "80%", "max_quality_drop": "15%"}],
    }
    data.update(overrides)
    return Recipe.from_dict(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    return pipeline.run(_recipe(tmp), tmp / "out", cache_dir=tmp / "cache"), tmp


def test_the_task_is_registered_beside_the_built_in_one():
    assert {"image-classification", "toy-sequence-classification"} <= set(list_tasks())
    assert create_task("toy-sequence-classification").quality_metric == "accuracy"


def test_every_stage_learns_the_task(run):
    result, _ = run
    report = result.report
    assert report.task["name"] == "toy-sequence-classification"
    acc = {e.name: e.accuracy for e in report.entries if e.format == "pytorch"}
    assert acc["teacher.pytorch"] > 0.85, acc
    assert acc["student-kd.pytorch"] > 0.8, acc
    assert acc["student-int8.pytorch"] > 0.8, acc
    assert result.budget is not None and result.budget.passed, result.budget.table()


def test_exports_keep_both_int64_inputs_and_the_named_sequence_axis(run):
    result, _ = run
    path = result.report.entry("student-int8.onnx").path
    graph = onnx.load(path).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for t in inputs.values():
        assert t.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param or d.dim_value for d in t.shape.dim] == ["batch", "sequence"]
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the int8 student is quantized
    declared = json.loads(dict((p.key, p.value) for p in onnx.load(path).metadata_props)["edgekd.inputs"])
    assert declared[0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"],
                           "low": 0, "high": toy_sequence.VOCAB}


def test_every_artifact_agrees_with_pytorch_in_its_runtime(run):
    result, _ = run
    rows = [e for e in result.report.entries if e.format in ("onnx", "openvino")]
    assert {(e.stage, e.runtime) for e in rows} >= {("student-kd", "onnxruntime"), ("student-kd", "openvino"),
                                                     ("student-int8", "onnxruntime"), ("student-int8", "openvino")}
    for e in rows:
        floor = 1.0 if e.stage != "student-int8" else 0.97  # int8 kernels may round a close call apart
        assert e.agreement >= floor, (e.name, e.runtime, e.agreement)
        assert e.metrics["accuracy"] == e.accuracy


def test_benchmarks_run_at_the_declared_sequence_length_with_int64_token_ids(run):
    result, tmp = run
    benched = [e for e in result.report.entries if e.latency is not None]
    assert {e.runtime for e in benched} == {"onnxruntime", "openvino"}
    for e in benched:
        assert e.latency["p50_ms"] > 0
    raw = json.loads(next((tmp / "out" / "bench").glob("student-int8.onnx.onnxruntime.*.json")).read_text())
    shapes = json.dumps(raw)
    assert "input_ids" in shapes and "int64" in shapes and str(toy_sequence.LENGTH) in shapes


def test_a_benchmark_without_a_declared_sequence_length_is_refused(tmp_path):
    from edgekd.bench.harness import benchmark_on_target
    from edgekd.targets import load_target

    recipe = _recipe(tmp_path, benchmark=False, qat={"enabled": False}, export={"formats": ["onnx"]},
                     teacher_training={"epochs": 1}, student_training={"epochs": 1}, budgets=[])
    result = pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    path = result.report.entry("student-kd.onnx").path
    with pytest.raises(ConfigError, match="sequence"):
        benchmark_on_target(path, load_target(str(tmp_path / "tiny-x86.yaml")))


def test_a_recipe_without_a_sequence_length_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.stages, "train_scratch", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(ConfigError, match=r"target 'tiny-x86': input 'input_ids' axis 1 \('sequence'\).*set `shapes:`"):
        pipeline.run(_recipe(tmp_path, shapes={}), tmp_path / "out", cache_dir=tmp_path / "cache")


def test_metrics_follow_the_class_axis_and_skip_unlabelled_positions():
    task = create_task("toy-sequence-classification")
    logits = np.array([[[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]]], np.float32)  # (N=2, L=2, K=2)
    labels = np.array([[1, 1], [1, -1]])
    assert task.metrics(logits, labels)["accuracy"] == pytest.approx(2 / 3)


def test_a_task_can_be_named_by_module_and_class_in_a_recipe():
    from edgekd.errors import ConfigError

    task = create_task("tests.tasks.toy_sequence:ToySequenceClassification")
    assert [s.name for s in task.input_spec(None)] == ["input_ids", "attention_mask"]
    with pytest.raises(ConfigError, match="no 'Nope'"):
        create_task("tests.tasks.toy_sequence:Nope")
    with pytest.raises(ConfigError, match="not a subclass of edgekd.tasks.base.Task"):
        create_task("tests.tasks.toy_sequence:BagOfTokens")
