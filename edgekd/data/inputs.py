"""Model inputs in memory: one tensor, or a tuple of tensors for a model with several inputs
(``input_ids`` and ``attention_mask``). Every tensor has the samples on its first axis, so a
batch is the same index taken from each. These few functions are the only code that knows the
difference, so the trainer, calibration and prediction work for any task's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def num_samples(x: Inputs) -> int:
    return len(as_tuple(x)[0])


def take(x: Inputs, index) -> Inputs:
    """Samples ``index`` (a slice, an index tensor or a boolean mask) of every input."""
    return tuple(t[index] for t in x) if isinstance(x, tuple) else x[index]


def cat(parts: Sequence[Inputs]) -> Inputs:
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(list(parts))


def call(model: nn.Module, x: Inputs) -> torch.Tensor:
    """``model(x)``, or ``model(*x)`` for several inputs (in the task's input order)."""
    return model(*x) if isinstance(x, tuple) else model(x)


def to_numpy(x: Inputs) -> np.ndarray | tuple[np.ndarray, ...]:
    """Inputs as numpy arrays of their own dtypes (token ids stay integers)."""
    if isinstance(x, tuple):
        return tuple(np.ascontiguousarray(t.detach().cpu().numpy()) for t in x)
    return np.ascontiguousarray(x.detach().cpu().numpy())


def batches(x: Inputs, batch_size: int) -> list[Inputs]:
    """Consecutive batches of ``batch_size`` samples (the last may be smaller)."""
    n = num_samples(x)
    return [take(x, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
