"""examples/budget-gate runs through the whole gate: built, measured, estimated, passing and failing."""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "budget-gate"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget-gate")
    for name in ("pyproject.toml", "budgets-too-tight.yaml", "build.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    subprocess.run([sys.executable, "build.py"], cwd=folder, check=True, capture_output=True, timeout=600)
    return folder


def test_the_example_passes_its_budgets(example):
    artifacts = [str(example / "artifacts" / f"student-int8.{ext}") for ext in ("onnx", "xml", "tflite")]
    result = CliRunner().invoke(main, ["check", *artifacts, "--budget", str(example / "pyproject.toml"),
                                       "--measure", "--target", "x86-cpu", "--target", "ethos-u55",
                                       "--junit", str(example / "budgets.xml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "student-int8.onnx @ethos-u55" in result.output and "(estimated)" in result.output
    assert "0 failed" in result.output
    assert ET.parse(example / "budgets.xml").getroot().get("failures") == "0"


def test_the_example_fails_a_budget_it_breaks(example):
    result = CliRunner().invoke(main, ["check", str(example / "artifacts" / "student-int8.onnx"), "--budget",
                                       str(example / "budgets-too-tight.yaml"), "--measure"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    failed = result.output.split("FAILED checks:")[1]
    assert "max_size" in failed and "max_macs" in failed and "min_accelerator_coverage" not in failed


def test_the_pre_commit_hook_of_the_docs_works_as_written(example):
    """docs/pre-commit-budget-gate.yaml: its budget file (in the comment) and its entry, run on the
    example's ONNX file as pre-commit would (the staged file names appended)."""
    import shlex

    import yaml

    doc = (EXAMPLE.parents[1] / "docs" / "pre-commit-budget-gate.yaml").read_text()
    budget_lines = [line[2:] for line in doc.split("budgets-commit.yaml:\n#\n", 1)[1].split("\n#\n", 1)[0].splitlines()]
    (example / "budgets-commit.yaml").write_text("\n".join(budget_lines) + "\n")
    entry = yaml.safe_load(doc)["repos"][0]["hooks"][0]["entry"]
    words = shlex.split(entry)
    assert words[0] == "edgekd"
    import os

    cwd = os.getcwd()
    os.chdir(example)
    try:
        result = CliRunner().invoke(main, [*words[1:], "artifacts/student-int8.onnx"], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "4 passed, 0 warned, 0 failed of 4 budget checks" in result.output
