"""CLI: exit codes, clean error messages, and one real run of the installed entry point."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgekd.cli import main

QUICK_TARGET = ("name: quick\nthreads: 1\nruntimes: {onnxruntime: {}, openvino: {}}\n"
                "benchmark: {warmup_runs: 2, min_runs: 20, min_seconds: 0.05}\n")


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`edgekd demo` through the installed console script, as a user runs it."""
    exe = shutil.which("edgekd")
    assert exe, "the edgekd entry point is not installed (pip install -e .)"
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, EDGEKD_CACHE=str(tmp_path_factory.mktemp("cache")), EDGEKD_PROGRESS="1")
    proc = subprocess.run([exe, "demo", "--out", str(out)], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=600)
    return proc, out


def test_demo_end_to_end(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    entries = {e["name"]: e for e in report["entries"]}
    teacher, int8 = entries["teacher.onnx"], entries["student-int8.onnx"]
    assert teacher["size_bytes"] >= 10 * int8["size_bytes"]
    for name in ("student-int8.onnx", "student-int8.openvino"):
        assert entries[name]["agreement"] >= 0.99
        assert entries[name]["accuracy"] >= entries["teacher.pytorch"]["accuracy"] - 0.015
    assert "budgets: PASS" in proc.stdout
    assert "distillation: KD student" in proc.stdout and "x smaller" in proc.stdout
    for bar in ("teacher:", "student (scratch):", "student (KD):", "student (int8 QAT):", "benchmark:"):
        assert bar in proc.stderr  # progress bars (forced on with EDGEKD_PROGRESS=1)
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_heavy_backends():
    code = ("import sys; from click.testing import CliRunner; import edgekd, edgekd.cli; "
            "CliRunner().invoke(edgekd.cli.main, ['--help']); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'ai_edge_litert') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_commands():
    result = invoke("--help")
    for command in ("demo", "run", "export", "bench", "check", "targets", "list"):
        assert command in result.output


def test_show_recipe_round_trips():
    from edgekd.config import parse_yaml
    from edgekd.recipe import Recipe, demo_recipe

    result = invoke("demo", "--show-recipe")
    assert result.exit_code == 0
    assert Recipe.from_dict(*parse_yaml(result.output)) == demo_recipe()
    detection = invoke("demo", "--task", "object-detection", "--show-recipe")
    assert Recipe.from_dict(*parse_yaml(detection.output)) == demo_recipe("object-detection")
    assert demo_recipe("object-detection").task == "object-detection"


def test_run_with_typo_names_file_line_and_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ndistill:\n  temprature: 2\n")
    result = invoke("run", str(recipe))
    assert result.exit_code == 2
    assert "r.yaml:3: distill.temprature: unknown field; did you mean 'temperature'?" in result.output
    assert "Traceback" not in result.output


def test_run_with_missing_recipe(tmp_path):
    result = invoke("run", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2 and "none.yaml: file not found" in result.output


def test_debug_flag_shows_the_exception(tmp_path):
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError):
        invoke("--debug", "run", str(tmp_path / "none.yaml"))


def test_check_exit_codes(demo_run, tmp_path):
    _, out = demo_run
    report = out / "report.json"
    ok = tmp_path / "ok.yaml"
    ok.write_text("budgets:\n  - artifact: student-int8.onnx\n    max_size: 1MB\n")
    result = invoke("check", str(report), "--budget", str(ok))
    assert result.exit_code == 0 and "1 passed, 0 warned, 0 failed of 1 budget checks" in result.output

    tight = tmp_path / "tight.yaml"
    tight.write_text("budgets:\n  - artifact: student-int8.*\n    max_size: 1KB\n    min_accuracy: 50%\n")
    result = invoke("check", str(report), "--budget", str(tight))
    assert result.exit_code == 1
    assert "FAILED" in result.output and "max_size" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets:\n  - artifact: '*'\n    max_size: 12 parsecs\n")
    result = invoke("check", str(report), "--budget", str(bad))
    assert result.exit_code == 2
    assert "bad.yaml:3: budgets.0.max_size: expected a size" in result.output

    result = invoke("check", str(tmp_path / "missing.json"), "--budget", str(ok))
    assert result.exit_code == 2 and "missing.json: report not found" in result.output


def test_check_reads_pyproject_budgets(demo_run, tmp_path):
    _, out = demo_run
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[[tool.edgekd.budgets]]\nartifact = "student-int8.onnx"\nmax_size = "100B"\n')
    result = invoke("check", str(out / "report.json"), "--budget", str(pyproject))
    assert result.exit_code == 1


def test_export_from_checkpoint_and_from_onnx(demo_run, tmp_path):
    _, out = demo_run
    result = invoke("export", str(out / "models" / "student-int8.pt"), "-f", "onnx", "-f", "openvino",
                    "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "student-int8.onnx").is_file() and (tmp_path / "student-int8.xml").is_file()
    # the same int8 file as the pipeline wrote: export is deterministic from the checkpoint
    assert (tmp_path / "student-int8.onnx").read_bytes() == (out / "artifacts" / "student-int8.onnx").read_bytes()
    result = invoke("export", str(tmp_path / "student-int8.onnx"), "-f", "openvino", "--out",
                    str(tmp_path / "ir"))
    assert result.exit_code == 0 and (tmp_path / "ir" / "student-int8.xml").is_file()


def test_export_of_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage")
    result = invoke("export", str(bad))
    assert result.exit_code == 2
    assert "model.pt: not a readable checkpoint" in result.output


def test_bench_command(demo_run, tmp_path):
    _, out = demo_run
    target = tmp_path / "quick.yaml"
    target.write_text(QUICK_TARGET)
    result = invoke("bench", str(out / "artifacts" / "student-int8.xml"), "--target", str(target),
                    "--json", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert "runtime=openvino" in result.output and "p50" in result.output
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["latency"]["n"] == len(saved["samples_ms"]) >= 20


def test_bench_errors(demo_run, tmp_path):
    _, out = demo_run
    artifact = str(out / "artifacts" / "student-int8.onnx")
    result = invoke("bench", artifact, "--target", "x86-cpux")
    assert result.exit_code == 2 and "did you mean 'x86-cpu'" in result.output
    target = tmp_path / "ov-only.yaml"
    target.write_text("name: ov-only\nruntimes: {openvino: {}}\n")
    result = invoke("bench", artifact, "--target", str(target))
    assert result.exit_code == 2 and "has no runtime 'onnxruntime'" in result.output
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text("name: gpu\nruntimes: {openvino: {device: GPU}}\nbenchmark: {min_runs: 1, min_seconds: 0}\n")
    result = invoke("bench", str(out / "artifacts" / "student-int8.xml"), "--target", str(gpu))
    assert result.exit_code == 3 and "device 'GPU' is not available" in result.output


def test_targets_and_list():
    assert "x86-cpu" in invoke("targets").output
    assert "cnn-teacher" in invoke("list", "models").output
    assert invoke("list", "formats").output.split() == ["onnx", "openvino", "tflite"]
