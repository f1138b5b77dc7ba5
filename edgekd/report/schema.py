"""``report.json``: every model and artifact of a run, with its quality metrics, size, latency and memory.

Each entry holds every metric its task reports (``metrics``; ``accuracy`` is also a field of its
own for classifiers); the report's ``task`` names the task and its quality metric, the one
figure budgets (``min_quality``, ``max_quality_drop``) read. Reports written before tasks had
neither: their quality metric is accuracy.

The schema is versioned (``schema_version``); ``load_report`` refuses files it does not know.
Entry names are ``<stage>.<format>`` (e.g. ``student-int8.onnx``), which budgets match by glob.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekd import atomic
from edgekd.errors import ConfigError
from edgekd.units import format_size

SCHEMA_VERSION = 1


@dataclass
class Entry:
    """One model or artifact. Missing measurements are None (e.g. latency of a PyTorch model)."""

    name: str
    stage: str
    format: str
    path: str | None = None
    size_bytes: int | None = None
    params: int | None = None
    accuracy: float | None = None
    agreement: float | None = None  # top-1 agreement with this stage's PyTorch model
    metrics: dict[str, float] = field(default_factory=dict)  # every metric of the task, by name
    runtime: str | None = None
    target: str | None = None
    threads: int | None = None
    latency: dict[str, float] | None = None  # p50_ms, p90_ms, p99_ms, mean_ms, std_ms, ...
    peak_memory_bytes: int | None = None  # resident high-water mark of the inference process
    memory: dict[str, int] | None = None  # baseline / after_load / peak / model_peak bytes
    info: dict[str, Any] = field(default_factory=dict)  # runtime versions, precision hint, ...

    def quality(self, metric: str = "accuracy") -> float | None:
        """The quality figure ``metric`` (older entries: ``accuracy``, which they kept as a field)."""
        value = self.metrics.get(metric)
        return self.accuracy if value is None and metric == "accuracy" else value

    def metric(self, key: str) -> float | None:
        """A metric by dotted key, e.g. ``latency.p90_ms`` or ``size_bytes``."""
        value: Any = self
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            if value is None:
                return None
        return value


@dataclass
class Report:
    targets: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)  # name, quality_metric, inputs, outputs
    warnings: list[str] = field(default_factory=list)  # what the run found wrong with its own results
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def entry(self, name: str, target: str | None = None) -> Entry | None:
        return next((e for e in self.entries if e.name == name and target in (None, e.target)), None)

    @property
    def quality_metric(self) -> str:
        """The metric that is the quality figure of this report's task (accuracy for classifiers
        and for reports written before tasks)."""
        return self.task.get("quality_metric") or "accuracy"

    @property
    def teacher_quality(self) -> float | None:
        """The teacher's quality figure: its PyTorch entry, or (an ONNX-only teacher) its first one."""
        teachers = [e for e in self.entries if e.stage == "teacher" and e.quality(self.quality_metric) is not None]
        teachers.sort(key=lambda e: e.format != "pytorch")
        return teachers[0].quality(self.quality_metric) if teachers else None

    @property
    def teacher_accuracy(self) -> float | None:
        """The teacher's accuracy: its PyTorch entry, or (an ONNX-only teacher) its first one."""
        teachers = [e for e in self.entries if e.stage == "teacher" and e.accuracy is not None]
        teachers.sort(key=lambda e: e.format != "pytorch")
        return teachers[0].accuracy if teachers else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        return atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def markdown(self) -> str:
        """The entries as a Markdown table: p50/p90 of inference on inputs in place (as the vendors'
        tools time it), call p50 of the whole call with the input and output copies."""
        metric = self.quality_metric
        head = (f"| artifact | runtime | target | size | params | {metric} | agreement | p50 | p90 | call p50 | peak mem |\n"
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = [head]
        for e in self.entries:
            lat = e.latency or {}
            estimated = bool(e.info.get("estimated"))
            name = f"{e.name} (estimated)" if estimated else e.name
            runtime = "-" if estimated else e.runtime or "pytorch"
            rows.append(f"| {name} | {runtime} | {e.target or '-'} | {format_size(e.size_bytes)} | "
                        f"{e.params if e.params is not None else '-'} | {_pct(e.quality(metric))} | "
                        f"{_pct(e.agreement)} | {_ms(lat.get('p50_ms'))} | {_ms(lat.get('p90_ms'))} | "
                        f"{_ms((e.info.get('call_latency') or {}).get('p50_ms'))} | {format_size(e.peak_memory_bytes)} |")
        rows += self._parity_rows()
        rows += [f"\n**WARNING**: {w}" for w in self.warnings]
        return "\n".join(rows)

    def _parity_rows(self) -> list[str]:
        """Each artifact's largest absolute difference from its PyTorch model on the test split,
        per output (e.g. a detection head's boxes in pixels and scores); for int8 artifacts also
        their agreement with the float model they were quantized from."""
        measured = [e for e in self.entries if e.info.get("parity")]
        if not measured:
            return []
        outputs = list(dict.fromkeys(name for e in measured for name in e.info["parity"]))
        rows = ["", "Largest |difference| from the PyTorch model on the test split, per output; agreement of "
                "int8 artifacts with the float model they were quantized from:", "",
                f"| artifact | runtime | target | {' | '.join(outputs)} | agreement vs float |",
                "|---|---|---|" + "---:|" * (len(outputs) + 1)]
        for e in measured:
            cells = [f"{e.info['parity'][o]['max_abs']:.3g}" if o in e.info["parity"] else "-" for o in outputs]
            cells.append(_pct((e.info.get("vs_float") or {}).get("agreement")))
            rows.append(f"| {e.name} | {e.runtime} | {e.target or '-'} | {' | '.join(cells)} |")
        return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.1f} µs" if v < 1 else f"{v:.2f} ms")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every report."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("edgekd", "torch", "onnx", "onnxruntime", "openvino"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "packages": versions}


