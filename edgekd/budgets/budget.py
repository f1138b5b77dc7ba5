"""Budget files and the check of a report against them.

A budget is a list of rules. Each rule selects artifacts by glob on the report's entry names
(``student-int8.*``) and optionally by target, and sets limits written with units:

    budgets:
      - artifact: ["student-int8.onnx", "student-int8.openvino"]
        target: x86-cpu
        max_size: 64KB
        max_p90_latency: 2ms
        max_peak_memory: 200MB
        min_quality: 95%            # the task's quality metric (accuracy for classifiers)
        max_quality_drop: 1.5%      # vs the teacher's PyTorch quality in the same report

``min_accuracy``, ``max_accuracy_drop`` and ``max_accuracy_drop_vs_baseline`` are the same rules
under their classification names; on a report whose task measures quality by another metric
they fail and say to use the ``*_quality*`` names.

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
from edgekd.config import Config, FieldError, Source, load_yaml, parse_field
from edgekd.errors import BudgetError, ConfigError, did_you_mean
from edgekd.report import Report
from edgekd.units import format_size, parse_fraction, parse_size, parse_time_ms


@dataclass(frozen=True)
class Metric:
    key: str  # Entry.metric key, or a derived one ("accuracy_drop", "compressed_size_bytes", ...)
    parse: Callable
    upper: bool  # True: value must be <= limit
    show: Callable[[float], str]
    noisy: bool = False  # a timing: checked with the rule's latency_tolerance


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _ms(v: float) -> str:
    return f"{v:.4f} ms"


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _parse_count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"expected a non-negative number, got {value!r}")
    return int(value)


def _parse_size_with_unit(value) -> int:
    """A size limit must say its unit: a bare ``64`` would silently mean 64 bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) or \
            (isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()):
        raise ConfigError(f"expected a size with a unit such as '64KB', '2MiB' or '512B', got {value!r} "
                          f"(a bare number is ambiguous: write {value}B if you mean bytes)")
    return parse_size(value)


def _check_glob(pattern: str) -> str:
    """fnmatch takes an unclosed '[' literally, so a typo would match nothing: refuse it."""
    start = pattern.find("[")
    while start != -1:
        close = pattern.find("]", start + 2)  # "[]" and "[!]" start a class that a later ']' closes
        if close == -1:
            raise ConfigError(f"glob {pattern!r} has an unclosed '['; close it, or write '[[]' for a literal '['")
        start = pattern.find("[", close + 1)
    return pattern


METRICS: dict[str, Metric] = {
    "max_size": Metric("size_bytes", _parse_size_with_unit, True, format_size),
    "max_compressed_size": Metric("compressed_size_bytes", _parse_size_with_unit, True, format_size),
    "max_params": Metric("params", _parse_count, True, _count),
    "max_macs": Metric("info.macs", _parse_count, True, _count),
    "max_p50_latency": Metric("latency.p50_ms", parse_time_ms, True, _ms, noisy=True),
    "max_p90_latency": Metric("latency.p90_ms", parse_time_ms, True, _ms, noisy=True),
    "max_p99_latency": Metric("latency.p99_ms", parse_time_ms, True, _ms, noisy=True),
    "max_peak_memory": Metric("peak_memory_bytes", _parse_size_with_unit, True, format_size),
    "max_model_memory": Metric("memory.model_peak_bytes", _parse_size_with_unit, True, format_size),
    "min_quality": Metric("quality", parse_fraction, False, _pct),
    "max_quality_drop": Metric("quality_drop", parse_fraction, True, _pct),
    "max_quality_drop_vs_baseline": Metric("quality_drop_vs_baseline", parse_fraction, True, _pct),
    "min_accuracy": Metric("accuracy", parse_fraction, False, _pct),
    "max_accuracy_drop": Metric("accuracy_drop", parse_fraction, True, _pct),
    "max_accuracy_drop_vs_baseline": Metric("accuracy_drop_vs_baseline", parse_fraction, True, _pct),
    "min_agreement": Metric("agreement", parse_fraction, False, _pct),
    # share of nodes that ran on the requested device/provider (e.g. 100% on an NPU)
    "min_accelerator_coverage": Metric("info.accelerator_coverage", parse_fraction, False, _pct),
}
GROWTH = {  # max_growth keys -> (Entry metric key, noisy)
    "size": ("size_bytes", False), "compressed_size": ("compressed_size_bytes", False),
    "params": ("params", False), "macs": ("info.macs", False),
    "p50_latency": ("latency.p50_ms", True), "p90_latency": ("latency.p90_ms", True),
    "p99_latency": ("latency.p99_ms", True),
    "peak_memory": ("peak_memory_bytes", False), "model_memory": ("memory.model_peak_bytes", False),
}
DEFAULT_LATENCY_TOLERANCE = 0.10


