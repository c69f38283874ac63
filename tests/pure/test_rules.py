r"""RuleBook: which rules fire at which stage, given plain facts; and header patterns.

Policies are built from YAML as an admin writes them, facts from the frozen dataclasses the
session fills in. Every case asserts the exact set of rules that fired, so a rule that fires
where it should not is caught as surely as one that stays silent.
"""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from spamgate.core import schema
from spamgate.core.policy import Policy
from spamgate.core.rules import (
    ConnectionFacts,
    EnvelopeFacts,
    Facts,
    MessageFacts,
    RuleBook,
    Stage,
)
from spamgate.dns.rdns import RdnsStatus, ReverseDns

# -- helpers -----------------------------------------------------------------------------------


def rule(name: str, condition: str) -> str:
    """One rule as a YAML list item; `condition` is the rest of its flow mapping."""
    return f"  - {{name: {name}, score: 1, description: {name.lower()}, {condition}}}\n"


def load(text: str) -> Policy:
    return schema.load(Policy, text, "t.yaml")


def book(*rules: str, prefix: str = "") -> RuleBook:
    listed = "".join(rules) if rules else "  []\n"
    return RuleBook(load(prefix + "rules:\n" + listed))


def fired(
    rulebook: RuleBook, stage: Stage, facts: Facts, list_hits: tuple[str, ...] = ()
) -> set[str]:
    return {r.name for r in rulebook.fire(stage, facts, list_hits)}


def connection(
    helo: str = "",
    *,
    rdns: ReverseDns | None = None,
    helo_resolves: bool | None = None,
) -> Facts:
    return Facts(
        connection=ConnectionFacts(
            address=ipaddress.ip_address("192.0.2.60"),
            helo=helo,
            rdns=rdns if rdns is not None else ReverseDns(RdnsStatus.UNKNOWN),
            helo_resolves=helo_resolves,
            our_names=OUR_NAMES,
            our_addresses=OUR_ADDRESSES,
        )
    )


def confirmed(name: str) -> ReverseDns:
    return ReverseDns(RdnsStatus.CONFIRMED, (name,), confirmed_name=name)


def unconfirmed(*names: str) -> ReverseDns:
    return ReverseDns(RdnsStatus.UNCONFIRMED, names)


def envelope(
    sender: str = "someone@client.example",
    *,
    resolves: bool | None = None,
    recipients: tuple[str, ...] = ("user@example.com",),
) -> Facts:
    return Facts(envelope=EnvelopeFacts(sender, resolves, recipients))


# Session normalizes our names (normalize_domain) before they reach the facts.
OUR_NAMES = frozenset({"mx.spamgate.test"})
OUR_ADDRESSES = (
    ipaddress.ip_network("198.51.100.25/32"),
    ipaddress.ip_network("2001:db8:25::/64"),
)

# -- HELO ----------------------------------------------------------------------------------------

HELO_BOOK = book(
    rule("BARE_IP", "helo: bare_ip"),
    rule("NOT_FQDN", "helo: not_fqdn"),
    rule("OURS", "helo: ours"),
    rule("UNRESOLVABLE", "helo: unresolvable"),
    rule("NOT_PTR", "helo: not_ptr_domain"),
)


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        pytest.param("192.0.2.61", {"BARE_IP"}, id="bare-ipv4"),
        pytest.param("[192.0.2.61]", set(), id="bracketed-ipv4-literal-is-fine"),
        pytest.param("2001:db8::61", {"BARE_IP"}, id="bare-ipv6"),
        pytest.param("[IPv6:2001:db8::61]", set(), id="ipv6-literal-is-fine"),
        pytest.param("[2001:db8::61]", set(), id="bracketed-ipv6-without-tag-is-fine"),
        pytest.param(" 192.0.2.61 ", {"BARE_IP"}, id="bare-ipv4-with-spaces"),
        pytest.param("localhost", {"NOT_FQDN"}, id="single-label"),
        pytest.param("host.123", {"NOT_FQDN"}, id="numeric-tld"),
        pytest.param("mail..example", {"NOT_FQDN"}, id="empty-label"),
        pytest.param("192.0.2.61.", {"NOT_FQDN"}, id="address-with-trailing-dot-is-no-address"),
        pytest.param("mail.client.example", set(), id="fqdn"),
        pytest.param("mail.client.example.", set(), id="fqdn-trailing-dot"),
        pytest.param("mx.spamgate.test", {"OURS"}, id="ours-by-name"),
        pytest.param("MX.Spamgate.Test.", {"OURS"}, id="ours-by-name-any-case-trailing-dot"),
        pytest.param("other.spamgate.test", set(), id="sibling-of-our-name-is-not-us"),
        pytest.param("[198.51.100.25]", {"OURS"}, id="ours-by-ipv4-literal"),
        pytest.param("198.51.100.25", {"BARE_IP", "OURS"}, id="ours-by-bare-ipv4"),
        pytest.param("[198.51.100.26]", set(), id="ipv4-literal-outside-our-networks"),
        pytest.param("[IPv6:2001:db8:25::7]", {"OURS"}, id="ours-by-ipv6-literal-in-network"),
        pytest.param("[ipv6:2001:DB8:25::7]", {"OURS"}, id="ours-ipv6-tag-any-case"),
        pytest.param("2001:db8:25::7", {"BARE_IP", "OURS"}, id="ours-by-bare-ipv6"),
        pytest.param("[IPv6:2001:db8:26::7]", set(), id="ipv6-literal-outside-our-networks"),
        pytest.param("", set(), id="empty"),
        pytest.param("   ", set(), id="blank"),
    ],
)
def test_helo_checks(helo: str, expected: set[str]) -> None:
    assert fired(HELO_BOOK, Stage.CONNECTION, connection(helo)) == expected


