"""End to end: a shortened demo recipe through every stage, and the teacher cache."""

import json

import pytest

from edgekd.pipeline import run
from tests.recipes import short_recipe as shortened


@pytest.fixture(scope="module")
def short_recipe():
    return shortened(epochs=6, qat_epochs=2, lean=False)


@pytest.fixture(scope="module")
def result(tmp_path_factory, short_recipe, monkeypatch_module):
    fast = tmp_path_factory.mktemp("targets")
    (fast / "fast-cpu.yaml").write_text(
        "name: fast-cpu\nthreads: 1\nruntimes: {onnxruntime: {}, openvino: {precision_hint: f32}}\n"
        "benchmark: {warmup_runs: 2, min_runs: 20, min_seconds: 0.05}\n")
    monkeypatch_module.setenv("EDGEKD_TARGETS", str(fast))
    short_recipe.targets = ["fast-cpu"]
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    logs = []
    res = run(short_recipe, out, cache_dir=cache, log=logs.append)
    return res, out, cache, logs


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_report_has_every_stage_and_artifact(result):
    res, out, _, _ = result
    names = [e.name for e in res.report.entries]
    assert names == ["teacher.pytorch", "student-scratch.pytorch", "student-kd.pytorch",
                     "student-int8.pytorch", "student-ptq.pytorch", "teacher.onnx", "teacher.openvino",
                     "student-kd.onnx", "student-kd.openvino", "student-int8.onnx", "student-int8.openvino",
                     "student-ptq.onnx", "student-ptq.openvino"]
    for e in res.report.entries:
        assert e.size_bytes > 0 and e.accuracy is not None and e.params > 0
        if e.format != "pytorch":
            assert e.agreement >= 0.99, e.name
            assert e.latency["p50_ms"] > 0 and e.latency["n"] >= 20
            assert e.peak_memory_bytes > e.memory["model_peak_bytes"] > 0
            assert e.threads == 1 and e.target == "fast-cpu"
    assert {p.name for p in (out / "models").iterdir()} == {
        "teacher.pt", "student-scratch.pt", "student-kd.pt", "student-int8.pt", "student-ptq.pt"}
    assert len(list((out / "bench").glob("*.json"))) == 8


def test_report_json_is_versioned_and_readable(result):
    from edgekd.report import load_report

    res, out, _, _ = result
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1
    assert data["data"]["fingerprint"] == res.report.data["fingerprint"]
    assert set(data["timings_s"]) >= {"data", "teacher", "student-scratch", "student-kd", "student-int8",
                                      "student-ptq", "export", "parity", "benchmark", "total"}  # one per stage
    assert data["task"]["name"] == "image-classification" and data["task"]["quality_metric"] == "accuracy"
    assert load_report(out / "report.json").entries == res.report.entries
    measured = [e for e in res.report.entries if e.info.get("parity")]  # every runtime entry: logits vs PyTorch
    assert measured and all(e.info["parity"]["logits"]["max_abs"] < 1.0 for e in measured)
    markdown = (out / "report.md").read_text()
    assert "| artifact | runtime | target | logits | agreement vs float |" in markdown
    for e in measured:  # int8 artifacts are also compared with the float student they came from
        assert ("vs_float" in e.info) == (e.stage in ("student-int8", "student-ptq"))
        if "vs_float" in e.info:
            assert e.info["vs_float"]["agreement"] >= 0.9
    assert markdown.count("\n") == (len(res.report.entries) + 2 + 5 + len(measured)
                                     + 2 * len(res.report.warnings))


def test_int8_is_much_smaller_and_tracks_its_simulation(result):
    res, _, _, _ = result
    teacher = res.report.entry("teacher.onnx")
    int8 = res.report.entry("student-int8.onnx")
    assert teacher.size_bytes / int8.size_bytes > 10
    assert abs(int8.accuracy - res.report.entry("student-int8.pytorch").accuracy) <= 0.01


