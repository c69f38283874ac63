"""Turn a YAML document into typed, frozen configuration objects, with errors that point at a line.

The configuration dataclasses are the schema: each field's type hint says what it accepts, and
its `setting()` metadata carries the one-line doc and the bounds. Validation (`load`) and the
reference documentation (`describe`) both read that one source, the way Postfix generates
postconf(5) from the same tables its parser uses.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.reader import ReaderError

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}


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
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # One line of text whatever a file name or a value holds: a reload logs it as one
        # ERROR line, and a terminal or log reader must not take a control character from it.
        return text.translate(_ESCAPES)


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
    names_files: NamesFiles | None = None,
) -> Any:
    """Declare a configuration field: its doc line, default and numeric bounds.

    `key` is the YAML key when it cannot be the field's name (a Python keyword such as `not`).
    `names_files` marks a field whose values name files the policy is built from: they are
    found (`file_references`) and read before the build, which only looks them up.
    """
    metadata = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "shown_default": shown_default,
        "key": key,
        "names_files": names_files,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class NamesFiles(enum.Enum):
    """How a setting's values name files."""

    PATH = "path"  # the value is a file's path (a DNS list's key_file)
    ENTRIES = "entries"  # an entry `file:PATH` stands for the lines of that file (allow, deny)


@dataclass(frozen=True)
class FileReference:
    """A value that names a file, where the document has it (1-based, as editors show it).

    `text` is the value as written: a path, or for NamesFiles.ENTRIES any entry of the list
    (the reader keeps those that are `file:` entries)."""

    names: NamesFiles
    text: str
    line: int
    column: int
    path: str  # the key path, as errors show it: allow.clients[2]


@dataclass(frozen=True)
class UnionParser:
    """The parser of a union of value types (IPv4Network | IPv6Network), which the type hint
    alone cannot choose between; `type_name` is what the reference calls it."""

    type_name: str
    parse: Callable[[object], Any]


_PLAIN_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class _Located:
    """A YAML node's position, 1-based as editors show it."""

    line: int
    column: int


def _position(node: yaml.Node) -> _Located:
    return _Located(node.start_mark.line + 1, node.start_mark.column + 1)


# What a policy document may make the parser do, whatever it holds (issue 14). PyYAML composes
# nodes recursively, so nesting is bounded far below Python's recursion limit (spamgate's schema
# needs seven levels). An alias adds a copy of the node it names to everything that reads
# the document (the builder walks it again each time), so "billion laughs" (aliases of nodes
# made of aliases) could make a 1 KB file cost 10**9 values: aliases may add as many values as
# a large policy has, no more. An alias inside the node it names would make a cycle.
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 100_000
# No setting needs more; Python refuses to read integers of over 4,300 digits anyway.
MAX_INTEGER_DIGITS = 100

_CORE_TAG = "tag:yaml.org,2002:"
# The tags whose values the builder can read: the YAML core schema plus timestamp and binary,
# which SafeLoader resolves too. Others (`!foo`, `!!python/...`, `!!set`, `!!omap`) are errors,
# not values silently read as something else.
_TAGS = {
    yaml.ScalarNode: frozenset(
        _CORE_TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp", "binary")
    ),
    yaml.SequenceNode: frozenset({_CORE_TAG + "seq"}),
    yaml.MappingNode: frozenset({_CORE_TAG + "map"}),
}
_TAG_NAMES = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "timestamp": "a date",
    "binary": "base64 data",
}


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose composition would cost more than their size:
    nesting deeper than MAX_DEPTH, an alias inside the node it names, aliases that add more
    than MAX_ALIAS_VALUES values. Each node's size with its aliases expanded is counted as it
    is composed, so the check costs one addition per node."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._alias_values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # stubs lack it
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(str(event.anchor))
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    _refuse(f"alias *{event.anchor} is inside the node it names", event)
                self._alias_values += size
                if self._alias_values > MAX_ALIAS_VALUES:
                    _refuse(f"aliases expand to more than {MAX_ALIAS_VALUES} values", event)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node


def _refuse(problem: str, event: yaml.Event) -> typing.NoReturn:
    # The stubs type a mark as either of PyYAML's two Mark classes; the error takes both.
    mark: Any = event.start_mark
    raise ComposerError(None, None, problem, mark)


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


