"""``edgekd compare OLD.json NEW.json``: per-metric deltas between two reports.

Entries are matched by (name, target); for each metric both reports have, the table gives old,
new, the difference and the relative change, so a regression between two commits is one glance
away. Entries present in only one report are listed as added or removed. Estimated figures keep
their label. Gating on such changes is ``edgekd check`` with a baseline; this only reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekd.report.schema import Report

METRICS = {  # dotted key -> (label, unit kind)
    "size_bytes": ("size", "bytes"),
    "params": ("params", "count"),
    "accuracy": ("accuracy", "fraction"),
    "agreement": ("agreement", "fraction"),
    "latency.p50_ms": ("p50", "ms"),
    "latency.p90_ms": ("p90", "ms"),
    "latency.p99_ms": ("p99", "ms"),
    "info.call_latency.p50_ms": ("call p50", "ms"),  # the whole call, input and output copies included
    "peak_memory_bytes": ("peak memory", "bytes"),
    "info.accelerator_coverage": ("accelerator coverage", "fraction"),
}


@dataclass
class Delta:
    entry: str
    target: str | None
    metric: str
    old: float | None
    new: float | None

    @property
    def change(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old

    @property
    def relative(self) -> float | None:
        return None if self.change is None or not self.old else self.change / abs(self.old)

    def to_dict(self) -> dict:
        return {**asdict(self), "change": self.change, "relative": self.relative}


def compare_reports(old: Report, new: Report) -> list[Delta]:
    """Every metric of every entry that either report has (None where a side lacks it)."""
    keys = [(e.name, e.target) for e in old.entries]
    keys += [(e.name, e.target) for e in new.entries if (e.name, e.target) not in keys]
    deltas = []
    for name, target in keys:
        a = next((e for e in old.entries if (e.name, e.target) == (name, target)), None)
        b = next((e for e in new.entries if (e.name, e.target) == (name, target)), None)
        task_metrics = sorted({m for e in (a, b) if e is not None for m in e.metrics} - {"accuracy"})
        for metric in [*METRICS, *(f"metrics.{m}" for m in task_metrics)]:
            va = a.metric(metric) if a is not None else None
            vb = b.metric(metric) if b is not None else None
            if va is None and vb is None:
                continue
            deltas.append(Delta(name, target, metric, _number(va), _number(vb)))
    return deltas


def different_inputs(old: Report, new: Report) -> list[str]:
    """Why two reports' quality figures may not be comparable: other data (fingerprint, source,
    split sizes) or another task. Empty when both say they used the same."""
    warnings = []
    a, b = old.data or {}, new.data or {}
    if a.get("fingerprint") and b.get("fingerprint") and a["fingerprint"] != b["fingerprint"]:
        split = lambda d: "/".join(str(d.get(k, "?")) for k in ("train", "val", "test"))  # noqa: E731
        warnings.append(f"the reports used different data ({a.get('source')} {split(a)} vs {b.get('source')} "
                        f"{split(b)}; fingerprints {a['fingerprint'][:12]} vs {b['fingerprint'][:12]}): quality "
                        f"deltas compare different test sets")
    ta, tb = (old.task or {}).get("name"), (new.task or {}).get("name")
    if ta and tb and ta != tb:
        warnings.append(f"the reports are of different tasks ({ta} vs {tb})")
    return warnings


def describe(metric: str) -> tuple[str, str]:
    """(label, unit kind) of a metric key; a task's own metrics (``metrics.<name>``) are fractions."""
    return METRICS.get(metric) or (metric.partition(".")[2], "fraction")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    kind = describe(metric)[1]
    if kind == "bytes":
        from edgekd.units import format_size

        return format_size(int(value))
    if kind == "fraction":
        return f"{100 * value:.2f}%"
    if kind == "ms":
        return f"{value * 1000:.1f} µs" if value < 1 else f"{value:.3f} ms"
    return f"{value:,.0f}"


def format_change(delta: Delta) -> str:
    if delta.old is None:
        return "added"
    if delta.new is None:
        return "removed"
    kind = describe(delta.metric)[1]
    if kind == "fraction":
        text = f"{100 * delta.change:+.2f} pt"
    elif kind == "ms":
        text = f"{delta.change * 1000:+.1f} µs" if abs(delta.change) < 1 else f"{delta.change:+.3f} ms"
    elif kind == "bytes":
        text = f"{delta.change:+,.0f} B"
    else:
        text = f"{delta.change:+,.0f}"
    return text + (f" ({100 * delta.relative:+.1f}%)" if delta.relative is not None and kind != "fraction" else "")


def table(deltas: list[Delta], changed_only: bool = False) -> str:
    rows = [d for d in deltas if not changed_only or d.change != 0]
    lines = [f"{'artifact':32s} {'target':12s} {'metric':22s} {'old':>12s} {'new':>12s}  change"]
    for d in rows:
        lines.append(f"{d.entry[:32]:32s} {(d.target or '-')[:12]:12s} {describe(d.metric)[0][:22]:22s} "
                     f"{format_value(d.metric, d.old):>12s} {format_value(d.metric, d.new):>12s}  {format_change(d)}")
    return "\n".join(lines)


__all__ = ["Delta", "compare_reports", "table"]
