"""Detection through edgekd with real YOLO heads: train, quantize, export without NMS, compare boxes.

ultralytics' YOLOv8n and YOLO11n (built from their YAML, random init, one input channel, 10
classes; no download) are trained on the built-in ``digits-detect`` data at 64x64 with edgekd's
``object-detection`` task (its FCOS-style loss on the decoded head), then quantized to int8 for
``x86-onnxruntime`` and ``arm-litert-xnnpack`` (PTQ, and QAT with the float model as teacher on
x86), and exported without NMS to ONNX, OpenVINO IR and TFLite. Each artifact runs on the 400
held-out canvases in its runtime; its two outputs go through the same post-processing as
PyTorch's (``edgekd.tasks.boxes``) and are compared with the **float PyTorch model**: detection
agreement (Dice of matched detections: same class, IoU >= 0.5, score >= 0.25), the largest box
difference (pixels) and score difference, and mAP@0.5 against the ground truth. Latency float vs
int8 per runtime at batch 1, 1 thread, timed back to back. Last, the built-in ``det-student``
(42k parameters) is distilled from the trained YOLOv8n and compared with the same student trained
on labels alone.

torchvision on this machine is a CUDA build without its C++ ops under the CPU torch;
``model_zoo.nms_standin`` registers a pure-torch ``torchvision::nms`` when it is missing (so that
ultralytics imports) and the output says so. Nothing here calls NMS inside a model.

    python benchmarks/detection.py [--epochs 30] [--models yolov8n,yolo11n]

Writes ``benchmarks/results/detection.json`` and ends with a ``SUMMARY`` line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import model_zoo  # noqa: E402  (nms_standin, machine, latency_ms)

RESULTS = Path(__file__).parent / "results" / "detection.json"
TARGETS = ("x86-onnxruntime", "arm-litert-xnnpack")
FORMATS = ("onnx", "openvino", "tflite")
IMAGE = 64
CHECK_SAMPLES = 32  # test canvases the TFLite export check runs on (edgekd.pipeline.phases does the same)
YAMLS = {"yolov8n": "yolov8n.yaml", "yolo11n": "yolo11n.yaml"}


def yolo_head(yaml: str, in_channels: int, num_classes: int):
    """An ultralytics DetectionModel as an edgekd detection head: (boxes xyxy (N, A, 4), scores (N, A, K)).

    The Detect layer decodes its boxes in training too (``training`` stays False on that one
    module; its convolutions and BatchNorms train), so edgekd's loss reads the same decoded boxes
    the exported head gives; ``xyxy`` makes it decode corners instead of centre/size."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    class YoloHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = DetectionModel(yaml, ch=in_channels, nc=num_classes, verbose=False)
            detect = self.model.model[-1]
            detect.export, detect.format, detect.xyxy = True, "onnx", True

        def train(self, mode: bool = True):
            super().train(mode)
            self.model.model[-1].training = False
            return self

        def forward(self, x):
            y = self.model(x)  # (N, 4 + K, A)
            return y[:, :4].transpose(1, 2), y[:, 4:].transpose(1, 2)

    return YoloHead()


def evaluate(path: Path, runtime: str, target, task, data, float_out: np.ndarray, sim_out: np.ndarray | None):
    from edgekd.runtime import evaluate_session, open_session

    session = open_session(path, runtime, threads=1, options=target.runtime_options(runtime) if target else None)
    x, y = data.x_test.numpy(), data.y_test.numpy()
    result = evaluate_session(session, x, y, task=task, reference_outputs=float_out)
    row = {"map50": round(task.metrics(result.logits, y)["map50"], 4),
           "agreement_vs_float": round(result.agreement, 4),
           "box_max_abs_px_vs_float": round(result.parity["boxes"]["max_abs"], 3),
           "score_max_abs_vs_float": round(result.parity["scores"]["max_abs"], 4),
           "bytes": sum(p.stat().st_size for p in [path, *([path.with_suffix(".bin")] if path.suffix == ".xml" else [])])}
    if sim_out is not None:
        row["agreement_vs_simulation"] = round(task.agreement(result.logits, sim_out), 4)
    return row


def export_all(model, out: Path, name: str, task, data, quantized: bool, scheme) -> dict[str, Path]:
    from edgekd.export import export
    from edgekd.recipe import ExportConfig

    options = ExportConfig().options(quantized=quantized, scheme=scheme)
    samples = data.x_test[:CHECK_SAMPLES].numpy()
    options["tflite"]["check_samples"] = [[x[None]] for x in samples]  # as a run checks: on test data
    artifacts = export(model.eval(), list(FORMATS), out, name, task.input_spec(data), outputs=task.output_spec(data),
                       options=options)
    return {a.format: a.path for a in artifacts}


