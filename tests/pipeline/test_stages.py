"""The stage list, each stage on its own over a small run context, and the claim that a new stage
is one entry: the phases after training export, check and report whatever the stages produced."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import edgekd.pipeline as pipeline
from edgekd.pipeline import STAGES, RunContext, list_stages
from edgekd.pipeline.context import Product
from edgekd.pipeline.phases import artifact_entries, export_products, model_entries
from edgekd.errors import ConfigError
from edgekd.targets import load_target
from tests.recipes import short_recipe

PIPELINE = Path(pipeline.__file__).parent


def test_stage_names_are_unique_and_in_run_order():
    assert list_stages() == ["teacher", "student-scratch", "student-kd", "mixed-precision", "student-int8",
                             "student-ptq"]


def test_no_stage_name_is_spelled_twice_in_the_pipeline():
    """Later phases iterate over products; only the stage list names a stage."""
    source = "\n".join(p.read_text() for p in PIPELINE.glob("*.py"))
    for name in list_stages():
        spelled = re.findall(rf"[\"']{re.escape(name)}[\"']", source)
        assert len(spelled) == 1, (name, len(spelled))


def test_stage_conditions_follow_the_recipe():
    recipe = short_recipe()
    enabled = [s.name for s in STAGES if s.enabled(recipe)]
    assert enabled == ["teacher", "student-scratch", "student-kd", "student-int8", "student-ptq"]
    recipe.qat.enabled = recipe.ptq.enabled = False
    recipe.qat.mixed_precision.enabled = True  # nothing to quantize: no sensitivity pass either
    assert [s.name for s in STAGES if s.enabled(recipe)] == ["teacher", "student-scratch", "student-kd"]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    recipe = short_recipe(epochs=2, qat_epochs=1)
    recipe.ptq.calibration_batches = 2
    return pipeline.run_stages(pipeline.prepare(recipe, tmp, cache_dir=tmp / "cache"))


def test_stages_can_be_run_alone(tmp_path):
    """The teacher and the KD student without the scratch baseline or quantization."""
    recipe = short_recipe(epochs=1, qat_epochs=1)
    ctx = pipeline.run_stages(pipeline.prepare(recipe, tmp_path, cache_dir=tmp_path / "c"),
                              ["teacher", "student-kd"])
    assert list(ctx.products) == ["teacher", "student-kd"] and set(ctx.timings) == {"data", "teacher", "student-kd"}
    with pytest.raises(ConfigError, match="unknown stage.*'student-kdd'"):
        pipeline.run_stages(ctx, ["student-kdd"])


def test_each_stage_leaves_its_product(ctx):
    kinds = {name: (p.quantized, p.exported) for name, p in ctx.products.items()}
    assert kinds == {"teacher": (False, True), "student-scratch": (False, False), "student-kd": (False, True),
                     "student-int8": (True, True), "student-ptq": (True, True)}
    assert ctx.student is ctx.products["student-kd"].model  # quantization starts from the KD student
    for name in ("student-scratch", "student-kd", "student-int8", "student-ptq", "teacher"):
        assert ctx.store.model_path(name).is_file(), name  # every model is checkpointed
    assert ctx.products["student-int8"].fit.history and ctx.products["student-ptq"].fit["observer"] == "mse"


def test_the_scratch_and_kd_students_start_from_the_same_weights(ctx):
    a, b = ctx.student_init(), ctx.student_init()
    assert all((pa == pb).all() for pa, pb in zip(a.parameters(), b.parameters()))


def test_a_new_stage_is_one_entry(ctx, monkeypatch):
    """A stage the phases never heard of is scored, exported and run in its runtime like the others."""
    def halved(context: RunContext, name: str) -> Product:
        def fit(state):
            model = copy.deepcopy(context.student)
            for p in model.parameters():
                p.data *= 0.5  # another model
            return model, None

        model, _ = context.trained(name, context.recipe.student, None, fit)
        return Product(name, model, context.recipe.student)

    ctx = copy.copy(ctx)
    ctx.products = {k: v for k, v in ctx.products.items() if k in ("student-kd",)}
    ctx.products["student-halved"] = halved(ctx, "student-halved")
    entries, references = model_entries(ctx)
    assert [e.name for e in entries] == ["student-kd.pytorch", "student-halved.pytorch"]
    exported = export_products(ctx)
    assert [(e.product.stage, e.artifact.format) for e in exported] == [("student-kd", "onnx"),
                                                                        ("student-halved", "onnx")]
    rows = artifact_entries(ctx, exported, [load_target("x86-cpu")], references)
    assert {r.name for r in rows} == {"student-kd.onnx", "student-halved.onnx"}
    assert all(r.agreement == 1.0 for r in rows)
