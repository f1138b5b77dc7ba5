"""The package's layering: lazy names resolve, light commands stay light, no import cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgekd
import edgekd.quant

ROOT = Path(edgekd.__file__).parent
HEAVY = ("torch", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime")


@pytest.mark.parametrize("package, name", [(edgekd, n) for n in edgekd._LAZY] +
                         [(edgekd.quant, n) for n in edgekd.quant._LAZY])
def test_every_lazy_name_resolves(package, name):
    assert getattr(package, name) is not None


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_light_modules_import_no_framework():
    assert _modules_after("import edgekd, edgekd.targets, edgekd.budgets, edgekd.report, edgekd.cli, "
                          "edgekd.tasks.spec, edgekd.bench.harness") == set()


@pytest.mark.parametrize("args", [["targets"], ["list", "runtimes"], ["bench", "--help"], ["check", "--help"]])
def test_light_commands_import_no_framework(args):
    code = ("from edgekd.cli import main\n"
            f"try:\n    main({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass")
    assert _modules_after(code) == set()


def test_check_of_a_report_imports_no_framework(tmp_path):
    from edgekd.report import Entry, Report

    Report(entries=[Entry("student.onnx", "student", "onnx", size_bytes=1000)]).write(tmp_path / "r.json")
    (tmp_path / "b.yaml").write_text("budgets:\n  - artifact: student.onnx\n    max_size: 2KB\n")
    code = ("from edgekd.cli import main\n"
            f"try:\n    main(['check', {str(tmp_path / 'r.json')!r}, '--budget', {str(tmp_path / 'b.yaml')!r}], "
            f"standalone_mode=False)\nexcept SystemExit:\n    pass")
    assert _modules_after(code) == set()


def test_entry_point_targets_imports_no_framework():
    """``python -m edgekd targets``, through ``__main__``: ``-X importtime`` lists every module it loaded."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgekd", "targets"], capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL)
    loaded = {line.rpartition("|")[2].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "x86-cpu" in run.stdout and loaded & set(HEAVY) == set()


def test_bench_of_an_onnx_file_imports_no_framework_in_the_parent(tmp_path):
    """The runtime loads in the benchmark's child process only."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "relu.onnx")
    code = ("from edgekd.cli import main\n"
            f"main(['bench', {str(tmp_path / 'relu.onnx')!r}, '--target', 'x86-cpu'], standalone_mode=False)")
    assert _modules_after(code) == set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], nested: bool = False) -> set[str]:
    """edgekd modules ``path`` imports when it is imported; with ``nested``, also those its
    functions import when called (a lazy import is still a dependency)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in (ast.walk(tree) if nested else tree.body):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    edges = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
            parts = target.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
            edges |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules}
    return edges - {name}


def test_no_import_cycles():
    """Not even through imports inside functions (``quant.qat`` <-> ``targets`` and ``runtime.litert``
    <-> ``litert_compiled`` once were)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: _imports(p, set(files), nested=True) for m, p in files.items()}

    def registration(a: str, b: str) -> bool:
        """A package importing its own submodules to register them (``distill.losses``, ``models``),
        which import names back from it: the one accepted pattern."""
        return a == b.rpartition(".")[0] or b == a.rpartition(".")[0] or a in ("edgekd",) or b in ("edgekd",)

    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if registration(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_models_do_not_import_quantization():
    for path in (ROOT / "models").glob("*.py"):
        assert not any(m.startswith("edgekd.quant") for m in _imports(path, {"edgekd.quant"})), path
