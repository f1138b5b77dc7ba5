"""edgekd.runtime.litert on tiny TFLite files built with the schema object API (tflite_models.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.bench import BenchSettings, benchmark
from edgekd.cli import main
from edgekd.errors import ConfigError, ModelLoadError, RuntimeBackendError
from edgekd.runtime import evaluate_session, open_session, runtime_for

pytest.importorskip("ai_edge_litert")
litert = pytest.importorskip("edgekd.runtime.litert")
tflite_models = pytest.importorskip("tests.runtime.tflite_models")  # needs ai_edge_litert, flatbuffers

QUICK = BenchSettings(warmup_runs=2, min_runs=30, min_seconds=0.05, max_seconds=5.0)
rng = np.random.default_rng(0)
WEIGHT = rng.standard_normal((10, 64)).astype(np.float32)  # (classes, C*H*W)
BIAS = rng.standard_normal(10).astype(np.float32)


@pytest.fixture(scope="module")
def float_fc(tmp_path_factory):
    """Float32 FULLY_CONNECTED over a (1, 1, 8, 8) input: logits = flatten(x) @ WEIGHT.T + BIAS."""
    return tflite_models.fully_connected(tmp_path_factory.mktemp("litert") / "fc.tflite", WEIGHT, BIAS,
                                         (1, 1, 8, 8))


def reference(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) @ WEIGHT.T + BIAS  # (N, 10)


@pytest.mark.parametrize("api", litert.APIS)
@pytest.mark.parametrize("xnnpack", [True, False])
def test_float_model_matches_numpy(float_fc, xnnpack, api):
    session = open_session(float_fc, options={"xnnpack": xnnpack, "api": api})
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    out = session.run(x)
    assert out.dtype == np.float32 and out.shape == (1, 10)
    np.testing.assert_allclose(out, reference(x), rtol=1e-5, atol=1e-5)


def test_native_runtime_of_tflite():
    assert runtime_for("model.tflite") == "litert"


# --- int8 / uint8 interfaces -------------------------------------------------------------------

def test_round_half_away_from_zero_like_std_round():
    v = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, 2.4, -2.6], np.float32)
    assert litert.round_half_away_from_zero(v).tolist() == [1, -1, 2, 3, -3, 0, 2, -3]


# x, then x quantized with scale 0.5 and dequantized, by hand: ties round away from zero
# (0.25 / 0.5 = 0.5 -> 1) and out-of-range values saturate at the integer type's limits.
X = [0.25, -0.25, 1.0, 100.0, -100.0, 0.74]
ROUND_TRIP = {
    np.int8: (-3, [0.5, -0.5, 1.0, 65.0, -62.5, 0.5]),  # zero point -3: q in [-128, 127]
    np.uint8: (128, [0.5, -0.5, 1.0, 63.5, -64.0, 0.5]),  # zero point 128: q in [0, 255]
}


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("api", litert.APIS)
@pytest.mark.parametrize("xnnpack", [True, False])
def test_integer_interface_quantizes_and_dequantizes(tmp_path, dtype, xnnpack, api):
    zero_point, expected = ROUND_TRIP[dtype]
    path = tflite_models.identity(tmp_path / "id.tflite", (1, 6), dtype, quant=(0.5, zero_point))
    session = open_session(path, options={"xnnpack": xnnpack, "api": api})
    assert session.info["input_dtype"] == np.dtype(dtype).name
    out = session.run(np.array([X], np.float32))
    assert out.dtype == np.float32
    assert out.tolist() == [expected]


@pytest.mark.parametrize("api", litert.APIS)
@pytest.mark.parametrize("xnnpack", [True, False])
def test_int8_classifier_matches_integer_reference(tmp_path, xnnpack, api):
    p = tflite_models.random_int8_classifier(tmp_path / "fc8.tflite")
    session = open_session(tmp_path / "fc8.tflite", options={"xnnpack": xnnpack, "api": api})
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    (s_in, z_in), (s_out, z_out) = p["input_quant"], p["output_quant"]
    x_q = np.clip(np.floor(x / s_in + 0.5) + z_in, -128, 127).reshape(16, -1)  # x >= 0: round half up
    acc = (x_q - z_in) @ p["weight_q"].T.astype(np.float64) + p["bias_q"]  # int32 accumulator
    y_q = np.clip(np.round(acc * s_in * p["weight_scale"] / s_out) + z_out, -128, 127)
    expected = (y_q - z_out) * s_out
    out = session.run(x)
    assert out.shape == (16, 10)
    assert np.abs(out - expected).max() <= s_out + 1e-6  # fixed-point requantization: within 1 step
    float_logits = x.reshape(16, -1) @ (p["weight_q"].T * p["weight_scale"]) + p["bias_q"] * s_in * p["weight_scale"]
    assert (out.argmax(1) == float_logits.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("api", ["interpreter", "compiled_model"])
def test_integer_input_without_quantization_is_fed_as_it_is(tmp_path, api):
    """Token ids and masks: an integer input with no scale is data, not a quantized float."""
    path = tflite_models.identity(tmp_path / "ids.tflite", (1, 6), np.int32)
    session = open_session(path, options={"api": api})
    assert [(s.name, s.dtype) for s in session.inputs] == [("input", "int32")]
    ids = np.array([[3, 1, 4, 1, 5, 9]], np.int32)
    assert np.array_equal(session.run(ids), ids.astype(np.float32))


@pytest.mark.parametrize("api", ["interpreter", "compiled_model"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_two_inputs_by_name_or_in_order(tmp_path, api, dtype):
    path = tflite_models.add(tmp_path / "add.tflite", (1, 4), dtype)
    session = open_session(path, options={"api": api})
    assert [s.name for s in session.inputs] == ["a", "b"]
    assert session.inputs[0].shape == (None, 4)  # the batch follows the input
    a, b = np.arange(8).reshape(2, 4).astype(dtype), np.full((2, 4), 10, dtype)
    assert np.array_equal(session.run({"b": b, "a": a}), (a + b).astype(np.float32))
    assert np.array_equal(session.run((a[:1], b[:1])), (a[:1] + b[:1]).astype(np.float32))
    with pytest.raises(RuntimeBackendError, match=r"inputs \['a'\] do not match the model's \['a', 'b'\]"):
        session.run({"a": a})


@pytest.mark.parametrize("api", ["interpreter", "compiled_model"])
def test_fetch_all_gives_every_output(tmp_path, api):
    path = tflite_models.add_and_mul(tmp_path / "add_mul.tflite", (1, 4), np.int32)
    session = open_session(path, options={"api": api})
    assert [(s.name, s.dtype) for s in session.outputs] == [("sum", "int32"), ("product", "int32")]
    a, b = np.arange(12).reshape(3, 4).astype(np.int32), np.full((3, 4), 3, np.int32)
    first = session.run({"a": a, "b": b})
    assert first.dtype == np.float32 and np.array_equal(first, (a + b).astype(np.float32))
    total, product = session.fetch_all()
    assert np.array_equal(total, a + b) and np.array_equal(product, a * b)


@pytest.mark.parametrize("api", ["interpreter", "compiled_model"])
def test_quantized_output_is_described_as_float32(tmp_path, api):
    """The interface edgekd presents: an int8 output is dequantized, so its spec says float32."""
    path = tflite_models.identity(tmp_path / "q.tflite", (1, 6), np.int8, quant=(0.5, 3))
    session = open_session(path, options={"api": api})
    assert [s.dtype for s in session.inputs] == ["float32"] and [s.dtype for s in session.outputs] == ["float32"]


@pytest.mark.parametrize("api", ["interpreter", "compiled_model"])
def test_benchmark_child_feeds_two_integer_inputs_by_name(tmp_path, api):
    path = tflite_models.add(tmp_path / "add.tflite", (1, 4), np.int32)
    result = benchmark(path, "litert", settings=QUICK, options={"api": api}, value_ranges={"a": [0, 100]})
    assert result.inputs == ["a int32[1,4] in [0, 100)", "b int32[1,4]"]  # b: the default [0, 2)
    assert result.latency.n >= QUICK.min_runs and result.info["api"] == api
    with pytest.raises(ConfigError, match=r"value range for 'c': the model has no such input \(its inputs: a, b\)"):
        benchmark(path, "litert", settings=QUICK, value_ranges={"c": [0, 10]})
    with pytest.raises(ConfigError, match=r"value range for 'a': expected \[low, high\) as two numbers"):
        benchmark(path, "litert", settings=QUICK, value_ranges={"a": [10]})


# --- options, threads, batch -------------------------------------------------------------------

def test_threads_and_xnnpack_are_recorded(float_fc):
    info = open_session(float_fc, threads=2).info
    assert info == {"runtime": "litert", "runtime_version": info["runtime_version"], "device": "CPU",
                    "threads": 2, "xnnpack": True, "interpreter": "ai_edge_litert", "input_dtype": "float32",
                    "api": "interpreter", "inference_clock": "perf_counter around Interpreter.invoke"}
    assert info["runtime_version"]
    assert open_session(float_fc, options={"xnnpack": False}).info["xnnpack"] is False


def test_compiled_model_records_its_api_and_clock(float_fc):
    info = open_session(float_fc, threads=2, options={"api": "compiled_model"}).info
    assert info["api"] == "compiled_model" and info["threads"] == 2 and info["device"] == "CPU"
    assert info["fully_accelerated"] is True  # XNNPACK takes the one FULLY_CONNECTED
    assert "CompiledModel.run_by_name" in info["inference_clock"]


def test_compiled_model_needs_ai_edge_litert_2(float_fc, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.compiled_model", None)  # as on tflite_runtime
    monkeypatch.delitem(sys.modules, "edgekd.runtime.litert_compiled", raising=False)
    with pytest.raises(ConfigError, match="api: compiled_model needs ai-edge-litert 2 or newer"):
        open_session(float_fc, options={"api": "compiled_model"})


def test_bad_options(float_fc):
    with pytest.raises(ConfigError, match="unknown LiteRT option 'xnnpak'; did you mean 'xnnpack'"):
        open_session(float_fc, options={"xnnpak": False})
    with pytest.raises(ConfigError, match="xnnpack: expected true or false, got 'no'"):
        open_session(float_fc, options={"xnnpack": "no"})
    with pytest.raises(ConfigError, match="api: expected interpreter or compiled_model, got 'compiled'; "
                                          "did you mean 'compiled_model'"):
        open_session(float_fc, options={"api": "compiled"})


@pytest.mark.parametrize("api", litert.APIS)
@pytest.mark.parametrize("xnnpack", [True, False])
def test_batch_is_resized_on_demand(float_fc, xnnpack, api):
    session = open_session(float_fc, options={"xnnpack": xnnpack, "api": api})
    assert session.input_shape == [None, 1, 8, 8]  # stored as 1, but the model follows any batch
    for n in (5, 2, 1, 5):
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(session.run(x), reference(x), rtol=1e-5, atol=1e-5)
    x = rng.random((7, 1, 8, 8), dtype=np.float32)
    y = reference(x).argmax(1)
    result = evaluate_session(session, x, y, reference=y, batch_size=4)  # batches of 4 and 3
    assert result.accuracy == result.agreement == 1.0


@pytest.mark.parametrize("api", litert.APIS)
@pytest.mark.parametrize("xnnpack", [True, False])
def test_fixed_batch_is_reported_and_enforced(tmp_path, xnnpack, api):
    path = tflite_models.identity(tmp_path / "fixed.tflite", (2, 3), np.float32, fixed_batch=True)
    session = open_session(path, options={"xnnpack": xnnpack, "api": api})
    assert session.input_shape == [2, 3]  # evaluate_session then steps by 2
    x = rng.random((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(session.run(x), x)  # the failed probe left the session usable
    with pytest.raises(ModelLoadError, match=r"fixed.tflite: the model's batch size is fixed at 2; "
                                             r"it cannot run a batch of 3"):
        session.run(rng.random((3, 3), dtype=np.float32))


@pytest.mark.parametrize("api", litert.APIS)
def test_wrong_input_layout_is_a_clear_error(float_fc, api):
    session = open_session(float_fc, options={"api": api})
    with pytest.raises(RuntimeBackendError, match=r"input 'input' of shape \(1, 8, 8, 1\) does not fit "
                                                  r"the model's \[None, 1, 8, 8\]"):
        session.run(np.zeros((1, 8, 8, 1), np.float32))


# --- load errors and installation ----------------------------------------------------------------

@pytest.mark.parametrize("api", litert.APIS)
def test_corrupt_file_names_the_path(tmp_path, float_fc, api):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ModelLoadError, match=rf"^{bad}: LiteRT cannot load it \(.+\)$"):
        open_session(bad, options={"api": api})
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(float_fc.read_bytes()[:300])
    with pytest.raises(ModelLoadError, match=rf"^{cut}: LiteRT cannot load it"):
        open_session(cut, options={"api": api})


def test_falls_back_to_tflite_runtime(float_fc, monkeypatch):
    """Without ai_edge_litert the same interpreter API is taken from tflite_runtime."""
    from ai_edge_litert import interpreter as litert_interpreter

    fake = types.ModuleType("tflite_runtime")
    fake.__version__ = "2.14.0"
    fake.interpreter = types.SimpleNamespace(Interpreter=litert_interpreter.Interpreter,
                                             OpResolverType=litert_interpreter.OpResolverType)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake.interpreter)
    monkeypatch.delitem(sys.modules, "edgekd.runtime.litert")  # re-imported by open_session
    monkeypatch.delitem(sys.modules, "edgekd.runtime.litert_common")  # (with the interpreter it found)
    session = open_session(float_fc)
    assert (session.info["interpreter"], session.info["runtime_version"]) == ("tflite_runtime", "2.14.0")
    x = rng.random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(session.run(x), reference(x), rtol=1e-5, atol=1e-5)


def test_neither_interpreter_installed(float_fc, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.delitem(sys.modules, "edgekd.runtime.litert")
    monkeypatch.delitem(sys.modules, "edgekd.runtime.litert_common")
    with pytest.raises(ConfigError, match=r"runtime 'litert' is not installed \(neither ai_edge_litert "
                                          r"nor tflite_runtime is installed\); pip install ai-edge-litert"):
        open_session(float_fc)


def test_import_edgekd_does_not_import_litert():
    code = ("import sys, edgekd, edgekd.runtime; edgekd.list_runtimes(); "
            "print('ai_edge_litert' in sys.modules, 'edgekd.runtime.litert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- benchmark -----------------------------------------------------------------------------------

def test_benchmark_in_child_process(float_fc):
    result = benchmark(float_fc, "litert", threads=1, settings=QUICK, options={"xnnpack": False})
    lat = result.latency
    assert lat.n >= QUICK.min_runs and 0 < lat.min_ms <= lat.p50_ms <= lat.max_ms
    assert result.info["runtime"] == "litert" and result.info["xnnpack"] is False
    assert 0 < result.memory["baseline_bytes"] <= result.memory["peak_bytes"]


def test_benchmark_child_never_imports_torch(float_fc):
    request = {"path": str(float_fc), "runtime": "litert", "threads": 1, "options": {}, **QUICK.to_dict()}
    code = ("import json,sys; from edgekd.bench.child import measure; "
            f"measure(json.loads({json.dumps(json.dumps(request))})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bench_command(float_fc, tmp_path):
    target = tmp_path / "quick.yaml"
    target.write_text("name: quick\nthreads: 1\nruntimes: {litert: {xnnpack: true}}\n"
                      "benchmark: {warmup_runs: 2, min_runs: 20, min_seconds: 0.05}\n")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", str(float_fc), "--target", str(target), "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "runtime=litert" in result.output and "p50" in result.output
    saved = json.loads(out.read_text())
    assert saved["latency"]["n"] == len(saved["samples_ms"]) >= 20
    assert saved["info"]["xnnpack"] is True


def test_builtin_targets_run_litert():
    from edgekd.targets import load_target

    for name in ("x86-cpu", "x86-cpu-mt", "rpi5"):  # the API litert-benchmark times
        assert load_target(name).runtime_options("litert") == {"xnnpack": True, "api": "compiled_model"}


def test_bench_of_corrupt_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["bench", str(bad)], catch_exceptions=False)
    assert result.exit_code == 2  # a corrupt file is bad input, not a failed measurement
    assert "bad.tflite: LiteRT cannot load it" in result.output and "Traceback" not in result.output