@dataclass
class BudgetRule(Config):
    """Limits for the artifacts matching ``artifact`` (glob or list of globs) on ``target``.

    Attributes:
        artifact, target: which report entries the rule checks.
        max_size ... min_accelerator_coverage: limits (``METRICS``), with units (``64KB``,
            ``5ms``, ``1.5%``).
        max_growth: regression limits against a baseline report (``edgekd check --baseline``),
            metric -> allowed relative growth, e.g. ``{p90_latency: 5%, size: 2%}``.
        warn: warning thresholds inside the limits, metric -> value, e.g. ``{max_size: 56KB}``:
            past them a check is WARN (reported, never fails the build).
        latency_tolerance: the noise of timings on this machine: a latency limit or latency
            growth broken by less than this fails with a note saying the failure is within the
            noise (default 10%).
    """

    artifact: str | list[str] = "*"
    target: str | None = None
    max_size: str | int | None = None
    max_compressed_size: str | int | None = None
    max_params: int | None = None
    max_macs: int | None = None
    max_p50_latency: str | int | float | None = None
    max_p90_latency: str | int | float | None = None
    max_p99_latency: str | int | float | None = None
    max_peak_memory: str | int | None = None
    max_model_memory: str | int | None = None
    min_quality: str | float | None = None
    max_quality_drop: str | float | None = None
    max_quality_drop_vs_baseline: str | float | None = None
    min_accuracy: str | float | None = None
    max_accuracy_drop: str | float | None = None
    max_accuracy_drop_vs_baseline: str | float | None = None
    min_agreement: str | float | None = None
    min_accelerator_coverage: str | float | None = None
    max_growth: dict[str, str | float] = field(default_factory=dict)
    warn: dict[str, str | int | float] = field(default_factory=dict)
    latency_tolerance: str | float = DEFAULT_LATENCY_TOLERANCE
    limits: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    growth: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    warnings: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    tolerance: float = field(default=DEFAULT_LATENCY_TOLERANCE, init=False, repr=False)

    def __post_init__(self):
        for i, pattern in enumerate(self.patterns):
            parse_field("artifact" if isinstance(self.artifact, str) else f"artifact.{i}", _check_glob, pattern)
        for name, metric in METRICS.items():
            raw = getattr(self, name)
            if raw is not None:
                self.limits[name] = parse_field(name, metric.parse, raw)
        for key, raw in self.max_growth.items():
            if key not in GROWTH:
                raise FieldError(f"max_growth.{key}", f"unknown metric{did_you_mean(key, GROWTH)}; "
                                                      f"valid: {', '.join(GROWTH)}")
            self.growth[key] = parse_field(f"max_growth.{key}", parse_fraction, raw, maximum=None)
        for name, raw in self.warn.items():
            if name not in self.limits:
                raise FieldError(f"warn.{name}", f"warns before a limit this rule does not set; set "
                                                 f"{name} too{did_you_mean(name, METRICS)}")
            metric = METRICS[name]
            value = parse_field(f"warn.{name}", metric.parse, raw)
            limit = self.limits[name]
            if (metric.upper and value > limit) or (not metric.upper and value < limit):
                raise FieldError(f"warn.{name}", f"the warning threshold {raw!r} must lie inside the "
                                                 f"limit ({'<=' if metric.upper else '>='} {getattr(self, name)!r})")
            self.warnings[name] = value
        self.tolerance = parse_field("latency_tolerance", parse_fraction, self.latency_tolerance)
        if not 0 <= self.tolerance < 1:
            raise FieldError("latency_tolerance", f"expected a fraction in [0, 1), got {self.latency_tolerance!r}")
        if not self.limits and not self.growth:
            raise FieldError("artifact", f"rule sets no limit; use any of {', '.join(METRICS)} or max_growth")

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


