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

from edgekd.errors import ConfigError, EstimateError
from edgekd.report import Entry, Report, environment

Log = Callable[[str], None]


def measure_entry(entry: Entry, target, analysis=None) -> None:
    """Benchmark (or, on an unreachable target, estimate) ``entry``'s artifact; fills it in place.
    ``analysis``: the estimator's analysis of the file, when the caller has it already."""
    from edgekd.bench.harness import benchmark_on_target
    from edgekd.budgets.budget import compressed_size

    entry.info["compressed_size_bytes"] = compressed_size(entry.path)  # the file as it is now
    if not target.reachable:
        from edgekd.bench.estimate import analyze

        if target.compute is None or Path(entry.path).suffix != ".onnx":
            return  # nothing to estimate with: its checks say "not measured"
        target.estimate(analysis or analyze(entry.path)).record_into(entry)
        return
    benchmark_on_target(entry.path, target, entry.runtime).record_into(entry)
    entry.info["measured_by"] = "edgekd check --measure"


def measure_reports(report: Report, baseline: Report | None = None, log: Log = lambda m: None) -> tuple[Report, Report | None, bool]:
    """Copies of ``report`` (and ``baseline``) with every artifact measured again here.

    Returns (report, baseline, baseline_measured_here): the last is True when every baseline
    artifact that pairs with a new one was timed in this job.

    Raises:
        ConfigError: none of the report's artifact files is there (exit code 2).
        RuntimeBackendError, BenchmarkError: a measurement could not run (exit code 3).
    """
    from edgekd.targets import load_target

    report = copy.deepcopy(report)
    baseline = copy.deepcopy(baseline) if baseline is not None else None
    targets: dict[str, object] = {}
    paired_all = baseline is not None
    measured = 0
    for entry in report.entries:
        if entry.target is None or not entry.path:
            continue  # PyTorch rows: nothing to benchmark
        old = None
        if baseline is not None:
            old = next((e for e in baseline.entries if e.name == entry.name and e.target == entry.target), None)
        if not Path(entry.path).is_file():
            log(f"not measured: {entry.name} on {entry.target}: {entry.path} is not there "
                f"(paths are relative to where the report was made); its recorded figures are checked")
            paired_all = paired_all and old is None
            continue
        target = targets.setdefault(entry.target, load_target(entry.target))
        if old is not None:
            if old.path and Path(old.path).is_file() and not _same_file(old.path, entry.path):
                log(f"measuring baseline {old.name} on {old.target}")
                measure_entry(old, target)
            else:
                why = "is the new artifact's own file" if old.path and Path(old.path).is_file() else "is not there"
                log(f"baseline {old.name} not re-measured: {old.path} {why}; its recorded timings "
                    f"are compared, not gated")
                paired_all = False
        log(f"measuring {entry.name} on {entry.target}")
        measure_entry(entry, target)
        measured += 1
    if measured == 0:
        raise ConfigError("--measure found none of the report's artifact files (paths are relative to "
                          "where the report was made: run edgekd check from that folder)")
    return report, baseline, paired_all


def _same_file(a: str, b: str) -> bool:
    """A baseline entry whose path is the new artifact's file (a stored report from the same
    output folder): timing it would compare the new build with itself."""
    return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)


def report_from_artifacts(paths: list[str], target_names: list[str], log: Log = lambda m: None) -> Report:
    """A report of ``paths`` measured on each target, or estimated (ONNX files only) on targets
    edgekd cannot run on, without a pipeline run."""
    from edgekd.bench.estimate import analyze
    from edgekd.errors import ModelLoadError
    from edgekd.runtime.api import runtime_for
    from edgekd.targets import load_target

    targets = [load_target(name) for name in target_names]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ModelLoadError(f"{missing[0]}: artifact not found")
    entries, analyses = [], {}
    for target, raw in ((t, p) for t in targets for p in paths):
        path = Path(raw)
        if not target.reachable and path.suffix != ".onnx":
            continue  # estimates read ONNX files
        entry = Entry(name=path.name, stage="artifact", format=path.suffix.lstrip(".") or "?", path=str(path),
                      size_bytes=path.stat().st_size + (path.with_suffix(".bin").stat().st_size
                                                        if path.suffix == ".xml" and path.with_suffix(".bin").is_file() else 0),
                      runtime=runtime_for(path) if target.reachable else None, target=target.name,
                      threads=target.threads if target.reachable else None)
        if path.suffix == ".onnx" and path not in analyses:  # parsed once for every target
            try:
                analyses[path] = analyze(path)
            except EstimateError as err:  # shapes not inferable: params/MACs checks say "not measured"
                analyses[path] = None
                log(f"{path.name}: parameters and MACs not counted ({err})")
        if analyses.get(path) is not None:
            entry.params = analyses[path].params
            entry.info.update(analyses[path].mac_fields())
        log(f"measuring {path.name} on {target.name}")
        measure_entry(entry, target, analyses.get(path))
        entries.append(entry)
    return Report(targets=[t.name for t in targets], entries=entries, environment=environment())


__all__ = ["measure_entry", "measure_reports", "report_from_artifacts"]
