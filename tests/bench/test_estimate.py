"""The estimator: MACs, parameters, weight bytes, activation memory and roofline latency by hand."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd.bench.estimate import ComputeSpec, estimate_onnx
from edgekd.errors import EstimateError

SPEC = ComputeSpec(peak_gops_int8=100.0, peak_gflops_fp32=10.0, memory_bandwidth_gbps=1.0,
                   overhead_us={"onnxruntime": 5.0})


def _save(tmp_path, nodes, inits, x_shape, y_shape, name="m.onnx", opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, tmp_path / name)
    return tmp_path / name


def _float_model(tmp_path):
    """Conv 1->4 (3x3, pad 1) on 8x8, ReLU, global average pool, flatten, Gemm 4->10."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return _save(tmp_path, nodes, inits, ["batch", 1, 8, 8], ["batch", 10])


def test_macs_params_and_bytes_by_hand(tmp_path):
    est = estimate_onnx(_float_model(tmp_path), SPEC, "t", "onnxruntime")
    layers = {layer.op: layer for layer in est.layers}
    assert set(layers) == {"Conv", "GlobalAveragePool", "Gemm"}  # ReLU fused, Flatten a view
    assert layers["Conv"].macs == 4 * 8 * 8 * 1 * 3 * 3 == 2304
    assert layers["Gemm"].macs == 10 * 4
    assert (layers["Conv"].params, layers["Conv"].weight_bytes) == (36 + 4, 160.0)
    assert est.params == 40 + 40 and est.macs == 2344
    # live at once: the conv output (4x8x8 float = 1024 B) and the input (64 floats = 256 B)
    assert est.peak_activation_bytes == 256 + 1024
    # roofline of the conv: 4608 ops / 10 GFLOPS = 0.46 µs; (256 + 1024 + 160) B / 1 GB/s = 1.44 µs
    assert layers["Conv"].latency_us == pytest.approx(1.44) and layers["Conv"].bound == "memory"
    assert est.latency_ms * 1e3 == pytest.approx(sum(layer.latency_us for layer in est.layers) + 5.0)
    assert est.to_dict()["estimated"] is True and "ESTIMATED" in est.table()


def test_quantized_weights_and_activations_count_their_stored_bytes(exported):
    int8 = estimate_onnx(exported[("int8", "onnx")].path, SPEC)
    fp32 = estimate_onnx(exported[("float", "onnx")].path, SPEC)
    # cnn-student-s by hand: 16x64x9 + 24x64x16x9 + 32x16x24x9 + 32x10
    assert int8.macs == fp32.macs == 9216 + 221184 + 110592 + 320
    assert int8.params == fp32.params == 10914  # BatchNorm folded into the convolutions
    assert fp32.weight_bytes == pytest.approx(4 * 10914)
    assert int8.weight_bytes == pytest.approx(10914 - 16 - 24 - 32 - 10 + 4 * (16 + 24 + 32 + 10))  # float32 biases
    assert int8.peak_activation_bytes == pytest.approx(fp32.peak_activation_bytes / 4, rel=0.35)
    assert all(layer.integer for layer in int8.layers if layer.op == "Conv")
    assert int8.latency_ms < fp32.latency_ms


def test_dynamic_shapes_other_than_batch_are_named(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    path = _save(tmp_path, nodes, [], [1, "channels", 8, 8], [1, "channels", 8, 8])
    est = estimate_onnx(path, SPEC)  # unknown dims count as 1: still an estimate, never a crash
    assert est.layers[0].op == "Relu"


def test_cli_labels_estimates_and_refuses_targets_without_figures(exported):
    from edgekd.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["estimate", str(exported[("int8", "onnx")].path), "--target", "x86-cpu"],
                       catch_exceptions=False)
    assert ok.exit_code == 0 and "ESTIMATED for target x86-cpu" in ok.output and "341,312 MACs" in ok.output
    missing = runner.invoke(main, ["estimate", str(exported[("int8", "onnx")].path), "--target", "qnn-htp"])
    assert missing.exit_code == 2 and "states no compute figures" in missing.output
    wrong = runner.invoke(main, ["estimate", str(exported[("int8", "tflite")].path), "--target", "x86-cpu"])
    assert wrong.exit_code == 2 and "the estimator reads ONNX" in wrong.output


def test_compute_spec_is_validated():
    from edgekd.config import FieldError

    with pytest.raises(FieldError, match="peak_gops_int8: must be > 0"):
        ComputeSpec(peak_gops_int8=0, peak_gflops_fp32=1, memory_bandwidth_gbps=1)
    with pytest.raises(FieldError, match="overhead_us.litert: must be >= 0"):
        ComputeSpec(peak_gops_int8=1, peak_gflops_fp32=1, memory_bandwidth_gbps=1, overhead_us={"litert": -1})


def test_a_graph_without_compute_is_refused(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    with pytest.raises(EstimateError, match="no compute node"):
        estimate_onnx(_save(tmp_path, nodes, [], [1, 4], [1, 4]), SPEC)
