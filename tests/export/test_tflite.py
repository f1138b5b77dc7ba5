"""TFLite exporter: every supported ONNX op, float and int8, against onnxruntime; layout; errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ai_edge_litert")

from edgekd.errors import ExportError  # noqa: E402
from edgekd.export.tflite import convert, onnx_to_tflite, supported_ops  # noqa: E402
from edgekd.export.tflite.parity import FLOAT_RTOL, compare, interpreter, run_tflite  # noqa: E402
from tests.export.onnx_cases import X4, _w, cases, conv_then, model, qdq  # noqa: E402

CASES = cases()


def _feeds(m: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in m.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = (rng.standard_normal(shape) if dtype == np.float32 else rng.integers(0, 4, shape)).astype(dtype)
    return feeds


def _save(tmp_path, m: onnx.ModelProto, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_float_op_matches_onnxruntime(tmp_path, name):
    m, expected_op = CASES[name]
    path = _save(tmp_path, m)
    result = convert(path)
    assert not result.int8
    if expected_op:
        assert expected_op in result.ops, result.ops
    feeds = list(_feeds(m).values())
    for parity in compare(path, result.data, result.graph, feeds=feeds):
        assert parity.relative_error <= FLOAT_RTOL, parity.describe()


FLOAT_ONLY = {"lrn": "TFLite's LOCAL_RESPONSE_NORMALIZATION kernel is float only",
              "layer_norm_tokens": "no TFLite kernel: an int8 decomposition needs scales the ONNX file lacks",
              "layer_norm_chw_no_bias": "as layer_norm_tokens",
              "l2_normalize_pattern": "no int8 kernel for the sum of squares (and int8 DIV by a tensor)",
              "gemm_two_inputs_alpha_bias": "no ONNX scale exists for the product before alpha and bias",
              "layer_norm_opset13_pattern": "SQRT has no int8 TFLite kernel",
              "pow_general": "POW has no int8 TFLite kernel"}
INT8_CASES = [n for n, (m, _) in CASES.items()  # per-channel QDQ needs opset 13
              if m.opset_import[0].version >= 13 and n not in FLOAT_ONLY]


# int8 HardSwish as x * hard_sigmoid(x): XNNPACK takes no int8 HARD_SWISH; an int8 average pool
# without padding (or with zeros padded in and counted) as a depthwise 1 / area: nor int8 AVERAGE_POOL_2D
INT8_OP = {"hard_swish": "MUL", "avgpool_include_pad": "DEPTHWISE_CONV_2D", "avgpool_2x2_stride2": "DEPTHWISE_CONV_2D"}


@pytest.mark.parametrize("name", INT8_CASES)
def test_int8_op_within_one_step(tmp_path, name):
    m, expected_op = CASES[name]
    expected_op = INT8_OP.get(name, expected_op)
    path = _save(tmp_path, qdq(m, _feeds(m)))
    result = convert(path)
    assert result.int8
    if expected_op:
        assert expected_op in result.ops, result.ops
    feeds = list(_feeds(m, seed=2).values())
    for parity in compare(path, result.data, result.graph, feeds=feeds, coarse=result.coarse):
        assert parity.within_one_step >= 0.99, parity.describe()
    # full integer: only the float interface tensors (and what feeds/leaves them) are float, and
    # the real values a CAST between integers and floats reads or writes
    interp = interpreter(result.data)
    float_tensors = [t["name"] for t in interp.get_tensor_details() if t["dtype"] == np.float32]
    io = {d["name"] for d in interp.get_input_details() + interp.get_output_details()}
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    cast = {names[int(t)] for op in interp._get_ops_details() if op["op_name"] == "CAST"
            for t in [*op["inputs"], *op["outputs"]]}
    assert set(float_tensors) <= io | cast, float_tensors


def test_every_supported_op_has_a_case():
    used = {n.op_type for m, _ in CASES.values() for n in m.graph.node}
    # QuantizeLinear as an op of its own (a requantization) has its test below; ChannelAffine is
    # the converter's own fusion of an int8 Mul, Add (tests/quant/test_layer_norm.py)
    assert set(supported_ops()) - used == {"QuantizeLinear", "ChannelAffine"}


def test_a_tensor_requantized_to_a_second_scale_becomes_a_quantize_op(tmp_path):
    """c is read on its own grid and, requantized to a coarser one (r), by the same Add."""
    nodes, inits = [], []

    def quantize(x, name, scale, zp):  # x -> QuantizeLinear -> DequantizeLinear -> name
        nodes.extend([helper.make_node("QuantizeLinear", [x, f"{name}/s", f"{name}/z"], [f"{name}/q"]),
                      helper.make_node("DequantizeLinear", [f"{name}/q", f"{name}/s", f"{name}/z"], [name])])
        inits.extend([numpy_helper.from_array(np.float32(scale), f"{name}/s"),
                      numpy_helper.from_array(np.int8(zp), f"{name}/z")])

    w = np.random.default_rng(0).integers(-60, 61, (4, 2, 3, 3)).astype(np.int8)
    inits += [numpy_helper.from_array(w, "w/q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w/s"),
              numpy_helper.from_array(np.zeros(4, np.int8), "w/z")]
    quantize("x", "xd", 0.02, 0)
    nodes += [helper.make_node("DequantizeLinear", ["w/q", "w/s", "w/z"], ["w"], axis=0),
              helper.make_node("Conv", ["xd", "w"], ["conv"], pads=[1, 1, 1, 1])]
    quantize("conv", "c", 0.05, -10)
    quantize("c", "r", 0.11, 5)  # the requantization
    nodes.append(helper.make_node("Add", ["c", "r"], ["sum"]))
    quantize("sum", "y", 0.12, -3)
    graph = helper.make_graph(nodes, "requantize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = _save(tmp_path, onnx.shape_inference.infer_shapes(m))
    result = convert(path)
    assert result.int8 and "QUANTIZE" in result.ops and "ADD" in result.ops
    feeds = [np.random.default_rng(3).uniform(-2, 2, (1, 2, 6, 6)).astype(np.float32)]
    for parity in compare(path, result.data, result.graph, feeds=feeds):
        assert parity.within_one_step >= 0.99, parity.describe()


def test_cnn_has_one_transpose_at_each_end_and_none_with_nhwc_interface(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MaxPool", ["b"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["c", "w2"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "k"], ["y"])]
    m = model(nodes, [("x", X4)], None, [("w1", _w(6, 4, 3, 3)), ("w2", _w(5, 6, 3, 3)), ("k", _w(5, 1, 1))])
    path = _save(tmp_path, m)
    nchw = convert(path)
    assert nchw.ops.count("TRANSPOSE") == 2 and nchw.transposes == 2
    nhwc = convert(path, layout="nhwc")
    assert "TRANSPOSE" not in nhwc.ops
    feeds = list(_feeds(m).values())
    for parity in compare(path, nhwc.data, nhwc.graph, feeds=feeds, layout="nhwc"):
        assert parity.relative_error <= FLOAT_RTOL
    interp = interpreter(nhwc.data)
    assert list(interp.get_input_details()[0]["shape"]) == [1, 8, 8, 4]  # NHWC interface


def test_int8_interface_exposes_quantized_tensors(tmp_path):
    m, _ = CASES["conv_relu_fused"]
    path = _save(tmp_path, qdq(m, _feeds(m)))
    result = convert(path, io="int8")
    assert "QUANTIZE" not in result.ops and "DEQUANTIZE" not in result.ops
    interp = interpreter(result.data)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] == pytest.approx(result.graph.act_quant["x"].scale[0])
    feeds = list(_feeds(m, seed=3).values())
    for parity in compare(path, result.data, result.graph, feeds=feeds):
        assert parity.within_one_step >= 0.99


def test_int8_weights_follow_the_tflite_spec(tmp_path):
    from ai_edge_litert import schema_py_generated as s

    m = conv_then([helper.make_node("Conv", ["c", "dw"], ["y"], group=6, pads=[1, 1, 1, 1])],
                  [("dw", _w(6, 1, 3, 3))])
    path = _save(tmp_path, qdq(m, _feeds(m)))
    result = convert(path)
    flat = s.ModelT.InitFromObj(s.Model.GetRootAs(result.data, 0))
    sub = flat.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    by_op = {names[flat.operatorCodes[op.opcodeIndex].builtinCode]: op for op in sub.operators}
    for op_name, qdim in (("CONV_2D", 0), ("DEPTHWISE_CONV_2D", 3)):
        op = by_op[op_name]
        x, w, b = (sub.tensors[i] for i in op.inputs[:3])
        assert w.type == s.TensorType.INT8 and w.quantization.quantizedDimension == qdim
        assert not np.any(w.quantization.zeroPoint)  # symmetric
        assert len(w.quantization.scale) == 6  # per output channel
        assert b.type == s.TensorType.INT32
        np.testing.assert_allclose(b.quantization.scale, x.quantization.scale[0] * w.quantization.scale, rtol=1e-6)


def test_finer_onnx_scale_than_tflite_fixed_scale_is_requantized(tmp_path):
    m, _ = CASES["softmax_2d"]
    path = _save(tmp_path, qdq(m, _feeds(m), spec=False))  # softmax output scale finer than 1/256
    result = convert(path)
    assert result.ops.count("QUANTIZE") == 2  # the input edge, and the requantization after SOFTMAX
    assert list(result.coarse.values()) == [pytest.approx(1 / 256)]
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m).values()), coarse=result.coarse):
        assert parity.within_one_step >= 0.99


def test_unsupported_op_names_type_node_and_supported_list(tmp_path):
    m = model([helper.make_node("Erf", ["x"], ["y"], name="my_erf")], [("x", X4)], None)
    with pytest.raises(ExportError) as err:
        convert(_save(tmp_path, m))
    message = str(err.value)
    assert "Erf" in message and "my_erf" in message and "Conv" in message and "Supported" in message


def test_a_refusal_names_every_distinct_blocker_once(tmp_path):
    """Twelve Erf nodes do not hide the Sign after them: each op type once, with its count."""
    nodes = [helper.make_node("Erf", [f"e{i}" if i else "x"], [f"e{i + 1}"], name=f"erf{i}") for i in range(12)]
    nodes.append(helper.make_node("Sign", ["e12"], ["y"], name="the_sign"))
    m = model(nodes, [("x", X4)], None)
    with pytest.raises(ExportError) as err:
        convert(_save(tmp_path, m))
    message = str(err.value)
    assert "Erf x12 (node 'erf0', ...)" in message and "Sign x1 (node 'the_sign')" in message


def test_constant_gather_elements_over_a_long_axis_is_folded(tmp_path):
    """BERT's 512-long token_type_ids buffer: onnx's reference evaluator cannot fold it (np.choose
    takes at most 64 choices); edgekd folds it in numpy, negative indices included."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 512)).astype(np.float32)
    idx = rng.integers(-512, 512, size=(1, 512)).astype(np.int64)
    nodes = [helper.make_node("GatherElements", ["d", "i"], ["c"], name="ge", axis=1),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    m = model(nodes, [("x", [1, 512])], [1, 512], inits=[("d", data), ("i", idx)])
    x = rng.normal(size=(1, 512)).astype(np.float32)
    out = run_tflite(interpreter(convert(_save(tmp_path, m)).data), [x])[0]
    np.testing.assert_array_equal(out, x + np.take_along_axis(data, np.where(idx < 0, idx + 512, idx), 1))
    bad = model(nodes, [("x", [1, 512])], [1, 512], inits=[("d", data), ("i", idx + 1024)])
    with pytest.raises(ExportError, match=r"GatherElements node 'ge': an index is outside \[-512, 511\]"):
        convert(_save(tmp_path, bad))


def test_a_cast_to_an_unsupported_type_is_refused_by_name(tmp_path):
    m = model([helper.make_node("Cast", ["x"], ["i"], name="to_half", to=TensorProto.FLOAT16),
               helper.make_node("Cast", ["i"], ["y"], name="back", to=TensorProto.FLOAT)], [("x", X4)], None)
    with pytest.raises(ExportError, match=r"Cast node 'to_half': a cast to float16 is not supported"):
        convert(_save(tmp_path, m))


@pytest.mark.parametrize("int8", [False, True])
def test_hard_sigmoid_is_delegated_whole_to_xnnpack(tmp_path, int8):
    """RELU_0_TO_1 is not an XNNPACK op (MobileNetV3 fell into 10 partitions): HardSigmoid is
    written as MUL, ADD+RELU6, MUL, every op of which XNNPACK takes."""
    from edgekd.runtime.litert_common import xnnpack_coverage

    m, _ = CASES["hard_sigmoid"]
    path = _save(tmp_path, qdq(m, _feeds(m)) if int8 else m)
    tflite = path.with_suffix(".tflite")
    tflite.write_bytes(convert(path).data)
    assert xnnpack_coverage(tflite, 1) == 1.0


def test_dynamic_spatial_dim_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = _save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(ExportError, match=r"input 'x' has a dynamic dimension at axis 2"):
        convert(path)


def test_int8_tensor_without_scale_is_named(tmp_path):
    m, _ = CASES["conv"]
    q = qdq(m, _feeds(m))
    keep = [n for n in q.graph.node if not n.output[0].startswith("y/")]  # drop the output's Q/DQ
    del q.graph.node[:]
    q.graph.node.extend(keep)
    q.graph.output[0].name = "y"
    with pytest.raises(ExportError, match=r"tensor 'y' .* has no QuantizeLinear.*or convert with float_fallback"):
        convert(_save(tmp_path, q))
    result = convert(_save(tmp_path, q), float_fallback=True)  # the conv writes float: the file says so
    assert result.float_nodes and result.ops.count("DEQUANTIZE") == 1 and "CONV_2D" in result.ops
    interp = interpreter(result.data)
    assert interp.get_output_details()[0]["dtype"] == np.float32
    for parity in compare(tmp_path / "m.onnx", result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert parity.relative_error <= 1e-4, parity.describe()
        # a float output of an int8 model is judged in int8 steps over its own range
        assert parity.step is not None and parity.within_one_step == 1.0 and "step(s)" in parity.describe()


@pytest.mark.parametrize("int8", [False, True])
def test_grouped_conv_is_one_conv_2d_delegated_whole_and_batch_resizes(tmp_path, int8):
    """One CONV_2D with grouped filters (not SPLIT + a CONV_2D per group + CONCATENATION, which
    cut regnetx_002 into 25 XNNPACK partitions); LiteRT's own kernels agree with XNNPACK's."""
    from edgekd.runtime.litert_common import xnnpack_coverage

    m = onnx.ModelProto()
    m.CopyFrom(CASES["conv_grouped"][0])  # the shared case stays static for other tests
    m = qdq(m, _feeds(m)) if int8 else m
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"  # dynamic batch
    path = _save(tmp_path, m)
    result = convert(path, batch=3)
    assert result.ops.count("CONV_2D") == 1 and "SPLIT" not in result.ops
    interp = interpreter(result.data)
    assert interp.get_input_details()[0]["shape"][0] == 3
    tflite = path.with_suffix(".tflite")
    tflite.write_bytes(result.data)
    assert xnnpack_coverage(tflite, 1) == 1.0


def test_onnx_to_tflite_writes_checked_file_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    m, _ = CASES["conv"]
    out = onnx_to_tflite(_save(tmp_path, m), tmp_path / "out.tflite")
    assert out.exists() and out.read_bytes()[4:8] == b"TFL3"
    x = _feeds(m)["x"]
    (y,) = run_tflite(interpreter(out), [x])
    assert y.shape == (1, 6, 8, 8)

    import edgekd.export.tflite.parity as parity  # a wrong conversion must not leave a file
    monkeypatch.setattr(parity, "FLOAT_RTOL", -1.0)
    with pytest.raises(ExportError, match="does not reproduce onnxruntime"):
        onnx_to_tflite(tmp_path / "m.onnx", tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()


def test_constant_weights_via_constant_node_and_uint8_qdq(tmp_path):
    """uint8 activations (onnxruntime's default) become int8 with zero point - 128."""
    w = _w(6, 4, 3, 3)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    m = model(nodes, [("x", X4)], None)
    q = qdq(m, _feeds(m))
    for init in q.graph.initializer:  # rewrite activation zero points as uint8
        if init.name.endswith("/z"):
            zp = numpy_helper.to_array(init).astype(np.int16) + 128
            init.CopyFrom(numpy_helper.from_array(zp.astype(np.uint8), init.name))
    path = _save(tmp_path, q)
    result = convert(path)
    assert result.graph.act_quant["x"].zero_point[0] <= 127
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m).values())):
        assert parity.within_one_step >= 0.99


