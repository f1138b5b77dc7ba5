"""Run the ONNX -> TFLite converter over the ONNX backend test models shipped inside ``onnx``.

``pytorch-converted/`` and ``pytorch-operator/``: ``model.onnx`` with stored inputs and outputs.
``light/``: ``light_*.onnx`` and stored outputs only; the inputs are onnx's backend-runner ones
(``arange(n) / n``). Their weights are ConstantOfShape fills of 0.02 (folded by the converter), so
every channel is alike and a channel-order bug cannot show: ``light-random`` reruns them with
seeded random weights and the softmax input as an extra output, against onnxruntime only.

Results: ``pass`` (each output within FLOAT_RTOL of onnxruntime; judged on the stored outputs
when onnxruntime cannot run the model's old opset), ``mismatch``, ``unsupported`` (an ONNX op the
converter lacks), ``refused`` (another ExportError), ``crash`` (anything else: a converter bug).

    python benchmarks/tflite_conformance.py [--filter SUBSTRING] [--verbose]

Writes benchmarks/results/tflite_conformance.json (not on --filter runs), ends with a SUMMARY line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import traceback
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekd.errors import ExportError
from edgekd.export.tflite import convert, supported_ops
from edgekd.export.tflite.graph import load_graph
from edgekd.export.tflite.parity import FLOAT_RTOL, compare, interpreter, run_tflite

RESULTS = Path(__file__).parent / "results" / "tflite_conformance.json"
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
GROUPS = ["pytorch-converted", "pytorch-operator", "light", "light-random"]
FOLDED = {"Constant", "ConstantOfShape", "Identity", "Dropout", "Shape"}  # removed by load_graph
REF_RTOL = 1e-3  # the onnx backend tests' rtol for these models


def read_tensor(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.TensorProto.FromString(path.read_bytes()))


def randomized(path: Path, out_dir: Path, seed: int = 0) -> Path:
    """``path`` with every ConstantOfShape fill replaced by a seeded random Constant."""
    model, rng = onnx.load(str(path)), np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            fill = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
            shape = tuple(int(d) for d in inits[node.input[0]])
            value = (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:])) if len(shape) >= 2
                     else rng.uniform(0.5, 1.5, shape)).astype(fill.dtype)  # weights; biases, BN params
            model.graph.node[i].CopyFrom(onnx.helper.make_node(
                "Constant", [], list(node.output), value=numpy_helper.from_array(value)))
    outputs = {o.name for o in model.graph.output}  # random logits saturate softmax: check them too
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.output[0] in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    used = {n for node in model.graph.node for n in node.input}  # drop the now unused shapes
    for field in (model.graph.initializer, model.graph.input):
        keep = [i for i in field if i.name in used]
        del field[:]
        field.extend(keep)
    out = out_dir / path.name
    onnx.save(model, str(out))
    return out


def find_cases(name_filter: str, tmp: Path) -> list[tuple[str, str, Path, list[tuple[list, list]]]]:
    """(name, group, model path, [(inputs or None, expected outputs)]) for every case."""
    cases = []
    for group in GROUPS:
        if group.startswith("light"):
            for model in sorted((DATA / "light").glob("light_*.onnx")):
                if name_filter not in f"{group}/{model.stem}":
                    continue
                outs = [read_tensor(p) for p in sorted(model.parent.glob(f"{model.stem}_output_*.pb"))]
                cases.append((model.stem, group, randomized(model, tmp), [(None, [])]) if group == "light-random"
                             else (model.stem, group, model, [(None, outs)]))
            continue
        for folder in sorted(p for p in (DATA / group).iterdir() if (p / "model.onnx").exists()):
            sets = [([read_tensor(p) for p in sorted(s.glob("input_*.pb"))],
                     [read_tensor(p) for p in sorted(s.glob("output_*.pb"))])
                    for s in sorted(folder.glob("test_data_set_*"))] or [(None, [])]
            cases.append((folder.name, group, folder / "model.onnx", sets))
    return [c for c in cases if name_filter in f"{c[1]}/{c[0]}"]


def dummy_inputs(model: onnx.ModelProto) -> list[np.ndarray]:
    """onnx's backend runner inputs for light models: arange(n) / n, float32."""
    inits = {i.name for i in model.graph.initializer}
    shapes = [tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim)  # dynamic dims -> 1
              for i in model.graph.input if i.name not in inits]
    return [(np.arange(np.prod(s)).reshape(s) / np.prod(s)).astype(np.float32) for s in shapes]