@pytest.mark.parametrize(
    ("helo", "resolves", "expected"),
    [
        pytest.param("mail.client.example", False, {"UNRESOLVABLE"}, id="does-not-resolve"),
        pytest.param("mail.client.example", True, set(), id="resolves"),
        pytest.param("mail.client.example", None, set(), id="dns-failed-is-no-evidence"),
        pytest.param("", False, set(), id="no-helo"),
    ],
)
def test_helo_unresolvable(helo: str, resolves: bool | None, expected: set[str]) -> None:
    facts = connection(helo, helo_resolves=resolves)
    assert fired(HELO_BOOK, Stage.CONNECTION, facts) == expected


@pytest.mark.parametrize(
    ("helo", "rdns", "expected"),
    [
        pytest.param("mail.client.example", confirmed("mail.client.example"), set(), id="same"),
        pytest.param("mail.client.example", confirmed("gw.client.example"), set(), id="same-org"),
        pytest.param(
            "MAIL.Client.Example.", confirmed("mx.client.example"), set(), id="same-org-any-case"
        ),
        pytest.param(
            "mail.client.example", confirmed("mail.other.test"), {"NOT_PTR"}, id="other-org"
        ),
        pytest.param(
            "mail.client.example", unconfirmed("gw.other.test"), {"NOT_PTR"}, id="unconfirmed-ptr"
        ),
        pytest.param(
            "mail.example.co.uk", confirmed("mx.example.co.uk"), set(), id="same-org-under-co-uk"
        ),
        pytest.param(
            "example.co.uk", confirmed("smtp.example.co.uk"), set(), id="org-itself-under-co-uk"
        ),
        pytest.param(
            "mail.example.co.uk",
            confirmed("mail.other.co.uk"),
            {"NOT_PTR"},
            id="co-uk-is-a-public-suffix-not-an-org",
        ),
        pytest.param(
            "mail.client.example", ReverseDns(RdnsStatus.MISSING), set(), id="no-ptr-missing"
        ),
        pytest.param(
            "mail.client.example",
            ReverseDns(RdnsStatus.UNKNOWN, detail="timeout"),
            set(),
            id="no-ptr-unknown",
        ),
        pytest.param("[192.0.2.60]", confirmed("x.other.test"), set(), id="literal-is-not-a-name"),
        pytest.param(
            "localhost", confirmed("x.other.test"), {"NOT_FQDN"}, id="single-label-is-not-fqdn"
        ),
    ],
)
def test_helo_not_ptr_domain(helo: str, rdns: ReverseDns, expected: set[str]) -> None:
    assert fired(HELO_BOOK, Stage.CONNECTION, connection(helo, rdns=rdns)) == expected


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        pytest.param("Friend.client.example", {"FRIEND"}, id="matches"),
        pytest.param("client.friend.example", set(), id="anchored"),
        pytest.param("", set(), id="no-helo"),
    ],
)
def test_helo_matches(helo: str, expected: set[str]) -> None:
    rulebook = book(rule("FRIEND", "helo_matches: '(?i)^friend'"))
    assert fired(rulebook, Stage.CONNECTION, connection(helo)) == expected


# -- reverse DNS ---------------------------------------------------------------------------------

RDNS_BOOK = book(
    rule("MISSING", "rdns: missing"),
    rule("UNCONFIRMED", "rdns: unconfirmed"),
    rule("DYNAMIC", "rdns: dynamic"),
)


@pytest.mark.parametrize(
    ("rdns", "expected"),
    [
        pytest.param(ReverseDns(RdnsStatus.MISSING), {"MISSING"}, id="missing"),
        pytest.param(unconfirmed("gw.other.test"), {"UNCONFIRMED"}, id="unconfirmed"),
        pytest.param(confirmed("mail.client.example"), set(), id="confirmed"),
        pytest.param(ReverseDns(RdnsStatus.UNKNOWN), set(), id="unknown-is-no-evidence"),
        pytest.param(
            ReverseDns(RdnsStatus.UNKNOWN, detail="servfail"), set(), id="servfail-is-no-evidence"
        ),
        pytest.param(
            unconfirmed("dsl-198-51-100-7.isp.example"),
            {"UNCONFIRMED", "DYNAMIC"},
            id="unconfirmed-and-dynamic",
        ),
        pytest.param(confirmed("dsl-198-51-100-7.isp.example"), {"DYNAMIC"}, id="dynamic"),
        pytest.param(
            ReverseDns(
                RdnsStatus.CONFIRMED,
                ("dsl-198-51-100-7.isp.example", "mail.client.example"),
                confirmed_name="mail.client.example",
            ),
            set(),
            id="confirmed-name-is-judged-not-first-ptr",
        ),
    ],
)
def test_rdns_checks(rdns: ReverseDns, expected: set[str]) -> None:
    assert fired(RDNS_BOOK, Stage.CONNECTION, connection(rdns=rdns)) == expected


