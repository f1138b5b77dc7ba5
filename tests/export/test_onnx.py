import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgekd.errors import ModelLoadError
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
