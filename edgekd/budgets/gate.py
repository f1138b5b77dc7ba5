"""``edgekd check --measure``: measure, then check, in one CI step.

With a report, every artifact entry whose file is still there is benchmarked again on its target
(a fresh child process, as ``edgekd bench``), or estimated again for a target edgekd cannot run
on; with ``--baseline``, the baseline report's artifacts are measured too, interleaved with the
new ones (old, new, old, new, ...), so a latency growth compares two timings of the same job on
the same machine. Without a report, ``--artifact`` files are measured on ``--target`` and a
report is built from them (size, parameters and MACs of ONNX files, latency, memory, coverage).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from edgekd.report import Entry, Report, environment

Log = Callable[[str], None]


def measure_entry(entry: Entry, target) -> None:
    """Benchmark (or, on an unreachable target, estimate) ``entry``'s artifact; fills it in place."""
    from edgekd.bench.harness import benchmark_on_target

    if not target.reachable:
        from edgekd.bench.estimate import estimate_onnx

        if target.compute is None or Path(entry.path).suffix != ".onnx":
            return  # nothing to estimate with: its checks say "not measured"
        est = estimate_onnx(entry.path, target.compute, target.name)
        entry.latency = {"p50_ms": est.latency_ms, "estimated": True}
        entry.info.update(estimated=True, macs=est.macs, peak_activation_bytes=est.peak_activation_bytes)
        return
    result = benchmark_on_target(entry.path, target, entry.runtime)
    entry.latency = {**result.latency.to_dict(), "samples_ms": result.samples_ms}
    entry.memory, entry.peak_memory_bytes = result.memory, result.peak_memory_bytes
    entry.info.update(accelerator_coverage=result.coverage, manifest=result.manifest, noisy=result.latency.noisy,
                      measured_by="edgekd check --measure")


def measure_reports(report: Report, baseline: Report | None = None, log: Log = lambda m: None) -> tuple[Report, Report | None, bool]:
    """Copies of ``report`` (and ``baseline``) with every artifact measured again here.

    Returns (report, baseline, baseline_measured_here): the last is True when every baseline
    artifact that pairs with a new one was timed in this job.

    Raises:
        RuntimeBackendError, BenchmarkError: a measurement could not run (exit code 3).
    """
    from edgekd.targets import load_target

    report = copy.deepcopy(report)
    baseline = copy.deepcopy(baseline) if baseline is not None else None
    targets: dict[str, object] = {}
    paired_all = baseline is not None
    for entry in report.entries:
        if entry.target is None or not entry.path or not Path(entry.path).is_file():
            continue
        target = targets.setdefault(entry.target, load_target(entry.target))
        old = None
        if baseline is not None:
            old = next((e for e in baseline.entries if e.name == entry.name and e.target == entry.target), None)
            if old is not None and old.path and Path(old.path).is_file():
                log(f"measuring baseline {old.name} on {old.target}")
                measure_entry(old, target)
            elif old is not None:
                paired_all = False
        log(f"measuring {entry.name} on {entry.target}")
        measure_entry(entry, target)
    return report, baseline, paired_all


def report_from_artifacts(paths: list[str], target_names: list[str], log: Log = lambda m: None) -> Report:
    """A report of ``paths`` measured on each target, or estimated (ONNX files only) on targets
    edgekd cannot run on, without a pipeline run."""
    from edgekd.bench.estimate import analyze
    from edgekd.budgets.budget import compressed_size
    from edgekd.errors import ModelLoadError
    from edgekd.runtime.api import runtime_for
    from edgekd.targets import load_target

    targets = [load_target(name) for name in target_names]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ModelLoadError(f"{missing[0]}: artifact not found")
    entries = []
    for target, raw in ((t, p) for t in targets for p in paths):
        path = Path(raw)
        if not target.reachable and path.suffix != ".onnx":
            continue  # estimates read ONNX files
        entry = Entry(name=path.name, stage="artifact", format=path.suffix.lstrip(".") or "?", path=str(path),
                      size_bytes=path.stat().st_size + (path.with_suffix(".bin").stat().st_size
                                                        if path.suffix == ".xml" and path.with_suffix(".bin").is_file() else 0),
                      runtime=runtime_for(path) if target.reachable else None, target=target.name,
                      threads=target.threads if target.reachable else None)
        entry.info["compressed_size_bytes"] = compressed_size(path)
        if path.suffix == ".onnx":
            facts = analyze(path)
            entry.params, entry.info["macs"] = facts.params, facts.macs
        log(f"measuring {path.name} on {target.name}")
        measure_entry(entry, target)
        entries.append(entry)
    return Report(targets=[t.name for t in targets], entries=entries, environment=environment())


__all__ = ["measure_entry", "measure_reports", "report_from_artifacts"]
