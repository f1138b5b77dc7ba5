"""The stages of a run, in order: one ``Stage`` entry each.

A stage has a name, a condition on the recipe, and a ``build`` that reads the ``RunContext`` and
returns what it produced (a ``Product``: a float model, a quantized model, or a teacher file), or
None for a stage that only changes the context (mixed precision chooses per-layer precisions).
Everything after training (export, validation, parity, benchmarks, report, budgets:
``edgekd.pipeline.phases``) iterates over the products, so adding a stage is one entry here.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.distill.api import distill, train_scratch
from edgekd.distill.distributed import Distributed
from edgekd.distill.teachers.provider import build_teacher_provider
from edgekd.errors import ModelLoadError
from edgekd.models.factory import create_model, load_checkpoint, save_checkpoint
from edgekd.models.transfer import init_from_teacher
from edgekd.pipeline.context import Product, RunContext, fit_summary
from edgekd.quant.finetune import qat_finetune
from edgekd.quant.mixed_precision import choose_mixed_precision
from edgekd.quant.ptq import post_training_quantize
from edgekd.quant.qat import QATConfig
from edgekd.recipe import Recipe


@dataclass(frozen=True)
class Stage:
    """One step of a run: ``build(ctx, name)`` when ``enabled(recipe)``."""

    name: str
    build: Callable[[RunContext, str], Product | None]
    enabled: Callable[[Recipe], bool] = lambda recipe: True
    description: str = ""


def onnx_teacher(recipe: Recipe) -> bool:
    """The recipe's teacher is a deployed ONNX file (run in onnxruntime, logits only)."""
    return bool(recipe.teacher.checkpoint) and Path(recipe.teacher.checkpoint).suffix == ".onnx"


def _teacher(ctx: RunContext, name: str) -> Product:
    """Load the teacher from the recipe's checkpoint, or from the cache, or train and cache it;
    then build the provider the students learn from."""
    recipe, data = ctx.recipe, ctx.data
    model, note, onnx_path = None, {"source": recipe.teacher.checkpoint}, None
    if onnx_teacher(recipe):
        ctx.log(f"teacher: ONNX file {recipe.teacher.checkpoint}, run in onnxruntime (logit losses only)")
        onnx_path = recipe.teacher.checkpoint
    elif recipe.teacher.checkpoint:
        model = ctx.teacher_checkpoint()
        ctx.log(f"teacher: loaded {recipe.teacher.checkpoint}")
    else:
        model, note = _cached_or_trained_teacher(ctx, name)
    ctx.teacher = model
    relabelled = ctx.task.teacher_labels(data, model) if model is not None else None
    if relabelled is not None:  # texts labelled by their teacher's embedding
        ctx.data = data = relabelled
        ctx.log(f"data: every split labelled with the teacher's outputs {tuple(data.y_train.shape[1:])}")
    if model is not None and ctx.store.lead:
        save_checkpoint(ctx.store.model_path(name), model, recipe.teacher, **ctx.checkpoint_fields(),
                        extra={"data_fingerprint": data.fingerprint})
    ranks = Distributed.current()  # one writer per cache folder: one folder per rank under DDP
    ctx.teacher_provider, ctx.provider_fit = build_teacher_provider(
        recipe.distill, model, onnx_path=onnx_path, task=ctx.task, cache_dir=ctx.cache_dir,
        dataset_fingerprint=data.fingerprint, num_samples=_num_samples(data),
        augmentation={"shift": ctx.stage_shift(recipe.student_training), "seed": recipe.student_training.seed,
                      **({"rank": ranks.rank} if ranks.active else {})})
    return Product(name, model, recipe.teacher, fit=note, onnx_path=onnx_path)


def _num_samples(data) -> int:
    from edgekd.data.inputs import num_samples

    return num_samples(data.x_train)


