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


# -- round 2: the output folder (issue 17) -------------------------------------------------------------

def _tiny_recipe_file(path: Path, **edits) -> Path:
    """A run of a few seconds: 1 epoch each, no QAT/PTQ, ONNX only, no benchmark."""
    from edgekd.config import dump_yaml
    from tests.recipes import short_recipe

    recipe = short_recipe(epochs=1, qat_epochs=None)
    recipe.ptq.enabled = False
    data = recipe.to_dict()
    for dotted, value in edits.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(dump_yaml(data))
    return path


def test_a_run_never_deletes_files_it_did_not_write(tmp_path):
    """A folder with the user's own models/ is refused; with --overwrite their files survive."""
    out = tmp_path / "mine"
    (out / "models").mkdir(parents=True)
    (out / "models" / "precious.pt").write_bytes(b"my weights")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "notes.txt").write_text("mine")
    recipe = _tiny_recipe_file(tmp_path / "r.yaml")
    code, out_text = _cli("run", recipe, "--out", out, "--cache", tmp_path / "c")
    assert code == 2 and "is not empty and edgekd did not create it" in out_text and "--overwrite" in out_text
    assert (out / "models" / "precious.pt").read_bytes() == b"my weights"
    code, out_text = _cli("run", recipe, "--out", out, "--cache", tmp_path / "c", "--overwrite")
    assert code == 0, out_text
    assert (out / "models" / "precious.pt").read_bytes() == b"my weights"
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"
    assert (out / "models" / "student-kd.pt").is_file()


def test_a_new_run_removes_only_what_the_previous_run_recorded(tmp_path):
    import json

    out = tmp_path / "out"
    recipe = _tiny_recipe_file(tmp_path / "r.yaml")
    assert _cli("run", recipe, "--out", out, "--cache", tmp_path / "c")[0] == 0
    manifest = json.loads((out / ".edgekd" / "manifest.json").read_text())["files"]
    assert "models/student-kd.pt" in manifest and "report.json" in manifest and "recipe.yaml" in manifest
    (out / "models" / "mine.pt").write_bytes(b"user file added later")
    stale = out / "artifacts" / "student-kd.onnx"
    assert stale.is_file()
    # the second run exports no ONNX: the first run's file goes (it was recorded), the user's stays
    recipe2 = _tiny_recipe_file(tmp_path / "r2.yaml", **{"export.formats": ["onnx"], "name": "second"})
    assert _cli("run", recipe2, "--out", out, "--cache", tmp_path / "c")[0] == 0
    assert (out / "models" / "mine.pt").read_bytes() == b"user file added later"
    assert "models/mine.pt" not in json.loads((out / ".edgekd" / "manifest.json").read_text())["files"]


@pytest.mark.parametrize("name", ["..", "../../x", "/etc", "a/b", "", "x" * 101])
def test_recipe_names_cannot_escape_the_output_root(tmp_path, name):
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", name=name)
    code, out = _cli("run", recipe)
    assert code == 2 and "is not a usable run name" in out and "r.yaml" in out


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from edgekd import runfolder\n"
        f"folder = runfolder.claim({str(out)!r})\nprint('locked', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = _tiny_recipe_file(tmp_path / "r.yaml")
        code, text = _cli("run", recipe, "--out", out, "--cache", tmp_path / "c")
        assert code == 2 and f"pid {holder.pid}" in text and "another edgekd run is writing this folder" in text
        assert not (out / "models").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up (SIGKILL): its lock file stays, and is taken over
    assert (out / ".edgekd" / "lock").is_file()
    code, text = _cli("run", _tiny_recipe_file(tmp_path / "r.yaml"), "--out", out, "--cache", tmp_path / "c")
    assert code == 0, text


