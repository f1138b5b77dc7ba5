"""The outcome of a budget check: one verdict per (rule, artifact, metric), and its renderings
(terminal table, JUnit XML for CI test reports, Markdown for a pull-request comment)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

Status = Literal["PASS", "WARN", "FAIL"]


@dataclass
class Verdict:
    artifact: str
    metric: str
    limit: str  # as written by the user, e.g. "<= 64KB"
    actual: str  # formatted measurement, or "not measured"
    status: Status
    note: str = ""
    estimated: bool = False  # the figure comes from the estimator, not a measurement

    @property
    def passed(self) -> bool:
        """PASS or WARN: only FAIL fails a build."""
        return self.status != "FAIL"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "FAIL"]

    @property
    def warnings(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "WARN"]

    def summary(self) -> str:
        n = len(self.verdicts)
        return (f"{n - len(self.failures) - len(self.warnings)} passed, {len(self.warnings)} warned, "
                f"{len(self.failures)} failed of {n} budget checks")

    def _rows(self, only_failures: bool) -> list[list[str]]:
        rows = self.failures if only_failures else self.verdicts
        return [[v.artifact, v.metric, v.limit, _actual(v), v.status] for v in rows]

    def table(self, only_failures: bool = False) -> str:
        head = ["artifact", "metric", "limit", "actual", "verdict"]
        body = self._rows(only_failures)
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])

    def markdown(self, deltas: str = "") -> str:
        """A pull-request comment: the verdict, failures and warnings first, then every check."""
        icon = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌"}
        lines = [f"### edgekd budgets: {'FAIL' if not self.passed else 'PASS'}", "", self.summary() + ".", ""]
        order = self.failures + self.warnings + [v for v in self.verdicts if v.status == "PASS"]
        lines += ["| | artifact | metric | limit | actual |", "|---|---|---|---|---|"]
        lines += [f"| {icon[v.status]} {v.status} | {v.artifact} | {v.metric} | {_md(v.limit)} | {_md(_actual(v))} |"
                  for v in order]
        if any(v.estimated for v in self.verdicts):
            lines += ["", "Figures marked *(estimated)* come from `edgekd estimate`, not a measurement."]
        if deltas:
            lines += ["", "#### Changes against the baseline report", "", deltas]
        return "\n".join(lines) + "\n"

    def junit(self, name: str = "edgekd budgets") -> str:
        """JUnit XML: one test case per verdict; FAIL is a failure, WARN passes with its note."""
        cases = []
        for v in self.verdicts:
            attrs = f"classname={quoteattr(v.artifact)} name={quoteattr(v.metric + ' ' + v.limit)}"
            body = ""
            if v.status == "FAIL":
                body = f"<failure message={quoteattr(f'{_actual(v)} (limit {v.limit})')}>{escape(v.note)}</failure>"
            elif v.status == "WARN":
                body = f"<system-out>{escape(f'WARN: {_actual(v)} (limit {v.limit}) {v.note}')}</system-out>"
            cases.append(f"  <testcase {attrs}>{body}</testcase>")
        return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(name)} '
                f'tests="{len(self.verdicts)}" failures="{len(self.failures)}" errors="0" skipped="0">\n'
                + "\n".join(cases) + "\n</testsuite>\n")


def _actual(v: Verdict) -> str:
    text = v.actual + (" (estimated)" if v.estimated else "")
    return text + (f" ({v.note})" if v.note else "")


def _md(text: str) -> str:
    return text.replace("|", "\\|")
