"""The CI gate: PASS/WARN/FAIL, regressions against a baseline, latency noise, outputs, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from edgekd.budgets import Budget, check
from edgekd.cli import main
from edgekd.report import Entry, Report


def _report(p90: float = 2.0, size: int = 20_000, accuracy: float = 0.97, estimated: bool = False,
            path: str | None = None) -> Report:
    info = {"macs": 341_312, "accelerator_coverage": 1.0}
    if estimated:
        info["estimated"] = True
    return Report(targets=["x86-cpu"], entries=[
        Entry("teacher.pytorch", "teacher", "pytorch", accuracy=0.99),
        Entry("student-int8.onnx", "student-int8", "onnx", path=path, size_bytes=size, params=10_914,
              accuracy=accuracy, runtime="onnxruntime", target="x86-cpu",
              latency={"p50_ms": p90 * 0.8, "p90_ms": p90}, info=info)])


def _budget(**limits) -> Budget:
    return Budget.from_dict({"budgets": [{"artifact": "student-int8.onnx", **limits}]})


def _status(result) -> list[tuple[str, str]]:
    return [(v.metric, v.status) for v in result.verdicts]


def test_warn_inside_the_limit_fail_past_it():
    budget = _budget(max_size="64KB", warn={"max_size": "16KB"})
    assert _status(check(_report(size=10_000), budget)) == [("max_size", "PASS")]
    warned = check(_report(size=20_000), budget)
    assert _status(warned) == [("max_size", "WARN")] and warned.passed  # a warning never fails a build
    assert "past the warning threshold 16KB" in warned.verdicts[0].note
    assert _status(check(_report(size=70_000), budget)) == [("max_size", "FAIL")]


def test_warn_threshold_must_be_inside_the_limit_and_name_a_set_limit():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"warn\.max_size: the warning threshold '80KB' must lie inside"):
        _budget(max_size="64KB", warn={"max_size": "80KB"})
    with pytest.raises(ConfigError, match=r"warn\.max_p90_latency: warns before a limit this rule does not set"):
        _budget(max_size="64KB", warn={"max_p90_latency": "1ms"})


def test_deterministic_limits_params_macs_coverage():
    result = check(_report(), _budget(max_params=11_000, max_macs=300_000, min_accelerator_coverage="100%"))
    assert _status(result) == [("max_params", "PASS"), ("max_macs", "FAIL"), ("min_accelerator_coverage", "PASS")]
    assert result.verdicts[1].actual == "341,312"


def test_compressed_size_reads_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\0" * 50_000)  # compresses to almost nothing
    result = check(_report(path=str(path)), _budget(max_compressed_size="1KB"))
    assert _status(result) == [("max_compressed_size", "PASS")]
    missing = check(_report(path=str(tmp_path / "gone.onnx")), _budget(max_compressed_size="1KB"))
    assert missing.verdicts[0].actual == "not measured" and missing.verdicts[0].status == "FAIL"


def test_latency_failure_within_the_noise_says_so():
    budget = _budget(max_p90_latency="2ms", latency_tolerance="10%")
    inside = check(_report(p90=2.1), budget)
    assert _status(inside) == [("max_p90_latency", "FAIL")]
    assert "within the noise: 5.0% over the limit, latency_tolerance 10%" in inside.verdicts[0].note
    beyond = check(_report(p90=2.5), budget)
    assert beyond.verdicts[0].status == "FAIL" and beyond.verdicts[0].note == ""


def test_growth_against_a_baseline():
    budget = _budget(max_growth={"size": "2%", "p90_latency": "5%"}, max_accuracy_drop_vs_baseline="0.5%")
    old = _report(p90=2.0, size=20_000, accuracy=0.97)
    same_job = check(_report(p90=2.3, size=20_100, accuracy=0.96), budget, old, baseline_measured_here=True)
    assert _status(same_job) == [("max_accuracy_drop_vs_baseline", "FAIL"), ("max_growth.size", "PASS"),
                                 ("max_growth.p90_latency", "FAIL")]
    assert same_job.verdicts[2].actual == "+15.00%"
    other_job = check(_report(p90=2.3, size=20_100, accuracy=0.97), budget, old, baseline_measured_here=False)
    assert _status(other_job)[2] == ("max_growth.p90_latency", "WARN")  # timings of another job: not gated
    assert "another job or machine" in other_job.verdicts[2].note
    no_baseline = check(_report(), budget)
    assert all(v.status == "FAIL" and "baseline" in v.note for v in no_baseline.verdicts)


def test_compressed_growth_against_a_stored_baseline_whose_file_is_gone(tmp_path):
    """A baseline from an earlier commit keeps its compressed size in the report; the new file is read."""
    new = tmp_path / "student-int8.onnx"
    new.write_bytes(bytes(range(256)) * 40)  # incompressible-ish: 10,240 bytes of a repeating ramp
    old = _report(path=str(tmp_path / "gone.onnx"))
    old.entries[1].info["compressed_size_bytes"] = 100
    result = check(_report(path=str(new)), _budget(max_growth={"compressed_size": "10%"}), old)
    [verdict] = result.verdicts
    from edgekd.budgets.budget import compressed_size

    assert verdict.status == "FAIL" and verdict.actual == f"{100 * (compressed_size(new) / 100 - 1):+.2f}%"
    old.entries[1].info["compressed_size_bytes"] = compressed_size(new)
    assert check(_report(path=str(new)), _budget(max_growth={"compressed_size": "10%"}), old).verdicts[0].status == "PASS"


def test_growth_metric_names_are_validated():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_growth\.p90_latncy: unknown metric; did you mean 'p90_latency'"):
        _budget(max_growth={"p90_latncy": "5%"})


def test_estimated_figures_are_labelled_everywhere():
    result = check(_report(estimated=True), _budget(max_p90_latency="5ms", max_size="64KB"))
    latency = next(v for v in result.verdicts if v.metric == "max_p90_latency")
    size = next(v for v in result.verdicts if v.metric == "max_size")
    assert latency.estimated and not size.estimated  # the file size of an estimated row is exact
    assert "(estimated)" in result.table() and "(estimated)" in result.markdown()
    assert "come from `edgekd estimate`" in result.markdown()


def test_junit_and_markdown_outputs():
    result = check(_report(size=70_000), _budget(max_size="64KB", max_params=11_000, warn={"max_params": 10_000}))
    suite = ET.fromstring(result.junit())
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is not None and "70.0 KB" in cases[0].find("failure").get("message")
    assert cases[1].find("failure") is None and "WARN" in cases[1].find("system-out").text
    md = result.markdown("deltas here")
    assert md.startswith("### edgekd budgets: FAIL") and "❌ FAIL" in md and "⚠️ WARN" in md
    assert md.index("❌ FAIL") < md.index("⚠️ WARN") and "deltas here" in md


def _write(tmp_path, report: Report, budget: str, name="report.json"):
    report.write(tmp_path / name)
    (tmp_path / "budget.yaml").write_text(budget)
    return str(tmp_path / name), str(tmp_path / "budget.yaml")


def test_cli_exit_codes_and_files(tmp_path, monkeypatch):
    report, budget = _write(tmp_path, _report(size=70_000),
                            "budgets:\n  - artifact: student-int8.onnx\n    max_size: 64KB\n")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run = CliRunner().invoke(main, ["check", report, "--budget", budget, "--junit", str(tmp_path / "j.xml"),
                                    "--json", str(tmp_path / "v.json")])
    assert run.exit_code == 1 and "FAILED checks" in run.output
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert "edgekd budgets: FAIL" in summary.read_text()  # GitHub step summary appended
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False
    (tmp_path / "bad.yaml").write_text("budgets:\n  - artifact: x\n    max_size: 64 parsecs\n")
    bad = CliRunner().invoke(main, ["check", report, "--budget", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "max_size" in bad.output and "64 parsecs" in bad.output
    usage = CliRunner().invoke(main, ["check", "--budget", budget])
    assert usage.exit_code == 2 and "give a report.json" in usage.output


def test_cli_measure_failure_is_exit_3(tmp_path):
    profile = tmp_path / "gpu-box.yaml"
    profile.write_text("name: gpu-box\nruntimes: {onnxruntime: {providers: [CUDAExecutionProvider]}}\n")
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: m.onnx\n    max_size: 1MB\n")
    run = CliRunner().invoke(main, ["check", str(model), "--budget", str(tmp_path / "b.yaml"), "--measure",
                                    "--target", str(profile)])
    assert run.exit_code == 3 and "CUDAExecutionProvider" in run.output


def _tiny_onnx(path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Add", ["input", "one"], ["logits"])], "t",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.ones((1, 4), np.float32), "one")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def test_cli_measure_with_a_baseline_times_both_in_this_job(tmp_path, exported):
    """--measure --baseline re-times the old and the new artifact here, so latency growth is gated."""
    import shutil

    new_path, old_path = tmp_path / "new.onnx", tmp_path / "old.onnx"
    shutil.copyfile(exported[("int8", "onnx")].path, new_path)
    shutil.copyfile(exported[("float", "onnx")].path, old_path)
    profile = tmp_path / "quick.yaml"
    profile.write_text("name: quick\nruntimes: {onnxruntime: {}}\n"
                       "benchmark: {warmup_runs: 5, min_runs: 50, min_seconds: 0.1}\n")
    entry = lambda p: Entry("student-int8.onnx", "student-int8", "onnx", path=str(p), size_bytes=p.stat().st_size,  # noqa: E731
                            runtime="onnxruntime", target=str(profile))
    Report(targets=[str(profile)], entries=[entry(old_path)]).write(tmp_path / "old.json")
    Report(targets=[str(profile)], entries=[entry(new_path)]).write(tmp_path / "new.json")
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student-int8.onnx\n"
                                     "    max_growth: {size: 0%, p90_latency: 1000%}\n")
    run = CliRunner().invoke(main, ["check", str(tmp_path / "new.json"), "--budget", str(tmp_path / "b.yaml"),
                                    "--measure", "--baseline", str(tmp_path / "old.json"),
                                    "--markdown", str(tmp_path / "pr.md")], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "max_growth.p90_latency" in run.output and "WARN" not in run.output  # measured here: gated
    assert "Changes against the baseline report" in (tmp_path / "pr.md").read_text()


def test_params_and_macs_on_a_tflite_row_point_to_the_onnx_artifact():
    report = Report(targets=["x86-cpu"], entries=[Entry("m.tflite", "artifact", "tflite", size_bytes=1000,
                                                        runtime="litert", target="x86-cpu")])
    budget = Budget.from_dict({"budgets": [{"artifact": "m.*", "max_params": 100, "max_macs": 1000}]})
    verdicts = check(report, budget).verdicts
    assert [(v.metric, v.status) for v in verdicts] == [("max_params", "FAIL"), ("max_macs", "FAIL")]
    assert all("counted on ONNX graphs; gate them on the model's .onnx artifact" in v.note for v in verdicts)


def test_an_output_that_cannot_be_written_is_bad_input(tmp_path, monkeypatch):
    _report().write(tmp_path / "r.json")
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student-int8.onnx\n    max_size: 64KB\n")
    args = ["check", str(tmp_path / "r.json"), "--budget", str(tmp_path / "b.yaml")]
    run = CliRunner().invoke(main, [*args, "--junit", str(tmp_path / "r.json" / "j.xml")])  # under a file
    assert run.exit_code == 2 and "j.xml" in run.output and "Traceback" not in run.output
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing-folder" / "summary.md"))
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 2 and "summary.md" in run.output


@pytest.mark.parametrize("field, value, message", [
    ("size_bytes", "17KB", "entries[1] (student-int8.onnx).size_bytes: expected a number or null, got '17KB'"),
    ("info", None, "entries[1] (student-int8.onnx).info: expected an object, got null"),
    ("latency", {"p90_ms": "fast"}, "entries[1] (student-int8.onnx).latency.p90_ms: expected a number of milliseconds"),
])
def test_a_report_with_wrong_types_is_bad_input(tmp_path, field, value, message):
    data = _report().to_dict()
    data["entries"][1][field] = value
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student-int8.onnx\n    max_size: 64KB\n")
    run = CliRunner().invoke(main, ["check", str(tmp_path / "r.json"), "--budget", str(tmp_path / "b.yaml")])
    assert run.exit_code == 2 and message in run.output and "Traceback" not in run.output


def test_measure_never_times_a_baseline_that_is_the_new_file(tmp_path, exported):
    """A stored baseline of the same output folder points at the new build: not re-timed, not gated."""
    import shutil

    new_path = tmp_path / "student-int8.onnx"
    shutil.copyfile(exported[("int8", "onnx")].path, new_path)
    profile = tmp_path / "quick.yaml"
    profile.write_text("name: quick\nruntimes: {onnxruntime: {}}\n"
                       "benchmark: {warmup_runs: 5, min_runs: 50, min_seconds: 0.1}\n")
    entry = Entry("student-int8.onnx", "student-int8", "onnx", path=str(new_path), size_bytes=new_path.stat().st_size,
                  runtime="onnxruntime", target=str(profile), latency={"p50_ms": 1e-4, "p90_ms": 1e-4},
                  info={"compressed_size_bytes": 10})
    Report(targets=[str(profile)], entries=[entry]).write(tmp_path / "old.json")
    Report(targets=[str(profile)], entries=[entry]).write(tmp_path / "new.json")
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student-int8.onnx\n"
                                     "    max_growth: {p90_latency: 5%, compressed_size: 5%}\n")
    run = CliRunner().invoke(main, ["check", str(tmp_path / "new.json"), "--budget", str(tmp_path / "b.yaml"),
                                    "--measure", "--baseline", str(tmp_path / "old.json")], catch_exceptions=False)
    assert "baseline student-int8.onnx not re-measured" in run.output
    rows = {line.split()[2]: line for line in run.output.splitlines() if "max_growth." in line}
    assert "WARN" in rows["max_growth.p90_latency"]  # recorded 0.1 µs vs measured now: compared, not gated
    assert "FAIL" in rows["max_growth.compressed_size"]  # recorded 10 B vs the file now: a real growth
    assert run.exit_code == 1


def test_measure_with_no_artifact_file_left_is_bad_input(tmp_path):
    report = _report(path=str(tmp_path / "gone.onnx"))
    report.write(tmp_path / "r.json")
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student-int8.onnx\n    max_size: 64KB\n")
    run = CliRunner().invoke(main, ["check", str(tmp_path / "r.json"), "--budget", str(tmp_path / "b.yaml"), "--measure"])
    assert run.exit_code == 2 and "none of the report's artifact files" in run.output
    assert "gone.onnx is not there" in run.output