def test_demo_int8_student_file_has_int8_conv_and_fully_connected(exported):
    """Read the exported .tflite back: its CONV_2D and FULLY_CONNECTED run on int8 tensors."""
    from ai_edge_litert import schema_py_generated as s

    data = exported[("int8", "tflite")].path.read_bytes()
    flat = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    sub = flat.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    kinds = {}
    for op in sub.operators:
        name = names[flat.operatorCodes[op.opcodeIndex].builtinCode]
        kinds.setdefault(name, []).append([sub.tensors[i].type for i in op.inputs[:2]] + [sub.tensors[op.outputs[0]].type])
    assert len(kinds["CONV_2D"]) == 3 and len(kinds["FULLY_CONNECTED"]) == 1
    for types in kinds["CONV_2D"] + kinds["FULLY_CONNECTED"]:
        assert types == [s.TensorType.INT8] * 3
    assert "TRANSPOSE" not in kinds  # 1-channel input: the NCHW->NHWC move is a free reshape


@pytest.mark.parametrize("name", sorted(FLOAT_ONLY))
def test_int8_without_tflite_equivalent_is_refused_clearly(tmp_path, name):
    m, _ = CASES[name]
    message = {"lrn": "LRN", "layer_norm_tokens": "int8 LayerNormalization has no TFLite kernel",
               "layer_norm_chw_no_bias": "int8 LayerNormalization has no TFLite kernel",
               "l2_normalize_pattern": "int8 ReduceL2 has no TFLite kernel",
               "layer_norm_opset13_pattern": "(SQRT runs in float only|division by a run-time tensor)",
               "pow_general": "x \\*\\* 1.5 has no int8 TFLite kernel"}.get(name, "int8 Gemm")
    with pytest.raises(ExportError, match=message + ".*convert with float_fallback"):
        convert(_save(tmp_path, qdq(m, _feeds(m))))


