"""Tasks: what a model takes, what it predicts, and how its quality is measured.

A ``Task`` is the one place that knows the shape of a problem: its input spec (names, dtypes,
named dynamic axes), how data is loaded, batched and augmented, how the model is called, what
the teacher's target is, which metrics are reported and which one is *the* quality figure that
budgets (``min_quality``, ``max_quality_drop``) read. The trainer, losses, exporters, runtime
sessions, benchmark inputs, reports and budgets take a task instead of assuming one float image
input. Built-in: ``image-classification``. Add one with ``@register_task("name")`` on a ``Task``
subclass (``edgekd.tasks.base``).

This package is torch-free at import (``edgekd.tasks.spec`` is read by the benchmark child):
built-in tasks are named here by ``module:class`` and imported when created.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekd.registry import Registry

TASKS: Registry = Registry("task")
TASKS.register("image-classification")("edgekd.tasks.classification:ImageClassification")


def register_task(name: str):
    """Class decorator registering a ``Task`` subclass as ``name`` (``recipe: task: name``)."""
    def add(cls):
        TASKS.register(name)(cls)
        cls.name = name
        return cls
    return add


def list_tasks() -> list[str]:
    return TASKS.names()


def create_task(name: str, **options: Any):
    """The task registered as ``name``, built with ``options``.

    Raises:
        UnknownNameError: no task of that name (lists the registered ones).
    """
    entry = TASKS.get(name)
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    task = entry(**options)
    task.name = name
    return task


__all__ = ["TASKS", "create_task", "list_tasks", "register_task"]
