"""Turn a YAML document into typed, frozen configuration objects, with errors that point at a line.

The configuration dataclasses are the schema: each field's type hint says what it accepts, and
its `setting()` metadata carries the one-line doc and the bounds. Validation (`load`) and the
reference documentation (`describe`) both read that one source, the way Postfix generates
postconf(5) from the same tables its parser uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(Exception):
    """A configuration problem, located as FILE:LINE:COL: key.path: message."""

    def __init__(self, source: str, line: int, column: int, path: str, message: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.path = path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # Line 0 means the problem is with the file as a whole (unreadable, not UTF-8).
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FieldError(ValueError):
    """Raised by a config class's `check()` to reject a value; located at the named field.

    `field` is a key of the class, or a path below it such as ("rules", 3, "name").
    """

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        self.parts: tuple[str | int, ...] = (field,) if isinstance(field, str) else field
        super().__init__(message)


def setting(
    doc: str,
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    shown_default: str | None = None,
    key: str | None = None,
) -> Any:
    """Declare a configuration field: its doc line, default and numeric bounds.

    `key` is the YAML key when it cannot be the field's name (a Python keyword such as `not`).
    """
    metadata = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "shown_default": shown_default,
        "key": key,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Value types that are not dataclasses, enums or plain scalars parse themselves from a YAML
# scalar; `from_config` raises ValueError with a message for the admin.
class ScalarValue(typing.Protocol):
    @classmethod
    def from_config(cls, value: object) -> Any: ...


_PLAIN_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class _Located:
    """A YAML node's position, 1-based as editors show it."""

    line: int
    column: int


