"""The end-to-end run: the recipe's task and data -> the stages (``stages.STAGES``: teacher,
scratch and KD students, mixed precision, int8 QAT, PTQ) -> export -> parity in each runtime ->
benchmark on each target -> report -> budget check (``phases``).

``run(recipe, out_dir)`` is what ``edgekd run`` and ``edgekd demo`` call. Output folder:

    out_dir/
      recipe.yaml            the resolved recipe
      models/*.pt            edgekd checkpoints, one per stage that produced a model
      artifacts/*            exported files (<stage>.onnx, <stage>.xml/.bin, ...)
      bench/*.json           raw latency samples and manifests, one file per benchmark
      report.json, report.md the report; budgets are checked against it
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgekd import atomic
from edgekd.budgets.budget import Budget, check
from edgekd.budgets.verdict import CheckResult
from edgekd.config import dump_yaml
from edgekd.distill.api import check_distill_setup
from edgekd.distill.distributed import Distributed, process_group
from edgekd.distill.teachers.cache import find_cache
from edgekd.errors import ConfigError
from edgekd.pipeline.checks import check_compatibility
from edgekd.pipeline.dryrun import dry_run
from edgekd.pipeline.context import Log, Product, RunContext, default_cache_dir, stage_shift
from edgekd.pipeline.phases import (artifact_entries, benchmark_entries, distillation_warnings, export_products,
                                    model_entries)
from edgekd.pipeline.stages import STAGES, Stage, list_stages, onnx_teacher
from edgekd.models.factory import resolve_arch
from edgekd.recipe import Recipe
from edgekd.report import Report, environment
from edgekd.resume import RunStore
from edgekd.runfolder import RunFolder, claimed
from edgekd.targets import load_target
from edgekd.tasks import create_task


@dataclass
class RunResult:
    report: Report
    report_path: Path
    budget: CheckResult | None


def run(recipe: Recipe, out_dir: str | Path, *, cache_dir: str | Path | None = None,
        log: Log = lambda msg: None, resume: bool = False, overwrite: bool = False) -> RunResult | None:
    """Run every enabled stage of ``recipe``, writing into ``out_dir``; returns the report and
    budget check.

    The folder is locked for the run and only files edgekd recorded there are ever removed
    (``edgekd.runfolder``); a non-empty folder edgekd did not make needs ``overwrite``.
    With ``resume``, finished stages are loaded from ``out_dir`` and an interrupted one continues
    from its last epoch (see ``edgekd.resume``). Under ``torchrun`` every process trains (DDP)
    and only rank 0 exports, benchmarks and writes; the other ranks return None.

    Raises:
        ConfigError: a bad recipe, target or folder, or a teacher/student/data mismatch (all
            before any training); FolderBusyError when another run holds ``out_dir``.
    """
    with process_group() as ranks:
        lead = ranks.rank == 0
        with claimed(out_dir, overwrite=overwrite, lead=lead) as folder:
            return _run(recipe, Path(out_dir), Path(cache_dir) if cache_dir else default_cache_dir(), log,
                        resume, lead=lead, folder=folder)


def prepare(recipe: Recipe, out_dir: str | Path, *, cache_dir: str | Path | None = None,
            log: Log = lambda msg: None, resume: bool = False, lead: bool = True) -> RunContext:
    """Everything a run checks and loads before its first stage: the targets (a bad one fails
    before any training), the resolved quantization scheme, the task and its data, the resume store.

    Raises:
        ConfigError: a target, format or objective the run cannot serve (before any training).
        DataError: the data cannot be loaded.
    """
    out = Path(out_dir)
    targets = [load_target(t) for t in recipe.targets]
    for target in targets:
        if not target.reachable and target.compute is None:
            target.require_reachable("run the recipe's artifacts, and states no compute figures to "
                                     "estimate them (recipe targets)")
    qat_config = recipe.qat.resolved(recipe.targets[0])  # the arithmetic QAT and PTQ simulate
    _check_formats_hold(recipe, qat_config.scheme)
    task = create_task(recipe.task)
    for field, spec in (("student.arch", recipe.student), ("teacher.arch", recipe.teacher)):
        if not (spec is recipe.teacher and spec.checkpoint):  # a user's module fails now, not after the data
            try:
                resolve_arch(spec.arch)
            except ConfigError as err:
                raise ConfigError(f"{field}: {err}") from None
    tick = time.perf_counter()
    data = task.load_data(recipe.data)
    check_distill_setup(recipe.distill, onnx_teacher=onnx_teacher(recipe), num_classes=data.num_classes, task=task)
    if recipe.benchmark:  # every dynamic axis has a length on every target, or refuse before training
        for target in (t for t in targets if t.reachable):
            axes = {**target.shapes, **recipe.shapes}
            for spec in task.input_spec(data):
                try:
                    spec.bind(axes)
                except ConfigError as err:
                    raise ConfigError(f"target {target.name!r}: {err}; in a recipe, set `shapes:` "
                                      f"(e.g. shapes: {{sequence: 128}})") from None
    store = RunStore(out, recipe.to_dict(), data.fingerprint, resume=resume, lead=lead)
    log(f"data: {data.source}, {len(data.y_train)}/{len(data.y_val)}/{len(data.y_test)} train/val/test, "
        f"task {task.name}: {task.describe(data)}"
        + (f", {int(data.train_labelled.sum())} train labels used" if data.train_labelled is not None else ""))
    return RunContext(recipe, out, task, data, store, qat_config, targets=targets, log=log,
                      cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), resume=resume,
                      timings={"data": time.perf_counter() - tick})


def run_stages(ctx: RunContext, names: list[str] | None = None) -> RunContext:
    """Build the recipe's enabled stages in order (only ``names``, when given: e.g. the teacher and
    the KD student alone), each over what the ones before it produced; returns ``ctx`` with
    ``products`` and per-stage ``timings``. A teacher cache is committed and closed at the end."""
    unknown = sorted(set(names or []) - set(list_stages()))
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages: {', '.join(list_stages())}")
    for stage in STAGES:
        if not stage.enabled(ctx.recipe) or (names is not None and stage.name not in names):
            continue
        tick = time.perf_counter()
        product = stage.build(ctx, stage.name)
        if product is not None:
            ctx.products[stage.name] = product
        ctx.timings[stage.name] = time.perf_counter() - tick
    cache = find_cache(ctx.teacher_provider)
    if cache is not None:
        cache.close()
        ctx.log(f"teacher cache {cache.path}: {cache.stats}")
    return ctx


def begin(ctx: RunContext, folder: RunFolder | None) -> None:
    """After every check passed, before the first stage: clear what the folder's previous run
    wrote (not when resuming), then record this run's recipe and key (lead process)."""
    if folder is not None and not ctx.resume:
        removed = folder.remove_recorded()
        if removed:
            ctx.log(f"{ctx.out}: removed {len(removed)} file(s) of the previous run there")
    ctx.store.begin()
    if ctx.store.lead:
        atomic.write_text(ctx.out / "recipe.yaml", dump_yaml(ctx.recipe.to_dict()))
    Distributed.current().barrier()  # rank 0 has cleared old checkpoints before anyone trains


