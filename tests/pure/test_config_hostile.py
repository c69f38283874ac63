"""Hostile and broken policy files (issue 14): a ConfigError with FILE:LINE, never another
exception; FIFOs, devices and files over their limit refused at once."""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import pytest

from spamgate.config import files as config
from spamgate.config.files import load_policy
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError
from spamgate.core.scoring import Mode
from spamgate.core.settings import Nameserver
from tests.config_helpers import lines, load, load_error, write

# --- hostile and broken files (issue 14): a ConfigError with FILE:LINE, never another exception


def _billion_laughs(width: int) -> str:
    """Lists of `width` lists of `width` hits of `width` codes: width**3 values to read, in
    3 * width aliases."""
    codes = ", ".join(["&code 127.0.0.2"] + ["*code"] * (width - 1))
    hits = ", ".join([f"&hit {{name: H, score: 1, codes: [{codes}]}}"] + ["*hit"] * (width - 1))
    first = f"  - &list {{name: L, zone: l.test, hits: [{hits}]}}"
    return lines("ip_lists:", first, *["  - *list"] * (width - 1))


HOSTILE_DOCUMENTS = [
    pytest.param(
        lines("mode: !!float x"),
        (
            1,
            7,
            "mode",
            "cannot read 'x' as a number: could not convert string to float: 'x' "
            "(quote it if it is text)",
        ),
        id="float-tag-on-text",
    ),
    pytest.param(
        lines("mode: !foo bar"),
        (
            1,
            7,
            "mode",
            "the tag !foo is not allowed here: spamgate reads the standard YAML "
            "types only (quote a value that is text)",
        ),
        id="local-tag",
    ),
    pytest.param(
        lines("mode: !!python/object/apply:os.system [true]"),
        (
            1,
            7,
            "mode",
            "the tag !!python/object/apply:os.system is not allowed here: spamgate "
            "reads the standard YAML types only (quote a value that is text)",
        ),
        id="python-tag",
    ),
    pytest.param(
        lines("log: !foo {level: info}"),
        (
            1,
            6,
            "log",
            "the tag !foo is not allowed here: spamgate reads the standard YAML "
            "types only (quote a value that is text)",
        ),
        id="tag-on-a-mapping",
    ),
    pytest.param(
        lines("our_names: !!omap [a]"),
        (
            1,
            12,
            "our_names",
            "the tag !!omap is not allowed here: spamgate reads the standard "
            "YAML types only (quote a value that is text)",
        ),
        id="omap-tag-on-a-list",
    ),
    pytest.param(
        lines("log:", "  target: 2024-02-30"),
        (
            2,
            11,
            "log.target",
            "cannot read '2024-02-30' as a date: day is out of range for "
            "month (quote it if it is text)",
        ),
        id="impossible-date",
    ),
    pytest.param(
        lines("log:", "  target: 2024-02-28"),
        (
            2,
            11,
            "log.target",
            "expected a string, got the date 2024-02-28 (quote it if it is text)",
        ),
        id="date-for-a-string",
    ),
    pytest.param(
        lines("shutdown_grace: " + "9" * 400),
        (1, 17, "shutdown_grace", "9" * 97 + "... is too large"),
        id="integer-too-large-for-a-float",
    ),
    pytest.param(
        lines("log: {stats_interval: " + "9" * 5000 + "}"),
        (1, 23, "log.stats_interval", "9" * 97 + "... is too large"),
        id="integer-of-5000-digits",
    ),
    pytest.param(
        lines("log: {stats_interval: " + "9" * 100 + "}"),
        (1, 23, "log.stats_interval", "must be at most 86400, got " + "9" * 100),
        id="huge-integer-out-of-bounds",
    ),
    pytest.param(
        lines("skip_authenticated: !!bool maybe"),
        (1, 21, "skip_authenticated", "cannot read 'maybe' as a boolean (quote it if it is text)"),
        id="bool-tag-on-text",
    ),
    pytest.param(
        lines("log: {stats_interval: !!int 0x}"),
        (
            1,
            23,
            "log.stats_interval",
            "cannot read '0x' as an integer: invalid literal for "
            "int() with base 16: '' (quote it if it is text)",
        ),
        id="int-tag-on-text",
    ),
    pytest.param(
        lines("mode: !!timestamp soon"),
        (1, 7, "mode", "cannot read 'soon' as a date (quote it if it is text)"),
        id="timestamp-tag-on-text",
    ),
    pytest.param(
        lines("mode: !!binary 'a'"),
        (1, 7, "mode", "cannot read 'a' as base64 data (quote it if it is text)"),
        id="binary-tag-on-text",
    ),
    pytest.param(
        lines("<<: {mode: observe}"),
        (1, 1, "", "merge keys (<<) are not supported: write the keys out"),
        id="merge-key",
    ),
    pytest.param(
        lines("? [mode, log]", ": enforce"),
        (1, 3, "", "keys must be names, got a list"),
        id="list-as-a-key",
    ),
    pytest.param(
        lines(
            "recipient_policies:", "  - {name: x, recipients: ['@a.example'], scores: {{a: 1}: 2}}"
        ),
        (2, 52, "recipient_policies[0].scores", "keys must be names, got a mapping"),
        id="mapping-as-a-dict-key",
    ),
    pytest.param(
        lines(
            "recipient_policies:", "  - {name: x, recipients: ['@a.example'], scores: {A: 1, A: 2}}"
        ),
        (2, 58, "recipient_policies[0].scores.A", "duplicate key"),
        id="duplicate-dict-key",
    ),
    pytest.param(
        lines("mode: !!str enforce", "mode: enforce"),
        (2, 1, "mode", "duplicate key"),
        id="duplicate-key-one-tagged",
    ),
    pytest.param(
        lines("our_names: &names [a, *names]"),
        (1, 23, "", "YAML syntax: alias *names is inside the node it names"),
        id="recursive-alias",
    ),
    pytest.param(
        _billion_laughs(50),
        (37, 5, "", "YAML syntax: aliases expand to more than 100000 values"),
        id="billion-laughs",
    ),
    pytest.param(
        lines("our_names: " + "[" * 1000 + "]" * 1000),
        (1, 75, "", "YAML syntax: nested deeper than 64 levels"),
        id="nested-1000-deep",
    ),
    pytest.param(
        lines("mode: enforce", "log: {target: a\0b}"),
        (2, 16, "", "the character U+0000 is not allowed in YAML"),
        id="nul",
    ),
    pytest.param(
        lines("mode: '\x1b[31menforce'"),
        (1, 8, "", "the character U+001B is not allowed in YAML"),
        id="escape-character",
    ),
    pytest.param(
        lines("mode: " + "x" * 5000),
        (1, 7, "mode", "expected one of enforce, observe, got the string '" + "x" * 96 + "..."),
        id="long-value-shortened",
    ),
]


