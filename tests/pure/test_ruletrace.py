"""ruletrace: what a fired rule tested and the value it fired on, as `spamgate explain` shows
it under the hit. Each row is a rule that fires on its facts (checked with the RuleBook, so a
trace never explains a rule that would not fire) and the line explain prints for it."""

from __future__ import annotations

import datetime

import pytest

from spamgate.core.headerfacts import HeaderView
from spamgate.core.rules import EnvelopeFacts, Facts, MessageFacts, Stage
from spamgate.core.ruletrace import MAX_SHOWN, shown, trace
from tests.rules_harness import DAY, HOUR, book, confirmed, connection, envelope, fired, rule

END = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
Fields = tuple[tuple[str, str], ...]


def viewed(*fields: tuple[str, str]) -> Facts:
    """A message whose facts are read from `fields` (a session keeps them for fact rules)."""
    return Facts(message=MessageFacts(header_view=HeaderView.of(list(fields), END)))


def counted(**counts: int) -> Facts:
    return Facts(message=MessageFacts(header_counts=counts))


SHOUT = ("Subject", "CHEAP WATCHES TODAY ONLY")
CASES = [
    pytest.param(
        "fact: {name: subject.caps_ratio, over: 0.9}",
        viewed(SHOUT),
        (),
        "fact subject.caps_ratio = 1 (over 0.9)",
        id="fact-number-over",
    ),
    pytest.param(
        "fact: {name: subject.caps_ratio, under: 0.25}",
        viewed(("Subject", "Minutes of the meeting today, OK")),
        (),
        "fact subject.caps_ratio = 0.12 (under 0.25)",
        id="fact-number-under-rounded",
    ),
    pytest.param(
        "fact: {name: message_id.from_domain, is: false}",
        viewed(("From", "a@example.com"), ("Message-ID", "<1@bulk.example.net>")),
        (),
        "fact message_id.from_domain = false (is false)",
        id="fact-boolean",
    ),
    pytest.param(
        "fact: {name: mailer, matches: '(?i)^the bat'}",
        viewed(("X-Mailer", "The Bat! (v1.61)")),
        (),
        'fact mailer = "The Bat! (v1.61)" (matches "(?i)^the bat")',
        id="fact-text",
    ),
    pytest.param(
        "fact: {name: subject.punctuation, over: 2}",
        viewed(("Subject", "Win $$$ now!!! \x1b[2J")),
        (),
        "fact subject.punctuation = 6 (over 2)",
        id="fact-count",
    ),
    pytest.param(
        "header: {name: Subject, matches: '(?i)viagra'}",
        Facts(message=MessageFacts(header_hits=frozenset({"R"}))),
        (("subject", "hello"), ("Subject", "Cheap VIAGRA now")),
        'header Subject matches "(?i)viagra": "Cheap VIAGRA now"',
        id="header-matches-the-field-that-matched",
    ),
    pytest.param(
        "header: {name: Subject, matches: 'café'}",
        Facts(message=MessageFacts(header_hits=frozenset({"R"}))),
        (("Subject", "=?utf-8?q?caf=C3=A9?="),),
        'header Subject matches "café": "café"',
        id="header-matches-decoded",
    ),
    pytest.param(
        r"header: {name: X-Raw, matches_raw: '\xff'}",
        Facts(message=MessageFacts(header_hits=frozenset({"R"}))),
        (("X-Raw", "caf\udcff\x1b"),),
        r'header X-Raw matches_raw "\\xff": "caf\xff\x1b"',
        id="header-matches-raw-escaped",
    ),
    pytest.param(
        "header: {name: Date, missing: true}",
        counted(),
        (),
        "header Date: none (missing)",
        id="header-missing",
    ),
    pytest.param(
        "header: {name: Received, count_over: 1}",
        counted(received=3),
        (("Received", "a"), ("Received", "b"), ("Received", "c")),
        "header Received count = 3 (over 1)",
        id="header-count-over",
    ),
    pytest.param(
        "header: {name: Date, malformed: true}",
        Facts(message=MessageFacts(malformed=frozenset({"date"}))),
        (("Date", "Wed, 01 May 2024 12:00:00 +0000"), ("Date", "yesterday\n\tnoon")),
        'header Date = "yesterday\\x09noon" (malformed)',
        id="header-malformed-the-bad-one",
    ),
    pytest.param(
        "helo: bare_ip", connection("192.0.2.1"), (), 'helo = "192.0.2.1" (bare_ip)', id="helo"
    ),
    pytest.param(
        "helo_matches: '^dyn-'",
        connection("dyn-7.example"),
        (),
        'helo = "dyn-7.example" (matches "^dyn-")',
        id="helo-matches",
    ),
    pytest.param(
        "rdns_matches: 'pool'",
        connection("x", rdns=confirmed("pool-7.isp.example")),
        (),
        'rdns = "pool-7.isp.example", confirmed (matches "pool")',
        id="rdns-matches",
    ),
    pytest.param("sender: empty", envelope(""), (), 'sender = "<>" (empty)', id="sender-empty"),
    pytest.param(
        "recipient_matches: '^trap@'",
        envelope(recipients=("user@example.com", "trap@example.com")),
        (),
        'recipient = "trap@example.com" (matches "^trap@")',
        id="recipient-matches-the-one",
    ),
    pytest.param(
        "recipients_over: 1",
        envelope(recipients=("a@example.com", "b@example.com")),
        (),
        "recipients = 2 (over 1)",
        id="recipients-over",
    ),
    pytest.param(
        "date_ahead_hours: 24",
        Facts(message=MessageFacts(date_skew=30 * HOUR)),
        (),
        "date skew = +30.0 hours (ahead over 24 hours)",
        id="date-ahead",
    ),
    pytest.param(
        "date_behind_days: 365",
        Facts(message=MessageFacts(date_skew=-400 * DAY)),
        (),
        "date skew = -400.0 days (behind over 365 days)",
        id="date-behind",
    ),
    pytest.param(
        "from_domain: not_sender_domain",
        Facts(
            envelope=EnvelopeFacts("x@spam.example"),
            message=MessageFacts(from_domains=("bank.example",)),
        ),
        (),
        'from_domain = "bank.example", sender domain "spam.example" (not_sender_domain)',
        id="from-domain",
    ),
]


