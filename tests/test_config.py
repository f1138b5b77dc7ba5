"""edgekd.config: typed configs built from plain data, with file:line and field path in errors."""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.config import Config, FieldError, Source, dump_yaml, load_yaml, parse_yaml
from edgekd.errors import ConfigError
from edgekd.recipe import Recipe, demo_recipe


@dataclass
class Inner(Config):
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self):
        if self.rate < 0:
            raise FieldError("rate", f"must be >= 0, got {self.rate}")


@dataclass
class Outer(Config):
    name: str = "x"
    count: int = 1
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None


@dataclass
class Required(Config):
    name: str


def from_yaml(cls, text: str):
    data, source = parse_yaml(text, "cfg.yaml")
    return cls.from_dict(data, source)


def error_of(cls, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        from_yaml(cls, text)
    return str(info.value)


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_top_level_key_names_line_field_and_suggestion():
    assert error_of(Outer, "name: a\ncuont: 3\n") == (
        "cfg.yaml:2: cuont: unknown field; did you mean 'count'?; valid fields: name, count, inner, tags, limit")


def test_unknown_nested_key_has_dotted_path_and_its_own_line():
    msg = error_of(Outer, "name: a\ninner:\n  mode: slow\n  rtae: 1.0\n")
    assert msg == "cfg.yaml:4: inner.rtae: unknown field; did you mean 'rate'?; valid fields: rate, mode"


def test_unknown_key_without_close_match_has_no_suggestion():
    msg = error_of(Outer, "zzzzzz: 1\n")
    assert msg.startswith("cfg.yaml:1: zzzzzz: unknown field; valid fields:")
    assert "did you mean" not in msg


def test_errors_from_plain_dict_name_the_default_source():
    with pytest.raises(ConfigError, match=r"^<dict>: inner\.mdoe: unknown field; did you mean 'mode'\?"):
        Outer.from_dict({"inner": {"mdoe": "fast"}})


# --- types ------------------------------------------------------------------------------------

def test_wrong_type_is_reported_with_value():
    assert error_of(Outer, "name: a\ncount: three\n") == "cfg.yaml:2: count: expected int, got str 'three'"


def test_wrong_type_inside_list_names_the_index_and_line():
    assert error_of(Outer, "tags:\n  - a\n  - 7\n") == "cfg.yaml:3: tags.1: expected str, got int 7"


def test_scalar_where_list_expected():
    assert error_of(Outer, "tags: a\n") == "cfg.yaml:1: tags: expected a list, got str 'a'"


def test_non_mapping_where_config_expected():
    assert error_of(Outer, "inner: [1, 2]\n") == (
        "cfg.yaml:1: inner: expected a mapping of Inner fields, got list [1, 2]")
    with pytest.raises(ConfigError, match=r"^<dict>: \(top level\): expected a mapping of Outer fields"):
        Outer.from_dict([1, 2])


def test_literal_choice_lists_choices_and_suggests():
    assert error_of(Outer, "inner:\n  mode: slwo\n") == (
        "cfg.yaml:2: inner.mode: expected one of 'fast', 'slow', got 'slwo'; did you mean 'slow'?")


def test_literal_accepts_valid_choice():
    assert Outer.from_dict({"inner": {"mode": "slow"}}).inner.mode == "slow"


def test_nested_config_is_built_with_defaults_for_missing_fields():
    cfg = from_yaml(Outer, "inner:\n  rate: 2.5\n")
    assert isinstance(cfg.inner, Inner)
    assert cfg.inner == Inner(rate=2.5, mode="fast")
    assert cfg == Outer(inner=Inner(rate=2.5))


def test_null_section_gives_defaults():
    assert from_yaml(Outer, "inner: null\n").inner == Inner()
    assert Outer.from_dict(None) == Outer()


def test_int_is_converted_to_float():
    cfg = from_yaml(Outer, "inner:\n  rate: 2\n")
    assert cfg.inner.rate == 2.0
    assert type(cfg.inner.rate) is float


def test_float_is_not_accepted_as_int():
    assert error_of(Outer, "count: 2.0\n") == "cfg.yaml:1: count: expected int, got float 2.0"


@pytest.mark.parametrize("text, msg", [
    ("count: true\n", "cfg.yaml:1: count: expected int, got bool True"),
    ("inner:\n  rate: false\n", "cfg.yaml:2: inner.rate: expected float, got bool False"),
    ("limit: true\n", "cfg.yaml:1: limit: expected int, got bool True"),
])
def test_bool_is_not_accepted_as_number(text, msg):
    assert error_of(Outer, text) == msg


def test_optional_field_accepts_null_and_value_and_rejects_other_types():
    assert from_yaml(Outer, "limit: null\n").limit is None
    assert from_yaml(Outer, "limit: 4\n").limit == 4
    assert error_of(Outer, "limit: four\n") == "cfg.yaml:1: limit: expected int, got str 'four'"


def test_missing_required_field():
    with pytest.raises(ConfigError) as info:
        Required.from_dict({})
    assert str(info.value) == "<dict>: (top level): missing 1 required positional argument: 'name'"
    assert Required.from_dict({"name": "n"}).name == "n"


# --- __post_init__ errors ---------------------------------------------------------------------

def test_field_error_from_post_init_gets_file_line_and_path():
    msg = error_of(Outer, "name: a\ninner:\n  mode: slow\n  rate: -1\n")
    assert msg == "cfg.yaml:4: inner.rate: must be >= 0, got -1.0"


def test_field_error_is_a_config_error_with_field_and_message():
    err = FieldError("a.b", "bad")
    assert isinstance(err, ConfigError)
    assert (err.field, err.message, str(err)) == ("a.b", "bad", "a.b: bad")


def test_source_falls_back_to_nearest_parent_line():
    source = Source("f.yaml", {(): 1, ("a",): 3})
    assert source.at(("a", "b", "c")) == "f.yaml:3"
    assert source.at(("z",)) == "f.yaml:1"
    assert Source("f.yaml").at(("a",)) == "f.yaml"


# --- round trip -------------------------------------------------------------------------------

def test_to_dict_from_dict_round_trip():
    cfg = Outer(name="n", count=3, inner=Inner(rate=1.25, mode="slow"), tags=["a", "b"], limit=7)
    data = cfg.to_dict()
    assert data == {"name": "n", "count": 3, "inner": {"rate": 1.25, "mode": "slow"},
                    "tags": ["a", "b"], "limit": 7}
    assert Outer.from_dict(data) == cfg
    assert from_yaml(Outer, dump_yaml(data)) == cfg


# --- YAML -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, msg", [
    ("a: 1\nb: [1, 2\nc: 3\n", "cfg.yaml:3: invalid YAML: expected ',' or ']', but got ':'"),
    ("a: 1\n  b: 2\n", "cfg.yaml:2: invalid YAML: mapping values are not allowed here"),
])
def test_invalid_yaml_reports_line(text, msg):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "cfg.yaml")
    assert str(info.value) == msg


