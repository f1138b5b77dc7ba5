"""The training loop shared by every stage: teacher, scratch student, KD student and QAT.

An ``Objective`` is a list of weighted loss terms; each term is logged per epoch. The teacher, when
given, runs in eval mode without gradients and is never part of the optimizer. The best epoch on
the validation split is kept (the same rule for every stage, so comparisons are fair).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from edgekd.config import Config, FieldError
from edgekd.data.datasets import DataSplits, random_shift
from edgekd.errors import TrainingError
from edgekd.progress import progress


@dataclass
class TrainConfig(Config):
    """Optimisation settings of one training stage.

    Attributes:
        epochs: passes over the training split.
        lr: peak learning rate (cosine decay to zero over the epochs).
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        optimizer: "adamw" or "sgd" (momentum 0.9, Nesterov).
        seed: seed of initialisation, shuffling and augmentation.
    """

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise FieldError("epochs", f"must be >= 1, got {self.epochs}")
        if not 0 < self.lr < 10:
            raise FieldError("lr", f"expected a learning rate in (0, 10), got {self.lr}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class Term:
    """One weighted loss term of an objective."""

    name: str
    weight: float
    loss: nn.Module


@dataclass
class TrainResult:
    """What a training stage produced: per-epoch history and the kept (best-val) epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    seconds: float = 0.0


def train(model: nn.Module, data: DataSplits, config: TrainConfig, terms: list[Term], *,
          teacher: nn.Module | None = None, augment_shift: int = 0, batch_size: int = 64,
          desc: str = "train", on_epoch_start: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data.train`` with the weighted ``terms``; keep the best val epoch.

    Raises:
        TrainingError: a loss term became NaN/inf (names the epoch and the term).
    """
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config)
    steps_per_epoch = math.ceil(len(data.y_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15,
        anneal_strategy="cos")
    generator = torch.Generator().manual_seed(config.seed)
    result, best_state = TrainResult(), None
    start = time.perf_counter()
    bar = progress(range(config.epochs), desc=desc, unit="epoch")
    for epoch in bar:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        sums = {t.name: 0.0 for t in terms}
        order = torch.randperm(len(data.y_train), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            x = random_shift(x, augment_shift, generator)
            with torch.no_grad():
                t_logits = teacher(x) if teacher is not None else None
            logits = model(x)
            total = 0.0
            for term in terms:
                value = term.loss(logits, t_logits, y)
                if not torch.isfinite(value):
                    raise TrainingError(f"{desc}: loss term {term.name!r} became {value.item()} in "
                                        f"epoch {epoch + 1}; lower the learning rate ({config.lr}) "
                                        f"or check the data for NaN/inf")
                sums[term.name] += value.item() * len(idx)
                total = total + term.weight * value
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
        val_acc = evaluate(model, data.x_val, data.y_val)
        row = {"epoch": epoch + 1, "val_accuracy": val_acc}
        row.update({f"loss_{k}": v / len(order) for k, v in sums.items()})
        result.history.append(row)
        if best_state is None or val_acc > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch + 1, val_acc
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched.  # (N, C, H, W) -> (N, K)"""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (predict(model, x).argmax(1) == y).float().mean().item()
