import json

import pytest

from edgekd.bench import BenchSettings, LatencyStats, benchmark
from edgekd.errors import ConfigError, ModelLoadError

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


def test_a_module_in_the_working_directory_cannot_shadow_the_childs_standard_library(exported, tmp_path,
                                                                                     monkeypatch):
    (tmp_path / "bisect.py").write_text('raise ImportError("a bisect.py of the user")\n')
    monkeypatch.chdir(tmp_path)
    result = benchmark(exported[("int8", "onnx")].path, "onnxruntime", threads=1, settings=QUICK)
    assert result.latency.n >= QUICK.min_runs


@pytest.mark.parametrize("fmt, runtime, options, clock", [
    ("onnx", "onnxruntime", {}, "perf_counter around InferenceSession.run"),
    ("openvino", "openvino", {}, "InferRequest.latency"),
    ("tflite", "litert", {"api": "compiled_model"}, "perf_counter around CompiledModel.run_by_name")])
def test_inference_and_the_whole_call_are_two_timed_loops(exported, fmt, runtime, options, clock):
    result = benchmark(exported[("int8", fmt)].path, runtime, threads=1, settings=QUICK, options=options)
    assert clock in result.info["inference_clock"]
    calls = result.call_latency
    assert calls.n >= QUICK.min_runs and result.latency.n >= QUICK.min_runs
    assert result.timed_seconds >= 2 * QUICK.min_seconds  # each loop runs its own minimum
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["call_latency"]["n"] == calls.n and saved["latency"]["n"] == result.latency.n

    from edgekd.report import Entry

    entry = Entry(name="x", stage="int8", format=fmt, path="p", size_bytes=1)
    result.record_into(entry)
    assert entry.info["call_latency"]["p50_ms"] == calls.p50_ms
    assert entry.latency["p50_ms"] == result.latency.p50_ms


def test_timed_loop_takes_the_native_time_a_step_returns():
    from edgekd.bench.child import timed_loop

    request = {"min_runs": 5, "min_seconds": 0.0, "max_seconds": 10.0}
    assert timed_loop(lambda: 0.125, request)[0] == [0.125] * 5  # ms measured by the runtime itself
    wall, seconds = timed_loop(lambda: None, {**request, "min_seconds": 0.01})
    assert len(wall) >= 5 and all(t >= 0 for t in wall) and seconds >= 0.01
    capped, seconds = timed_loop(lambda: None, {"min_runs": 10**9, "min_seconds": 0.0, "max_seconds": 0.02})
    assert 0.02 <= seconds and len(capped) < 10**9  # max_seconds ends a loop that min_runs would not


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


def test_a_corrupt_artifact_is_bad_input_not_a_measurement_failure(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx.*onnxruntime cannot load it"):
        benchmark(bad, "onnxruntime", settings=QUICK)


def test_missing_device_fails_not_falls_back(exported):
    from edgekd.errors import RuntimeBackendError

    with pytest.raises(RuntimeBackendError, match="device 'GPU' is not available"):
        benchmark(exported[("int8", "openvino")].path, "openvino", settings=QUICK, options={"device": "GPU"})


def test_settings_validation():
    with pytest.raises(ConfigError, match="max_seconds: must be >= min_seconds"):
        BenchSettings.from_dict({"min_seconds": 5, "max_seconds": 1})


def test_memory_is_split_into_load_and_inference_peaks(exported):
    result = benchmark(exported[("int8", "onnx")].path, "onnxruntime", settings=QUICK)
    mem = result.memory
    assert mem["hwm_reset"] is True  # Linux: the high-water mark is reset after loading
    assert mem["load_peak_bytes"] == mem["after_load_bytes"] - mem["baseline_bytes"] > 0
    assert mem["inference_peak_bytes"] > 0 and mem["inference_added_bytes"] is not None
    assert mem["peak_bytes"] == max(mem["after_load_bytes"], mem["inference_peak_bytes"])


def test_every_result_carries_a_manifest_and_coverage(exported):
    result = benchmark(exported[("int8", "onnx")].path, "onnxruntime", settings=QUICK)
    man = result.manifest
    for key in ("edgekd", "runtime_version", "device", "threads", "cpu", "governor", "hostname", "providers"):
        assert man.get(key) is not None, key
    assert result.coverage == 1.0  # every node on the CPU provider that was asked for
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["manifest"]["cpu"] == man["cpu"] and len(saved["samples_ms"]) == result.latency.n


def test_openvino_reports_a_warm_load_from_its_compile_cache(exported):
    result = benchmark(exported[("int8", "openvino")].path, "openvino", settings=QUICK)
    assert result.warm_load_ms is not None and result.warm_load_ms > 0
    assert result.info["execution_devices"] == ["CPU"] and result.coverage == 1.0


@pytest.mark.parametrize("fmt, runtime, integer_op", [("onnx", "onnxruntime", "QLinearConv"),
                                                      ("openvino", "openvino", "Convolution")])
def test_per_op_profile_names_the_slowest_ops(exported, fmt, runtime, integer_op):
    result = benchmark(exported[("int8", fmt)].path, runtime, settings=QUICK, profile=True)
    ops = result.profile
    assert isinstance(ops, list) and len(ops) >= 4
    assert [r["mean_ms"] for r in ops] == sorted((r["mean_ms"] for r in ops), reverse=True)
    assert any(r["op"] == integer_op for r in ops) and all(r["mean_ms"] >= 0 for r in ops)


def test_litert_says_it_has_no_per_op_profiler(exported):
    result = benchmark(exported[("int8", "tflite")].path, "litert", settings=QUICK, profile=True)
    assert "no per-op profiler" in result.profile["unavailable"]
    assert result.coverage == 1.0  # XNNPACK took every op of the int8 student


def test_missing_provider_is_an_error_or_a_not_available_row(exported, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    profile = tmp_path / "gpu-box.yaml"
    profile.write_text("name: gpu-box\nruntimes: {onnxruntime: {providers: [CUDAExecutionProvider]}}\n"
                       "benchmark: {warmup_runs: 1, min_runs: 5, min_seconds: 0.01}\n")
    path = str(exported[("int8", "onnx")].path)
    failed = CliRunner().invoke(main, ["bench", path, "--target", str(profile)])
    assert failed.exit_code == 3 and "has no provider CUDAExecutionProvider" in failed.output
    row = CliRunner().invoke(main, ["bench", path, "--target", str(profile), "--allow-missing",
                                    "--json", str(tmp_path / "r.json")], catch_exceptions=False)
    assert row.exit_code == 0 and "not available" in row.output
    assert json.loads((tmp_path / "r.json").read_text())["available"] is False