def test_a_refused_run_leaves_nothing_behind(tmp_path):
    """Refused after its checks started (a teacher that does not fit): no recipe.yaml, no run.key."""
    bad_teacher = tmp_path / "t.pt"
    from edgekd.models import ModelSpec, create_model, save_checkpoint

    save_checkpoint(bad_teacher, create_model("cnn-teacher", in_channels=3, num_classes=10),
                    ModelSpec(arch="cnn-teacher"), in_channels=3, num_classes=10)
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{"teacher.checkpoint": str(bad_teacher)})
    code, text = _cli("run", recipe, "--out", tmp_path / "out", "--cache", tmp_path / "c")
    assert code == 2
    assert not (tmp_path / "out").exists()
    # over a finished run: refused before its old files are cleared, so they all stay
    assert _cli("run", _tiny_recipe_file(tmp_path / "good.yaml"), "--out", tmp_path / "out",
                "--cache", tmp_path / "c")[0] == 0
    before = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert _cli("run", recipe, "--out", tmp_path / "out", "--cache", tmp_path / "c")[0] == 2
    after = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert after == before and Path("models/student-kd.pt") in after


# -- round 2: checks before training ----------------------------------------------------------------

@pytest.mark.parametrize("channels, classes, message", [
    (3, 10, "one forward pass failed"),
    (1, 7, "gives 7 classes"),
])
def test_a_teacher_that_does_not_fit_the_data_is_refused_before_training(tmp_path, channels, classes, message):
    from edgekd.models import ModelSpec, create_model, save_checkpoint

    teacher = save_checkpoint(tmp_path / "t.pt", create_model("cnn-teacher", in_channels=channels,
                                                               num_classes=classes),
                              ModelSpec(arch="cnn-teacher"), in_channels=channels, num_classes=classes)
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{"teacher.checkpoint": str(teacher)})
    code, text = _cli("run", recipe, "--out", tmp_path / "out", "--cache", tmp_path / "c")
    assert code == 2 and message in text and "t.pt" in text
    assert "(4, 1, 8, 8)" in text or classes != 10  # a failed forward names the batch's shape
    assert not (tmp_path / "out" / "models").exists()  # nothing trained


def test_a_student_checkpoint_is_used_or_refused(tmp_path):
    from edgekd.models import ModelSpec, create_model, save_checkpoint

    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{"student.checkpoint": str(tmp_path / "missing.pt")})
    code, text = _cli("run", recipe, "--out", tmp_path / "o1", "--cache", tmp_path / "c")
    assert code == 2 and "missing.pt: checkpoint not found" in text
    other = save_checkpoint(tmp_path / "xs.pt", create_model("cnn-student-xs"), ModelSpec(arch="cnn-student-xs"),
                            in_channels=1, num_classes=10)
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{"student.checkpoint": str(other)})
    code, text = _cli("run", recipe, "--out", tmp_path / "o2", "--cache", tmp_path / "c")
    assert code == 2 and "holds architecture 'cnn-student-xs' but student.arch is 'cnn-student-s'" in text
    torch.manual_seed(123)
    start = create_model("cnn-student-s")
    ckpt = save_checkpoint(tmp_path / "s.pt", start, ModelSpec(arch="cnn-student-s"), in_channels=1, num_classes=10)
    from edgekd.pipeline import prepare
    from edgekd.recipe import load_recipe

    ctx = prepare(load_recipe(_tiny_recipe_file(tmp_path / "r.yaml", **{"student.checkpoint": str(ckpt)})),
                  tmp_path / "o3")
    init = ctx.student_init()
    for name, value in start.state_dict().items():
        assert torch.equal(init.state_dict()[name], value), name  # both students start from its weights


def test_empty_and_comment_only_recipes_are_refused(tmp_path):
    for text in ("", "# nothing here\n\n   # still nothing\n"):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        code, out = _cli("run", path, "--out", tmp_path / "out")
        assert code == 2 and "r.yaml: the recipe is empty" in out


@pytest.mark.parametrize("edit, message", [
    ({"student_training.epochs": 10**12}, "student_training.epochs: expected 0..10000 epochs"),
    ({"student_training.epochs": 0}, "student_training.epochs: a student trains for at least 1 epoch"),
    ({"data.batch_size": 10**9}, "data.batch_size: expected 1..65536"),
])
def test_absurd_values_are_bounded(tmp_path, edit, message):
    code, out = _cli("run", _tiny_recipe_file(tmp_path / "r.yaml", **edit), "--out", tmp_path / "out")
    assert code == 2 and message in out


