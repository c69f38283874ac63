"""Settings' values: good ones become typed objects, bad ones are located errors (listen,
nameservers, socket mode, networks, greylisting and state, thresholds); the result is
frozen."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from spamgate.core.listspecs import ListHit, OnUnusable
from spamgate.core.patterns import Pattern
from spamgate.core.policy import AddHeaders, OnError, Policy
from spamgate.core.scoring import Mode
from spamgate.core.settings import ListenAddress, LogLevel, Nameserver, SocketMode
from tests.config_helpers import assert_located, lines, load

# --- bad values of settings, located -----------------------------------------------------------

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
]


@pytest.mark.parametrize(("text", "where"), BAD_DOCUMENTS)
def test_error_is_located(tmp_path: Path, text: str, where: tuple[int, int, str, str]) -> None:
    assert_located(tmp_path, text, where)


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
