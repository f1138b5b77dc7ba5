"""Budget files and the check of a report against them.

A budget is a list of rules. Each rule selects artifacts by glob on the report's entry names
(``student-int8.*``) and optionally by target, and sets limits written with units:

    budgets:
      - artifact: ["student-int8.onnx", "student-int8.openvino"]
        target: x86-cpu
        max_size: 64KB
        max_p90_latency: 2ms
        max_peak_memory: 200MB
        min_accuracy: 95%
        max_accuracy_drop: 1.5%     # vs the teacher's PyTorch accuracy in the same report

The same rules may live in ``pyproject.toml`` as ``[[tool.edgekd.budgets]]`` tables. A limit on a
metric the report lacks for a selected artifact fails ("not measured"), and a rule that selects
no artifact fails: a budget never passes by checking nothing.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.budgets.verdict import CheckResult, Verdict
from edgekd.config import Config, FieldError, Source, load_yaml
from edgekd.errors import BudgetError, ConfigError
from edgekd.report import Report
from edgekd.units import format_size, parse_fraction, parse_size, parse_time_ms


@dataclass(frozen=True)
class Metric:
    key: str  # Entry.metric key, or "accuracy_drop" (derived)
    parse: Callable
    upper: bool  # True: value must be <= limit
    show: Callable[[float], str]


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


METRICS: dict[str, Metric] = {
    "max_size": Metric("size_bytes", parse_size, True, format_size),
    "max_p50_latency": Metric("latency.p50_ms", parse_time_ms, True, lambda v: f"{v:.4f} ms"),
    "max_p90_latency": Metric("latency.p90_ms", parse_time_ms, True, lambda v: f"{v:.4f} ms"),
    "max_p99_latency": Metric("latency.p99_ms", parse_time_ms, True, lambda v: f"{v:.4f} ms"),
    "max_peak_memory": Metric("peak_memory_bytes", parse_size, True, format_size),
    "max_model_memory": Metric("memory.model_peak_bytes", parse_size, True, format_size),
    "min_accuracy": Metric("accuracy", parse_fraction, False, _pct),
    "max_accuracy_drop": Metric("accuracy_drop", parse_fraction, True, _pct),
    "min_agreement": Metric("agreement", parse_fraction, False, _pct),
    # share of nodes that ran on the requested device/provider (e.g. 100% on an NPU)
    "min_accelerator_coverage": Metric("info.accelerator_coverage", parse_fraction, False, _pct),
}


@dataclass
class BudgetRule(Config):
    """Limits for the artifacts matching ``artifact`` (glob or list of globs) on ``target``."""

    artifact: str | list[str] = "*"
    target: str | None = None
    max_size: str | int | None = None
    max_p50_latency: str | int | float | None = None
    max_p90_latency: str | int | float | None = None
    max_p99_latency: str | int | float | None = None
    max_peak_memory: str | int | None = None
    max_model_memory: str | int | None = None
    min_accuracy: str | float | None = None
    max_accuracy_drop: str | float | None = None
    min_agreement: str | float | None = None
    min_accelerator_coverage: str | float | None = None
    limits: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        for name, metric in METRICS.items():
            raw = getattr(self, name)
            if raw is not None:
                try:
                    self.limits[name] = metric.parse(raw)
                except ConfigError as err:
                    raise FieldError(name, str(err)) from None
        if not self.limits:
            raise FieldError("artifact", f"rule sets no limit; use any of {', '.join(METRICS)}")

    @property
    def patterns(self) -> list[str]:
        return [self.artifact] if isinstance(self.artifact, str) else list(self.artifact)


@dataclass
class Budget(Config):
    budgets: list[BudgetRule] = field(default_factory=list)
    version: int = 1

    def __post_init__(self):
        if not self.budgets:
            raise FieldError("budgets", "no budget rules given")


def load_budget(path: str | Path) -> Budget:
    """Read budgets from a YAML file or from ``[[tool.edgekd.budgets]]`` in a pyproject.toml.

    Raises:
        BudgetError: missing file, bad syntax, unknown metric, bad unit (file, line and field named).
    """
    path = Path(path)
    try:
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"{path}: budget file not found") from None
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: invalid TOML ({err})") from None
            rules = data.get("tool", {}).get("edgekd", {}).get("budgets")
            if rules is None:
                raise ConfigError(f"{path}: no [[tool.edgekd.budgets]] tables found")
            return Budget.from_dict({"budgets": rules}, Source(f"{path} [tool.edgekd]"))
        data, source = load_yaml(path)
        return Budget.from_dict(data, source)
    except BudgetError:
        raise
    except ConfigError as err:
        raise BudgetError(str(err)) from None


def check(report: Report, budget: Budget) -> CheckResult:
    """Check every rule against the matching entries of ``report``."""
    result = CheckResult()
    for i, rule in enumerate(budget.budgets):
        entries = [e for e in report.entries if any(fnmatch.fnmatchcase(e.name, p) for p in rule.patterns)
                   and (rule.target is None or e.target in (None, rule.target))]
        if not entries:
            where = f" on target {rule.target}" if rule.target else ""
            result.verdicts.append(Verdict(" | ".join(rule.patterns), f"rule {i + 1}", f"matches artifacts{where}",
                                           "no artifact matched", False,
                                           f"report has: {', '.join(e.name for e in report.entries)}"))
            continue
        for entry in entries:
            for name, limit in rule.limits.items():
                result.verdicts.append(_verdict(report, entry, name, limit, getattr(rule, name)))
    return result


def _verdict(report: Report, entry, name: str, limit: float, raw) -> Verdict:
    metric = METRICS[name]
    if metric.key == "accuracy_drop":
        teacher = report.teacher_accuracy
        value = None if teacher is None or entry.accuracy is None else teacher - entry.accuracy
    else:
        value = entry.metric(metric.key)
    op = "<=" if metric.upper else ">="
    label = entry.name + (f" @{entry.target}" if entry.target else "")
    if value is None:
        return Verdict(label, name, f"{op} {raw}", "not measured", False,
                       "the report has no such measurement for this artifact")
    slack = 1e-9 * max(1.0, abs(limit))  # "95%" must pass at exactly 0.95 despite float rounding
    passed = value <= limit + slack if metric.upper else value >= limit - slack
    return Verdict(label, name, f"{op} {raw}", metric.show(value), passed)