@pytest.mark.parametrize(("text", "where"), HOSTILE_DOCUMENTS)
def test_hostile_document_is_a_located_error(
    tmp_path: Path, text: str, where: tuple[int, int, str, str]
) -> None:
    line, column, _, _ = where
    error = load_error(tmp_path, text)
    assert (error.line, error.column, error.path, error.message) == where
    assert str(error).startswith(f"{tmp_path / 'spamgate.yaml'}:{line}:{column}: ")


def test_aliases_within_the_bound_are_read(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        lines(
            "thresholds: &strict {tag: 2, greylist: null, reject: 5}",
            "recipient_policies:",
            "  - {name: a, recipients: ['@a.example'], thresholds: *strict}",
            "  - {name: b, recipients: ['@b.example'], thresholds: *strict}",
        ),
    )
    assert policy.recipient_policies[0].thresholds == policy.thresholds
    assert policy.recipient_policies[1].thresholds == policy.thresholds


def test_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfmode: observe\n")
    assert load_policy(path).mode is Mode.OBSERVE


def test_error_is_one_line_whatever_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines.yaml"
    path.write_text("mode: maybe\n")
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(f"{tmp_path}/two\\nlines.yaml:1:7: mode: ")


def test_unexpected_exception_in_a_value_parser_is_located(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(value: object) -> object:
        raise TypeError("a bug")

    monkeypatch.setattr(Nameserver, "from_config", broken)
    error = load_error(tmp_path, lines("resolver:", "  nameservers: [127.0.0.1]"))
    assert (error.line, error.column, error.path) == (2, 17, "resolver.nameservers[0]")
    assert error.message == "cannot use this value (TypeError: a bug)"


def _load_within(path: Path, unblock: Path | None = None, seconds: float = 10) -> ConfigError:
    """load_policy(path) on a thread; its ConfigError, or a failure if it does not end in time
    (a FIFO blocked in open() is then given a writer and closed, so the thread ends)."""
    outcome: list[BaseException | Policy] = []

    def run() -> None:
        try:
            outcome.append(load_policy(path))
        except BaseException as error:  # reported below
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"loading {path} did not end within {seconds} s")
    (result,) = outcome
    if not isinstance(result, ConfigError):
        pytest.fail(f"loading {path} gave {result!r}, not a ConfigError")
    return result


def test_policy_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "spamgate.yaml"
    os.mkfifo(fifo)
    error = _load_within(fifo, unblock=fifo)
    assert str(error) == f"{fifo}: cannot read: a FIFO, not a regular file"


