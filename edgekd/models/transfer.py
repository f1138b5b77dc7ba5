"""Initialise a student from its teacher's layers (DistilBERT-style, Sanh et al. 2019).

DistilBERT takes every other layer of BERT. Here a student whose numbered blocks
(``features.block<i>`` in the built-in ConvNets) match every ``every``-th block of the teacher
starts from those blocks' weights (student block j <- teacher block j * every), and from the
teacher's other parameters (e.g. the classifier) where names and shapes agree. Built in:
``cnn-teacher-half`` is ``cnn-teacher`` with every other block, ~75k parameters.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from edgekd.errors import ConfigError


BLOCKS = r"^(features\.block)(\d+)\."  # the built-in ConvNets' numbered blocks


def init_from_teacher(student: nn.Module, teacher: nn.Module, *, every: int = 2,
                      pattern: str | None = None) -> dict[str, list[str]]:
    """Copy teacher block ``j * every`` into student block ``j``, and same-named parameters.
    ``pattern`` (prefix group, number group) finds the blocks; default: the student's
    ``block_pattern`` (BERT encoders: ``encoder.layer.<i>.``), else ``features.block<i>.``.

    Returns:
        {"copied": [student names], "kept": [student names left as initialised]}.

    Raises:
        ConfigError: a student block has no teacher counterpart or its shapes differ (names
            both parameters and shapes): the architectures do not allow it.
    """
    teacher_state = teacher.state_dict()
    block = re.compile(pattern or getattr(student, "block_pattern", BLOCKS))
    copied, kept, updates = [], [], {}
    for name, value in student.state_dict().items():
        match = block.match(name)
        source = (block.sub(lambda m: f"{m.group(1)}{int(m.group(2)) * every}.", name, count=1)
                  if match else name)
        if source not in teacher_state:
            if match:
                raise ConfigError(f"student {name} has no teacher counterpart {source}: the teacher "
                                  f"needs {every}x the student's blocks to initialise it")
            kept.append(name)
            continue
        if teacher_state[source].shape != value.shape:
            if match:
                raise ConfigError(f"student {name} {tuple(value.shape)} cannot take teacher {source} "
                                  f"{tuple(teacher_state[source].shape)}: the block widths differ")
            kept.append(name)
            continue
        updates[name] = teacher_state[source].detach().clone()
        copied.append(name)
    if not any(block.match(n) for n in copied):
        raise ConfigError("no student block matched a teacher block: initialising from the teacher "
                          "needs models with numbered blocks (features.block<i>)")
    with torch.no_grad():
        student.load_state_dict({**student.state_dict(), **updates})
    return {"copied": copied, "kept": kept}