def _position(node: yaml.Node) -> _Located:
    return _Located(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader

    def fail(self, node: yaml.Node, path: str, message: str) -> ConfigError:
        where = _position(node)
        return ConfigError(self.source, where.line, where.column, path, message)

    def build(self, hint: Any, node: yaml.Node, path: str) -> Any:
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            return self._build_union(hint, node, path)
        if origin is tuple:
            return self._build_tuple(hint, node, path)
        if origin is dict:
            return self._build_dict(hint, node, path)
        if origin is re.Pattern:
            return self._build_pattern(node, path)
        if hasattr(hint, "from_config"):
            value = self._scalar(node, path)
            # Some values must be read from their text (YAML would read 0440 as octal and
            # 440 as decimal, and the integer cannot tell which the admin wrote).
            if getattr(hint, "from_text", False):
                value = str(node.value)
            try:
                return hint.from_config(value)
            except ValueError as error:
                raise self.fail(node, path, str(error)) from None
        if _is_section(hint):
            return self._build_dataclass(typing.cast(type, hint), node, path)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._build_enum(hint, node, path)
        if hint in _PLAIN_NAMES:
            return self._build_plain(hint, node, path)
        raise TypeError(f"schema type {hint!r} at {path} has no YAML conversion")

    def _scalar(self, node: yaml.Node, path: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, f"expected a single value, got {_kind(node)}")
        return self.loader.construct_object(node, deep=True)

    def _build_plain(self, hint: type, node: yaml.Node, path: str) -> Any:
        value = self._scalar(node, path)
        # YAML booleans are ints in Python; never let `true` pass for a number, or 1 for a bool.
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise self.fail(node, path, f"expected {_PLAIN_NAMES[hint]}, got {_describe(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, path, f"expected a finite number, got {value}")
        return value

    def _build_enum(self, hint: type[enum.Enum], node: yaml.Node, path: str) -> enum.Enum:
        value = self._scalar(node, path)
        choices = [str(member.value) for member in hint]
        if isinstance(value, str):
            for member in hint:
                if member.value == value:
                    return member
        raise self.fail(node, path, f"expected one of {', '.join(choices)}, got {_describe(value)}")

    def _build_pattern(self, node: yaml.Node, path: str) -> re.Pattern[str]:
        value = self._scalar(node, path)
        if not isinstance(value, str):
            raise self.fail(node, path, f"expected a regular expression, got {_describe(value)}")
        try:
            return re.compile(value)
        except re.error as error:
            raise self.fail(node, path, f"invalid regular expression: {error}") from None

    def _build_union(self, hint: Any, node: yaml.Node, path: str) -> Any:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if type(None) in typing.get_args(hint) and _is_null(node):
            return None
        if len(members) == 1:
            return self.build(members[0], node, path)
        # A union of several value types (such as IPv4Network | IPv6Network) is converted by a
        # dedicated parser registered for the exact union.
        parser = UNION_PARSERS.get(hint)
        if parser is None:
            raise TypeError(f"schema union {hint!r} at {path} has no parser")
        value = self._scalar(node, path)
        try:
            return parser(value)
        except ValueError as error:
            raise self.fail(node, path, str(error)) from None

    def _build_tuple(self, hint: Any, node: yaml.Node, path: str) -> tuple[Any, ...]:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"schema tuple {hint!r} at {path} must be tuple[T, ...]")
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, path, f"expected a list, got {_kind(node)}")
        return tuple(
            self.build(args[0], item, f"{path}[{index}]") for index, item in enumerate(node.value)
        )

    def _build_dict(self, hint: Any, node: yaml.Node, path: str) -> dict[str, Any]:
        key_type, value_type = typing.get_args(hint)
        if key_type is not str:
            raise TypeError(f"schema dict {hint!r} at {path} must have str keys")
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {_kind(node)}")
        built: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise self.fail(key_node, path, f"keys must be strings, got {_describe(key)}")
            if key in built:
                raise self.fail(key_node, _join(path, key), "duplicate key")
            built[key] = self.build(value_type, value_node, _join(path, key))
        return built

    def _build_dataclass(self, cls: type, node: yaml.Node, path: str) -> Any:
        if _is_null(node):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping of keys, got {_kind(node)}")
        hints = typing.get_type_hints(cls)
        known = {_yaml_key(f): f for f in dataclasses.fields(cls) if f.init}
        values: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            child = _join(path, str(key))
            if not isinstance(key, str) or key not in known:
                hint_text = _suggest(str(key), known)
                raise self.fail(key_node, child, f"unknown key{hint_text}")
            spec = known[key]
            if spec.name in values:
                raise self.fail(key_node, child, "duplicate key")
            values[spec.name] = self.build(hints[spec.name], value_node, child)
            self._check_bounds(spec, values[spec.name], value_node, child)
        for key, spec in known.items():
            required = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if required and spec.name not in values:
                raise self.fail(node, _join(path, key), "required key is missing")
        try:
            built = cls(**values)
            check = getattr(built, "check", None)
            if check is not None:
                check()
        except FieldError as problem:
            located, where = self._locate(node, path, problem.parts)
            raise self.fail(located, where, str(problem)) from None
        return built

    def _locate(
        self, node: yaml.Node, path: str, parts: tuple[str | int, ...]
    ) -> tuple[yaml.Node, str]:
        """Find the node a FieldError names, falling back to the nearest one that exists."""
        for part in parts:
            child: yaml.Node | None = None
            next_path = path
            if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
                child = node.value[part] if 0 <= part < len(node.value) else None
                next_path = f"{path}[{part}]"
            elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == part:
                        # The key itself is the better anchor for a scalar value's problem.
                        child = key_node if isinstance(value_node, yaml.ScalarNode) else value_node
                next_path = _join(path, part)
            if child is None:
                # The key is absent: point at the enclosing mapping, but name the key.
                return node, next_path if isinstance(part, str) else path
            node, path = child, next_path
        return node, path

    def _check_bounds(
        self, spec: dataclasses.Field[Any], value: Any, node: yaml.Node, path: str
    ) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        minimum, maximum = spec.metadata.get("minimum"), spec.metadata.get("maximum")
        if minimum is not None and value < minimum:
            raise self.fail(node, path, f"must be at least {_number(minimum)}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(node, path, f"must be at most {_number(maximum)}, got {value}")


UNION_PARSERS: dict[Any, Callable[[object], Any]] = {}

T = typing.TypeVar("T")


def load(cls: type[T], text: str, source: str) -> T:
    """Parse YAML `text` into an instance of the dataclass `cls`, or raise ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(source, line, column, "", f"YAML syntax: {message}") from None
    except yaml.YAMLError as error:
        raise ConfigError(source, 1, 1, "", f"YAML syntax: {error}") from None
    finally:
        loader.dispose()
    if root is None:
        root = yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(source, 0, 0, 0, "", 0))
    result: T = _Builder(source, loader).build(cls, root, "")
    return result


@dataclass(frozen=True)
class KeyDoc:
    """One row of the configuration reference."""

    path: str
    type_name: str
    default: str
    doc: str
    default_is_value: bool  # False when the default is prose (or "required")


def describe(cls: type, prefix: str = "") -> Iterator[KeyDoc]:
    """Yield the reference row of every key under the dataclass `cls`, depth first."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        path = _join(prefix, _yaml_key(spec))
        hint = hints[spec.name]
        nested = _nested_dataclass(hint)
        shown = spec.metadata.get("shown_default")
        default = _default_text(spec)
        is_value = shown is None and default not in ("required", "(see below)")
        yield KeyDoc(path, _type_name(hint), default, _doc_text(spec), is_value)
        if nested is not None:
            inner = f"{path}[]" if typing.get_origin(hint) is tuple else path
            yield from describe(nested, inner)


def _yaml_key(spec: dataclasses.Field[Any]) -> str:
    return str(spec.metadata.get("key") or spec.name)


def _doc_text(spec: dataclasses.Field[Any]) -> str:
    doc = str(spec.metadata.get("doc", ""))
    minimum, maximum = spec.metadata.get("minimum"), spec.metadata.get("maximum")
    if minimum is not None and maximum is not None:
        doc += f" Range {_number(minimum)} to {_number(maximum)}."
    elif minimum is not None:
        doc += f" At least {_number(minimum)}."
    elif maximum is not None:
        doc += f" At most {_number(maximum)}."
    return doc


def _nested_dataclass(hint: Any) -> type | None:
    candidates = [hint]
    if typing.get_origin(hint) is tuple:
        candidates = [typing.get_args(hint)[0]]
    elif typing.get_origin(hint) in (types.UnionType, typing.Union):
        candidates = [a for a in typing.get_args(hint) if a is not type(None)]
    for candidate in candidates:
        if _is_section(candidate):
            return typing.cast(type, candidate)
    return None


def _is_section(hint: Any) -> bool:
    """A dataclass written as a YAML mapping (value types parse themselves from a scalar)."""
    return dataclasses.is_dataclass(hint) and not hasattr(hint, "from_config")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if origin is re.Pattern:
        return "regex"
    if origin is dict:
        return f"mapping of name to {_type_name(typing.get_args(hint)[1])}"
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if hint in UNION_PARSERS:
            return getattr(UNION_PARSERS[hint], "type_name", "value")
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = " or null" if type(None) in args else ""
        return " or ".join(names) + optional
    if _is_section(hint):
        return "mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return " | ".join(f"`{m.value}`" for m in hint)
    if hint in _PLAIN_NAMES:
        return {bool: "bool", int: "integer", float: "number", str: "string"}[hint]
    return str(getattr(hint, "type_name", hint.__name__))


def _default_text(spec: dataclasses.Field[Any]) -> str:
    shown = spec.metadata.get("shown_default")
    if shown is not None:
        return str(shown)
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return "required"
    return _render(value)


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]" if value else "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_render(v)}" for k, v in value.items()) + "}"
    if _is_section(type(value)):
        return "(see below)"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {node.value!r}"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _suggest(key: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})"
