"""Neutral export API: the exporter registry and ``export(model, formats, out_dir, name)``."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ConfigError, ExportError
from edgekd.registry import Registry


@dataclass(frozen=True)
class ExporterEntry:
    """A format: its file suffix, native runtime and where its code lives (imported on use)."""

    name: str
    suffix: str
    runtime: str
    target: str  # "module:function" converting an ONNX file: fn(onnx_path, out_path, **options) -> Path

    def load(self):
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)


EXPORTERS: Registry[ExporterEntry] = Registry("export format")
for _entry in (
    ExporterEntry("onnx", ".onnx", "onnxruntime", "edgekd.export.onnx:copy_onnx"),
    ExporterEntry("openvino", ".xml", "openvino", "edgekd.export.openvino:onnx_to_openvino"),
    ExporterEntry("tflite", ".tflite", "litert", "edgekd.export.tflite:onnx_to_tflite"),
):
    EXPORTERS.register(_entry.name)(_entry)


def list_exporters() -> list[str]:
    return EXPORTERS.names()


@dataclass
class Artifact:
    """One exported file and what runs it."""

    format: str
    path: Path
    runtime: str

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, including side files (an OpenVINO .xml has its .bin beside it)."""
        files = [self.path] + ([self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [])
        return sum(f.stat().st_size for f in files if f.exists())


def export(model, formats: list[str], out_dir: str | Path, name: str, inputs, *, outputs=None,
           opset: int = 17, options: dict[str, dict] | None = None) -> list[Artifact]:
    """Export a torch model (float or frozen QAT) to each format in ``formats``.

    ``inputs``/``outputs``: the task's specs (``Task.input_spec``/``output_spec``: names, dtypes,
    named dynamic axes), or for a one-image model its sample shape (C, H, W).

    The ONNX file is always written (``out_dir/name.onnx``): the other formats are converted from
    it. ``options`` holds keyword options per format (e.g. ``{"tflite": {"io": "int8"}}``).
    Returns one Artifact per requested format, in the order given.

    Raises:
        ConfigError: unknown format.
        ExportError: the model or a conversion failed (names the operator when known).
    """
    entries = [EXPORTERS.get(f) for f in formats]  # raises on unknown names before any work
    from edgekd.export.onnx import export_onnx

    out_dir = Path(out_dir)
    onnx_path = export_onnx(model, out_dir / f"{name}.onnx", inputs, outputs=outputs, opset=opset)
    return [_convert(entry, onnx_path, out_dir / f"{name}{entry.suffix}", (options or {}).get(entry.name))
            for entry in entries]


def export_onnx_file(onnx_path: str | Path, formats: list[str], out_dir: str | Path,
                     name: str | None = None, *, options: dict[str, dict] | None = None) -> list[Artifact]:
    """Convert an existing ONNX file to each format (``onnx`` copies it)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: ONNX file not found")
    name = name or onnx_path.stem
    entries = [EXPORTERS.get(f) for f in formats]
    return [_convert(e, onnx_path, Path(out_dir) / f"{name}{e.suffix}", (options or {}).get(e.name))
            for e in entries]


def _convert(entry: ExporterEntry, onnx_path: Path, out_path: Path, options: dict | None) -> Artifact:
    try:
        fn = entry.load()
    except ImportError as err:
        raise ConfigError(f"export format {entry.name!r} needs a package that is not installed "
                          f"({err})") from None
    options = options or {}
    known = set(inspect.signature(fn).parameters) - {"onnx_path", "out_path"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"export format {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(sorted(known)) or 'none'}")
    return Artifact(entry.name, fn(onnx_path, out_path, **options), entry.runtime)
