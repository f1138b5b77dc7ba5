"""Contract test for every registered runtime."""

import numpy as np
import pytest

from edgekd.errors import ConfigError, ModelLoadError, RuntimeBackendError
from edgekd.runtime import RUNTIMES, list_runtimes, open_session, runtime_for

FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino"}


@pytest.mark.parametrize("runtime", list_runtimes())
def test_runtime_contract(runtime, exported):
    artifact = exported[("int8", FORMAT_OF[runtime])]
    session = open_session(artifact.path, runtime, threads=1)
    assert session.info["runtime"] == runtime
    assert session.info["threads"] == 1
    assert session.info["runtime_version"]
    assert session.input_shape[1:] == [1, 8, 8]
    out = session.run(np.zeros((3, 1, 8, 8), np.float32))
    assert out.shape == (3, 10) and out.dtype == np.float32


def test_openvino_also_runs_onnx(exported):
    session = open_session(exported[("float", "onnx")].path, "openvino")
    assert session.run(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_native_runtime_by_suffix():
    assert runtime_for("m.onnx") == "onnxruntime"
    assert runtime_for("m.xml") == "openvino"
    with pytest.raises(ModelLoadError, match="unknown artifact type '.tflite'"):
        runtime_for("m.tflite")


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
