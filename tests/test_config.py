"""The policy file: the shipped config, located errors, typed values, immutability, reference."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from spamgate.config import files as config
from spamgate.config.files import load_policy
from spamgate.core import schema
from spamgate.core.patterns import Pattern
from spamgate.core.policy import (
    AddHeaders,
    IpList,
    ListHit,
    Mode,
    OnError,
    OnUnusable,
    Policy,
    Rule,
)
from spamgate.core.schema import ConfigError
from spamgate.core.settings import Breaker, ListenAddress, LogLevel, Nameserver, SocketMode

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "spamgate.yaml"


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spamgate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Policy:
    return load_policy(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    return raised.value


# --- the shipped file --------------------------------------------------------------------------


def by_name(policy: Policy, name: str) -> IpList:
    (found,) = [lst for lst in policy.ip_lists if lst.name == name]
    return found


def hit_codes(dns_list: IpList) -> dict[str, tuple[str, ...]]:
    return {hit.name: tuple(code.text for code in hit.codes) for hit in dns_list.hits}


def test_shipped_config_loads() -> None:
    policy = load_policy(SHIPPED)
    assert policy.mode is Mode.ENFORCE
    assert policy.listen == ListenAddress("inet", host="127.0.0.1", port=8894)
    assert policy.digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()[:12]
    assert [lst.name for lst in policy.ip_lists] == ["SPAMHAUS_ZEN", "SPAMCOP", "PSBL", "DNSWL"]


def test_shipped_config_has_spamhaus_zen_return_codes() -> None:
    zen = by_name(load_policy(SHIPPED), "SPAMHAUS_ZEN")
    assert zen.zone == "zen.spamhaus.org"
    assert hit_codes(zen) == {
        "SPAMHAUS_SBL": ("127.0.0.2",),
        "SPAMHAUS_CSS": ("127.0.0.3",),
        "SPAMHAUS_DROP": ("127.0.0.9",),
        "SPAMHAUS_XBL": ("127.0.0.4-127.0.0.7",),
        "SPAMHAUS_PBL": ("127.0.0.10", "127.0.0.11"),
    }
    assert all(hit.score > 0 for hit in zen.hits)
    assert zen.ipv4 and zen.ipv6


def test_shipped_config_has_an_allowlist_with_negative_scores() -> None:
    dnswl = by_name(load_policy(SHIPPED), "DNSWL")
    assert [code.text for code in dnswl.error_codes] == ["127.0.0.255"]
    assert {hit.name: hit.score for hit in dnswl.hits} == {
        "DNSWL_HIGH": -10,
        "DNSWL_MED": -5,
        "DNSWL_LOW": -2,
        "DNSWL_NONE": 0,
    }
    assert hit_codes(dnswl)["DNSWL_HIGH"] == ("127.0.*.3",)


# --- errors located as FILE:LINE:COL: key.path: message ----------------------------------------

LIST_A = "  - {name: A, zone: a.test, score: 1}"
RULE_DATE = "  - {name: R, score: 1, description: d, header: {name: Date, missing: true}}"

BAD_DOCUMENTS = [
    pytest.param(
        lines("state:", "  store: state.sqlite"),
        (
            2,
            3,
            "state.store",
            "expected an absolute file path or a redis:// URL, got 'state.sqlite'",
        ),
        id="greylist-state-relative",
    ),
    pytest.param(
        lines("state:", "  store: 'redis://:secret@:6379/0'"),
        (2, 3, "state.store", "'redis://:***@:6379/0' names no host"),
        id="greylist-redis-no-host-password-hidden",
    ),
    pytest.param(
        lines("state:", "  store: redis://localhost:port/0"),
        (2, 3, "state.store", "Port could not be cast to integer value as 'port'"),
        id="greylist-redis-bad-port",
    ),
    pytest.param(
        lines("greylist:", "  min_delay: 600", "  retry_window: 600"),
        (3, 3, "greylist.retry_window", "must be longer than min_delay"),
        id="greylist-window-not-after-delay",
    ),
    pytest.param(
        lines("greylist:", "  reply: 'wait {minutes} minutes'"),
        (
            2,
            3,
            "greylist.reply",
            "unknown field {minutes}: use client, id, reasons, retry, score",
        ),
        id="greylist-reply-field",
    ),
    pytest.param(
        lines("thresholds: {tag: 3, greylist: 2}"),
        (1, 22, "thresholds.greylist", "must not be below tag (3)"),
        id="greylist-below-tag",
    ),
    pytest.param(
        lines("rules:", "  - {name: R, score: 1, description: d, sender: empty, action: drop}"),
        (
            2,
            64,
            "rules[0].action",
            "expected one of tag, greylist, quarantine, tempfail, reject, got the string 'drop'",
        ),
        id="rule-action-unknown",
    ),
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
            "metrics, resolver, health, trusted_networks, skip_authenticated, our_names, "
            "our_addresses, thresholds, add_headers, exempt_recipients, replies, greylist, state, "
            "reverse_dns, ip_lists, domain_lists, rules, allow, deny, recipient_policies, "
            "split_recipient_policies)",
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
        lines("resolver:", "  cache_min_ttl: 100", "  cache_max_ttl: 50"),
        (2, 3, "resolver.cache_min_ttl", "must not exceed cache_max_ttl"),
        id="cache-ttls-crossed",
    ),
    pytest.param(
        lines("thresholds:", "  tag: 5", "  tempfail: 3"),
        (3, 3, "thresholds.tempfail", "must not be below tag (5)"),
        id="thresholds-tempfail-below-tag",
    ),
    pytest.param(
        lines("thresholds:", "  tag: 5", "  tempfail: null", "  reject: 4.5"),
        (4, 3, "thresholds.reject", "must not be below tag (5)"),
        id="thresholds-reject-below-tag-across-null",
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
        lines("ip_lists:", LIST_A, "  - {name: A, zone: b.test, score: 1}"),
        (3, 6, "ip_lists[1].name", "name A is already used at ip_lists[0].name"),
        id="duplicate-list-name",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - {name: X, score: 1}",
            "  - name: B",
            "    zone: b.test",
            "    hits:",
            "      - {name: Y, score: 1}",
            "      - {name: X, score: 2}",
        ),
        (10, 10, "ip_lists[1].hits[1].name", "name X is already used at ip_lists[0].hits[0].name"),
        id="duplicate-hit-name-across-lists",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - {name: X, score: 1}",
            "      - {name: X, score: 2}",
        ),
        (6, 10, "ip_lists[0].hits[1].name", "name X is already used at ip_lists[0].hits[0].name"),
        id="duplicate-hit-name-in-one-list",
    ),
    pytest.param(
        lines("ip_lists:", LIST_A, "rules:", RULE_DATE.replace("name: R,", "name: A,")),
        (4, 6, "rules[0].name", "name A is already used at ip_lists[0].name"),
        id="rule-named-like-a-list",
    ),
    pytest.param(
        lines("rules:", RULE_DATE, RULE_DATE.replace("Date", "From")),
        (3, 6, "rules[1].name", "name R is already used at rules[0].name"),
        id="duplicate-rule-name",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    score: 1",
            "    hits:",
            "      - {name: X, score: 1}",
        ),
        (6, 7, "ip_lists[0].hits", "give either `score` or `hits`, not both or neither"),
        id="list-with-score-and-hits",
    ),
    pytest.param(
        lines("ip_lists:", "  - name: A", "    zone: a.test"),
        (2, 5, "ip_lists[0].hits", "give either `score` or `hits`, not both or neither"),
        id="list-with-neither-score-nor-hits",
    ),
    pytest.param(
        lines("ip_lists:", "  - {zone: a.test, score: 1}"),
        (2, 5, "ip_lists[0].name", "required key is missing"),
        id="required-key-missing",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: lower, zone: a.test, score: 1}"),
        (2, 6, "ip_lists[0].name", "'lower' must be UPPER_CASE letters, digits and _ (max 64)"),
        id="lowercase-list-name",
    ),
    pytest.param(
        lines("ip_lists:", "  - name: A", "    zone: bad..zone", "    score: 1"),
        (3, 5, "ip_lists[0].zone", "'bad..zone' is not a valid DNS zone name"),
        id="zone-empty-label",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: localhost, score: 1}"),
        (2, 15, "ip_lists[0].zone", "'localhost' is not a valid DNS zone name"),
        id="zone-single-label",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: -bad.example, score: 1}"),
        (2, 15, "ip_lists[0].zone", "'-bad.example' is not a valid DNS zone name"),
        id="zone-label-leading-hyphen",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: a.test, score: 1, ipv4: false, ipv6: false}"),
        (2, 52, "ip_lists[0].ipv6", "a list must be queried for IPv4, IPv6 or both"),
        id="list-for-no-family",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - name: X",
            "        score: 1",
            "        codes: [127.0.0.2, 127.0.0.300]",
        ),
        (
            7,
            28,
            "ip_lists[0].hits[0].codes[1]",
            "invalid return code '127.0.0.300': '127.0.0.300' is not an IPv4 address",
        ),
        id="bad-return-code",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    error_codes: ['&0']",
            "    score: 1",
        ),
        (4, 19, "ip_lists[0].error_codes[0]", "bit mask '&0' must set at least one bit"),
        id="bad-error-code",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches: '('",
        ),
        (
            7,
            16,
            "rules[0].header.matches",
            "invalid regex: missing ): (",
        ),
        id="bad-regex",
    ),
    pytest.param(
        lines("rules:", "  - name: R", "    score: 1", "    description: d"),
        (
            2,
            5,
            "rules[0].name",
            "a rule needs exactly one condition (helo, helo_matches, rdns, rdns_matches, sender, "
            "sender_matches, recipient_matches, recipients_over, header, date_ahead_hours, "
            "date_behind_days, from_domain, composite)",
        ),
        id="rule-without-condition",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches: x",
            "      missing: true",
        ),
        (
            7,
            7,
            "rules[0].header.matches",
            "give exactly one of matches, matches_raw, missing: true, count_over, malformed: true",
        ),
        id="header-matches-and-missing",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - {name: R, score: 1, description: d, header: {name: 'A B', missing: true}}",
        ),
        (2, 50, "rules[0].header.name", "'A B' is not a header field name"),
        id="bad-header-name",
    ),
    pytest.param(
        lines("listen: inet:8894"),
        (1, 9, "listen", "expected inet:PORT@HOST with a port 1-65535, got 'inet:8894'"),
        id="listen-without-host",
    ),
    pytest.param(
        lines("listen: inet:0@127.0.0.1"),
        (1, 9, "listen", "expected inet:PORT@HOST with a port 1-65535, got 'inet:0@127.0.0.1'"),
        id="listen-port-0",
    ),
    pytest.param(
        lines("listen: inet:65536@127.0.0.1"),
        (
            1,
            9,
            "listen",
            "expected inet:PORT@HOST with a port 1-65535, got 'inet:65536@127.0.0.1'",
        ),
        id="listen-port-too-big",
    ),
    pytest.param(
        lines("listen: inet:8894@localhost"),
        (1, 9, "listen", "listen host must be an IP address, got 'localhost'"),
        id="listen-hostname",
    ),
    pytest.param(
        lines("listen: inet:8894@::1"),
        (1, 9, "listen", "inet needs an IPv4 address"),
        id="listen-inet-with-ipv6",
    ),
    pytest.param(
        lines("listen: inet6:8894@127.0.0.1"),
        (1, 9, "listen", "inet6 needs an IPv6 address"),
        id="listen-inet6-with-ipv4",
    ),
    pytest.param(
        lines("listen: unix:relative.sock"),
        (1, 9, "listen", "unix socket path must be absolute, got 'relative.sock'"),
        id="listen-relative-unix",
    ),
    pytest.param(
        lines("listen: tcp:8894@127.0.0.1"),
        (1, 9, "listen", "unknown socket family 'tcp': use inet, inet6 or unix"),
        id="listen-unknown-family",
    ),
    pytest.param(
        lines("listen: 8894"),
        (1, 9, "listen", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got 8894"),
        id="listen-number",
    ),
    pytest.param(
        lines("resolver:", "  nameservers: [127.0.0.1, dns.google]"),
        (2, 28, "resolver.nameservers[1]", "nameserver must be an IP address, got 'dns.google'"),
        id="nameserver-hostname",
    ),
    pytest.param(
        lines("resolver:", "  nameservers: ['127.0.0.1:99999']"),
        (
            2,
            17,
            "resolver.nameservers[0]",
            "expected IP, IP:PORT or [IPv6]:PORT with a port 1-65535, got '127.0.0.1:99999'",
        ),
        id="nameserver-port-too-big",
    ),
    pytest.param(
        lines("resolver:", "  nameservers: ['[::1]:x']"),
        (
            2,
            17,
            "resolver.nameservers[0]",
            "expected IP, IP:PORT or [IPv6]:PORT with a port 1-65535, got '[::1]:x'",
        ),
        id="nameserver-bracketed-bad-port",
    ),
    pytest.param(
        lines("resolver:", "  nameservers: 127.0.0.1"),
        (2, 16, "resolver.nameservers", "expected a list, got the value '127.0.0.1'"),
        id="nameservers-not-a-list",
    ),
    pytest.param(
        lines("socket_mode: 1660"),
        (1, 14, "socket_mode", "expected an octal mode such as 0660, got '1660'"),
        id="socket-mode-decimal-660",
    ),
    pytest.param(
        lines("socket_mode: '01777'"),
        (1, 14, "socket_mode", "expected an octal mode such as 0660, got '01777'"),
        id="socket-mode-sticky",
    ),
    pytest.param(
        lines("socket_mode: rw"),
        (1, 14, "socket_mode", "expected an octal mode such as 0660, got 'rw'"),
        id="socket-mode-text",
    ),
    pytest.param(
        lines("listen: unix:/run/spamgate/spamgate.sock", "socket_mode: '0666'"),
        (
            2,
            14,
            "socket_mode",
            "0666 gives other users access to the milter socket: the last digit must be 0 "
            "(e.g. 0660, for the MTA's group)",
        ),
        id="socket-mode-world-writable",
    ),
    pytest.param(
        lines("socket_mode: 0664"),
        (
            1,
            14,
            "socket_mode",
            "0664 gives other users access to the milter socket: the last digit must be 0 "
            "(e.g. 0660, for the MTA's group)",
        ),
        id="socket-mode-world-readable",
    ),
    pytest.param(
        lines("socket_mode: 602"),
        (
            1,
            14,
            "socket_mode",
            "602 gives other users access to the milter socket: the last digit must be 0 "
            "(e.g. 0660, for the MTA's group)",
        ),
        id="socket-mode-other-write-only",
    ),
    pytest.param(
        lines("trusted_networks:", "  - 10.0.0.0/8", "  - 10.0.0.1/8"),
        (
            3,
            5,
            "trusted_networks[1]",
            "invalid network '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        ),
        id="cidr-host-bits",
    ),
    pytest.param(
        lines("exempt_recipients: [postmaster, 'a b']"),
        (1, 33, "exempt_recipients[1]", "'a b' is not a local part or address"),
        id="bad-exempt-recipient",
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
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    file = str(tmp_path / "spamgate.yaml")
    assert (error.source, error.line, error.column, error.path) == (file, line, column, key_path)
    assert error.message == message
    prefix = f"{file}:{line}:{column}: "
    assert str(error) == prefix + (f"{key_path}: {message}" if key_path else message)


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


# --- good values become typed objects ----------------------------------------------------------

GOOD_VALUES = [
    pytest.param(
        "listen: inet:8894@127.0.0.1",
        lambda p: p.listen,
        ListenAddress("inet", host="127.0.0.1", port=8894),
        id="listen-inet",
    ),
    pytest.param(
        "listen: inet6:10025@[::1]",
        lambda p: p.listen,
        ListenAddress("inet6", host="::1", port=10025),
        id="listen-inet6-bracketed",
    ),
    pytest.param(
        "listen: inet6:10025@2001:db8::25",
        lambda p: p.listen,
        ListenAddress("inet6", host="2001:db8::25", port=10025),
        id="listen-inet6-bare",
    ),
    pytest.param(
        "listen: unix:/run/spamgate/milter.sock",
        lambda p: p.listen,
        ListenAddress("unix", path="/run/spamgate/milter.sock"),
        id="listen-unix",
    ),
    pytest.param(
        "listen: local:/run/milter.sock",
        lambda p: p.listen,
        ListenAddress("unix", path="/run/milter.sock"),
        id="listen-local-is-unix",
    ),
    pytest.param(
        "resolver: {nameservers: ['192.0.2.53', '192.0.2.54:5353', '[::1]:5353', '::1', "
        "'[2001:db8::53]']}",
        lambda p: p.resolver.nameservers,
        (
            Nameserver("192.0.2.53", 53),
            Nameserver("192.0.2.54", 5353),
            Nameserver("::1", 5353),
            Nameserver("::1", 53),
            Nameserver("2001:db8::53", 53),
        ),
        id="nameservers",
    ),
    pytest.param("socket_mode: '0660'", lambda p: p.socket_mode, SocketMode(0o660), id="mode-str"),
    pytest.param("socket_mode: 0660", lambda p: p.socket_mode, SocketMode(0o660), id="mode-octal"),
    pytest.param("socket_mode: '600'", lambda p: p.socket_mode, SocketMode(0o600), id="mode-3"),
    pytest.param("socket_mode: 0o600", lambda p: p.socket_mode, SocketMode(0o600), id="mode-0o"),
    pytest.param("mode: observe", lambda p: p.mode, Mode.OBSERVE, id="mode-enum"),
    pytest.param("on_error: tempfail", lambda p: p.on_error, OnError.TEMPFAIL, id="on-error"),
    pytest.param("add_headers: tagged", lambda p: p.add_headers, AddHeaders.TAGGED, id="headers"),
    pytest.param("log: {level: debug}", lambda p: p.log.level, LogLevel.DEBUG, id="log-level"),
    pytest.param(
        "thresholds: {tag: 2, reject: null}",
        lambda p: (p.thresholds.tag, p.thresholds.greylist, p.thresholds.reject),
        (2.0, 6.0, None),
        id="thresholds-null",
    ),
    pytest.param(
        "exempt_recipients: [postmaster, abuse@example.org]",
        lambda p: p.exempt_recipients,
        ("postmaster", "abuse@example.org"),
        id="exempt-tuple",
    ),
    pytest.param(
        "trusted_networks: [192.0.2.0/24, '2001:db8::/32']",
        lambda p: p.trusted_networks,
        (ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv6Network("2001:db8::/32")),
        id="networks-tuple",
    ),
    pytest.param(
        "trusted_networks: []", lambda p: p.trusted_networks, (), id="no-trusted-networks"
    ),
    pytest.param(
        "ip_lists: [{name: BL, zone: bl.example., score: 2.5, ipv6: false}]",
        lambda p: (p.ip_lists[0].display, p.ip_lists[0].scored_hits, p.ip_lists[0].ipv6),
        ("BL", (ListHit(name="BL", score=2.5),), False),
        id="list-score-shorthand",
    ),
    pytest.param(
        "ip_lists: [{name: BL, zone: bl.example, score: 2}]\n"
        "domain_lists: [{name: DBL, zone: dbl.example, score: 2, on_unusable: tempfail}]",
        lambda p: (p.ip_lists[0].on_unusable, p.domain_lists[0].on_unusable),
        (OnUnusable.JUDGE, OnUnusable.TEMPFAIL),
        id="on-unusable-judge-by-default",
    ),
    pytest.param(
        "replies: {unusable: 'No {lists} now, {client} (id {id})'}",
        lambda p: p.replies.unusable,
        "No {lists} now, {client} (id {id})",
        id="unusable-template",
    ),
]


@pytest.mark.parametrize(("text", "get", "expected"), GOOD_VALUES)
def test_good_value(
    tmp_path: Path, text: str, get: Callable[[Policy], object], expected: object
) -> None:
    assert get(load(tmp_path, text + "\n")) == expected


def test_numbers_are_floats_where_the_schema_says_number(tmp_path: Path) -> None:
    policy = load(
        tmp_path, lines("resolver: {deadline: 1}", "ip_lists: [{name: A, zone: a.b, score: 3}]")
    )
    assert isinstance(policy.resolver.deadline, float)
    assert isinstance(policy.ip_lists[0].scored_hits[0].score, float)


def test_hits_parse_codes_and_rules_compile(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        lines(
            "ip_lists:",
            "  - name: BL",
            "    display: Example BL",
            "    zone: bl.example",
            "    hits:",
            "      - {name: BL_XBL, score: 10, codes: [127.0.0.4-127.0.0.7, '&8']}",
            "rules:",
            "  - name: PHARMA",
            "    score: 2",
            "    description: d",
            "    header: {name: Subject, matches: 'v[i1]agra'}",
        ),
    )
    (hit,) = policy.ip_lists[0].hits
    assert [code.text for code in hit.codes] == ["127.0.0.4-127.0.0.7", "&8"]
    assert policy.ip_lists[0].display == "Example BL"
    header = policy.rules[0].header
    assert header is not None
    assert isinstance(header.matches, Pattern)
    assert header.matches.search("cheap v1agra") is not None
    assert header.missing is False


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(
            ListenAddress("inet", host="127.0.0.1", port=8894), "inet:8894@127.0.0.1", id="inet"
        ),
        pytest.param(ListenAddress("inet6", host="::1", port=8894), "inet6:8894@[::1]", id="inet6"),
        pytest.param(ListenAddress("unix", path="/run/m.sock"), "unix:/run/m.sock", id="unix"),
        pytest.param(Nameserver("192.0.2.53", 53), "192.0.2.53:53", id="nameserver-v4"),
        pytest.param(Nameserver("::1", 5353), "[::1]:5353", id="nameserver-v6"),
        pytest.param(SocketMode(0o600), "0600", id="socket-mode"),
    ],
)
def test_value_types_render_as_written(value: object, text: str) -> None:
    assert str(value) == text


# --- immutability ------------------------------------------------------------------------------

FULL = lines(
    "listen: unix:/run/m.sock",
    "ip_lists:",
    "  - name: BL",
    "    zone: bl.example",
    "    hits: [{name: BL_X, score: 1, codes: [127.0.0.2]}]",
    "rules:",
    "  - {name: R, score: 1, description: d, header: {name: Date, missing: true}}",
)


def _assign(target: object, name: str) -> Callable[[], None]:
    return lambda: setattr(target, name, None)


@pytest.mark.parametrize(
    ("reach", "name"),
    [
        pytest.param(lambda p: p, "mode", id="policy"),
        pytest.param(lambda p: p, "digest", id="policy-digest"),
        pytest.param(lambda p: p.listen, "path", id="listen"),
        pytest.param(lambda p: p.socket_mode, "bits", id="socket-mode"),
        pytest.param(lambda p: p.log, "level", id="log"),
        pytest.param(lambda p: p.resolver, "deadline", id="resolver"),
        pytest.param(lambda p: p.thresholds, "reject", id="thresholds"),
        pytest.param(lambda p: p.ip_lists[0], "zone", id="ip-list"),
        pytest.param(lambda p: p.ip_lists[0].hits[0], "score", id="hit"),
        pytest.param(lambda p: p.rules[0], "score", id="rule"),
        pytest.param(lambda p: p.rules[0].header, "missing", id="header"),
    ],
)
def test_policy_is_frozen(tmp_path: Path, reach: Callable[[Policy], object], name: str) -> None:
    target = reach(load(tmp_path, FULL))
    before = getattr(target, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        _assign(target, name)()
    assert getattr(target, name) == before


def test_collections_are_tuples(tmp_path: Path) -> None:
    policy = load(tmp_path, FULL)
    collections = (
        policy.ip_lists,
        policy.ip_lists[0].hits,
        policy.ip_lists[0].hits[0].codes,
        policy.ip_lists[0].error_codes,
        policy.rules,
        policy.trusted_networks,
        policy.exempt_recipients,
        policy.resolver.nameservers,
    )
    assert all(type(c) is tuple for c in collections)


# --- the reference -----------------------------------------------------------------------------

ALL_KEYS = [
    "listen",
    "socket_mode",
    "mode",
    "on_error",
    "shutdown_grace",
    "log",
    "log.target",
    "log.level",
    "log.stats_interval",
    "metrics",
    "metrics.listen",
    "resolver",
    "resolver.nameservers",
    "resolver.query_timeout",
    "resolver.deadline",
    "resolver.cache_min_ttl",
    "resolver.cache_max_ttl",
    "resolver.cache_entries",
    "health",
    "health.probe_interval",
    "health.retry_min",
    "health.retry_max",
    "health.breaker",
    "health.max_hit_ratio",
    "health.window",
    "health.max_failures",
    "health.min_checks",
    "health.status_file",
    "trusted_networks",
    "skip_authenticated",
    "our_names",
    "our_addresses",
    "thresholds",
    "thresholds.tag",
    "thresholds.greylist",
    "thresholds.quarantine",
    "thresholds.tempfail",
    "thresholds.reject",
    "add_headers",
    "exempt_recipients",
    "replies",
    "replies.reject",
    "replies.tempfail",
    "replies.unusable",
    "greylist",
    "greylist.min_delay",
    "greylist.retry_window",
    "greylist.pass_ttl",
    "greylist.auto_allow_passes",
    "greylist.auto_allow_ttl",
    "greylist.ipv4_prefix",
    "greylist.ipv6_prefix",
    "greylist.reply",
    "state",
    "state.store",
    "state.timeout",
    "state.remember_rejects",
    "reverse_dns",
    "reverse_dns.use_mta_macros",
    "reverse_dns.dynamic_patterns",
    "ip_lists",
    "ip_lists[].name",
    "ip_lists[].zone",
    "ip_lists[].key_file",
    "ip_lists[].display",
    "ip_lists[].score",
    "ip_lists[].hits",
    "ip_lists[].hits[].name",
    "ip_lists[].hits[].score",
    "ip_lists[].hits[].codes",
    "ip_lists[].hits[].description",
    "ip_lists[].error_codes",
    "ip_lists[].mode",
    "ip_lists[].on_unusable",
    "ip_lists[].probe",
    "ip_lists[].probe.enabled",
    "ip_lists[].probe.listed",
    "ip_lists[].probe.unlisted",
    "ip_lists[].health",
    "ip_lists[].health.breaker",
    "ip_lists[].health.max_hit_ratio",
    "ip_lists[].health.min_checks",
    "ip_lists[].health.window",
    "ip_lists[].ipv4",
    "ip_lists[].ipv6",
    "domain_lists",
    "domain_lists[].name",
    "domain_lists[].zone",
    "domain_lists[].key_file",
    "domain_lists[].display",
    "domain_lists[].score",
    "domain_lists[].hits",
    "domain_lists[].hits[].name",
    "domain_lists[].hits[].score",
    "domain_lists[].hits[].codes",
    "domain_lists[].hits[].description",
    "domain_lists[].error_codes",
    "domain_lists[].mode",
    "domain_lists[].on_unusable",
    "domain_lists[].probe",
    "domain_lists[].probe.enabled",
    "domain_lists[].probe.listed",
    "domain_lists[].probe.unlisted",
    "domain_lists[].health",
    "domain_lists[].health.breaker",
    "domain_lists[].health.max_hit_ratio",
    "domain_lists[].health.min_checks",
    "domain_lists[].health.window",
    "domain_lists[].check_names",
    "domain_lists[].query",
    "rules",
    "rules[].name",
    "rules[].score",
    "rules[].description",
    "rules[].mode",
    "rules[].action",
    "rules[].helo",
    "rules[].helo_matches",
    "rules[].rdns",
    "rules[].rdns_matches",
    "rules[].sender",
    "rules[].sender_matches",
    "rules[].recipient_matches",
    "rules[].recipients_over",
    "rules[].header",
    "rules[].header.name",
    "rules[].header.matches",
    "rules[].header.matches_raw",
    "rules[].header.missing",
    "rules[].header.count_over",
    "rules[].header.malformed",
    "rules[].date_ahead_hours",
    "rules[].date_behind_days",
    "rules[].from_domain",
    "rules[].composite",
    "rules[].composite.all",
    "rules[].composite.any",
    "rules[].composite.not",
    "allow",
    "allow.clients",
    "allow.client_names",
    "allow.helo_names",
    "allow.senders",
    "allow.recipients",
    "deny",
    "deny.clients",
    "deny.client_names",
    "deny.helo_names",
    "deny.senders",
    "deny.recipients",
    "deny.reply",
    "recipient_policies",
    "recipient_policies[].name",
    "recipient_policies[].recipients",
    "recipient_policies[].mode",
    "recipient_policies[].thresholds",
    "recipient_policies[].thresholds.tag",
    "recipient_policies[].thresholds.greylist",
    "recipient_policies[].thresholds.quarantine",
    "recipient_policies[].thresholds.tempfail",
    "recipient_policies[].thresholds.reject",
    "recipient_policies[].scores",
    "split_recipient_policies",
]


def test_describe_has_a_row_for_every_key() -> None:
    assert [row.path for row in schema.describe(Policy)] == ALL_KEYS


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


# --- errors in the policy language, located ----------------------------------------------------

CONDITIONS_TEXT = ", ".join(Rule.CONDITIONS)

LANGUAGE_ERRORS = [
    pytest.param(
        lines("replies:", "  reject: 'No: {reason} (id {id})'"),
        (2, 3, "replies.reject", "unknown field {reason}: use client, id, reasons, score"),
        id="reject-template-unknown-field",
    ),
    pytest.param(
        lines("replies:", "  tempfail: 'Later {score} {ip}'"),
        (2, 3, "replies.tempfail", "unknown field {ip}: use client, id, reasons, score"),
        id="tempfail-template-unknown-field",
    ),
    pytest.param(
        lines("replies:", "  reject: 'No {'"),
        (2, 3, "replies.reject", "bad template: Single '{' encountered in format string"),
        id="reject-template-unbalanced",
    ),
    pytest.param(
        lines("replies:", "  reject: 'No {reasons.__class__}'"),
        (
            2,
            3,
            "replies.reject",
            "unknown field {reasons.__class__}: use client, id, reasons, score",
        ),
        id="reject-template-attribute",
    ),
    pytest.param(
        lines("deny:", "  senders: ['@bad.example']", "  reply: 'No: {reasons}'"),
        (3, 3, "deny.reply", "unknown field {reasons}: use client, id"),
        id="deny-reply-unknown-field",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [NOPE]}",
        ),
        (5, 16, "rules[0].composite", "NOPE is not a list hit or a rule defined before this one"),
        id="composite-unknown-name",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {any: [LATER]}",
            "  - {name: LATER, score: 1, description: d, helo: bare_ip}",
        ),
        (5, 16, "rules[0].composite", "LATER is not a list hit or a rule defined before this one"),
        id="composite-later-rule",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [C]}",
        ),
        (5, 16, "rules[0].composite", "C is not a list hit or a rule defined before this one"),
        id="composite-naming-itself",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - {name: R, score: 1, description: d, helo: bare_ip}",
            "recipient_policies:",
            "  - name: sales",
            "    recipients: ['@sales.example']",
            "    scores: {R: 2, NOPE: 1}",
        ),
        (6, 20, "recipient_policies[0].scores.NOPE", "no hit is named NOPE"),
        id="recipient-policy-scores-unknown-hit",
    ),
    pytest.param(
        lines(
            "recipient_policies:",
            "  - {name: sales, recipients: ['@a.example']}",
            "  - {name: sales, recipients: ['@b.example']}",
        ),
        (3, 6, "recipient_policies[1].name", "'sales' is taken"),
        id="recipient-policy-duplicate-name",
    ),
    pytest.param(
        lines("recipient_policies:", "  - name: default", "    recipients: ['@a.example']"),
        (2, 5, "recipient_policies[0].name", "'default' is taken"),
        id="recipient-policy-named-default",
    ),
    pytest.param(
        lines("recipient_policies:", "  - name: sales", "    recipients: []"),
        (3, 17, "recipient_policies[0].recipients", "name at least one recipient pattern"),
        id="recipient-policy-without-recipients",
    ),
    pytest.param(
        lines(
            "recipient_policies:",
            "  - name: sales",
            "    recipients: ['@a.example']",
            "    thresholds: {tag: 5, quarantine: 4}",
        ),
        (4, 26, "recipient_policies[0].thresholds.quarantine", "must not be below tag (5)"),
        id="recipient-policy-quarantine-below-tag",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    helo: bare_ip",
            "    sender: empty",
        ),
        (6, 5, "rules[0].sender", f"a rule needs exactly one condition ({CONDITIONS_TEXT})"),
        id="rule-with-two-conditions-at-the-second",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header: {name: Subject, malformed: true}",
        ),
        (
            5,
            29,
            "rules[0].header.malformed",
            "spamgate cannot parse Subject: only Date, From, Sender, Reply-To, To and Cc",
        ),
        id="malformed-on-an-unparsed-header",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches_raw: 'caf\u00e9'",
        ),
        (
            7,
            20,
            "rules[0].header.matches_raw",
            "a bytes regex must be ASCII: write 'é' as the bytes it should match, "
            "e.g. \\xC3\\xA9 for its UTF-8 encoding",
        ),
        id="matches-raw-non-ascii",
    ),
    pytest.param(
        lines("thresholds:", "  tag: 5", "  quarantine: 4"),
        (3, 3, "thresholds.quarantine", "must not be below tag (5)"),
        id="quarantine-below-tag",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 1",
            "    check_names: []",
        ),
        (
            5,
            18,
            "domain_lists[0].check_names",
            "name at least one of helo, ptr, sender, from, reply_to",
        ),
        id="domain-list-without-check-names",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 1",
            "    check_names: [helo, body]",
        ),
        (
            5,
            25,
            "domain_lists[0].check_names[1]",
            "expected one of helo, ptr, sender, from, reply_to, got the string 'body'",
        ),
        id="domain-list-unknown-check-name",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: BL, zone: bl.example, score: 2, on_unusable: defer}"),
        (
            2,
            57,
            "ip_lists[0].on_unusable",
            "expected one of judge, tempfail, got the string 'defer'",
        ),
        id="on-unusable-unknown-value",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 6",
            "    on_unusable: true",
        ),
        (
            5,
            18,
            "domain_lists[0].on_unusable",
            "expected one of judge, tempfail, got the boolean true",
        ),
        id="on-unusable-boolean",
    ),
    pytest.param(
        lines("replies:", "  unusable: 'Later: {reasons} (id {id})'"),
        (2, 3, "replies.unusable", "unknown field {reasons}: use client, id, lists"),
        id="unusable-template-unknown-field",
    ),
]


@pytest.mark.parametrize(("text", "where"), LANGUAGE_ERRORS)
def test_policy_language_error_is_located(
    tmp_path: Path, text: str, where: tuple[int, int, str, str]
) -> None:
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    file = str(tmp_path / "spamgate.yaml")
    assert str(error) == f"{file}:{line}:{column}: {key_path}: {message}"
    assert (error.line, error.column, error.path, error.message) == where


def test_a_composite_may_name_list_hits_and_earlier_rules(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        lines(
            "ip_lists:",
            "  - {name: BL, zone: bl.example, score: 1}",
            "rules:",
            "  - {name: R, score: 1, description: d, helo: bare_ip}",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [BL], any: [R], not: [R]}",
        ),
    )
    composite = policy.rules[1].composite
    assert composite is not None
    assert (composite.all, composite.any, composite.not_) == (("BL",), ("R",), ("R",))


# --- the shipped policy uses every kind of rule ------------------------------------------------

# docs/rules.md: config/spamgate.yaml "has a rule of every kind but `helo_matches`,
# `rdns_matches`, `sender: empty`, `sender_matches`, `recipient_matches` and `matches_raw`,
# which only make sense with your own patterns".
ABSENT_CONDITIONS = {"helo_matches", "rdns_matches", "sender_matches", "recipient_matches"}
ABSENT_VALUES = {("sender", "empty"), ("header", "matches_raw")}
HEADER_TESTS = ("matches", "matches_raw", "missing", "count_over", "malformed")


def shipped_kinds() -> tuple[set[str], set[tuple[str, str]]]:
    """The shipped policy's rule conditions, and (condition, value) for those with kinds."""
    rules = load_policy(SHIPPED).rules
    conditions = {rule.condition for rule in rules}
    values: set[tuple[str, str]] = set()
    for rule in rules:
        for kind in ("helo", "rdns", "sender", "from_domain"):
            value = getattr(rule, kind)
            if value is not None:
                values.add((kind, value.value))
        if rule.header is not None:
            values |= {
                ("header", test)
                for test in HEADER_TESTS
                if getattr(rule.header, test) not in (None, False)
            }
    return conditions, values


