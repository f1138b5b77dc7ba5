"""Budgets: limits on size, latency, memory and the task's quality metric, checked against a report."""

from edgekd.budgets.budget import Budget, BudgetRule, check, load_budget
from edgekd.budgets.verdict import CheckResult, Verdict

__all__ = ["Budget", "BudgetRule", "CheckResult", "Verdict", "check", "load_budget"]
