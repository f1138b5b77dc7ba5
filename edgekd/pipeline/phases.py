"""After training: what a run does with the stages' products, whatever stages produced them.

- ``model_entries``: each product scored in PyTorch on the test split (the task's metrics);
- ``export_products``: each exported product written to every recipe format, quantized ones with
  their integer interface, and their ONNX files validated against the target's scheme;
- ``artifact_entries``: each artifact run in each target's runtime on the test split (parity
  with PyTorch), or estimated from its ONNX file on a target edgekd cannot reach;
- ``benchmark_entries``: each runnable artifact benchmarked on its target.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd import atomic
from edgekd.bench.estimate import Estimate, analyze
from edgekd.bench.harness import benchmark_on_target
from edgekd.budgets.budget import compressed_size
from edgekd.data import inputs as model_inputs
from edgekd.distill.trainer import predict
from edgekd.errors import EstimateError
from edgekd.export.api import Artifact, export
from edgekd.models.factory import count_parameters
from edgekd.pipeline.context import Product, RunContext, fit_summary
from edgekd.pipeline.stages import DISTILLED, SCRATCH, TEACHER
from edgekd.progress import progress
from edgekd.quant.qat import layer_precisions
from edgekd.quant.validate import validate_onnx
from edgekd.report import Entry
from edgekd.runtime.api import evaluate_session, open_session
from edgekd.targets import TargetProfile


@dataclass
class Exported:
    """One artifact of one product, with its validation against the target scheme (int8 ONNX)."""

    product: Product
    artifact: Artifact
    validation: object | None = None
    export_check: list[dict] | None = None  # what a TFLite file's export check measured, per output


def _scored(ctx: RunContext, logits: np.ndarray) -> dict:
    """The task's metrics on the test split, as report fields."""
    metrics = ctx.task.metrics(logits, ctx.data.y_test.numpy())
    return {"accuracy": metrics.get("accuracy"), "metrics": metrics}


def model_entries(ctx: RunContext) -> tuple[list[Entry], dict[str, np.ndarray]]:
    """One entry per product, scored in PyTorch; and each model's test outputs (the reference its
    artifacts are compared with)."""
    entries, references = [], {}
    for product in ctx.products.values():
        if product.model is None:  # a teacher given as ONNX: scored in onnxruntime
            entries.append(_onnx_teacher_entry(ctx, product))
            continue
        path = ctx.store.model_path(product.stage)
        logits = predict(product.model, ctx.data.x_test, task=ctx.task).numpy()
        references[product.stage] = logits
        info = {"training": fit_summary(product.fit)} if product.fit is not None else {}
        entries.append(Entry(name=f"{product.stage}.pytorch", stage=product.stage, format="pytorch", path=str(path),
                             size_bytes=path.stat().st_size, params=count_parameters(product.model),
                             info={**info, **product.info}, **_scored(ctx, logits)))
    return entries, references


def _onnx_teacher_entry(ctx: RunContext, product: Product) -> Entry:
    session = open_session(product.onnx_path, "onnxruntime", threads=os.cpu_count() or 1)
    result = evaluate_session(session, model_inputs.to_numpy(ctx.data.x_test), ctx.data.y_test.numpy(),
                              class_axis=ctx.task.class_dim, task=ctx.task)
    return Entry(name=f"{product.stage}.onnx", stage=product.stage, format="onnx", path=str(product.onnx_path),
                 size_bytes=Path(product.onnx_path).stat().st_size, runtime="onnxruntime",
                 info={"source": "recipe teacher.checkpoint (ONNX)", **session.info},
                 **_scored(ctx, result.logits))


def export_products(ctx: RunContext) -> list[Exported]:
    """Every exported product in every format of the recipe; int8 ONNX files validated."""
    recipe, scheme = ctx.recipe, ctx.qat_config.scheme
    products = [p for p in ctx.products.values() if p.exported and p.model is not None]
    inputs, outputs = ctx.task.input_spec(ctx.data), ctx.task.output_spec(ctx.data)
    samples = check_samples(ctx, inputs)
    done: list[Exported] = []
    for product in progress(products, desc="export", unit="model"):
        options = recipe.export.options(quantized=product.quantized, scheme=scheme)
        if "tflite" in recipe.export.formats:
            options["tflite"]["check_samples"] = samples  # the export check runs on test data
        for artifact in export(product.model, recipe.export.formats, ctx.out / "artifacts", product.stage,
                               inputs, outputs=outputs, opset=recipe.export.opset, options=options):
            validation = None
            if product.quantized and artifact.format == "onnx":
                precisions = layer_precisions(product.base, ctx.qat_config.layers, scheme)
                validation = validate_onnx(artifact.path, scheme, precisions)
                ctx.log(validation.summary())
            check = _export_check(ctx, artifact) if artifact.format == "tflite" else None
            done.append(Exported(product, artifact, validation, check))
    return done