@pytest.mark.parametrize(("condition", "facts", "fields", "expected"), CASES)
def test_trace_shows_what_the_rule_tested_and_the_value(
    condition: str, facts: Facts, fields: Fields, expected: str
) -> None:
    rulebook = book(rule("R", condition))
    assert fired(rulebook, Stage.MESSAGE, facts) == {"R"}  # the rule does fire on these facts
    assert trace(rulebook.rules[0], facts, fields) == expected


def test_a_composite_names_its_parts() -> None:
    rulebook = book(
        rule("A", "helo: bare_ip"),
        rule("B", "sender: empty"),
        rule("C", "composite: {all: [A], any: [B]}"),
    )
    assert trace(rulebook.rules[2], Facts()) == "composite all A; any B"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain text", '"plain text"', id="plain"),
        pytest.param("red \x1b[31m", '"red \\x1b[31m"', id="escape-sequence"),
        pytest.param("a\r\nb\x00", '"a\\x0d\\x0ab\\x00"', id="line-ends-and-nul"),
        pytest.param("\u202egnp.exe", '"\\u202egnp.exe"', id="bidi-override"),
        pytest.param("caf\udcff", '"caf\\xff"', id="undecodable-byte"),
        pytest.param('say "hi" \\', '"say \\"hi\\" \\\\"', id="quotes-escaped"),
        pytest.param("café ünïcode", '"café ünïcode"', id="printable-unicode-kept"),
        pytest.param("x" * 200, '"' + "x" * MAX_SHOWN + '"...', id="cut"),
        pytest.param("x" * 79 + "\x1b", '"' + "x" * 79 + '"...', id="cut-before-an-escape"),
    ],
)
def test_shown_is_quoted_printable_and_cut(text: str, expected: str) -> None:
    assert shown(text) == expected
