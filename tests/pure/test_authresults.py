"""The Authentication-Results header spamgate writes, and how it recognises one claiming to be
its own (RFC 8601)."""

from __future__ import annotations

import pytest

from spamgate.core.authresults import (
    MethodResult,
    claimed_authserv_id,
    claims,
    header_value,
)


def test_a_header_without_results_says_none() -> None:
    assert header_value("mx.example.net", []) == "mx.example.net; none"


def test_each_result_is_a_folded_clause_in_order() -> None:
    value = header_value(
        "mx.example.net",
        [
            MethodResult("spf", "pass", (("smtp.mailfrom", "alice@example.com"),)),
            MethodResult("dkim", "fail", (("header.d", "example.com"), ("header.s", "sel1"))),
            MethodResult("dmarc", "fail", (("header.from", "example.com"),), "p=reject"),
        ],
    )
    assert value == (
        "mx.example.net;\n\tspf=pass smtp.mailfrom=alice@example.com;\n\t"
        "dkim=fail header.d=example.com header.s=sel1;\n\t"
        'dmarc=fail reason="p=reject" header.from=example.com'
    )


@pytest.mark.parametrize(
    ("identity", "shown"),
    [
        ('"odd; local"@example.com', '"\\"odd; local\\"@example.com"'),
        ("caf\u00e9@example.com", '"caf?@example.com"'),
        ("a\r\nX-Injected: yes", '"a??X-Injected: yes"'),
        ("", '""'),
    ],
)
def test_hostile_identities_stay_inside_one_quoted_value(identity: str, shown: str) -> None:
    value = header_value("mx", [MethodResult("spf", "fail", (("smtp.mailfrom", identity),))])
    assert value == f"mx;\n\tspf=fail smtp.mailfrom={shown}"
    # No line break a sender chose: only our own folding ("\n\t") remains.
    assert "\r" not in value
    assert value.count("\n") == 1


def test_a_long_reason_is_cut() -> None:
    value = header_value("mx", [MethodResult("dkim", "fail", reason="x" * 5000)])
    assert len(value) < 260


@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        ("mx.example.net; spf=pass smtp.mailfrom=example.com", "mx.example.net"),
        ("MX.Example.NET 1; none", "mx.example.net"),
        ("  (a comment (nested)) mx.example.net; dkim=pass", "mx.example.net"),
        ('"mx.example.net"; none', "mx.example.net"),
        ("mx.example.net(comment); none", "mx.example.net"),
        ("", None),
        ("   ", None),
        ("(never closed mx.example.net; none", None),
        ("(" * 20 + "deep" + ")" * 20 + " mx.example.net", None),
        ('"unterminated; none', None),
        ("; spf=pass", None),
    ],
)
def test_the_authserv_id_a_header_claims(value: str, claimed: str | None) -> None:
    assert claimed_authserv_id(value) == claimed


def test_only_our_own_id_is_claimed() -> None:
    assert claims("mx.example.net; spf=pass", "MX.example.net")
    assert not claims("mx.example.net.evil; spf=pass", "mx.example.net")
    assert not claims("other.example; spf=pass", "mx.example.net")


def test_huge_and_garbage_values_are_read_in_bounded_time() -> None:
    assert claimed_authserv_id("(" * 100_000) is None
    assert claimed_authserv_id(" " * 100_000 + "mx") is None  # beyond what is read
    assert claimed_authserv_id("\x00\udcff mx") == "\x00\udcff"
