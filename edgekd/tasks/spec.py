"""What a model takes and gives: named tensors with dtypes and shapes whose dynamic axes have names.

Torch-free (the benchmark child and the runtimes read it). A ``TensorSpec`` dimension is an
``int`` (fixed), a ``str`` (a named dynamic axis such as ``"batch"`` or ``"sequence"``, the
ONNX ``dim_param``) or ``None`` (dynamic without a name, as OpenVINO and some ONNX files give
them). ``bind`` turns a spec into a concrete shape from axis lengths (``{"sequence": 128}``):
the first axis, when dynamic, is the batch and takes ``batch``; any other dynamic axis must be
bound, by name or as ``<input>:<axis>`` for an unnamed one, or it is an error: a sequence model
is never silently run at length 1.

``example`` makes benchmark inputs: floats uniform in ``[low, high)`` (default ``[0, 1)``),
integers uniform in ``[low, high)`` (token ids within the declared vocabulary; default ``[0, 2)``,
valid for any embedding table and for masks), booleans at random. Exported ONNX files carry
their specs in the metadata key ``edgekd.inputs`` (JSON), so a benchmark finds the vocabulary
and axis names of an artifact edgekd wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.errors import ConfigError

METADATA_KEY = "edgekd.inputs"  # ONNX metadata_props key of the input specs (JSON)
IR_RT_INFO_KEY = "edgekd_inputs"  # the same JSON in an OpenVINO IR's rt_info (dims there have no names)
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``name``, numpy ``dtype`` name, ``shape`` (see module doc) and,
    for inputs, the value range ``[low, high)`` benchmark inputs are drawn from."""

    name: str
    dtype: str = "float32"
    shape: tuple[Dim, ...] = ()
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise ConfigError(f"input {self.name!r}: unknown dtype {self.dtype!r} (use a numpy dtype "
                              f"name such as float32, int64, int32, bool)") from None
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.low is not None and self.high is not None and self.high <= self.low:
            raise ConfigError(f"input {self.name!r}: value range [{self.low}, {self.high}) is empty")

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer)

    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> name of the named dynamic axes (``torch.onnx.export``'s dynamic_axes)."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def bind(self, axes: Mapping[str, int] | None = None, batch: int = 1) -> tuple[int, ...]:
        """The concrete shape with every dynamic axis bound.

        Args:
            axes: lengths by axis name (``{"sequence": 128}``) or ``"<input>:<axis>"`` for an
                unnamed dynamic axis (``{"input_ids:1": 128}``).
            batch: the length of a dynamic first axis not bound in ``axes``.

        Raises:
            ConfigError: a dynamic axis other than the batch has no length; the message names
                the input, the axis and how to declare it.
        """
        axes = dict(axes or {})
        shape = []
        for i, dim in enumerate(self.shape):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
                continue
            keys = ([dim] if isinstance(dim, str) else []) + [f"{self.name}:{i}"]
            bound = next((axes[k] for k in keys if k in axes), None)
            if bound is None and i == 0:
                bound = batch
            if bound is None:
                label = f"axis {i} ({dim!r})" if isinstance(dim, str) else f"axis {i} (unnamed)"
                raise ConfigError(f"input {self.name!r} {label} is dynamic and no length was declared; "
                                  f"declare it with --shape {keys[0]}=N or `shapes: {{{keys[0]}: N}}` in the "
                                  f"target profile (a dynamic axis is never run at length 1 by default)")
            if not isinstance(bound, int) or bound < 1:
                raise ConfigError(f"input {self.name!r}: length of {keys[0]!r} must be a positive integer, "
                                  f"got {bound!r}")
            shape.append(bound)
        return tuple(shape)

    def example(self, axes: Mapping[str, int] | None = None, batch: int = 1,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """A random input of this spec (see the module doc for the value ranges)."""
        rng = rng or np.random.default_rng(0)
        shape = self.bind(axes, batch)
        dtype = np.dtype(self.dtype)
        if dtype == np.bool_:
            return rng.random(shape) < 0.5
        if np.issubdtype(dtype, np.integer):
            low = int(self.low) if self.low is not None else 0
            high = int(self.high) if self.high is not None else 2
            return rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)
        low = self.low if self.low is not None else 0.0
        high = self.high if self.high is not None else 1.0
        return (low + (high - low) * rng.random(shape)).astype(dtype)

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        rng = f" in [{self.low:g}, {self.high:g})" if self.low is not None and self.high is not None else ""
        return f"{self.name} {self.dtype}[{dims}]{rng}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            return cls(name=str(data["name"]), dtype=str(data.get("dtype", "float32")),
                       shape=tuple(data.get("shape", ())), low=data.get("low"), high=data.get("high"))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"malformed tensor spec {dict(data)!r} ({err})") from None


def specs_to_json(specs: Sequence[TensorSpec]) -> str:
    return json.dumps([s.to_dict() for s in specs])


def specs_from_json(text: str) -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in json.loads(text)]


def merge_declared(found: Sequence[TensorSpec], declared: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The runtime's view of a model's inputs (``found``) completed with what edgekd declared when
    it exported the model (``declared``, from the file's metadata): axis names where the runtime
    lost them, and value ranges. Inputs are matched by name."""
    by_name = {s.name: s for s in declared}
    out = []
    for spec in found:
        known = by_name.get(spec.name)
        if known is None or len(known.shape) != len(spec.shape):
            out.append(spec)
            continue
        shape = tuple(k if (d is None or isinstance(d, str)) and isinstance(k, str) else d
                      for d, k in zip(spec.shape, known.shape))
        out.append(TensorSpec(spec.name, spec.dtype, shape, known.low, known.high))
    return out


def parse_shape_bindings(items: Sequence[str]) -> dict[str, int]:
    """``["sequence=128", "input_ids:1=64"]`` -> ``{"sequence": 128, "input_ids:1": 64}``.

    Raises:
        ConfigError: an item is not ``name=positive integer``.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"--shape {item!r}: expected NAME=LENGTH with a positive integer length, "
                              f"e.g. sequence=128 (or INPUT:AXIS=LENGTH for an unnamed axis)")
        out[name.strip()] = int(value)
    return out