@pytest.mark.parametrize("name", sorted(FLOAT_ONLY))
def test_float_fallback_runs_an_op_without_int8_kernel_between_dequantize_and_quantize(tmp_path, name):
    m, _ = CASES[name]
    path = _save(tmp_path, qdq(m, _feeds(m)))
    result = convert(path, float_fallback=True)
    assert len(result.float_nodes) >= 1 and {"DEQUANTIZE", "QUANTIZE"} <= set(result.ops)
    assert all(n.split("_")[0] in {"LRN", "LayerNormalization", "ReduceL2", "Div", "Gemm", "Sqrt", "Pow"}
               for n in result.float_nodes), result.float_nodes
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values()),
                          coarse=result.coarse):
        assert parity.within_one_step >= 0.99, parity.describe()


def test_1d_convolutions_keep_their_layout_between_layers(tmp_path):
    m, _ = CASES["conv_1d_stack_no_transpose_inside"]
    result = convert(_save(tmp_path, m))
    assert result.ops.count("TRANSPOSE") == 2  # at the input and the output; none between the layers


def test_sum_of_three_inputs_float(tmp_path):
    m = model([helper.make_node("Sum", ["x", "z", "k"], ["y"])], [("x", X4), ("z", [4, 1, 1])], None,
              [("k", _w(8))])
    path = _save(tmp_path, m)
    result = convert(path)
    assert result.ops.count("ADD") == 2
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m).values())):
        assert parity.relative_error <= FLOAT_RTOL


