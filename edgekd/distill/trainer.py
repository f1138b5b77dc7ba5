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
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from edgekd import atomic
from edgekd.config import Config, FieldError
from edgekd.data import inputs as model_inputs
from edgekd.data.datasets import DataSplits
from edgekd.distill.distributed import Distributed
from edgekd.distill.hooks import FeatureTaps
from edgekd.distill.losses import Batch
from edgekd.distill.teachers.cache import find_cache
from edgekd.distill.teachers.live import LiveTeacher
from edgekd.errors import ConfigError, TrainingError
from edgekd.progress import progress


MAX_EPOCHS = 10_000  # beyond this a value is a typo (1e12), not a plan


@dataclass
class TrainConfig(Config):
    """Optimisation settings of one training stage.

    Attributes:
        epochs: passes over the training split; 0 (a teacher only) means no training: the
            teacher is used as its architecture builds it (a pretrained model such as
            ``minilm-l6-v2``).
        lr: peak learning rate (cosine decay to zero over the epochs).
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        optimizer: "adamw" or "sgd" (momentum 0.9, Nesterov).
        seed: seed of initialisation, shuffling and augmentation.
        shift: this stage's augmentation (random shifts of up to ``shift`` pixels), overriding
            ``data.shift``; None keeps the data section's. E.g. stronger shifts for students
            that learn from a teacher, which labels every shifted view (function matching,
            Beyer et al. 2022), than for the teacher trained on labels.
    """

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    seed: int = 0
    shift: int | None = None

    def __post_init__(self):
        if not 0 <= self.epochs <= MAX_EPOCHS:
            raise FieldError("epochs", f"expected 0..{MAX_EPOCHS} epochs (0: a pretrained teacher, not "
                                       f"trained), got {self.epochs}")
        if not 0 < self.lr < 10:
            raise FieldError("lr", f"expected a learning rate in (0, 10), got {self.lr}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.shift is not None and self.shift < 0:
            raise FieldError("shift", f"must be >= 0, got {self.shift}")


class Term(nn.Module):
    """One weighted (and possibly scheduled) loss term of an objective.

    ``weight`` and ``temperature`` are numbers or schedules (anything with
    ``value_at(epoch, epochs)``); ``set_epoch`` applies them at the start of each epoch.
    """

    def __init__(self, name: str, weight, loss: nn.Module, temperature=None):
        super().__init__()
        self.name, self.loss = name, loss
        self._weight, self._temperature = weight, temperature
        self.weight = _value(weight, 0, 1)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.weight = _value(self._weight, epoch, epochs)
        if self._temperature is not None:
            self.loss.temperature = _value(self._temperature, epoch, epochs)


def _value(spec, epoch: int, epochs: int) -> float:
    return float(spec.value_at(epoch, epochs)) if hasattr(spec, "value_at") else float(spec)


@dataclass
class TrainResult:
    """What a training stage produced: per-epoch history and the kept (best-val) epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0  # the task's quality metric on val (accuracy for classifiers)
    seconds: float = 0.0
    metric: str = "accuracy"  # which metric best_val_accuracy holds


def train(model: nn.Module, data: DataSplits, config: TrainConfig, terms: list[Term], *,
          task=None, teacher=None, augment_shift: int = 0, batch_size: int = 64, desc: str = "train",
          on_epoch_start: Callable[[int], None] | None = None, cache_views: int = 0,
          checkpoint: str | Path | None = None, resume: bool = False, run_key: str = "") -> TrainResult:
    """Train ``model`` in place on ``data.train`` with the weighted ``terms``; keep the best val epoch.

    ``task`` (``edgekd.tasks``; default image classification) says how a batch is augmented, how
    the model is called, where the class axis of the logits is, and which validation metric picks
    the kept epoch. ``teacher`` is a teacher provider (``edgekd.distill.teachers``) or a plain
    PyTorch model (wrapped as a ``LiveTeacher``). Terms that need labels only see labelled samples; when every
    term needs labels, only labelled samples are visited. With ``cache_views`` > 0 augmentation
    is one of that many fixed views per sample (epoch e uses view e mod views), so a teacher
    cache keyed by (sample, view) can serve it.

    Raises:
        ConfigError: a loss needs something the teacher cannot give (e.g. features of an ONNX
            teacher), or a feature path names no module.
        TrainingError: a loss term became NaN/inf (names epoch and term), a feature hook never
            fired, or a feature loss stayed exactly zero through the first epoch.
    """
    if config.epochs < 1:
        raise ConfigError(f"{desc}: training needs at least 1 epoch (0 is for a pretrained teacher, "
                          f"which is used as built)")
    task = task if task is not None else default_task()
    provider = _provider(teacher, terms, task)
    _check_needs(terms, provider)
    if find_cache(provider) is not None and augment_shift and not cache_views:
        raise ConfigError("a cached teacher needs fixed augmentation views (cache_views > 0): with "
                          "random shifts every epoch the cache would serve stale outputs")
    for term in terms:  # losses that read the task's geometry (a detection head's anchor points)
        if hasattr(term.loss, "bind"):
            term.loss.bind(task, data)
    student_paths = _tap_paths(terms, "student")
    taps = FeatureTaps(model, student_paths) if student_paths else None
    labels = data.visible_train_labels()
    visit = torch.arange(len(labels))
    if all(getattr(t.loss, "needs", "") == "labels" for t in terms):
        visit = visit[(labels >= 0).reshape(len(labels), -1).any(1)]  # label-only: unlabelled samples teach nothing
    if len(visit) == 0:
        raise TrainingError(f"{desc}: no labelled training samples and no teacher to learn from")
    if student_paths:
        _prepare_feature_losses(model, terms, taps, provider, task,
                                model_inputs.take(data.x_train, visit[:batch_size]), visit[:batch_size])
    term_params = [p for t in terms for p in t.parameters() if p.requires_grad]
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad] + term_params, config)
    dist = Distributed.current()
    net = dist.wrap(model)
    steps_per_epoch = math.ceil(len(visit) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15,
        anneal_strategy="cos")
    generator = torch.Generator().manual_seed(config.seed)
    result, best_state = TrainResult(metric=task.quality_metric), None
    first = 0
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        first, best_state = _resume(Path(checkpoint), model, terms, optimizer, scheduler, generator,
                                    result, run_key)
    start = time.perf_counter() - sum(r.get("seconds", 0.0) for r in result.history[-1:])
    bar = progress(range(first, config.epochs), desc=desc, unit="epoch", initial=first, total=config.epochs)
    try:
        for epoch in bar:
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            for term in terms:
                term.set_epoch(epoch, config.epochs)
            weights = torch.tensor([t.weight for t in terms])  # (terms,)
            model.train()
            term_sums = torch.zeros(len(terms), dtype=torch.float64)
            order = task.batch_order(visit[torch.randperm(len(visit), generator=generator)], data,
                                     batch_size, generator)
            view = epoch % cache_views if cache_views else 0
            for i in range(0, len(order), batch_size):
                if len(order[i:i + batch_size]) < dist.world:
                    break  # every rank needs a sample (DDP steps in lockstep)
                idx = order[i:i + batch_size]
                x = task.augment(model_inputs.take(data.x_train, idx), idx, shift=augment_shift,
                                 seed=config.seed, generator=generator, view=view if cache_views else None)
                x = task.trim(x, data)  # the global batch: every rank draws the same random numbers
                if dist.active:  # and cuts it alike; this rank takes its share
                    rows = dist.shard(torch.arange(len(idx)))
                    x, idx = model_inputs.take(x, rows), idx[rows]
                t_out, t_feats = provider(x, idx, view) if provider is not None else (None, {})
                logits = task.forward(net, x)
                batch = Batch(logits, labels[idx], t_out, taps.collect() if taps else {}, t_feats,
                              class_dim=task.class_dim, positions=task.token_positions(x))
                values = torch.stack([term.loss(batch) for term in terms])  # (terms,)
                if not torch.isfinite(values).all():  # one check per batch; name the culprit
                    bad = next(i for i, v in enumerate(values) if not torch.isfinite(v))
                    raise TrainingError(f"{desc}: loss term {terms[bad].name!r} became {values[bad].item()} "
                                        f"in epoch {epoch + 1}; lower the learning rate ({config.lr}) "
                                        f"or check the data for NaN/inf")
                term_sums = term_sums + values.detach() * len(idx)
                total = (values * weights).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                dist.average_gradients(term_params)  # DDP averages the model's; adapters here
                optimizer.step()
                scheduler.step()
            sums = dist.sum_dict(dict(zip([t.name for t in terms], term_sums.tolist())))
            if epoch == 0:
                _check_feature_losses_moved(terms, sums, desc)
            val_acc = validation_score(model, task, data)
            row = {"epoch": epoch + 1, f"val_{task.quality_metric}": val_acc}
            row.update({f"loss_{k}": v / len(order) for k, v in sums.items()})
            row.update({f"weight_{t.name}": t.weight for t in terms if hasattr(t._weight, "value_at")})
            result.history.append(row)
            if best_state is None or val_acc > result.best_val_accuracy:
                result.best_epoch, result.best_val_accuracy = epoch + 1, val_acc
                best_state = copy.deepcopy(model.state_dict())
            row["seconds"] = time.perf_counter() - start
            if checkpoint is not None and dist.rank == 0:
                _save(Path(checkpoint), epoch + 1, model, terms, optimizer, scheduler, generator,
                      result, best_state, run_key)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k not in ("epoch", "seconds")})
    finally:
        if taps is not None:
            taps.remove()
    model.load_state_dict(best_state)
    dist.broadcast_model(model)  # BatchNorm statistics differ per rank: all go on with rank 0's
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


CHECKPOINT_FORMAT = "edgekd-train-state"


def _save(path: Path, epochs_done: int, model, terms, optimizer, scheduler, generator, result,
          best_state, run_key: str) -> None:
    state = {"format": CHECKPOINT_FORMAT, "version": 1, "epochs_done": epochs_done, "run_key": run_key,
             "model": model.state_dict(), "terms": [t.state_dict() for t in terms],
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
             "history": result.history, "best_epoch": result.best_epoch,
             "best_val_accuracy": result.best_val_accuracy, "best_state": best_state}
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, model, terms, optimizer, scheduler, generator, result, run_key: str) -> tuple[int, dict]:
    try:
        state = torch.load(path, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an edgekd training checkpoint")
        if state.get("run_key", "") != run_key:
            raise ValueError("it was written by a run with other settings")
        model.load_state_dict(state["model"])
        for term, term_state in zip(terms, state["terms"]):
            term.load_state_dict(term_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except Exception as err:  # pickle/zip/key errors all mean the file cannot be resumed from
        raise TrainingError(f"{path}: cannot resume from this checkpoint ({str(err)[:200]}); "
                            f"delete it to start the stage again") from None
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    result.history = list(state["history"])
    result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
    return int(state["epochs_done"]), state["best_state"]


def _provider(teacher, terms: list[Term], task):
    """A teacher provider for ``teacher`` (None, a provider, or a PyTorch model)."""
    if teacher is None or not isinstance(teacher, nn.Module):
        return teacher
    return LiveTeacher(teacher, _tap_paths(terms, "teacher"), forward=task.forward)


def _tap_paths(terms: list[Term], side: str) -> list[str]:
    """Every module path the feature losses read on ``side`` ("student" or "teacher")."""
    losses = [t.loss for t in terms if getattr(t.loss, "needs", "") == "features"]
    return [p for loss in losses for p in loss.taps(getattr(loss, f"{side}_path"))]


def _check_needs(terms: list[Term], provider) -> None:
    for term in terms:
        needs = getattr(term.loss, "needs", "")
        if needs in ("teacher_output", "teacher_logits", "features") and provider is None:
            raise ConfigError(f"loss {term.name!r} needs a teacher")
        if needs == "teacher_logits" and provider.kind != "logits":
            raise ConfigError(f"loss {term.name!r} needs the teacher's logits; this teacher gives "
                              f"only {provider.kind} (use 'kd', which adapts to top-k and labels)")
        if needs == "features" and not set(term.loss.taps(term.loss.teacher_path)) <= set(
                getattr(provider, "feature_paths", [])):
            raise ConfigError(f"loss {term.name!r} needs teacher features at {term.loss.teacher_path!r}; "
                              f"this teacher gives logits only (feature losses need a PyTorch teacher)")


@torch.no_grad()
def _prepare_feature_losses(model, terms, taps, provider, task, x, idx) -> None:
    """One forward pass to learn feature shapes; feature losses build their adapters from it."""
    was_training = model.training
    model.eval()
    task.forward(model, x)
    s_feats = taps.collect()
    _, t_feats = provider(x, idx, 0)
    for term in terms:
        if getattr(term.loss, "needs", "") == "features":
            term.loss.prepare(term.loss.gather(s_feats, "student"), term.loss.gather(t_feats, "teacher"))
    model.train(was_training)


def _check_feature_losses_moved(terms: list[Term], sums: dict, desc: str) -> None:
    for term in terms:
        if getattr(term.loss, "kind", "") == "feature" and sums[term.name] == 0.0:
            raise TrainingError(f"{desc}: feature loss {term.name!r} was exactly zero for the whole "
                                f"first epoch: the two features carry no signal (check the module "
                                f"paths {term.loss.student_path!r} and {term.loss.teacher_path!r})")


def _optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def default_task():
    """The task of callers that name none: image classification."""
    from edgekd.tasks import create_task

    return create_task("image-classification")


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 512, task=None) -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched; ``x`` one tensor or a tuple (several inputs).
    # (N, C, H, W) -> (N, K)"""
    was_training = model.training
    model.eval()
    forward = task.forward if task is not None else model_inputs.call
    out = torch.cat([forward(model, b) for b in model_inputs.batches(x, batch_size)])
    model.train(was_training)
    return out


def validation_score(model: nn.Module, task, data: DataSplits) -> float:
    """The task's quality metric on the validation split (the best-epoch rule)."""
    logits = predict(model, data.x_val, task=task)
    return task.metrics(logits.numpy(), data.y_val.numpy())[task.quality_metric]


def evaluate(model: nn.Module, x, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] (classes on the last axis of the logits)."""
    return (predict(model, x).argmax(-1) == y).float().mean().item()