# What the default reverse_dns.dynamic_patterns call dynamic. Changing the patterns changes
# which clients are scored as residential: this table is their contract.
DEFAULT_DYNAMIC = [
    pytest.param("dsl-198-51-100-7.isp.example", True, id="dsl-word-and-address"),
    pytest.param("192-0-2-10.example", True, id="dashed-address"),
    pytest.param("192-0-2-10.isp.example", True, id="dashed-address-subdomain"),
    pytest.param("198.51.100.7.example", True, id="dotted-address"),
    pytest.param("host-203-0-113-9.example.net", True, id="prefixed-dashed-address"),
    pytest.param("c-98-207-45-12.hsd1.ca.comcast.net", True, id="cable-style"),
    pytest.param("cpe-70-112-34-5.austin.res.rr.com", True, id="cpe-style"),
    pytest.param("pool-12.example", True, id="pool-word-number"),
    pytest.param("ppp.42.example.net", True, id="ppp-dot-number"),
    pytest.param("adsl7.example.net", True, id="adsl-number"),
    pytest.param("dynamic-7.example.net", True, id="dynamic-number"),
    pytest.param("mail.client.example", False, id="mail-host"),
    pytest.param("customer.example.com", False, id="customer-without-number"),
    pytest.param("pool.ntp.org", False, id="pool-without-number"),
    pytest.param("dynamic.example.net", False, id="dynamic-without-number"),
    pytest.param("mx1.example.com", False, id="mx1"),
    pytest.param("mail2.example.com", False, id="mail2"),
    pytest.param("smtp-out-1.example.com", False, id="one-number"),
    pytest.param("mx01.dc1.example.com", False, id="numbered-datacenter"),
    pytest.param("a1.b2.c3.d4.example", False, id="digits-inside-labels"),
    pytest.param("mta-1-2.example.com", False, id="two-numbers"),
]


@pytest.mark.parametrize(("name", "dynamic"), DEFAULT_DYNAMIC)
def test_default_dynamic_patterns(name: str, dynamic: bool) -> None:
    expected = {"DYNAMIC"} if dynamic else set()
    assert fired(RDNS_BOOK, Stage.CONNECTION, connection(rdns=confirmed(name))) == expected


def test_default_dynamic_patterns_match_their_documented_example() -> None:
    facts = connection(rdns=confirmed("host.10.2.0.192.example"))
    assert fired(RDNS_BOOK, Stage.CONNECTION, facts) == {"DYNAMIC"}


@pytest.mark.parametrize(
    ("patterns", "name", "dynamic"),
    [
        pytest.param(r"['\.pool\.isp\.example$']", "a7.pool.isp.example", True, id="custom-hit"),
        pytest.param(
            r"['\.pool\.isp\.example$']",
            "dsl-198-51-100-7.isp.example",
            False,
            id="custom-replaces-defaults",
        ),
        pytest.param(
            r"['\.pool\.isp\.example$', '^gw-']", "gw-3.example", True, id="any-of-several"
        ),
        pytest.param("[]", "dsl-198-51-100-7.isp.example", False, id="none-never-fires"),
    ],
)
def test_custom_dynamic_patterns(patterns: str, name: str, dynamic: bool) -> None:
    rulebook = book(
        rule("DYNAMIC", "rdns: dynamic"),
        prefix=f"reverse_dns: {{dynamic_patterns: {patterns}}}\n",
    )
    expected = {"DYNAMIC"} if dynamic else set()
    assert fired(rulebook, Stage.CONNECTION, connection(rdns=confirmed(name))) == expected


@pytest.mark.parametrize(
    ("rdns", "expected"),
    [
        pytest.param(confirmed("mx.bad.example"), {"RDNS_BAD"}, id="matches"),
        pytest.param(confirmed("mx.bad.example.org"), set(), id="anchored"),
        pytest.param(confirmed("mx.good.example"), set(), id="other-name"),
        pytest.param(ReverseDns(RdnsStatus.MISSING), set(), id="no-name"),
    ],
)
def test_rdns_matches(rdns: ReverseDns, expected: set[str]) -> None:
    rulebook = book(rule("RDNS_BAD", r"rdns_matches: '\.bad\.example$'"))
    assert fired(rulebook, Stage.CONNECTION, connection(rdns=rdns)) == expected


# -- envelope ------------------------------------------------------------------------------------

