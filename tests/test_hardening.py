"""Bad input, enumerated: each gets a clear, specific message and the right exit code, with no
traceback and nothing left half-written. Property-based tests (hypothesis) feed the recipe and
budget parsers arbitrary data: they may refuse it, only ever with a ConfigError.

Exit codes: 2 bad input (usage, files, config); 3 a runtime or measurement could not run.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.cli import main
from edgekd.errors import ConfigError, DataError, ModelLoadError, TrainingError

RUNNER = CliRunner()


def _cli(*args) -> tuple[int, str]:
    result = RUNNER.invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output  # one paragraph, never a traceback
    return result.exit_code, result.output


def _truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


# -- corrupt and truncated files ----------------------------------------------------------------

@pytest.mark.parametrize("fmt, message", [
    ("onnx", "onnxruntime cannot load it"),
    ("tflite", "LiteRT cannot load it"),
    ("openvino", "OpenVINO cannot load it"),
])
def test_truncated_artifacts_are_bad_input(exported, tmp_path, fmt, message):
    src = exported[("int8", fmt)].path
    bad = _truncated(src, tmp_path / src.name)
    if fmt == "openvino":
        shutil.copy(src.with_suffix(".bin"), bad.with_suffix(".bin"))
    code, out = _cli("bench", bad)
    assert code == 2 and message in out and src.name in out


def test_truncated_onnx_cannot_be_exported_or_validated(exported, tmp_path):
    bad = _truncated(exported[("int8", "onnx")].path, tmp_path / "m.onnx")
    code, out = _cli("export", bad, "-f", "tflite", "--out", tmp_path / "out")
    assert code == 2 and "m.onnx: not a valid ONNX model, the file is truncated or corrupt" in out
    assert not (tmp_path / "out" / "m.tflite").exists()
    code, out = _cli("validate", bad, "--target", "x86-cpu")
    assert code == 2 and "not a valid ONNX model" in out


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    code, out = _cli("export", bad, "--out", tmp_path / "out")
    assert code == 2 and "student.pt" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_checkpoints_never_run_code(tmp_path):
    """A pickle that would run a command when loaded is refused (weights_only=True): the command never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "edgekd-checkpoint", "state_dict": Exploit()}, f)
    from edgekd.models import load_checkpoint

    with pytest.raises(ModelLoadError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()


# -- data ----------------------------------------------------------------------------------------

def _npz(path: Path, x, y) -> Path:
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return path


@pytest.mark.parametrize("name, x, y, message", [
    ("empty", np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), "the dataset is empty"),
    ("one-class", np.random.rand(20, 8, 8).astype(np.float32), np.zeros(20, np.int64), "only one class (0) present"),
    ("negative-label", np.random.rand(20, 8, 8).astype(np.float32), np.r_[np.arange(19) % 2, -1], "labels must be in"),
    ("nan-pixels", np.full((20, 8, 8), np.nan, np.float32), np.arange(20) % 2, "x contains NaN or infinite values"),
    ("label-shape", np.random.rand(20, 8, 8).astype(np.float32), np.zeros((20, 2), np.int64), "y has shape"),
])
def test_bad_datasets_are_named(tmp_path, name, x, y, message):
    from edgekd.data import DataConfig, load_data

    path = _npz(tmp_path / f"{name}.npz", x, y)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source=str(path)))
    assert message in str(info.value) and f"{name}.npz" in str(info.value)


def test_data_that_does_not_fit_the_model_is_named(tmp_path, exported):
    """A 16x16 dataset against an 8x8 artifact: the shapes are named, not a runtime stack trace."""
    from edgekd.runtime import evaluate_session, open_session

    session = open_session(exported[("int8", "tflite")].path, "litert")
    with pytest.raises(DataError) as info:
        evaluate_session(session, np.zeros((4, 1, 16, 16), np.float32), np.zeros(4, np.int64))
    assert "(4, 1, 16, 16)" in str(info.value) and "[None, 1, 8, 8]" in str(info.value)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_data_of_a_dtype_no_model_takes_is_named(exported, fmt):
    """Booleans or Python objects are refused by name; integers and floats are cast to the input type."""
    from edgekd.runtime import evaluate_session, open_session

    session = open_session(exported[("int8", fmt)].path)
    y = np.zeros(4, np.int64)
    for dtype in (np.bool_, object):
        with pytest.raises(DataError, match=f"data of dtype {np.dtype(dtype)} cannot feed"):
            evaluate_session(session, np.zeros((4, 1, 8, 8), dtype), y)
    assert evaluate_session(session, np.zeros((4, 1, 8, 8), np.float64), y).agreement is None


