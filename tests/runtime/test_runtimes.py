"""Contract test for every registered runtime."""

import numpy as np
import pytest

from edgekd.errors import ConfigError, ModelLoadError, RuntimeBackendError
from edgekd.runtime import RUNTIMES, list_runtimes, open_session, runtime_for

FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite"}


def int8_artifact(runtime, exported, tmp_path):
    """The exported int8 student in the runtime's format; for LiteRT, until a TFLite exporter is
    registered, a stand-in int8 classifier with the same interface ((1, 1, 8, 8) -> 10 logits)."""
    key = ("int8", FORMAT_OF[runtime])
    if key in exported:
        return exported[key].path
    if runtime != "litert":
        pytest.fail(f"no exported {key} artifact")
    pytest.importorskip("ai_edge_litert")
    from tests.runtime import tflite_models

    path = tmp_path / "student-int8.tflite"
    tflite_models.random_int8_classifier(path, (1, 1, 8, 8), 10)
    return path


@pytest.mark.parametrize("runtime", list_runtimes())
def test_runtime_contract(runtime, exported, tmp_path):
    session = open_session(int8_artifact(runtime, exported, tmp_path), runtime, threads=1)
    assert session.info["runtime"] == runtime
    assert session.info["threads"] == 1
    assert session.info["runtime_version"]
    assert session.input_shape[1:] == [1, 8, 8]
    batch = session.input_shape[0] or 3  # a fixed batch (TFLite can have one) is the one to run
    out = session.run(np.zeros((batch, 1, 8, 8), np.float32))
    assert out.shape == (batch, 10) and out.dtype == np.float32
    assert session.info["inference_clock"]


SESSIONS = [("onnxruntime", {}), ("openvino", {}), ("litert", {"api": "interpreter"}),
            ("litert", {"api": "compiled_model"})]


@pytest.mark.parametrize("runtime, options", SESSIONS, ids=lambda v: v if isinstance(v, str) else v.get("api", ""))
def test_feed_infer_fetch_is_run(runtime, options, exported, digits):
    """The benchmark times infer() apart from feed() and fetch(): in that order they are run(x),
    and infer() runs on what was fed last (returning None or its own native time in ms)."""
    session = open_session(exported[("int8", FORMAT_OF[runtime])].path, runtime, options=options)
    x = digits.x_test[:8].numpy()
    expected = np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])
    for i in range(len(x)):
        session.feed(x[i:i + 1])
        took = session.infer()
        assert took is None or 0 < took < 1e3
        assert np.array_equal(session.fetch(), expected[i:i + 1])
        session.infer()  # again on the same input: the same answer, nothing consumed
        assert np.array_equal(session.fetch(), expected[i:i + 1])
    assert len({row.tobytes() for row in expected}) > 4


def test_openvino_also_runs_onnx(exported):
    session = open_session(exported[("float", "onnx")].path, "openvino")
    assert session.run(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_native_runtime_by_suffix():
    assert runtime_for("m.onnx") == "onnxruntime"
    assert runtime_for("m.xml") == "openvino"
    assert runtime_for("m.tflite") == "litert"
    with pytest.raises(ModelLoadError, match=r"unknown artifact type '.pb'; expected one of "
                                             r"\.tflite, \.onnx, \.xml"):
        runtime_for("m.pb")


def test_missing_artifact(tmp_path):
    with pytest.raises(ModelLoadError, match="artifact not found"):
        open_session(tmp_path / "none.onnx")


def test_unknown_runtime_suggests(exported):
    with pytest.raises(ConfigError, match="did you mean 'openvino'"):
        open_session(exported[("int8", "onnx")].path, "openvin")


def test_runtime_refuses_foreign_file(exported):
    with pytest.raises(ConfigError, match="cannot run .xml"):
        open_session(exported[("int8", "openvino")].path, "onnxruntime")


def test_missing_provider_is_an_error_not_a_fallback(exported):
    with pytest.raises(RuntimeBackendError, match="no provider QNNExecutionProvider"):
        open_session(exported[("int8", "onnx")].path, "onnxruntime",
                     options={"providers": ["QNNExecutionProvider"]})


def test_missing_openvino_device_is_an_error(exported):
    with pytest.raises(RuntimeBackendError, match="device 'NPU' is not available"):
        open_session(exported[("int8", "openvino")].path, "openvino", options={"device": "NPU"})


def test_every_runtime_is_registered_lazily():
    assert set(list_runtimes()) == set(FORMAT_OF)
    assert all(RUNTIMES.get(n).module.startswith("edgekd.runtime.") for n in list_runtimes())


def test_litert_gpu_request_is_refused_not_run_on_the_cpu(exported):
    from edgekd.errors import RuntimeBackendError
    from edgekd.runtime import open_session

    path = exported[("int8", "tflite")].path
    with pytest.raises(RuntimeBackendError, match="LiteRT GPU accelerator is not available to the Interpreter"):
        open_session(path, "litert", options={"accelerator": "gpu"})
    # the CompiledModel asks LiteRT for the GPU alone: this machine has none, so it fails to load
    for accelerator in ("gpu", "npu"):
        with pytest.raises(RuntimeBackendError, match=f"LiteRT {accelerator.upper()} accelerator is not "
                                                      f"available here .*never replaced by the CPU"):
            open_session(path, "litert", options={"accelerator": accelerator, "api": "compiled_model"})


@pytest.mark.parametrize("fmt, runtime", [("onnx", "onnxruntime"), ("openvino", "openvino"), ("tflite", "litert")])
def test_one_sample_at_a_time_equals_the_batched_run(exported, digits, fmt, runtime):
    """Sessions reuse their input/output buffers between calls: every call must still get its own result."""
    import numpy as np

    from edgekd.runtime import open_session

    session = open_session(exported[("int8", fmt)].path, runtime)
    x = digits.x_test[:40].numpy()
    one_by_one = np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])
    batched = session.run(x) if session.input_shape[0] is None else one_by_one
    again = np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])
    assert np.array_equal(one_by_one, again) and np.allclose(one_by_one, batched, atol=1e-5)
    assert len({row.tobytes() for row in one_by_one}) > 30  # not one cached answer
