"""A dry run of everything after training, before any training.

What can refuse a model after the teacher and the students have trained (tracing it for QAT,
calibrating it, exporting it to each format, an exporter's own parity check, the target's
quantization scheme) depends on the architecture, not on the trained weights. So the run first
takes the untrained student (and the teacher's architecture, whose float model is exported too)
through those steps on a few batches of the data, in a scratch folder:

1. float: export to every format of the recipe (each exporter checks its file against its runtime);
2. int8, when QAT or PTQ is enabled: prepare and calibrate for the recipe's target (the scheme
   QAT and PTQ simulate), export to every format, validate the ONNX file against the scheme.

A step that fails is refused now (``DryRunError``, exit 2), naming the model, the step, the
format and the exporter's own message. Scheme violations are refused on targets that cannot run
a float op at all (``float_fallback: false``) or whose int8 format has none (``full_integer``,
TFLite); elsewhere they are logged, as the run's own validation would report them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgekd.errors import DryRunError, EdgeKDError

CALIBRATION_BATCHES = 2


def dry_run(ctx) -> None:
    """Refuse, before training, a student (or teacher) the recipe's formats or target cannot take.

    Raises:
        DryRunError: a step of the export path fails for the untrained model (the message names
            the model, the step and the format).
    """
    recipe = ctx.recipe
    formats = list(recipe.export.formats)
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-dry-run-") as tmp:
        student = ctx.student_init()
        _export(ctx, student, formats, Path(tmp), "dry-student", f"the student ({recipe.student.arch})", quantized=False)
        teacher = _teacher_architecture(ctx)
        if teacher is not None:
            _export(ctx, teacher, formats, Path(tmp), "dry-teacher", f"the teacher ({recipe.teacher.arch})",
                    quantized=False)
        if recipe.qat.enabled or recipe.ptq.enabled:
            int8 = _quantize(ctx, student)
            _export(ctx, int8, formats, Path(tmp), "dry-student-int8", f"the int8 student (target {_target(ctx)!r})",
                    quantized=True)
    ctx.timings["dry_run"] = time.perf_counter() - tick
    ctx.log(f"dry run: the untrained student exports to {', '.join(formats)}"
            f"{' in float and int8' if recipe.qat.enabled or recipe.ptq.enabled else ''} "
            f"({ctx.timings['dry_run']:.1f} s)")


def _target(ctx) -> str:
    return ctx.qat_config.target or "edgekd's default int8"


def _teacher_architecture(ctx):
    """The teacher model the run would export (its architecture; weights do not matter here),
    or None when it is an ONNX file (exported as it is) or comes from a checkpoint (checked by
    ``check_compatibility``, exported as trained)."""
    from edgekd.models.factory import create_model

    if ctx.recipe.teacher.checkpoint:
        return None
    return create_model(ctx.recipe.teacher, **ctx.model_args())


def _quantize(ctx, student):
    from edgekd.quant.ptq import PTQConfig, post_training_quantize

    batches = ctx.data.calibration_batches(ctx.recipe.data.batch_size, CALIBRATION_BATCHES)
    try:
        return post_training_quantize(student, batches, PTQConfig(calibration_batches=CALIBRATION_BATCHES,
                                                                  observer="minmax"), ctx.qat_config)
    except EdgeKDError as err:
        raise DryRunError(f"dry run before training: the student ({ctx.recipe.student.arch}) cannot be "
                          f"quantized for target {_target(ctx)!r}: {err}. Nothing was trained") from None


def _export(ctx, model, formats: list[str], out: Path, name: str, who: str, quantized: bool) -> None:
    from edgekd.export import export
    from edgekd.quant.validate import validate_onnx

    recipe, task, data = ctx.recipe, ctx.task, ctx.data
    for fmt in formats:  # one format at a time, so the message names the one that fails
        try:
            [artifact] = export(model.eval(), [fmt], out, name, task.input_spec(data), outputs=task.output_spec(data),
                                opset=recipe.export.opset,
                                options=recipe.export.options(quantized=quantized, scheme=ctx.qat_config.scheme))
        except EdgeKDError as err:
            raise DryRunError(f"dry run before training: {who} cannot be exported to {fmt}: {err}. Nothing "
                              f"was trained; change the model, or remove {fmt!r} from export.formats") from None
        if quantized and artifact.format == "onnx":
            scheme = ctx.qat_config.scheme
            result = validate_onnx(artifact.path, scheme)
            if result.passed:
                continue
            if scheme.full_integer or not scheme.float_fallback:
                shown = "; ".join(str(v) for v in result.violations[:5])
                more = f" (and {len(result.violations) - 5} more)" if len(result.violations) > 5 else ""
                raise DryRunError(f"dry run before training: {who} does not run on target {_target(ctx)!r}, "
                                  f"which has no float kernels between int8 ones: {shown}{more}. Nothing was "
                                  f"trained; use layers the target quantizes, or another target")
            ctx.log(f"dry run: {result.summary()}")
