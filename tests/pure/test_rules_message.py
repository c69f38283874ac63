"""RuleBook on envelope and header facts, and header patterns (helpers: tests/rules_harness.py).

Every case asserts the exact set of rules that fired, so a rule that fires where it should not
is caught as surely as one that stays silent.
"""

from __future__ import annotations

import datetime

import pytest

from spamgate.core.rules import EnvelopeFacts, Facts, MessageFacts, Stage
from tests.rules_harness import DAY, HOUR, SECOND, book, envelope, fired, rule

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
