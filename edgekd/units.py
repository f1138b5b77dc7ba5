"""Quantities written the way people write them: ``512KB``, ``8ms``, ``150MB``, ``1.5%``.

Sizes use 1 KB = 1000 bytes and 1 KiB = 1024 bytes (SI and IEC, as ``ls --si`` and ``ls -h``).
Times are returned in milliseconds; percentages as fractions (``1.5%`` -> 0.015). A bare number is
taken in the base unit (bytes, ms, fraction).
"""

from __future__ import annotations

import math
import re

from edgekd.errors import ConfigError

SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
TIME_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)\s*([a-zA-Zµ%]*)\s*$")


def _split(value, kind: str, units: dict[str, float]) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ConfigError(f"expected a {kind} such as {_example(kind)}, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigError(f"expected a finite {kind} such as {_example(kind)}, got {value!r}")
        return float(value), ""
    match = _NUMBER.match(str(value))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in units):
        raise ConfigError(f"expected a {kind} such as {_example(kind)}, got {value!r}"
                          f"{'; known units: ' + ', '.join(units) if match else ''}")
    number = float(match.group(1))
    if not math.isfinite(number * units.get(unit, 1)):
        raise ConfigError(f"expected a finite {kind} such as {_example(kind)}, got {value!r}")
    return number, unit


def _example(kind: str) -> str:
    return {"size": "'512KB' or '2MiB'", "time": "'8ms' or '1.5s'", "percentage": "'1.5%' or 0.015"}[kind]


def parse_size(value) -> int:
    """Bytes from ``'512KB'``, ``'2MiB'``, ``1000``."""
    number, unit = _split(value, "size", SIZE_UNITS)
    if number < 0:
        raise ConfigError(f"a size cannot be negative, got {value!r}")
    return int(round(number * SIZE_UNITS.get(unit, 1)))


def parse_time_ms(value) -> float:
    """Milliseconds from ``'8ms'``, ``'250us'``, ``'1.5s'``, ``8``."""
    number, unit = _split(value, "time", TIME_UNITS)
    if number < 0:
        raise ConfigError(f"a time cannot be negative, got {value!r}")
    return number * TIME_UNITS.get(unit, 1.0)


def parse_fraction(value, maximum: float | None = 1.0) -> float:
    """A fraction from ``'1.5%'`` (0.015) or a plain number, in [0, maximum] (no upper bound when
    ``maximum`` is None, e.g. a growth of ``'150%'``)."""
    number, unit = _split(value, "percentage", {"%": 0.01})
    fraction = number / 100 if unit == "%" else number
    if maximum is None and not 0 <= fraction < float("inf"):
        raise ConfigError(f"expected a non-negative percentage such as '5%', got {value!r}")
    if maximum is not None and not 0 <= fraction <= maximum:
        raise ConfigError(f"expected a percentage between 0% and {100 * maximum:g}% "
                          f"(or a fraction 0..{maximum:g}), got {value!r}")
    return fraction


def format_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"