def test_shipped_policy_uses_every_rule_condition_but_the_pattern_ones() -> None:
    conditions, _ = shipped_kinds()
    assert conditions == set(Rule.CONDITIONS) - ABSENT_CONDITIONS


@pytest.mark.parametrize(
    ("kind", "every"),
    [
        pytest.param("rdns", {"missing", "unconfirmed", "dynamic"}, id="rdns"),
        pytest.param("sender", {"empty", "unresolvable"}, id="sender"),
        pytest.param("from_domain", {"not_sender_domain"}, id="from-domain"),
        pytest.param("header", set(HEADER_TESTS), id="header"),
        pytest.param(
            "helo", {"bare_ip", "not_fqdn", "ours", "unresolvable", "not_ptr_domain"}, id="helo"
        ),
    ],
)
def test_shipped_policy_uses_every_kind_of_a_condition(kind: str, every: set[str]) -> None:
    _, values = shipped_kinds()
    expected = {(kind, value) for value in every} - ABSENT_VALUES
    assert {v for v in values if v[0] == kind} == expected


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


# --- a list's own circuit breaker settings (issue 14, item 2) ----------------------------------


def test_a_list_may_override_the_breaker_settings(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            lines(
                "health: {max_hit_ratio: 0.8, min_checks: 50, window: 300}",
                "ip_lists:",
                "  - name: ZEN",
                "    zone: zen.test",
                "    score: 10",
                "    health: {min_checks: 500, breaker: probe}",
                "  - {name: DNSWL, zone: wl.test, score: -5, health: {breaker: 'off'}}",
                "domain_lists:",
                "  - {name: DBL, zone: dbl.test, score: 5, health: {max_hit_ratio: 0.99}}",
            ),
        )
    )
    zen, dnswl = policy.ip_lists
    (dbl,) = policy.domain_lists
    own = zen.health.applied_to(policy.health)
    assert (own.breaker, own.max_hit_ratio, own.min_checks, own.window) == (
        Breaker.PROBE,
        0.8,
        500,
        300.0,
    )
    assert dnswl.health.applied_to(policy.health).breaker is Breaker.OFF
    assert dbl.health.applied_to(policy.health).max_hit_ratio == 0.99
    assert policy.health.breaker is Breaker.PROBE  # the default


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {max_hit_ratio: 2}}"),
            (2, 63, "ip_lists[0].health.max_hit_ratio", "must be at most 1, got 2.0"),
            id="ratio-over-one",
        ),
        pytest.param(
            lines(
                "domain_lists:",
                "  - name: DBL",
                "    zone: dbl.test",
                "    score: 1",
                "    health:",
                "      breaker: sometimes",
            ),
            (
                6,
                16,
                "domain_lists[0].health.breaker",
                "expected one of probe, suspend, off, got the string 'sometimes'",
            ),
            id="breaker-not-a-choice",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {min_checks: 5000}}"),
            (2, 60, "ip_lists[0].health.min_checks", "must be at most 2048, got 5000"),
            id="min-checks-past-the-bound",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {window: 5}}"),
            (2, 56, "ip_lists[0].health.window", "must be at least 10, got 5.0"),
            id="window-too-short",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {max_failure: 5}}"),
            (2, 48, "ip_lists[0].health.max_failure", "unknown key"),
            id="no-per-list-max-failures",
        ),
        pytest.param(
            lines("health:", "  min_checks: 3000"),
            (2, 15, "health.min_checks", "must be at most 2048, got 3000"),
            id="global-min-checks-past-the-bound",
        ),
    ],
)
def test_a_bad_breaker_setting_is_located(
    tmp_path: Path, text: str, where: tuple[int, int, str, str]
) -> None:
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    assert (error.line, error.column, error.path) == (line, column, key_path)
    assert error.message.startswith(message)


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
