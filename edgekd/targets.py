"""Target profiles: YAML files in ``targets/`` that describe a device and how to run on it.

A profile names the runtimes to use (with per-runtime options such as onnxruntime providers or
the OpenVINO device and precision hint), the thread count, benchmark settings, and the integer
arithmetic of its kernels (``quantization:``, an ``edgekd.quant.scheme.QuantScheme``) that QAT and
PTQ simulate and the artifact validator checks against. A profile with ``connection: none``
describes a device edgekd cannot reach in this version (an NPU, a phone, a microcontroller): it
drives quantization and validation only, and benchmarking on it is refused. Profiles are
found by name in the built-in folder (the repository's ``targets/``, or
``<prefix>/share/edgekd/targets`` in a wheel install), in folders listed in ``EDGEKD_TARGETS``
(os.pathsep-separated), or given as a path to a YAML file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekd.bench.adb import AdbConfig
from edgekd.bench.estimate import ComputeSpec
from edgekd.bench.harness import BenchSettings
from edgekd.bench.ssh import SshConfig
from edgekd.config import Config, FieldError, check_name, load_yaml
from edgekd.errors import ConfigError, UnknownNameError
from edgekd.quant.scheme import QuantScheme
from edgekd.runtime.api import RUNTIMES

SCHEMA_VERSION = 1


@dataclass
class TargetProfile(Config):
    """A device and how edgekd runs artifacts on it.

    Attributes:
        name: the profile's name (matches its file name).
        description: one line for ``edgekd targets``.
        connection: how the device is reached: "local"; "ssh" (a remote host, ``ssh:``
            section, see ``edgekd.bench.ssh``); "adb" (an Android device running LiteRT's
            benchmark_model, ``adb:`` section, see ``edgekd.bench.adb``); or "none" for a device
            edgekd cannot run on (an MCU, an NPU not attached here): quantization scheme,
            validation and estimates (``compute:``) only.
        device: device class, e.g. "cpu".
        threads: inference threads (recorded with every result).
        runtimes: runtime name -> options (onnxruntime: providers; openvino: device, precision_hint).
        benchmark: measurement settings.
        quantization: the integer arithmetic of the target's kernels (``edgekd.quant.scheme``).
        compute: the device's peak throughput and memory bandwidth (``edgekd.bench.estimate``),
            for ``edgekd estimate``'s roofline; datasheet figures, labelled as estimates.
        shapes: lengths of dynamic input axes in benchmarks, by axis name (``{sequence: 128}``);
            a recipe's ``shapes`` and ``edgekd bench --shape`` override them.
        cpu_flags_any: a local target whose arithmetic needs a CPU feature lists the
            ``/proc/cpuinfo`` flags that provide it (any one suffices), e.g. ``[avx512_vnni,
            avx_vnni]`` for full-range int8 weights on x86; running on a CPU without any of
            them is refused instead of measuring kernels that compute something else.
        version: schema version of this file.
    """

    name: str
    description: str = ""
    connection: Literal["local", "ssh", "adb", "none"] = "local"
    ssh: SshConfig | None = None
    adb: AdbConfig | None = None
    device: str = "cpu"
    threads: int = 1
    runtimes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"onnxruntime": {}})
    benchmark: BenchSettings = field(default_factory=BenchSettings)
    quantization: QuantScheme | None = None
    compute: ComputeSpec | None = None
    cpu_flags_any: list[str] = field(default_factory=list)
    shapes: dict[str, int] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        for kind in ("ssh", "adb"):
            if self.connection == kind and getattr(self, kind) is None:
                raise FieldError(kind, f"connection: {kind} needs an `{kind}:` section "
                                       f"(see `edgekd.bench.{kind}` in the README)")
            if self.connection != kind and getattr(self, kind) is not None:
                raise FieldError(kind, f"an `{kind}:` section needs connection: {kind} "
                                       f"(this profile says {self.connection})")
        if self.connection == "adb" and set(self.runtimes) != {"litert"}:
            raise FieldError("runtimes", "adb targets run LiteRT's benchmark_model: list only litert")
        for axis, length in self.shapes.items():
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise FieldError(f"shapes.{axis}", f"expected a positive integer length, got {length!r}")
        if self.shapes and self.connection == "adb":
            raise FieldError("shapes", "adb targets run benchmark_model on the model's stored input shapes; "
                                       "remove shapes and export the model with those lengths fixed")
        if self.threads < 1:
            raise FieldError("threads", f"must be >= 1, got {self.threads}")
        if not self.runtimes:
            raise FieldError("runtimes", "list at least one runtime")
        for name in self.runtimes:
            check_name(RUNTIMES, name, f"runtimes.{name}")
        if self.version > SCHEMA_VERSION:
            raise FieldError("version", f"profile schema {self.version} is newer than this edgekd "
                                        f"supports ({SCHEMA_VERSION})")

    @property
    def reachable(self) -> bool:
        """edgekd can run artifacts on this target (parity, benchmark)."""
        return self.connection != "none"

    @property
    def integer_only(self) -> bool:
        """The target has no float kernels (its scheme says ``float_fallback: false``)."""
        return self.quantization is not None and not self.quantization.float_fallback

    def estimate(self, analysis, runtime: str | None = None):
        """``analysis`` (``edgekd.bench.estimate.analyze``) on this target's compute figures,
        with the call overhead of ``runtime`` (default: the target's first runtime)."""
        return analysis.on(self.compute, self.name, runtime or next(iter(self.runtimes)),
                           integer_only=self.integer_only)

    def require_reachable(self, what: str) -> None:
        """Raise ConfigError when edgekd cannot run artifacts on this target (``what``: the task)."""
        if not self.reachable:
            raise ConfigError(f"target {self.name!r} has connection: none ({self.description or 'a device edgekd cannot reach'}): "
                              f"it cannot {what} in this version; it drives quantization (qat.target) and "
                              f"`edgekd validate` only. Run on a local target, e.g. x86-cpu")
        if self.cpu_flags_any and self.connection == "local" and not set(self.cpu_flags_any) & cpu_flags():
            raise ConfigError(f"target {self.name!r} needs a CPU with one of {', '.join(self.cpu_flags_any)} "
                              f"(its quantization scheme assumes those int8 instructions); this CPU "
                              f"has none, so it cannot {what}. Use a profile whose scheme this CPU "
                              f"computes exactly, e.g. x86-cpu (reduce_range weights)")

    def runtime_options(self, runtime: str) -> dict[str, Any]:
        return dict(self.runtimes.get(runtime) or {})


def cpu_flags() -> set[str]:
    """The local CPU's feature flags (``/proc/cpuinfo``; empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def target_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEKD_TARGETS", "").split(os.pathsep) if p]
    dirs += [Path(__file__).resolve().parents[1] / "targets", Path(sys.prefix) / "share/edgekd/targets"]
    return [d for d in dirs if d.is_dir()]


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in target_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def list_targets() -> list[TargetProfile]:
    return [load_target(p) for p in _profile_files().values()]


def load_target(name_or_path: str | Path) -> TargetProfile:
    """Load a profile by name (see ``edgekd targets``) or from a YAML file path.

    Raises:
        UnknownNameError: no profile of that name (lists the known ones).
        ConfigError: the profile file is invalid (file:line and field named).
    """
    data, source = load_yaml(target_file(name_or_path))
    return TargetProfile.from_dict(data, source)


def target_file(name_or_path: str | Path) -> Path:
    """The profile file a target name (or a ``.yaml`` path, returned as is) refers to.

    Raises:
        UnknownNameError: no profile of that name (lists the known ones).
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        return path
    files = _profile_files()
    if text not in files:
        raise UnknownNameError("target", text, files)
    return files[text]
