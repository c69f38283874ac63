"""The shipped policies, mutated: loading one gives a Policy or a ConfigError, nothing else.

Issue 14 found files that ended `check-config` with a traceback (and a reload with the daemon)
by fuzzing the configuration: an undefined tag, an integer too large for a float. This keeps
that search running: hypothesis takes config/spamgate.yaml or an example and changes its
text the way typos, bad merges and hostile edits do (bytes inserted, replaced and deleted;
lines deleted, duplicated, swapped and re-indented; values replaced by tags, huge numbers,
impossible dates, aliases, control characters), then loads it. A ConfigError must be one
line that starts with the file's name.

Bounded for `make test`: the same 800 examples on every run, no database written, a few
seconds (under 10 on one core). SPAMGATE_FUZZ_EXAMPLES=20000 runs that many random ones.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spamgate.config.files import load_policy
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError

CONFIG = Path(__file__).resolve().parents[2] / "config"
SEEDS = {
    path.name: path.read_bytes()
    for path in [CONFIG / "spamgate.yaml", *sorted(CONFIG.glob("examples/*.yaml"))]
}

_EXAMPLES = int(os.environ.get("SPAMGATE_FUZZ_EXAMPLES", "0"))
BOUNDED = settings(
    max_examples=_EXAMPLES or 800,
    # A load of these files takes milliseconds; seconds would be a bound that does not hold
    # (a billion laughs, a file read for ever), not a slow machine.
    deadline=5000,
    derandomize=not _EXAMPLES,
    report_multiple_bugs=False,  # shrink one failure, not every kind at once
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values a typo, a bad merge or an attacker could put where a value goes.
TOKENS = [
    b"!!float x",
    b"!foo bar",
    b"!foo",
    b"!<tag:example.com,2024:x> y",
    b"!!python/object/apply:os.system [true]",
    b"!!python/name:os.system",
    b"!!binary a",
    b"!!binary aGVsbG8=",
    b"!!timestamp soon",
    b"!!int 0x",
    b"!!int 1_000",
    b"!!bool maybe",
    b"!!null x",
    b"!!str",
    b"!!seq",
    b"!!map {}",
    b"!!set {a: null}",
    b"!!omap [a: 1]",
    b"!!pairs [a: 1]",
    b"!!merge x",
    b"2024-02-30",
    b"2024-02-28",
    b"2024-02-28 25:61:61",
    b"2001-12-14t21:59:43.10-05:00",
    b"1e400",
    b"1.0e400",
    b"-1.0e400",
    b".nan",
    b".inf",
    b"-.inf",
    b"9" * 400,
    b"-" + b"9" * 400,
    b"9" * 5000,
    b"0b" + b"1" * 2000,
    b"0x" + b"f" * 500,
    b"0o" + b"7" * 500,
    b"190:20:30",
    b"0777",
    b"0o777",
    b"+1",
    b"1_0",
    b"yes",
    b"off",
    b"~",
    b"null",
    b"[]",
    b"{}",
    b"''",
    b'""',
    b'"\\0"',
    b'"\\x00\\x85\\u2028"',
    b'"\\uD800"',
    b"&a x",
    b"&a [x, *a]",
    b"*a",
    b"*undefined",
    b"[*a, *a, *a]",
    b"<<: {}",
    b"<<: *a",
    b"? [a, b]",
    b"? {a: b}",
    b"[" * 100 + b"]" * 100,
    b"{a: " * 80 + b"}" * 80,
    b"|",
    b">-",
    b"'unterminated",
    b'"unterminated',
    b"%TAG ! tag:example.com,2024:",
    b"---",
    b"...",
    b"- - -",
    b"'file:/dev/zero'",
    b"file:/dev/null",
    b"file:nonexistent",
    b"file:",
    b"file:.",
    b"'{key}.zen.test'",
    b"'{0}{}{x'",
    b"'%s%n'",
    b"x" * 3000,
    b"\t",
    b"\x00",
    b"\x1b[31m",
    b"\x7f",
    b"\xc3\x28",
    b"\xef\xbb\xbf",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xf0\x9f\x92\xa9",
    b"\r",
]
# Put in front of a value that stays.
_PREFIXES = [b"!!float ", b"!!int ", b"!!str ", b"!!bool ", b"!!null ", b"!!seq ", b"!!map ",
             b"!!timestamp ", b"!foo ", b"! ", b"&a ", b"&b ", b"*a ", b"? ", b"- "]  # fmt: skip
_VALUE = re.compile(rb"(?:: |- )")

Mutation = Callable[[st.DataObject, bytes], bytes]


def _position(data: st.DataObject, text: bytes) -> int:
    return data.draw(st.integers(0, len(text)), label="position")


def insert_bytes(data: st.DataObject, text: bytes) -> bytes:
    at = _position(data, text)
    return text[:at] + data.draw(st.binary(min_size=1, max_size=8)) + text[at:]


def replace_byte(data: st.DataObject, text: bytes) -> bytes:
    at = _position(data, text)
    return text[:at] + bytes([data.draw(st.integers(0, 255))]) + text[at + 1 :]


def delete_span(data: st.DataObject, text: bytes) -> bytes:
    at = _position(data, text)
    return text[:at] + text[at + data.draw(st.integers(1, 60)) :]


def duplicate_span(data: st.DataObject, text: bytes) -> bytes:
    at = _position(data, text)
    span = text[at : at + data.draw(st.integers(1, 200))]
    to = _position(data, text)
    return text[:to] + span + text[to:]


def _line_op(change: Callable[[st.DataObject, list[bytes], int], None]) -> Mutation:
    def mutate(data: st.DataObject, text: bytes) -> bytes:
        rows = text.split(b"\n")
        index = data.draw(st.integers(0, len(rows) - 1), label="line")
        change(data, rows, index)
        return b"\n".join(rows)

    mutate.__name__ = change.__name__
    return mutate


@_line_op
def delete_line(data: st.DataObject, rows: list[bytes], index: int) -> None:
    del rows[index]


@_line_op
def duplicate_line(data: st.DataObject, rows: list[bytes], index: int) -> None:
    rows.insert(data.draw(st.integers(0, len(rows))), rows[index])


@_line_op
def swap_lines(data: st.DataObject, rows: list[bytes], index: int) -> None:
    other = data.draw(st.integers(0, len(rows) - 1))
    rows[index], rows[other] = rows[other], rows[index]


@_line_op
def reindent_line(data: st.DataObject, rows: list[bytes], index: int) -> None:
    shift = data.draw(st.sampled_from([-4, -2, -1, 1, 2, 4]))
    rows[index] = b" " * shift + rows[index] if shift > 0 else rows[index][-shift:]


@_line_op
def replace_value(data: st.DataObject, rows: list[bytes], index: int) -> None:
    """The value after `key: ` or `- ` on a line becomes a token, or gets a tag in front."""
    row = rows[index]
    match = _VALUE.search(row)
    at = match.end() if match else len(row) - len(row.lstrip())
    if data.draw(st.booleans(), label="keep the value"):
        rows[index] = row[:at] + data.draw(st.sampled_from(_PREFIXES), label="tag") + row[at:]
    else:
        rows[index] = row[:at] + data.draw(st.sampled_from(TOKENS), label="token")


@_line_op
def insert_line(data: st.DataObject, rows: list[bytes], index: int) -> None:
    indent = b" " * data.draw(st.sampled_from([0, 2, 4]))
    key = data.draw(st.sampled_from([b"mode", b"rules", b"a", b"listen", b"- name", b"<<"]))
    rows.insert(index, indent + key + b": " + data.draw(st.sampled_from(TOKENS)))


MUTATIONS: list[Mutation] = [
    insert_bytes,
    replace_byte,
    delete_span,
    duplicate_span,
    delete_line,
    duplicate_line,
    swap_lines,
    reindent_line,
    replace_value,
    replace_value,  # the likeliest to get past the parser, so tried more often
    insert_line,
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped policies' directory, copied: relative `file:` lists and key files resolve."""
    directory = tmp_path_factory.mktemp("fuzz")
    for path in CONFIG.glob("examples/*"):
        shutil.copy(path, directory / path.name)
    return directory