def test_ptq_on_data_of_another_shape_is_bad_input(tmp_path, float_student):
    from edgekd.models import ModelSpec, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "s.pt", float_student, ModelSpec(arch="cnn-student-s"), in_channels=1,
                           num_classes=10, input_shape=(1, 8, 8))
    data = _npz(tmp_path / "big.npz", np.random.rand(40, 16, 16).astype(np.float32), np.arange(40) % 10)
    code, out = _cli("ptq", ckpt, "--data", data, "--out", tmp_path / "out")
    assert code == 2 and "16, 16" in out and "8, 8" in out


# -- training --------------------------------------------------------------------------------------

def test_nan_in_training_stops_with_epoch_and_term_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    from edgekd.distill import TrainConfig, train_scratch
    from edgekd.models import create_model

    model = create_model("cnn-student-xs")
    state = tmp_path / "stage.state"

    def diverge(epoch: int) -> None:
        if epoch == 2:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss term 'ce' became nan in epoch 3"):
        train_scratch(model, digits, TrainConfig(epochs=5), on_epoch_start=diverge, checkpoint=state)
    saved = torch.load(state, weights_only=True)
    assert saved["epochs_done"] == 2  # the last good epoch is kept, resumable
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


# -- names: targets, runtimes, devices, providers ---------------------------------------------------

def test_unknown_target_runtime_and_device(exported, tmp_path):
    path = exported[("int8", "onnx")].path
    code, out = _cli("bench", path, "--target", "x86-cpux")
    assert code == 2 and "unknown target 'x86-cpux'; did you mean 'x86-cpu'?" in out
    code, out = _cli("bench", path, "--runtime", "onnxrt")
    assert code == 2 and "onnxrt" in out and "onnxruntime" in out
    ov = tmp_path / "gpu.yaml"
    ov.write_text("name: gpu\nruntimes: {openvino: {device: GPU}}\nbenchmark: {min_runs: 5, min_seconds: 0.01}\n")
    code, out = _cli("bench", exported[("int8", "openvino")].path, "--target", ov)
    assert code == 3 and "device 'GPU' is not available" in out


# -- configs: recipes and budgets -----------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (("distill:\n  loss: kd", "distill:\n  loss: kld"), "unknown loss 'kld'; did you mean 'kd'?"),
    (("student_training:", "student_trainng:"), "unknown field; did you mean 'student_training'?"),
    (("  epochs: 100", "  epochs: many"), "student_training.epochs: expected int, got str 'many'"),
    (("  lr: 0.003\n  shift", "  lr: 12\n  shift"), "student_training.lr: expected a learning rate in (0, 10)"),
    (("split: [0.6, 0.2, 0.2]", "split: [0.9, 0.2, 0.2]"),
     "data.split: expected three positive fractions summing to 1 (train, val, test), got [0.9, 0.2, 0.2]"),
    (("targets: [x86-cpu]", "targets: [x86-cpx]"), "unknown target 'x86-cpx'"),
])
def test_recipe_typos_name_the_field_and_line(tmp_path, edit, message):
    from edgekd.recipe import demo_recipe_text

    text = demo_recipe_text()
    assert edit[0] in text
    path = tmp_path / "r.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    code, out = _cli("run", path, "--out", tmp_path / "out")
    assert code == 2 and message in out and "r.yaml" in out
    assert not (tmp_path / "out" / "models").exists()  # refused before any training