def test_policy_file_that_is_a_device_is_refused_at_once() -> None:
    error = _load_within(Path("/dev/zero"))
    assert str(error) == "/dev/zero: cannot read: a character device, not a regular file"


def test_policy_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    at_limit = tmp_path / "at-limit.yaml"
    at_limit.write_bytes(b"mode: observe\n" + b"#" * (config.MAX_POLICY_BYTES - 15) + b"\n")
    assert load_policy(at_limit).mode is Mode.OBSERVE
    over = tmp_path / "over.yaml"
    over.write_bytes(b"mode: observe\n" + b"#" * (config.MAX_POLICY_BYTES - 14) + b"\n")
    error = _load_within(over)
    assert str(error) == (
        f"{over}: larger than 1 MiB, the limit for a policy file (put long lists in file: lists)"
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("key", ["allow.clients", "deny.senders", "allow.client_names"])
def test_list_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path, fifo: Path, key: str) -> None:
    section, name = key.split(".")
    path = write(tmp_path, lines(f"{section}:", f"  {name}:", f"    - file:{fifo}"))
    error = _load_within(path, unblock=fifo)
    assert str(error) == f"{path}:3:7: {key}[0]: {fifo}: cannot read: a FIFO, not a regular file"


def test_list_file_that_is_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        lines(
            "recipient_policies:",
            "  - name: x",
            "    recipients:",
            "      - '@a.example'",
            "      - file:/dev/zero",
        ),
    )
    error = _load_within(path)
    assert str(error) == (
        f"{path}:5:9: recipient_policies[0].recipients[1]: /dev/zero: cannot read: a character "
        "device, not a regular file"
    )


def test_list_files_over_the_limit_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "MAX_INCLUDED_BYTES", 2**20)
    listed = tmp_path / "nets"
    listed.write_bytes(b"#" * (2**19) + b"\n10.0.0.0/8\n")
    first = f"  clients: [file:{listed}, "
    path = write(tmp_path, lines("allow:", f"{first}file:{listed}]"))
    error = _load_within(path)
    assert str(error) == (
        f"{path}:2:{len(first) + 1}: allow.clients[1]: {listed}: the list files of the policy "
        "hold more than 1 MiB together"
    )


def test_list_file_named_twice_is_read_once_and_its_bytes_make_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = tmp_path / "nets"
    listed.write_text("10.0.0.0/8\n")
    reads: list[Path] = []
    read = config.read_regular_file

    def counting(path: Path, limit: int) -> bytes:
        reads.append(path)
        return read(path, limit)

    monkeypatch.setattr(config, "read_regular_file", counting)
    text = lines("allow:", f"  clients: [file:{listed}]", f"  client_names: [file:{listed}]")
    policy = load(tmp_path, text)
    assert reads == [tmp_path / "spamgate.yaml", listed]
    assert policy.allow.client_set.match(ipaddress.ip_address("10.1.2.3")) == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("key_file", "message"),
    [
        pytest.param(
            "/dev/zero",
            "cannot read /dev/zero: a character device, not a regular file",
            id="dev-zero",
        ),
        pytest.param("{fifo}", "cannot read {fifo}: a FIFO, not a regular file", id="fifo"),
        pytest.param("{big}", "{big} is larger than 4 KiB", id="over-the-limit"),
    ],
)
def test_key_file_that_is_no_small_regular_file_is_refused_at_once(
    tmp_path: Path, fifo: Path, key_file: str, message: str
) -> None:
    big = tmp_path / "big.key"
    big.write_text("k" * 20 + "\n" + " " * 5000)
    names = {"fifo": fifo, "big": big}
    path = write(
        tmp_path,
        lines(
            "ip_lists:",
            "  - name: DQS",
            "    zone: '{key}.zen.dq.spamhaus.net'",
            f"    key_file: {key_file.format(**names)}",
            "    score: 5",
        ),
    )
    error = _load_within(path, unblock=fifo)
    assert str(error) == f"{path}:4:5: ip_lists[0].key_file: {message.format(**names)}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            'allow: {clients: ["file:a\\0b"]}',
            "1:19: allow.clients[0]: {dir}/a\\x00b: cannot read: the path holds a NUL character",
            id="list-file",
        ),
        pytest.param(
            'ip_lists: [{name: Z, zone: "{key}.zen.test", key_file: "a\\0b", score: 1}]',
            "1:46: ip_lists[0].key_file: cannot read {dir}/a\\x00b: the path holds a NUL character",
            id="key-file",
        ),
    ],
)
def test_file_name_with_a_nul_is_refused_and_shown_escaped(
    tmp_path: Path, text: str, expected: str
) -> None:
    error = load_error(tmp_path, lines(text))
    assert str(error) == f"{tmp_path / 'spamgate.yaml'}:{expected.format(dir=tmp_path)}"
