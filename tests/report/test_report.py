"""edgekd.report: report.json round trip, loading errors and the markdown table."""

from __future__ import annotations

import json

import pytest

from edgekd.errors import ConfigError
from edgekd.report import Entry, Report, load_report


def make_report() -> Report:
    return Report(
        targets=["x86-cpu"],
        entries=[
            Entry("teacher.pytorch", "teacher", "pytorch", params=260_000, accuracy=0.98),
            Entry("student-int8.onnx", "student-int8", "onnx", path="out/student-int8.onnx", size_bytes=20_000,
                  accuracy=0.97, agreement=0.995, runtime="onnxruntime", target="x86-cpu", threads=1,
                  latency={"p50_ms": 0.4, "p90_ms": 0.6, "p99_ms": 1.25}, peak_memory_bytes=150_000_000,
                  memory={"baseline_bytes": 1, "model_peak_bytes": 2},
                  info={"onnxruntime": "1.20", "call_latency": {"p50_ms": 0.45}}),
            Entry("student-int8.openvino", "student-int8", "openvino", runtime="openvino", target="x86-cpu",
                  latency={"p50_ms": 2.5, "p90_ms": 3.0}),
        ],
        data={"source": "digits", "fingerprint": "abc"},
        recipe={"name": "r"},
        timings_s={"distill": 1.5},
        environment={"python": "3.11"},
        created_at="2026-01-01T00:00:00+00:00",
    )


def test_write_load_round_trip(tmp_path):
    report = make_report()
    path = report.write(tmp_path / "sub" / "report.json")
    assert path == tmp_path / "sub" / "report.json"
    assert json.loads(path.read_text())["schema_version"] == 1
    assert load_report(path) == report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left behind


def test_load_ignores_unknown_entry_keys(tmp_path):
    data = make_report().to_dict()
    data["entries"][0]["future_metric"] = 3
    data["something_new"] = {}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert load_report(path) == make_report()


def test_load_missing_report(tmp_path):
    path = tmp_path / "none.json"
    with pytest.raises(ConfigError, match=f"^{path}: report not found$"):
        load_report(path)


def test_load_non_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("this is not json {")
    with pytest.raises(ConfigError, match=f"^{path}: not a readable JSON report \\("):
        load_report(path)


@pytest.mark.parametrize("data", [[1, 2], {"entries": []}, {"schema_version": 1}])
def test_load_json_that_is_not_a_report(tmp_path, data):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_report(path)
    assert str(info.value) == f"{path}: not an edgekd report (expected keys schema_version and entries)"


def test_load_wrong_schema_version(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(make_report().to_dict() | {"schema_version": 2}))
    with pytest.raises(ConfigError) as info:
        load_report(path)
    assert str(info.value) == f"{path}: report schema 2 is not supported (this edgekd reads schema 1)"


def test_load_entry_missing_required_key(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema_version": 1, "entries": [{"stage": "teacher"}]}))
    with pytest.raises(ConfigError, match=f"^{path}: malformed report entry \\(.*'name' and 'format'"):
        load_report(path)


def test_markdown_has_one_row_per_entry():
    report = make_report()
    lines = report.markdown().splitlines()
    assert lines[0] == ("| artifact | runtime | target | size | params | accuracy | agreement | p50 | p90 | "
                        "call p50 | peak mem |")
    assert len(lines) == 2 + len(report.entries)
    assert lines[2] == "| teacher.pytorch | pytorch | - | - | 260000 | 98.00% | - | - | - | - | - |"
    assert lines[3] == ("| student-int8.onnx | onnxruntime | x86-cpu | 20.0 KB | - | 97.00% | 99.50% | "
                        "400.0 µs | 600.0 µs | 450.0 µs | 150.0 MB |")
    assert lines[4] == "| student-int8.openvino | openvino | x86-cpu | - | - | - | - | 2.50 ms | 3.00 ms | - | - |"


def test_empty_report_markdown_is_only_the_header():
    assert len(Report().markdown().splitlines()) == 2


def test_entry_lookup_and_teacher_accuracy():
    report = make_report()
    assert report.entry("student-int8.onnx").size_bytes == 20_000
    assert report.entry("student-int8.onnx", "x86-cpu").size_bytes == 20_000
    assert report.entry("student-int8.onnx", "arm") is None
    assert report.entry("nope") is None
    assert report.teacher_accuracy == 0.98
    assert Report().teacher_accuracy is None


def test_entry_metric_by_dotted_key():
    entry = make_report().entries[1]
    assert entry.metric("size_bytes") == 20_000
    assert entry.metric("latency.p90_ms") == 0.6
    assert entry.metric("memory.model_peak_bytes") == 2
    assert entry.metric("latency.p999_ms") is None
    assert entry.metric("no_such_field") is None
    assert make_report().entries[0].metric("latency.p90_ms") is None
