"""LiteRT latency of MobileNetV2 (224x224): int8 vs float, and edgekd's harness vs ``litert-benchmark``.

What is measured, and why:
1. Does int8 pay off in LiteRT? ``mobilenetv2`` from edgekd's registry (Sandler et al. 2018; random
   weights, seed 0; BatchNorm statistics estimated on the calibration images, see
   ``estimate_batchnorm_stats``) is exported to .tflite as float, and the same weights are quantized
   (BatchNorm folded, int8 fake-quant calibrated on smooth random images, frozen) and exported as
   int8, both with edgekd's ONNX -> TFLite converter (each file passes the exporter's check against
   onnxruntime before it is written: see ``build_artifacts``).
   Reported: int8/float p50 latency at 1 and 2 threads, and file sizes (.tflite and .onnx).
2. Can edgekd's numbers be trusted? The same file at the same thread count is timed by
   ``edgekd.bench.benchmark`` (runtime ``litert``, XNNPACK on: the ``Interpreter`` API in a fresh
   child process) and by ai-edge-litert's own ``litert-benchmark`` tool (the ``CompiledModel`` API,
   CPU accelerator = XNNPACK; it has no XNNPACK switch). Reported: harness p50 / tool median.
   The two do not time exactly the same thing: the harness's per-inference time includes
   ``set_tensor`` (copying the 602 KB input) and ``get_tensor``; the tool's times ``run_by_name``
   on buffers filled once. The tool reports its median rounded to 0.01 ms.

The machine is shared and noisy, so everything runs interleaved in one process: for each
repetition, for each (threads, precision), harness then tool (tool then harness on odd
repetitions); each number is the median over repetitions of one run's p50. Ratios are given two
ways: of those medians (the headline), and the median of per-repetition ratios of runs made
seconds apart (harness vs tool on one file; int8 vs float at one thread count), which cancels
slow drifts in the machine's load. The tool gets the harness's warmup and as many timed runs as
the harness took in its latest run of that case (it has no minimum-seconds option). Sanity checks
(accuracy is irrelevant here) on the calibration images: see ``conversion_checks``.

    python benchmarks/litert_mobilenet.py [--reps 3] [--keep DIR]

Writes benchmarks/results/litert_mobilenet.json and ends with one SUMMARY line (int8/float ratios
from the harness; below 1 means int8 is faster). MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgekd
from edgekd import atomic
from edgekd.bench.harness import BenchSettings, benchmark
from edgekd.export import export
from edgekd.models import create_model
from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat
from edgekd.runtime.api import open_session

RESULTS = Path(__file__).parent / "results" / "litert_mobilenet.json"
MODEL, INPUT_SHAPE, NUM_CLASSES = "mobilenetv2", (3, 224, 224), 1000
PRECISIONS, THREADS = ("float", "int8"), (1, 2)
OPTIONS = {"xnnpack": True}
SETTINGS = BenchSettings()  # harness defaults: 20 warmup, >= 200 runs and >= 1 s
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Random images with image-like spatial correlation, ImageNet-normalized: (n, 3, 224, 224)."""
    size = INPUT_SHAPE[1:]
    coarse = torch.rand(n, 3, 7, 7, generator=generator)  # blobs
    fine = torch.rand(n, 3, 28, 28, generator=generator)  # texture
    x = 0.7 * upsample(coarse, size) + 0.3 * upsample(fine, size)  # (n, 3, 224, 224) in ~[0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean) / std


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)


