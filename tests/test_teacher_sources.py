"""Recipes that distil from an ONNX teacher file, a black-box teacher, or a teacher cache."""

import pytest

import edgekd.pipeline as pipeline
from tests.recipes import short_recipe


def _recipe(**distill):
    recipe = short_recipe(epochs=3, qat_epochs=None)
    for key, value in distill.items():
        setattr(recipe.distill, key, value)
    return recipe


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher-run")
    result = pipeline.run(_recipe(), out, cache_dir=out / "cache")
    return out / "artifacts" / "teacher.onnx", result


def test_distil_from_an_onnx_teacher_file(tmp_path, onnx_teacher):
    path, first = onnx_teacher
    recipe = _recipe()
    recipe.teacher.checkpoint = str(path)
    result = pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    names = [e.name for e in result.report.entries]
    assert "teacher.onnx" in names and "teacher.pytorch" not in names
    teacher = result.report.entry("teacher.onnx")
    assert teacher.runtime == "onnxruntime"
    assert teacher.accuracy == pytest.approx(first.report.entry("teacher.pytorch").accuracy, abs=1e-9)
    assert result.report.teacher_accuracy == teacher.accuracy
    kd = result.report.entry("student-kd.pytorch")
    assert kd.info["training"]["history"][-1]["loss_kd"] > 0
    # the same teacher as a PyTorch model gave the same soft targets (to ~1e-6): the same student
    assert kd.accuracy == pytest.approx(first.report.entry("student-kd.pytorch").accuracy, abs=0.02)


def test_onnx_teacher_refuses_feature_losses(tmp_path, onnx_teacher):
    from edgekd.distill.api import TermConfig
    from edgekd.errors import ConfigError

    recipe = _recipe(terms=[TermConfig("ce"), TermConfig("fitnets", student="features.block1",
                                                          teacher="features.block2")])
    recipe.teacher.checkpoint = str(onnx_teacher[0])
    with pytest.raises(ConfigError, match="feature losses need a PyTorch teacher"):
        pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")


def _stages(recipe, out, names, log=None, cache=None):
    """Only the stages a test is about (no scratch baseline, export or report)."""
    ctx = pipeline.prepare(recipe, out, cache_dir=cache or out / "cache", log=log or (lambda m: None))
    return pipeline.run_stages(ctx, names)


@pytest.mark.parametrize("output", ["topk", "labels"])
def test_black_box_teacher_only_shows_topk_or_labels(tmp_path, output, monkeypatch):
    seen = []
    real = pipeline.stages.distill

    def spy(student, provider, *args, **kwargs):
        seen.append(provider.kind)
        return real(student, provider, *args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "distill", spy)
    ctx = _stages(_recipe(teacher_output=output, top_k=3), tmp_path, ["teacher", "student-kd"])
    assert seen == [output]
    assert ctx.products["student-kd"].fit.best_val_accuracy > 0.5  # learnt (chance is 0.1)


def test_teacher_cache_is_filled_once_and_reused_by_the_next_run(tmp_path):
    logs = []
    recipe = _recipe(cache=True, cache_views=2)
    _stages(recipe, tmp_path / "a", ["teacher", "student-kd"], logs.append, tmp_path / "cache")
    first = next(m for m in logs if m.startswith("teacher cache"))
    assert "'misses': " in first and "'hits': " in first
    logs.clear()
    recipe.name = "another-student-same-teacher"
    _stages(recipe, tmp_path / "b", ["teacher", "student-kd"], logs.append, tmp_path / "cache")
    second = next(m for m in logs if m.startswith("teacher cache"))
    assert "'misses': 0," in second  # every (sample, view) served from the memory-mapped file


def test_without_augmentation_the_cache_keeps_one_view(tmp_path):
    """Every view of an un-augmented sample is the same input: one teacher pass per sample, and
    every later epoch is served from the cache (8 views would cost 8 passes for one answer)."""
    logs = []
    recipe = _recipe(cache=True, cache_views=8)
    recipe.data.augment = False
    ctx = _stages(recipe, tmp_path, ["teacher", "student-kd"], logs.append, tmp_path / "cache")
    stats = next(m for m in logs if m.startswith("teacher cache"))
    samples = len(ctx.data.y_train)
    assert f"'misses': {samples}," in stats and f"'hits': {2 * samples}," in stats  # 3 epochs: filled in the first


def test_kd_student_starts_from_every_other_teacher_block(tmp_path):
    from edgekd.distill import evaluate

    logs = []
    recipe = _recipe(init_from_teacher=True)
    recipe.student.arch = "cnn-teacher-half"
    recipe.student_training.epochs = 1
    ctx = _stages(recipe, tmp_path, ["teacher", "student-scratch", "student-kd"], logs.append)
    assert any("tensors initialised from the teacher's blocks" in m for m in logs)
    kd, scratch = (evaluate(ctx.products[s].model, ctx.data.x_test, ctx.data.y_test)
                   for s in ("student-kd", "student-scratch"))
    assert kd > scratch  # one epoch from the teacher's filters vs one from random ones


@pytest.mark.parametrize("distill, message", [
    ({"teacher_output": "topk", "loss": "dkd"}, "needs the teacher's logits; teacher_output 'topk' hides them"),
    ({"teacher_output": "topk", "top_k": 11}, "top_k is 11 but the data has 10 classes"),
])
def test_objective_the_teacher_cannot_feed_fails_before_any_training(tmp_path, distill, message, monkeypatch):
    from edgekd.errors import ConfigError

    monkeypatch.setattr(pipeline.stages, "train_scratch", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(ConfigError, match=message):
        pipeline.run(_recipe(**distill), tmp_path / "out", cache_dir=tmp_path / "cache")