def check(report: Report, budget: Budget, baseline: Report | None = None,
          baseline_measured_here: bool = False) -> CheckResult:
    """Check every rule against the matching entries of ``report``.

    ``baseline``: an earlier report, for ``max_growth`` and ``max_quality_drop_vs_baseline``
    (``max_accuracy_drop_vs_baseline``).
    Timings can only be compared with a baseline measured in the same job
    (``baseline_measured_here``, as ``edgekd check --measure --baseline`` does); a latency
    growth against a stored baseline from another job is a WARN that says so, never gated.
    """
    result = CheckResult()
    known = [*report.targets, *(e.target for e in report.entries if e.target)]
    for i, rule in enumerate(budget.budgets):
        if rule.target is not None and known and rule.target not in known:  # a typo: exit 2, not a FAIL
            raise BudgetError(f"budgets.{i}.target: unknown target {rule.target!r}{did_you_mean(rule.target, set(known))}; "
                              f"the report has targets {', '.join(dict.fromkeys(known))}")
        entries = [e for e in report.entries if any(fnmatch.fnmatchcase(e.name, p) for p in rule.patterns)
                   and (rule.target is None or e.target in (None, rule.target))]
        if not entries:
            where = f" on target {rule.target}" if rule.target else ""
            names = list(dict.fromkeys(e.name for e in report.entries))
            shown = ", ".join(names[:3]) + (f", ... ({len(names) - 3} more)" if len(names) > 3 else "")
            result.verdicts.append(Verdict(" | ".join(rule.patterns), f"rule {i + 1}", f"matches artifacts{where}",
                                           "no artifact matched", "FAIL", f"report has: {shown or 'no entries'}"))
            continue
        for entry in entries:
            old = _baseline_entry(baseline, entry)
            for name, limit in rule.limits.items():
                if rule.target is None and _estimate_lacks(report, entry, name, old):
                    continue  # a rule for every target does not ask estimate-only rows for measurements
                result.verdicts.append(_verdict(report, entry, name, limit, rule, old))
            for key, allowed in rule.growth.items():
                result.verdicts.append(_growth(entry, key, allowed, rule, old, baseline, baseline_measured_here))
    return result


def _estimate_lacks(report: Report, entry, name: str, old) -> bool:
    """An estimate-only row (a target edgekd cannot run on) has no figure for ``name`` and no
    reason it should fail it (a model its target cannot run, or an incomplete MAC count, still fails)."""
    if not entry.info.get("estimated") or entry.info.get("not_runnable"):
        return False
    if name == "max_macs" and entry.info.get("macs_unmodeled"):
        return False
    return _value(report, entry, METRICS[name].key, old) is None


def _baseline_entry(baseline: Report | None, entry):
    if baseline is None:
        return None
    return next((e for e in baseline.entries if e.name == entry.name and e.target == entry.target), None)


ACCURACY_ALIASES = {"min_accuracy": "min_quality", "max_accuracy_drop": "max_quality_drop",
                    "max_accuracy_drop_vs_baseline": "max_quality_drop_vs_baseline"}


def _value(report: Report, entry, key: str, old):
    metric = report.quality_metric
    if key == "quality":
        return entry.quality(metric)
    if key == "quality_drop":
        teacher, value = report.teacher_quality, entry.quality(metric)
        return None if teacher is None or value is None else teacher - value
    if key == "quality_drop_vs_baseline":
        before, value = (old.quality(metric) if old is not None else None), entry.quality(metric)
        return None if before is None or value is None else before - value
    if key == "accuracy_drop":
        teacher = report.teacher_accuracy
        return None if teacher is None or entry.accuracy is None else teacher - entry.accuracy
    if key == "accuracy_drop_vs_baseline":
        return None if old is None or old.accuracy is None or entry.accuracy is None else old.accuracy - entry.accuracy
    if key == "compressed_size_bytes":
        return _compressed(entry)
    return entry.metric(key)


def _baseline_compressed(old, new) -> int | None:
    """A baseline's compressed size as recorded in its report; its file only when that is not the
    new artifact's own file (a stored report of the same output folder points at the new build)."""
    recorded = old.info.get("compressed_size_bytes")
    if recorded is not None:
        return recorded
    if old.path and new.path and Path(old.path).is_file() and Path(new.path).is_file() \
            and Path(old.path).resolve() != Path(new.path).resolve():
        return compressed_size(old.path)
    return None


def _compressed(entry) -> int | None:
    """The artifact's compressed size as recorded when the report was made, else from its file."""
    recorded = entry.info.get("compressed_size_bytes")
    return recorded if recorded is not None else compressed_size(entry.path)


def compressed_size(path) -> int | None:
    """Bytes of the artifact after zlib level 9 (with its .bin for an OpenVINO IR): what an OTA
    update or an app bundle pays. None when the file is not there."""
    import zlib

    if not path or not Path(path).is_file():
        return None
    files = [Path(path)] + ([Path(path).with_suffix(".bin")] if Path(path).suffix == ".xml" else [])
    return sum(len(zlib.compress(f.read_bytes(), 9)) for f in files if f.is_file())


def _label(entry) -> str:
    return entry.name + (f" @{entry.target}" if entry.target else "")


