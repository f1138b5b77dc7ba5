"""Layers a model zoo defines itself (here: the shapes of timm's) quantize like torch.nn's own.

The classes below are defined outside ``torch.nn``, so torch.fx traces into them, as it does into
timm's ``BatchNormAct2d`` (a BatchNorm2d subclass that applies its activation), ``Linear`` and
``Conv2dSame``; before ``edgekd.quant.normalize`` none of their BatchNorms was folded and the head
stayed float.
"""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekd.export import export
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import QuantConv2d, QuantLinear
from edgekd.quant.fold import fold_batchnorm
from edgekd.quant.normalize import normalize
from edgekd.quant.ptq import PTQConfig, post_training_quantize
from edgekd.quant.validate import validate_onnx
from edgekd.tasks.spec import TensorSpec


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's shape: BatchNorm2d subclass with drop + act submodules, ``F.batch_norm`` in forward."""

    def __init__(self, channels, act=nn.ReLU):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act()

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class Linear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(4, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class ZooNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8, nn.SiLU)
        self.aa = nn.Identity()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = BatchNormAct2d(8, nn.Hardswish)
        self.se = SqueezeExcite(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = Linear(8, 5)

    def forward(self, x):
        x = self.aa(self.bn1(self.stem(x)))
        x = x + self.se(self.bn2(self.conv(x)))  # the last residual add feeds the pool, not a conv
        return self.head(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def zoonet():
    torch.manual_seed(0)
    model = ZooNet().train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, 16, 16))  # BatchNorm statistics of real activations
    return model.eval()


def test_batchnorm_subclasses_fold_and_the_head_is_quantized(zoonet):
    gm = prepare_qat(zoonet, QATConfig())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    assert "batch_norm" not in gm.code and "_assert" not in gm.code
    assert isinstance(gm.get_submodule("stem"), QuantConv2d) and isinstance(gm.get_submodule("head"), QuantLinear)
    # the activation a BatchNormAct2d held stays at its own path (hooks by path keep working)
    assert isinstance(gm.get_submodule("bn2.act"), nn.Hardswish)


def test_normalize_and_fold_change_nothing_in_float(zoonet):
    gm = fx.symbolic_trace(zoonet)
    assert "batch_norm" in gm.code  # traced into, as fx does with timm's layers
    assert sorted(normalize(gm, zoonet)) == ["bn1", "bn2", "head"]
    assert sorted(fold_batchnorm(gm)) == ["bn1", "bn2"]
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(gm(x), zoonet(x), atol=1e-5)


@pytest.mark.parametrize("target", ["x86-onnxruntime", "arm-litert-xnnpack"])
def test_every_op_between_quantized_layers_is_integer(zoonet, target, tmp_path):
    """SiLU (split into sigmoid and mul), Hardswish, the SE gate, the last residual add: each
    output has a QuantizeLinear, so the int8 TFLite file converts and no float op is left."""
    sim = QATConfig(target=target).resolved()
    int8 = post_training_quantize(zoonet, [torch.rand(8, 3, 16, 16) for _ in range(2)], PTQConfig(), sim)
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "zoo", (3, 16, 16))
    graph = onnx.load(onnx_art.path).graph
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops and "Gemm" in ops
    readers = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n.op_type)
    computed = [n for n in graph.node if n.op_type in ("Sigmoid", "Mul", "Add", "HardSwish", "ReduceMean")]
    assert computed and all("QuantizeLinear" in readers[n.output[0]] for n in computed)
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    assert tflite_art.path.stat().st_size > 0  # the export checked parity with onnxruntime


def test_fixed_output_quantizers_calibrate_with_a_sampling_observer(zoonet):
    """LiteRT fixes the sigmoid's output scale (1/256): a sampling observer (mse, percentile)
    sees nothing there, which used to crash calibration (torch.cat of no samples)."""
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    for observer in ("mse", "percentile"):
        int8 = post_training_quantize(zoonet, [torch.rand(4, 3, 16, 16)], PTQConfig(observer=observer), sim)
        gate = [m for n, m in int8.named_modules() if getattr(m, "fixed", None) is not None]
        assert gate and all(np.isclose(float(m.scale), 1 / 256) for m in gate)


def test_qat_trains_through_the_normalized_layers(zoonet):
    gm = prepare_qat(zoonet, QATConfig())
    calibrate(gm, [torch.rand(8, 3, 16, 16)])
    before = gm.get_submodule("head").weight.detach().clone()
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    gm.train()
    loss = gm(torch.rand(8, 3, 16, 16)).square().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, gm.get_submodule("head").weight)
    freeze(gm)


