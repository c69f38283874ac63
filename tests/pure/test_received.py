"""Received fields as hops: each MTA's common form, garbage, the external hop behind our
relays, forged-looking hops and times that run backwards."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from spamgate.core.received import (
    ExternalHop,
    Hop,
    OurHosts,
    external_hop,
    forged_hops,
    parse_received,
    time_reversals,
)

_EDT = datetime.timezone(datetime.timedelta(hours=-4))
_TIME = datetime.datetime(2002, 8, 22, 7, 36, 16, tzinfo=_EDT)
_DATE = "Thu, 22 Aug 2002 07:36:16 -0400 (EDT)"
_A = ipaddress.ip_address("198.51.100.7")
_A6 = ipaddress.ip_address("2001:db8::25")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "from mail.example.org (mail.example.org [198.51.100.7])\n\tby mx.example.com"
            f" (Postfix) with ESMTP id D03E543C36\n\tfor <a@example.com>; {_DATE}",
            Hop(
                "mail.example.org",
                "mail.example.org",
                "mail.example.org",
                _A,
                "mx.example.com",
                _TIME,
            ),
            id="postfix",
        ),
        pytest.param(
            f"from HeLo.Example (unknown [198.51.100.7]) by mx.example.com (Postfix); {_DATE}",
            Hop("HeLo.Example", "HeLo.Example", "", _A, "mx.example.com", _TIME),
            id="postfix-unknown-rdns",
        ),
        pytest.param(
            f"from [198.51.100.7] (unknown [198.51.100.7]) by mx.example.com; {_DATE}",
            Hop("[198.51.100.7]", "[198.51.100.7]", "", _A, "mx.example.com", _TIME),
            id="postfix-bare-ip-helo",
        ),
        pytest.param(
            f"from x (host.example.net [IPv6:2001:db8::25]) by MX.Example.COM; {_DATE}",
            Hop("x", "x", "host.example.net", _A6, "mx.example.com", _TIME),
            id="postfix-ipv6",
        ),
        pytest.param(
            f"from h (h [IPv6:::ffff:198.51.100.7]) by mx; {_DATE}",
            Hop("h", "h", "h", _A, "mx", _TIME),
            id="ipv4-mapped-is-ipv4",
        ),
        pytest.param(
            "from lugh.tuatha.org (root@lugh.tuatha.org [198.51.100.7]) by\n"
            f"    dogma.slashnull.org (8.11.6/8.11.6) with ESMTP id g7MF; {_DATE}",
            Hop(
                "lugh.tuatha.org",
                "lugh.tuatha.org",
                "lugh.tuatha.org",
                _A,
                "dogma.slashnull.org",
                _TIME,
            ),
            id="sendmail-ident",
        ),
        pytest.param(
            f"from email.qves.com ([198.51.100.7]) by lugh.tuatha.org; {_DATE}",
            Hop("email.qves.com", "email.qves.com", "", _A, "lugh.tuatha.org", _TIME),
            id="sendmail-no-rdns",
        ),
        pytest.param(
            f"from rdns.example.net ([198.51.100.7] helo=friend) by mx (Exim 4.96); {_DATE}",
            Hop("rdns.example.net", "friend", "rdns.example.net", _A, "mx", _TIME),
            id="exim",
        ),
        pytest.param(
            f"from [198.51.100.7] (helo=friend) by mx with esmtp (Exim 4.96); {_DATE}",
            Hop("[198.51.100.7]", "friend", "", _A, "mx", _TIME),
            id="exim-no-rdns",
        ),
        pytest.param(
            f"from unknown (HELO friend) (198.51.100.7) by mx with SMTP; {_DATE}",
            Hop("unknown", "friend", "", _A, "mx", _TIME),
            id="qmail",
        ),
        pytest.param(
            f"from rdns.example.net (198.51.100.7) by mx with SMTP; {_DATE}",
            Hop("rdns.example.net", "rdns.example.net", "rdns.example.net", _A, "mx", _TIME),
            id="qmail-helo-was-rdns",
        ),
        pytest.param(
            f"(qmail 1234 invoked from network); {_DATE}",
            Hop(time=_TIME),
            id="qmail-local",
        ),
        pytest.param(
            f"(from mail@localhost) by int-mx1.example.com (8.11.6) id g7M; {_DATE}",
            Hop(by="int-mx1.example.com", time=_TIME),
            id="sendmail-local",
        ),
        pytest.param(
            "from phobos [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0)",
            Hop("phobos", "phobos", "", ipaddress.ip_address("127.0.0.1"), "localhost"),
            id="fetchmail-no-date",
        ),
        pytest.param(
            "from h (h [999.1.2.3]) by mx; not a date",
            Hop("h", "h", "h", None, "mx"),
            id="bad-address-and-date",
        ),
        pytest.param("", Hop(), id="empty"),
        pytest.param(";;;", Hop(), id="only-semicolons"),
        pytest.param("from", Hop(), id="from-alone"),
        pytest.param("by", Hop(), id="by-alone"),
        pytest.param("((((from x by y", Hop(), id="unbalanced-parentheses"),
        pytest.param(
            "from \x00\udcff (\udcfe [1.2.3.4]) by \x00",
            Hop("\x00\udcff", "\x00\udcff", "\udcfe", ipaddress.ip_address("1.2.3.4"), "\x00"),
            id="nul-and-non-utf8",
        ),
    ],
)
def test_parse_received(value: str, expected: Hop) -> None:
    assert parse_received(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("from " + "(" * 50_000 + " by x", id="deep-parentheses"),
        pytest.param("from a [" + "1" * 100_000 + "] by b", id="huge-bracket"),
        pytest.param("from x (helo=" + "y" * 100_000, id="huge-helo"),
        pytest.param(" ".join(["by"] * 50_000), id="many-by"),
    ],
)
def test_parse_received_is_total_on_huge_values(value: str) -> None:
    hop = parse_received(value)
    assert len(hop.from_name) <= 255 and len(hop.helo) <= 255 and len(hop.by) <= 255


_OURS = OurHosts.parse(["mx.example.com", "store.example.com", "10.0.0.0/8"])
_EXTERNAL = f"from friend (friend.example.net [198.51.100.7]) by mx.example.com; {_DATE}"
_INTERNAL = f"from mx.example.com (mx.example.com [10.0.0.2]) by store.example.com; {_DATE}"
_FORGED = f"from liar (liar [203.0.113.9]) by mx.example.com; {_DATE}"
# Postfix's own field on the host spamgate serves, for mail our backup MX passed on.
_FROM_BACKUP = f"from mx2 (mx2.example.com [10.0.0.9]) by store.example.com (Postfix); {_DATE}"
# The backup MX writes its own short name after `by`: its field is trusted all the same.
_AT_BACKUP = f"from bot (dsl-1.isp.example [198.51.100.7]) by mx2-internal; {_DATE}"
_FETCHMAIL = f"from store [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0); {_DATE}"
_LOCAL_FILTER = f"from mx.example.com (localhost [127.0.0.1]) by mx.example.com; {_DATE}"


@pytest.mark.parametrize(
    ("values", "expected_address", "relays_passed"),
    [
        pytest.param([_EXTERNAL, _FORGED], _A, 0, id="topmost-ours-wins-over-forged-below"),
        pytest.param([_INTERNAL, _EXTERNAL], _A, 1, id="our-relay-hop-passed-over"),
        pytest.param([_FROM_BACKUP, _AT_BACKUP], _A, 1, id="backup-mx-by-any-name"),
        pytest.param(
            [_FETCHMAIL, _LOCAL_FILTER, _EXTERNAL], _A, 1, id="fetchmail-above-and-loopback"
        ),
        pytest.param(
            [f"from x (x [198.51.100.7]) by [10.0.0.3]; {_DATE}"], _A, 0, id="by-our-address"
        ),
        pytest.param(
            [f"from x (x [198.51.100.7]) by [IPv6:2001:db8::1]; {_DATE}"],
            None,
            None,
            id="by-an-address-not-ours",
        ),
        pytest.param(
            [f"from x (x [198.51.100.7]) by other.example; {_DATE}"], None, None, id="not-by-ours"
        ),
        pytest.param([_INTERNAL], None, None, id="only-internal"),
        pytest.param([], None, None, id="no-received"),
        pytest.param(["garbage", "\udcff; by", "(" * 5000], None, None, id="garbage"),
        pytest.param([_INTERNAL] * 500, None, None, id="a-loop-of-ours-is-bounded"),
    ],
)
def test_external_hop(
    values: list[str], expected_address: object, relays_passed: int | None
) -> None:
    external = external_hop(values, _OURS)
    assert (external.hop.address if external else None) == expected_address
    assert (external.relays_passed if external else None) == relays_passed


def test_external_hop_reads_helo_and_reverse_name_as_postfix_writes_them() -> None:
    external = external_hop([_FROM_BACKUP, _AT_BACKUP], _OURS)
    assert external == ExternalHop(
        Hop("bot", "bot", "dsl-1.isp.example", _A, "mx2-internal", _TIME), 1, 1
    )


def test_no_hosts_of_ours_trusts_no_field() -> None:
    assert external_hop([_EXTERNAL], OurHosts()) is None


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(
            ["MX.example.com.", "192.0.2.25", "[2001:db8::25]", "10.0.0.0/8"],
            OurHosts(
                frozenset({"mx.example.com"}),
                (
                    ipaddress.ip_network("192.0.2.25/32"),
                    ipaddress.ip_network("2001:db8::25/128"),
                    ipaddress.ip_network("10.0.0.0/8"),
                ),
            ),
            id="names-addresses-networks",
        ),
        pytest.param(["", ".", "[]", "\udcff"], OurHosts(frozenset({"[]", "\udcff"})), id="junk"),
    ],
)
def test_our_hosts_parse(entries: list[str], expected: OurHosts) -> None:
    assert OurHosts.parse(entries) == expected


def _claim(client: str) -> list[str]:
    return [_EXTERNAL, f"from {client} by relay.example.org; {_DATE}"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(_claim("mx.example.com (dsl-9.isp.example [203.0.113.9])"), 1, id="our-name"),
        pytest.param(_claim("[10.0.0.2] (dsl-9.isp.example [203.0.113.9])"), 1, id="our-literal"),
        pytest.param(_claim("mx.example.com ([203.0.113.9])"), 1, id="our-name-no-rdns"),
        pytest.param(
            [f"from mx.example.com (unknown [203.0.113.9]) by mx.example.com; {_DATE}"],
            1,
            id="the-external-hop-itself",
        ),
        pytest.param(
            _claim("mx.example.com (mx.example.com [10.0.0.2])"), 0, id="really-ours-list-loop"
        ),
        pytest.param(
            _claim("example.com (smtp.example.com [203.0.113.9])"),
            0,
            id="verified-name-of-our-organization",
        ),
        pytest.param(_claim("mx.example.com (localhost [127.0.0.1])"), 0, id="loopback"),
        pytest.param(_claim("mx.example.com"), 0, id="no-address-recorded"),
        pytest.param(_claim("friend (friend.example.net [198.51.100.7])"), 0, id="not-ours"),
        pytest.param(_claim("\udcff (\x00 [203.0.113.9])"), 0, id="garbage"),
    ],
)
def test_forged_hops(values: list[str], expected: int) -> None:
    external = external_hop(values, _OURS)
    assert external is not None
    assert forged_hops(values, _OURS, external) == expected


def _at(hour: int) -> str:
    return f"from a (a [192.0.2.1]) by b; Thu, 22 Aug 2002 {hour:02d}:00:00 +0000"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([_at(12), _at(11), _at(10)], 0, id="in-order"),
        pytest.param([_at(12), _at(12), _at(13)], 0, id="an-hour-of-drift"),
        pytest.param([_at(12), _at(14)], 1, id="two-hours-backwards"),
        pytest.param([_at(12), "no time", _at(14)], 1, id="timeless-field-skipped"),
        pytest.param([_at(9), _at(14), _at(20)], 2, id="twice"),
        pytest.param(["garbage", "; garbage", ""], 0, id="garbage"),
        pytest.param([_at(1), _at(3)] * 100, 50, id="bounded-to-the-first-hundred"),
    ],
)
def test_time_reversals(values: list[str], expected: int) -> None:
    assert time_reversals(values) == expected


_BOT = Hop("bot", "bot", "", ipaddress.ip_address("203.0.113.9"))
_RELAY = Hop("mx2", "mx2", "mx2.example.com", ipaddress.ip_address("10.0.0.9"))


@pytest.mark.parametrize(
    ("arrival", "values", "expected"),
    [
        pytest.param(
            _BOT, [_EXTERNAL, _INTERNAL], ExternalHop(_BOT, -1, 0), id="direct-client-forged-fields"
        ),
        pytest.param(
            _RELAY,
            [_AT_BACKUP],
            ExternalHop(Hop("bot", "bot", "dsl-1.isp.example", _A, "mx2-internal", _TIME), 0, 1),
            id="from-our-relay-its-field-is-trusted",
        ),
        pytest.param(_RELAY, [], None, id="from-our-relay-without-fields"),
    ],
)
def test_external_hop_from_the_arrival(
    arrival: Hop, values: list[str], expected: ExternalHop | None
) -> None:
    # The daemon knows the client; a sender connecting directly writes every field, so a
    # field claiming `by` one of ours is never searched for.
    assert external_hop(values, _OURS, arrival) == expected


def test_forged_hops_counts_a_direct_client_claiming_our_name() -> None:
    liar = Hop("mx.example.com", "mx.example.com", "", ipaddress.ip_address("203.0.113.9"))
    external = external_hop([], _OURS, liar)
    assert external is not None and forged_hops([], _OURS, external) == 1
