"""Small ONNX graphs, one per supported op (and the variants that take other code paths), plus
``qdq`` to turn a float graph into a fully quantized QDQ graph the way a QAT export would.

Each case is ``(onnx.ModelProto, expected TFLite op or None)``; inputs are static, float32 unless
a case types them (token ids and masks: int64 in [0, 4), bool).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
X4 = [1, 4, 8, 8]


def _w(*shape, scale=0.3):
    return RNG.standard_normal(shape).astype(np.float32) * scale


def model(nodes, inputs, output_shape, inits=(), opset=17, output="y"):
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, spec[1] if len(spec) > 1 else TensorProto.FLOAT, spec[0])
         for n, *spec in inputs],  # (name, shape) or (name, shape, ONNX element type)
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def unary(op, shape=X4, opset=17, inits=(), extra_inputs=(), **attrs):
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], **attrs)
    return model([node], [("x", shape)], None, inits, opset)


def conv(w_shape, x_shape=X4, bias=True, **attrs):
    inits = [("w", _w(*w_shape))] + ([("b", _w(w_shape[0]))] if bias else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)
    return model([node], [("x", x_shape)], None, inits)


def conv_then(op_nodes, inits=(), w_out=6):
    """Conv (4 -> w_out channels) followed by ``op_nodes`` reading "c" and writing "y"."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), *op_nodes]
    return model(nodes, [("x", X4)], None, [("w", _w(w_out, 4, 3, 3)), ("b", _w(w_out)), *inits])