def _verdict(report: Report, entry, name: str, limit: float, rule: BudgetRule, old) -> Verdict:
    metric = METRICS[name]
    raw = getattr(rule, name)
    op = "<=" if metric.upper else ">="
    if name in ACCURACY_ALIASES and report.quality_metric != "accuracy":
        return Verdict(_label(entry), name, f"{op} {raw}", "not applicable", "FAIL",
                       f"task {report.task.get('name')!r} measures quality as {report.quality_metric!r}, not "
                       f"accuracy: write {ACCURACY_ALIASES[name]}")
    value = _value(report, entry, metric.key, old)
    if metric.key.startswith("quality"):
        name = f"{name} ({report.quality_metric})"
    estimated = bool(entry.info.get("estimated")) and metric.noisy  # sizes and counts are exact
    if value is None:
        if "baseline" in metric.key and old is not None and old.quality(report.quality_metric) is not None:
            why = ("this entry has no quality figure (artifact files measured with --measure have none: "
                   "check the report of a pipeline run)")
        elif "baseline" in metric.key:
            why = "no baseline report entry to compare with (edgekd check --baseline)"
        elif name == "max_macs" and entry.info.get("macs_unmodeled"):
            why = (f"the MAC count is incomplete: the estimator does not model {entry.info['macs_unmodeled']}; "
                   f"gate this model on measured latency instead")
        elif entry.info.get("not_runnable") and metric.noisy:
            why = entry.info["not_runnable"]
        elif name in ("max_params", "max_macs") and entry.format != "onnx":
            why = (f"{name[4:]} are counted on ONNX graphs; gate them on the model's .onnx artifact "
                   f"(artifact: '*.onnx')")
        else:
            why = "the report has no such measurement for this artifact"
        return Verdict(_label(entry), name, f"{op} {raw}", "not measured", "FAIL", why, estimated)
    slack = 1e-9 * max(1.0, abs(limit))  # "95%" must pass at exactly 0.95 despite float rounding
    passed = value <= limit + slack if metric.upper else value >= limit - slack
    note, status = "", "PASS" if passed else "FAIL"
    if not passed and metric.noisy and value <= limit * (1 + rule.tolerance):
        note = (f"within the noise: {100 * (value / limit - 1):.1f}% over the limit, latency_tolerance "
                f"{100 * rule.tolerance:.0f}%; rerun or compare with a baseline measured in this job")
    key = name.split(" ")[0]
    warn = rule.warnings.get(key)
    if passed and warn is not None and (value > warn + slack if metric.upper else value < warn - slack):
        status, note = "WARN", f"past the warning threshold {rule.warn[key]}"
    return Verdict(_label(entry), name, f"{op} {raw}", metric.show(value), status, note, estimated)


def _growth(entry, key: str, allowed: float, rule: BudgetRule, old, baseline, measured_here: bool) -> Verdict:
    metric_key, noisy = GROWTH[key]
    limit = f"growth <= {rule.max_growth[key]}"
    name = f"max_growth.{key}"
    estimated = bool(entry.info.get("estimated")) and noisy
    if baseline is None or old is None:
        why = ("no baseline report given (edgekd check --baseline OLD.json)" if baseline is None
               else "the baseline report has no such artifact")
        return Verdict(_label(entry), name, limit, "not compared", "FAIL", why, estimated)
    new_value = _compressed(entry) if metric_key == "compressed_size_bytes" else entry.metric(metric_key)
    old_value = (_baseline_compressed(old, entry) if metric_key == "compressed_size_bytes"
                 else old.metric(metric_key))
    if new_value is None or old_value is None:
        side = "this report" if new_value is None else "the baseline"
        return Verdict(_label(entry), name, limit, "not measured", "FAIL",
                       f"{side} lacks this measurement", estimated)
    if old_value == 0:
        return Verdict(_label(entry), name, limit, f"{old_value} -> {new_value}", "FAIL" if new_value else "PASS",
                       "the baseline value is 0: a relative growth is undefined" if new_value else "", estimated)
    growth = new_value / old_value - 1
    actual = f"{100 * growth:+.2f}%"
    if noisy and not measured_here:
        return Verdict(_label(entry), name, limit, actual, "WARN",
                       "the baseline's timings come from another job or machine: compared, not gated "
                       "(run edgekd check --measure --baseline to time both here)", estimated)
    if growth <= allowed + 1e-12:
        return Verdict(_label(entry), name, limit, actual, "PASS", "", estimated)
    note = ""
    if noisy and growth <= allowed + rule.tolerance:
        note = (f"within the noise: latency_tolerance {100 * rule.tolerance:.0f}% covers this growth; "
                f"rerun to confirm")
    return Verdict(_label(entry), name, limit, actual, "FAIL", note, estimated)