def test_an_unimportable_user_model_is_reported_before_the_data_is_loaded(tmp_path, monkeypatch):
    import edgekd.data.datasets as datasets

    def never(*args, **kwargs):
        raise AssertionError("the data was loaded before the model was checked")

    monkeypatch.setattr(datasets, "load_data", never)
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{"student.arch": "no_such_module_xyz:build"})
    code, out = _cli("run", recipe, "--out", tmp_path / "out")
    assert code == 2 and "student.arch" in out and "no_such_module_xyz" in out


# -- round 2: writes ---------------------------------------------------------------------------------

def test_a_full_disk_during_training_is_a_clean_exit_naming_the_path_and_free_space(tmp_path, monkeypatch):
    """torch.save's own failure on a full disk (its C++ writer raises RuntimeError) mid-training."""
    import shutil as shutil_module

    from edgekd import atomic

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(".state") or ".state." in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 384 vs 282: "
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil_module._ntuple_diskusage(10**9, 10**9, 0))
    recipe = _tiny_recipe_file(tmp_path / "r.yaml")
    code, text = _cli("run", recipe, "--out", tmp_path / "out", "--cache", tmp_path / "c")
    assert code == 2 and "cannot write" in text and ".state" in text and "0 B free on that disk" in text
    assert "--resume" in text
    assert not list((tmp_path / "out").rglob("*.tmp*"))  # no temporary file left behind


def test_a_full_disk_during_export_names_the_output_not_the_input(exported, tmp_path, monkeypatch):
    from edgekd import atomic

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    src = exported[("float", "onnx")].path
    code, text = _cli("export", src, "-f", "tflite", "--out", tmp_path / "o", "--name", "mine")
    assert code == 2 and f"cannot write {tmp_path / 'o' / 'mine.tflite'}: No space left on device" in text
    assert str(src) not in text and ".tmp" not in text


def test_a_very_long_output_name_works(exported, tmp_path):
    name = "m" * 245
    code, text = _cli("export", exported[("float", "onnx")].path, "-f", "tflite", "-f", "openvino",
                      "--out", tmp_path, "--name", name)
    assert code == 0, text
    assert (tmp_path / f"{name}.tflite").is_file() and (tmp_path / f"{name}.xml").is_file()


# -- round 2: estimates and benchmarks -----------------------------------------------------------------

def _onnx_of(module, path: Path, *example) -> Path:
    torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17)
    return path


def test_recurrent_and_einsum_macs_are_counted(tmp_path):
    from edgekd.bench.estimate import analyze

    lstm = analyze(_onnx_of(torch.nn.LSTM(16, 32), tmp_path / "lstm.onnx", torch.zeros(5, 1, 16)))
    assert lstm.complete and lstm.macs == 5 * 1 * (4 * 32 * 16 + 4 * 32 * 32)
    gru = analyze(_onnx_of(torch.nn.GRU(16, 32), tmp_path / "gru.onnx", torch.zeros(5, 1, 16)))
    assert gru.complete and gru.macs == 5 * (3 * 32 * 16 + 3 * 32 * 32)

    class Bilinear(torch.nn.Module):
        def forward(self, a, b):
            return torch.einsum("bij,bjk->bik", a, b)

    ein = analyze(_onnx_of(Bilinear(), tmp_path / "e.onnx", torch.zeros(1, 4, 8), torch.zeros(1, 8, 3)))
    assert ein.complete and ein.macs == 4 * 8 * 3


def test_an_op_the_estimator_does_not_model_fails_a_mac_budget_as_not_measured(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekd.budgets import Budget, check
    from edgekd.budgets.gate import report_from_artifacts

    node = helper.make_node("DFT", ["x"], ["y"], name="dft")  # an op with no MAC model
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 2])])
    path = tmp_path / "dft.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = report_from_artifacts([str(path)], ["ethos-u55"], lambda m: None)
    result = check(report, Budget.from_dict({"budgets": [{"artifact": "*", "target": "ethos-u55", "max_macs": 1000}]}))
    verdict = next(v for v in result.verdicts if v.metric == "max_macs")
    assert verdict.status == "FAIL" and verdict.actual == "not measured" and "DFT x1" in verdict.note
    code, text = _cli("estimate", path, "--target", "ethos-u55")
    assert "INCOMPLETE: the estimator does not model DFT x1" in text


