"""How edgekd's TFLite files of the model zoo are delegated to XNNPACK: partitions and the ops left out.

LiteRT hands every op XNNPACK supports to its delegate, one DELEGATE node per connected run of
them (a partition); anything else runs in LiteRT's own kernels between partitions, and each
boundary costs a copy. The best file is one partition with nothing left out. For each model of
``model_zoo.ZOO`` (built the same way: random weights, BatchNorm statistics re-estimated), this
writes the float TFLite file and the int8 file for ``arm-litert-xnnpack`` (PTQ, minmax: the
full-integer file the LiteRT profile deploys), loads each in LiteRT's interpreter with XNNPACK
(1 thread), and counts its DELEGATE nodes: one per partition. The ops left outside (``outside``)
are found from the tensors: the interpreter's op list keeps the replaced nodes beside the
DELEGATE ones, but a replaced node's outputs are read only by other replaced nodes or written by
a DELEGATE, so a node is outside when an output it writes (and no DELEGATE writes) is read by a
DELEGATE, by another outside node, or is a model output.

Environment as ``model_zoo.py`` (timm, ultralytics, transformers; the nms stand-in it registers).
TensorFlow's converter is not compared here (TensorFlow is never an edgekd dependency).

    python benchmarks/xnnpack_partitions.py [--filter NAME]

Writes benchmarks/results/xnnpack_partitions.json (not on --filter runs); ends with a SUMMARY line.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import model_zoo as zoo

RESULTS = Path(__file__).parent / "results" / "xnnpack_partitions.json"
def delegation(path: Path) -> dict:
    """XNNPACK partitions (DELEGATE nodes) of a TFLite file, and its op count before delegation."""
    from edgekd.export.tflite.parity import interpreter

    interp = interpreter(path)
    details = interp._get_ops_details()
    ops = [op["op_name"] for op in details]
    return {"partitions": ops.count("DELEGATE"), "ops": len(ops) - ops.count("DELEGATE"),
            "op_types": dict(collections.Counter(op for op in ops if op != "DELEGATE")),
            "outside": dict(collections.Counter(op["op_name"] for op in outside(interp, details)))}


def outside(interp, details: list[dict]) -> list[dict]:
    """The ops XNNPACK left to LiteRT's own kernels (see the module doc), in graph order."""
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    written = {t for op in delegates for t in op["outputs"]}
    read = {t for op in delegates for t in op["inputs"]} | {d["index"] for d in interp.get_output_details()}
    rest, found = [op for op in details if op["op_name"] != "DELEGATE"], set()
    changed = True
    while changed:  # backwards from what is read outside a delegate
        changed = False
        for op in rest:
            if op["index"] not in found and any(t in read and t not in written for t in op["outputs"]):
                found.add(op["index"])
                read |= set(op["inputs"])
                changed = True
    return [op for op in rest if op["index"] in found]


def measure(name: str, out: Path) -> dict:
    from edgekd.export import export
    from edgekd.export.tflite import onnx_to_tflite
    from edgekd.quant import QATConfig
    from edgekd.quant.ptq import PTQConfig, post_training_quantize

    model, inputs, feeds, calib = zoo.prepared(name, 2)
    specs = zoo.input_specs(inputs)
    outputs = zoo.output_specs(zoo.torch_outputs(model, feeds[:1])[0])
    record = {"model": name}
    sim = QATConfig(target="arm-litert-xnnpack").resolved()
    for variant in ("float", "int8"):
        try:
            network = model if variant == "float" else post_training_quantize(
                model, calib, PTQConfig(observer="minmax"), sim)
            onnx_path = export(network, ["onnx"], out, variant, specs, outputs=outputs)[0].path
            record[variant] = delegation(onnx_to_tflite(onnx_path, out / f"{variant}.tflite", check=False))
        except Exception as err:  # a model that does not convert is that model's result
            record[variant] = {"error": zoo.first_line(err)}
    return record


def one_partition(record: dict, variant: str) -> bool | None:
    r = record.get(variant, {})
    return None if "error" in r else r["partitions"] == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only models whose name contains this")
    args = parser.parse_args()
    standin = zoo.nms_standin()
    records, start = [], time.perf_counter()
    for name in [n for n in zoo.ZOO if args.filter in n]:
        with tempfile.TemporaryDirectory() as tmp:
            records.append(measure(name, Path(tmp)))
    print(zoo.machine())
    print(f"{'model':24} {'float ops':>9} {'partitions':>10} {'int8 ops':>8} {'partitions':>10}")
    for r in records:
        cells = [(f"{r[v]['ops']}", f"{r[v]['partitions']}") if "error" not in r[v] else ("error", "-")
                 for v in ("float", "int8")]
        left = "".join(f"  {v} outside: " + ", ".join(f"{op} x{n}" for op, n in r[v]["outside"].items())
                       for v in ("float", "int8") if r[v].get("outside"))
        print(f"{r['model']:24} {cells[0][0]:>9} {cells[0][1]:>10} {cells[1][0]:>8} {cells[1][1]:>10}"
              + "".join(f"  {v}: {r[v]['error'][:80]}" for v in ("float", "int8") if "error" in r[v]) + left)
    converted = {v: [r for r in records if one_partition(r, v) is not None] for v in ("float", "int8")}
    summary = {f"{v}_one_partition": f"{sum(one_partition(r, v) for r in rs)}/{len(rs)}"
               for v, rs in converted.items()}
    summary["nms_standin"] = standin
    if standin:
        print("note: torchvision's C++ ops were missing; a pure-torch torchvision::nms/qnms stand-in was registered")
    if not args.filter:
        from edgekd import atomic

        atomic.write_text(RESULTS, json.dumps({**zoo.machine(), "seconds": round(time.perf_counter() - start),
                                               "summary": summary, "models": records}, indent=1))
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