def cases() -> dict[str, tuple[onnx.ModelProto, str | None]]:
    c: dict[str, tuple[onnx.ModelProto, str | None]] = {}
    # convolution
    c["conv"] = (conv([6, 4, 3, 3], pads=[1, 1, 1, 1]), "CONV_2D")
    c["conv_stride2_pytorch_pads"] = (conv([6, 4, 3, 3], pads=[1, 1, 1, 1], strides=[2, 2]), "CONV_2D")
    c["conv_same_upper_stride2"] = (conv([6, 4, 3, 3], auto_pad="SAME_UPPER", strides=[2, 2]), "CONV_2D")
    c["conv_dilated"] = (conv([6, 4, 3, 3], pads=[2, 2, 2, 2], dilations=[2, 2]), "CONV_2D")
    c["conv_valid_5x3_nobias"] = (conv([6, 4, 5, 3], bias=False), "CONV_2D")
    c["conv_depthwise"] = (conv([8, 1, 3, 3], group=4, pads=[1, 1, 1, 1]), "DEPTHWISE_CONV_2D")
    c["conv_grouped"] = (conv([6, 2, 3, 3], group=2, pads=[1, 1, 1, 1]), "CONV_2D")
    c["conv_relu_fused"] = (conv_then([helper.make_node("Relu", ["c"], ["y"])]), "CONV_2D")
    c["conv_relu6_fused"] = (conv_then([helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                                       [("lo", np.float32(0)), ("hi", np.float32(6))]), "CONV_2D")
    c["conv_transpose"] = (model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2],
                                                   pads=[1, 1, 1, 1], output_padding=[1, 1])],
                                 [("x", X4)], None, [("w", _w(4, 3, 3, 3)), ("b", _w(3))]), "TRANSPOSE_CONV")
    c["conv_transpose_valid"] = (model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
                                       [("x", X4)], None, [("w", _w(4, 3, 2, 2))]), "TRANSPOSE_CONV")
    c["conv_1d_lifted"] = (conv([6, 4, 3], x_shape=[1, 4, 16], pads=[1, 1], strides=[2]), "CONV_2D")
    c["conv_1d_stack_no_transpose_inside"] = (model(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1])], [("x", [1, 4, 16])], None,
        [("w1", _w(6, 4, 3)), ("w2", _w(5, 6, 3))]), "CONV_2D")
    c["lrn"] = (unary("LRN", size=3, alpha=1e-3, beta=0.75, bias=1.5), "LOCAL_RESPONSE_NORMALIZATION")
    c["conv_batchnorm_folded"] = (conv_then(
        [helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["y"])],
        [("g", _w(6) + 1), ("be", _w(6)), ("m", _w(6)), ("v", np.abs(_w(6)) + 0.5)]), "CONV_2D")
    # dense
    c["gemm"] = (model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [("x", [2, 16])], None,
                       [("w", _w(8, 16)), ("b", _w(8))]), "FULLY_CONNECTED")
    c["gemm_alpha_beta_untransposed"] = (model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0)], [("x", [2, 16])], None,
        [("w", _w(16, 8)), ("b", _w(1, 8))]), "FULLY_CONNECTED")
    c["matmul_const_3d"] = (model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [2, 5, 16])], None,
                                  [("w", _w(16, 8))]), "FULLY_CONNECTED")
    c["gemm_two_inputs_alpha_bias"] = (model([helper.make_node("Gemm", ["x", "z", "b"], ["y"], alpha=0.5,
                                                                  transB=1)],
                                             [("x", [3, 6]), ("z", [4, 6])], None, [("b", _w(4))]), "BATCH_MATMUL")
    c["matmul_two_inputs"] = (model([helper.make_node("MatMul", ["x", "z"], ["y"])],
                                    [("x", [2, 4, 6]), ("z", [2, 6, 3])], None), "BATCH_MATMUL")
    c["flatten_conv_into_gemm"] = (conv_then(
        [helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("Gemm", ["f", "gw"], ["y"], transB=1)],
        [("gw", _w(5, 6 * 8 * 8, scale=0.05))]), "FULLY_CONNECTED")
    # element-wise
    c["add_channel_const"] = (unary("Add", inits=[("k", _w(4, 1, 1))], extra_inputs=["k"]), "ADD")
    c["sub_const_minus_x"] = (model([helper.make_node("Sub", ["k", "x"], ["y"])], [("x", X4)], None,
                                    [("k", _w(8))]), "SUB")
    c["mul_two_inputs"] = (model([helper.make_node("Mul", ["x", "z"], ["y"])], [("x", X4), ("z", X4)], None), "MUL")
    c["add_conv_residual"] = (conv_then([helper.make_node("Add", ["c", "x"], ["y"])], w_out=4), "ADD")
    c["div_by_const"] = (unary("Div", inits=[("k", np.float32(2.5))], extra_inputs=["k"]), "MUL")
    c["sum_two_inputs"] = (model([helper.make_node("Sum", ["x", "z"], ["y"])], [("x", X4), ("z", X4)], None), "ADD")
    c["max_two_inputs"] = (model([helper.make_node("Max", ["x", "z"], ["y"])], [("x", X4), ("z", X4)], None), "MAXIMUM")
    c["min_with_const"] = (model([helper.make_node("Min", ["x", "k"], ["y"])], [("x", X4)], None,
                                 [("k", _w(8))]), "MINIMUM")
    c["relu"] = (unary("Relu"), "RELU")
    c["clip_relu6"] = (unary("Clip", inits=[("lo", np.float32(0)), ("hi", np.float32(6))],
                             extra_inputs=["lo", "hi"]), "RELU6")
    c["clip_general"] = (unary("Clip", inits=[("lo", np.float32(-0.5)), ("hi", np.float32(0.7))],
                               extra_inputs=["lo", "hi"]), "MINIMUM")
    c["leaky_relu"] = (unary("LeakyRelu", alpha=0.1), "LEAKY_RELU")
    c["prelu"] = (unary("PRelu", inits=[("s", np.abs(_w(4, 1, 1)))], extra_inputs=["s"]), "PRELU")
    c["sigmoid"] = (unary("Sigmoid"), "LOGISTIC")
    c["tanh"] = (unary("Tanh"), "TANH")
    c["hard_sigmoid"] = (unary("HardSigmoid", alpha=0.2, beta=0.5), "ADD")
    c["hard_swish"] = (unary("HardSwish"), "HARD_SWISH")
    c["softmax_2d"] = (unary("Softmax", shape=[3, 10], axis=-1), "SOFTMAX")
    c["softmax_channels_4d"] = (unary("Softmax", axis=1), "SOFTMAX")
    c["batchnorm_standalone"] = (model([helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["y"])],
                                       [("x", X4)], None, [("g", _w(4) + 1), ("be", _w(4)), ("m", _w(4)),
                                                          ("v", np.abs(_w(4)) + 0.5)]), "MUL")
    # pooling and reductions
    c["maxpool_k3s2_pad1"] = (unary("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), "MAX_POOL_2D")
    c["maxpool_ceil_mode"] = (unary("MaxPool", shape=[1, 4, 7, 7], kernel_shape=[2, 2], strides=[2, 2],
                                    ceil_mode=1), "MAX_POOL_2D")
    c["avgpool_exclude_pad"] = (unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "AVERAGE_POOL_2D")
    c["avgpool_include_pad"] = (unary("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                      count_include_pad=1), "AVERAGE_POOL_2D")
    c["avgpool_exclude_pad_stride2"] = (unary("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[1, 1, 1, 1]), "AVERAGE_POOL_2D")
    c["maxpool_1d_lifted"] = (unary("MaxPool", shape=[1, 4, 15], kernel_shape=[3], strides=[2]), "MAX_POOL_2D")
    c["global_max_pool"] = (unary("GlobalMaxPool"), "REDUCE_MAX")
    c["avgpool_2x2_stride2"] = (unary("AveragePool", kernel_shape=[2, 2], strides=[2, 2]), "AVERAGE_POOL_2D")
    c["global_average_pool"] = (unary("GlobalAveragePool"), "MEAN")
    c["reduce_mean_hw"] = (unary("ReduceMean", axes=[2, 3], keepdims=0, opset=17), "MEAN")
    c["reduce_sum_sequence"] = (unary("ReduceSum", opset=17, inits=[("ax", np.asarray([2]))], extra_inputs=["ax"],
                                      keepdims=0), "SUM")
    c["reduce_mean_channels_input_axes"] = (unary("ReduceMean", opset=18, inits=[("ax", np.asarray([1]))],
                                                  extra_inputs=["ax"]), "MEAN")
    # data movement
    c["reshape"] = (unary("Reshape", inits=[("s", np.asarray([1, 4, -1]))], extra_inputs=["s"]), "RESHAPE")
    c["flatten"] = (unary("Flatten", axis=1), "RESHAPE")
    c["transpose_to_nhwc"] = (conv_then([helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]), None)
    c["transpose_generic"] = (unary("Transpose", perm=[0, 3, 1, 2]), "TRANSPOSE")
    c["concat_channels"] = (conv_then([helper.make_node("Concat", ["c", "x"], ["y"], axis=1)]), "CONCATENATION")
    c["pad_constant"] = (unary("Pad", inits=[("p", np.asarray([0, 0, 1, 2, 0, 0, 2, 1]))], extra_inputs=["p"]), "PAD")
    c["pad_value"] = (unary("Pad", inits=[("p", np.asarray([0, 0, 1, 1, 0, 0, 1, 1])), ("v", np.float32(0.5))],
                            extra_inputs=["p", "v"]), "PADV2")
    c["pad_reflect"] = (unary("Pad", mode="reflect", inits=[("p", np.asarray([0, 0, 2, 1, 0, 0, 1, 2]))],
                              extra_inputs=["p"]), "MIRROR_PAD")
    c["squeeze"] = (unary("Squeeze", shape=[1, 4, 1, 8], inits=[("a", np.asarray([2]))], extra_inputs=["a"]), "RESHAPE")
    c["unsqueeze"] = (unary("Unsqueeze", shape=[2, 8], inits=[("a", np.asarray([1, 3]))], extra_inputs=["a"]), "RESHAPE")
    c["slice_steps"] = (unary("Slice", inits=[("st", np.asarray([1, 0])), ("en", np.asarray([7, 100])),
                                              ("ax", np.asarray([2, 3])), ("sp", np.asarray([2, 3]))],
                              extra_inputs=["st", "en", "ax", "sp"]), "STRIDED_SLICE")
    c["slice_reverse"] = (unary("Slice", inits=[("st", np.asarray([-1])), ("en", np.asarray([-100])),
                                                ("ax", np.asarray([3])), ("sp", np.asarray([-1]))],
                                extra_inputs=["st", "en", "ax", "sp"]), "STRIDED_SLICE")
    # GELU: torch's exact-GELU pattern below opset 20 (fused into one GELU), and the opset-20 op
    c["gelu_erf_pattern"] = (conv_then([
        helper.make_node("Div", ["c", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"])],
        [("r2", np.float32(np.sqrt(2))), ("one", np.float32(1)), ("half", np.float32(0.5))]), "GELU")
    c["gelu_opset20"] = (model([helper.make_node("Gelu", ["x"], ["y"])], [("x", X4)], None, opset=20), "GELU")
    c["gelu_tanh_opset20"] = (model([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], [("x", X4)],
                                    None, opset=20), "GELU")
    # LayerNormalization over the last axis (transformer tokens) and over C, H, W after a conv
    tokens = [1, 6, 16]
    c["layer_norm_tokens"] = (model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5)],
                                    [("x", tokens)], None, [("g", _w(16)), ("b", _w(16))]), "RSQRT")
    c["layer_norm_chw_no_bias"] = (conv_then([helper.make_node("LayerNormalization", ["c", "g"], ["y"], axis=1)],
                                             [("g", _w(6, 8, 8))]), "RSQRT")
    # LayerNormalization as torch exports it below opset 17: ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add
    c["layer_norm_opset13_pattern"] = (model([
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]), helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
        helper.make_node("Add", ["ng", "b"], ["y"])], [("x", tokens)], None,
        [("two", np.float32(2.0)), ("eps", np.float32(1e-5)), ("g", _w(16)), ("b", _w(16))], opset=13), "SQRT")
    c["pow_general"] = (model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Pow", ["r", "e"], ["y"])],
                              [("x", X4)], None, [("e", np.float32(1.5))]), "POW")
    # Gather at constant indices: a class token (scalar index) and a channel pick (vector)
    c["gather_class_token"] = (model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], [("x", [1, 6, 16])],
                                     None, [("i", np.asarray(0, np.int64))]), "GATHER")
    c["gather_channels_after_conv"] = (conv_then([helper.make_node("Gather", ["c", "i"], ["y"], axis=1)],
                                                 [("i", np.asarray([5, 0, -1], np.int64))]), "GATHER")
    # F.normalize(x, dim=1): ReduceL2, Clip, Shape, Expand, Div; and an Expand to a constant shape
    c["l2_normalize_pattern"] = (conv_then([
        helper.make_node("ReduceL2", ["c"], ["n"], axes=[1], keepdims=1),
        helper.make_node("Clip", ["n", "eps"], ["nc"]), helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Expand", ["nc", "s"], ["e"]), helper.make_node("Div", ["c", "e"], ["y"])],
        [("eps", np.float32(1e-12))]), "SQRT")
    c["lp_normalization_channels"] = (conv_then([helper.make_node("LpNormalization", ["c"], ["y"], axis=1, p=2)]),
                                      "L2_NORMALIZATION")
    c["lp_normalization_tokens"] = (model([helper.make_node("LpNormalization", ["x"], ["y"], axis=-1, p=2)],
                                          [("x", tokens)], None), "L2_NORMALIZATION")
    c["expand_channel_mean"] = (conv_then([
        helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Expand", ["m", "shape"], ["e"]), helper.make_node("Add", ["c", "e"], ["y"])],
        [("shape", np.asarray([1, 6, 8, 8], np.int64))]), "BROADCAST_TO")
    c["cast_float_to_int_and_back"] = (model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
                                              helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)],
                                             [("x", X4)], None), "CAST")
    c["cast_float_to_float"] = (conv_then([helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)]), "CONV_2D")
    # Split (x.split(sizes), chunk): parts recombined so each one reaches the output
    c["split_sizes_channels"] = (conv_then([
        helper.make_node("Split", ["c", "sz"], ["s1", "s2"], axis=1),
        helper.make_node("Concat", ["s2", "s1"], ["y"], axis=1)], [("sz", np.asarray([2, 4]))]), "STRIDED_SLICE")
    c["split_equal_width"] = (conv_then([
        helper.make_node("Split", ["c"], ["s1", "s2"], axis=3),
        helper.make_node("Add", ["s1", "s2"], ["y"])]), "STRIDED_SLICE")
    c["split_num_outputs_opset18"] = (model([
        helper.make_node("Split", ["x"], ["s1", "s2", "s3"], axis=2, num_outputs=3),
        helper.make_node("Concat", ["s3", "s1", "s2"], ["y"], axis=2)], [("x", [1, 4, 8, 8])], None, opset=18),
        "STRIDED_SLICE")
    scales = np.asarray([1, 1, 2, 2], np.float32)
    c["resize_nearest"] = (unary("Resize", inits=[("sc", scales)], extra_inputs=["", "sc"], mode="nearest",
                                 coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                           "DEPTH_TO_SPACE")  # (2x: copies and DEPTH_TO_SPACE, which XNNPACK delegates)
    c["resize_nearest_unequal_factors"] = (unary("Resize", inits=[("sc", np.asarray([1, 1, 2, 3], np.float32))],
                                                 extra_inputs=["", "sc"], mode="nearest",
                                                 coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                                           "RESIZE_NEAREST_NEIGHBOR")
    c["resize_bilinear_half_pixel"] = (unary("Resize", inits=[("sc", scales)], extra_inputs=["", "sc"],
                                             mode="linear"), "RESIZE_BILINEAR")
    c["resize_bilinear_align_corners"] = (unary("Resize", inits=[("sz", np.asarray([1, 4, 13, 11]))],
                                                extra_inputs=["", "", "sz"], mode="linear",
                                                coordinate_transformation_mode="align_corners"),
                                          "RESIZE_BILINEAR")
    c["upsample_opset9"] = (unary("Upsample", opset=9, inits=[("sc", scales)], extra_inputs=["sc"]),
                            "DEPTH_TO_SPACE")
    c["identity_dropout"] = (model([helper.make_node("Identity", ["x"], ["i"]),
                                    helper.make_node("Dropout", ["i"], ["d", "unused_mask"]),
                                    helper.make_node("Relu", ["d"], ["y"])], [("x", X4)], None), "RELU")
    c["constant_of_shape_folded"] = (model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("ConstantOfShape", ["s"], ["k"], value=numpy_helper.from_array(np.asarray([0.25], np.float32))),
         helper.make_node("Add", ["x", "k"], ["y"])], [("x", X4)], None), "ADD")
    # integer inputs: token ids into an embedding table, attention masks made into boolean and
    # additive masks (the ops a transformer exports for ``attention_mask``)
    ids, mask, x = ("ids", [1, 6], TensorProto.INT64), ("m", [1, 6], TensorProto.INT64), ("x", [1, 6, 8])
    c["embedding_lookup"] = (model([helper.make_node("Gather", ["table", "ids"], ["y"])], [ids], None,
                                   [("table", _w(10, 8))]), "GATHER")
    c["gather_at_runtime_indices"] = (model([helper.make_node("Gather", ["x", "ids"], ["y"], axis=1)], [x, ids],
                                            None), "GATHER")
    c["mask_where_and"] = (model([
        helper.make_node("Cast", ["m"], ["b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["b", "axis"], ["u"]),
        helper.make_node("Greater", ["x", "half"], ["k"]), helper.make_node("And", ["u", "k"], ["a"]),
        helper.make_node("Where", ["a", "x", "low"], ["y"])], [x, mask], None,
        [("axis", np.asarray([2])), ("half", np.float32(0.5)), ("low", np.float32(-1.0))]), "SELECT_V2")
    c["mask_comparisons_or_xor_not"] = (model([
        helper.make_node("Equal", ["m", "one"], ["e"]), helper.make_node("Unsqueeze", ["e", "axis"], ["u"]),
        helper.make_node("Less", ["x", "zero"], ["lt"]), helper.make_node("LessOrEqual", ["x", "half"], ["le"]),
        helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]), helper.make_node("Or", ["u", "lt"], ["o"]),
        helper.make_node("Xor", ["o", "le"], ["xo"]), helper.make_node("Not", ["ge"], ["n"]),
        helper.make_node("And", ["xo", "n"], ["c"]), helper.make_node("Where", ["c", "zero", "x"], ["y"])],
        [x, mask], None, [("axis", np.asarray([2])), ("one", np.asarray(1, np.int64)),
                          ("zero", np.float32(0.0)), ("half", np.float32(0.5))]), "LOGICAL_NOT")
    c["mask_cast_to_float_times_x"] = (model([
        helper.make_node("Unsqueeze", ["m", "axis"], ["u"]), helper.make_node("Cast", ["u"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "f"], ["y"])], [x, mask], None, [("axis", np.asarray([2]))]), "CAST")
    return c