def test_a_float_model_on_an_integer_only_target_is_not_estimated_as_runnable(exported, tmp_path):
    from edgekd.budgets import Budget, check
    from edgekd.budgets.gate import report_from_artifacts

    path = exported[("float", "onnx")].path
    code, text = _cli("estimate", path, "--target", "ethos-u55")
    assert code == 2 and "runs integer kernels only" in text and "edgekd ptq" in text
    report = report_from_artifacts([str(path)], ["ethos-u55"], lambda m: None)
    result = check(report, Budget.from_dict({"budgets": [{"artifact": "*", "target": "ethos-u55",
                                                          "max_p50_latency": "1s"}]}))
    assert not result.passed and "runs integer kernels only" in result.verdicts[0].note
    from edgekd.export import export
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat

    float_student, x = _float_student_and_data()
    model = prepare_qat(float_student, QATConfig().resolved("ethos-u55"))
    calibrate(model, [x])
    (artifact,) = export(freeze(model), ["onnx"], tmp_path, "for-ethos", (1, 8, 8))
    code, text = _cli("estimate", artifact.path, "--target", "ethos-u55")
    assert code == 0 and "CANNOT RUN" not in text, text


def _float_student_and_data():
    from edgekd.data import DataConfig, load_data
    from edgekd.models import create_model

    torch.manual_seed(0)
    return create_model("cnn-student-s").eval(), load_data(DataConfig()).x_train[:64]


def test_estimate_runtime_is_a_choice_and_defaults_to_the_targets(exported):
    path = exported[("int8", "onnx")].path
    code, text = _cli("estimate", path, "--target", "ethos-u55", "--runtime", "foo")
    assert code == 2 and "'foo' is not one of" in text
    code, text = _cli("estimate", path, "--target", "ethos-u55", "--runtime", "onnxruntime")
    assert code == 2 and "lists runtimes litert" in text
    code, text = _cli("estimate", path, "--target", "ethos-u55", "--json", Path(path).parent / "est.json")
    import json

    assert code == 0 and json.loads((Path(path).parent / "est.json").read_text())["runtime"] == "litert"


def test_bench_threads_are_bounded_by_the_cores(exported):
    code, text = _cli("bench", exported[("int8", "onnx")].path, "--threads", 10000)
    assert code == 2 and f"this machine has {os.cpu_count()} CPU core(s)" in text


def test_cli_choices_match_the_registries():
    from edgekd.cli import OBSERVERS, RUNTIMES
    from edgekd.quant.observers import list_observers
    from edgekd.runtime import list_runtimes

    assert sorted(OBSERVERS) == sorted(list_observers()) and sorted(RUNTIMES) == sorted(list_runtimes())
    code, text = _cli("ptq", "x.pt", "--observer", "median")
    assert code == 2 and "'median' is not one of" in text


# -- round 2: messages ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, command, message", [
    ("tflite", "export", "is a TFLite model, already exported"),
    ("openvino", "export", "is an OpenVINO IR, already exported"),
    ("onnx", "ptq", "is an ONNX model"),
])
def test_another_model_format_given_as_a_checkpoint_is_named(exported, tmp_path, fmt, command, message):
    path = exported[("int8", fmt)].path
    code, text = _cli(command, path, "--out", tmp_path / "o")
    assert code == 2 and message in text and "corrupt" not in text


