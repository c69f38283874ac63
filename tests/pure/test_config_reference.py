"""The configuration reference, derived from the schema itself: every key the policy types
declare is reached from Policy, has doc text, a documented type and a default that is a
valid value, and has a row in docs/configuration.md; and describe's rows show types,
defaults and bounds as the reference prints them."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spamgate.commands import reference
from spamgate.core import schema
from spamgate.core.policy import Policy

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# --- every key of the schema is reachable, documented and valid by default ---------------------
#
# These replace a hand-kept list of every key path: what it guarded (a key added or removed
# without documentation) is checked here against the dataclasses themselves, so a new key
# needs its doc text, a type the reference can name and a valid default, not an edit here.


def is_section(hint: Any) -> bool:
    """A dataclass written as a YAML mapping (value types parse themselves from a scalar)."""
    return (
        isinstance(hint, type)
        and dataclasses.is_dataclass(hint)
        and not hasattr(hint, "from_config")
    )


def sections_in(hint: Any) -> Iterator[type]:
    """The sections a field's type holds, at any depth of lists, unions and mappings."""
    if is_section(hint):
        yield hint
        return
    for arg in typing.get_args(hint):
        yield from sections_in(arg)


@dataclasses.dataclass(frozen=True)
class Key:
    """A key of the policy, found from the dataclass fields and type hints alone."""

    path: str
    owner: type
    spec: dataclasses.Field[Any]
    hint: Any


def keys_under(cls: type, prefix: str = "") -> Iterator[Key]:
    """Every field a YAML document can set under the section `cls`: each field of the
    dataclass (but those the constructor does not take), then the keys of the sections its
    type holds; items of a list are `path[]`, as the reference writes them."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        name = spec.metadata.get("key") or spec.name
        path = f"{prefix}.{name}" if prefix else name
        yield Key(path, cls, spec, hints[spec.name])
        inner = f"{path}[]" if typing.get_origin(hints[spec.name]) is tuple else path
        for section in sections_in(hints[spec.name]):
            yield from keys_under(section, inner)


KEYS = list(keys_under(Policy))
ROWS = list(schema.describe(Policy))


def mismatch(expected: list[str], found: list[str]) -> str:
    """How two lists of key paths differ, for an assertion message."""
    missing = sorted({p for p in expected if expected.count(p) > found.count(p)})
    extra = sorted({p for p in found if found.count(p) > expected.count(p)})
    return f"missing {missing}, extra {extra}" if missing or extra else "the order differs"


def test_no_two_keys_share_a_path() -> None:
    paths = [key.path for key in KEYS]
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)


def test_describe_has_a_row_for_every_key() -> None:
    """Every field of every section reachable from Policy, at any depth and through every
    member of a union, is a row of the reference, and nothing else is."""
    keys, rows = [key.path for key in KEYS], [row.path for row in ROWS]
    assert rows == keys, f"describe's rows: {mismatch(keys, rows)}"


def test_every_policy_type_is_reached_from_policy() -> None:
    """A section declared with setting() in a module of the policy's types (today policy.py,
    scoring.py, listspecs.py, rulespecs.py, matchlists.py and settings.py) but not reachable
    from Policy would be configuration no document can set and no reference shows."""
    reached = {key.owner for key in KEYS} | {Policy}
    modules = {sys.modules[cls.__module__] for cls in reached}
    declared = {
        cls
        for module in modules
        for cls in vars(module).values()
        if is_section(cls)
        and cls.__module__ == module.__name__
        and any("doc" in spec.metadata for spec in dataclasses.fields(cls))
    }
    unreached = {cls.__name__ for cls in declared if not any(issubclass(r, cls) for r in reached)}
    assert not unreached


def test_every_key_has_doc_text() -> None:
    """Declared with setting() and a sentence that says what it does."""
    undocumented = [
        key.path for key in KEYS if not str(key.spec.metadata.get("doc", "")).rstrip().endswith(".")
    ]
    assert not undocumented, "declare these with schema.setting and a sentence of doc text"


def type_problems(hint: Any) -> Iterator[str]:
    """Why the reference cannot name `hint`, the way the builder reads it (none: it can)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            yield from type_problems(members[0])
        elif hint not in schema.UNION_PARSERS or not schema.UNION_PARSERS[hint].type_name:
            yield f"the union {hint} has no UnionParser with a type_name"
    elif origin is tuple:
        yield from type_problems(typing.get_args(hint)[0])
    elif origin is dict:
        key_type, value_type = typing.get_args(hint)
        if key_type is not str:
            yield f"mapping keys are names, not {key_type}"
        yield from type_problems(value_type)
    elif is_section(hint) or hint in (bool, int, float, str):
        return
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not all(isinstance(member.value, str) for member in hint):
            yield f"{hint.__name__}'s values are not all strings"
    elif not (hasattr(hint, "from_config") and isinstance(getattr(hint, "type_name", None), str)):
        yield f"{getattr(hint, '__name__', hint)} has no from_config and type_name"