@BOUNDED
@given(data=st.data())
def test_mutated_policy_loads_or_is_a_config_error(workdir: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SEEDS)), label="seed")
    text = SEEDS[name]
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        mutate = data.draw(st.sampled_from(MUTATIONS), label="mutation")
        text = mutate(data, text)
    path = workdir / "policy.yaml"
    path.write_bytes(text)
    try:
        policy = load_policy(path)
    except ConfigError as error:
        shown = str(error)
        # For --hypothesis-show-statistics: how far the mutants get (parser, schema, checks).
        event(f"ConfigError from the {_stage(error)}")
        assert shown.startswith(f"{path}"), shown
        assert "\n" not in shown and "\r" not in shown, shown
        return
    event("loaded")
    assert isinstance(policy, Policy)
    assert len(policy.digest) == 12


def _stage(error: ConfigError) -> str:
    if not error.line or error.message.startswith("not UTF-8"):
        return "file check (size, kind, UTF-8)"
    if not error.path and error.message.startswith(("YAML", "the character")):
        return "YAML parser"
    return "schema"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_load(workdir: Path, name: str) -> None:
    """The fuzzing starts from good files (else every example would test one error)."""
    path = workdir / "policy.yaml"
    path.write_bytes(SEEDS[name])
    assert isinstance(load_policy(path), Policy)
