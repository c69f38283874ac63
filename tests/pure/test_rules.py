"""RuleBook: composite rules, which rules fire at which stage, and what the session must gather
(helpers: tests/rules_harness.py).

Policies are built from YAML as an admin writes them, facts from the frozen dataclasses the
session fills in. Every case asserts the exact set of rules that fired, so a rule that fires
where it should not is caught as surely as one that stays silent.
"""

from __future__ import annotations

import pytest

from spamgate.core.rules import ConnectionFacts, EnvelopeFacts, Facts, MessageFacts, Stage
from spamgate.dns.rdns import RdnsStatus, ReverseDns
from tests.rules_harness import HOUR, book, connection, fired, rule

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