def test_int8_check_tolerance_grows_with_depth_only():
    from edgekd.export.tflite.parity import int8_steps

    assert int8_steps(["QUANTIZE", "CONV_2D", "DEQUANTIZE"]) == 1
    assert int8_steps(["QUANTIZE", "RESHAPE", "CONV_2D", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN",
                       "FULLY_CONNECTED", "DEQUANTIZE"]) == 3  # the demo student: 5 requantizing ops
    assert int8_steps(["CONV_2D"] * 52 + ["FULLY_CONNECTED"] + ["ADD"] * 10 + ["MEAN"]) == 8


# -- regressions found in review -------------------------------------------------------------------
def _parity_ok(tmp_path, m, int8=False, **kw):
    path = _save(tmp_path, qdq(m, _feeds(m)) if int8 else m, "r.onnx")
    result = convert(path, **kw)
    parities = compare(path, result.data, result.graph, feeds=list(_feeds(m, 2).values()), coarse=result.coarse)
    return result, all((p.within_one_step >= 0.99) if int8 else p.ok for p in parities)


def test_reshape_to_another_scale_is_requantized(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"])]
    m = model(nodes, [("x", X4)], None, [("w", _w(6, 4, 3, 3)), ("b", _w(6))])
    q = qdq(m, _feeds(m))
    for init in q.graph.initializer:  # the ONNX model gives the flattened tensor twice the scale
        if init.name == "y/s":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, "y/s"))
    path = _save(tmp_path, q)
    result = convert(path)
    assert "QUANTIZE" in result.ops[1:]
    assert all(p.within_one_step >= 0.99 for p in compare(path, result.data, result.graph))


