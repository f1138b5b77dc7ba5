"""edgekd.units: sizes, times and percentages written with units."""

from __future__ import annotations

import pytest

from edgekd.errors import ConfigError
from edgekd.units import format_size, parse_fraction, parse_size, parse_time_ms


@pytest.mark.parametrize("text, expected", [
    ("512KB", 512_000),
    ("2MiB", 2_097_152),
    ("1KiB", 1024),
    ("1.5GB", 1_500_000_000),
    ("3GiB", 3 * 1024**3),
    ("64kb", 64_000),
    ("400 MB", 400_000_000),
    ("10B", 10),
    ("1e3KB", 1_000_000),
    ("1000", 1000),
    (4096, 4096),
    (0, 0),
])
def test_parse_size(text, expected):
    value = parse_size(text)
    assert value == expected
    assert type(value) is int


@pytest.mark.parametrize("text, expected", [
    ("250us", 0.25),
    ("250µs", 0.25),
    ("1.5s", 1500.0),
    ("8ms", 8.0),
    ("2000ns", 0.002),
    (" 5 ms ", 5.0),
    ("8", 8.0),
    (8, 8.0),
    (0.5, 0.5),
])
def test_parse_time_ms(text, expected):
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1.5%", 0.015),
    ("100%", 1.0),
    ("0%", 0.0),
    ("50%", 0.5),
    (0.2, 0.2),
    ("0.2", 0.2),
    (1, 1.0),
    (0, 0.0),
])
def test_parse_fraction(text, expected):
    assert parse_fraction(text) == expected


@pytest.mark.parametrize("fn, value, msg", [
    (parse_size, "5 parsecs",
     "expected a size such as '512KB' or '2MiB', got '5 parsecs'; known units: b, kb, mb, gb, kib, mib, gib"),
    (parse_size, "5ms", "expected a size such as '512KB' or '2MiB', got '5ms'; known units: "),
    (parse_size, "big", "expected a size such as '512KB' or '2MiB', got 'big'"),
    (parse_size, "", "expected a size such as '512KB' or '2MiB', got ''"),
    (parse_time_ms, "5 minutes", "expected a time such as '8ms' or '1.5s', got '5 minutes'; known units: "),
    (parse_time_ms, "5KB", "expected a time such as '8ms' or '1.5s', got '5KB'; known units: "),
    (parse_fraction, "5 percent", "expected a percentage such as '1.5%' or 0.015, got '5 percent'; known units: %"),
    (parse_fraction, "5ms", "expected a percentage such as '1.5%' or 0.015, got '5ms'; known units: %"),
])
def test_bad_units(fn, value, msg):
    with pytest.raises(ConfigError) as info:
        fn(value)
    assert str(info.value).startswith(msg)


def test_no_suffix_after_unit_or_second_number():
    for text in ("5 MB extra", "5 5MB", "5MBMB", "MB5"):
        with pytest.raises(ConfigError, match="expected a size"):
            parse_size(text)


@pytest.mark.parametrize("fn, value, msg", [
    (parse_size, "-1KB", "a size cannot be negative, got '-1KB'"),
    (parse_size, -5, "a size cannot be negative, got -5"),
    (parse_time_ms, "-2ms", "a time cannot be negative, got '-2ms'"),
    (parse_time_ms, -0.5, "a time cannot be negative, got -0.5"),
])
def test_negative(fn, value, msg):
    with pytest.raises(ConfigError) as info:
        fn(value)
    assert str(info.value) == msg


@pytest.mark.parametrize("value", ["101%", "100.5%", 1.01, 2, "-1%", -0.1])
def test_fraction_out_of_range(value):
    with pytest.raises(ConfigError) as info:
        parse_fraction(value)
    assert str(info.value) == (f"expected a percentage between 0% and 100% (or a fraction 0..1), "
                               f"got {value!r}")


@pytest.mark.parametrize("fn, kind", [(parse_size, "size"), (parse_time_ms, "time"), (parse_fraction, "percentage")])
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_rejected(fn, kind, value):
    with pytest.raises(ConfigError, match=f"^expected a {kind} such as .*, got {value}$"):
        fn(value)


@pytest.mark.parametrize("n, text", [
    (None, "-"), (0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (64_000, "64.0 KB"),
    (1_500_000, "1.5 MB"), (2_000_000_000, "2.0 GB"),
])
def test_format_size(n, text):
    assert format_size(n) == text