def run_model(name: str, epochs: int, qat_epochs: int, task, data, out: Path) -> tuple[dict, object]:
    import torch

    from edgekd.distill.api import DistillConfig, train_scratch
    from edgekd.distill.trainer import TrainConfig, predict
    from edgekd.quant.finetune import qat_finetune
    from edgekd.quant.ptq import PTQConfig, post_training_quantize
    from edgekd.quant.qat import QATConfig
    from edgekd.quant.validate import validate_onnx
    from edgekd.targets import load_target

    torch.manual_seed(0)
    model = yolo_head(YAMLS[name], 1, data.num_classes)
    record = {"model": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    saved = Path(tempfile.gettempdir()) / "edgekd-detection-bench" / f"{name}-{epochs}-{data.fingerprint}.pt"
    if saved.is_file():  # a rerun (e.g. after a later step failed) reuses the trained weights
        state = torch.load(saved, weights_only=True)
        model.load_state_dict(state["model"])
        record["train"] = {**state["train"], "reused": str(saved)}
    else:
        tick = time.perf_counter()
        fit = train_scratch(model, data, TrainConfig(epochs=epochs, lr=2e-3), task=task, desc=f"{name} (labels)")
        record["train"] = {"epochs": epochs, "best_epoch": fit.best_epoch, "val_map50": round(fit.best_val_accuracy, 4),
                           "seconds": round(time.perf_counter() - tick)}
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "train": record["train"]}, saved)
    model.eval()
    float_out = predict(model, data.x_test, task=task).numpy()
    record["pytorch_map50"] = round(task.metrics(float_out, data.y_test.numpy())["map50"], 4)
    record["detections_per_image"] = round(float(np.mean(task.predictions(float_out))), 2)  # what agreement counts
    files = {"float": export_all(model, out, f"{name}-float", task, data, False, None)}
    record["float"] = {fmt: evaluate(path, model_zoo_runtime(fmt), None, task, data, float_out, None)
                       for fmt, path in files["float"].items()}
    calib = data.calibration_batches(32, 8)
    for target_name in TARGETS:
        config = QATConfig(target=target_name).resolved()
        target = load_target(target_name)
        variants = {"ptq": lambda: post_training_quantize(model, calib, PTQConfig(observer="minmax"), config)}
        if target_name == TARGETS[0]:
            variants["qat"] = lambda: qat_finetune(model, model, data, DistillConfig(), QATConfig.from_dict(
                {**config.to_dict(), "epochs": qat_epochs, "lr": 1e-4, "freeze_observers_epoch": 1}),
                task=task, batch_size=32)[0]
        for method, build in variants.items():
            key = f"{method}-{target_name}"
            tick = time.perf_counter()
            int8 = build()
            sim_out = predict(int8, data.x_test, task=task).numpy()
            entry = {"seconds": round(time.perf_counter() - tick, 1),
                     "pytorch_simulation_map50": round(task.metrics(sim_out, data.y_test.numpy())["map50"], 4),
                     "simulation_agreement_vs_float": round(task.agreement(sim_out, float_out), 4)}
            files[key] = export_all(int8, out, f"{name}-{key}", task, data, True, config.scheme)
            validation = validate_onnx(files[key]["onnx"], config.scheme)
            entry["validate"] = "conforms" if validation.passed else f"{len(validation.violations)} violations"
            for fmt, path in files[key].items():
                entry[fmt] = evaluate(path, model_zoo_runtime(fmt), target, task, data, float_out, sim_out)
            record[key] = entry
    feed = (data.x_test[:1].numpy(),)
    latency = {}
    for fmt in FORMATS:  # float and each int8 variant back to back, runtime by runtime
        for variant, paths in files.items():
            latency.setdefault(variant, {})[fmt] = round(model_zoo.latency_ms(paths[fmt], feed, min_runs=50,
                                                                               min_seconds=1.0), 3)
    record["latency_ms"] = latency
    return record, model


def model_zoo_runtime(fmt: str) -> str:
    return {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}[fmt]


def distil_student(teacher, epochs: int, task, data) -> dict:
    """det-student from labels alone vs distilled from the YOLO teacher, same init and epochs."""
    import torch

    from edgekd.distill.api import DistillConfig, distill, train_scratch
    from edgekd.distill.trainer import TrainConfig, predict
    from edgekd.models import count_parameters, create_model

    torch.manual_seed(0)
    init = create_model("det-student", **task.model_args(data))
    scores = {"params": count_parameters(init), "epochs": epochs}
    for how in ("labels", "distilled"):
        student = copy.deepcopy(init)
        tick = time.perf_counter()
        if how == "labels":
            train_scratch(student, data, TrainConfig(epochs=epochs), task=task, desc="det-student (labels)")
        else:
            distill(student, teacher.eval(), data, DistillConfig(), TrainConfig(epochs=epochs), task=task,
                    desc="det-student (KD from yolov8n)")
        out = predict(student, data.x_test, task=task).numpy()
        scores[how] = {"map50": round(task.metrics(out, data.y_test.numpy())["map50"], 4),
                       "seconds": round(time.perf_counter() - tick)}
    return scores


