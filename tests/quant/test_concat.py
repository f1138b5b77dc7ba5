"""Concat inputs share the concat's scale during QAT where the target says so (TFLite spec)."""

import pytest
import torch
from torch import nn

from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import ActivationQuantizer, TiedQuantizer


class TwoBranches(nn.Module):
    """Two conv branches joined by torch.cat, then a conv; one branch is also used elsewhere."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):  # (N, 1, 8, 8) -> (N, 10)
        a, b = self.a(x), self.b(x) * 3.0  # b's range is 3x a's: one shared scale must cover both
        y = self.head(torch.cat([a, b], dim=1))  # (N, 4, 8, 8)
        return self.fc(torch.flatten(self.pool(torch.cat([y, a], dim=1)), 1))


def _quantized(target):
    torch.manual_seed(0)
    model = prepare_qat(TwoBranches().eval(), QATConfig(target=target))
    calibrate(model, [torch.rand(16, 1, 8, 8) for _ in range(4)])
    return freeze(model)


def test_concat_inputs_use_the_concat_scale_where_the_target_shares_it(tmp_path):
    from edgekd.export import export
    from edgekd.quant.validate import validate_onnx
    from edgekd.runtime import evaluate_session, open_session
    from edgekd.targets import load_target

    model = _quantized("arm-litert-xnnpack")
    tied = [m for m in model.modules() if isinstance(m, TiedQuantizer)]
    assert len(tied) >= 3  # a and b's outputs for the first cat; y and a for the second
    x = torch.rand(32, 1, 8, 8)
    [onnx_art, tfl_art] = export(model, ["onnx", "tflite"], tmp_path, "cat", (1, 8, 8))
    scheme = load_target("arm-litert-xnnpack").quantization
    result = validate_onnx(onnx_art.path, scheme)
    assert result.passed and result.checked["shared"] >= 2, result.summary()
    reference = model(x).argmax(1).numpy()
    for art in (onnx_art, tfl_art):
        got = evaluate_session(open_session(art.path), x.numpy(), reference, reference)
        assert got.agreement >= 0.95


def test_without_the_rule_each_input_keeps_its_own_scale(tmp_path):
    from edgekd.export import export
    from edgekd.quant.validate import validate_onnx
    from edgekd.targets import load_target

    model = _quantized("x86-cpu")  # concat not in shared_scales
    scales = {float(m.scale) for n, m in model.named_modules()
              if isinstance(m, ActivationQuantizer) and n.startswith(("a.", "b."))}
    assert len(scales) == 2  # a and b quantized on their own ranges
    [onnx_art] = export(model, ["onnx"], tmp_path, "cat", (1, 8, 8))
    result = validate_onnx(onnx_art.path, load_target("arm-litert-xnnpack").quantization)
    assert any("concat must keep one scale" in str(v) for v in result.violations), result.summary()


class JoinedHead(nn.Module):
    """A detection head that joins boxes in pixels and sigmoid scores into its one output, as
    YOLO's Detect does: (N, 4 + 3, points)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.box, self.cls = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x):  # (N, 1, 8, 8) -> (N, 7, 64)
        f = self.body(x)
        boxes = self.box(f).flatten(2) * 100.0  # pixels: a range of hundreds
        scores = torch.sigmoid(self.cls(f).flatten(2))  # [0, 1]
        return torch.cat([boxes, scores], 1)


def test_a_join_only_the_outputs_read_keeps_each_part_on_its_own_grid(tmp_path):
    """One int8 scale for boxes of hundreds of pixels would round every score to 0 (YOLO's head
    on a full-integer target scored mAP 0): the join stays float, each part quantized on its own."""
    from edgekd.errors import ExportError
    from edgekd.export import export
    from edgekd.export.tflite import onnx_to_tflite
    from edgekd.quant.qat import output_joins
    from edgekd.quant.validate import validate_onnx
    from edgekd.runtime import open_session

    torch.manual_seed(0)
    float_model = JoinedHead().eval()
    config = QATConfig(target="arm-litert-xnnpack")
    model = prepare_qat(float_model, config)
    assert len(output_joins(model)) == 1
    batches = [torch.rand(16, 1, 8, 8) for _ in range(4)]
    calibrate(model, batches)
    model = freeze(model)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        want, got = float_model(x), model(x)
    assert (got[:, 4:] - want[:, 4:]).abs().max() <= 2 / 256  # scores on the sigmoid's 1/256 grid
    [onnx_file] = export(model, ["onnx"], tmp_path, "head", (1, 8, 8))
    assert validate_onnx(onnx_file.path, config.resolved().scheme).passed
    tflite = onnx_to_tflite(onnx_file.path, tmp_path / "head.tflite", check_samples=[[s[None].numpy()] for s in x])
    session = open_session(tflite, "litert")
    runtime = session.run(x[:1].numpy())
    assert abs(runtime[0, 4:] - got[0, 4:].numpy()).max() <= 1 / 256 + 1e-6
    with pytest.raises(ExportError, match="output 'logits' is computed in float .* export it with io='float'"):
        onnx_to_tflite(onnx_file.path, tmp_path / "head8.tflite", io="int8", check=False)


def test_a_concat_another_op_also_reads_is_not_output_tail(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekd.export.tflite.convert import output_tail
    from edgekd.export.tflite.graph import load_graph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    joined = helper.make_tensor_value_info("joined", TensorProto.FLOAT, [1, 4])
    relu = helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 4])
    flat = helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["joined"], axis=1, name="join"),
                               helper.make_node("Relu", ["joined"], ["relu"], name="act"),
                               helper.make_node("Reshape", ["relu", "shape"], ["flat"], name="tail")],
                              "g", [x], [joined, relu, flat],
                              [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert output_tail(load_graph(path)) == {"tail"}  # the join is an output, but the Relu reads it too