def test_a_pickle_that_would_run_code_says_so(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, write in (("plain.pt", lambda p: p.write_bytes(pickle.dumps({"x": Exploit()}))),
                        ("zip.pt", lambda p: torch.save({"x": Exploit()}, p))):
        path = tmp_path / name
        write(path)
        code, text = _cli("export", path, "--out", tmp_path / "o")
        assert code == 2 and "would run code when loaded" in text and "system" in text and "corrupt" not in text
    assert not marker.exists()


def test_an_ir_without_its_bin_is_named(exported, tmp_path):
    xml = tmp_path / "m.xml"
    shutil.copy(exported[("int8", "openvino")].path, xml)
    code, text = _cli("bench", xml)
    assert code == 2 and "its weights file m.bin is missing" in text


def test_a_corrupt_cached_teacher_is_retrained_not_fatal(tmp_path):
    recipe = _tiny_recipe_file(tmp_path / "r.yaml")
    assert _cli("run", recipe, "--out", tmp_path / "o1", "--cache", tmp_path / "c")[0] == 0
    (cached,) = (tmp_path / "c" / "teachers").glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    code, text = _cli("run", recipe, "--out", tmp_path / "o2", "--cache", tmp_path / "c")
    assert code == 0 and "the cached teacher is unusable" in text and "training it again" in text
    from edgekd.models import load_checkpoint

    load_checkpoint(cached)  # replaced by a good one


def test_litert_info_lines_stay_out_of_normal_output(exported):
    import subprocess
    import sys

    code = ("import numpy as np\nfrom edgekd.runtime import open_session\n"
            f"for api in ('interpreter', 'compiled_model'):\n"
            f"    s = open_session({str(exported[('float', 'tflite')].path)!r}, 'litert', options={{'api': api}})\n"
            "    s.run(np.zeros((1, 1, 8, 8), np.float32))\nprint('done')\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}  # another test may have run --debug
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "done"
    assert "INFO" not in quiet.stderr and "DestroyAccelerator" not in quiet.stderr, quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EDGEKD_DEBUG": "1"})
    assert "XNNPACK" in loud.stderr  # shown under --debug


def test_unknown_name_messages_are_spelled_right(exported):
    from edgekd.errors import UnknownNameError
    from edgekd.quant import QATConfig
    from edgekd.quant.validate import validate_onnx

    assert "valid losses: kd" in str(UnknownNameError("loss", "kld", ["kd"]))
    summary = validate_onnx(exported[("int8", "onnx")].path, QATConfig().resolved().scheme).summary()
    assert "conforms to the default int8 scheme" in summary and "the any scheme" not in summary


# -- round 2: budgets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, message", [
    ("target: x86-cpux\n    max_size: 64KB", "unknown target 'x86-cpux'; did you mean 'x86-cpu'?"),
    ("artifact: '[unclosed'\n    max_size: 64KB", "has an unclosed '['"),
    ("max_size: 64", "expected a size with a unit"),
])
def test_budget_rules_that_would_mislead_are_refused(tmp_path, rule, message):
    from edgekd.report import Entry, Report

    Report(targets=["x86-cpu"], entries=[Entry(name="m.onnx", stage="s", format="onnx", target="x86-cpu",
                                               size_bytes=10)]).write(tmp_path / "report.json")
    (tmp_path / "b.yaml").write_text(f"budgets:\n  - {rule}\n" if rule.startswith("artifact") else
                                     f"budgets:\n  - artifact: '*'\n    {rule}\n")
    code, out = _cli("check", tmp_path / "report.json", "--budget", tmp_path / "b.yaml")
    assert code == 2 and message in out


def test_a_rule_without_target_does_not_fail_estimate_only_rows(tmp_path):
    from edgekd.budgets import Budget, check
    from edgekd.report import Entry, Report

    measured = Entry(name="m.onnx", stage="s", format="onnx", target="x86-cpu", latency={"p50_ms": 1.0},
                     peak_memory_bytes=1000)
    estimated = Entry(name="m.onnx", stage="s", format="onnx", target="ethos-u55", latency={"p50_ms": 2.0},
                      info={"estimated": True})
    result = check(Report(entries=[measured, estimated]),
                   Budget.from_dict({"budgets": [{"artifact": "*", "max_peak_memory": "1MB"}]}))
    assert result.passed and [v.artifact for v in result.verdicts] == ["m.onnx @x86-cpu"]
    scoped = check(Report(entries=[measured, estimated]), Budget.from_dict(
        {"budgets": [{"artifact": "*", "target": "ethos-u55", "max_peak_memory": "1MB"}]}))
    assert not scoped.passed  # asked of that target explicitly: not measured is a failure