def table(records: list[dict]) -> str:
    head = f"{'model':8} {'variant':26} {'fmt':8} {'mAP50':>6} {'agree':>6} {'box px':>7} {'score':>6} {'ms':>7}"
    rows = [head, "-" * len(head)]
    for r in records:
        for variant in ["float", *[k for k in r if k.startswith(("ptq-", "qat-"))]]:
            for fmt in FORMATS:
                row = r[variant].get(fmt)
                if not row:
                    continue
                ms = r["latency_ms"].get(variant, {}).get(fmt)
                rows.append(f"{r['model']:8} {variant:26} {fmt:8} {row['map50']:6.3f} {row['agreement_vs_float']:6.3f} "
                            f"{row['box_max_abs_px_vs_float']:7.2f} {row['score_max_abs_vs_float']:6.3f} {ms:7.3f}")
    return "\n".join(rows)


def summarize(records: list[dict], student: dict | None) -> dict:
    int8 = [(r, k, f) for r in records for k in r if k.startswith(("ptq-", "qat-")) for f in FORMATS if f in r[k]]
    agreements = [r[k][f]["agreement_vs_float"] for r, k, f in int8]
    drops = [r["pytorch_map50"] - r[k][f]["map50"] for r, k, f in int8]
    speed = {}
    for fmt, variant in (("onnx", f"ptq-{TARGETS[0]}"), ("openvino", f"ptq-{TARGETS[0]}"), ("tflite", f"ptq-{TARGETS[1]}")):
        ratios = [r["latency_ms"]["float"][fmt] / r["latency_ms"][variant][fmt] for r in records]
        speed[fmt] = round(statistics.median(ratios), 2) if ratios else None
    summary = {
        "models": len(records),
        **{f"{r['model']}_map50": r["pytorch_map50"] for r in records},
        "int8_artifacts": len(int8),
        "int8_variants_conform": f"{sum(r[k]['validate'] == 'conforms' for r in records for k in r if k.startswith(('ptq-', 'qat-')))}"
                                 f"/{sum(k.startswith(('ptq-', 'qat-')) for r in records for k in r)}",
        "int8_agreement_vs_float_min": min(agreements) if agreements else None,
        "int8_agreement_vs_float_median": round(statistics.median(agreements), 4) if agreements else None,
        "int8_map50_drop_max": round(max(drops), 4) if drops else None,
        "speedup_ort": speed["onnx"], "speedup_ov": speed["openvino"], "speedup_litert": speed["tflite"],
    }
    if student:
        summary["student_labels_map50"] = student["labels"]["map50"]
        summary["student_kd_from_yolo_map50"] = student["distilled"]["map50"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="YOLO training epochs on digits-detect")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--models", default=",".join(YAMLS))
    args = parser.parse_args()
    standin = model_zoo.nms_standin()
    if standin:
        print("note: torchvision's C++ ops are missing; a pure-torch torchvision::nms stand-in was registered")
    from edgekd.data.datasets import DataConfig
    from edgekd.tasks import create_task

    task = create_task("object-detection")
    data = task.load_data(DataConfig(source="digits-detect", image_size=[IMAGE, IMAGE]))
    print(f"data: {task.describe(data)}; test {len(data.y_test)} canvases")
    records, teacher = [], None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            record, model = run_model(name, args.epochs, args.qat_epochs, task, data, Path(tmp))
            records.append(record)
            teacher = model if name == "yolov8n" else teacher
            print(f"{name}: PyTorch mAP50 {record['pytorch_map50']:.3f} after {record['train']['seconds']} s", flush=True)
    student = distil_student(teacher, args.student_epochs, task, data) if teacher is not None else None
    print(model_zoo.machine())
    print(table(records))
    if student:
        print(f"det-student ({student['params']} params, {student['epochs']} epochs): labels only mAP50 "
              f"{student['labels']['map50']:.3f}, distilled from yolov8n {student['distilled']['map50']:.3f}")
    summary = summarize(records, student)
    from edgekd import atomic

    atomic.write_text(RESULTS, json.dumps({**model_zoo.machine(), "nms_standin": standin, "image": IMAGE,
                                           "seconds": round(time.perf_counter() - start), "summary": summary,
                                           "models": records, "student": student}, indent=1, default=str))
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