def test_dequantize_without_zero_point_uses_the_constants_type(tmp_path):
    w = _w(6, 4, 3, 3)
    scale = np.abs(w).max(axis=(1, 2, 3)) / 127
    q = np.round(w / scale[:, None, None, None]).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    m = model(nodes, [("x", X4)], None, [("wq", q), ("ws", scale.astype(np.float32))])
    _, ok = _parity_ok(tmp_path, m)
    assert ok


@pytest.mark.parametrize("mode", ["floor", "ceil"])
def test_nearest_resize_modes_without_tflite_equivalent_are_refused(tmp_path, mode):
    m = model([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", nearest_mode=mode)],
              [("x", X4)], None, [("sc", np.asarray([1, 1, 2, 2], np.float32))])
    with pytest.raises(ExportError, match=f"nearest_mode={mode} has no TFLite equivalent"):
        convert(_save(tmp_path, m))


def test_average_pool_ceil_mode_counting_pads(tmp_path):
    m = model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)], [("x", [1, 4, 8, 8])], None)
    _, ok = _parity_ok(tmp_path, m)
    assert ok


def test_conv_transpose_output_shape_attribute(tmp_path):
    m = model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[15, 15])],
              [("x", X4)], None, [("w", _w(4, 3, 3, 3))])
    _, ok = _parity_ok(tmp_path, m)
    assert ok


