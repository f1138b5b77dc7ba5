"""Numerical check of a converted TFLite model against onnxruntime on the source ONNX model.

Float models must agree within ``FLOAT_RTOL`` of the output's magnitude. Int8 models must agree
within ``steps`` output quantization steps on at least ``INT8_MIN_WITHIN`` of the output
elements (a float output of an int8 model, computed by float ops after the int8 layers, in steps
of an int8 grid over its own range). The reference is onnxruntime with basic graph optimizations only: each QuantizeLinear /
DequantizeLinear evaluated in float as the ONNX spec defines it, i.e. the exact arithmetic the
graph describes, not one CPU's fused int8 kernels (x86 int8 kernels without VNNI saturate, see
``QuantScheme``'s ``reduce_range``). One op alone gets one step: TFLite's integer kernels round
requantization with fixed-point multipliers, the reference with float ones. Through a network
those rounding differences compound like a random walk, so the export check of a model with L
requantizing ops allows ceil(sqrt(L)) steps (a 53-layer MobileNetV2: 8 steps; measured, the
TFLite and onnxruntime int8 outputs are exact through the first blocks and drift slowly).
A wrong conversion (weights in the wrong order, a wrong scale or layout) is off by much more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import ExportError

FLOAT_RTOL = 1e-4
INT8_MIN_WITHIN = 0.99


@dataclass
class Parity:
    output: str
    max_abs_error: float
    relative_error: float           # max |tflite - onnx| / max |onnx|
    step: float | None = None       # output quantization step (int8 models)
    within_one_step: float | None = None  # fraction of elements within one step
    steps: int = 1                  # steps allowed
    within_steps: float | None = None  # fraction of elements within ``steps`` steps
    inputs: int = 1                 # samples compared
    source: str = "noise"           # "noise" (sample_inputs) or "data" (the caller's samples)

    def tolerance(self) -> str:
        if self.step is None:
            return f"relative error <= {FLOAT_RTOL:g}"
        return f"{100 * INT8_MIN_WITHIN:.0f}% of elements within {self.steps} step(s) of {self.step:.3g}"

    def to_dict(self) -> dict:
        """What the export check measured, as stored in the file (``EXPORT_CHECK_KEY``)."""
        return {"output": self.output, "tolerance": self.tolerance(), "passed": self.ok,
                "inputs": self.inputs, "source": self.source, "max_abs_error": self.max_abs_error,
                "relative_error": self.relative_error, "within_steps": self.within_steps,
                "within_one_step": self.within_one_step}

    @property
    def ok(self) -> bool:
        if self.step is None:
            return self.relative_error <= FLOAT_RTOL
        return self.within_steps >= INT8_MIN_WITHIN

    def describe(self) -> str:
        if self.step is None:
            return f"{self.output}: relative error {self.relative_error:.2e} (limit {FLOAT_RTOL:.0e})"
        return (f"{self.output}: {100 * self.within_steps:.2f}% of elements within {self.steps} "
                f"step(s) of {self.step:.3g} (need {100 * INT8_MIN_WITHIN:.0f}%), "
                f"{100 * self.within_one_step:.2f}% within one, max error {self.max_abs_error:.3g} "
                f"({self.inputs} {'sample(s) of data' if self.source == 'data' else 'noise input(s)'})")


REQUANTIZING_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB",
                    "MUL", "MEAN", "BATCH_MATMUL", "SOFTMAX", "LOGISTIC", "TANH", "HARD_SWISH",
                    "LEAKY_RELU", "PRELU", "AVERAGE_POOL_2D", "QUANTIZE"}


def int8_steps(ops: list[str]) -> int:
    """Steps an int8 model's output may differ by: ceil(sqrt(requantizing ops)), at least 1."""
    return max(1, math.ceil(math.sqrt(sum(op in REQUANTIZING_OPS for op in ops) - ("QUANTIZE" in ops))))


def interpreter(model: bytes | str | Path, threads: int = 1):
    """A LiteRT interpreter (ai-edge-litert, or tflite-runtime when that is what is installed)."""
    from edgekd.runtime.litert import Interpreter, native_log

    kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    with native_log():  # LiteRT's INFO lines stay out of the user's terminal
        interp = Interpreter(num_threads=threads, **kwargs)
        interp.allocate_tensors()
    return interp