CHECK_SAMPLES = 32  # test samples each TFLite file is checked on against onnxruntime at export


def check_samples(ctx: RunContext, specs) -> list[list[np.ndarray]]:
    """The first ``CHECK_SAMPLES`` test samples, each a list of batch-1 arrays in the model's
    input order and dtypes (what ``onnx_to_tflite``'s export check feeds)."""
    x = ctx.data.x_test
    count = min(CHECK_SAMPLES, model_inputs.num_samples(x))
    return [[t.numpy().astype(np.dtype(spec.dtype)) for t, spec in
             zip(model_inputs.as_tuple(model_inputs.take(x, slice(i, i + 1))), specs)] for i in range(count)]


def _export_check(ctx: RunContext, artifact: Artifact) -> list[dict] | None:
    """The export check stored in a TFLite artifact, logged per output."""
    from edgekd.export.tflite import read_export_check

    checks = read_export_check(artifact.path)
    for check in checks or []:
        measured = (f"{100 * check['within_steps']:.1f}% within tolerance" if check["within_steps"] is not None
                    else f"relative error {check['relative_error']:.2e}")
        ctx.log(f"{artifact.path.name} export check, output {check['output']!r}: {measured} "
                f"(tolerance: {check['tolerance']}; {check['inputs']} {check['source']} samples)")
    return checks


def artifact_entries(ctx: RunContext, exported: list[Exported], targets: list[TargetProfile],
                     references: dict[str, np.ndarray]) -> list[Entry]:
    """Each artifact on each target: run in the target's runtime on the test split (parity), or
    estimated from its ONNX file where edgekd cannot reach the device."""
    params = {e.product.stage: count_parameters(e.product.model) for e in exported}
    analyses = {e.artifact.path: _analysis_or_none(e.artifact.path) for e in exported
                if e.artifact.format == "onnx"}  # each file parsed once
    compressed = {e.artifact.path: compressed_size(e.artifact.path) for e in exported}
    entries = []
    for target in targets:
        for item in exported:
            stage, artifact = item.product.stage, item.artifact
            if not target.reachable:  # a device edgekd cannot run on: estimated from the ONNX file
                if artifact.format != "onnx":
                    continue
                entry = _estimated_entry(stage, artifact, target, params[stage], analyses[artifact.path])
            elif artifact.runtime in target.runtimes:
                float_reference = references.get(DISTILLED) if item.product.quantized else None
                entry = _parity_entry(ctx, stage, artifact, target, references[stage], params[stage], float_reference)
                if artifact.path in analyses:
                    analysis = analyses[artifact.path]
                    entry.info["macs"] = analysis.macs if analysis else None
                if item.validation is not None:
                    entry.info["quantization"] = {"target": ctx.qat_config.target, **item.validation.to_dict()}
            else:
                continue
            entry.info["compressed_size_bytes"] = compressed[artifact.path]
            if artifact.format == "tflite":
                entry.info["export_check"] = item.export_check
            entries.append(entry)
    return entries


def _parity_entry(ctx: RunContext, stage: str, artifact: Artifact, target: TargetProfile,
                  reference: np.ndarray, params: int, float_reference: np.ndarray | None = None) -> Entry:
    """``artifact`` in its runtime on the test split, scored and compared with PyTorch's outputs
    (the task's agreement, and parity per output); an int8 artifact also with the float model it
    was quantized from (``float_reference``: ``info["vs_float"]``)."""
    options = target.runtime_options(artifact.runtime)
    session = open_session(artifact.path, artifact.runtime, threads=os.cpu_count() or 1, options=options)
    result = evaluate_session(session, model_inputs.to_numpy(ctx.data.x_test), ctx.data.y_test.numpy(),
                              class_axis=ctx.task.class_dim, task=ctx.task, reference_outputs=reference)
    info = {**session.info, "parity": result.parity}
    if float_reference is not None:
        info["vs_float"] = {"agreement": ctx.task.agreement(result.logits, float_reference),
                            "parity": ctx.task.parity(result.logits, float_reference)}
    return Entry(name=f"{stage}.{artifact.format}", stage=stage, format=artifact.format,
                 path=str(artifact.path), size_bytes=artifact.size_bytes, params=params,
                 agreement=result.agreement, runtime=artifact.runtime, target=target.name,
                 threads=target.threads, info=info, **_scored(ctx, result.logits))