@torch.no_grad()
def estimate_batchnorm_stats(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running mean/var to its average over ``batches``; weights untouched.

    At initialisation the running statistics are (0, 1), so in eval mode BatchNorm does not
    normalize and the activations of the random MobileNetV2 shrink layer by layer to ~1e-9 logits,
    below int8's smallest activation scale (1e-8): the int8 model would output only zeros. A trained
    network's BatchNorm keeps activations near unit scale; this gives the random one the same.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    for x in batches:
        model(x)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def build_artifacts(out_dir: Path, batches: list[torch.Tensor]) -> dict[str, dict[str, Path]]:
    """Float and int8 (the float weights quantized) .onnx and .tflite files of the same model.

    Both pass the exporter's check against onnxruntime (float: 1e-4 relative; int8: 99% of the
    logits within ceil(sqrt(L)) steps for L requantizing ops, here 8: the kernels' different
    requantization rounding compounds through 53 layers; ``conversion_checks`` measures it).
    """
    torch.manual_seed(0)
    fp = estimate_batchnorm_stats(create_model(MODEL, INPUT_SHAPE[0], NUM_CLASSES), batches)
    q = prepare_qat(copy.deepcopy(fp), QATConfig())  # BN folded, int8 fake-quant inserted
    calibrate(q, batches)
    q = freeze(q)
    files = {}
    for precision, model in (("float", fp), ("int8", q)):
        arts = export(model, ["onnx", "tflite"], out_dir, f"{MODEL}-{precision}", INPUT_SHAPE)
        files[precision] = {a.format: a.path for a in arts}
    return files


def logits_of(path: Path, runtime: str, images: torch.Tensor, options: dict | None = None) -> np.ndarray:
    session = open_session(path, runtime, threads=2, options=options)
    return np.concatenate([session.run(images[i:i + 1].numpy()) for i in range(len(images))])  # (N, 1000)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Top-1 agreement of logits ``a`` with reference ``b``, and ||a - b|| / ||b||."""
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def conversion_checks(files: dict[str, dict[str, Path]], images: torch.Tensor) -> dict:
    """Sanity checks on ``images`` (accuracy is irrelevant here; these show the files are sound).

    int8 vs float .tflite (what quantization changed); int8 .tflite under XNNPACK vs onnxruntime
    on the int8 ONNX file (what conversion changed); the same int8 .tflite under TFLite's built-in
    kernels vs XNNPACK (what kernel rounding alone changes: the scale against which to read the
    conversion's difference); and the exporter's own int8 parity numbers (``parity.compare``).
    """
    from edgekd.export.tflite import convert
    from edgekd.export.tflite.parity import compare, int8_steps

    tfl_float = logits_of(files["float"]["tflite"], "litert", images, OPTIONS)
    tfl_int8 = logits_of(files["int8"]["tflite"], "litert", images, OPTIONS)
    builtin_int8 = logits_of(files["int8"]["tflite"], "litert", images, {"xnnpack": False})
    ort_int8 = logits_of(files["int8"]["onnx"], "onnxruntime", images)
    conversion = convert(files["int8"]["onnx"])
    parity = compare(files["int8"]["onnx"], files["int8"]["tflite"], conversion.graph,
                     steps=int8_steps(conversion.ops))[0]
    return {"images": len(images),
            "int8_vs_float_tflite": agreement(tfl_int8, tfl_float),
            "int8_tflite_xnnpack_vs_onnxruntime": agreement(tfl_int8, ort_int8),
            "int8_tflite_builtin_vs_xnnpack": agreement(builtin_int8, tfl_int8),
            "exporter_int8_parity": {"within_one_step": parity.within_one_step, "step": parity.step,
                                     "steps_allowed": parity.steps, "within_steps": parity.within_steps,
                                     "max_error_steps": parity.max_abs_error / parity.step,
                                     "passes": parity.ok}}


def xnnpack_coverage(path: Path, threads: int) -> dict:
    """How the Interpreter (the harness's API) partitions ``path`` with XNNPACK on.

    Node lists include the original nodes and the DELEGATE nodes that replace them; one DELEGATE
    node reading the graph input and writing the graph output means the whole graph runs in XNNPACK.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), num_threads=threads,
                              experimental_op_resolver_type=OpResolverType.AUTO)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # no public API for the execution plan
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    graph_in = {int(d["index"]) for d in interpreter.get_input_details()}
    graph_out = {int(d["index"]) for d in interpreter.get_output_details()}
    whole = (len(delegates) == 1 and graph_in <= {int(i) for i in delegates[0]["inputs"]}
             and graph_out <= {int(o) for o in delegates[0]["outputs"]})
    return {"model_nodes": len(ops) - len(delegates), "delegate_partitions": len(delegates),
            "whole_graph_delegated": whole}


def run_harness(path: Path, threads: int) -> dict:
    result = benchmark(path, "litert", threads=threads, settings=SETTINGS, options=OPTIONS)
    lat = result.latency
    return {"p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "mean_ms": lat.mean_ms, "min_ms": lat.min_ms,
            "cv": lat.cv, "noisy": lat.noisy, "n": lat.n, "load_ms": result.load_ms,
            "xnnpack": result.info["xnnpack"], "runtime_version": result.info["runtime_version"]}


# litert-benchmark's own code (the function its console script runs), with its per-run times
# read before it rounds its statistics to 0.01 ms: 10 µs steps are half of a 20 µs model.
TOOL_UNROUNDED = """
import json, statistics, sys
import ai_edge_litert.tools.benchmark_litert_model as tool
samples_file = sys.argv.pop(1)
class Unrounded:
    def __getattr__(self, name): return getattr(statistics, name)
    def median(self, data):
        with open(samples_file, "w") as f: json.dump(list(data), f)
        return statistics.median(data)
tool.statistics = Unrounded()
sys.argv[0] = "litert-benchmark"
tool.main()
"""


def run_tool(tool: str, path: Path, threads: int, runs: int) -> dict:
    """``litert-benchmark`` on ``path`` (``tool``: its path, which must be on PATH); its JSON
    report, and ``median_ms_unrounded`` from its raw per-run times."""
    if not tool:
        raise RuntimeError("litert-benchmark is not on PATH (it comes with ai-edge-litert)")
    with tempfile.TemporaryDirectory() as tmp:
        out, samples = Path(tmp) / "result.json", Path(tmp) / "samples.json"
        args = [f"--model={path}", f"--num_threads={threads}", f"--num_runs={runs}",
                f"--warmup_runs={SETTINGS.warmup_runs}", f"--result_json={out}"]
        cmd = [sys.executable, "-c", TOOL_UNROUNDED, str(samples), *args]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # as the harness sets it
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=300, check=False)
        if proc.returncode != 0 or not out.is_file() or not samples.is_file():
            tail = " ".join((proc.stderr + proc.stdout).strip().splitlines()[-3:])[:500]
            raise RuntimeError(f"litert-benchmark {' '.join(args)} failed with code {proc.returncode}: {tail}")
        result = json.loads(out.read_text())
        times = json.loads(samples.read_text())
    lat = result["latency"]
    return {"median_ms": lat["median_ms"], "avg_ms": lat["avg_ms"], "p5_ms": lat["p5_ms"],
            "p95_ms": lat["p95_ms"], "min_ms": lat["min_ms"], "std_ms": lat["std_ms"],
            "n": lat["num_runs"], "init_ms": lat["init_ms"],
            "fully_accelerated": result["fully_accelerated"], "accelerators": result["accelerators"],
            "median_ms_unrounded": statistics.median(times)}


def versions() -> dict:
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "edgekd"], capture_output=True, text=True,
                           check=False).stdout.strip() != ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "edgekd": edgekd.__version__,
            "edgekd_commit": commit + ("+uncommitted edgekd changes" if dirty else ""),
            **{pkg: version(pkg) for pkg in ("ai-edge-litert", "torch", "onnx", "onnxruntime", "numpy")},
            "cpu": cpu, "cpus": os.cpu_count()}


CASES = [(p, t) for t in THREADS for p in PRECISIONS]  # float and int8 of one thread count back to back


def measure(files: dict[str, dict[str, Path]], reps: int, tool: str) -> list[dict]:
    """One row per (rep, precision, threads) with the harness's and the tool's numbers."""
    raw, tool_runs = [], {}
    for rep in range(reps):
        order = ("harness", "tool") if rep % 2 == 0 else ("tool", "harness")
        for precision, threads in CASES:
            path = files[precision]["tflite"]
            row = {"rep": rep, "precision": precision, "threads": threads, "order": list(order)}
            for who in order:
                if who == "harness":
                    row["harness"] = run_harness(path, threads)
                    tool_runs[precision, threads] = row["harness"]["n"]
                else:  # rep 0 runs the harness first, so its run count is known here
                    row["tool"] = run_tool(tool, path, threads, tool_runs[precision, threads])
            raw.append(row)
            print(f"rep {rep} {precision:5s} {threads}t  harness p50 {row['harness']['p50_ms']:7.3f} ms "
                  f"(n={row['harness']['n']}, cv={row['harness']['cv']:.2f})  tool median "
                  f"{row['tool']['median_ms']:7.2f} ms (n={row['tool']['n']})", flush=True)
    return raw


def summarize(raw: list[dict]) -> tuple[dict, dict, dict]:
    """Per case: medians over reps and harness/tool ratios; int8/float ratios (of medians, paired)."""
    table = {}
    for precision, threads in CASES:
        rows = [r for r in raw if (r["precision"], r["threads"]) == (precision, threads)]
        harness = [r["harness"]["p50_ms"] for r in rows]
        vendor = [r["tool"]["median_ms"] for r in rows]
        table[f"{precision}_{threads}t"] = {
            "harness_p50_ms": statistics.median(harness), "tool_median_ms": statistics.median(vendor),
            "harness_tool_ratio": statistics.median(harness) / statistics.median(vendor),
            "harness_tool_ratio_paired": statistics.median([h / v for h, v in zip(harness, vendor)]),
            "harness_p50_ms_reps": harness, "tool_median_ms_reps": vendor,
            "harness_cv_max": max(r["harness"]["cv"] for r in rows),
            "tool_fully_accelerated": all(r["tool"]["fully_accelerated"] for r in rows)}
    ratios, paired = {}, {}
    for t in THREADS:
        for who, stat in (("harness", "p50_ms"), ("tool", "median_ms")):
            key = "harness_p50_ms" if who == "harness" else "tool_median_ms"
            ratios[f"{who}_{t}t"] = table[f"int8_{t}t"][key] / table[f"float_{t}t"][key]
            value = {(r["rep"], r["precision"]): r[who][stat] for r in raw if r["threads"] == t}
            reps = sorted({r["rep"] for r in raw})
            paired[f"{who}_{t}t"] = statistics.median([value[i, "int8"] / value[i, "float"] for i in reps])
    return table, ratios, paired


def print_sanity(sanity: dict) -> None:
    print(f"sanity on the {sanity['images']} calibration images (top-1 agreement, relative logit error):")
    for key, label in (("int8_vs_float_tflite", "int8 vs float .tflite (XNNPACK)"),
                       ("int8_tflite_xnnpack_vs_onnxruntime", "int8 .tflite (XNNPACK) vs int8 .onnx (onnxruntime)"),
                       ("int8_tflite_builtin_vs_xnnpack", "int8 .tflite: built-in kernels vs XNNPACK")):
        print(f"  {label:52s} {100 * sanity[key]['top1_agreement']:5.1f}%  {sanity[key]['relative_error']:.3f}")
    parity = sanity["exporter_int8_parity"]
    print(f"  exporter's int8 check: {100 * parity['within_steps']:.1f}% of logits within "
          f"{parity['steps_allowed']} steps of onnxruntime (needs 99%), {100 * parity['within_one_step']:.1f}% "
          f"within one, max {parity['max_error_steps']:.0f} steps", flush=True)


def print_report(table: dict, ratios: dict, paired: dict, mb: dict, coverage: dict, reps: int) -> None:
    print(f"\nLiteRT {MODEL} {INPUT_SHAPE[1]}x{INPUT_SHAPE[2]}, batch 1, XNNPACK on (harness: option "
          f"xnnpack=True; tool: CPU accelerator), median over {reps} interleaved reps")
    print(f"{'precision':9s} {'threads':>7s} {'harness p50 ms':>15s} {'tool median ms':>15s} "
          f"{'harness/tool':>13s} {'paired':>7s} {'harness cv max':>15s}")
    for precision, threads in CASES:
        row = table[f"{precision}_{threads}t"]
        print(f"{precision:9s} {threads:7d} {row['harness_p50_ms']:15.3f} {row['tool_median_ms']:15.2f} "
              f"{row['harness_tool_ratio']:13.3f} {row['harness_tool_ratio_paired']:7.3f} "
              f"{row['harness_cv_max']:15.2f}")
    for t in THREADS:
        print(f"int8/float p50 ratio, {t} thread{'s' if t > 1 else ' '}: harness {ratios[f'harness_{t}t']:.3f}  "
              f"tool {ratios[f'tool_{t}t']:.3f}   (paired: harness {paired[f'harness_{t}t']:.3f}  "
              f"tool {paired[f'tool_{t}t']:.3f})")
    for p in PRECISIONS:
        one, two = table[f"{p}_1t"], table[f"{p}_2t"]
        print(f"2-thread speedup ({p}, 1t / 2t): harness {one['harness_p50_ms'] / two['harness_p50_ms']:.2f}  "
              f"tool {one['tool_median_ms'] / two['tool_median_ms']:.2f}")
    for fmt in ("tflite", "onnx"):
        print(f"size .{fmt:6s}: float {mb['float'][fmt]:.3f} MB  int8 {mb['int8'][fmt]:.3f} MB  "
              f"float/int8 {mb['float'][fmt] / mb['int8'][fmt]:.2f}x")
    print("XNNPACK in the Interpreter: " + ", ".join(
        f"{k} {v['delegate_partitions']} partition, whole graph {'yes' if v['whole_graph_delegated'] else 'NO'}"
        for k, v in coverage.items()) + f" ({coverage['float_1t']['model_nodes']} float / "
        f"{coverage['int8_1t']['model_nodes']} int8 nodes)")
    print("litert-benchmark 'Fully accelerated': "
          + ", ".join(f"{k} {v['tool_fully_accelerated']}" for k, v in table.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--keep", type=Path, help="write the model files here (default: a temp dir)")
    args = parser.parse_args()
    tool = shutil.which("litert-benchmark")
    if tool is None:
        sys.exit("litert-benchmark is not on PATH (it comes with pip install ai-edge-litert)")
    start = time.perf_counter()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        generator = torch.Generator().manual_seed(0)
        batches = [smooth_images(4, generator) for _ in range(8)]  # 8 x (4, 3, 224, 224)
        print("exporting float and int8 MobileNetV2 (.onnx, .tflite) ...", flush=True)
        files = build_artifacts(args.keep or Path(tmp), batches)
        sizes = {p: {fmt: path.stat().st_size for fmt, path in files[p].items()} for p in PRECISIONS}
        sanity = conversion_checks(files, torch.cat(batches))
        print_sanity(sanity)
        coverage = {f"{p}_{t}t": xnnpack_coverage(files[p]["tflite"], t) for p, t in CASES}
        raw = measure(files, args.reps, tool)

    table, ratios, paired = summarize(raw)
    mb = {p: {fmt: sizes[p][fmt] / 1e6 for fmt in ("tflite", "onnx")} for p in PRECISIONS}
    wall, load_after, info = time.perf_counter() - start, os.getloadavg()[0], versions()
    print_report(table, ratios, paired, mb, coverage, args.reps)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"load average before/after: {load_before:.2f} / {load_after:.2f}; wall time {wall:.0f} s")

    atomic.write_text(RESULTS, json.dumps({
        "model": MODEL, "input_shape": [1, *INPUT_SHAPE], "reps": args.reps,
        "harness": {"runtime": "litert", "options": OPTIONS, "settings": SETTINGS.to_dict(),
                    "statistic": "p50 of one run, median over reps"},
        "tool": {"command": "litert-benchmark", "api": "CompiledModel, CPU accelerator (XNNPACK)",
                 "warmup_runs": SETTINGS.warmup_runs, "num_runs": "the harness's run count of the same case",
                 "statistic": "median of one run (rounded to 0.01 ms by the tool), median over reps"},
        "table": table, "int8_float_p50_ratio": ratios, "int8_float_p50_ratio_paired": paired,
        "sizes_bytes": sizes, "sizes_mb": mb,
        "size_ratio_float_int8": {fmt: sizes["float"][fmt] / sizes["int8"][fmt] for fmt in ("tflite", "onnx")},
        "sanity": sanity, "xnnpack_coverage": coverage, "raw": raw, "versions": info,
        "load_average": {"before": load_before, "after": load_after}, "wall_s": wall,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    print(f"SUMMARY int8_float_p50_ratio_1t={ratios['harness_1t']:.3f} "
          f"int8_float_p50_ratio_2t={ratios['harness_2t']:.3f} "
          f"harness_tool_ratio_float_1t={table['float_1t']['harness_tool_ratio']:.3f} "
          f"harness_tool_ratio_int8_1t={table['int8_1t']['harness_tool_ratio']:.3f} "
          f"size_float_mb={mb['float']['tflite']:.2f} size_int8_mb={mb['int8']['tflite']:.2f}")


if __name__ == "__main__":
    main()