def _run(recipe: Recipe, out: Path, cache_dir: Path, log: Log, resume: bool, lead: bool,
         folder: RunFolder | None) -> RunResult | None:
    start = time.perf_counter()
    ctx = prepare(recipe, out, cache_dir=cache_dir, log=log, resume=resume, lead=lead)
    check_compatibility(ctx)
    dry_run(ctx)
    begin(ctx, folder)
    run_stages(ctx)
    targets, task, data = ctx.targets, ctx.task, ctx.data
    if not lead:  # rank 0 exports and reports; wait for it, then leave the group together
        Distributed.current().barrier()
        return None

    entries, references = model_entries(ctx)
    warnings = distillation_warnings(ctx, entries)
    for warning in warnings:
        log(f"WARNING: {warning}")
    tick = time.perf_counter()
    exported = export_products(ctx)
    ctx.timings["export"] = time.perf_counter() - tick
    tick = time.perf_counter()
    entries += artifact_entries(ctx, exported, targets, references)
    ctx.timings["parity"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if recipe.benchmark:
        benchmark_entries(entries, targets, out / "bench", recipe.shapes)
    ctx.timings["benchmark"] = time.perf_counter() - tick

    ctx.timings["total"] = time.perf_counter() - start
    report = Report(targets=[t.name for t in targets], entries=entries, task=task.to_dict(data),
                    data={"source": data.source, "fingerprint": data.fingerprint,
                          "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
                          "classes": data.num_classes, "input_shape": list(data.input_shape)},
                    recipe=recipe.to_dict(), timings_s=ctx.timings, environment=environment(), warnings=warnings)
    report_path = report.write(out / "report.json")
    atomic.write_text(out / "report.md", report.markdown() + "\n")
    verdicts = check(report, Budget(budgets=recipe.budgets)) if recipe.budgets else None
    Distributed.current().barrier()
    return RunResult(report, report_path, verdicts)


def _check_formats_hold(recipe: Recipe, scheme) -> None:
    """Refuse, before training, an int8 export the recipe's formats cannot hold: 16-bit
    activations in OpenVINO IR or TFLite (see ``edgekd.export.openvino``, ``export.tflite``)."""
    if not (recipe.qat.enabled or recipe.ptq.enabled):
        return
    rules = [scheme.activations] + [r.activations for r in scheme.ops.values() if r.activations]
    wide = sorted({r.dtype for r in rules if r.bits == 16})
    blocked = [f for f in recipe.export.formats if f in ("openvino", "tflite")]
    if wide and blocked:
        raise ConfigError(f"export.formats: {', '.join(blocked)} cannot hold the {'/'.join(wide)} activations "
                          f"of target {recipe.qat.target or recipe.targets[0]!r} (OpenVINO mis-runs 16-bit QDQ; "
                          f"the TFLite writer has no 16x8 mode); export onnx only, or use 8-bit activations")


__all__ = ["STAGES", "Product", "RunContext", "RunResult", "Stage", "begin", "check_compatibility", "default_cache_dir",
           "list_stages", "prepare",
           "run", "run_stages", "stage_shift"]