def test_a_rule_matching_nothing_keeps_the_table_narrow(tmp_path):
    from edgekd.budgets import Budget, check
    from edgekd.report import Entry, Report

    entries = [Entry(name=f"artifact-with-a-long-name-{i}.onnx", stage="s", format="onnx") for i in range(40)]
    result = check(Report(entries=entries), Budget.from_dict({"budgets": [{"artifact": "nope*", "max_size": "1KB"}]}))
    assert max(len(line) for line in result.table().splitlines()) < 250 and "(37 more)" in result.table()


def test_compare_warns_when_the_reports_used_different_data(tmp_path):
    from edgekd.report import Report

    Report(data={"source": "digits", "fingerprint": "a" * 16, "train": 10, "val": 5, "test": 5}).write(tmp_path / "a.json")
    Report(data={"source": "mine.npz", "fingerprint": "b" * 16, "train": 9, "val": 5, "test": 5}).write(tmp_path / "b.json")
    result = RUNNER.invoke(main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert result.exit_code == 0 and "warning: the reports used different data" in result.output


# -- round 2: data -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_integer_pixels_are_scaled_like_uint8(tmp_path, dtype):
    from edgekd.data import DataConfig, load_data

    x = (np.arange(40 * 8 * 8) % 256).reshape(40, 8, 8).astype(dtype)
    data = load_data(DataConfig(source=str(_npz(tmp_path / "d.npz", x, np.arange(40) % 2))))
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    assert float(data.x_train.max()) > 0.9


def test_label_gaps_are_refused(tmp_path):
    from edgekd.data import DataConfig, load_data

    path = _npz(tmp_path / "gaps.npz", np.random.rand(20, 8, 8).astype(np.float32), np.r_[[0] * 10, [7] * 10])
    with pytest.raises(DataError, match=r"gaps.npz: labels use 2 of the class indices 0..7; classes 1, 2, 3"):
        load_data(DataConfig(source=str(path)))


def test_help_names_tflite_and_run_has_no_bench(tmp_path):
    assert "TFLite" in RUNNER.invoke(main, ["--help"]).output
    assert "TFLite" in RUNNER.invoke(main, ["demo", "--help"]).output
    recipe = _tiny_recipe_file(tmp_path / "r.yaml", benchmark=True)
    code, text = _cli("run", recipe, "--out", tmp_path / "o", "--cache", tmp_path / "c", "--no-bench")
    assert code == 0
    import json

    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert not any(e.get("latency") for e in report["entries"])


# -- round 2: distillation that hurts ---------------------------------------------------------------------

def test_a_distilled_student_below_its_scratch_baseline_is_said_loudly(tmp_path):
    """A teacher's near-uniform soft targets (T=20, labels unused) leave the distilled student far
    below the scratch one: the run's output, report.md and report.json say so, with what to try."""
    import json

    recipe = _tiny_recipe_file(tmp_path / "r.yaml", **{
        "student_training.epochs": 3, "distill.temperature": 20.0, "distill.kd_weight": 1.0,
        "distill.ce_weight": 0.0})
    code, text = _cli("run", recipe, "--out", tmp_path / "o", "--cache", tmp_path / "c")
    assert code == 0, text
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    quality = {e["stage"]: e["accuracy"] for e in report["entries"] if e["format"] == "pytorch"}
    assert quality["student-kd"] < quality["student-scratch"] - 0.005
    [warning] = report["warnings"]
    assert "points BELOW the same student trained on labels alone" in warning
    assert "a lower distill.temperature than 20" in warning and "kd_weight" in warning
    assert f"WARNING: {warning}" in text and warning in (tmp_path / "o" / "report.md").read_text()


def test_no_warning_when_distillation_helps():
    from types import SimpleNamespace

    from edgekd.pipeline.phases import distillation_warnings
    from edgekd.recipe import Recipe
    from edgekd.report import Entry
    from edgekd.tasks import create_task

    ctx = SimpleNamespace(task=create_task("image-classification"), recipe=Recipe())
    entries = [Entry(name=f"{s}.pytorch", stage=s, format="pytorch", accuracy=a)
               for s, a in (("teacher", 0.99), ("student-scratch", 0.95), ("student-kd", 0.96))]
    assert distillation_warnings(ctx, entries) == []
    entries[2].accuracy = 0.90
    assert "5.00 points BELOW" in distillation_warnings(ctx, entries)[0]
