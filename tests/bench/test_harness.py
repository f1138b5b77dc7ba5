import json

import pytest

from edgekd.bench import BenchSettings, LatencyStats, benchmark
from edgekd.errors import BenchmarkError, ConfigError, ModelLoadError

QUICK = BenchSettings(warmup_runs=2, min_runs=30, min_seconds=0.05, max_seconds=5.0)


def test_stats_by_hand():
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.p50_ms, s.mean_ms, s.min_ms, s.max_ms) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.std_ms == pytest.approx(1.118034, rel=1e-6)
    assert s.p90_ms == pytest.approx(3.7)
    assert s.throughput_per_s == pytest.approx(400.0)
    assert s.cv == pytest.approx(1.118034 / 2.5, rel=1e-6)
    assert s.noisy  # cv 0.45
    assert not LatencyStats.from_samples([1.0, 1.0, 1.1, 1.0]).noisy


@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_benchmark_in_child_process(exported, fmt, runtime):
    result = benchmark(exported[("int8", fmt)].path, runtime, threads=1, settings=QUICK)
    lat = result.latency
    assert lat.n >= QUICK.min_runs and result.timed_seconds >= QUICK.min_seconds
    assert len(result.samples_ms) == lat.n
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    mem = result.memory
    assert 0 < mem["baseline_bytes"] <= mem["after_load_bytes"] <= mem["peak_bytes"]
    assert mem["model_peak_bytes"] == mem["peak_bytes"] - mem["baseline_bytes"]
    assert result.info["runtime"] == runtime and result.info["threads"] == 1
    assert json.loads(json.dumps(result.to_dict()))["latency"]["n"] == lat.n


def test_child_never_imports_torch(exported, monkeypatch):
    import subprocess
    import sys

    request = {"path": str(exported[("int8", "onnx")].path), "runtime": "onnxruntime", "threads": 1,
               "options": {}, **QUICK.to_dict()}
    code = ("import json,sys; from edgekd.bench.child import measure; "
            f"measure(json.loads({json.dumps(json.dumps(request))})); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_artifact(tmp_path):
    with pytest.raises(ModelLoadError, match="artifact not found"):
        benchmark(tmp_path / "x.onnx", "onnxruntime", settings=QUICK)


def test_child_failure_is_reported(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BenchmarkError, match="bad.onnx.*onnxruntime cannot load it"):
        benchmark(bad, "onnxruntime", settings=QUICK)


def test_missing_device_fails_not_falls_back(exported):
    with pytest.raises(BenchmarkError, match="device 'GPU' is not available"):
        benchmark(exported[("int8", "openvino")].path, "openvino", settings=QUICK, options={"device": "GPU"})


def test_settings_validation():
    with pytest.raises(ConfigError, match="max_seconds: must be >= min_seconds"):
        BenchSettings.from_dict({"min_seconds": 5, "max_seconds": 1})