# ---------------------------------------------------------------------------------------------
QUANTIZED_WEIGHT_INPUT = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, 1)}


FIXED_OUTPUT = {"Softmax": (1 / 256, -128), "Sigmoid": (1 / 256, -128), "Tanh": (1 / 128, 0),
                "LpNormalization": (1 / 128, 0)}
SHARED_SCALE = {"MaxPool", "AveragePool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                "Pad", "Slice", "Resize", "Identity", "Dropout"}


def qdq(float_model: onnx.ModelProto, feeds: dict[str, np.ndarray], spec: bool = True) -> onnx.ModelProto:
    """Quantize every activation (int8, asymmetric, per tensor, min/max of ``feeds``) and every
    Conv/ConvTranspose/Gemm/MatMul constant weight (int8, symmetric, per output channel) with
    QuantizeLinear/DequantizeLinear pairs: the shape of a QAT model's ONNX export.

    With ``spec`` the scales follow the TFLite quantization spec as a target-aware quantizer's
    would: fixed output scales for softmax/logistic/tanh, input scale kept by pooling and
    data movement."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(float_model)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inits.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"})
    activations = list(dict.fromkeys([i.name for i in g.input] + [o for n in g.node for o in n.output]))
    probe = onnx.ModelProto()
    probe.CopyFrom(float_model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(a) for a in activations)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    values = dict(zip(activations, ort.InferenceSession(probe.SerializeToString(), so).run(None, feeds)))
    new_nodes, extra = [], []
    rename, params = {}, {}
    producer = {o: n for n in g.node for o in n.output}
    for a in activations:
        if values[a].dtype != np.float32 or a in inits:
            continue
        node = producer.get(a)
        if spec and node is not None and node.op_type in FIXED_OUTPUT:
            scale, zp = FIXED_OUTPUT[node.op_type]
        elif spec and node is not None and node.op_type in SHARED_SCALE and node.input[0] in params:
            scale, zp = params[node.input[0]]
        else:
            lo, hi = min(float(values[a].min()), 0.0), max(float(values[a].max()), 0.0)
            scale = (hi - lo) / 255 or 1.0
            zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
        params[a] = (scale, zp)
        extra += [numpy_helper.from_array(np.float32(scale), f"{a}/s"), numpy_helper.from_array(np.int8(zp), f"{a}/z")]
        rename[a] = f"{a}/dq"
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        spec = QUANTIZED_WEIGHT_INPUT.get(node.op_type)
        if spec and node.input[spec[0]] in inits:
            w_name = node.input[spec[0]]
            w = inits[w_name]
            axis = spec[1]
            if axis is None:  # Gemm: output channels are rows when transB=1, else columns
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            peak = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
            s = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8)
            extra += [numpy_helper.from_array(q, f"{w_name}/q"), numpy_helper.from_array(s, f"{w_name}/ws"),
                      numpy_helper.from_array(np.zeros_like(s, np.int8), f"{w_name}/wz")]
            dq = f"{w_name}/{node.name or node.output[0]}/wdq"
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{w_name}/q", f"{w_name}/ws", f"{w_name}/wz"],
                                              [dq], axis=axis))
            node.input[spec[0]] = dq
    ordered = []
    for a in [i.name for i in g.input]:
        if a in rename:
            ordered += _qdq_pair(a, rename[a])
    for node in g.node:
        ordered.append(node)
        for o in node.output:
            if o in rename:
                ordered += _qdq_pair(o, rename[o])
    for o in g.output:  # graph outputs are read back through their DequantizeLinear
        if o.name in rename:
            o.name = rename[o.name]
    del g.node[:]
    g.node.extend(new_nodes + ordered)
    g.initializer.extend(extra)
    onnx.checker.check_model(m)
    return m


def _qdq_pair(name: str, out: str):
    return [helper.make_node("QuantizeLinear", [name, f"{name}/s", f"{name}/z"], [f"{name}/q"]),
            helper.make_node("DequantizeLinear", [f"{name}/q", f"{name}/s", f"{name}/z"], [out])]
