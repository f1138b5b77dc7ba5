"""Transformers in int8: token embeddings, attention with an additive padding mask, residual sums
before LayerNorm, per target (full-integer TFLite vs onnxruntime with float kernels)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekd.export import export
from edgekd.quant import QATConfig
from edgekd.quant.fake_quant import MASK_MARGIN, MASKED_BELOW, ActivationQuantizer, MaskQuantizer
from edgekd.quant.ptq import PTQConfig, post_training_quantize
from edgekd.quant.validate import validate_onnx
from edgekd.tasks.spec import TensorSpec

VOCAB, WIDTH, LENGTH = 40, 16, 8


class MaskedAttention(nn.Module):
    """Token ids and a padding mask in, one attention layer (the mask as transformers build it:
    0 where attended, the dtype's lowest value elsewhere), a feed-forward block with a residual
    sum and LayerNorm when ``norm``."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.norm = norm
        if norm:
            self.ffn_in, self.ffn_out = nn.Linear(WIDTH, 32), nn.Linear(32, WIDTH)
            self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)

    def forward(self, ids, mask):
        x = self.embed(ids)  # (N, L, D)
        additive = torch.where(mask[:, None, :].bool(), 0.0, torch.finfo(torch.float32).min)  # (N, 1, L)
        scores = self.q(x) @ self.k(x).transpose(1, 2) * WIDTH ** -0.5 + additive  # (N, L, L)
        h = self.o(torch.softmax(scores, dim=-1) @ self.v(x))
        if not self.norm:
            return h
        h = self.ln1(x + h)
        return self.ln2(h + self.ffn_out(torch.relu(self.ffn_in(h))))


def _batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()  # padding at the end
    return ids, mask


def dequantized_inputs(graph) -> dict[str, bool]:
    """For each MatMul/Gemm of an ONNX graph: whether both operands are int8 values read back
    (a DequantizeLinear, or a transpose of one: a Linear's weight, k^T)."""
    producer = {o: n for n in graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and (node.op_type == "DequantizeLinear"
                                     or node.op_type == "Transpose" and dequantized(node.input[0]))

    return {n.name: all(dequantized(i) for i in n.input[:2]) for n in graph.node if n.op_type in ("MatMul", "Gemm")}


SPECS = [TensorSpec("ids", "int64", ("batch", LENGTH), 0, VOCAB - 1),
         TensorSpec("mask", "int64", ("batch", LENGTH), 0, 1)]
OUT = [TensorSpec("output", "float32", ("batch", LENGTH, WIDTH))]


def _int8(model, target):
    torch.manual_seed(0)
    sim = QATConfig(target=target).resolved()
    return post_training_quantize(model.eval(), [_batches(16, 1)], PTQConfig(observer="minmax"), sim), sim


def test_masked_scores_quantizer_ignores_the_mask_and_keeps_a_margin():
    q = ActivationQuantizer()
    q.masked, q.observing = True, True
    q(torch.tensor([-3.0e38, -1.0e4, -2.0, 0.0, 5.0]))
    assert (float(q.min_val), float(q.max_val)) == (-2.0, 5.0)  # the two masked values are not scores
    q.observing = False
    lo = float((-128 - q.zero_point) * q.scale)
    assert lo == pytest.approx(5.0 - MASK_MARGIN, rel=1e-2)  # masked positions land >= 20 below the top
    assert MASKED_BELOW < -1e3


def test_full_integer_attention_masks_in_int8_and_padding_changes_nothing(tmp_path):
    torch.manual_seed(0)
    model = MaskedAttention()
    int8, sim = _int8(model, "arm-litert-xnnpack")
    assert any(isinstance(m, MaskQuantizer) for m in int8.modules())
    assert int8.get_submodule("embed_quant")  # the lookup's rows are int8
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "attn", SPECS, outputs=OUT)
    assert validate_onnx(onnx_art.path, sim.scheme).passed  # full integer, and the TFLite check passed

    from edgekd.export.tflite.parity import interpreter, run_tflite

    interp = interpreter(tflite_art.path)
    assert not [t["name"] for t in interp.get_tensor_details()
                if t["dtype"] == np.float32 and t["name"] not in ("output",)]  # no float inside
    ids, mask = _batches(4, 7)
    other = torch.where(mask.bool(), ids, (ids + 17) % VOCAB)  # other tokens where padded only
    with torch.no_grad():
        reference = model(ids, mask)
    runs = [np.concatenate([run_tflite(interp, [row[None].numpy(), m[None].numpy()])[0] for row, m in zip(i, mask)])
            for i in (ids, other)]  # (the file's batch is 1)
    attended = mask.bool().numpy()
    np.testing.assert_array_equal(runs[0][attended], runs[1][attended])  # padding gets weight 0 in int8
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(runs[0][attended]),
                                                   reference[mask.bool()], dim=-1)
    assert float(cosine.min()) > 0.97, cosine


