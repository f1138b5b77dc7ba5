"""The end-to-end run: data -> teacher -> scratch and KD students -> int8 QAT -> export ->
parity in each runtime -> benchmark on each target -> report -> budget check.

``run(recipe, out_dir)`` is what ``edgekd run`` and ``edgekd demo`` call. Output folder:

    out_dir/
      recipe.yaml            the resolved recipe
      models/*.pt            edgekd checkpoints (teacher, student-scratch, student-kd, student-int8)
      artifacts/*            exported files (<stage>.onnx, <stage>.xml/.bin, ...)
      bench/*.json           raw latency samples and manifests, one file per benchmark
      report.json, report.md the report; budgets are checked against it
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd import atomic
from edgekd.bench.estimate import Estimate, analyze
from edgekd.bench.harness import benchmark_on_target
from edgekd.budgets.budget import Budget, check, compressed_size
from edgekd.budgets.verdict import CheckResult
from edgekd.config import dump_yaml
from edgekd.data.datasets import DataSplits, load_data
from edgekd.distill.api import check_distill_setup, distill, train_scratch
from edgekd.distill.distributed import Distributed, init_from_env, shutdown
from edgekd.distill.teachers.cache import find_cache
from edgekd.distill.teachers.live import LiveTeacher
from edgekd.distill.trainer import TrainConfig, TrainResult, predict
from edgekd.errors import ConfigError, EstimateError
from edgekd.export.api import Artifact, export
from edgekd.models.factory import (
    count_parameters,
    create_model,
    load_checkpoint,
    save_checkpoint,
)
from edgekd.models.transfer import init_from_teacher
from edgekd.progress import progress
from edgekd.quant.conv_bn import freeze_bn_stats
from edgekd.quant.mixed_precision import choose_mixed_precision
from edgekd.quant.ptq import post_training_quantize
from edgekd.quant.qat import (
    QATConfig,
    calibrate,
    freeze,
    layer_precisions,
    observer_options,
    prepare_qat,
    set_range_tracking,
)
from edgekd.quant.validate import validate_onnx
from edgekd.recipe import Recipe
from edgekd.report import Entry, Report, environment
from edgekd.resume import RunStore
from edgekd.runtime.api import evaluate_session, open_session
from edgekd.targets import TargetProfile, load_target

Log = Callable[[str], None]


@dataclass
class RunResult:
    report: Report
    report_path: Path
    budget: CheckResult | None


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def run(recipe: Recipe, out_dir: str | Path, *, cache_dir: str | Path | None = None,
        log: Log = lambda msg: None, resume: bool = False) -> RunResult | None:
    """Run every stage of ``recipe``, writing into ``out_dir``; returns the report and budget check.

    With ``resume``, finished stages are loaded from ``out_dir`` and an interrupted one continues
    from its last epoch (see ``edgekd.resume``). Under ``torchrun`` every process trains (DDP)
    and only rank 0 exports, benchmarks and writes; the other ranks return None.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    init_from_env()
    lead = Distributed.current().rank == 0
    targets = [load_target(t) for t in recipe.targets]  # fail on a bad target before training
    for target in targets:
        if not target.reachable and target.compute is None:
            target.require_reachable("run the recipe's artifacts, and states no compute figures to "
                                     "estimate them (recipe targets)")
    qat_config = recipe.qat.resolved(recipe.targets[0])  # the arithmetic QAT and PTQ simulate
    scheme = qat_config.scheme
    _check_formats_hold(recipe, scheme)  # before any training
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    data = load_data(recipe.data)
    check_distill_setup(recipe.distill, onnx_teacher=_onnx_teacher(recipe), num_classes=data.num_classes)
    store = RunStore(out, recipe.to_dict(), data.fingerprint, resume=resume, lead=lead)
    Distributed.current().barrier()  # rank 0 has cleared old checkpoints before anyone trains
    if lead:
        atomic.write_text(out / "recipe.yaml", dump_yaml(recipe.to_dict()))
    fit = {"augment_shift": stage_shift(recipe, recipe.student_training), "batch_size": recipe.data.batch_size,
           "resume": resume, "run_key": store.key}  # students and QAT; the teacher has its own shift
    log(f"data: {data.source}, {len(data.y_train)}/{len(data.y_val)}/{len(data.y_test)} "
        f"train/val/test, {data.num_classes} classes, input {tuple(data.input_shape)}"
        + (f", {int(data.train_labelled.sum())} train labels used" if data.train_labelled is not None else ""))

    teacher_fit = {**fit, "augment_shift": stage_shift(recipe, recipe.teacher_training)}
    teacher, teacher_note = _teacher(recipe, data, cache_dir, teacher_fit, log, store.state_path("teacher"))
    timings["teacher"] = time.perf_counter() - tick
    provider, provider_fit = _teacher_provider(recipe, teacher, data, cache_dir)

    tick = time.perf_counter()
    torch.manual_seed(recipe.seed)
    init = create_model(recipe.student, data.input_shape[0], data.num_classes)

    def fit_scratch(ckpt: Path):
        model = copy.deepcopy(init)
        return model, train_scratch(model, data, recipe.student_training, desc="student (scratch)",
                                    checkpoint=ckpt, **fit)

    scratch, scratch_fit = _stage(store, data, "student-scratch", recipe.student, None, fit_scratch)
    timings["student_scratch"] = time.perf_counter() - tick

    tick = time.perf_counter()
    kd_init = copy.deepcopy(init)
    if recipe.distill.init_from_teacher:
        copied = init_from_teacher(kd_init, teacher)["copied"]
        log(f"student (KD): {len(copied)} tensors initialised from the teacher's blocks")

    def fit_kd(ckpt: Path):
        model = copy.deepcopy(kd_init)
        return model, distill(model, provider, data, recipe.distill, recipe.student_training,
                              desc="student (KD)", checkpoint=ckpt, **fit, **provider_fit)

    student, kd_fit = _stage(store, data, "student-kd", recipe.student, None, fit_kd)
    timings["student_kd"] = time.perf_counter() - tick

    tick = time.perf_counter()
    mixed = None
    if recipe.qat.mixed_precision.enabled and (recipe.qat.enabled or recipe.ptq.enabled):
        mixed = choose_mixed_precision(student, qat_config, data.calibration_batches(
            recipe.data.batch_size, qat_config.calibration_batches), data.x_val, data.y_val)
        log(mixed.summary())
        qat_config = QATConfig.from_dict({**qat_config.to_dict(), "layers": {**mixed.layers, **qat_config.layers}})
    timings["mixed_precision"] = time.perf_counter() - tick

    tick = time.perf_counter()
    int8, qat_fit = (_stage(store, data, "student-int8", recipe.student, qat_config.to_dict(),
                            lambda ckpt: _qat(student, provider, data, recipe, qat_config,
                                              {**fit, **provider_fit}, ckpt))
                     if recipe.qat.enabled else (None, None))
    timings["qat"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ptq_qat = recipe.ptq.qat_config(qat_config).to_dict()
    ptq = (_stage(store, data, "student-ptq", recipe.student, ptq_qat, lambda ckpt: (
        post_training_quantize(student, data.calibration_batches(recipe.data.batch_size,
                                                                 recipe.ptq.calibration_batches), recipe.ptq,
                               qat_config), None))
        if recipe.ptq.enabled else (None, None))
    timings["ptq"] = time.perf_counter() - tick
    cache = find_cache(provider)
    if cache is not None:
        cache.close()
        log(f"teacher cache {cache.path}: {cache.stats}")
    if not lead:  # rank 0 exports and reports; wait for it, then leave the group together
        Distributed.current().barrier()
        shutdown()
        return None

    models = {"student-scratch": (scratch, recipe.student, None), "student-kd": (student, recipe.student, None)}
    if teacher is not None:
        models = {"teacher": (teacher, recipe.teacher, None), **models}
    if int8 is not None:
        models["student-int8"] = (int8, recipe.student, qat_config.to_dict())
    if ptq[0] is not None:
        models["student-ptq"] = (ptq[0], recipe.student, ptq_qat)
    fits = {"teacher": teacher_note, "student-scratch": scratch_fit, "student-kd": kd_fit,
            "student-int8": qat_fit, "student-ptq": {"observer": recipe.ptq.observer,
                                                     "calibration_batches": recipe.ptq.calibration_batches}}
    entries, references = [], {}
    for stage, (model, spec, qat) in models.items():
        ckpt = store.model_path(stage)
        if stage == "teacher":
            save_checkpoint(ckpt, model, spec, in_channels=data.input_shape[0], num_classes=data.num_classes,
                            input_shape=data.input_shape, extra={"data_fingerprint": data.fingerprint})
        logits = predict(model, data.x_test)
        references[stage] = logits.argmax(1).numpy()
        fit_info = fits[stage]
        entries.append(Entry(
            name=f"{stage}.pytorch", stage=stage, format="pytorch", path=str(ckpt),
            size_bytes=ckpt.stat().st_size, params=count_parameters(model),
            accuracy=float((references[stage] == data.y_test.numpy()).mean()),
            info={"training": _fit_summary(fit_info)} if fit_info is not None else {}))
        if mixed is not None and stage in ("student-int8", "student-ptq"):
            entries[-1].info["mixed_precision"] = mixed.to_dict()
    if teacher is None:  # an ONNX teacher: evaluated in onnxruntime, no PyTorch model
        entries.append(_onnx_teacher_entry(recipe.teacher.checkpoint, data))

    tick = time.perf_counter()
    artifacts: list[tuple[str, Artifact]] = []
    export_stages = (["teacher"] if teacher is not None else []) + ["student-kd"] + (
        ["student-int8"] if int8 is not None else []) + (["student-ptq"] if ptq[0] is not None else [])
    for stage in progress(export_stages, desc="export", unit="model"):
        for artifact in export(models[stage][0], recipe.export.formats, out / "artifacts", stage,
                               data.input_shape, opset=recipe.export.opset,
                               options=recipe.export.options(quantized=stage in ("student-int8", "student-ptq"))):
            artifacts.append((stage, artifact))
    precisions = layer_precisions(student, qat_config.layers, scheme)
    validations = {stage: validate_onnx(a.path, scheme, precisions) for stage, a in artifacts
                   if a.format == "onnx" and stage in ("student-int8", "student-ptq")}
    for stage, validation in validations.items():
        log(validation.summary())
    timings["export"] = time.perf_counter() - tick

    tick = time.perf_counter()
    params = {stage: count_parameters(m[0]) for stage, m in models.items()}
    analyses = {stage: _analysis_or_none(a.path) for stage, a in artifacts if a.format == "onnx"}  # parsed once
    compressed = {a.path: compressed_size(a.path) for _, a in artifacts}  # once per file, not per target
    for target in targets:
        for stage, artifact in artifacts:
            if not target.reachable:  # a device edgekd cannot run on: estimated from the ONNX file
                if artifact.format != "onnx":
                    continue
                entry = _estimated_entry(stage, artifact, target, params[stage], analyses[stage])
            elif artifact.runtime in target.runtimes:
                entry = _artifact_entry(stage, artifact, target, data, references[stage], params[stage])
                if stage in analyses:
                    entry.info["macs"] = analyses[stage].macs if analyses[stage] else None
                if stage in validations and artifact.format == "onnx":
                    entry.info["quantization"] = {"target": qat_config.target, **validations[stage].to_dict()}
            else:
                continue
            entry.info["compressed_size_bytes"] = compressed[artifact.path]
            entries.append(entry)
    timings["parity"] = time.perf_counter() - tick

    tick = time.perf_counter()
    if recipe.benchmark:
        _benchmark(entries, targets, out / "bench")
    timings["benchmark"] = time.perf_counter() - tick

    timings["total"] = time.perf_counter() - start
    report = Report(targets=[t.name for t in targets], entries=entries,
                    data={"source": data.source, "fingerprint": data.fingerprint,
                          "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
                          "classes": data.num_classes, "input_shape": list(data.input_shape)},
                    recipe=recipe.to_dict(), timings_s=timings, environment=environment())
    report_path = report.write(out / "report.json")
    atomic.write_text(out / "report.md", report.markdown() + "\n")
    verdicts = check(report, Budget(budgets=recipe.budgets)) if recipe.budgets else None
    Distributed.current().barrier()
    shutdown()
    return RunResult(report, report_path, verdicts)


def stage_shift(recipe: Recipe, training: TrainConfig) -> int:
    """The augmentation shift of one training stage: its own ``shift``, else ``data.shift``
    (0 when ``data.augment`` is off)."""
    if not recipe.data.augment:
        return 0
    return training.shift if training.shift is not None else recipe.data.shift


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


def _onnx_teacher(recipe: Recipe) -> bool:
    return bool(recipe.teacher.checkpoint) and Path(recipe.teacher.checkpoint).suffix == ".onnx"


def _teacher(recipe: Recipe, data: DataSplits, cache_dir, fit: dict, log: Log, state: Path):
    """Load the teacher from the recipe's checkpoint, or from the cache, or train and cache it."""
    if _onnx_teacher(recipe):
        log(f"teacher: ONNX file {recipe.teacher.checkpoint}, run in onnxruntime (logit losses only)")
        return None, {"source": recipe.teacher.checkpoint}
    if recipe.teacher.checkpoint:
        teacher, _ = load_checkpoint(recipe.teacher.checkpoint)
        log(f"teacher: loaded {recipe.teacher.checkpoint}")
        return teacher, {"source": recipe.teacher.checkpoint}
    key = hashlib.sha256(json.dumps({
        "teacher": recipe.teacher.to_dict(), "training": recipe.teacher_training.to_dict(),
        "data": recipe.data.to_dict(), "fingerprint": data.fingerprint, "seed": recipe.seed,
        "torch": torch.__version__}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "teachers" / f"{recipe.teacher.arch.replace(':', '_')}-{key}.pt"
    if path.is_file():
        teacher, meta = load_checkpoint(path)
        log(f"teacher: reused from cache {path}")
        return teacher, {"source": str(path), "cached": True, **meta["extra"].get("training", {})}
    torch.manual_seed(recipe.seed)
    teacher = create_model(recipe.teacher, data.input_shape[0], data.num_classes)
    result = train_scratch(teacher, data, recipe.teacher_training, desc="teacher", checkpoint=state, **fit)
    if Distributed.current().rank == 0:
        save_checkpoint(path, teacher, recipe.teacher, in_channels=data.input_shape[0],
                        num_classes=data.num_classes, input_shape=data.input_shape,
                        extra={"data_fingerprint": data.fingerprint, "training": _fit_summary(result)})
    log(f"teacher: trained, cached at {path}")
    return teacher, result


def _qat(student, teacher, data: DataSplits, recipe: Recipe, cfg, fit: dict,
         checkpoint: Path | None = None) -> tuple[torch.nn.Module, TrainResult]:
    """int8 fine-tuning of the distilled student (``cfg``: the resolved QATConfig), with the
    teacher still guiding it."""
    model = prepare_qat(copy.deepcopy(student), cfg)
    batches = data.calibration_batches(recipe.data.batch_size, cfg.calibration_batches)
    calibrate(model, progress(batches, desc="calibrate", unit="batch", leave=False), cfg.observer,
              **observer_options(cfg))
    train_cfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=0.0, seed=recipe.student_training.seed)

    def on_epoch_start(epoch: int) -> None:
        set_range_tracking(model, epoch < cfg.freeze_observers_epoch)
        if epoch >= cfg.freeze_bn_epoch:
            freeze_bn_stats(model)

    result = distill(model, teacher, data, recipe.distill, train_cfg, desc="student (int8 QAT)",
                     on_epoch_start=on_epoch_start, checkpoint=checkpoint, **fit)
    return freeze(model), result


def _stage(store: RunStore, data: DataSplits, stage: str, spec, qat: dict | None, train_fn):
    """Run ``train_fn(state_path) -> (model, fit)`` for ``stage``, or load it from a resumed run;
    the finished model is saved to ``models/<stage>.pt`` (rank 0)."""
    done = store.finished(stage)
    if done is not None:
        model, meta = load_checkpoint(done)
        return model, meta["extra"].get("training")
    model, fit = train_fn(store.state_path(stage))
    if store.lead:
        save_checkpoint(store.model_path(stage), model, spec, in_channels=data.input_shape[0],
                        num_classes=data.num_classes, input_shape=data.input_shape, qat=qat,
                        extra={"data_fingerprint": data.fingerprint, "run_key": store.key,
                               "training": _fit_summary(fit)})
        store.state_path(stage).unlink(missing_ok=True)  # the finished model supersedes it
    return model, fit


def _teacher_provider(recipe: Recipe, teacher, data: DataSplits, cache_dir) -> tuple[object, dict]:
    """The teacher the students learn from, as the recipe's ``distill`` section describes it,
    plus extra training arguments (fixed augmentation views when cached). The cache sits under
    the black box: it keeps full logits, so one cache serves any top-k or labels view of them."""
    cfg = recipe.distill
    feature_paths = [t.teacher for t in cfg.objective() if t.teacher]
    if teacher is None:
        from edgekd.distill.teachers.onnx import OnnxTeacher

        provider = OnnxTeacher(recipe.teacher.checkpoint, threads=1)
    else:
        provider = LiveTeacher(teacher, feature_paths)
    extra = {}
    if cfg.cache:
        from edgekd.distill.teachers.cache import CachedTeacher

        shift = stage_shift(recipe, recipe.student_training)
        ranks = Distributed.current()  # one writer per cache folder: one folder per rank under DDP
        provider = CachedTeacher(provider, Path(cache_dir or default_cache_dir()) / "teacher-outputs",
                                 dataset_fingerprint=data.fingerprint, num_samples=len(data.x_train),
                                 views=cfg.cache_views,
                                 augmentation={"shift": shift, "seed": recipe.student_training.seed,
                                               **({"rank": ranks.rank} if ranks.active else {})})
        extra = {"cache_views": cfg.cache_views}
    if cfg.teacher_output != "logits":
        from edgekd.distill.teachers.blackbox import BlackBoxTeacher

        provider = BlackBoxTeacher(provider, output=cfg.teacher_output, k=cfg.top_k)
    return provider, extra


def _onnx_teacher_entry(path: str, data: DataSplits) -> Entry:
    session = open_session(path, "onnxruntime", threads=os.cpu_count() or 1)
    result = evaluate_session(session, data.x_test.numpy(), data.y_test.numpy())
    return Entry(name="teacher.onnx", stage="teacher", format="onnx", path=str(path),
                 size_bytes=Path(path).stat().st_size, accuracy=result.accuracy, runtime="onnxruntime",
                 info={"source": "recipe teacher.checkpoint (ONNX)", **session.info})



def _fit_summary(fit) -> dict:
    if isinstance(fit, TrainResult):
        return {"epochs": len(fit.history), "best_epoch": fit.best_epoch,
                "best_val_accuracy": fit.best_val_accuracy, "seconds": round(fit.seconds, 2),
                "history": fit.history}
    return dict(fit or {})


def _analysis_or_none(path) -> Estimate | None:
    """The estimator's analysis of an ONNX artifact (MACs, and the roofline on targets with no
    device); None (a MACs budget then says "not measured") when its shapes cannot be inferred,
    which must not stop a run whose training is done."""
    try:
        return analyze(path)
    except EstimateError:
        return None


def _artifact_entry(stage: str, artifact: Artifact, target: TargetProfile, data: DataSplits,
                    reference: np.ndarray, params: int) -> Entry:
    """Evaluate ``artifact`` in its runtime on the test split and compare with PyTorch's top-1."""
    options = target.runtime_options(artifact.runtime)
    session = open_session(artifact.path, artifact.runtime, threads=os.cpu_count() or 1, options=options)
    result = evaluate_session(session, data.x_test.numpy(), data.y_test.numpy(), reference)
    return Entry(name=f"{stage}.{artifact.format}", stage=stage, format=artifact.format,
                 path=str(artifact.path), size_bytes=artifact.size_bytes, params=params,
                 accuracy=result.accuracy, agreement=result.agreement, runtime=artifact.runtime,
                 target=target.name, threads=target.threads, info=dict(session.info))


def _estimated_entry(stage: str, artifact: Artifact, target: TargetProfile, params: int,
                     analysis: Estimate | None) -> Entry:
    """An ONNX artifact on a target edgekd cannot run on: the estimator's figures, labelled.
    Without an ``analysis`` the file is analysed again, which raises the EstimateError."""
    entry = Entry(name=f"{stage}.{artifact.format}", stage=stage, format=artifact.format, path=str(artifact.path),
                  size_bytes=artifact.size_bytes, params=params, target=target.name)
    (analysis or analyze(artifact.path)).on(target.compute, target.name).record_into(entry)
    return entry


def _benchmark(entries: list[Entry], targets: list[TargetProfile], bench_dir: Path) -> None:
    by_name = {t.name: t for t in targets}
    jobs = [e for e in entries if e.runtime is not None and e.target in by_name and not e.info.get("estimated")]
    bar = progress(jobs, desc="benchmark", unit="artifact")
    for entry in bar:
        bar.set_postfix_str(f"{entry.name} ({entry.runtime}, {entry.target})")
        result = benchmark_on_target(entry.path, by_name[entry.target], entry.runtime)
        result.record_into(entry)
        atomic.write_text(bench_dir / f"{entry.name}.{entry.runtime}.{entry.target}.json",
                          json.dumps(result.to_dict()) + "\n")
