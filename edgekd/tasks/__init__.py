"""Tasks: what a model takes, what it predicts, and how its quality is measured.

A ``Task`` is the one place that knows the shape of a problem: its input spec (names, dtypes,
named dynamic axes), how data is loaded, batched and augmented, how the model is called, what
the teacher's target is, which metrics are reported and which one is *the* quality figure that
budgets (``min_quality``, ``max_quality_drop``) read. The trainer, losses, exporters, runtime
sessions, benchmark inputs, reports and budgets take a task instead of assuming one float image
input. Built-in: ``image-classification``, ``object-detection`` (dense heads without NMS) and
``sentence-embedding`` (a text encoder measured against its teacher's embeddings) and
``text-classification`` (a fine-tuned encoder's classes). Add one with ``@register_task("name")`` on a ``Task``
subclass (``edgekd.tasks.base``), or name it in a recipe as ``package.module:Class`` (imported
then, like a user's model architecture).

This package is torch-free at import (``edgekd.tasks.spec`` is read by the benchmark child):
built-in tasks are named here by ``module:class`` and imported when created.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekd.registry import Registry

TASKS: Registry = Registry("task")
TASKS.register("image-classification")("edgekd.tasks.classification:ImageClassification")
TASKS.register("object-detection")("edgekd.tasks.detection:ObjectDetection")
TASKS.register("sentence-embedding")("edgekd.tasks.embedding:SentenceEmbedding")
TASKS.register("text-classification")("edgekd.tasks.text_classification:TextClassification")


def register_task(name: str):
    """Class decorator registering a ``Task`` subclass as ``name`` (``recipe: task: name``)."""
    def add(cls):
        TASKS.register(name)(cls)
        cls.name = name
        return cls
    return add


def list_tasks() -> list[str]:
    return TASKS.names()


def task_class(name: str):
    """The ``Task`` subclass registered as ``name``, or named ``package.module:Class``.

    Raises:
        UnknownNameError: no task of that name (lists the registered ones).
        ConfigError: a ``module:Class`` that cannot be imported or is not a Task.
    """
    from edgekd.errors import ConfigError

    if ":" in name and name not in TASKS:
        entry = name
    else:
        entry = TASKS.get(name)
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ConfigError(f"task {name!r}: cannot import module {module!r} ({err}); is it installed or on "
                          f"PYTHONPATH?") from None
    except AttributeError:
        raise ConfigError(f"task {name!r}: module {module!r} has no {attr!r}") from None
    from edgekd.tasks.base import Task

    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task {name!r} is {cls!r}, not a subclass of edgekd.tasks.base.Task")
    return cls


def create_task(name: str, **options: Any):
    """The task registered as ``name`` (or ``package.module:Class``), built with ``options``.

    Raises:
        UnknownNameError: no task of that name (lists the registered ones).
        ConfigError: a ``module:Class`` that cannot be imported or is not a Task.
    """
    task = task_class(name)(**options)
    task.name = name
    return task


__all__ = ["TASKS", "create_task", "list_tasks", "register_task"]
