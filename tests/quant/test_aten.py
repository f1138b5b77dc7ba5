"""The torch.export route: models no fx tracer can follow, lowered to the graph QAT reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.errors import QuantizationError
from edgekd.export import export
from edgekd.models import create_model
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import QuantConv2d, QuantLinear
from edgekd.quant.trace import ShapeTracer, trace
from edgekd.tasks.spec import TensorSpec


class Positions(nn.Module):
    """A real tensor's method called with a traced size (``torch.arange(8).expand(batch, -1)``):
    torch's argument parser refuses fx's proxies, in either fx tracer."""

    def __init__(self):
        super().__init__()
        self.fc, self.pos = nn.Linear(6, 4), nn.Embedding(8, 4)
        self.conv, self.bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):  # (N, 8, 6)
        positions = torch.arange(8).expand(x.shape[0], -1)  # (N, 8)
        h = torch.relu(self.fc(x) + self.pos(positions))  # (N, 8, 4)
        return torch.relu(self.bn(self.conv(h[:, None]))).flatten(1)  # (N, 2 * 8 * 4)


def _positions():
    torch.manual_seed(0)
    model = Positions()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_only_torch_export_traces_it_and_the_graph_keeps_layers_and_a_free_batch():
    model, x = _positions(), torch.randn(3, 8, 6)
    with pytest.raises(TypeError):
        ShapeTracer((x,)).trace(model)
    gm = trace(model, (x,))
    assert isinstance(gm.get_submodule("fc"), nn.Linear) and isinstance(gm.get_submodule("conv"), nn.Conv2d)
    assert isinstance(gm.get_submodule("pos"), nn.Embedding) and isinstance(gm.get_submodule("bn"), nn.BatchNorm2d)
    other = torch.randn(5, 8, 6)
    assert torch.allclose(gm(other), model(other), atol=1e-6)
    gm.train()
    gm.eval()  # (an ExportedProgram's own module refuses both)


def test_qat_through_torch_export_exports_checked_onnx_and_tflite(tmp_path):
    model, x = _positions(), torch.randn(16, 8, 6)
    int8 = prepare_qat(model, QATConfig(target="x86-onnxruntime"), example=x)
    assert isinstance(int8.get_submodule("fc"), QuantLinear) and isinstance(int8.get_submodule("conv"), QuantConv2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in int8.modules())  # folded into the conv
    calibrate(int8, [x])
    int8 = freeze(int8)
    held_out = torch.randn(8, 8, 6)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(int8(held_out).flatten(), model(held_out).flatten(), 0)
    assert float(cosine) > 0.99
    specs = [TensorSpec("input", "float32", ("batch", 8, 6))]
    outputs = [TensorSpec("output", "float32", ("batch", 64))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "positions", specs, outputs=outputs,
                                  options={"tflite": {"float_fallback": True}})  # (checked against onnxruntime)
    assert tflite_art.path.stat().st_size > 0


@pytest.mark.parametrize("arch", ["cnn-student-s", "mobilenetv2-050"])
def test_torch_export_route_quantizes_exactly_as_fx_does(arch):
    model = create_model(arch, num_classes=10, in_channels=3).eval()
    x, held_out = torch.rand(4, 3, 32, 32), torch.rand(3, 3, 32, 32)
    results = []
    for tracer in ("fx", "export"):
        int8 = prepare_qat(model, QATConfig(target="arm-litert-xnnpack", tracer=tracer), example=x)
        calibrate(int8, [x])
        results.append(freeze(int8)(held_out))
    assert torch.equal(results[0], results[1])


def test_the_fx_tracer_alone_names_why_it_failed():
    with pytest.raises(QuantizationError, match=r"Positions cannot be traced for QAT \(TypeError: expand"):
        prepare_qat(_positions(), QATConfig(tracer="fx"), example=torch.randn(2, 8, 6))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.fc(x)}


def test_an_output_the_export_route_cannot_carry_is_named():
    with pytest.raises(QuantizationError, match="returns dict"):
        prepare_qat(DictOut(), QATConfig(tracer="export"), example=torch.randn(2, 4))


def test_tracer_must_be_a_known_route():
    with pytest.raises(Exception, match="tracer"):
        QATConfig(tracer="jit")


def test_a_model_quantized_through_torch_export_survives_torch_save():
    import io

    model, x = _positions(), torch.randn(4, 8, 6)
    int8 = prepare_qat(model, QATConfig(), example=x)
    calibrate(int8, [x])
    int8 = freeze(int8)
    buffer = io.BytesIO()
    torch.save(int8, buffer)  # (the exporter's guard closure could not be pickled)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    other = torch.randn(5, 8, 6)
    assert torch.equal(loaded(other), int8(other))
