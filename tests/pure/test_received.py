"""Received fields as hops: each MTA's common form, garbage, and the hop our hosts received."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from spamgate.core.received import Hop, client_hop, parse_received

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


_OURS = ("mx.example.com", "store.example.com")
_NETS = (ipaddress.ip_network("10.0.0.0/8"),)
_EXTERNAL = f"from friend (friend.example.net [198.51.100.7]) by mx.example.com; {_DATE}"
_INTERNAL = f"from mx.example.com (mx.example.com [10.0.0.2]) by store.example.com; {_DATE}"
_FORGED = f"from liar (liar [203.0.113.9]) by mx.example.com; {_DATE}"


@pytest.mark.parametrize(
    ("values", "expected_address"),
    [
        pytest.param([_EXTERNAL, _FORGED], _A, id="topmost-ours-wins-over-forged-below"),
        pytest.param([_INTERNAL, _EXTERNAL], _A, id="our-relay-hop-passed-over"),
        pytest.param(
            [f"from x (x [198.51.100.7]) by [10.0.0.3]; {_DATE}"], _A, id="by-our-address"
        ),
        pytest.param(
            [f"from x (x [198.51.100.7]) by other.example; {_DATE}"], None, id="not-by-ours"
        ),
        pytest.param([_INTERNAL], None, id="only-internal"),
        pytest.param([], None, id="no-received"),
    ],
)
def test_client_hop(values: list[str], expected_address: object) -> None:
    hop = client_hop(values, _OURS, _NETS)
    assert (hop.address if hop else None) == expected_address
