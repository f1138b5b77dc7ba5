"""The dry run refuses, before any training, a model the recipe's formats or target cannot take."""

import sys
import textwrap

import pytest

from edgekd.errors import DryRunError
from edgekd.pipeline import run
from tests.recipes import short_recipe

USER_MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    class CumSumStudent(nn.Module):  # CumSum has no TFLite converter
        def __init__(self, in_channels=1, num_classes=10, **_):
            super().__init__()
            self.fc = nn.Linear(in_channels * 64, num_classes)

        def forward(self, x):
            return self.fc(torch.cumsum(x.flatten(1), dim=1))

    class LayerNormStudent(nn.Module):  # LayerNorm over (C, H, W): no integer form on full-integer TFLite
        def __init__(self, in_channels=1, num_classes=10, **_):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
            self.norm = nn.LayerNorm([8, 8, 8])
            self.fc1 = nn.Linear(8 * 64, 32)
            self.fc2 = nn.Linear(32, num_classes)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.norm(torch.relu(self.conv(x))).flatten(1))))

    class TokenNormStudent(LayerNormStudent):  # LayerNorm over the last axis: MEAN, SUB, L2_NORMALIZATION
        def __init__(self, in_channels=1, num_classes=10, **_):
            super().__init__(in_channels, num_classes)
            self.norm = nn.LayerNorm(32)

        def forward(self, x):
            return self.fc2(self.norm(self.fc1(torch.relu(self.conv(x)).flatten(1))))
""")


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "dry_run_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dry_run_models"
    sys.modules.pop("dry_run_models", None)


def _recipe(arch: str, formats: list[str], qat: bool):
    recipe = short_recipe(epochs=1, qat_epochs=1 if qat else None)
    recipe.student.arch = arch
    recipe.ptq.enabled = False
    recipe.export.formats = formats
    return recipe


def test_a_float_format_the_student_cannot_take_is_refused_before_training(tmp_path, user_models):
    recipe = _recipe(f"{user_models}:CumSumStudent", ["onnx", "tflite"], qat=False)
    with pytest.raises(DryRunError, match=r"dry run before training: the student \(dry_run_models:CumSumStudent\) "
                                          r"cannot be exported to tflite: .*CumSum.*Nothing was trained"):
        run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "models").exists()
    assert not list((tmp_path / "cache").glob("**/*.pt"))  # not even the teacher trained


def test_an_int8_model_the_target_cannot_run_is_refused_before_training(tmp_path, user_models):
    recipe = _recipe(f"{user_models}:LayerNormStudent", ["onnx", "tflite"], qat=True)
    recipe.qat.target = "arm-litert-xnnpack"
    with pytest.raises(DryRunError, match=r"the int8 student \(target 'arm-litert-xnnpack'\) cannot be exported "
                                          r"to tflite: .*LayerNormalization"):
        run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "models").exists()


def test_a_layer_norm_over_the_last_axis_goes_full_integer_on_that_target(tmp_path, user_models):
    logs = []
    recipe = _recipe(f"{user_models}:TokenNormStudent", ["onnx", "tflite"], qat=True)
    recipe.qat.target = "arm-litert-xnnpack"
    result = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", log=logs.append)
    assert any(line.startswith("dry run: the untrained student exports to onnx, tflite in float and int8")
               for line in logs), logs
    int8 = [e for e in result.report.entries if e.format == "tflite" and e.stage.endswith("int8")]
    assert int8 and all(e.agreement is not None and e.agreement >= 0.9 for e in int8), \
        [(e.stage, e.agreement) for e in int8]
    assert int8[0].info["export_check"][0]["passed"]


def test_the_same_student_passes_where_its_formats_hold_it(tmp_path, user_models):
    """ONNX only: float LayerNorm between int8 layers is fine where onnxruntime runs it."""
    logs = []
    recipe = _recipe(f"{user_models}:LayerNormStudent", ["onnx"], qat=True)
    result = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", log=logs.append)
    assert result is not None and any(line.startswith("dry run: the untrained student exports to onnx")
                                      for line in logs)
    assert "dry_run" in result.report.timings_s


def test_a_target_with_float_kernels_takes_the_layer_norm_in_a_float_fallback_tflite(tmp_path, user_models):
    """x86-onnxruntime runs float ops between int8 ones: its TFLite keeps LayerNorm float."""
    logs = []
    recipe = _recipe(f"{user_models}:LayerNormStudent", ["onnx", "tflite"], qat=True)
    recipe.qat.target = "x86-onnxruntime"
    assert recipe.export.options(scheme=None)["tflite"]["float_fallback"] is False
    result = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", log=logs.append)
    assert any(line.startswith("dry run: the untrained student exports to onnx, tflite in float and int8")
               for line in logs), logs
    int8 = [e for e in result.report.entries if e.format == "tflite" and e.stage.endswith("int8")]
    assert int8 and all(e.size_bytes > 0 and e.agreement is not None for e in int8)
    # the export check ran on test data, per output, with its tolerance stated, and is reported
    check = int8[0].info["export_check"]
    assert [(c["source"], c["passed"]) for c in check] == [("data", True)] and check[0]["inputs"] >= 8
    assert "step(s)" in check[0]["tolerance"]
    assert any("export check, output" in line and "data samples" in line for line in logs)
