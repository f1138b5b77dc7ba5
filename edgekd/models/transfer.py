"""Initialise a student from its teacher's layers (DistilBERT-style, Sanh et al. 2019).

DistilBERT takes every other layer of BERT. Here a student whose numbered blocks
(``features.block<i>`` in the built-in ConvNets) match every ``every``-th block of the teacher
starts from those blocks' weights (student block j <- teacher block j * every), and from the
teacher's other parameters (e.g. the classifier) where names and shapes agree. Built in:
``cnn-teacher-half`` is ``cnn-teacher`` with every other block, ~75k parameters.

A *narrower* student (fewer channels, a smaller hidden size, fewer heads or neurons) starts from
the teacher's weights truncated to its widths with ``widths="truncate"``: every tensor whose
sides are each at most the teacher's takes the teacher tensor's leading slice along every side
(the first channels, the first neurons of a feed-forward layer; for a BERT block whose heads
keep the teacher's head size, the first heads of each attention and the first hidden dimensions
of the residual stream, its LayerNorms and embeddings alike), as weight-inheritance methods
start a pruned network. Distillation then repairs what the cut removed.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from edgekd.errors import ConfigError


BLOCKS = r"^(features\.block)(\d+)\."  # the built-in ConvNets' numbered blocks


def init_from_teacher(student: nn.Module, teacher: nn.Module, *, every: int = 2,
                      pattern: str | None = None, widths: str = "match") -> dict[str, list[str]]:
    """Copy teacher block ``j * every`` into student block ``j``, and same-named parameters.
    ``pattern`` (prefix group, number group) finds the blocks; default: the student's
    ``block_pattern`` (BERT encoders: ``encoder.layer.<i>.``), else ``features.block<i>.``.
    ``widths``: "match" (shapes must agree) or "truncate" (a narrower student tensor takes the
    teacher's leading slice; see the module docstring).

    Returns:
        {"copied": [student names], "kept": [student names left as initialised],
        "truncated": [student names copied from a leading slice]}.

    Raises:
        ConfigError: a student block has no teacher counterpart or its shapes differ (names
            both parameters and shapes; with "truncate": a side wider than the teacher's, or
            another number of sides): the architectures do not allow it.
    """
    if widths not in ("match", "truncate"):
        raise ConfigError(f"widths must be 'match' or 'truncate', got {widths!r}")
    teacher_state = teacher.state_dict()
    block = re.compile(pattern or getattr(student, "block_pattern", BLOCKS))
    copied, kept, truncated, updates = [], [], [], {}
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
        theirs = teacher_state[source]
        if theirs.shape != value.shape:
            fits = theirs.dim() == value.dim() and all(s <= t for s, t in zip(value.shape, theirs.shape))
            if widths == "truncate" and fits:
                updates[name] = theirs[tuple(slice(0, s) for s in value.shape)].detach().clone()
                copied.append(name)
                truncated.append(name)
                continue
            if match:
                hint = ("" if widths == "truncate" else
                        "; a narrower student can start from the teacher's truncated weights "
                        "(distill.init_widths: truncate)")
                raise ConfigError(f"student {name} {tuple(value.shape)} cannot take teacher {source} "
                                  f"{tuple(theirs.shape)}: the block widths differ{hint}")
            kept.append(name)
            continue
        updates[name] = theirs.detach().clone()
        copied.append(name)
    if not any(block.match(n) for n in copied):
        raise ConfigError("no student block matched a teacher block: initialising from the teacher "
                          "needs models with numbered blocks (features.block<i>)")
    with torch.no_grad():
        student.load_state_dict({**student.state_dict(), **updates})
    return {"copied": copied, "kept": kept, "truncated": truncated}
