"""DNS list return code specifications: every form, what it matches, and how it fails."""

from __future__ import annotations

import ipaddress

import pytest

from spamgate.core.returncodes import BLOCKED_CODES, ReturnCode, parse_return_code


def ip(text: str) -> int:
    """An answer address as the 32-bit integer `ReturnCode.matches` takes."""
    return int(ipaddress.IPv4Address(text))


@pytest.mark.parametrize(
    ("spec", "matching", "not_matching"),
    [
        pytest.param(
            "127.0.0.2", ["127.0.0.2"], ["127.0.0.1", "127.0.0.3", "127.0.1.2"], id="single"
        ),
        pytest.param(
            "127.0.0.4-127.0.0.7",
            ["127.0.0.4", "127.0.0.5", "127.0.0.7"],
            ["127.0.0.3", "127.0.0.8", "127.0.1.5"],
            id="range-inclusive",
        ),
        pytest.param(
            "127.0.0.4 - 127.0.0.7", ["127.0.0.4", "127.0.0.7"], ["127.0.0.8"], id="range-spaced"
        ),
        pytest.param(
            "127.0.0.10-127.0.0.10", ["127.0.0.10"], ["127.0.0.9", "127.0.0.11"], id="range-one"
        ),
        pytest.param(
            "127.0.0.0/24",
            ["127.0.0.0", "127.0.0.2", "127.0.0.255"],
            ["127.0.1.0", "126.255.255.255"],
            id="cidr",
        ),
        pytest.param("127.0.0.2/32", ["127.0.0.2"], ["127.0.0.3"], id="cidr-host"),
        pytest.param(
            "127.0.*.3",
            ["127.0.0.3", "127.0.15.3", "127.0.255.3"],
            ["127.0.15.2", "127.1.0.3", "128.0.0.3"],
            id="wildcard-dnswl-high",
        ),
        pytest.param(
            "127.*.*.*",
            ["127.0.0.0", "127.255.255.255"],
            ["126.255.255.255", "128.0.0.0"],
            id="wildcard-three",
        ),
        pytest.param(
            "&4",
            ["127.0.0.4", "127.0.0.6", "127.0.0.12", "127.0.0.255"],
            ["127.0.0.2", "127.0.0.8", "127.0.0.0"],
            id="mask-integer",
        ),
        pytest.param(
            "&0.0.0.4", ["127.0.0.4", "127.0.0.14"], ["127.0.0.10", "127.0.0.1"], id="mask-dotted"
        ),
        pytest.param(
            "&0x14", ["127.0.0.4", "127.0.0.16"], ["127.0.0.2", "127.0.0.8"], id="mask-hex"
        ),
        pytest.param(
            "&0.0.0.6",
            ["127.0.0.2", "127.0.0.4", "127.0.0.6"],
            ["127.0.0.1", "127.0.0.8"],
            id="mask-any-of-several-bits",
        ),
        pytest.param(" 127.0.0.2 ", ["127.0.0.2"], ["127.0.0.3"], id="surrounding-space"),
    ],
)
def test_code_matches(spec: str, matching: list[str], not_matching: list[str]) -> None:
    code = parse_return_code(spec)
    assert [a for a in matching if not code.matches(ip(a))] == []
    assert [a for a in not_matching if code.matches(ip(a))] == []


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        pytest.param(" 127.0.0.2 ", "127.0.0.2", id="single"),
        pytest.param("&4", "&4", id="mask"),
        pytest.param("127.0.*.3", "127.0.*.3", id="wildcard"),
    ],
)
def test_code_keeps_its_text(spec: str, text: str) -> None:
    assert parse_return_code(spec).text == text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            "127.0.0.7-127.0.0.4",
            "return code range '127.0.0.7-127.0.0.4' runs backwards",
            id="range-backwards",
        ),
        pytest.param(
            "127.0.0.2-",
            "invalid return code '127.0.0.2-': '' is not an IPv4 address",
            id="range-open-end",
        ),
        pytest.param(
            "127.0.0.2-127.0.0.300",
            "invalid return code '127.0.0.2-127.0.0.300': '127.0.0.300' is not an IPv4 address",
            id="range-bad-end",
        ),
        pytest.param(
            "127.0.0.256",
            "invalid return code '127.0.0.256': '127.0.0.256' is not an IPv4 address",
            id="single-bad-octet",
        ),
        pytest.param(
            "127.0.*.256",
            "invalid return code '127.0.*.256': bad octet '256'",
            id="wildcard-octet-too-big",
        ),
        pytest.param(
            "127.0.*.x", "invalid return code '127.0.*.x': bad octet 'x'", id="wildcard-octet-text"
        ),
        pytest.param(
            "127.*.3",
            "invalid return code '127.*.3': expected four octets",
            id="wildcard-three-octets",
        ),
        pytest.param("&0", "bit mask '&0' must set at least one bit", id="mask-0"),
        pytest.param(
            "&0.0.0.0",
            "bit mask '&0.0.0.0' must set at least one bit",
            id="mask-0-dotted",
        ),
        pytest.param("&x", "invalid bit mask '&x': write &0.0.0.4 or &4", id="mask-text"),
        pytest.param("&", "invalid bit mask '&': write &0.0.0.4 or &4", id="mask-empty"),
        pytest.param(
            "::1", "invalid return code '::1': '::1' is not an IPv4 address", id="ipv6-address"
        ),
        pytest.param(
            "2001:db8::/32",
            "invalid return code block '2001:db8::/32': ",
            id="ipv6-block",
        ),
        pytest.param(
            "localhost",
            "invalid return code 'localhost': 'localhost' is not an IPv4 address",
            id="name",
        ),
        pytest.param(
            "127.0.0.1/24",
            "invalid return code block '127.0.0.1/24': 127.0.0.1/24 has host bits set",
            id="cidr-host-bits",
        ),
        pytest.param(
            "127.0.0.0/33", "invalid return code block '127.0.0.0/33': ", id="cidr-bad-prefix"
        ),
        pytest.param("", "invalid return code '': '' is not an IPv4 address", id="empty"),
    ],
)
def test_invalid_code_says_why(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_return_code(spec)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    "value",
    [pytest.param(2130706434, id="integer"), pytest.param(None, id="null")],
)
def test_from_config_wants_a_string(value: object) -> None:
    with pytest.raises(ValueError, match=r"expected a return code such as 127\.0\.0\.2, got "):
        ReturnCode.from_config(value)


def test_from_config_parses_a_string() -> None:
    assert ReturnCode.from_config("127.0.0.4-127.0.0.7") == parse_return_code("127.0.0.4-127.0.0.7")


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        pytest.param("127.255.255.0", True, id="first"),
        pytest.param("127.255.255.252", True, id="spamhaus-typo-in-zone"),
        pytest.param("127.255.255.254", True, id="spamhaus-public-resolver"),
        pytest.param("127.255.255.255", True, id="spamhaus-excessive-queries"),
        pytest.param("127.255.254.255", False, id="just-below"),
        pytest.param("128.0.0.0", False, id="just-above"),
        pytest.param("127.0.0.2", False, id="a-listing"),
        pytest.param("127.0.0.255", False, id="dnswl-error-is-list-specific"),
    ],
)
def test_blocked_codes_are_127_255_255_0_24(address: str, blocked: bool) -> None:
    assert BLOCKED_CODES.matches(ip(address)) is blocked