SENDER_BOOK = book(
    rule("NULL_SENDER", "sender: empty"),
    rule("SENDER_UNRESOLVABLE", "sender: unresolvable"),
    rule("SENDER_BULK", "sender_matches: '^bulk-'"),
)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(envelope(""), {"NULL_SENDER"}, id="null-sender"),
        pytest.param(
            envelope("a@nope.example", resolves=False), {"SENDER_UNRESOLVABLE"}, id="unresolvable"
        ),
        pytest.param(envelope("a@client.example", resolves=True), set(), id="resolves"),
        pytest.param(envelope("a@client.example"), set(), id="dns-failed-is-no-evidence"),
        pytest.param(envelope("bulk-news@client.example"), {"SENDER_BULK"}, id="matches"),
        pytest.param(envelope("news@bulk-client.example"), set(), id="anchored"),
    ],
)
def test_sender_rules(facts: Facts, expected: set[str]) -> None:
    assert fired(SENDER_BOOK, Stage.ENVELOPE, facts) == expected


@pytest.mark.parametrize("pattern", ["^$", ".*", "^", "(?i)^(|.*@.*)$"])
def test_null_sender_never_matches_a_sender_pattern(pattern: str) -> None:
    rulebook = book(rule("ANY_SENDER", f"sender_matches: '{pattern}'"))
    assert fired(rulebook, Stage.ENVELOPE, envelope("")) == set()


def test_sender_pattern_that_matches_anything_fires_on_a_real_sender() -> None:
    rulebook = book(rule("ANY_SENDER", "sender_matches: '.*'"))
    assert fired(rulebook, Stage.ENVELOPE, envelope("a@client.example")) == {"ANY_SENDER"}


RECIPIENT_BOOK = book(
    rule("SPAMTRAP", "recipient_matches: '^trap@'"),
    rule("MANY_RCPTS", "recipients_over: 3"),
)


@pytest.mark.parametrize(
    ("recipients", "expected"),
    [
        pytest.param((), set(), id="none"),
        pytest.param(("trap@example.com",), {"SPAMTRAP"}, id="only-recipient"),
        pytest.param(("user@example.com", "trap@example.com"), {"SPAMTRAP"}, id="any-recipient"),
        pytest.param(("user@example.com", "mytrap@example.com"), set(), id="anchored"),
        pytest.param(("a@x.example", "b@x.example", "c@x.example"), set(), id="three-is-not-over"),
        pytest.param(
            ("a@x.example", "b@x.example", "c@x.example", "d@x.example"),
            {"MANY_RCPTS"},
            id="four-is-over-three",
        ),
    ],
)
def test_recipient_rules(recipients: tuple[str, ...], expected: set[str]) -> None:
    facts = envelope(recipients=recipients)
    assert fired(RECIPIENT_BOOK, Stage.ENVELOPE, facts) == expected


# -- headers -------------------------------------------------------------------------------------

HEADER_BOOK = book(
    rule("SUBJECT_PHARMA", r"header: {name: Subject, matches: '(?i)\bviagra\b'}"),
    rule("RAW_FF", r"header: {name: X-Raw, matches_raw: '\xff'}"),
    rule("RAW_CAFE", r"header: {name: X-Raw, matches_raw: 'caf\xc3\xa9'}"),
    rule("TEXT_REPLACED", r"header: {name: X-Raw, matches: '\x{FFFD}'}"),
    rule("NO_DATE", "header: {name: Date, missing: true}"),
    rule("MANY_RECEIVED", "header: {name: Received, count_over: 2}"),
    rule("BAD_DATE", "header: {name: Date, malformed: true}"),
    rule("BAD_FROM", "header: {name: FROM, malformed: true}"),
)

NOT_UTF8 = b"caf\xff".decode("utf-8", "surrogateescape")  # as pymilter passes a raw 0xFF


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("subject", "cheap VIAGRA now", {"SUBJECT_PHARMA"}, id="plain-text"),
        pytest.param(
            "subject",
            "=?utf-8?B?Y2hlYXAgVklBR1JBIG5vdw==?=",
            {"SUBJECT_PHARMA"},
            id="rfc2047-base64-decoded",
        ),
        pytest.param(
            "subject", "=?iso-8859-1?Q?cheap_viagra?=", {"SUBJECT_PHARMA"}, id="rfc2047-q-decoded"
        ),
        pytest.param("subject", "cheap\r\n viagra", {"SUBJECT_PHARMA"}, id="folded"),
        pytest.param("subject", "viagrafalls", set(), id="word-boundary"),
        pytest.param(
            "subject", "viagra " + NOT_UTF8, {"SUBJECT_PHARMA"}, id="text-with-non-utf8-byte"
        ),
        pytest.param("x-raw", NOT_UTF8, {"RAW_FF", "TEXT_REPLACED"}, id="raw-byte-ff"),
        pytest.param("x-raw", "café", {"RAW_CAFE"}, id="raw-utf8-bytes"),
        pytest.param("x-raw", "=?iso-8859-1?Q?caf=FF?=", set(), id="raw-is-not-decoded"),
        pytest.param("x-raw", "caf\\xff", set(), id="raw-escape-text-is-not-the-byte"),
        pytest.param("x-other", NOT_UTF8, set(), id="other-header"),
        pytest.param("date", "Mon, 1 Jan 2024 00:00:00 +0000", set(), id="counted-header"),
    ],
)
def test_match_header(name: str, value: str, expected: set[str]) -> None:
    assert set(HEADER_BOOK.match_header(name, value)) == expected


