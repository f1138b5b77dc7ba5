"""edgekd.models.mobilenet: MobileNetV2's published size, shapes, QAT through torch.fx, ONNX parity."""

from __future__ import annotations

import operator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import fx, nn

from edgekd.errors import ConfigError
from edgekd.export.onnx import export_onnx
from edgekd.models import count_parameters, create_model
from edgekd.models.mobilenet import MobileNetV2, make_divisible
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import QuantConv2d
from edgekd.quant.qat import activation_quantizers

RESIDUAL_BLOCKS = 10  # sum of (n - 1) over Table 2's rows: the repeats with stride 1, same channels
RELU6 = 35  # stem + 16 expand + 17 depthwise + last conv


@pytest.fixture(scope="module")
def model():
    """MobileNetV2 1.0 (1000 classes) with BatchNorm statistics from a few random batches, so that
    folding BN changes the weights and activations have the scale of a trained network."""
    torch.manual_seed(0)
    m = create_model("mobilenetv2", in_channels=3, num_classes=1000).train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(8, 3, 64, 64))
    return m.eval()


@pytest.fixture(scope="module")
def int8_model(model):
    q = prepare_qat(model, QATConfig())
    calibrate(q, [torch.rand(2, 3, 224, 224) for _ in range(3)])
    return freeze(q)


def test_parameter_count_is_torchvisions():
    assert count_parameters(create_model("mobilenetv2", in_channels=3, num_classes=1000)) == 3_504_872
    assert count_parameters(create_model("mobilenetv2-050", in_channels=3, num_classes=1000)) == 1_968_680


def test_make_divisible_by_hand():
    assert [make_divisible(v) for v in (3, 12, 16, 20, 27, 100)] == [8, 16, 16, 24, 32, 104]
    # 27 -> 24 would lose more than 10%, so it goes up to 32


def test_architecture_follows_table_2():
    m = MobileNetV2()
    blocks = list(m.features)[1:-1]
    assert len(blocks) == 17 and len(m.features) == 19
    outs = [b.conv[-1].num_features for b in blocks]  # (projection BN) channels of each block
    assert outs == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    strides = [next(c for c in b.modules() if isinstance(c, nn.Conv2d) and c.groups > 1).stride[0]
               for b in blocks]  # of the depthwise conv
    assert strides == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert sum(b.use_res_connect for b in blocks) == RESIDUAL_BLOCKS
    assert sum(isinstance(x, nn.ReLU6) for x in m.modules()) == RELU6
    half = MobileNetV2(width_mult=0.5)
    assert half.features[0][0].out_channels == 16 and half.last_channels == 1280  # last conv not shrunk
    with pytest.raises(ConfigError, match="width_mult must be > 0"):
        MobileNetV2(width_mult=0)


def test_state_dict_layout_is_torchvisions():
    shapes = {k: tuple(v.shape) for k, v in MobileNetV2().state_dict().items()}
    assert shapes["features.0.0.weight"] == (32, 3, 3, 3)  # stem conv; features.0.1 is its BN
    assert shapes["features.1.conv.0.0.weight"] == (32, 1, 3, 3)  # t = 1: depthwise first
    assert shapes["features.1.conv.1.weight"] == (16, 32, 1, 1)  # linear projection
    assert shapes["features.2.conv.0.0.weight"] == (96, 16, 1, 1)  # t = 6: expansion first
    assert shapes["features.17.conv.2.weight"] == (320, 960, 1, 1)
    assert shapes["features.18.0.weight"] == (1280, 320, 1, 1)
    assert shapes["classifier.1.weight"] == (1000, 1280)


@torch.no_grad()
def test_output_shapes():
    m = create_model("mobilenetv2-050", in_channels=1, num_classes=7).eval()
    x = torch.rand(2, 1, 64, 64)
    assert m.features(x).shape == (2, 1280, 2, 2)  # stride 32
    assert m(x).shape == (2, 7)
    m = create_model("mobilenetv2", in_channels=3, num_classes=5).eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_traced_by_torch_fx(model):
    gm = fx.symbolic_trace(model)
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == RESIDUAL_BLOCKS
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_qat_handles_depthwise_relu6_and_residuals(model, int8_model):
    assert not any(isinstance(m, nn.BatchNorm2d) for m in int8_model.modules())  # all folded
    convs = [m for m in int8_model.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(c, QuantConv2d) for c in convs) and len(convs) == 52
    assert sum(c.groups == c.in_channels == c.out_channels > 1 for c in convs) == 17  # depthwise
    quantizers = activation_quantizers(int8_model)
    assert sum(n.startswith("add") for n, _ in quantizers) == RESIDUAL_BLOCKS  # each sum is requantized
    relu6_outputs = [q for n, q in quantizers if n.startswith("features.")
                     and isinstance(int8_model.get_submodule(n.removesuffix("_quant")), nn.ReLU6)]
    assert len(relu6_outputs) == RELU6  # quantized after the ReLU6 (fused), not between conv and ReLU6
    assert all(float(q.min_val) >= 0 and float(q.max_val) <= 6 for q in relu6_outputs)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert int8_model(x).shape == (2, 1000)


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_float_onnx_matches_pytorch(model, tmp_path):
    path = export_onnx(model, tmp_path / "mobilenetv2.onnx", (3, 224, 224))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Clip") == RELU6 and ops.count("Add") == RESIDUAL_BLOCKS
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_int8_onnx_matches_pytorch(int8_model, tmp_path):
    path = export_onnx(int8_model, tmp_path / "mobilenetv2-int8.onnx", (3, 224, 224))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    from edgekd.quant.fake_quant import TiedQuantizer

    tied = sum(isinstance(m, TiedQuantizer) for m in int8_model.modules())  # pooled output, on its input's grid
    assert ops.count("Add") == RESIDUAL_BLOCKS and ops.count("QuantizeLinear") == len(
        activation_quantizers(int8_model)) + tied
    x = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = int8_model(x).numpy()
    out = run_onnx(path, x.numpy())
    step = dict(activation_quantizers(int8_model))["classifier.1_quant"].scale.item()  # logits' step
    assert np.abs(out - expected).max() <= 2 * step + 1e-6  # int8 kernels round differently: <= 2 steps
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 4 * step  # the top-1 cannot flip within the tolerance
    assert clear.sum() >= 4
    assert (out.argmax(1) == expected.argmax(1))[clear].all()