@contextlib.contextmanager
def quiet_stderr():
    """Silence C++ stderr (LiteRT's 'Created TensorFlow Lite XNNPACK delegate' line)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def run_case(path: Path, sets: list, supported: set[str]) -> dict:
    model = onnx.load(str(path))
    row = {"ops": sorted({n.op_type for n in model.graph.node}), "result": "", "detail": "",
           "relative_error": None, "ref_error": None}
    if sets[0][0] is None:
        sets = [(dummy_inputs(model), sets[0][1])]
    batch = int(sets[0][0][0].shape[0]) if sets[0][0] and sets[0][0][0].ndim else 1
    try:  # the ops the converter itself must handle (after folding); the raw list when that fails
        needed = {n.op for n in load_graph(path, batch=batch).nodes}
    except Exception:
        needed = set(row["ops"]) - FOLDED
    row["supported"] = needed <= supported
    stage = "convert"
    try:
        result = convert(path, batch=batch)
        row["tflite_ops"] = sorted(set(result.ops))
        worst, ref_worst, notes, ort_error = 0.0, 0.0, [], None
        for feeds, expected in sets:
            stage = "run TFLite"
            with quiet_stderr():
                got = run_tflite(interpreter(result.data), feeds)
            for i, (e, t) in enumerate(zip(expected, got)):
                if e.shape != t.shape:
                    notes.append(f"output {i} ({result.graph.output_names[i]}): TFLite shape "
                                 f"{t.shape} != stored {e.shape}")
                    continue
                err = float(np.abs(t - e).max(initial=0.0)) / max(float(np.abs(e).max(initial=0.0)), 1e-12)
                ref_worst = max(ref_worst, err)
            stage = "parity"
            try:
                with quiet_stderr():
                    parities = compare(path, result.data, result.graph, feeds=feeds, coarse=result.coarse)
            except Exception as err:
                if not type(err).__module__.startswith("onnxruntime") or not expected:
                    raise
                ort_error = f"onnxruntime cannot run it ({str(err).split(' : ')[-1][:70]})"
                continue
            worst = max([worst, *(p.relative_error for p in parities)])
            notes += [p.describe() for p in parities if not p.ok]
        row["ref_error"] = ref_worst if sets[0][1] else None
        row["relative_error"] = ref_worst if ort_error else worst  # without onnxruntime: vs stored
        row["result"] = "pass" if row["relative_error"] <= FLOAT_RTOL and not notes else "mismatch"
        detail = f"{ort_error}; judged on stored outputs" if ort_error else f"rel {worst:.1e}"
        detail += f", stored {ref_worst:.1e}" if row["ref_error"] is not None else ""
        detail += f" (> {REF_RTOL:.0e})" if (row["ref_error"] or 0) > REF_RTOL else ""
        row["detail"] = "; ".join([detail, *notes])
    except ExportError as err:
        msg = str(err).replace(str(path), "model.onnx")
        if "unsupported ONNX op(s)" in msg:
            row.update(result="unsupported", detail="needs " + ", ".join(dict.fromkeys(re.findall(r"(\w+) \(node", msg))))
        else:
            row.update(result="refused", detail=msg[:120], full_error=msg)
    except Exception as err:  # a converter bug (or a model LiteRT cannot run)
        row.update(result="crash", detail=f"{stage}: {type(err).__name__}: {err}"[:300],
                   full_error=traceback.format_exc())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only cases whose 'group/name' contains this")
    parser.add_argument("--verbose", action="store_true", help="print the full traceback of crashes")
    args = parser.parse_args()
    supported = set(supported_ops())
    rows = {}
    print(f"{'case':46s} {'group':17s} {'result':11s} {'ops':40s} detail")
    scratch = tempfile.TemporaryDirectory()
    for name, group, path, sets in find_cases(args.filter, Path(scratch.name)):
        try:
            row = {"group": group, **run_case(path, sets, supported)}
        except Exception as err:  # outside the conversion (e.g. an unreadable model)
            row = {"group": group, "ops": [], "supported": False, "result": "crash",
                   "detail": f"setup: {type(err).__name__}: {err}"[:300], "full_error": traceback.format_exc()}
        rows[f"{group}/{name}"] = row
        ops = ",".join(row["ops"])
        print(f"{name:46s} {group:17s} {row['result']:11s} {ops[:40]:40s} {row['detail']}", flush=True)
        if args.verbose and row["result"] == "crash":
            print(row["full_error"])
    scratch.cleanup()
    groups = {}
    for group in [*GROUPS, "all"]:
        members = [r for r in rows.values() if group in ("all", r["group"])]
        n = Counter(r["result"] for r in members)
        if members or group == "all":
            groups[group] = {"total": len(members), "supported": sum(r["supported"] for r in members),
                             "converted": n["pass"] + n["mismatch"],
                             **{k: n[k] for k in ("pass", "mismatch", "unsupported", "refused", "crash")}}
    print(f"\n{'group':18s} " + " ".join(f"{k:>11s}" for k in groups["all"]))
    for group, counts in groups.items():
        print(f"{group:18s} " + " ".join(f"{v:11d}" for v in counts.values()))
    a = groups["all"]
    summary = {"cases": a["total"], **{k: v for k, v in a.items() if k != "total"},
               "pass_rate_supported": f"{a['pass']}/{a['supported']}"}
    versions = {p: version(p) for p in ("onnx", "onnxruntime", "ai-edge-litert")}
    if args.filter:
        print(f"filtered run: {RESULTS} not written")
    else:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".json.tmp")  # written whole, then renamed: never half a file
        tmp.write_text(json.dumps({"summary": summary, "groups": groups, "versions": versions,
                                   "float_rtol": FLOAT_RTOL, "cases": rows}, indent=2) + "\n")
        os.replace(tmp, RESULTS)
        print(f"wrote {RESULTS}")
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
