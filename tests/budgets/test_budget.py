"""edgekd.budgets: budget files and checking a report against them."""

from __future__ import annotations

import textwrap

import pytest

from edgekd.budgets import Budget, check, load_budget
from edgekd.errors import BudgetError
from edgekd.report import Entry, Report


def make_report() -> Report:
    lat = {"p50_ms": 0.4, "p90_ms": 0.6, "p99_ms": 0.9}
    return Report(targets=["x86-cpu"], entries=[
        Entry("teacher.pytorch", "teacher", "pytorch", accuracy=0.98, params=260_000),
        Entry("student-int8.pytorch", "student-int8", "pytorch", accuracy=0.97),
        Entry("student-int8.onnx", "student-int8", "onnx", size_bytes=20_000, accuracy=0.97,
              agreement=0.995, runtime="onnxruntime", target="x86-cpu", latency=dict(lat),
              peak_memory_bytes=150_000_000, memory={"model_peak_bytes": 3_000_000}),
        Entry("student-int8.openvino", "student-int8", "openvino", size_bytes=30_000, accuracy=0.96,
              agreement=0.99, runtime="openvino", target="x86-cpu", latency=dict(lat),
              peak_memory_bytes=250_000_000),
        Entry("student-int8.onnx", "student-int8", "onnx", size_bytes=20_000, accuracy=0.97,
              runtime="onnxruntime", target="arm-board", latency={"p90_ms": 9.0}),
    ])


def budget(*rules: dict) -> Budget:
    return Budget.from_dict({"budgets": list(rules)})


def rows(result) -> list[tuple]:
    return [(v.artifact, v.metric, v.limit, v.actual, v.passed) for v in result.verdicts]


def write(path, text: str):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# --- checks -----------------------------------------------------------------------------------

def test_all_limits_pass():
    result = check(make_report(), budget({
        "artifact": "student-int8.onnx", "target": "x86-cpu", "max_size": "64KB", "max_p50_latency": "1ms",
        "max_p90_latency": "800us", "max_p99_latency": 1, "max_peak_memory": "200MB",
        "max_model_memory": "4MB", "min_accuracy": "96%", "max_accuracy_drop": "2%", "min_agreement": "99%",
    }))
    assert result.passed
    assert result.failures == []
    assert len(result.verdicts) == 9
    assert rows(result)[0] == ("student-int8.onnx @x86-cpu", "max_size", "<= 64KB", "20.0 KB", True)
    assert rows(result)[2] == ("student-int8.onnx @x86-cpu", "max_p90_latency", "<= 800us", "0.6000 ms", True)
    assert rows(result)[7] == ("student-int8.onnx @x86-cpu", "max_accuracy_drop", "<= 2%", "1.00%", True)


def test_failing_size():
    result = check(make_report(), budget({"artifact": "student-int8.*", "target": "x86-cpu", "max_size": "25KB"}))
    assert not result.passed
    assert rows(result) == [
        ("student-int8.pytorch", "max_size", "<= 25KB", "not measured", False),
        ("student-int8.onnx @x86-cpu", "max_size", "<= 25KB", "20.0 KB", True),
        ("student-int8.openvino @x86-cpu", "max_size", "<= 25KB", "30.0 KB", False),
    ]
    assert [v.artifact for v in result.failures] == ["student-int8.pytorch", "student-int8.openvino @x86-cpu"]


def test_accuracy_drop_is_measured_against_teacher_pytorch():
    result = check(make_report(), budget(
        {"artifact": ["student-int8.onnx", "student-int8.openvino"], "target": "x86-cpu",
         "max_accuracy_drop": "1.5%"}))
    assert rows(result) == [
        ("student-int8.onnx @x86-cpu", "max_accuracy_drop", "<= 1.5%", "1.00%", True),    # 0.98 - 0.97
        ("student-int8.openvino @x86-cpu", "max_accuracy_drop", "<= 1.5%", "2.00%", False),  # 0.98 - 0.96
    ]


def test_accuracy_drop_without_teacher_is_not_measured():
    report = make_report()
    report.entries = [e for e in report.entries if e.name != "teacher.pytorch"]
    result = check(report, budget({"artifact": "student-int8.openvino", "max_accuracy_drop": 0.5}))
    assert rows(result) == [("student-int8.openvino @x86-cpu", "max_accuracy_drop", "<= 0.5", "not measured", False)]