def test_onnxruntime_target_keeps_the_residual_stream_float_and_probabilities_int8(tmp_path):
    torch.manual_seed(0)
    int8, sim = _int8(MaskedAttention(norm=True), "x86-onnxruntime")
    assert not any(isinstance(m, MaskQuantizer) for m in int8.modules())  # scores + mask: float add
    graph = int8.graph
    norms = [n for n in graph.nodes if n.op == "call_module" and n.target in ("ln1", "ln2")]
    for norm in norms:  # what LayerNorm reads (the residual sum, and the FFN output into it) stays float
        add = norm.args[0]
        assert not any(u.op == "call_module" and "quant" in u.target for u in add.users)
        assert all(not (a.op == "call_module" and "quant" in a.target) for a in add.all_input_nodes[1:])
    (onnx_art,) = export(int8, ["onnx"], tmp_path, "enc", SPECS, outputs=OUT)
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    # every MatMul, the probabilities @ values one included, reads dequantized int8 on both sides
    reads = dequantized_inputs(onnx.load(onnx_art.path).graph)
    assert len(reads) == 8 and all(reads.values()), reads


class FusedAttention(nn.Module):
    """timm's attention: ``F.scaled_dot_product_attention``, and optional forward() arguments
    the inputs do not fill (a trace must not make them graph inputs)."""

    def __init__(self, causal: bool = False):
        super().__init__()
        self.qkv, self.proj, self.causal = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH), causal

    def forward(self, x, attn_mask=None, is_causal=False):  # (N, L, D)
        n, length, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, 2, WIDTH // 2).permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                       is_causal=is_causal or self.causal)
        return self.proj(y.transpose(1, 2).reshape(n, length, WIDTH))


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
def test_fused_attention_is_spelled_out_exactly(mask):
    from edgekd.quant.attention import decompose_attention
    from edgekd.quant.trace import trace

    torch.manual_seed(0)
    x = torch.randn(2, LENGTH, WIDTH)
    given = {"bool": torch.rand(LENGTH, LENGTH) > 0.3, "float": torch.randn(LENGTH, LENGTH)}.get(mask)
    model = FusedAttention(causal=mask == "causal").eval()
    if given is not None:
        given[:, 0] = True if mask == "bool" else given[:, 0]  # every row attends somewhere
        model.register_buffer("mask", given)
        model.forward = lambda x, _f=model.forward: _f(x, attn_mask=model.mask)
    gm = trace(model, (x,))
    assert decompose_attention(gm) == 1
    assert not any(n.target is nn.functional.scaled_dot_product_attention for n in gm.graph.nodes)
    assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_fused_attention_quantizes_to_a_full_integer_tflite(tmp_path):
    torch.manual_seed(0)
    model = FusedAttention(causal=True).eval()
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [torch.randn(16, LENGTH, WIDTH)], PTQConfig(observer="minmax"), sim)
    assert any(isinstance(m, MaskQuantizer) for m in int8.modules())  # the causal mask, constant
    specs = [TensorSpec("input", "float32", ("batch", LENGTH, WIDTH))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "fused", specs, outputs=OUT)
    assert validate_onnx(onnx_art.path, sim.scheme).passed
    x = torch.randn(4, LENGTH, WIDTH)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(int8(x).flatten(), model(x).flatten(), 0)
    assert float(cosine) > 0.99


class LinearAttention(nn.Module):
    """EfficientViT's LiteMLA: ReLU kernels, values padded with 1.0, two products computed in
    float32 (``.float()`` under autocast), a division by the padded row's sum."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x):  # (N, L, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = torch.relu(q), torch.relu(k)
        v = nn.functional.pad(v, (0, 1), mode="constant", value=1.0)  # (N, L, D + 1)
        q, k, v = q.float(), k.float(), v.float()
        out = q @ (k.transpose(-1, -2) @ v)  # (N, L, D + 1)
        return self.proj(out[..., :-1] / (out[..., -1:] + 1e-4))


def test_linear_attention_products_run_int8_where_the_division_runs_float(tmp_path):
    torch.manual_seed(0)
    int8, sim = _int8_dense(LinearAttention(), "x86-onnxruntime")
    specs = [TensorSpec("input", "float32", ("batch", LENGTH, WIDTH))]
    onnx_art, tflite_art = export(int8, ["onnx", "tflite"], tmp_path, "lite", specs, outputs=OUT,
                                  options={"tflite": {"float_fallback": True}})  # (checked at export)
    graph = onnx.load(onnx_art.path).graph
    assert not [n.name for n in graph.node if n.op_type == "Cast"  # float -> float casts dropped
                and onnx.helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT]
    reads = dequantized_inputs(graph)
    assert len(reads) == 4 and all(reads.values()), reads
    assert validate_onnx(onnx_art.path, sim.scheme).passed


def _int8_dense(model, target):
    torch.manual_seed(0)
    sim = QATConfig(target=target).resolved()
    return post_training_quantize(model.eval(), [torch.randn(16, LENGTH, WIDTH)], PTQConfig(observer="minmax"), sim), sim
