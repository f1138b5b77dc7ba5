"""LayerNorm on integers for full-integer TFLite: MEAN, SUB, L2_NORMALIZATION and a per-channel
affine (``edgekd.quant.layer_norm``), simulated in QAT and written as int8 kernels."""

from __future__ import annotations

import operator

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekd.export import export
from edgekd.quant import QATConfig
from edgekd.quant.fake_quant import ActivationQuantizer
from edgekd.quant.layer_norm import channel_affine, decompose_layer_norm, l2_normalize
from edgekd.quant.ptq import PTQConfig, post_training_quantize
from edgekd.quant.trace import trace
from edgekd.quant.validate import validate_onnx
from edgekd.tasks.spec import TensorSpec

TOKENS, WIDTH = 6, 24


class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm: a subclass torch.fx traces into (``F.layer_norm``)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Tokens(nn.Module):
    """A pre-LN transformer block's shape: Linear, LayerNorm (module), residual, LayerNorm without affine."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.ln = nn.LayerNorm(WIDTH)
        self.plain = nn.LayerNorm(WIDTH, elementwise_affine=False)
        with torch.no_grad():  # gamma of very different sizes per channel, beta far from 0
            self.ln.weight.copy_(torch.linspace(0.05, 3.0, WIDTH))
            self.ln.bias.copy_(torch.linspace(-1.0, 2.0, WIDTH))

    def forward(self, x):
        h = self.fc1(x)
        h = h + self.fc2(torch.relu(self.ln(h)))
        return self.plain(h)


class Channels(nn.Module):
    """ConvNeXt's shape: conv, channels-first LayerNorm (a function after a permute), conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.norm = LayerNorm2d(16)
        with torch.no_grad():
            self.norm.weight.uniform_(0.2, 2.0)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)))


def test_the_decomposition_is_layer_norm():
    torch.manual_seed(0)
    for model, x in ((Tokens().eval(), torch.randn(4, TOKENS, WIDTH) * 3 + 1),
                     (Channels().eval(), torch.randn(2, 3, 5, 5))):
        gm = trace(model, (x,))
        assert decompose_layer_norm(gm) == (2 if isinstance(model, Tokens) else 1)
        assert not any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.LayerNorm)
                       or n.target is nn.functional.layer_norm for n in gm.graph.nodes)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), atol=1e-4, rtol=1e-4)
        assert set(dict(gm.named_parameters())) == set(dict(model.named_parameters()))  # same names


def test_a_layer_norm_over_several_axes_is_left_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.LayerNorm([4, 3, 3])).eval()
    gm = trace(model, (torch.randn(1, 1, 3, 3),))
    assert decompose_layer_norm(gm) == 0


def test_l2_normalize_maps_a_zero_row_to_zeros_and_has_a_gradient():
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], requires_grad=True)
    y = l2_normalize(x)
    torch.testing.assert_close(y.detach(), torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]]))
    y[1, 0].backward()
    assert torch.isfinite(x.grad).all() and float(x.grad[1].abs().sum()) > 0
    assert torch.equal(channel_affine(torch.ones(2, 3), torch.tensor([1.0, 2, 3]), None), torch.tensor([[1.0, 2, 3]] * 2))


def _quantizers_after(int8, function) -> list[ActivationQuantizer]:
    nodes = [n for n in int8.graph.nodes if n.op == "call_function" and n.target is function]
    return [int8.get_submodule(u.target) for n in nodes for u in n.users if u.op == "call_module"]


def test_full_integer_targets_quantize_every_step_and_others_keep_layer_norm():
    torch.manual_seed(0)
    model, batch = Tokens().eval(), [torch.randn(32, TOKENS, WIDTH)]
    arm = post_training_quantize(model, batch, PTQConfig(observer="minmax"),
                                 QATConfig(target="arm-litert-xnnpack").resolved())
    normalized = _quantizers_after(arm, l2_normalize)
    assert len(normalized) == 2 and all(q.fixed == (0.0078125, 0) for q in normalized)  # L2_NORMALIZATION's scale
    affine = [n for n in arm.graph.nodes if n.target is channel_affine]
    after = [next(iter(n.users)) for n in affine]
    assert len(affine) == 2 and after[0].target is torch.relu and after[1].target == "channel_affine_1_quant"
    quantizer = next(iter(after[0].users))  # one rounding for gamma, beta (and the ReLU fused in)
    assert isinstance(arm.get_submodule(quantizer.target), ActivationQuantizer)
    x86 = post_training_quantize(model, batch, PTQConfig(observer="minmax"),
                                 QATConfig(target="x86-onnxruntime").resolved())
    assert sum(isinstance(m, nn.LayerNorm) for m in x86.modules()) == 2
    assert not _quantizers_after(x86, l2_normalize)
    x = torch.randn(64, TOKENS, WIDTH)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(arm(x).flatten(1), model(x).flatten(1))
    assert float(cosine.min()) > 0.99, cosine


