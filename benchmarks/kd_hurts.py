"""When does distillation hurt? The distilled student against its scratch baseline on a user's own
small RGB data, over the distillation settings (issue 17, item 13).

The data: 2,000 RGB images of 32x32, 10 classes, generated here (no download): scikit-learn's
8x8 digits upscaled 4x, drawn in a random colour on a random dark background, with pixel noise,
stored NHWC uint8 as a user's export would be. The recipe is the demo's (cnn-teacher,
cnn-student-s, the demo's shifts and learning rates) with the teacher and students trained for
10 epochs, as a user trying edgekd on their data would; the teacher is trained once and cached.

For each distillation setting the same student (same initialisation and epochs) is distilled and
compared with the scratch student on the test split: the old library default T=4 with weights
0.9/0.1, the demo's T=2 with 0.5/0.5, T=1 with 0.5/0.5 (the new default), and mixes between;
then the scratch student and those three again with 30 epochs.

    python benchmarks/kd_hurts.py

Writes benchmarks/results/kd_hurts.json and ends with one SUMMARY line.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.pipeline import prepare, run_stages
from edgekd.recipe import demo_recipe

RESULTS = Path(__file__).parent / "results" / "kd_hurts.json"
SETTINGS = [  # (label, temperature, kd_weight, ce_weight)
    ("T=4, kd 0.9 / ce 0.1 (old default)", 4.0, 0.9, 0.1),
    ("T=4, kd 0.5 / ce 0.5", 4.0, 0.5, 0.5),
    ("T=2, kd 0.9 / ce 0.1", 2.0, 0.9, 0.1),
    ("T=2, kd 0.5 / ce 0.5 (the demo's)", 2.0, 0.5, 0.5),
    ("T=2, kd 0.3 / ce 0.7", 2.0, 0.3, 0.7),
    ("T=1, kd 0.5 / ce 0.5 (new default)", 1.0, 0.5, 0.5),
]
OLD, DEMO, NEW = SETTINGS[0], SETTINGS[3], SETTINGS[5]


def make_data(path: Path, n: int = 2000, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    idx = rng.choice(len(digits.target), n, replace=True)
    x32 = np.kron(digits.images[idx] / 16.0, np.ones((4, 4)))          # (N, 32, 32)
    colour, background = rng.uniform(0.3, 1.0, (n, 3, 1, 1)), rng.uniform(0, 0.3, (n, 3, 1, 1))
    img = np.clip(background + colour * x32[:, None] + rng.normal(0, 0.08, (n, 3, 32, 32)), 0, 1)
    np.savez(path, x=(img.transpose(0, 2, 3, 1) * 255).astype(np.uint8), y=digits.target[idx])
    return path


def test_accuracy(model, data) -> float:
    with torch.no_grad():
        return float((model.eval()(data.x_test).argmax(1) == data.y_test).float().mean())


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgekd-kd-hurts-"))
    recipe = demo_recipe()
    recipe.data.source = str(make_data(work / "rgb32.npz"))
    recipe.teacher_training.epochs = 10
    recipe.qat.enabled = recipe.ptq.enabled = recipe.benchmark = False
    rows, start = [], time.perf_counter()
    for epochs in (10, 30):
        recipe.student_training.epochs = epochs
        ctx = run_stages(prepare(recipe, work / f"out{epochs}", cache_dir=work / "cache"), ["teacher", "student-scratch"])
        teacher, scratch = test_accuracy(ctx.teacher, ctx.data), test_accuracy(ctx.products["student-scratch"].model, ctx.data)
        for label, temperature, kd_weight, ce_weight in SETTINGS if epochs == 10 else [OLD, DEMO, NEW]:
            recipe.distill.temperature, recipe.distill.kd_weight, recipe.distill.ce_weight = temperature, kd_weight, ce_weight
            ctx.recipe = recipe
            run_stages(ctx, ["teacher", "student-kd"])
            kd = test_accuracy(ctx.products["student-kd"].model, ctx.data)
            rows.append({"epochs": epochs, "setting": label, "temperature": temperature, "kd_weight": kd_weight,
                         "ce_weight": ce_weight, "teacher": round(100 * teacher, 2), "scratch": round(100 * scratch, 2),
                         "kd": round(100 * kd, 2), "kd_minus_scratch": round(100 * (kd - scratch), 2)})
            print(f"{epochs:3d} ep  {label:42s} teacher {100 * teacher:6.2f}  scratch {100 * scratch:6.2f}  "
                  f"KD {100 * kd:6.2f}  ({100 * (kd - scratch):+.2f})", flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    RESULTS.parent.mkdir(exist_ok=True)
    flags = sorted(set(next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                             if ln.startswith("flags")), [])) & {"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"})
    RESULTS.write_text(json.dumps({"cpu": cpu, "cpu_flags": flags, "torch": torch.__version__, "seconds": round(time.perf_counter() - start),
                                   "data": "2000 RGB 32x32, 10 classes (digits upscaled, coloured, noisy), seed 0",
                                   "rows": rows}, indent=2) + "\n")
    at10 = {r["setting"]: r["kd_minus_scratch"] for r in rows if r["epochs"] == 10}
    at30 = {r["setting"]: r["kd_minus_scratch"] for r in rows if r["epochs"] == 30}
    print(f"SUMMARY old_default_10ep={at10[OLD[0]]:+.2f} demo_10ep={at10[DEMO[0]]:+.2f} new_default_10ep={at10[NEW[0]]:+.2f} "
          f"old_default_30ep={at30[OLD[0]]:+.2f} demo_30ep={at30[DEMO[0]]:+.2f} new_default_30ep={at30[NEW[0]]:+.2f} "
          f"(KD minus scratch, test accuracy points)")


if __name__ == "__main__":
    main()