def _analysis_or_none(path) -> Estimate | None:
    """The estimator's analysis of an ONNX artifact (MACs, and the roofline on targets with no
    device); None (a MACs budget then says "not measured") when its shapes cannot be inferred,
    which must not stop a run whose training is done."""
    try:
        return analyze(path)
    except EstimateError:
        return None


def _estimated_entry(stage: str, artifact: Artifact, target: TargetProfile, params: int,
                     analysis: Estimate | None) -> Entry:
    """An ONNX artifact on a target edgekd cannot run on: the estimator's figures, labelled.
    Without an ``analysis`` the file is analysed again, which raises the EstimateError."""
    entry = Entry(name=f"{stage}.{artifact.format}", stage=stage, format=artifact.format, path=str(artifact.path),
                  size_bytes=artifact.size_bytes, params=params, target=target.name)
    target.estimate(analysis or analyze(artifact.path)).record_into(entry)
    return entry


def benchmark_entries(entries: list[Entry], targets: list[TargetProfile], bench_dir: Path,
                      shapes: dict[str, int] | None = None) -> None:
    """Benchmark every runnable artifact entry on its target and record the result into it."""
    by_name = {t.name: t for t in targets}
    jobs = [e for e in entries if e.runtime is not None and e.target in by_name and not e.info.get("estimated")]
    bar = progress(jobs, desc="benchmark", unit="artifact")
    for entry in bar:
        bar.set_postfix_str(f"{entry.name} ({entry.runtime}, {entry.target})")
        result = benchmark_on_target(entry.path, by_name[entry.target], entry.runtime, shapes=shapes or None)
        result.record_into(entry)
        atomic.write_text(bench_dir / f"{entry.name}.{entry.runtime}.{entry.target}.json",
                          json.dumps(result.to_dict()) + "\n")


KD_HURT_POINTS = 0.5  # a distilled student this far below its scratch baseline is reported loudly


def distillation_warnings(ctx, entries) -> list[str]:
    """A warning when the distilled student ends below the scratch student (same architecture,
    epochs and initialisation): the teacher's signal hurt, and the run says what to try."""
    metric = ctx.task.quality_metric
    quality = {e.stage: e.quality(metric) for e in entries if e.format == "pytorch"}
    kd, scratch, teacher = quality.get(DISTILLED), quality.get(SCRATCH), quality.get(TEACHER)
    if kd is None or scratch is None or 100 * (scratch - kd) < KD_HURT_POINTS:
        return []
    d = ctx.recipe.distill
    tries = []
    if d.temperature > 1:  # benchmarks/kd_hurts.py: a short-trained student gains from T=1, loses at T >= 2
        tries.append(f"a lower distill.temperature than {d.temperature:g} (e.g. 1: softened targets ask a small or "
                     f"briefly trained student to fit the teacher's whole distribution, not just its answer)")
    tries.append(f"a lower distill.kd_weight than {d.kd_weight:g} (more weight on the labels, ce_weight)")
    if teacher is not None and teacher - scratch < 0.02:
        tries.append(f"a stronger teacher: it scores {100 * teacher:.2f}%, barely above the scratch student")
    tries.append("more student epochs (a small student needs longer to match a teacher's soft targets)")
    tries.append("the same augmentation for teacher and student (data.shift vs student_training.shift)")
    return [f"the distilled student ({100 * kd:.2f}% {metric}) ends {100 * (scratch - kd):.2f} points BELOW the "
            f"same student trained on labels alone ({100 * scratch:.2f}%): distillation hurt on this data. Ship the "
            f"scratch student, or try: " + "; ".join(tries) + ". Compare again with `edgekd run` on the new recipe."]

