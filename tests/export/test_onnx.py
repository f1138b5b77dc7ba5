import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgekd.errors import ModelLoadError
from edgekd.export import export
from edgekd.export.onnx import check_onnx_file


def _graph(path):
    return onnx.load(str(path)).graph


def test_qdq_scales_are_constants(exported):
    graph = _graph(exported[("int8", "onnx")].path)
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 10
    for node in qdq:
        assert node.input[1] in constants, f"{node.name}: scale {node.input[1]} is computed at run time"
        assert node.input[2] in constants, f"{node.name}: zero point {node.input[2]} is computed at run time"


def test_weights_are_stored_as_int8(exported):
    graph = _graph(exported[("int8", "onnx")].path)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    producers = {o: n for n in graph.node for o in n.output}
    for name in conv_weights:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        weight = inits[dq.input[0]]
        assert weight.dtype == np.int8
        assert np.abs(weight.astype(int)).max() <= 127
    float_weights = [a for a in inits.values() if a.dtype == np.float32 and a.size > 64]
    assert not float_weights, "large float initializers left in the int8 model"


def test_onnxruntime_runs_int8_kernels(exported, tmp_path):
    optimized = tmp_path / "optimized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(exported[("int8", "onnx")].path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in _graph(optimized).node]
    assert ops.count("QLinearConv") == 3, ops
    assert "Conv" not in ops
    assert any(op in ops for op in ("QGemm", "QLinearMatMul", "MatMulInteger")), ops


def test_float_export_has_no_quantization(exported):
    ops = {n.op_type for n in _graph(exported[("float", "onnx")].path).node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}


def test_batch_axis_is_dynamic(exported):
    from edgekd.runtime import open_session

    session = open_session(exported[("int8", "onnx")].path)
    assert session.input_shape[0] is None
    assert session.run(np.zeros((5, 1, 8, 8), np.float32)).shape == (5, 10)


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", None])
def test_corrupt_onnx_names_the_path(tmp_path, exported, content):
    path = tmp_path / "broken.onnx"
    good = exported[("int8", "onnx")].path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if content is None else content)
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        check_onnx_file(path)


class ChannelShuffle(torch.nn.Module):
    """ShuffleNetV2's unit: conv, channel shuffle (view, transpose, view), chunk, conv on one half."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch = torch.nn.Conv2d(4, 4, 1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        x1, x2 = x.chunk(2, dim=1)
        return self.head(torch.cat((x1, torch.relu(self.branch(x2))), dim=1))


def test_every_int8_conv_reads_a_dequantize_through_reshapes_and_splits(tmp_path):
    """onnxruntime fuses a conv into QLinearConv only when a DequantizeLinear feeds it: after a
    channel shuffle and a Split, each output gets its input's Q/DQ pair (ShuffleNetV2 ran 17 of its
    convs in float before)."""
    from edgekd.quant import QATConfig
    from edgekd.quant.ptq import PTQConfig, post_training_quantize

    model = ChannelShuffle().eval()
    sim = QATConfig(target="x86-onnxruntime").resolved()
    int8 = post_training_quantize(model, [torch.rand(4, 3, 8, 8)], PTQConfig(observer="minmax"), sim)
    [artifact] = export(int8, ["onnx"], tmp_path, "shuffle", (3, 8, 8))
    graph = onnx.load(artifact.path).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and all(producer[n.input[0]] == "DequantizeLinear" for n in convs)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