def message(
    *,
    header_hits: frozenset[str] = frozenset(),
    header_counts: dict[str, int] | None = None,
    malformed: frozenset[str] = frozenset(),
    date_skew: datetime.timedelta | None = None,
) -> Facts:
    """Message facts of a sender at client.example; by default one Date and one Received."""
    counts = {"date": 1, "received": 1} if header_counts is None else header_counts
    return Facts(
        envelope=EnvelopeFacts("someone@client.example"),
        message=MessageFacts(header_hits, counts, malformed, date_skew),
    )


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(message(), set(), id="clean"),
        pytest.param(
            message(header_hits=frozenset({"SUBJECT_PHARMA"})), {"SUBJECT_PHARMA"}, id="hit"
        ),
        pytest.param(
            message(header_hits=frozenset({"RAW_FF", "TEXT_REPLACED"})),
            {"RAW_FF", "TEXT_REPLACED"},
            id="raw-hit",
        ),
        pytest.param(message(header_counts={"received": 1}), {"NO_DATE"}, id="missing"),
        pytest.param(message(header_counts={"date": 0}), {"NO_DATE"}, id="counted-zero"),
        pytest.param(
            message(header_counts={"date": 1, "received": 2}), set(), id="two-is-not-over-two"
        ),
        pytest.param(
            message(header_counts={"date": 1, "received": 3}),
            {"MANY_RECEIVED"},
            id="three-is-over-two",
        ),
        pytest.param(message(malformed=frozenset({"date"})), {"BAD_DATE"}, id="malformed-date"),
        pytest.param(message(malformed=frozenset({"from"})), {"BAD_FROM"}, id="malformed-from"),
        pytest.param(message(malformed=frozenset({"to"})), set(), id="malformed-unwatched"),
    ],
)
def test_header_conditions(facts: Facts, expected: set[str]) -> None:
    assert fired(HEADER_BOOK, Stage.MESSAGE, facts) == expected


DATE_BOOK = book(
    rule("FUTURE_DATE", "date_ahead_hours: 24"),
    rule("OLD_DATE", "date_behind_days: 30"),
    rule("SOON", "date_ahead_hours: 0.5"),
)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("skew", "expected"),
    [
        pytest.param(None, set(), id="no-or-malformed-date"),
        pytest.param(datetime.timedelta(0), set(), id="now"),
        pytest.param(HOUR / 2, set(), id="half-hour-is-not-over-half-hour"),
        pytest.param(HOUR / 2 + SECOND, {"SOON"}, id="fractional-hours"),
        pytest.param(24 * HOUR, {"SOON"}, id="24h-is-not-over-24h"),
        pytest.param(24 * HOUR + SECOND, {"SOON", "FUTURE_DATE"}, id="just-over-24h"),
        pytest.param(-30 * DAY, set(), id="30d-is-not-over-30d"),
        pytest.param(-30 * DAY - SECOND, {"OLD_DATE"}, id="just-over-30d"),
        pytest.param(100 * DAY, {"SOON", "FUTURE_DATE"}, id="far-future"),
        pytest.param(-100 * DAY, {"OLD_DATE"}, id="far-past"),
    ],
)
def test_date_skew(skew: datetime.timedelta | None, expected: set[str]) -> None:
    assert fired(DATE_BOOK, Stage.MESSAGE, message(date_skew=skew)) == expected


@pytest.mark.parametrize(
    ("sender", "from_domains", "fires"),
    [
        pytest.param("someone@client.example", ("client.example",), False, id="same-domain"),
        pytest.param("someone@client.example", ("mail.client.example",), False, id="same-org"),
        pytest.param("b@bounce.client.example", ("client.example",), False, id="sender-subdomain"),
        pytest.param("a@shop.example.co.uk", ("news.example.co.uk",), False, id="same-org-co-uk"),
        pytest.param("a@shop.example.co.uk", ("other.co.uk",), True, id="other-org-co-uk"),
        pytest.param("someone@client.example", ("other.test",), True, id="other-org"),
        pytest.param(
            "someone@client.example", ("other.test", "client.example"), False, id="one-of-several"
        ),
        pytest.param("", ("other.test",), False, id="null-sender-never"),
        pytest.param("someone@client.example", (), False, id="no-from-domains-never"),
        pytest.param("someone@[192.0.2.1]", ("other.test",), False, id="literal-sender-never"),
    ],
)
def test_from_not_sender_domain(sender: str, from_domains: tuple[str, ...], fires: bool) -> None:
    rulebook = book(rule("FROM_MISMATCH", "from_domain: not_sender_domain"))
    facts = Facts(
        envelope=EnvelopeFacts(sender),
        message=MessageFacts(from_domains=from_domains),
    )
    assert fired(rulebook, Stage.MESSAGE, facts) == ({"FROM_MISMATCH"} if fires else set())