def _cached_or_trained_teacher(ctx: RunContext, name: str):
    recipe, data = ctx.recipe, ctx.data
    if recipe.teacher_training.epochs == 0:  # a pretrained architecture, used as it is built
        torch.manual_seed(recipe.seed)
        model = create_model(recipe.teacher, **ctx.model_args()).eval()
        ctx.log(f"teacher: {recipe.teacher.arch} used as built (teacher_training.epochs: 0), not trained")
        return model, {"pretrained": True}
    key = hashlib.sha256(json.dumps({
        "model": recipe.teacher.to_dict(), "training": recipe.teacher_training.to_dict(),
        "data": recipe.data.to_dict(), "task": recipe.task, "fingerprint": data.fingerprint,
        "seed": recipe.seed, "torch": torch.__version__}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(ctx.cache_dir) / "teachers" / f"{recipe.teacher.arch.replace(':', '_')}-{key}.pt"
    if path.is_file():
        try:
            model, meta = load_checkpoint(path)
        except ModelLoadError as err:  # a damaged cache entry is retrained and replaced, never fatal
            ctx.log(f"teacher: the cached teacher is unusable ({err}); training it again, which replaces {path}")
        else:
            ctx.log(f"teacher: reused from cache {path}")
            return model, {"source": str(path), "cached": True, **meta["extra"].get("training", {})}
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.teacher, **ctx.model_args())
    result = train_scratch(model, data, recipe.teacher_training, desc=name,
                           checkpoint=ctx.store.state_path(name), **ctx.fit_kwargs(recipe.teacher_training))
    if Distributed.current().rank == 0:
        save_checkpoint(path, model, recipe.teacher, **ctx.checkpoint_fields(),
                        extra={"data_fingerprint": data.fingerprint, "training": fit_summary(result)})
    ctx.log(f"teacher: trained, cached at {path}")
    return model, result


def _scratch(ctx: RunContext, name: str) -> Product:
    """The baseline: the same student, epochs and initialisation, trained on labels alone."""
    recipe = ctx.recipe

    def fit(state: Path):
        model = _pruned(ctx, ctx.student_init(), "student (scratch)")
        return model, train_scratch(model, ctx.data, recipe.student_training, desc="student (scratch)",
                                    checkpoint=state, **ctx.fit_kwargs(recipe.student_training))

    model, result = ctx.trained(name, recipe.student, None, fit)
    return Product(name, model, recipe.student, exported=False, fit=result)


def _pruned(ctx: RunContext, model, who: str):
    """``model`` with its vocabulary pruned to the training split's tokens (``distill.prune_vocabulary``)."""
    if not ctx.recipe.distill.prune_vocabulary:
        return model
    from edgekd.models.vocab import prune_vocabulary, used_tokens

    keep = used_tokens(*ctx.data.target_train_inputs()[:2])
    report = prune_vocabulary(model, keep)
    ids, mask = ctx.data.x_val[:2]
    real = ids[mask.bool()].numpy()
    unseen = float(1.0 - np.isin(real, keep).mean()) if real.size else 0.0
    ctx.log(f"{who}: {report.summary()}; {100 * unseen:.1f}% of the validation tokens are outside it "
            f"and read [UNK]")
    return model


def _distilled(ctx: RunContext, name: str) -> Product:
    """The student distilled from the teacher (optionally initialised from its blocks)."""
    recipe = ctx.recipe
    init = ctx.student_init()
    if recipe.distill.init_from_teacher:
        done = init_from_teacher(init, ctx.teacher, widths=recipe.distill.init_widths)
        cut = f" ({len(done['truncated'])} of them truncated to the student's widths)" if done["truncated"] else ""
        ctx.log(f"student (KD): {len(done['copied'])} tensors initialised from the teacher's blocks{cut}")
    init = _pruned(ctx, init, "student (KD)")

    def fit(state: Path):
        model = copy.deepcopy(init)
        return model, distill(model, ctx.teacher_provider, ctx.data, recipe.distill, recipe.student_training,
                              desc="student (KD)", checkpoint=state,
                              **ctx.fit_kwargs(recipe.student_training), **ctx.provider_fit)

    model, result = ctx.trained(name, recipe.student, None, fit)
    ctx.student = model
    return Product(name, model, recipe.student, fit=result)


def _mixed_precision(ctx: RunContext, name: str) -> None:
    """Per-layer precisions from a sensitivity pass; explicit ``qat.layers`` entries still win."""
    batches = ctx.data.calibration_batches(ctx.recipe.data.batch_size, ctx.qat_config.calibration_batches)
    ctx.mixed = choose_mixed_precision(ctx.student, ctx.qat_config, batches, ctx.data.x_val, ctx.data.y_val,
                                       task=ctx.task)
    ctx.log(ctx.mixed.summary())
    ctx.qat_config = QATConfig.from_dict({**ctx.qat_config.to_dict(),
                                          "layers": {**ctx.mixed.layers, **ctx.qat_config.layers}})
    return None


def _quantized_info(ctx: RunContext) -> dict:
    return {"mixed_precision": ctx.mixed.to_dict()} if ctx.mixed is not None else {}


def _qat(ctx: RunContext, name: str) -> Product:
    """int8 fine-tuning of the distilled student with the teacher still guiding it."""
    recipe, config = ctx.recipe, ctx.qat_config

    def fit(state: Path):
        return qat_finetune(ctx.student, ctx.teacher_provider, ctx.data, recipe.distill, config,
                            seed=recipe.student_training.seed, checkpoint=state,
                            **ctx.fit_kwargs(recipe.student_training), **ctx.provider_fit)

    model, result = ctx.trained(name, recipe.student, config.to_dict(), fit)
    return Product(name, model, recipe.student, quantized=True, qat=config.to_dict(), fit=result,
                   base=ctx.student, info=_quantized_info(ctx))


def _ptq(ctx: RunContext, name: str) -> Product:
    """The distilled student quantized by calibration alone: the baseline QAT is measured against."""
    recipe = ctx.recipe
    qat = recipe.ptq.qat_config(ctx.qat_config).to_dict()
    batches = ctx.data.calibration_batches(recipe.data.batch_size, recipe.ptq.calibration_batches)
    model, _ = ctx.trained(name, recipe.student, qat, lambda state: (
        post_training_quantize(ctx.student, batches, recipe.ptq, ctx.qat_config), None))
    return Product(name, model, recipe.student, quantized=True, qat=qat, base=ctx.student,
                   fit={"observer": recipe.ptq.observer, "calibration_batches": recipe.ptq.calibration_batches},
                   info=_quantized_info(ctx))


def quantizes(recipe: Recipe) -> bool:
    return recipe.qat.enabled or recipe.ptq.enabled


TEACHER, SCRATCH, DISTILLED = "teacher", "student-scratch", "student-kd"  # the stages later phases compare
STAGES: list[Stage] = [
    Stage(TEACHER, _teacher, description="load, reuse from the cache, or train the teacher"),
    Stage(SCRATCH, _scratch, description="the student on labels alone (baseline)"),
    Stage(DISTILLED, _distilled, description="the student distilled from the teacher"),
    Stage("mixed-precision", _mixed_precision,
          lambda r: r.qat.mixed_precision.enabled and quantizes(r), "per-layer precisions"),
    Stage("student-int8", _qat, lambda r: r.qat.enabled, "int8 QAT with the teacher guiding"),
    Stage("student-ptq", _ptq, lambda r: r.ptq.enabled, "int8 by calibration only"),
]


def list_stages() -> list[str]:
    return [s.name for s in STAGES]