class _Builder:
    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader

    def fail(self, node: yaml.Node, path: str, message: str) -> ConfigError:
        where = _position(node)
        return ConfigError(self.source, where.line, where.column, path, message)

    def build(self, hint: Any, node: yaml.Node, path: str) -> Any:
        """The value of `node` as `hint`, or a ConfigError at `node`: whatever goes wrong below
        (a value type's parser raising something other than ValueError, say) is reported at
        the innermost value being read, never as another exception."""
        try:
            self._check_tag(node, path)
            return self._build(hint, node, path)
        except ConfigError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            raise self.fail(node, path, f"cannot use this value ({_shorten(reason)})") from error

    def _check_tag(self, node: yaml.Node, path: str) -> None:
        if node.tag in _TAGS.get(type(node), ()):
            return
        if node.tag == _CORE_TAG + "merge":
            raise self.fail(node, path, "merge keys (<<) are not supported: write the keys out")
        raise self.fail(
            node,
            path,
            f"the tag {_shown_tag(node.tag)} is not allowed here: spamgate reads the standard "
            "YAML types only (quote a value that is text)",
        )

    def _construct(self, node: yaml.ScalarNode, path: str) -> object:
        """A scalar's value as YAML types it (an integer, a date, ...)."""
        self._check_tag(node, path)
        if node.tag == _CORE_TAG + "int" and len(node.value) > MAX_INTEGER_DIGITS:
            raise self.fail(node, path, f"{_shorten(node.value)} is too large")
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as error:
            # A value that matches a type's pattern but is not one (2024-02-30, an integer of
            # 5,000 digits) or an explicit tag on text that does not fit it (!!float x): PyYAML
            # raises ValueError, KeyError or worse from its constructors.
            kind = _TAG_NAMES.get(node.tag.removeprefix(_CORE_TAG), _shown_tag(node.tag))
            detail = f": {_shorten(str(error))}" if type(error) is ValueError else ""
            raise self.fail(
                node,
                path,
                f"cannot read {_shorten(repr(node.value))} as {kind}{detail} (quote it if it "
                "is text)",
            ) from None

    def _key(self, node: yaml.Node, path: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, f"keys must be names, got {_kind(node)}")
        return self._construct(node, path)

    def _build(self, hint: Any, node: yaml.Node, path: str) -> Any:
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            return self._build_union(hint, node, path)
        if origin is tuple:
            return self._build_tuple(hint, node, path)
        if origin is dict:
            return self._build_dict(hint, node, path)
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
        return self._construct(node, path)

    def _build_plain(self, hint: type, node: yaml.Node, path: str) -> Any:
        value = self._scalar(node, path)
        # YAML booleans are ints in Python; never let `true` pass for a number, or 1 for a bool.
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise self.fail(node, path, f"{_shorten(str(node.value))} is too large") from None
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
            return parser.parse(value)
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
            key = self._key(key_node, path)
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
            key = self._key(key_node, path)
            child = _join(path, _shorten(str(key)))
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
            located, where = _locate(node, path, problem.parts)
            raise self.fail(located, where, str(problem)) from None
        return built

    def _check_bounds(
        self, spec: dataclasses.Field[Any], value: Any, node: yaml.Node, path: str
    ) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        minimum, maximum = spec.metadata.get("minimum"), spec.metadata.get("maximum")
        if minimum is not None and value < minimum:
            shown = _shorten(str(value))
            raise self.fail(node, path, f"must be at least {_number(minimum)}, got {shown}")
        if maximum is not None and value > maximum:
            shown = _shorten(str(value))
            raise self.fail(node, path, f"must be at most {_number(maximum)}, got {shown}")


UNION_PARSERS: dict[Any, UnionParser] = {}

T = typing.TypeVar("T")