def load_report(path: str | Path) -> Report:
    """Read a report.json written by edgekd.

    Raises:
        ConfigError: missing, not JSON, or not an edgekd report of a known schema version.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: report not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON report ({err})") from None
    if not isinstance(data, dict) or "entries" not in data or "schema_version" not in data:
        raise ConfigError(f"{path}: not an edgekd report (expected keys schema_version and entries)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{path}: report schema {data['schema_version']} is not supported "
                          f"(this edgekd reads schema {SCHEMA_VERSION})")
    names = {f.name for f in fields(Entry)}
    if not isinstance(data["entries"], list) or not all(isinstance(e, dict) for e in data["entries"]):
        raise ConfigError(f"{path}: malformed report: 'entries' must be a list of objects")
    for i, e in enumerate(data["entries"]):
        _check_entry(path, i, e)
    try:
        entries = [Entry(**{k: v for k, v in e.items() if k in names}) for e in data["entries"]]
        rest = {k: v for k, v in data.items() if k in {f.name for f in fields(Report)} and k != "entries"}
        return Report(entries=entries, **rest)
    except TypeError as err:
        raise ConfigError(f"{path}: malformed report entry ({err})") from None


_NUMBERS = ("size_bytes", "params", "accuracy", "agreement", "threads", "peak_memory_bytes")
_TABLES = ("latency", "memory", "info", "metrics")


def _check_entry(path: Path, i: int, entry: dict) -> None:
    """Numbers are numbers (or null) and tables are objects, so checks never meet a string."""
    where = f"{path}: entries[{i}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else "")
    show = lambda v: repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for key in ("name", "stage", "format"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {show(entry[key])}")
    for key in _NUMBERS:
        value = entry.get(key)
        if value is not None and not number(value):
            raise ConfigError(f"{where}.{key}: expected a number or null, got {show(value)}")
    for key in _TABLES:
        value = entry.get(key)
        if key == "info" and value is None and key in entry:
            raise ConfigError(f"{where}.info: expected an object, got null")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: expected an object or null, got {show(value)}")
    for key, value in (entry.get("metrics") or {}).items():
        if value is not None and not number(value):
            raise ConfigError(f"{where}.metrics.{key}: expected a number or null, got {show(value)}")
    for key, value in (entry.get("latency") or {}).items():
        ok = (isinstance(value, list) and all(map(number, value))) if key == "samples_ms" else number(value)
        if key.endswith("_ms") and not ok:
            raise ConfigError(f"{where}.latency.{key}: expected a number of milliseconds, got {show(value)}")
