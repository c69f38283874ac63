"""Errors in a policy file, located as FILE:LINE:COL: key.path: message: unknown keys,
wrong types, bounds, duplicates, YAML syntax; unreadable and empty files. The errors of
particular settings, DNS lists and rules have tables of their own, in test_config_values.py,
test_config_lists.py and test_config_language.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError
from spamgate.core.settings import ListenAddress, SocketMode
from tests.config_helpers import assert_located, lines, load, load_error

# --- errors located as FILE:LINE:COL: key.path: message ----------------------------------------

BAD_DOCUMENTS = [
    pytest.param(
        lines("resolver:", "  deadlin: 2"),
        (2, 3, "resolver.deadlin", "unknown key (did you mean 'deadline'?)"),
        id="unknown-key-suggestion",
    ),
    pytest.param(
        lines("zzz: 1"),
        (
            1,
            1,
            "zzz",
            "unknown key (known keys: listen, socket_mode, mode, on_error, shutdown_grace, log, "
            "metrics, resolver, scheduling, health, trusted_networks, skip_authenticated, "
            "our_names, our_addresses, relays, thresholds, add_headers, exempt_recipients, "
            "replies, greylist, state, reverse_dns, dkim, authentication_results, ip_lists, "
            "domain_lists, rules, allow, deny, recipient_policies, split_recipient_policies)",
        ),
        id="unknown-key-lists-known",
    ),
    pytest.param(
        lines("resolver:", "  deadline: high"),
        (2, 13, "resolver.deadline", "expected a number, got the string 'high'"),
        id="string-for-number",
    ),
    pytest.param(
        lines("resolver:", "  query_timeout: true"),
        (2, 18, "resolver.query_timeout", "expected a number, got the boolean true"),
        id="bool-for-number",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: a.test, score: yes}"),
        (2, 36, "ip_lists[0].score", "expected a number, got the boolean true"),
        id="yaml11-yes-for-number",
    ),
    pytest.param(
        lines("resolver:", "  cache_entries: 1.5"),
        (2, 18, "resolver.cache_entries", "expected an integer, got float 1.5"),
        id="float-for-integer",
    ),
    pytest.param(
        lines("skip_authenticated: 1"),
        (1, 21, "skip_authenticated", "expected a boolean, got int 1"),
        id="number-for-bool",
    ),
    pytest.param(
        lines("resolver:", "  deadline: 0"),
        (2, 13, "resolver.deadline", "must be at least 0.01, got 0.0"),
        id="below-minimum",
    ),
    pytest.param(
        lines("resolver:", "  deadline: 61"),
        (2, 13, "resolver.deadline", "must be at most 60, got 61.0"),
        id="above-maximum",
    ),
    pytest.param(
        lines("resolver:", "  cache_entries: -1"),
        (2, 18, "resolver.cache_entries", "must be at least 0, got -1"),
        id="negative-integer",
    ),
    pytest.param(
        lines("mode: enforce", "mode: observe"),
        (2, 1, "mode", "duplicate key"),
        id="duplicate-key",
    ),
    pytest.param(
        lines("resolver:", "  deadline: 1", "  deadline: 2"),
        (3, 3, "resolver.deadline", "duplicate key"),
        id="duplicate-nested-key",
    ),
    pytest.param(
        lines("ip_lists:", "  - {zone: a.test, score: 1}"),
        (2, 5, "ip_lists[0].name", "required key is missing"),
        id="required-key-missing",
    ),
    pytest.param(
        lines("mode: block"),
        (1, 7, "mode", "expected one of enforce, observe, got the string 'block'"),
        id="bad-enum",
    ),
    pytest.param(
        lines("log:", "  level: 3"),
        (2, 10, "log.level", "expected one of debug, info, warning, error, got int 3"),
        id="number-for-enum",
    ),
    pytest.param(
        lines("resolver: 5"),
        (1, 11, "resolver", "expected a mapping of keys, got the value '5'"),
        id="scalar-for-section",
    ),
    pytest.param(
        lines("ip_lists: foo"),
        (1, 11, "ip_lists", "expected a list, got the value 'foo'"),
        id="scalar-for-list",
    ),
    pytest.param(
        lines("listen: [inet:8894@127.0.0.1]"),
        (1, 9, "listen", "expected a single value, got a list"),
        id="list-for-scalar",
    ),
    pytest.param(
        lines("- mode: enforce"),
        (1, 1, "", "expected a mapping of keys, got a list"),
        id="top-level-list",
    ),
    pytest.param(
        lines("mode: enforce", "log: [a"),
        (
            3,
            1,
            "",
            "YAML syntax: while parsing a flow sequence expected ',' or ']', but got "
            "'<stream end>'",
        ),
        id="yaml-unclosed-flow",
    ),
    pytest.param(
        lines("mode: enforce", "  bad: indent"),
        (2, 6, "", "YAML syntax: mapping values are not allowed here"),
        id="yaml-bad-indent",
    ),
]


@pytest.mark.parametrize(("text", "where"), BAD_DOCUMENTS)
def test_error_is_located(tmp_path: Path, text: str, where: tuple[int, int, str, str]) -> None:
    assert_located(tmp_path, text, where)


def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    assert str(raised.value) == f"{path}: cannot read: No such file or directory"
    assert (raised.value.line, raised.value.path) == (0, "")


def test_directory_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_policy(tmp_path)
    assert str(raised.value) == f"{tmp_path}: cannot read: Is a directory"


def test_non_utf8_file_is_located_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"mode: \xe9\n")
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    assert str(raised.value) == f"{path}:1:7: not UTF-8 (byte 6)"
    path.write_bytes(b"# caf\xc3\xa9\nlog: {target: caf\xc3\xa9\xff}\n")
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    assert str(raised.value) == f"{path}:2:19: not UTF-8 (byte 27)"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("# nothing but a comment\n", id="comment-only"),
        pytest.param("---\n", id="empty-document"),
        pytest.param("~\n", id="null-document"),
    ],
)
def test_empty_file_means_all_defaults(tmp_path: Path, text: str) -> None:
    policy = load(tmp_path, text)
    assert policy == Policy()
    assert policy.listen == ListenAddress("inet", host="127.0.0.1", port=8894)
    assert policy.socket_mode == SocketMode(0o660)
    assert (policy.resolver.query_timeout, policy.resolver.deadline) == (1.0, 2.0)
    thresholds = policy.thresholds
    assert (thresholds.tag, thresholds.greylist, thresholds.tempfail, thresholds.reject) == (
        3.0,
        6.0,
        None,
        10.0,
    )
    assert policy.exempt_recipients == ("postmaster", "abuse")
    assert (policy.ip_lists, policy.rules) == ((), ())
    assert policy.digest == hashlib.sha256(text.encode()).hexdigest()[:12]


# --- known problems ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(lines("resolver:", "  deadline: .nan"), id="bounded-deadline"),
        pytest.param(lines("resolver:", "  query_timeout: .nan"), id="bounded-query-timeout"),
        pytest.param(lines("thresholds:", "  reject: .nan"), id="threshold"),
    ],
)
def test_nan_is_refused(tmp_path: Path, text: str) -> None:
    load_error(tmp_path, text)


def test_unquoted_socket_mode_is_read_as_octal_like_chmod(tmp_path: Path) -> None:
    assert load(tmp_path, lines("socket_mode: 440")).socket_mode == SocketMode(0o440)
    assert load(tmp_path, lines("socket_mode: 660")).socket_mode == SocketMode(0o660)


def test_two_hits_named_like_their_list_are_duplicates(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - {name: A, score: 1, codes: [127.0.0.2]}",
            "      - {name: A, score: 5, codes: [127.0.0.3]}",
        ),
    )
    assert error.path == "ip_lists[0].hits[1].name"