def test_reshape_to_literal_one_is_not_resized_as_batch(tmp_path):
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray([1, -1]), "s")])
    path = _save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    from ai_edge_litert import schema_py_generated as s
    flat = s.ModelT.InitFromObj(s.Model.GetRootAs(convert(path).data, 0))
    [op] = flat.subgraphs[0].operators
    assert list(op.builtinOptions.newShape) == [1, 32]  # a literal 1, not the batch: no -1


def test_clip_bounds_given_as_one_element_tensors(tmp_path):
    m = model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", X4)], None,
              [("lo", np.asarray([0.0], np.float32)), ("hi", np.asarray([6.0], np.float32))])
    result, ok = _parity_ok(tmp_path, m)
    assert ok and result.ops == ["RELU6"]


def test_identity_writing_a_graph_output(tmp_path):
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
              [("x", X4)], None)
    _, ok = _parity_ok(tmp_path, m)
    assert ok


def test_unknown_exporter_option_is_a_config_error(tmp_path):
    from edgekd.errors import ConfigError
    from edgekd.export import export_onnx_file

    m, _ = CASES["relu"]
    with pytest.raises(ConfigError, match=r"export format 'tflite' has no option 'layuot'.*layout"):
        export_onnx_file(_save(tmp_path, m), ["tflite"], tmp_path, options={"tflite": {"layuot": "nhwc"}})


@pytest.mark.parametrize("int8", [False, True])
def test_max_pool_after_relu_pads_with_zeros_xnnpack_takes(tmp_path, int8):
    """ResNet's stem (conv, ReLU, 3x3/2 max pool with 1-pixel pads): after a ReLU the lowest value
    is 0, so PAD (zeros) pads the same as PADV2 (-inf, or the lowest int8 code), and PAD is
    delegated to XNNPACK where PADV2 split the graph into two partitions."""
    from edgekd.runtime.litert_common import xnnpack_coverage

    base = conv_then([helper.make_node("Relu", ["c"], ["r"]),
                      helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])])
    path = _save(tmp_path, qdq(base, _feeds(base)) if int8 else base)
    result = convert(path)
    assert "PAD" in result.ops and "PADV2" not in result.ops
    tflite = path.with_suffix(".tflite")
    tflite.write_bytes(result.data)
    assert xnnpack_coverage(tflite, 1) == 1.0
    assert _parity_ok(tmp_path, base, int8=int8)[1]


def test_max_pool_of_values_below_zero_still_pads_with_the_lowest_value(tmp_path):
    m = conv_then([helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])])
    result = convert(_save(tmp_path, m))
    assert "PADV2" in result.ops
    assert _parity_ok(tmp_path, m)[1]


def test_int8_pad_value_beyond_the_input_range_is_padded_on_the_output_grid(tmp_path):
    """EfficientViT pads with 1.0 where its input's grid may not reach: the pad runs on the
    output's grid (which the ONNX model chose to hold the value), not saturated at the input's."""
    m = onnx.ModelProto()
    m.CopyFrom(CASES["pad_value"][0])
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.float32(8.0), "v"))
    path = _save(tmp_path, qdq(m, _feeds(m), spec=False))  # the output's own scale: its range holds 8
    result = convert(path)
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert parity.within_one_step >= 0.99, parity.describe()