def test_yaml_tags_cannot_run_code(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nname: !!python/object/apply:os.system ['touch pwned']\n")
    code, out = _cli("run", path, "--out", tmp_path / "out")
    assert code == 2 and "r.yaml" in out and not Path("pwned").exists()


@pytest.mark.parametrize("rule, message", [
    ("max_size: 64 parsecs", "max_size: expected a size such as '512KB' or '2MiB', got '64 parsecs'"),
    ("max_p90_latency: fast", "max_p90_latency: expected a time such as '8ms' or '1.5s', got 'fast'"),
    ("min_accuracy: 120%", "min_accuracy: expected a percentage between 0% and 100% (or a fraction 0..1), "
                           "got '120%'"),
    ("max_sise: 64KB", "did you mean 'max_size'"),
])
def test_budgets_with_bad_units_or_names(tmp_path, rule, message):
    from edgekd.report import Report

    Report().write(tmp_path / "report.json")
    (tmp_path / "b.yaml").write_text(f"budgets:\n  - artifact: '*'\n    {rule}\n")
    code, out = _cli("check", tmp_path / "report.json", "--budget", tmp_path / "b.yaml")
    assert code == 2 and message in out and "b.yaml:3" in out


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
RECIPE_KEYS = ["version", "name", "seed", "data", "teacher", "student", "distill", "qat", "ptq", "export",
               "targets", "benchmark", "budgets", "teacher_training", "student_training"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=8), JSON, max_size=6))
def test_recipe_parser_refuses_garbage_only_with_config_errors(data):
    from edgekd.recipe import Recipe

    try:
        Recipe.from_dict(data)
    except ConfigError:
        pass  # every refusal is a typed, explained error; anything else fails the test


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["artifact", "target", "max_size", "max_p90_latency",
                                                 "min_accuracy", "warn", "max_growth", "latency_tolerance",
                                                 "max_macs"]) | st.text(max_size=6), JSON, max_size=5),
                max_size=3))
def test_budget_parser_refuses_garbage_only_with_config_errors(rules):
    from edgekd.budgets import Budget

    try:
        Budget.from_dict({"budgets": rules})
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**9), st.sampled_from(["B", "KB", "MB", "KiB", "MiB"]))
def test_valid_sizes_always_parse(number, unit):
    from edgekd.units import SIZE_UNITS, parse_size

    assert parse_size(f"{number}{unit}") == round(number * SIZE_UNITS[unit.lower()])


# -- interrupted writes ------------------------------------------------------------------------------

def test_disk_full_during_export_keeps_the_previous_artifact(exported, tmp_path, monkeypatch):
    from edgekd import atomic
    from edgekd.export.api import export_onnx_file

    out = tmp_path / "out"
    first = export_onnx_file(exported[("int8", "onnx")].path, ["tflite"], out, "model")[0].path
    before = first.read_bytes()
    real = atomic.os.replace

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_onnx_file(exported[("float", "onnx")].path, ["tflite"], out, "model")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert first.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite"]  # no temp file left behind


# -- a killed run ------------------------------------------------------------------------------------

def test_a_run_killed_mid_training_resumes_from_its_last_epoch(tmp_path):
    """SIGKILL (no cleanup code runs) while the KD student trains; `edgekd run --resume` finishes it."""
    import signal
    import subprocess
    import sys
    import time

    from edgekd.config import dump_yaml
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=15, qat_epochs=None)  # the KD stage runs ~3 s: time to kill it mid-way
    recipe.teacher_training.epochs, recipe.ptq.enabled = 2, False
    recipe_file, out = tmp_path / "r.yaml", tmp_path / "out"
    recipe_file.write_text(dump_yaml(recipe.to_dict()))
    cmd = [sys.executable, "-m", "edgekd", "run", str(recipe_file), "--out", str(out), "--cache", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "checkpoints" / "student-kd.state"
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.is_file(), "the KD stage never wrote an epoch checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    done = torch.load(state, weights_only=True)["epochs_done"]
    assert 1 <= done < 15
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    import json

    report = json.loads((out / "report.json").read_text())
    kd = next(e for e in report["entries"] if e["name"] == "student-kd.pytorch")
    epochs = [r["epoch"] for r in kd["info"]["training"]["history"]]
    assert epochs == list(range(1, 16))  # nothing lost, nothing repeated
    assert not state.exists()  # the finished model superseded its checkpoint