@dataclass(frozen=True)
class Document:
    """A parsed YAML document, not yet built into objects: the nodes keep every value's
    position, for the errors of the build and of whatever checks the built objects later."""

    source: str
    root: yaml.Node

    def error_at(self, parts: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError at the key `parts` names (or the nearest node that exists)."""
        node, path = _locate(self.root, "", parts)
        where = _position(node)
        return ConfigError(self.source, where.line, where.column, path, message)


def parse(text: str, source: str) -> Document:
    """Parse YAML `text` (from the file `source`) into a Document, or raise ConfigError."""
    try:
        # The reader checks every character here: NUL and other control characters fail.
        loader = _PolicyLoader(text)
    except ReaderError as error:
        line, column = _text_position(text, error.position)
        message = f"the character U+{error.character:04X} is not allowed in YAML"
        raise ConfigError(source, line, column, "", message) from None
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(source, line, column, "", f"YAML syntax: {message}") from None
    except yaml.YAMLError as error:
        raise ConfigError(source, 1, 1, "", f"YAML syntax: {error}") from None
    except Exception as error:  # none known; a parser bug must still be a located error
        mark = loader.get_mark()
        reason = _shorten(f"{type(error).__name__}: {error}")
        raise ConfigError(
            source, mark.line + 1, mark.column + 1, "", f"YAML: cannot parse ({reason})"
        ) from error
    finally:
        loader.dispose()
    if root is None:
        root = yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(source, 0, 0, 0, "", 0))
    return Document(source, root)


def build(cls: type[T], document: Document) -> T:
    """An instance of the dataclass `cls` from `document`, or raise ConfigError."""
    # A loader of its own constructs the scalars (its caches are per build); the nodes were
    # composed by parse().
    result: T = _Builder(document.source, yaml.SafeLoader("")).build(cls, document.root, "")
    return result


def load(cls: type[T], text: str, source: str) -> T:
    """Parse YAML `text` into an instance of the dataclass `cls`, or raise ConfigError."""
    return build(cls, parse(text, source))


def file_references(cls: type, document: Document) -> tuple[FileReference, ...]:
    """Every value of `document` in a field of `cls` (at any depth) marked `names_files`, in
    the order of the document.

    Lenient: a value of the wrong shape, under an unknown key, is passed over; the build
    reports it. So the files can be read before the build, which then reads nothing."""
    found: list[FileReference] = []
    _find_files(cls, document.root, "", found)
    return tuple(found)


def _find_files(cls: type, node: yaml.Node, path: str, found: list[FileReference]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    hints = typing.get_type_hints(cls)
    known = {_yaml_key(f): f for f in dataclasses.fields(cls) if f.init}
    for key_node, value_node in node.value:
        spec = known.get(key_node.value) if _is_text(key_node) else None
        if spec is None:
            continue
        child = _join(path, key_node.value)
        names = spec.metadata.get("names_files")
        if names is not None:
            found += _named_files(names, key_node, value_node, child)
            continue
        hint = hints[spec.name]
        nested = _nested_dataclass(hint)
        if nested is None:
            continue
        if typing.get_origin(hint) is tuple:
            for index, item in enumerate(_items(value_node)):
                _find_files(nested, item, f"{child}[{index}]", found)
        else:
            _find_files(nested, value_node, child, found)


def _named_files(
    names: NamesFiles, key_node: yaml.Node, value_node: yaml.Node, path: str
) -> list[FileReference]:
    """The files a setting marked `names_files` names, each located where the build would
    locate an error about it (_locate): a scalar value at its key, a list's entry at itself."""
    if names is NamesFiles.PATH:
        if not (_is_text(value_node) and value_node.value):
            return []
        where = _position(key_node)
        return [FileReference(names, value_node.value, where.line, where.column, path)]
    found = []
    for index, item in enumerate(_items(value_node)):
        if _is_text(item):
            where = _position(item)
            entry = f"{path}[{index}]"
            found.append(FileReference(names, item.value, where.line, where.column, entry))
    return found


def _items(node: yaml.Node) -> list[yaml.Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _is_text(node: yaml.Node) -> bool:
    """A scalar the builder reads as a string."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _CORE_TAG + "str"


def _locate(node: yaml.Node, path: str, parts: tuple[str | int, ...]) -> tuple[yaml.Node, str]:
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
    if origin is dict:
        return f"mapping of name to {_type_name(typing.get_args(hint)[1])}"
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if hint in UNION_PARSERS:
            return UNION_PARSERS[hint].type_name
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
    return f"the value {_shorten(repr(node.value))}"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {_shorten(repr(value))}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()} (quote it if it is text)"
    return f"{type(value).__name__} {_shorten(repr(value))}"


def _shorten(text: str, limit: int = 100) -> str:
    """`text` cut to `limit` characters: a message quotes a value, never a whole file."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _shown_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE_TAG) if tag.startswith(_CORE_TAG) else tag


def _text_position(text: str, index: int) -> tuple[int, int]:
    """Line and column (1-based) of `text[index]`."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _suggest(key: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})"
