"""A Session over its life: the policy generation it keeps, one log line per transaction, and the
headers it deletes or parses (the harness: tests/session_harness.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from spamgate.core import headerfacts, headers, schema
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy
from spamgate.shell.runtime import Generation
from spamgate.shell.session import RcptResult, Session
from spamgate.shell.transaction import MAX_PARSED_PER_HEADER
from tests.fakes import ScriptedLookups
from tests.session_harness import (
    BASE,
    CLIENT,
    GOOD_HEADERS,
    NXDOMAIN,
    SBL,
    TEMPFAIL_BAND,
    ZEN_Q,
    fields,
    only_line,
    start,
)

# --- a reload --------------------------------------------------------------------------------


def _with_digest(text: str, digest: str) -> Policy:
    policy = schema.load(Policy, TEMPFAIL_BAND + text, "test.yaml")
    object.__setattr__(policy, "digest", digest)  # as load_policy sets it, from the file
    return policy


def test_a_session_keeps_the_generation_it_started_with() -> None:
    """A reload installs a new generation in one assignment: a session already started keeps
    the policy, engine and resolver it started with, all of them (issue 15)."""
    harness = start(BASE, {ZEN_Q: SBL})
    runtime = harness.session.runtime
    runtime.current = Generation(Engine(_with_digest(BASE, "01d")), harness.resolver)
    session = Session(runtime)
    observing = ScriptedLookups({ZEN_Q: SBL}, default=NXDOMAIN)
    runtime.current = Generation(
        Engine(_with_digest(BASE + "mode: observe\n", "0b5")), observing, number=2
    )
    session.connect("unknown", ipaddress.ip_address(CLIENT), {})
    session.mail("<a@example.org>", False)
    assert session.rcpt("<user@example.com>").result is RcptResult.REFUSE
    session.close()
    assert (fields(harness.log[-1])["policy"], observing.calls) == ("01d", [])
    later = Session(runtime)  # the next connection gets the new generation
    later.connect("unknown", ipaddress.ip_address(CLIENT), {})
    later.mail("<a@example.org>", False)
    decision = later.rcpt("<user@example.com>")
    assert (decision.result, decision.why) == (RcptResult.CONTINUE, "observe")
    later.close()
    assert (fields(harness.log[-1])["policy"], observing.calls) == ("0b5", [ZEN_Q])


# --- one log line per transaction --------------------------------------------------------------


def test_a_new_mail_from_logs_the_previous_transaction_once() -> None:
    harness = start(BASE, {ZEN_Q: SBL})
    harness.envelope("<one@example.org>")
    harness.session.rcpt("<a@example.com>")
    harness.session.rcpt("<b@example.com>")
    harness.session.mail("<two@example.org>", False)
    assert len(harness.log) == 1
    first = fields(harness.log[0])
    assert (first["id"], first["from"], first["refused"]) == (
        "id0001",
        "<one@example.org>",
        "<a@example.com>,<b@example.com>",
    )
    harness.session.rcpt("<c@example.com>")
    harness.session.close()
    harness.session.close()
    assert len(harness.log) == 2
    second = fields(harness.log[1])
    assert (second["id"], second["from"], second["refused"]) == (
        "id0002",
        "<two@example.org>",
        "<c@example.com>",
    )
    assert harness.resolver.calls == [ZEN_Q]  # the connection's lookups serve both


def test_abort_logs_once_and_a_message_is_not_logged_again_at_close() -> None:
    harness = start(BASE)
    harness.envelope()
    harness.session.rcpt("<a@example.com>")
    harness.session.finish_transaction()  # what the adapter does on abort
    harness.session.finish_transaction()
    assert [fields(line)["stage"] for line in harness.log] == ["rcpt"]
    harness.session.mail("<two@example.org>", False)
    harness.session.rcpt("<b@example.com>")
    harness.message(GOOD_HEADERS)
    harness.session.close()
    assert [fields(line)["stage"] for line in harness.log] == ["rcpt", "eom"]


def test_a_transaction_without_a_recipient_decision_is_not_logged() -> None:
    harness = start(BASE)
    harness.envelope()
    harness.session.mail("<again@example.org>", False)
    harness.session.close()
    assert harness.log == []


# --- headers -----------------------------------------------------------------------------------


def test_foreign_spam_headers_are_deleted_highest_index_first() -> None:
    harness = start(BASE)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    outcome = harness.message(
        [
            ("X-Spam-Status", "Yes, forged"),
            ("X-Spam-Score", "-10"),
            ("X-Spam-Status", "again"),
            ("X-Spam-Status", "and again"),
            ("X-Spam-Flag", "YES"),  # read by mail clients and sieve scripts as a verdict
            ("X-Spam-Level", "***"),
            ("X-Spamd-Host", "left alone: not a verdict"),
        ]
    )
    assert outcome.delete_headers == (
        ("X-Spam-Status", 3),
        ("X-Spam-Status", 2),
        ("X-Spam-Status", 1),
        ("X-Spam-Score", 1),
        ("X-Spam-Flag", 1),
        ("X-Spam-Level", 1),
    )


def test_forged_verdict_headers_are_deleted_from_allowlisted_mail_too() -> None:
    """Allowlisted mail was accepted at RCPT, so its forged X-Spam-* headers went through."""
    harness = start(BASE + 'allow: {senders: ["a@example.org"]}\n')
    harness.envelope()
    assert harness.session.rcpt("<user@example.com>").result is RcptResult.ACCEPT_ALL
    assert harness.session.rcpt("<other@example.com>").result is RcptResult.ACCEPT_ALL
    outcome = harness.message([("X-Spam-Status", "No, forged"), ("X-Spam-Flag", "NO")])
    assert (outcome.action, outcome.add_headers) == (Action.ACCEPT, ())
    assert outcome.delete_headers == (("X-Spam-Status", 1), ("X-Spam-Flag", 1))
    line = only_line(harness)
    assert (line["allowed_by"], line["rcpt"]) == (
        "sender:a@example.org",
        "<user@example.com>,<other@example.com>",
    )


@pytest.mark.parametrize(
    ("rule", "name", "parser"),
    [
        pytest.param(
            "  - {name: BAD_FROM, score: 1, description: d, header: {name: From, malformed: true}}",
            "From",
            "header_addresses",
            id="from",
        ),
        pytest.param(
            "  - {name: OLD, score: 1, description: d, date_behind_days: 30}",
            "Date",
            "date_skew",
            id="date",
        ),
    ],
)
def test_a_repeated_header_is_parsed_at_most_three_times(
    monkeypatch: pytest.MonkeyPatch, rule: str, name: str, parser: str
) -> None:
    original: Callable[..., object] = getattr(headers, parser)
    calls: list[str] = []

    def counting(value: str, *args: object, **kwargs: object) -> object:
        calls.append(value)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(headers, parser, counting)
    harness = start(BASE + rule + "\n")
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    value = "a@example.org" if name == "From" else "Wed, 01 May 2024 12:00:00 +0000"
    harness.message([(name, value)] * 1000)
    assert MAX_PARSED_PER_HEADER == 3
    assert calls == [value] * 3


DATE_RULES = """
  - {name: FUTURE, score: 1, description: dated in the future, date_ahead_hours: 24}
  - {name: OLD, score: 1, description: dated long ago, date_behind_days: 30}
  - {name: BAD_DATE, score: 1, description: bad Date, header: {name: Date, malformed: true}}
