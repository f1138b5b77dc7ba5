"""Several typed inputs in every runtime: two int64 inputs (token ids and a mask) with a named
``sequence`` axis, fed by name or in order, evaluated, and benchmarked from the model's spec."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd.bench import BenchSettings, benchmark
from edgekd.cli import main
from edgekd.errors import ConfigError
from edgekd.runtime import evaluate_session, open_session
from edgekd.tasks.spec import METADATA_KEY

VOCAB, DIM, CLASSES = 50, 8, 3
rng = np.random.default_rng(0)
EMBED = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
HEAD = rng.standard_normal((DIM, CLASSES)).astype(np.float32)
QUICK = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, max_seconds=2.0)


def reference(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The model in numpy: mean over the sequence of masked embeddings, then the head.  # (N, K)"""
    return (EMBED[ids] * mask[..., None].astype(np.float32)).mean(1) @ HEAD


def two_input_model(path, *, named: bool = True, declared: bool = True, pooled: bool = False,
                    length: int | None = None):
    """``input_ids`` and ``attention_mask`` (int64, [batch, sequence]) -> ``logits`` [batch, 3]
    (and ``pooled`` [batch, 8] with ``pooled``), with edgekd's declaration in the metadata;
    ``length``: a fixed sequence length instead."""
    seq = length or ("sequence" if named else None)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", seq]) for n in ("input_ids", "attention_mask")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["emb"], axis=0),  # (N, L, D)
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # (N, L, 1)
             helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
             helper.make_node("ReduceMean", ["masked", "axis1"], ["pooled"], keepdims=0),  # (N, D)
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])]
    if pooled:
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", DIM]))
    graph = helper.make_graph(nodes, "bag", inputs, outputs,
                              [numpy_helper.from_array(EMBED, "embed"), numpy_helper.from_array(HEAD, "head"),
                               numpy_helper.from_array(np.array([2], np.int64), "axis2"),
                               numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if declared:
        helper.set_model_props(model, {METADATA_KEY: json.dumps([
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", seq or "sequence"], "low": 0, "high": VOCAB},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", seq or "sequence"], "low": 0, "high": 2}])})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def to_ir(onnx_path, xml_path):
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    onnx_path = two_input_model(tmp / "bag.onnx")
    from edgekd.export.openvino import onnx_to_openvino

    return {"onnxruntime": onnx_path, "openvino": onnx_to_openvino(onnx_path, tmp / "bag.xml"),
            "openvino-onnx": onnx_path}


def _data(n=6, length=7):
    ids = rng.integers(0, VOCAB, (n, length)).astype(np.int64)
    mask = (rng.random((n, length)) < 0.8).astype(np.int64)
    return ids, mask