def test_recipe_budget_is_checked_against_the_report(result):
    """This run is deliberately short (6 epochs), so accuracy budgets may fail; the rest must hold
    and each accuracy verdict must agree with the report's numbers."""
    res, _, _, _ = result
    verdicts = {(v.artifact, v.metric): v for v in res.budget.verdicts}
    assert len(verdicts) == 12
    teacher_acc = res.report.teacher_accuracy
    for name in ("student-int8.onnx", "student-int8.openvino"):
        entry = res.report.entry(name)
        for metric in ("max_size", "max_p90_latency", "max_peak_memory", "min_agreement"):
            assert verdicts[(f"{name} @fast-cpu", metric)].passed
        assert verdicts[(f"{name} @fast-cpu", "min_accuracy")].passed == (entry.accuracy >= 0.95)
        assert verdicts[(f"{name} @fast-cpu", "max_accuracy_drop")].passed == (teacher_acc - entry.accuracy <= 0.015)


def test_scratch_and_kd_start_from_the_same_weights_and_budget(result):
    res, _, _, _ = result
    scratch = res.report.entry("student-scratch.pytorch").info["training"]
    kd = res.report.entry("student-kd.pytorch").info["training"]
    assert scratch["epochs"] == kd["epochs"] == 6


def test_teacher_is_reused_from_cache(result, short_recipe, tmp_path):
    res, _, cache, logs = result
    assert any("teacher: trained, cached at" in m for m in logs)
    short_recipe.benchmark = False
    short_recipe.budgets = []
    logs2 = []
    second = run(short_recipe, tmp_path, cache_dir=cache, log=logs2.append)
    assert any("teacher: reused from cache" in m for m in logs2)
    assert second.report.entry("teacher.pytorch").accuracy == res.report.entry("teacher.pytorch").accuracy


def test_bad_target_fails_before_training(short_recipe, tmp_path):
    from edgekd.errors import UnknownNameError

    short_recipe.targets = ["x86-cpux"]
    with pytest.raises(UnknownNameError, match="did you mean 'x86-cpu'"):
        run(short_recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "models").exists()


def test_each_training_stage_gets_its_own_shift():
    from edgekd.pipeline import stage_shift
    from edgekd.recipe import demo_recipe

    recipe = demo_recipe()
    recipe.data.shift, recipe.student_training.shift = 1, 2
    assert stage_shift(recipe, recipe.teacher_training) == 1  # inherits data.shift
    assert stage_shift(recipe, recipe.student_training) == 2
    recipe.data.augment = False
    assert stage_shift(recipe, recipe.student_training) == 0


def test_an_unreachable_target_with_compute_figures_gets_estimated_rows(tmp_path):
    from tests.recipes import short_recipe as make

    recipe = make(epochs=2, qat_epochs=1)
    recipe.targets = ["x86-cpu", "ethos-u55"]
    recipe.ptq.enabled = False
    res = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    estimated = [e for e in res.report.entries if e.target == "ethos-u55"]
    assert {e.name for e in estimated} == {"teacher.onnx", "student-kd.onnx", "student-int8.onnx"}
    for e in estimated:
        assert e.info["estimated"] is True and e.runtime is None and e.accuracy is None  # nothing ran there
        if e.name == "student-int8.onnx":
            assert e.latency["estimated"] is True and e.latency["p50_ms"] > 0 and "not_runnable" not in e.info
        else:  # float models cannot run on an integer-only NPU: no latency, and the reason
            assert e.latency is None and "runs integer kernels only" in e.info["not_runnable"]
    int8 = next(e for e in estimated if e.name == "student-int8.onnx")
    assert int8.info["macs"] == 341312
    markdown = (tmp_path / "out/report.md").read_text()
    assert "| student-int8.onnx (estimated) | - | ethos-u55 |" in markdown


def test_a_target_edgekd_cannot_run_or_estimate_is_refused_before_training(tmp_path):
    from edgekd.errors import ConfigError
    from tests.recipes import short_recipe as make

    recipe = make(epochs=1, qat_epochs=1)
    recipe.targets = ["x86-cpu", "qnn-htp"]
    with pytest.raises(ConfigError, match="target 'qnn-htp' has connection: none"):
        run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "models").exists()
