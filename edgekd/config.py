"""Small typed configs that round-trip to dict/YAML and report bad input with file, field and line.

Every config of edgekd is a dataclass deriving from ``Config``. ``Config.from_dict`` checks that
every key is a known field (suggesting the nearest name for typos), converts and checks types,
builds nested configs, and lets ``__post_init__`` check values. Errors carry the dotted field path
and, when the data came from a YAML file, ``file:line``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from edgekd.errors import ConfigError, UnknownNameError, did_you_mean

C = TypeVar("C", bound="Config")
LineMap = dict[tuple[str, ...], int]


class FieldError(ConfigError):
    """A value problem found in ``__post_init__``; ``from_dict`` adds file and line to it."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def parse_field(field: str, parse, raw: Any, **kwargs) -> Any:
    """``parse(raw, **kwargs)`` inside ``__post_init__``: its ConfigError becomes a FieldError
    for ``field``, so ``from_dict`` adds the file and line."""
    try:
        return parse(raw, **kwargs)
    except ConfigError as err:
        raise FieldError(field, str(err)) from None


def check_name(registry, name: str, field: str) -> None:
    """Raise FieldError for ``field`` when ``name`` is not in ``registry`` (with "did you mean")."""
    try:
        registry.get(name)
    except UnknownNameError as err:
        raise FieldError(field, str(err)) from None


@dataclasses.dataclass
class Source:
    """Where config data came from: a file (or "<built-in>") and the line of each key path."""

    name: str = "<dict>"
    lines: LineMap = dataclasses.field(default_factory=dict)

    def at(self, path: tuple[str, ...]) -> str:
        for cut in range(len(path), -1, -1):  # the nearest line known for this path or a parent
            if path[:cut] in self.lines:
                return f"{self.name}:{self.lines[path[:cut]]}"
        return self.name

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(f"{self.at(path)}: {'.'.join(path) or '(top level)'}: {message}")


@dataclasses.dataclass
class Config:
    """Base class: subclasses are dataclasses whose fields have plain type hints."""

    VERSION: ClassVar[int] = 1

    @classmethod
    def from_dict(cls: type[C], data: Any, source: Source | None = None,
                  path: tuple[str, ...] = ()) -> C:
        """Build and validate a config from plain data (e.g. parsed YAML).

        Raises:
            ConfigError: unknown key, wrong type or invalid value, with file:line and field path.
        """
        source = source or Source()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise source.error(path, f"expected a mapping of {cls.__name__} fields, "
                                     f"got {type(data).__name__} {data!r}")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, value in data.items():
            key = str(key)
            if key not in fields:
                raise source.error(path + (key,), f"unknown field{did_you_mean(key, fields)}; "
                                                  f"valid fields: {', '.join(fields)}")
            kwargs[key] = _convert(value, hints[key], source, path + (key,))
        try:
            return cls(**kwargs)
        except FieldError as err:
            raise source.error(path + tuple(err.field.split(".")), err.message) from None
        except TypeError as err:  # a required field is missing
            raise source.error(path, str(err).split("__init__() ")[-1]) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, scalars) that ``from_dict`` turns back into an equal config."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _convert(value: Any, hint: Any, source: Source, path: tuple[str, ...]) -> Any:
    """Check ``value`` against a type hint, converting where it is lossless (int -> float)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, source, path)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else source.error(
            path, f"expected one of {_hint_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise source.error(path, f"expected one of {', '.join(map(repr, args))}, got {value!r}"
                                     f"{did_you_mean(str(value), map(str, args))}")
        return value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise source.error(path, f"expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, source, path + (str(i),)) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise source.error(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, item, source, path + (str(k),)) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, source, path)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise source.error(path, f"expected {_hint_name(hint)}, got {type(value).__name__} {value!r}")
    return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def load_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse a YAML file into plain data plus a Source that knows the line of every key.

    Raises:
        ConfigError: the file is missing or is not valid YAML (with the line of the problem).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read file ({err})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, name: str = "<string>") -> tuple[Any, Source]:
    """Like ``load_yaml`` for text already in memory; ``name`` is used in error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    lines: LineMap = {}
    _index_lines(node, (), lines)
    return data, Source(name, lines)


def _index_lines(node: Any, path: tuple[str, ...], lines: LineMap) -> None:
    if node is None:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[path + (str(key.value),)] = key.start_mark.line + 1
            _index_lines(value, path + (str(key.value),), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (str(i),), lines)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