# -- composites ----------------------------------------------------------------------------------

COMPOSITE_BOOK = book(
    rule("HELO_BARE_IP", "helo: bare_ip"),
    rule("RDNS_MISSING", "rdns: missing"),
    rule("BOTH", "composite: {all: [HELO_BARE_IP, RDNS_MISSING]}"),
    rule("EITHER", "composite: {any: [HELO_BARE_IP, RDNS_MISSING]}"),
    rule("LISTED_BARE", "composite: {all: [ZEN_SBL], any: [HELO_BARE_IP, RDNS_MISSING]}"),
    rule("BARE_UNLISTED", "composite: {all: [HELO_BARE_IP], not: [ZEN_SBL, ZEN_PBL]}"),
    rule("WORST", "composite: {all: [BOTH, ZEN_PBL]}"),
    prefix="""
ip_lists:
  - name: ZEN
    zone: zen.test
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 7}
""",
)
MISSING = ReverseDns(RdnsStatus.MISSING)


@pytest.mark.parametrize(
    ("helo", "rdns", "list_hits", "expected"),
    [
        pytest.param("mail.client.example", None, (), set(), id="nothing"),
        pytest.param(
            "192.0.2.60", None, (), {"HELO_BARE_IP", "EITHER", "BARE_UNLISTED"}, id="bare-ip"
        ),
        pytest.param(
            "mail.client.example", MISSING, (), {"RDNS_MISSING", "EITHER"}, id="rdns-missing"
        ),
        pytest.param(
            "192.0.2.60",
            MISSING,
            (),
            {"HELO_BARE_IP", "RDNS_MISSING", "BOTH", "EITHER", "BARE_UNLISTED"},
            id="all-of-two",
        ),
        pytest.param(
            "192.0.2.60",
            MISSING,
            ("ZEN_SBL",),
            {"HELO_BARE_IP", "RDNS_MISSING", "BOTH", "EITHER", "LISTED_BARE"},
            id="list-hit-in-all-and-not",
        ),
        pytest.param("mail.client.example", None, ("ZEN_SBL",), set(), id="all-without-any"),
        pytest.param(
            "192.0.2.60",
            MISSING,
            ("ZEN_PBL",),
            {"HELO_BARE_IP", "RDNS_MISSING", "BOTH", "EITHER", "WORST"},
            id="composite-of-composite-and-list-hit",
        ),
        pytest.param("192.0.2.60", None, ("ZEN_PBL",), {"HELO_BARE_IP", "EITHER"}, id="not-blocks"),
    ],
)
def test_composites(
    helo: str, rdns: ReverseDns | None, list_hits: tuple[str, ...], expected: set[str]
) -> None:
    facts = connection(helo, rdns=rdns)
    assert fired(COMPOSITE_BOOK, Stage.CONNECTION, facts, list_hits) == expected


TRIAL_BOOK = book(
    rule("HELO_BARE_IP", "helo: bare_ip"),
    rule("RDNS_MISSING", "rdns: missing, mode: observe"),
    rule("BOT", "composite: {all: [HELO_BARE_IP, RDNS_MISSING]}"),
    rule("LISTED_BARE", "composite: {all: [ZEN_SBL, HELO_BARE_IP]}"),
    rule("BARE_NO_RDNS_RULE", "composite: {all: [HELO_BARE_IP], not: [RDNS_MISSING]}"),
    rule("BOT_AGAIN", "composite: {all: [BOT]}"),
    prefix="""
ip_lists:
  - name: ZEN
    zone: zen.test
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10}
""",
)


@pytest.mark.parametrize(
    ("rdns", "list_hits", "trial_list_hits", "expected"),
    [
        pytest.param(
            MISSING,
            (),
            (),
            {
                "HELO_BARE_IP": "enforce",
                "RDNS_MISSING": "observe",
                "BOT": "observe",
                "BARE_NO_RDNS_RULE": "enforce",
                "BOT_AGAIN": "observe",
            },
            id="composite-of-a-rule-on-trial-is-on-trial",
        ),
        pytest.param(
            None,
            (),
            ("ZEN_SBL",),
            {"HELO_BARE_IP": "enforce", "LISTED_BARE": "observe", "BARE_NO_RDNS_RULE": "enforce"},
            id="composite-of-a-list-on-trial-is-on-trial",
        ),
        pytest.param(
            None,
            ("ZEN_SBL",),
            (),
            {"HELO_BARE_IP": "enforce", "LISTED_BARE": "enforce", "BARE_NO_RDNS_RULE": "enforce"},
            id="composite-of-counted-hits-counts",
        ),
    ],
)
def test_composites_of_hits_on_trial(
    rdns: ReverseDns | None,
    list_hits: tuple[str, ...],
    trial_list_hits: tuple[str, ...],
    expected: dict[str, str],
) -> None:
    """A rule or list on trial is a dry run however the policy combines it (issue 14)."""
    facts = connection("192.0.2.60", rdns=rdns)
    rules = TRIAL_BOOK.fire(Stage.CONNECTION, facts, list_hits, trial_list_hits)
    assert {r.name: r.mode.value for r in rules} == expected


