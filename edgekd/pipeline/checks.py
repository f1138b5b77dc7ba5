"""Checks a run makes before any training: the teacher, the student and the data fit together.

One forward pass of the student and of the teacher (a checkpoint, an ONNX file, or the
architecture the run would train) on one small batch of the training data. A model that does
not take the data's inputs (channels, image size, vocabulary) or does not give the data's
number of classes is refused here, with both shapes named, instead of crashing after an earlier
stage has trained for minutes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.data import inputs as model_inputs
from edgekd.errors import ConfigError, EdgeKDError
from edgekd.models.factory import create_model

PROBE_SAMPLES = 4


def check_compatibility(ctx) -> None:
    """Refuse a teacher or student that does not fit the run's data (exit 2), before training.

    Raises:
        ConfigError: a model fails on a batch of the data, or gives another number of classes.
        ModelLoadError: ``teacher.checkpoint`` or ``student.checkpoint`` cannot be loaded.
    """
    recipe, data, task = ctx.recipe, ctx.data, ctx.task
    n = min(PROBE_SAMPLES, model_inputs.num_samples(data.x_train))
    batch = model_inputs.take(data.x_train, slice(0, n))
    shapes = ", ".join(str(tuple(t.shape)) for t in model_inputs.as_tuple(batch))
    student = ctx.student_init()  # loads student.checkpoint when the recipe names one
    _probe(f"student {_named(recipe.student)}", lambda: task.forward(student.eval(), batch), shapes, data, task)
    checkpoint = recipe.teacher.checkpoint
    if checkpoint and Path(checkpoint).suffix == ".onnx":
        one = model_inputs.take(batch, slice(0, 1))  # an ONNX file may fix its batch at 1
        _probe(f"teacher {checkpoint}", lambda: _onnx_logits(checkpoint, one, task), shapes, data, task)
        return
    if checkpoint:
        teacher = ctx.teacher_checkpoint()
    else:  # the architecture the teacher stage would train (or has cached)
        teacher = create_model(recipe.teacher, **ctx.model_args())
    _probe(f"teacher {_named(recipe.teacher)}", lambda: task.forward(teacher.eval(), batch), shapes, data, task)


def _named(spec) -> str:
    return f"{spec.checkpoint} ({spec.arch})" if spec.checkpoint else repr(spec.arch)


def _onnx_logits(path: str, batch, task) -> torch.Tensor:
    """What the task's ``forward`` would give for the ONNX file's outputs on ``batch``."""
    from edgekd.runtime.api import open_session, run_joined

    return torch.from_numpy(run_joined(open_session(path, "onnxruntime"), model_inputs.to_numpy(batch), task))


def _probe(who: str, forward, shapes: str, data, task) -> None:
    try:
        with torch.no_grad():
            out = forward()
    except EdgeKDError as err:
        raise ConfigError(f"{who} does not fit the data ({data.source}, inputs {shapes}): {err}") from None
    except Exception as err:  # the model's own error: the first line names the layer and shapes
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{who} does not fit the data ({data.source}, a batch of inputs {shapes}): one "
                          f"forward pass failed with {type(err).__name__}: {detail}. Check the model's input "
                          f"channels/size against the data, or the data against the model") from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{who} returned {type(out).__name__} on a batch of the data; expected logits (a tensor)")
    classes = task.num_classes_of(out)
    if classes is not None and classes != data.num_classes:  # (None: no class scores, e.g. an embedding)
        raise ConfigError(f"{who} gives {classes} classes (output {tuple(out.shape)}, class axis "
                          f"{task.class_dim}) but the data ({data.source}) has {data.num_classes}; use a model "
                          f"made for {data.num_classes} classes, or other data")
