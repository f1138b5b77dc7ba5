"""`edgekd compare`: per-metric deltas between two reports."""

import json

from click.testing import CliRunner

from edgekd.report.compare import compare_reports, table
from edgekd.report import Entry, Report


def _report(p50: float, size: int, extra: bool = False) -> Report:
    entries = [Entry(name="student-int8.onnx", stage="student-int8", format="onnx", size_bytes=size,
                     accuracy=0.97, runtime="onnxruntime", target="x86-cpu",
                     latency={"p50_ms": p50, "p90_ms": p50 * 1.2})]
    if extra:
        entries.append(Entry(name="student-int8.tflite", stage="student-int8", format="tflite", size_bytes=900,
                             target="x86-cpu", runtime="litert"))
    return Report(targets=["x86-cpu"], entries=entries)


def test_deltas_by_metric_with_added_entries():
    deltas = compare_reports(_report(2.0, 1000), _report(2.5, 800, extra=True))
    by = {(d.entry, d.metric): d for d in deltas}
    p50 = by[("student-int8.onnx", "latency.p50_ms")]
    assert (p50.old, p50.new, p50.change) == (2.0, 2.5, 0.5) and abs(p50.relative - 0.25) < 1e-12
    assert by[("student-int8.onnx", "size_bytes")].change == -200
    assert by[("student-int8.onnx", "accuracy")].change == 0
    added = by[("student-int8.tflite", "size_bytes")]
    assert added.old is None and added.new == 900
    text = table(deltas, changed_only=True)
    assert "+500.0 µs (+25.0%)" in text and "added" in text and "accuracy" not in text


def test_cli_compare_writes_json(tmp_path):
    from edgekd.cli import main

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _report(2.0, 1000).write(old)
    _report(1.5, 1000).write(new)
    result = CliRunner().invoke(main, ["compare", str(old), str(new), "--json", str(tmp_path / "d.json")],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "-500.0 µs (-25.0%)" in result.output
    rows = json.loads((tmp_path / "d.json").read_text())
    assert any(r["metric"] == "latency.p50_ms" and r["relative"] == -0.25 for r in rows)
    bad = CliRunner().invoke(main, ["compare", str(old), str(tmp_path / "missing.json")])
    assert bad.exit_code == 2 and "missing.json: report not found" in bad.output


def test_call_latency_is_compared_beside_the_inference_latency():
    old, new = _report(2.0, 1000), _report(2.0, 1000)
    old.entries[0].info["call_latency"] = {"p50_ms": 2.2}
    new.entries[0].info["call_latency"] = {"p50_ms": 2.6}
    by = {d.metric: d for d in compare_reports(old, new)}
    assert by["latency.p50_ms"].change == 0
    call = by["info.call_latency.p50_ms"]
    assert (call.old, call.new) == (2.2, 2.6)
    assert "call p50" in table([call])