def test_parse_yaml_indexes_lines_of_keys_and_list_items():
    data, source = parse_yaml("a: 1\nb:\n  c: 2\n  d:\n    - x\n    - y\n")
    assert data == {"a": 1, "b": {"c": 2, "d": ["x", "y"]}}
    assert source.lines[("a",)] == 1
    assert source.lines[("b", "c")] == 3
    assert source.lines[("b", "d", "1")] == 6


def test_load_yaml_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: file not found$"):
        load_yaml(missing)


def test_load_yaml_uses_the_path_in_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  rate: -2\n")
    data, source = load_yaml(path)
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(data, source)
    assert str(info.value) == f"{path}:3: inner.rate: must be >= 0, got -2.0"


# --- property: Recipe.from_dict only ever raises ConfigError ----------------------------------

DEMO = demo_recipe().to_dict()
RECIPE_FIELDS = list(DEMO)
_HINTS = typing.get_type_hints(Recipe)
# data, teacher, distill, qat, ...: the sections that are configs (not free-form maps such as
# ``shapes``, where any key with a valid value is accepted)
SECTIONS = [k for k, v in DEMO.items() if isinstance(v, dict) and isinstance(_HINTS[k], type)
            and issubclass(_HINTS[k], Config)]
NESTED_FIELDS = sorted({k for s in SECTIONS for k in DEMO[s]})

values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from(["onnx", "kd", "cnn-teacher", "x86-cpu", "64KB", "5ms", "95%"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(RECIPE_FIELDS + NESTED_FIELDS) | st.text(max_size=10)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.dictionaries(keys, values, max_size=4),
       section=st.none() | st.sampled_from(SECTIONS))
def test_recipe_from_dict_raises_only_config_error(extra, section):
    data = copy.deepcopy(DEMO)
    target = data if section is None else data[section]
    valid = list(target)  # to_dict() writes every field, so these are exactly the valid keys
    target.update(extra)
    try:
        recipe = Recipe.from_dict(data)
    except ConfigError:
        return
    assert isinstance(recipe, Recipe)
    assert all(k in valid for k in extra)  # it succeeded, so no key was unknown


@settings(max_examples=200, deadline=None, database=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in RECIPE_FIELDS),
                             values, min_size=1, max_size=4))
def test_unknown_top_level_key_always_raises_config_error_naming_it(extra):
    data = copy.deepcopy(DEMO) | extra
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(data)
    first_unknown = next(iter(extra))  # known keys come first in the dict and are valid
    assert f": {first_unknown}: unknown field" in str(info.value)