@pytest.mark.parametrize("name", ["tokens", "channels"])
def test_int8_layer_norm_exports_to_a_full_integer_tflite_that_matches_onnxruntime(tmp_path, name):
    from edgekd.export.tflite.convert import convert
    from edgekd.export.tflite.parity import interpreter, run_tflite
    import onnxruntime as ort

    torch.manual_seed(0)
    if name == "tokens":
        model, shape = Tokens().eval(), (TOKENS, WIDTH)
        make = lambda n, seed: torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2  # noqa: E731
    else:
        model, shape = Channels().eval(), (3, 8, 8)
        make = lambda n, seed: torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [make(64, 1)], PTQConfig(observer="minmax"), sim)
    specs = [TensorSpec("input", "float32", ("batch", *shape))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, name, specs)  # (the export check passed)
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    graph = onnx.load(onnx_art.path).graph
    assert "LayerNormalization" not in {n.op_type for n in graph.node}
    assert "LpNormalization" in {n.op_type for n in graph.node}

    ops = convert(onnx_art.path).ops
    assert {"L2_NORMALIZATION", "MEAN", "SUB", "DEPTHWISE_CONV_2D"} <= set(ops) and "RSQRT" not in ops
    assert ops.count("DEQUANTIZE") == 1  # the float output only: no float island inside
    interp = interpreter(tflite_art.path)
    x = make(16, 2)
    session = ort.InferenceSession(str(onnx_art.path))
    got = np.concatenate([run_tflite(interp, [row[None].numpy()])[0] for row in x])
    reference = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        simulated = int8(x).numpy()
    step = float(np.abs(reference).max()) / 127
    assert np.mean(np.abs(got - reference) <= 2 * step) >= 0.99  # the int8 kernels compute what ORT's QDQ graph says
    cosine = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(got, simulated) > 0.999 and cosine(reference, simulated) > 0.999


class MeanPooled(nn.Module):
    """A sentence-transformers head: token embeddings, mean pooling over the attention mask,
    L2 normalization."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(30, WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, ids, mask):
        hidden = self.fc(self.embed(ids))
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def _tokens(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, TOKENS + 1, (n, 1), generator=g)
    return torch.randint(0, 30, (n, TOKENS), generator=g), (torch.arange(TOKENS)[None] < lengths).long()


def test_normalize_becomes_l2_normalize_and_the_positive_row_scale_before_it_goes():
    from edgekd.quant.layer_norm import rewrite_normalize

    model = MeanPooled().eval()
    example = _tokens(2, 0)
    gm = trace(model, example)
    assert rewrite_normalize(gm, example) == 1
    targets = {n.target for n in gm.graph.nodes}
    assert l2_normalize in targets and nn.functional.normalize not in targets
    assert operator.truediv not in targets  # normalize(sum / count) = normalize(sum)
    ids, mask = _tokens(16, 1)
    with torch.no_grad():
        torch.testing.assert_close(gm(ids, mask), model(ids, mask), atol=1e-5, rtol=1e-5)


def test_a_division_normalize_does_not_undo_is_kept():
    """Dividing by a per-channel value (not one per row), or by one not known positive, changes
    the direction: it must stay."""
    from edgekd.quant.layer_norm import rewrite_normalize

    class Scaled(nn.Module):
        def forward(self, x, s):
            return nn.functional.normalize(x / s, dim=-1)

    x, s = torch.randn(4, 8), torch.rand(1, 8) + 0.5
    gm = trace(Scaled(), (x, s))
    assert rewrite_normalize(gm, (x, s)) == 1 and operator.truediv in {n.target for n in gm.graph.nodes}
    torch.testing.assert_close(gm(x, s), Scaled()(x, s))


def test_a_mean_pooled_embedding_goes_full_integer_to_tflite(tmp_path):
    from edgekd.export.tflite.convert import convert
    from edgekd.export.tflite.parity import interpreter, run_tflite

    torch.manual_seed(0)
    model = MeanPooled().eval()
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [_tokens(32, 2)], PTQConfig(observer="minmax"), sim)
    specs = [TensorSpec("ids", "int64", ("batch", TOKENS), 0, 29), TensorSpec("mask", "int64", ("batch", TOKENS), 0, 1)]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "pooled", specs,
                                  outputs=[TensorSpec("output", "float32", ("batch", WIDTH))])
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    ops = convert(onnx_art.path).ops
    assert {"CAST", "MUL", "SUM", "L2_NORMALIZATION"} <= set(ops) and "DIV" not in ops
    assert ops.count("DEQUANTIZE") == 1  # the embedding out: the mask is cast, then quantized
    ids, mask = _tokens(16, 3)
    interp = interpreter(tflite_art.path)
    got = np.concatenate([run_tflite(interp, [i[None].numpy(), m[None].numpy()])[0] for i, m in zip(ids, mask)])
    with torch.no_grad():
        simulated, reference = int8(ids, mask), model(ids, mask)
    assert float(nn.functional.cosine_similarity(torch.from_numpy(got), simulated).min()) > 0.999
    to_float = nn.functional.cosine_similarity(simulated, reference)  # (a masked sum's range grows with length)
    assert float(to_float.median()) > 0.999 and float(to_float.min()) > 0.98, to_float