@pytest.mark.parametrize("which", ["onnxruntime", "openvino", "openvino-onnx"])
def test_sessions_list_both_typed_inputs_and_run_by_name_or_order(files, which):
    session = open_session(files[which], which.split("-")[0])
    assert [(s.name, s.dtype) for s in session.inputs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert session.inputs[0].shape == ("batch", "sequence")  # named in the file, or in edgekd's declaration
    assert session.inputs[0].high == VOCAB
    ids, mask = _data()
    expected = reference(ids, mask)
    assert np.allclose(session.run({"attention_mask": mask, "input_ids": ids}), expected, atol=1e-5)
    assert np.allclose(session.run((ids[:2], mask[:2])), expected[:2], atol=1e-5)  # another batch
    assert np.allclose(session.run((ids[:, :3], mask[:, :3])), reference(ids[:, :3], mask[:, :3]), atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_evaluate_keeps_token_ids_integer(files, runtime):
    session = open_session(files[runtime], runtime)
    ids, mask = _data(40)
    labels = reference(ids, mask).argmax(1)
    result = evaluate_session(session, (ids, mask), labels, batch_size=16)
    assert result.accuracy == 1.0 and result.logits.shape == (40, CLASSES)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_benchmark_feeds_every_input_from_its_spec_at_the_declared_length(files, runtime):
    result = benchmark(files[runtime], runtime, settings=QUICK, shapes={"sequence": 16})
    assert result.inputs == [f"input_ids int64[1,16] in [0, {VOCAB})", "attention_mask int64[1,16] in [0, 2)"]
    assert result.latency.p50_ms > 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_sequence_axis_without_a_length_is_refused_not_run_at_1(files, runtime):
    with pytest.raises(ConfigError, match=r"input 'input_ids' axis 1 \('sequence'\) is dynamic and no length "
                                          r"was declared; declare it with --shape sequence=N"):
        benchmark(files[runtime], runtime, settings=QUICK)


def test_an_unnamed_dynamic_axis_is_bound_as_input_and_axis(tmp_path):
    path = to_ir(two_input_model(tmp_path / "plain.onnx", named=False, declared=False), tmp_path / "plain.xml")
    with pytest.raises(ConfigError, match=r"axis 1 \(unnamed\).*--shape input_ids:1=N"):
        benchmark(path, "openvino", settings=QUICK)
    result = benchmark(path, "openvino", settings=QUICK, shapes={"input_ids:1": 5, "attention_mask:1": 5},
                       value_ranges={"input_ids": [0, VOCAB]})
    assert result.inputs[0] == f"input_ids int64[1,5] in [0, {VOCAB})"
    assert result.inputs[1] == "attention_mask int64[1,5]"  # no declared range: [0, 2), not shown


def test_cli_bench_refuses_then_takes_a_shape(files, tmp_path):
    profile = tmp_path / "quick.yaml"
    profile.write_text("name: quick\nruntimes: {onnxruntime: {}}\n"
                       "benchmark: {warmup_runs: 2, min_runs: 5, min_seconds: 0.0, max_seconds: 2.0}\n")
    runner = CliRunner()
    refused = runner.invoke(main, ["bench", str(files["onnxruntime"]), "--target", str(profile)])
    assert refused.exit_code == 2 and "'sequence'" in refused.output and "--shape sequence=N" in refused.output
    ok = runner.invoke(main, ["bench", str(files["onnxruntime"]), "--target", str(profile), "--shape", "sequence=16"],
                       catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert "inputs: input_ids int64[1,16]" in ok.output
    bad = runner.invoke(main, ["bench", str(files["onnxruntime"]), "--target", str(profile), "--shape", "sequence"])
    assert bad.exit_code == 2 and "expected NAME=LENGTH" in bad.output


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fetch_all_gives_every_output_and_fetch_the_first(tmp_path, runtime):
    session = open_session(two_input_model(tmp_path / "two_out.onnx", pooled=True), runtime)
    assert [s.name for s in session.outputs] == ["logits", "pooled"]
    ids, mask = _data()
    logits = session.run({"input_ids": ids, "attention_mask": mask})
    assert logits.dtype == np.float32 and np.allclose(logits, reference(ids, mask), atol=1e-5)
    first, pooled = session.fetch_all()
    assert np.array_equal(first, logits)
    assert np.allclose(pooled, (EMBED[ids] * mask[..., None]).mean(1), atol=1e-5)  # (N, D)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_coverage_and_profile_take_the_feed_of_every_input(files, runtime):
    result = benchmark(files[runtime], runtime, settings=QUICK, shapes={"sequence": 16}, profile=True)
    assert result.coverage == 1.0
    assert result.profile and all(row["mean_ms"] >= 0 for row in result.profile)


def test_target_shapes_are_the_defaults_and_shape_overrides_them(files, tmp_path):
    from edgekd.bench import benchmark_on_target
    from edgekd.targets import load_target

    profile = tmp_path / "seq.yaml"
    profile.write_text("name: seq\nruntimes: {onnxruntime: {}}\nshapes: {sequence: 8}\n"
                       "benchmark: {warmup_runs: 2, min_runs: 5, min_seconds: 0.0, max_seconds: 2.0}\n")
    target = load_target(profile)
    assert benchmark_on_target(files["onnxruntime"], target).inputs[0] == f"input_ids int64[1,8] in [0, {VOCAB})"
    wider = benchmark_on_target(files["onnxruntime"], target, shapes={"sequence": 12})
    assert wider.inputs[1] == "attention_mask int64[1,12] in [0, 2)"


@pytest.mark.parametrize("int_inputs, dtype", [("int32", "int32"), ("keep", "int64")])
def test_litert_takes_int32_token_ids_by_default(tmp_path, int_inputs, dtype):
    """TFLite's interface: int64 token inputs become int32 (widened inside the model by one CAST),
    as mobile apps feed them; ``int_inputs="keep"`` keeps int64. Evaluation casts what it feeds."""
    from edgekd.export.tflite import onnx_to_tflite

    path = onnx_to_tflite(two_input_model(tmp_path / "fixed.onnx", length=7), tmp_path / "fixed.tflite",
                          int_inputs=int_inputs)
    session = open_session(path, "litert")
    assert [(s.name, s.dtype) for s in session.inputs] == [("input_ids", dtype), ("attention_mask", dtype)]
    ids, mask = _data(12)
    result = evaluate_session(session, (ids, mask), reference(ids, mask).argmax(1))
    assert result.accuracy == 1.0 and np.allclose(result.logits, reference(ids, mask), atol=1e-5)