"""


@pytest.mark.parametrize(
    ("date", "hits"),
    [
        pytest.param("Wed, 01 May 2024 12:00:00 +0000", [], id="now"),
        pytest.param("Thu, 02 May 2024 12:00:00 +0000", [], id="exactly-a-day-ahead"),
        pytest.param("Thu, 02 May 2024 14:00:01 +0200", ["FUTURE"], id="ahead-in-another-zone"),
        pytest.param("Mon, 01 Apr 2024 12:00:00 +0000", [], id="exactly-30-days-behind"),
        pytest.param("Mon, 01 Apr 2024 11:59:59 +0000", ["OLD"], id="behind"),
        pytest.param("the day after tomorrow", ["BAD_DATE"], id="malformed"),
    ],
)
def test_date_skew_is_measured_from_the_injected_now(date: str, hits: list[str]) -> None:
    harness = start(BASE + DATE_RULES)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    outcome = harness.message([("Date", date)])
    assert [hit.name for hit in outcome.verdict.hits] == hits


FACT_RULES = """
  - {name: SHOUTS, score: 1, description: shouts, fact: {name: subject.caps_ratio, over: 0.9}}
  - {name: SKEWED, score: 1, description: skewed, fact: {name: date.skew_hours, over: 1}}
"""


def test_fact_rules_read_the_fields_kept_and_the_injected_now() -> None:
    """The session keeps the fields only for a policy with fact rules, and the view it builds
    at end of message measures the Date skew from the runtime's clock (no Received field)."""
    harness = start(BASE + FACT_RULES)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    outcome = harness.message(
        [("Subject", "CHEAP WATCHES TODAY"), ("Date", "Wed, 01 May 2024 14:00:00 +0000")]
    )
    assert [hit.name for hit in outcome.verdict.hits] == ["SHOUTS", "SKEWED"]


def test_no_fields_are_kept_without_fact_rules() -> None:
    harness = start(BASE)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    transaction = harness.session.transaction
    assert transaction is not None
    harness.session.header("Subject", "CHEAP WATCHES TODAY")
    assert transaction.header_fields == []


def test_the_fields_kept_for_facts_are_bounded() -> None:
    """A sender may send thousands of fields of any length: the transaction keeps the first
    MAX_FIELDS, each cut at MAX_VALUE_CHARS, and the fact rules still run."""
    harness = start(BASE + FACT_RULES)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    transaction = harness.session.transaction
    assert transaction is not None
    outcome = harness.message(
        [("Subject", "CHEAP WATCHES TODAY")] + [("X-Junk", "y" * 100_000)] * 500
    )
    assert len(transaction.header_fields) == headerfacts.MAX_FIELDS
    assert max(len(value) for _, value in transaction.header_fields) == headerfacts.MAX_VALUE_CHARS
    assert [hit.name for hit in outcome.verdict.hits] == ["SHOUTS"]


def test_the_facts_of_one_message_do_not_reach_the_next_on_the_connection() -> None:
    """The fields fact rules read live in the transaction: a shouting message, then a quiet
    one on the same connection, and the second is judged on its own headers alone."""
    harness = start(BASE + FACT_RULES)
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    first = harness.message([("Subject", "CHEAP WATCHES TODAY")])
    assert [hit.name for hit in first.verdict.hits] == ["SHOUTS"]
    harness.envelope()
    harness.session.rcpt("<user@example.com>")
    second = harness.message([("Subject", "minutes of the meeting")])
    assert [hit.name for hit in second.verdict.hits] == []
