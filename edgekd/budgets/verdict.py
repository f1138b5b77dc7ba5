"""The outcome of a budget check: one verdict per (rule, artifact, metric), and a table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Verdict:
    artifact: str
    metric: str
    limit: str  # as written by the user, e.g. "<= 64KB"
    actual: str  # formatted measurement, or "not measured"
    passed: bool
    note: str = ""


@dataclass
class CheckResult:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def table(self, only_failures: bool = False) -> str:
        rows = self.failures if only_failures else self.verdicts
        head = ["artifact", "metric", "limit", "actual", "verdict"]
        body = [[v.artifact, v.metric, v.limit, v.actual + (f" ({v.note})" if v.note else ""),
                 "PASS" if v.passed else "FAIL"] for v in rows]
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])
