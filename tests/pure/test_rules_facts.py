"""RuleBook on `fact:` rules: a fact rule fires at the message stage on the value its operator
tests; an absent fact (its inputs missing) fires no rule, whatever the operator; without a
header view (no fact rule in the policy, so the session kept no fields) nothing fires."""

from __future__ import annotations

import datetime

import pytest

from spamgate.core.headerfacts import HeaderView
from spamgate.core.rules import Facts, MessageFacts, Stage
from tests.rules_harness import book, fired, rule

BOOK = book(
    rule("SUBJECT_SHOUTS", "fact: {name: subject.caps_ratio, over: 0.9}"),
    rule("SUBJECT_QUIET", "fact: {name: subject.caps_ratio, under: 0.05}"),
    rule("MSGID_FOREIGN", "fact: {name: message_id.from_domain, is: false}"),
    rule("REPLYTO_FOREIGN", "fact: {name: reply_to.from_domain, is: false}"),
    rule("MAILER_BAT", "fact: {name: mailer, matches: '(?i)^the bat'}"),
)
END = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)


def message(*fields: tuple[str, str]) -> Facts:
    return Facts(message=MessageFacts(header_view=HeaderView.of(list(fields), END)))


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(
            message(
                ("Subject", "CHEAP WATCHES TODAY"),
                ("From", "a@example.com"),
                ("Message-ID", "<1@bulk.example.net>"),
            ),
            {"SUBJECT_SHOUTS", "MSGID_FOREIGN"},
            id="shouting-foreign-msgid",
        ),
        pytest.param(
            message(
                ("Subject", "minutes of the meeting"),
                ("From", "a@example.com"),
                ("Message-ID", "<1@mail.example.com>"),
                ("X-Mailer", "The Bat! (v1.61)"),
            ),
            {"SUBJECT_QUIET", "MAILER_BAT"},
            id="quiet-own-msgid-mailer",
        ),
        pytest.param(
            message(("Subject", "OK"), ("Message-ID", "<1@bulk.example.net>")),
            set(),
            id="absent-facts-fire-nothing",  # short Subject, no From, no Reply-To, no mailer
        ),
        pytest.param(message(), set(), id="no-headers"),
        pytest.param(Facts(), set(), id="no-view"),
    ],
)
def test_fact_rules(facts: Facts, expected: set[str]) -> None:
    assert fired(BOOK, Stage.MESSAGE, facts) == expected


def test_fact_rules_wait_for_the_message() -> None:
    facts = message(("Subject", "CHEAP WATCHES TODAY"))
    assert fired(BOOK, Stage.ENVELOPE, facts) == set()
    assert BOOK.stage_of("SUBJECT_SHOUTS") is Stage.MESSAGE


def test_the_book_says_when_fields_are_needed() -> None:
    assert BOOK.needs_header_view
    assert not book(rule("R", "header: {name: Subject, missing: true}")).needs_header_view
