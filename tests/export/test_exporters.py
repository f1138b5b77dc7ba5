"""Every registered exporter: the file runs in its runtime and matches PyTorch."""

import numpy as np
import pytest
import torch

from edgekd.export import list_exporters
from edgekd.runtime import evaluate_session, open_session


@pytest.mark.parametrize("fmt", list_exporters())
def test_float_export_matches_pytorch(fmt, exported, digits, float_student):
    artifact = exported[("float", fmt)]
    session = open_session(artifact.path, artifact.runtime)
    x = digits.x_test[:64]
    expected = float_student(x).detach().numpy()
    got = session.run(x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("fmt", list_exporters())
def test_int8_export_agrees_with_int8_simulation(fmt, exported, digits, int8_student):
    artifact = exported[("int8", fmt)]
    reference = int8_student(digits.x_test).argmax(1).numpy()
    result = evaluate_session(open_session(artifact.path, artifact.runtime), digits.x_test.numpy(),
                              digits.y_test.numpy(), reference)
    assert result.agreement >= 0.99
    sim_acc = float((reference == digits.y_test.numpy()).mean())
    assert abs(result.accuracy - sim_acc) <= 0.01


@pytest.mark.parametrize("fmt", list_exporters())
def test_int8_artifact_is_smaller_than_float(fmt, exported):
    assert exported[("int8", fmt)].size_bytes < exported[("float", fmt)].size_bytes


def test_unknown_format_lists_valid_ones(tmp_path, float_student):
    from edgekd.errors import ConfigError
    from edgekd.export import export

    with pytest.raises(ConfigError, match=r"unknown export format 'tflit'.*valid export formats: onnx, openvino, tflite"):
        export(float_student, ["tflit"], tmp_path, "m", (1, 8, 8))
    assert list(tmp_path.iterdir()) == []  # nothing written before the name was checked


def test_export_failure_names_the_operator(tmp_path):
    from edgekd.errors import ExportError
    from edgekd.export import export

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).abs()  # no ONNX symbolic for fft_fft2 in the TorchScript exporter

    with pytest.raises(ExportError, match="fft"):
        export(Unexportable(), ["onnx"], tmp_path, "bad", (1, 8, 8))
    assert not (tmp_path / "bad.onnx").exists()