def test_min_limits_fail_below():
    result = check(make_report(), budget(
        {"artifact": "student-int8.openvino", "min_accuracy": "97%", "min_agreement": 0.995}))
    assert rows(result) == [
        ("student-int8.openvino @x86-cpu", "min_accuracy", ">= 97%", "96.00%", False),
        ("student-int8.openvino @x86-cpu", "min_agreement", ">= 0.995", "99.00%", False),
    ]


def test_rule_matching_nothing_fails():
    result = check(make_report(), budget({"artifact": "student-kd.*", "max_size": "1MB"}))
    assert not result.passed
    [v] = result.verdicts
    assert (v.artifact, v.metric, v.limit, v.actual, v.passed) == (
        "student-kd.*", "rule 1", "matches artifacts", "no artifact matched", False)
    assert v.note.startswith("report has: teacher.pytorch, student-int8.pytorch, student-int8.onnx")


def test_rule_matching_nothing_on_target_names_it():
    result = check(make_report(), budget({"artifact": "student-int8.openvino", "target": "arm-board",
                                          "max_size": "1MB"}, {"artifact": "*.onnx", "max_size": "1MB"}))
    assert rows(result)[0] == ("student-int8.openvino", "rule 1", "matches artifacts on target arm-board",
                               "no artifact matched", False)
    assert all(v.passed for v in result.verdicts[1:])


def test_metric_not_measured_fails():
    result = check(make_report(), budget({"artifact": "student-int8.openvino", "max_model_memory": "10MB"}))
    [v] = result.verdicts
    assert (v.actual, v.passed) == ("not measured", False)
    assert v.note == "the report has no such measurement for this artifact"
    assert "not measured" in result.table()


def test_target_filter_selects_entries_of_that_target():
    report = make_report()
    arm = check(report, budget({"artifact": "student-int8.onnx", "target": "arm-board", "max_p90_latency": "5ms"}))
    assert rows(arm) == [("student-int8.onnx @arm-board", "max_p90_latency", "<= 5ms", "9.0000 ms", False)]
    x86 = check(report, budget({"artifact": "student-int8.onnx", "target": "x86-cpu", "max_p90_latency": "5ms"}))
    assert rows(x86) == [("student-int8.onnx @x86-cpu", "max_p90_latency", "<= 5ms", "0.6000 ms", True)]
    both = check(report, budget({"artifact": "student-int8.onnx", "max_p90_latency": "5ms"}))
    assert [v.artifact for v in both.verdicts] == ["student-int8.onnx @x86-cpu", "student-int8.onnx @arm-board"]


def test_table_has_one_row_per_verdict_and_marks_failures():
    result = check(make_report(), budget({"artifact": "student-int8.*", "target": "x86-cpu", "max_size": "25KB"}))
    lines = result.table().splitlines()
    assert lines[0].split() == ["artifact", "metric", "limit", "actual", "verdict"]
    assert len(lines) == 2 + 3
    assert [ln.split()[-1] for ln in lines[2:]] == ["FAIL", "PASS", "FAIL"]
    assert len(result.table(only_failures=True).splitlines()) == 2 + 2


def test_rule_limits_are_parsed_with_units():
    rule = budget({"artifact": "x", "max_size": "2MiB", "max_p90_latency": "250us", "min_accuracy": "1.5%"}).budgets[0]
    assert rule.limits == {"max_size": 2_097_152, "max_p90_latency": 0.25, "min_accuracy": 0.015}


# --- loading ----------------------------------------------------------------------------------

def test_load_yaml_budget(tmp_path):
    path = write(tmp_path / "budget.yaml", """
        budgets:
          - artifact: "student-int8.*"
            max_size: 64KB
          - artifact: [a.onnx, b.onnx]
            target: x86-cpu
            max_p90_latency: 2ms
    """)
    b = load_budget(path)
    assert [r.patterns for r in b.budgets] == [["student-int8.*"], ["a.onnx", "b.onnx"]]
    assert b.budgets[0].limits == {"max_size": 64_000}
    assert (b.budgets[1].target, b.budgets[1].limits) == ("x86-cpu", {"max_p90_latency": 2.0})


