"""Models whose forward() reads shapes, lengths or chunks are traced for QAT with an example input."""

import copy

import pytest
import torch
from torch import nn

from edgekd.errors import QuantizationError
from edgekd.export import export
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.quant.fake_quant import QuantConv2d
from edgekd.quant.trace import trace


class C2f(nn.Module):
    """YOLOv8's block: ``list(x.chunk(2, 1))`` grown by a loop, then concatenated."""

    def __init__(self, c):
        super().__init__()
        self.cv1 = nn.Conv2d(c, 2 * c, 1)
        self.m = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(2))
        self.cv2 = nn.Conv2d(4 * c, c, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Head(nn.Module):
    """A detect head that rebuilds its anchor grid when the input shape changes."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 1)
        self.shape = None

    def forward(self, x):
        out = self.conv(x)
        if self.shape != x.shape:
            b, _, h, w = x.shape
            self.grid = torch.arange(h * w, dtype=x.dtype).reshape(1, 1, h, w)
            self.shape = x.shape
        return out + self.grid


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = C2f(8)
        self.head = Head(8)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if y.max() > 0 else y


def test_plain_fx_cannot_trace_it_and_an_example_can():
    model = Detector().eval()
    eager = copy.deepcopy(model)
    with pytest.raises(Exception, match="iterated|control flow"):
        torch.fx.symbolic_trace(Detector())
    x = torch.rand(2, 3, 16, 16)
    gm = trace(model, (x,))
    with torch.no_grad():
        assert torch.allclose(gm(x), eager(x), atol=1e-6)
        # shapes stay computed in the graph: another batch size runs and matches eager
        x5 = torch.rand(5, 3, 16, 16)
        assert torch.allclose(gm(x5), eager(x5), atol=1e-6)


def test_qat_quantizes_inside_the_blocks_and_exports(tmp_path):
    model = Detector().eval()
    batch = torch.rand(4, 3, 16, 16)
    with pytest.raises(QuantizationError, match=r"example=batch"):
        prepare_qat(model, QATConfig())
    gm = prepare_qat(model, QATConfig(), example=batch)
    assert isinstance(gm.get_submodule("block.m.1"), QuantConv2d)
    assert isinstance(gm.get_submodule("head.conv"), QuantConv2d)
    calibrate(gm, [batch])
    freeze(gm)
    [artifact] = export(gm, ["onnx"], tmp_path, "detector", (3, 16, 16))
    assert artifact.path.stat().st_size > 0


def test_leaf_modules_keep_untraceable_code_whole():
    model = Detector().eval()
    gm = prepare_qat(model, QATConfig(leaf_modules=["Head", "block"]))  # class name, module path
    assert type(gm.get_submodule("head")).__name__ == "Head"  # called as one op, its conv float
    assert not isinstance(gm.get_submodule("head.conv"), QuantConv2d)
    assert isinstance(gm.get_submodule("stem"), QuantConv2d)


def test_a_branch_on_tensor_values_is_refused_not_baked_in():
    with pytest.raises(QuantizationError, match="branches on the values of tensor"):
        prepare_qat(DataDependent().eval(), QATConfig(), example=torch.rand(2, 3, 4, 4))


def test_an_anchor_grid_built_from_shapes_folds_into_a_full_integer_tflite(tmp_path):
    """The head's grid (arange over the feature map's shape) is static: it is not quantized as
    an activation, the add reading it is, and the TFLite writer folds the Shape/Range chain
    after measuring the shapes onnx's inference loses."""
    from edgekd.quant.ptq import PTQConfig, post_training_quantize

    model = Detector().eval()
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    int8 = post_training_quantize(model, [torch.rand(4, 3, 16, 16)], PTQConfig(observer="minmax"), sim)
    onnx_file, tflite_file = export(int8, ["onnx", "tflite"], tmp_path, "detector", (3, 16, 16))
    import onnx

    ops = {n.op_type for n in onnx.load(onnx_file.path).graph.node}
    assert {"Shape", "Range"} & ops  # the grid is computed in the ONNX graph ...
    assert tflite_file.path.stat().st_size > 0  # ... and folded for TFLite (parity checked on export)


class DeviceAware(nn.Module):
    """EfficientViT's shape: code that asks a tensor for its device and dtype while tracing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.conv(x)
        return list(y.chunk(2, 1))[0].to(x.dtype)


def test_device_and_dtype_are_constants_of_the_trace():
    model = DeviceAware().eval()
    gm = prepare_qat(model, QATConfig(), example=torch.rand(2, 3, 4, 4))
    assert isinstance(gm.get_submodule("conv"), QuantConv2d)


class TokenTypes(nn.Module):
    """BERT's embeddings: a buffer sliced and expanded to sizes read from the input's shape."""

    def __init__(self):
        super().__init__()
        self.register_buffer("token_type_ids", torch.zeros(1, 16, dtype=torch.long))
        self.register_buffer("position_ids", torch.arange(16)[None])
        self.words, self.types = nn.Embedding(10, 4), nn.Embedding(2, 4)

    def forward(self, ids):
        batch, length = ids.size()
        positions = self.position_ids[:, :length]
        types = torch.gather(self.token_type_ids.expand(positions.shape[0], -1), 1, positions)
        return self.words(ids) + self.types(types.expand(batch, length))


def test_a_buffer_expanded_to_traced_sizes_is_a_node_of_the_graph():
    model = TokenTypes().eval()
    with pytest.raises(TypeError):  # fx's own tracer: a real tensor's method with traced sizes
        torch.fx.symbolic_trace(model)
    gm = trace(model, (torch.randint(0, 10, (2, 8)),))
    assert any(n.op == "get_attr" and n.target == "token_type_ids" for n in gm.graph.nodes)
    ids = torch.randint(0, 10, (3, 12))  # another batch and length: the sizes stay symbolic
    assert torch.equal(gm(ids), model(ids))


def test_a_model_traced_on_an_example_survives_torch_save():
    import io

    model, x = Detector().eval(), torch.rand(2, 3, 32, 32)
    int8 = prepare_qat(model, QATConfig(), example=x)
    calibrate(int8, [x])
    int8 = freeze(int8)
    buffer = io.BytesIO()
    torch.save(int8, buffer)  # unpickling re-traces the generated code: it must not need the example
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    expected, got = int8(x), loaded(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got)) if isinstance(got, (list, tuple)) \
        else torch.equal(expected, got)
