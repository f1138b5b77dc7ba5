"""End to end for detection: the built-in detection recipe, shortened, through every stage;
each artifact's detections are compared with PyTorch's, per output."""

import json

import numpy as np
import pytest

from edgekd.pipeline import run
from edgekd.recipe import demo_recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    recipe = demo_recipe("object-detection")
    recipe.teacher_training.epochs, recipe.student_training.epochs = 4, 3
    recipe.qat.epochs, recipe.qat.freeze_observers_epoch = 1, 1
    recipe.export.formats, recipe.benchmark, recipe.budgets = ["onnx", "tflite"], False, []
    out = tmp_path_factory.mktemp("det-run")
    logs = []
    res = run(recipe, out, cache_dir=tmp_path_factory.mktemp("cache"), log=logs.append)
    return res, out, logs


def test_every_stage_is_scored_by_map(result):
    res, _, logs = result
    entries = {e.name: e for e in res.report.entries}
    assert res.report.task["quality_metric"] == "map50" and res.report.task["teacher_target"] == "detection"
    assert entries["teacher.pytorch"].quality("map50") > 0.3  # 4 epochs find most digits
    for name in ("student-kd.pytorch", "student-int8.tflite", "student-ptq.onnx"):
        assert set(entries[name].metrics) >= {"map50", "map75", "precision", "recall"}
    assert any("task object-detection" in line for line in logs)


def test_float_heads_match_pytorch_output_by_output(result):
    res, _, _ = result
    for e in res.report.entries:
        if e.runtime and e.stage in ("teacher", "student-kd"):
            assert e.agreement == 1.0, e.name
            assert e.info["parity"]["boxes"]["max_abs"] < 1e-3 and e.info["parity"]["scores"]["max_abs"] < 1e-4


def test_int8_heads_agree_with_their_simulation(result):
    res, out, _ = result
    teacher = next(e for e in res.report.entries if e.name == "teacher.onnx")
    assert teacher.agreement == 1.0
    for e in res.report.entries:
        if e.stage in ("student-int8", "student-ptq") and e.runtime:
            assert e.agreement >= 0.9, e.name
            assert e.info["parity"]["boxes"]["max_abs"] <= 1.0  # pixels: a few int8 steps of a 32 px range
            assert e.info["parity"]["scores"]["max_abs"] <= 0.2
            # also compared with the float student it came from (a 3-epoch student's detections sit near the
            # score threshold, so QAT moves many: the classification run checks the figure's level)
            assert set(e.info["vs_float"]) == {"agreement", "parity"}
    checks = {c["output"]: c for c in next(e for e in res.report.entries
                                           if e.name == "student-int8.tflite").info["export_check"]}
    assert set(checks) == {"boxes", "scores"} and all(c["within_steps"] >= 0.99 for c in checks.values())
    report = json.loads((out / "report.json").read_text())
    assert "| boxes | scores | agreement vs float |" in (out / "report.md").read_text()
    assert report["task"]["outputs"][0]["name"] == "boxes"


def test_the_exported_head_has_no_nms_and_two_outputs(result):
    import onnx

    _, out, _ = result
    model = onnx.load(out / "artifacts" / "student-int8.onnx")
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    assert not any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    from edgekd.runtime import open_session

    session = open_session(out / "artifacts" / "student-int8.tflite", "litert")
    session.feed(np.zeros((1, 1, 32, 32), np.float32))
    session.infer()
    boxes, scores = session.fetch_all()
    assert boxes.shape == (1, 80, 4) and scores.shape == (1, 80, 10)


def test_edgekd_export_of_the_int8_checkpoint_resolves_float_fallback_as_the_run_did(result, tmp_path):
    """The x86-cpu student keeps its box arithmetic float (no int8 kernel reads it): `edgekd export`
    of its checkpoint writes the TFLite file the run wrote, and --tflite-full-integer names the op."""
    from click.testing import CliRunner

    from edgekd.cli import main

    _, out, _ = result
    checkpoint = str(out / "models" / "student-int8.pt")
    ok = CliRunner().invoke(main, ["export", checkpoint, "-f", "tflite", "--out", str(tmp_path)],
                            catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "student-int8.tflite").is_file()
    strict = CliRunner().invoke(main, ["export", checkpoint, "-f", "tflite", "--tflite-full-integer", "--out",
                                       str(tmp_path / "strict")], catch_exceptions=False)
    assert strict.exit_code == 2 and "has no QuantizeLinear" in strict.output and "float_fallback" in strict.output
