"""Repeat the demo pipeline over several seeds and report mean ± std of its headline numbers.

Each seed changes the data split, the initialisations and the training order. Targets (issue 2):
the int8 student at least 10x smaller (bytes) than the FP32 teacher, within 1.0 point of the
teacher's accuracy, and the KD student not worse than the scratch student, on the mean.

    python benchmarks/demo_quality.py [--seeds 0 1 2]

Writes benchmarks/results/demo_quality.json and ends with one SUMMARY line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgekd.pipeline import run
from edgekd.recipe import demo_recipe

RESULTS = Path(__file__).parent / "results" / "demo_quality.json"
ROWS = [  # (label, entry name, field)
    ("teacher accuracy %", "teacher.pytorch", "accuracy"),
    ("scratch student accuracy %", "student-scratch.pytorch", "accuracy"),
    ("KD student accuracy %", "student-kd.pytorch", "accuracy"),
    ("int8 student accuracy % (PyTorch sim)", "student-int8.pytorch", "accuracy"),
    ("int8 student accuracy % (onnxruntime)", "student-int8.onnx", "accuracy"),
    ("int8 student accuracy % (OpenVINO)", "student-int8.openvino", "accuracy"),
    ("int8 student accuracy % (LiteRT)", "student-int8.tflite", "accuracy"),
    ("int8 agreement % (onnxruntime)", "student-int8.onnx", "agreement"),
    ("int8 agreement % (OpenVINO)", "student-int8.openvino", "agreement"),
    ("int8 agreement % (LiteRT)", "student-int8.tflite", "agreement"),
    ("teacher ONNX size KB", "teacher.onnx", "size_bytes"),
    ("int8 student ONNX size KB", "student-int8.onnx", "size_bytes"),
    ("int8 student IR size KB", "student-int8.openvino", "size_bytes"),
    ("int8 student TFLite size KB", "student-int8.tflite", "size_bytes"),
    ("teacher onnxruntime p50 us", "teacher.onnx", "p50"),
    ("int8 student onnxruntime p50 us", "student-int8.onnx", "p50"),
    ("int8 student OpenVINO p50 us", "student-int8.openvino", "p50"),
    ("teacher LiteRT p50 us", "teacher.tflite", "p50"),
    ("int8 student LiteRT p50 us", "student-int8.tflite", "p50"),
]


def one_seed(seed: int) -> dict:
    recipe = demo_recipe()
    recipe.seed = recipe.data.seed = seed
    recipe.teacher_training.seed = recipe.student_training.seed = seed
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(recipe, Path(tmp) / "out", cache_dir=Path(tmp) / "cache")
    wall = time.perf_counter() - start
    values = {}
    for label, name, field in ROWS:
        entry = result.report.entry(name)
        if field == "p50":
            values[label] = entry.latency["p50_ms"] * 1000
        elif field == "size_bytes":
            values[label] = entry.size_bytes / 1000
        else:
            values[label] = 100 * getattr(entry, field)
    values["wall time s (teacher trained, not cached)"] = wall
    values["budgets passed"] = float(result.budget.passed)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        runs.append(one_seed(seed))
    labels = list(runs[0])
    stats = {}
    print(f"\n{'metric':44s} {'mean':>9s} {'std':>8s}   " + "  ".join(f"seed {s:<4d}" for s in args.seeds))
    for label in labels:
        vals = [r[label] for r in runs]
        mean, std = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
        stats[label] = {"mean": mean, "std": std, "values": vals}
        print(f"{label:44s} {mean:9.2f} {std:8.2f}   " + "  ".join(f"{v:9.2f}" for v in vals))

    m = {k: v["mean"] for k, v in stats.items()}
    size_ratio = m["teacher ONNX size KB"] / m["int8 student ONNX size KB"]
    int8_gap = m["teacher accuracy %"] - m["int8 student accuracy % (onnxruntime)"]
    kd_gain = m["KD student accuracy %"] - m["scratch student accuracy %"]
    targets = {"size_ratio_ge_10": size_ratio >= 10, "int8_within_1pt_of_teacher": int8_gap <= 1.0,
               "kd_not_worse_than_scratch": kd_gain >= 0}
    print(f"\nint8 ONNX is {size_ratio:.1f}x smaller than the FP32 teacher ONNX (target >= 10x)")
    print(f"int8 student is {int8_gap:.2f} points below the teacher (target <= 1.0)")
    print(f"KD student vs scratch student: {kd_gain:+.2f} points (target >= 0)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": args.seeds, "metrics": stats, "size_ratio": size_ratio,
                                   "int8_gap_points": int8_gap, "kd_gain_points": kd_gain,
                                   "targets_met": targets}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    print(f"SUMMARY teacher_acc={m['teacher accuracy %']:.2f} scratch_acc={m['scratch student accuracy %']:.2f} "
          f"kd_acc={m['KD student accuracy %']:.2f} int8_acc={m['int8 student accuracy % (onnxruntime)']:.2f} "
          f"size_ratio={size_ratio:.1f} int8_gap_pts={int8_gap:.2f} kd_gain_pts={kd_gain:+.2f} "
          f"ort_p50_us={m['int8 student onnxruntime p50 us']:.1f} ov_p50_us={m['int8 student OpenVINO p50 us']:.1f} "
          f"litert_p50_us={m['int8 student LiteRT p50 us']:.1f} "
          f"tflite_agreement={m['int8 agreement % (LiteRT)']:.2f} "
          f"wall_s={m['wall time s (teacher trained, not cached)']:.1f} "
          f"targets_met={sum(targets.values())}/{len(targets)}")


if __name__ == "__main__":
    main()