def test_the_export_check_runs_on_given_samples_and_is_stored_per_output(tmp_path):
    from edgekd.export.tflite import read_export_check

    m, _ = CASES["conv_relu_fused"]
    path = _save(tmp_path, qdq(m, _feeds(m)))
    samples = [list(_feeds(m, seed=s).values()) for s in range(5)]
    written = onnx_to_tflite(path, tmp_path / "checked.tflite", check_samples=samples)
    [check] = read_export_check(written)
    assert (check["output"], check["source"], check["inputs"], check["passed"]) == ("y/dq", "data", 5, True)
    assert check["tolerance"].startswith("99% of elements within") and check["within_steps"] >= 0.99
    unchecked = onnx_to_tflite(path, tmp_path / "unchecked.tflite", check=False)
    assert read_export_check(unchecked) is None
    assert read_export_check(onnx_to_tflite(path, tmp_path / "noise.tflite"))[0]["source"] == "noise"
    interp = interpreter(written)  # the metadata leaves the model as it was
    assert [d["name"] for d in interp.get_input_details()] == ["x"]


def test_int8_hard_swish_is_delegated_to_xnnpack_in_one_partition(tmp_path):
    m, _ = CASES["hard_swish"]
    result = convert(_save(tmp_path, qdq(m, _feeds(m))))
    assert "HARD_SWISH" not in result.ops
    ops = [op["op_name"] for op in interpreter(result.data)._get_ops_details()]
    assert ops.count("DELEGATE") == 1  # (HARD_SWISH, not delegated in int8, split it into two)


@pytest.mark.parametrize("int8", [False, True])
def test_a_concat_of_many_inputs_is_a_chain_xnnpack_delegates_whole(tmp_path, int8):
    """XNNPACK takes CONCATENATION of at most 5 inputs; DenseNet joins up to 32 feature maps."""
    n = 12
    nodes = [helper.make_node("Relu", [f"x{i}"], [f"r{i}"]) for i in range(n)] + [
        helper.make_node("Concat", [f"r{i}" for i in range(n)], ["c"], axis=1), helper.make_node("Relu", ["c"], ["y"])]
    m = model(nodes, [(f"x{i}", [1, 2, 4, 4]) for i in range(n)], None)
    path = _save(tmp_path, qdq(m, _feeds(m)) if int8 else m)
    result = convert(path)
    assert result.ops.count("CONCATENATION") == 3  # 5 + 4 + 3 inputs: 5, then 5, then 4 (with the parts)
    if not int8:  # (the int8 case requantizes each input to the concat's grid: QUANTIZE ops between)
        ops = [op["op_name"] for op in interpreter(result.data)._get_ops_details()]
        assert ops.count("DELEGATE") == 1
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert (parity.within_one_step >= 0.99) if int8 else (parity.relative_error <= FLOAT_RTOL), parity.describe()


@pytest.mark.parametrize("op", ["Greater", "GreaterOrEqual", "Less", "LessOrEqual"])
@pytest.mark.parametrize("const_first", [False, True])
def test_int8_comparison_with_a_constant_between_two_codes_decides_as_the_real_one(tmp_path, op, const_first):
    """x > 0.3 where 0.3 lies between two codes of x's grid: rounded to the nearest code, the
    constant would flip the answer for the values on that code."""
    operands = ["c", "xd"] if const_first else ["xd", "c"]
    scale, zero = np.float32(0.04), np.int8(0)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node(op, operands, ["b"]), helper.make_node("Cast", ["b"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("QuantizeLinear", ["f", "one_s", "one_z"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "one_s", "one_z"], ["y"])]
    inits = [("s", scale), ("z", zero), ("c", np.float32(0.3)), ("one_s", np.float32(1 / 255)), ("one_z", np.int8(-128))]
    m = model(nodes, [("x", [1, 64])], [1, 64], inits, opset=13)
    path = _save(tmp_path, m)
    result = convert(path)
    x = (np.arange(-32, 32, dtype=np.float32) * 0.04)[None]  # every code, 0.28 and 0.32 around 0.3 included
    [parity] = compare(path, result.data, result.graph, feeds=[x])
    assert parity.max_abs_error == 0.0, parity.describe()


@pytest.mark.parametrize("op", ["HardSigmoid", "HardSwish"])
def test_int8_hard_activation_of_a_tiny_range_stays_in_one_xnnpack_partition(tmp_path, op):
    """XNNPACK takes an int8 ADD only when input scale / output scale >= 2^-10; the ADD of
    relu6(x + 3) on an input with a 1e-5 step (a near-dead SE gate: 7 of torchvision MobileNetV3's)
    fell out of the delegate. The writer's intermediate is widened (requantized) to that limit."""
    scale = np.float32(1e-5)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node(op, ["xd"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "os", "oz"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "os", "oz"], ["y"])]
    out_scale = np.float32(1 / 255) if op == "HardSigmoid" else np.float32(1e-5)
    inits = [("s", scale), ("z", np.int8(0)), ("os", out_scale), ("oz", np.int8(-128 if op == "HardSigmoid" else 0))]
    m = model(nodes, [("x", [1, 8, 4, 4])], [1, 8, 4, 4], inits, opset=17)
    path = _save(tmp_path, m)
    result = convert(path)
    ops = [o["op_name"] for o in interpreter(result.data)._get_ops_details()]
    assert ops.count("DELEGATE") == 1, ops
    feeds = [np.random.default_rng(3).uniform(-1.2e-3, 1.2e-3, (1, 8, 4, 4)).astype(np.float32)]
    for parity in compare(path, result.data, result.graph, feeds=feeds):
        assert parity.within_one_step == 1.0, parity.describe()