def run_tflite(interp, feeds: list[np.ndarray], layout: str = "nchw") -> list[np.ndarray]:
    """Run with float NCHW ``feeds`` (quantized/transposed to the interface as needed)."""
    from edgekd.runtime.litert import native_log

    for detail, x in zip(interp.get_input_details(), feeds):
        if layout == "nhwc" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        if detail["dtype"] != np.float32 and detail["quantization"][0]:
            scale, zp = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.rint(x / scale) + zp, info.min, info.max)
        interp.set_tensor(detail["index"], np.ascontiguousarray(x, detail["dtype"]))
    with native_log():  # the first invoke creates the XNNPACK delegate, which logs
        interp.invoke()
    outs = []
    for detail in interp.get_output_details():
        y = interp.get_tensor(detail["index"])
        if detail["dtype"] != np.float32 and detail["quantization"][0]:
            scale, zp = detail["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        if layout == "nhwc" and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        outs.append(y)
    return outs


def sample_inputs(graph, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs: standard normal, uniform over an int8 input's representable range,
    random booleans, or integers in [0, n) where n is the smallest axis they index (token ids
    into an embedding table), else 0 and 1 (an attention mask)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for name in graph.inputs:
        shape = graph.shape(name)
        quant = graph.act_quant.get(name)
        dtype = np.dtype(graph.dtypes.get(name, np.float32))
        if dtype == np.bool_:
            feeds.append(rng.integers(0, 2, shape).astype(bool))
        elif np.issubdtype(dtype, np.integer):
            feeds.append(rng.integers(0, index_bound(graph, name), shape).astype(dtype))
        elif quant is not None:
            lo = (-128 - quant.zero_point[0]) * quant.scale[0]
            hi = (127 - quant.zero_point[0]) * quant.scale[0]
            feeds.append(rng.uniform(lo, hi, shape).astype(np.float32))
        else:
            feeds.append(rng.standard_normal(shape).astype(np.float32))
    return feeds


def index_bound(graph, name: str) -> int:
    """The size of the smallest axis integer tensor ``name`` indexes by Gather (2 if none)."""
    sizes = [graph.shape(n.inputs[0])[int(n.attr("axis", 0))] for n in graph.consumers(name)
             if n.op == "Gather" and n.inputs[1] == name]
    return min(sizes, default=2)


def compare(onnx_path: str | Path, tflite: bytes | str | Path, graph, *, feeds=None, samples=None,
            layout: str = "nchw", coarse: dict[str, float] | None = None, steps: int = 1) -> list[Parity]:
    """Run both models on ``feeds`` (one input set; default: ``sample_inputs``), or on each input
    set of ``samples`` (real data, one batch-1 sample each), and measure each output's error over
    all of them.

    ``coarse`` maps outputs to the step of a fixed TFLite scale (softmax, logistic: 1/256) that
    is coarser than the ONNX model's own: one step is then measured at that coarser scale.
    """
    import onnxruntime as ort

    runs = list(samples) if samples else [feeds if feeds is not None else sample_inputs(graph)]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # The reference is what the ONNX graph means, QDQ evaluated in float (basic graph rewrites
    # only, e.g. a Relu folded into the QuantizeLinear after it, as TFLite fuses it), not what one
    # CPU's fused int8 kernels make of it: those may saturate (see QuantScheme reduce_range).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    try:
        interp = interpreter(tflite)
        pairs = [(session.run(graph.output_names, dict(zip(names, feed))), run_tflite(interp, feed, layout))
                 for feed in runs]
    except (ValueError, RuntimeError) as err:  # the interpreter rejects the file or its input
        raise ExportError(f"{onnx_path}: LiteRT cannot run the converted model: "
                          f"{str(err).strip().splitlines()[0][:300]}") from None
    result = []
    for k, (name, alias) in enumerate(zip(graph.output_names, graph.outputs)):
        e = np.concatenate([np.asarray(ex[k], np.float32).reshape(-1) for ex, _ in pairs])
        t = np.concatenate([np.asarray(got[k], np.float32).reshape(-1) for _, got in pairs])
        if t.size != e.size:
            shapes = (tuple(pairs[0][1][k].shape), tuple(np.shape(pairs[0][0][k])))
            raise ExportError(f"{onnx_path}: output {name!r} has shape {shapes[0]} in TFLite but "
                              f"{shapes[1]} in onnxruntime")
        err = np.abs(t - e)
        quant = graph.act_quant.get(alias)
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-12)
        p = Parity(name, float(err.max(initial=0.0)), float(err.max(initial=0.0)) / scale,
                   inputs=len(runs), source="data" if samples else "noise")
        if quant is None and graph.quantized:  # float math after int8 layers (a pooled, normalised
            # embedding): int8 rounding upstream shows here; measured in steps of an int8 grid over its range
            step = max(float(e.max(initial=0.0) - e.min(initial=0.0)) / 255, 1e-12)
            p.step, p.within_one_step = step, float((err <= step * 1.001).mean())
            p.steps, p.within_steps = steps, float((err <= steps * step * 1.001).mean())
        elif quant is not None:
            p.step = max(quant.scale[0], (coarse or {}).get(alias, 0.0))
            p.within_one_step = float((err <= p.step * 1.001).mean())
            p.steps, p.within_steps = steps, float((err <= steps * p.step * 1.001).mean())
        result.append(p)
    return result


def check_parity(onnx_path: str | Path, tflite: bytes | str | Path, graph, layout: str = "nchw",
                 coarse: dict[str, float] | None = None, steps: int = 1, samples=None) -> list[Parity]:
    """``compare`` (on ``samples`` of real data when given) and raise ExportError naming the
    outputs that disagree."""
    results = compare(onnx_path, tflite, graph, layout=layout, coarse=coarse, steps=steps, samples=samples)
    bad = [p for p in results if not p.ok]
    if bad:
        raise ExportError(f"{onnx_path}: the TFLite model does not reproduce onnxruntime: "
                          + "; ".join(p.describe() for p in bad))
    return results