# -- stages --------------------------------------------------------------------------------------

STAGE_BOOK = book(
    rule("HELO_BARE_IP", "helo: bare_ip"),
    rule("NULL_SENDER", "sender: empty"),
    rule("SUBJECT_X", "header: {name: Subject, matches: x}"),
    rule("NO_DATE", "header: {name: Date, missing: true}"),
    rule("FUTURE_DATE", "date_ahead_hours: 1"),
    rule("COMP_CONN", "composite: {all: [HELO_BARE_IP, ZEN_SBL, DBL_CONN]}"),
    rule("COMP_ENV", "composite: {all: [HELO_BARE_IP], any: [DBL_ENV, DBL_SENDER]}"),
    rule("COMP_MSG", "composite: {all: [HELO_BARE_IP], not: [SUBJECT_X]}"),
    rule("COMP_LIST_MSG", "composite: {all: [DBL_ALL]}"),
    rule("COMP_OF_COMP", "composite: {all: [COMP_MSG]}"),
    prefix="""
ip_lists:
  - {name: ZEN, zone: zen.test, hits: [{name: ZEN_SBL, codes: [127.0.0.2], score: 10}]}
domain_lists:
  - {name: DBL_CONN, zone: a.test, score: 1, check_names: [helo, ptr]}
  - {name: DBL_PTR, zone: b.test, score: 1, check_names: [ptr]}
  - {name: DBL_ENV, zone: c.test, score: 1, check_names: [helo, sender]}
  - {name: DBL_SENDER, zone: d.test, score: 1, check_names: [sender]}
  - {name: DBL_ALL, zone: e.test, score: 1}
  - {name: DBL_FROM, zone: f.test, score: 1, check_names: [ptr, from]}
  - {name: DBL_REPLY, zone: g.test, score: 1, check_names: [reply_to]}
""",
)


@pytest.mark.parametrize(
    ("name", "stage"),
    [
        pytest.param("ZEN_SBL", Stage.CONNECTION, id="ip-list"),
        pytest.param("DBL_CONN", Stage.CONNECTION, id="domain-list-helo-ptr"),
        pytest.param("DBL_PTR", Stage.CONNECTION, id="domain-list-ptr"),
        pytest.param("DBL_ENV", Stage.ENVELOPE, id="domain-list-helo-sender"),
        pytest.param("DBL_SENDER", Stage.ENVELOPE, id="domain-list-sender"),
        pytest.param("DBL_ALL", Stage.MESSAGE, id="domain-list-default-sources"),
        pytest.param("DBL_FROM", Stage.MESSAGE, id="domain-list-from"),
        pytest.param("DBL_REPLY", Stage.MESSAGE, id="domain-list-reply-to"),
        pytest.param("HELO_BARE_IP", Stage.CONNECTION, id="helo-rule"),
        pytest.param("NULL_SENDER", Stage.ENVELOPE, id="sender-rule"),
        pytest.param("SUBJECT_X", Stage.MESSAGE, id="header-rule"),
        pytest.param("FUTURE_DATE", Stage.MESSAGE, id="date-rule"),
        pytest.param("COMP_CONN", Stage.CONNECTION, id="composite-of-connection-hits"),
        pytest.param("COMP_ENV", Stage.ENVELOPE, id="composite-any-of-envelope-lists"),
        pytest.param("COMP_MSG", Stage.MESSAGE, id="composite-not-of-message-rule"),
        pytest.param("COMP_LIST_MSG", Stage.MESSAGE, id="composite-of-message-list"),
        pytest.param("COMP_OF_COMP", Stage.MESSAGE, id="composite-of-message-composite"),
    ],
)
def test_stage_of(name: str, stage: Stage) -> None:
    assert STAGE_BOOK.stage_of(name) is stage


ALL_LIST_HITS = ("ZEN_SBL", "DBL_CONN", "DBL_ENV", "DBL_ALL")


def everything(header_hits: frozenset[str]) -> Facts:
    """Facts on which every plain rule of STAGE_BOOK holds, header rules included."""
    return Facts(
        connection=ConnectionFacts(helo="192.0.2.60"),
        envelope=EnvelopeFacts(""),
        message=MessageFacts(header_hits=header_hits, date_skew=2 * HOUR),
    )


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        pytest.param(Stage.CONNECTION, ["HELO_BARE_IP", "COMP_CONN"], id="connection"),
        pytest.param(
            Stage.ENVELOPE, ["HELO_BARE_IP", "NULL_SENDER", "COMP_CONN", "COMP_ENV"], id="envelope"
        ),
        pytest.param(
            Stage.MESSAGE,
            [
                "HELO_BARE_IP",
                "NULL_SENDER",
                "SUBJECT_X",
                "NO_DATE",
                "FUTURE_DATE",
                "COMP_CONN",
                "COMP_ENV",
                "COMP_LIST_MSG",
            ],
            id="message",
        ),
    ],
)
def test_fire_gates_by_stage(stage: Stage, expected: list[str]) -> None:
    # The message facts hold at every stage here (a header hit, no Date, a future date):
    # only the stage keeps MESSAGE rules and the lists behind them from firing early.
    facts = everything(frozenset({"SUBJECT_X"}))
    rules = STAGE_BOOK.fire(stage, facts, ALL_LIST_HITS)
    assert [r.name for r in rules] == expected