@pytest.mark.parametrize("int8", [False, True])
def test_a_concat_of_one_input_is_that_input(tmp_path, int8):
    """timm's DenseNet joins a list of one feature map at the start of every block: XNNPACK takes
    no one-input CONCATENATION (4 of DenseNet-121's 8 int8 partitions), and none is needed."""
    def partitions(nodes, name):
        m = model(nodes, [("x", [1, 3, 4, 4])], None)
        path = _save(tmp_path / name, qdq(m, _feeds(m)) if int8 else m)
        result = convert(path)
        return path, m, result, [op["op_name"] for op in interpreter(result.data)._get_ops_details()].count("DELEGATE")

    (tmp_path / "plain").mkdir()
    (tmp_path / "joined").mkdir()
    _, _, _, without = partitions([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
                                  "plain")
    path, m, result, with_join = partitions([helper.make_node("Relu", ["x"], ["r"]),
                                             helper.make_node("Concat", ["r"], ["c"], axis=1),
                                             helper.make_node("Relu", ["c"], ["y"])], "joined")
    assert "CONCATENATION" not in result.ops
    assert with_join == without  # (an int8 RELU that changes scale is XNNPACK's own limit: 2 either way)
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert (parity.within_one_step == 1.0) if int8 else (parity.relative_error <= FLOAT_RTOL), parity.describe()


@pytest.mark.parametrize("int8", [False, True])
def test_nearest_upscaling_runs_inside_one_xnnpack_partition(tmp_path, int8):
    """RESIZE_NEAREST_NEIGHBOR is not delegated by XNNPACK (YOLO's neck split in two); k*k copies
    and DEPTH_TO_SPACE compute the same values inside the delegate."""
    m, _ = CASES["resize_nearest"]
    path = _save(tmp_path, qdq(m, _feeds(m)) if int8 else m)
    result = convert(path)
    assert "RESIZE_NEAREST_NEIGHBOR" not in result.ops and "DEPTH_TO_SPACE" in result.ops
    ops = [op["op_name"] for op in interpreter(result.data)._get_ops_details()]
    assert ops.count("DELEGATE") == 1, ops  # (the resize alone would leave 0 partitions, 2 in int8)
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert parity.ok, parity.describe()


def test_an_int8_average_pool_without_padding_is_a_delegated_depthwise_mean(tmp_path):
    """XNNPACK runs AVERAGE_POOL_2D in float only (DenseNet's int8 transitions fell out of the
    delegate); a depthwise convolution with a 1 / area filter computes the same mean in int8."""
    m, _ = CASES["avgpool_2x2_stride2"]
    path = _save(tmp_path, qdq(m, _feeds(m)))
    result = convert(path)
    assert "AVERAGE_POOL_2D" not in result.ops and "DEPTHWISE_CONV_2D" in result.ops
    assert [op["op_name"] for op in interpreter(result.data)._get_ops_details()].count("DELEGATE") == 1
    for parity in compare(path, result.data, result.graph, feeds=list(_feeds(m, seed=2).values())):
        assert parity.within_one_step >= 0.99, parity.describe()
    assert "AVERAGE_POOL_2D" in convert(_save(tmp_path, m)).ops  # float: XNNPACK takes it as it is
