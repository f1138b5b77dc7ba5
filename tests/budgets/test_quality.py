"""Quality budgets read the task's quality figure; the accuracy rules are its classification names."""

from __future__ import annotations

from edgekd.budgets import Budget, check
from edgekd.report import Entry, Report


def budget(*rules: dict) -> Budget:
    return Budget.from_dict({"budgets": list(rules)})


def embedding_report() -> Report:
    """A task whose quality is a rank correlation, not accuracy."""
    return Report(task={"name": "sentence-embedding", "quality_metric": "spearman"}, entries=[
        Entry("teacher.pytorch", "teacher", "pytorch", metrics={"spearman": 1.0, "top1_retrieval": 1.0}),
        Entry("student.onnx", "student", "onnx", metrics={"spearman": 0.93, "top1_retrieval": 0.88}),
    ])


def test_min_quality_and_drop_read_the_tasks_metric():
    result = check(embedding_report(), budget({"artifact": "student.onnx", "min_quality": "90%",
                                               "max_quality_drop": "5%"}))
    got = [(v.metric, v.actual, v.status) for v in result.verdicts]
    assert got == [("min_quality (spearman)", "93.00%", "PASS"), ("max_quality_drop (spearman)", "7.00%", "FAIL")]


def test_accuracy_rules_on_another_quality_metric_fail_and_say_what_to_write():
    (verdict,) = check(embedding_report(), budget({"artifact": "student.onnx", "min_accuracy": "90%"})).verdicts
    assert (verdict.actual, verdict.status) == ("not applicable", "FAIL")
    assert "measures quality as 'spearman', not accuracy: write min_quality" in verdict.note


def test_classification_reports_old_and_new_take_both_names():
    old = Report(entries=[Entry("teacher.pytorch", "teacher", "pytorch", accuracy=0.99),
                          Entry("s.onnx", "s", "onnx", accuracy=0.97)])  # written before tasks
    new = Report(task={"name": "image-classification", "quality_metric": "accuracy"},
                 entries=[Entry("teacher.pytorch", "teacher", "pytorch", accuracy=0.99, metrics={"accuracy": 0.99}),
                          Entry("s.onnx", "s", "onnx", accuracy=0.97, metrics={"accuracy": 0.97})])
    for report in (old, new):
        assert report.quality_metric == "accuracy"
        result = check(report, budget({"artifact": "s.onnx", "min_quality": "96%", "min_accuracy": "96%",
                                       "max_quality_drop": "1%", "max_accuracy_drop": "3%"}))
        assert [(v.metric, v.status) for v in result.verdicts] == [
            ("min_quality (accuracy)", "PASS"), ("max_quality_drop (accuracy)", "FAIL"),
            ("min_accuracy", "PASS"), ("max_accuracy_drop", "PASS")]


def test_quality_against_a_baseline():
    old, new = embedding_report(), embedding_report()
    new.entries[1].metrics["spearman"] = 0.90
    (verdict,) = check(new, budget({"artifact": "student.onnx", "max_quality_drop_vs_baseline": "2%"}), old).verdicts
    assert (verdict.actual, verdict.status) == ("3.00%", "FAIL")


def test_markdown_and_compare_name_the_tasks_metrics():
    from edgekd.report.compare import compare_reports, table

    report = embedding_report()
    assert "| spearman |" in report.markdown().splitlines()[0].replace("  ", " ")
    new = embedding_report()
    new.entries[1].metrics["top1_retrieval"] = 0.9
    text = table([d for d in compare_reports(report, new) if d.change])
    assert "top1_retrieval" in text and "+2.00 pt" in text