def test_composite_with_not_of_a_message_rule_waits_for_the_message() -> None:
    # At RCPT TO the header rule has not fired yet, so `not: [SUBJECT_X]` would hold: firing
    # the composite then would judge on evidence not yet in.
    facts = everything(frozenset())
    assert "COMP_MSG" not in fired(STAGE_BOOK, Stage.ENVELOPE, facts, ALL_LIST_HITS)
    at_message = fired(STAGE_BOOK, Stage.MESSAGE, facts, ALL_LIST_HITS)
    assert {"COMP_MSG", "COMP_OF_COMP"} <= at_message
    assert "SUBJECT_X" not in at_message


def test_composite_on_a_message_stage_list_waits_even_when_the_hit_is_in() -> None:
    facts = Facts(
        connection=ConnectionFacts(helo="mail.client.example"),
        envelope=EnvelopeFacts("someone@client.example"),
    )
    assert fired(STAGE_BOOK, Stage.ENVELOPE, facts, ("DBL_ALL",)) == set()
    assert fired(STAGE_BOOK, Stage.MESSAGE, facts, ("DBL_ALL",)) == {"COMP_LIST_MSG", "NO_DATE"}


# -- what the session must gather ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "needs"),
    [
        pytest.param((), (False, False, False), id="no-rules"),
        pytest.param(("helo: bare_ip", "helo: not_fqdn", "helo: ours"), (False,) * 3, id="helo"),
        pytest.param(("helo: not_ptr_domain",), (True, False, False), id="not-ptr-domain"),
        pytest.param(("rdns: missing",), (True, False, False), id="rdns-missing"),
        pytest.param(("rdns: dynamic",), (True, False, False), id="rdns-dynamic"),
        pytest.param(("rdns_matches: x",), (True, False, False), id="rdns-matches"),
        pytest.param(("helo_matches: x",), (False, False, False), id="helo-matches"),
        pytest.param(("helo: unresolvable",), (False, True, False), id="helo-unresolvable"),
        pytest.param(("sender: unresolvable",), (False, False, True), id="sender-unresolvable"),
        pytest.param(("sender: empty",), (False, False, False), id="sender-empty"),
        pytest.param(
            ("helo: unresolvable", "sender: unresolvable", "rdns: unconfirmed"),
            (True, True, True),
            id="all-three",
        ),
    ],
)
def test_needs(rules: tuple[str, ...], needs: tuple[bool, bool, bool]) -> None:
    rulebook = book(*(rule(f"R{i}", condition) for i, condition in enumerate(rules)))
    got = (
        rulebook.needs_rdns,
        rulebook.needs_helo_resolution,
        rulebook.needs_sender_resolution,
    )
    assert got == needs


@pytest.mark.parametrize(
    ("condition", "counted", "parsed"),
    [
        pytest.param("header: {name: Subject, matches: x}", set(), set(), id="matches"),
        pytest.param(r"header: {name: X-Raw, matches_raw: '\xff'}", set(), set(), id="raw"),
        pytest.param("header: {name: Date, missing: true}", {"date"}, set(), id="missing"),
        pytest.param(
            "header: {name: Received, count_over: 2}", {"received"}, set(), id="count-over"
        ),
        pytest.param(
            "header: {name: Reply-To, malformed: true}", set(), {"reply-to"}, id="malformed"
        ),
        pytest.param("date_ahead_hours: 1", set(), {"date"}, id="date-ahead"),
        pytest.param("date_behind_days: 1", set(), {"date"}, id="date-behind"),
        pytest.param("from_domain: not_sender_domain", set(), {"from"}, id="from-domain"),
        pytest.param("helo: bare_ip", set(), set(), id="helo"),
    ],
)
def test_counted_and_parsed_headers(condition: str, counted: set[str], parsed: set[str]) -> None:
    rulebook = book(rule("R", condition))
    assert rulebook.counted_headers == counted
    assert rulebook.parsed_headers == parsed


def test_counted_and_parsed_headers_collect_every_rule_lower_cased() -> None:
    rulebook = book(
        rule("A", "header: {name: DATE, missing: true}"),
        rule("B", "header: {name: X-Mailer, count_over: 0}"),
        rule("C", "header: {name: CC, malformed: true}"),
        rule("D", "date_behind_days: 3"),
        rule("E", "from_domain: not_sender_domain"),
    )
    assert rulebook.counted_headers == {"date", "x-mailer"}
    assert rulebook.parsed_headers == {"cc", "date", "from"}