def test_yaml_bad_unit_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "budget.yaml", """
        budgets:
          - artifact: "*"
            max_size: 64KB
          - artifact: "*.onnx"
            max_size: 64 parsecs
    """)
    with pytest.raises(BudgetError) as info:
        load_budget(path)
    assert str(info.value) == (f"{path}:5: budgets.1.max_size: expected a size such as '512KB' or '2MiB', "
                               f"got '64 parsecs'; known units: b, kb, mb, gb, kib, mib, gib")


def test_yaml_unknown_metric_suggests(tmp_path):
    path = write(tmp_path / "budget.yaml", """
        budgets:
          - artifact: "*"
            max_latency_p90: 2ms
    """)
    with pytest.raises(BudgetError, match=rf"^{path}:3: budgets\.0\.max_latency_p90: unknown field; did you mean "):
        load_budget(path)


def test_rule_with_no_limits(tmp_path):
    path = write(tmp_path / "budget.yaml", """
        budgets:
          - artifact: "*"
            target: x86-cpu
    """)
    with pytest.raises(BudgetError) as info:
        load_budget(path)
    assert str(info.value).startswith(f"{path}:2: budgets.0.artifact: rule sets no limit; use any of max_size, ")


def test_no_rules(tmp_path):
    path = write(tmp_path / "budget.yaml", "budgets: []\n")
    with pytest.raises(BudgetError, match=f"^{path}:1: budgets: no budget rules given$"):
        load_budget(path)


def test_missing_and_invalid_yaml_are_budget_errors(tmp_path):
    with pytest.raises(BudgetError, match="file not found"):
        load_budget(tmp_path / "none.yaml")
    path = write(tmp_path / "bad.yaml", "budgets:\n  - artifact: [a\n")
    with pytest.raises(BudgetError, match=f"^{path}:3: invalid YAML"):
        load_budget(path)


def test_load_pyproject_toml(tmp_path):
    path = write(tmp_path / "pyproject.toml", """
        [project]
        name = "x"

        [[tool.edgekd.budgets]]
        artifact = "student-int8.onnx"
        max_size = "64KB"
        min_accuracy = "95.5%"

        [[tool.edgekd.budgets]]
        artifact = ["a", "b"]
        max_p99_latency = 3
    """)
    b = load_budget(path)
    assert len(b.budgets) == 2
    assert b.budgets[0].limits == {"max_size": 64_000, "min_accuracy": pytest.approx(0.955)}
    assert b.budgets[1].patterns == ["a", "b"]
    assert b.budgets[1].limits == {"max_p99_latency": 3.0}


def test_toml_error_names_the_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", """
        [[tool.edgekd.budgets]]
        artifact = "*"
        max_size = "lots"
    """)
    with pytest.raises(BudgetError, match=rf"^{path} \[tool\.edgekd\]: budgets\.0\.max_size: expected a size"):
        load_budget(path)


def test_toml_without_the_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.other]\na = 1\n')
    with pytest.raises(BudgetError, match=rf"^{path}: no \[\[tool\.edgekd\.budgets\]\] tables found$"):
        load_budget(path)


def test_invalid_toml(tmp_path):
    path = write(tmp_path / "pyproject.toml", "[tool.edgekd\n")
    with pytest.raises(BudgetError, match=rf"^{path}: invalid TOML \("):
        load_budget(path)


def test_missing_toml(tmp_path):
    with pytest.raises(BudgetError, match="budget file not found"):
        load_budget(tmp_path / "pyproject.toml")


def test_a_budget_can_require_full_accelerator_coverage():
    from edgekd.budgets.budget import Budget, check
    from edgekd.report import Entry, Report

    entries = [Entry(name="student-int8.onnx", stage="student-int8", format="onnx", target="npu",
                     info={"accelerator_coverage": 0.9}),
               Entry(name="student-int8.xml", stage="student-int8", format="openvino", target="npu",
                     info={"accelerator_coverage": 1.0})]
    budget = Budget.from_dict({"budgets": [{"artifact": "student-int8.*", "min_accelerator_coverage": "100%"}]})
    result = check(Report(entries=entries), budget)
    assert [v.passed for v in result.verdicts] == [False, True]