class DeadLayer(nn.Module):
    """conv2's output is constant zero: calibration sees the range [0, 0]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_a_dead_layer_gets_an_output_scale_int8_kernels_can_requantize_to(tmp_path):
    """Scale 1e-8 for a constant output made input x weight / output scale ~ 1e5: XNNPACK refuses
    such a layer and LiteRT 2.x then aborts the whole process. Calibration widens the range."""
    from edgekd.errors import ExportError
    from edgekd.quant.qat import MAX_REQUANTIZATION, keep_requantizable

    torch.manual_seed(0)
    model = DeadLayer().eval()
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [torch.rand(4, 3, 8, 8)], PTQConfig(observer="minmax"), sim)
    in_q, out_q = int8.get_submodule("relu_quant"), int8.get_submodule("conv2_quant")
    weight_scale = float(int8.get_submodule("conv2").weight_quant.scale.max())
    assert float(in_q.scale) * weight_scale / float(out_q.scale) < MAX_REQUANTIZATION
    assert keep_requantizable(int8) == 0  # already done by calibrate
    [tflite_file] = export(int8, ["tflite"], tmp_path, "dead", (3, 8, 8))
    assert tflite_file.path.stat().st_size > 0
    # the writer refuses such a scale itself, naming the node, rather than write a file that crashes
    int8.get_submodule("head_quant").scale.fill_(1e-8)
    with pytest.raises(ExportError, match=r"Gemm node .*int8 output scale 1e-08 is too small for its inputs"):
        export(int8, ["tflite"], tmp_path, "dead-small", (3, 8, 8))


class TiedHead(nn.Module):
    """An output layer sharing the embedding's weight (F.linear on a weight an Embedding owns)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, ids):
        return F.linear(self.proj(self.embed(ids)), self.embed.weight)


def test_a_weight_another_module_owns_is_not_remade_into_a_layer():
    model = TiedHead().eval()
    gm = fx.symbolic_trace(model)
    assert normalize(gm, model) == []
    assert isinstance(gm.get_submodule("embed"), nn.Embedding)
    ids = torch.randint(0, 16, (2, 5))
    with torch.no_grad():
        assert torch.equal(gm(ids), model(ids))


class Attention(nn.Module):
    """q @ k^T -> softmax -> @ v: two activations multiplied (BATCH_MATMUL), transposes between."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):  # (N, L, 8)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj(attn @ v)


def test_attention_products_are_quantized_for_a_full_integer_tflite(tmp_path):
    from edgekd.tasks.spec import TensorSpec

    torch.manual_seed(0)
    model = Attention().eval()
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [torch.randn(4, 6, 8)], PTQConfig(observer="minmax"), sim)
    specs = [TensorSpec("input", "float32", ("batch", 6, 8))]
    outputs = [TensorSpec("output", "float32", ("batch", 6, 8))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "attn", specs, outputs=outputs)
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    assert tflite_art.path.stat().st_size > 0


class PoolHead(nn.Module):
    """SqueezeNet's end: conv, ReLU, average pool, flatten, and that is the output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.conv(x))), 1)


def test_an_output_on_a_shared_pools_grid_is_quantized(tmp_path):
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(PoolHead().eval(), [torch.rand(4, 3, 8, 8)], PTQConfig(observer="minmax"), sim)
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "pool", (3, 8, 8))
    assert validate_onnx(onnx_art.path, sim.scheme).passed and tflite_art.path.stat().st_size > 0


class LinearNorm(nn.Module):
    """LeViT's ``LinearNorm``: a Linear, BatchNorm1d over the flattened tokens, ``reshape_as``."""

    def __init__(self, i, o):
        super().__init__()
        self.linear, self.bn = nn.Linear(i, o), nn.BatchNorm1d(o)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class LeViTLike(nn.Module):
    """Tokens through LinearNorm into attention, and EfficientViT's head: average pool, flatten,
    BatchNorm1d, Linear."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = LinearNorm(8, 24), LinearNorm(8, 8)
        self.conv = nn.Conv2d(8, 8, 1)
        self.pool, self.norm, self.head = nn.AdaptiveAvgPool2d(1), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):  # (N, 16, 8)
        q, k, v = self.qkv(x).split(8, dim=-1)
        x = self.proj(torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v)
        y = self.conv(x.transpose(1, 2).reshape(-1, 8, 4, 4))
        return self.head(self.norm(torch.flatten(self.pool(y), 1)))


@pytest.mark.parametrize("target", ["x86-onnxruntime", "arm-litert-xnnpack"])
def test_levit_and_efficientvit_shapes_are_integer_throughout(target, tmp_path):
    """reshape_as keeps the grid (the attention products read int8), and a shared average pool
    read by a BatchNorm1d (not a layer) is re-quantized on its input's grid for TFLite."""
    torch.manual_seed(0)
    model = LeViTLike().eval()
    for bn in (model.qkv.bn, model.proj.bn, model.norm):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    sim = QATConfig(target=target).resolved()
    int8 = post_training_quantize(model, [torch.randn(8, 16, 8)], PTQConfig(observer="minmax"), sim)
    specs = [TensorSpec("input", "float32", ("batch", 16, 8))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "levit", specs,
                                  options={"tflite": {"float_fallback": not sim.scheme.full_integer}})
    from tests.quant.test_attention_masks import dequantized_inputs

    reads = dequantized_inputs(onnx.load(onnx_art.path).graph)
    assert len(reads) == 5 and all(reads.values()), reads
    assert validate_onnx(onnx_art.path, sim.scheme).passed and tflite_art.path.stat().st_size > 0