def test_every_key_has_a_documented_type() -> None:
    problems = {key.path: list(type_problems(key.hint)) for key in KEYS}
    assert not {path: found for path, found in problems.items() if found}


def conforms(value: object, hint: Any) -> bool:
    """Whether `value` is of the type `hint` (as the builder makes values: an int will do for
    a number, a bool will not)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(conforms(v, item) for v in value)
    if origin is dict:
        key_type, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            conforms(k, key_type) and conforms(v, item) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint in (int, float):
        numbers = int if hint is int else int | float
        return isinstance(value, numbers) and not isinstance(value, bool)
    return isinstance(value, hint)


def default_problems(key: Key) -> Iterator[str]:
    """Why the default of `key` is not a value a document could give it (none: it is)."""
    spec = key.spec
    if spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    elif spec.default is not dataclasses.MISSING:
        value = spec.default
    else:
        return  # required
    if not conforms(value, key.hint):
        yield f"{value!r} is not a {key.hint}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = spec.metadata.get("minimum"), spec.metadata.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            yield f"{value} is outside {low} to {high}"
    # A section left out is its default, whose own check() no document ever runs.
    for item in value if isinstance(value, tuple) else (value,):
        check = getattr(item, "check", None) if is_section(type(item)) else None
        try:
            if check is not None:
                check()
        except schema.FieldError as error:
            yield f"{type(item).__name__}.check(): {'.'.join(map(str, error.parts))}: {error}"


def test_every_default_is_a_valid_value() -> None:
    """Of the key's type, within its bounds and, for a section, passing its own checks: the
    builder checks only what a document sets, never a default it uses."""
    problems = {key.path: list(default_problems(key)) for key in KEYS}
    assert not {path: found for path, found in problems.items() if found}


def test_a_default_written_out_is_the_default() -> None:
    """The reference's default, set in a document, gives the policy an empty document gives
    (keys outside lists: an item of a list has required keys of its own)."""
    wrong = []
    for row in ROWS:
        if not row.default_is_value or "[]" in row.path or row.type_name == "mapping":
            continue
        value = json.dumps(row.default) if row.type_name == "string" else row.default
        *sections, name = row.path.split(".")
        text = "".join(f"{'  ' * depth}{section}:\n" for depth, section in enumerate(sections))
        text += f"{'  ' * len(sections)}{name}: {value}\n"
        try:
            if schema.load(Policy, text, "defaults.yaml") != Policy():
                wrong.append(f"{row.path}: {row.default} is not the default")
        except schema.ConfigError as error:
            wrong.append(str(error))
    assert not wrong


def test_reference_has_a_row_for_every_key_and_no_other() -> None:
    """docs/configuration.md, generated from describe: a key added or removed shows there
    (python -m spamgate.commands.reference docs/configuration.md), or this fails."""
    table = CONFIGURATION.read_text().partition(reference.BEGIN)[2].partition(reference.END)[0]
    documented = re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)
    keys = [key.path for key in KEYS]
    assert documented == keys, (
        f"docs/configuration.md: {mismatch(keys, documented)}: run "
        ".venv/bin/python -m spamgate.commands.reference docs/configuration.md"
    )


@pytest.mark.parametrize(
    ("path", "type_name", "default"),
    [
        pytest.param("ip_lists[].hits[].codes", "list of return code", "[]", id="codes"),
        pytest.param("ip_lists[].name", "string", "required", id="required"),
        pytest.param("resolver.deadline", "number", "2", id="bounded-number"),
        pytest.param("mode", "`enforce` | `observe`", "enforce", id="enum"),
        pytest.param("thresholds.reject", "number or null", "10", id="optional-number"),
        pytest.param(
            "trusted_networks",
            "list of CIDR",
            "loopback, RFC 1918, CGNAT, link-local, ULA",
            id="cidr",
        ),
        pytest.param("resolver.nameservers", "list of host[:port]", "[]", id="nameservers"),
        pytest.param("rules[].header.matches", "regex or null", "null", id="regex"),
    ],
)
def test_describe_rows(path: str, type_name: str, default: str) -> None:
    rows = {row.path: row for row in schema.describe(Policy)}
    assert (rows[path].type_name, rows[path].default) == (type_name, default)


def test_describe_shows_bounds_in_the_doc() -> None:
    rows = {row.path: row for row in schema.describe(Policy)}
    assert rows["resolver.deadline"].doc.endswith(" Range 0.01 to 60.")
    assert rows["resolver.cache_entries"].doc.endswith(" Range 0 to 10000000.")
    assert rows["mode"].doc.startswith("`observe` scores and logs everything")
