"""ruletrace: what a fired rule tested and the value it fired on, as `spamgate explain` shows
it under the hit. Each row is a rule that fires on its facts (checked with the RuleBook, so a
trace never explains a rule that would not fire) and the line explain prints for it."""

from __future__ import annotations

import datetime

import pytest

from spamgate.core.engine import Evidence, ListsIgnored
from spamgate.core.evidence import ListOutcome, ListStatus, RdnsStatus, ReverseDns
from spamgate.core.headerfacts import HeaderView
from spamgate.core.rules import EnvelopeFacts, Facts, MessageFacts, RuleBook, Stage
from spamgate.core.ruletrace import (
    MAX_DEPTH,
    MAX_LINES,
    MAX_PARTS,
    MAX_SHOWN,
    explain,
    lines,
    plain,
    seen_at,
    shown,
    trace,
)
from tests.rules_harness import (
    DAY,
    HOUR,
    book,
    confirmed,
    connection,
    envelope,
    fired,
    load,
    rule,
    unconfirmed,
)

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
    # DNS evidence: what the check read, gathered before the rules ran.
    pytest.param(
        "helo: unresolvable",
        connection("mail.nx.example", helo_resolves=False),
        (),
        'helo = "mail.nx.example", does not resolve (unresolvable)',
        id="helo-unresolvable",
    ),
    pytest.param(
        "helo: not_ptr_domain",
        connection("mail.other.example", rdns=confirmed("host-7.isp.example")),
        (),
        'helo = "mail.other.example", rdns "host-7.isp.example", confirmed (not_ptr_domain)',
        id="helo-not-ptr-domain",
    ),
    pytest.param(
        "rdns: missing",
        connection("x", rdns=ReverseDns(RdnsStatus.MISSING)),
        (),
        "rdns = none, missing (missing)",
        id="rdns-missing",
    ),
    pytest.param(
        "rdns: unconfirmed",
        connection("x", rdns=unconfirmed("a.isp.example", "b.isp.example")),
        (),
        'rdns = "a.isp.example", unconfirmed, 2 names (unconfirmed)',
        id="rdns-unconfirmed-names",
    ),
    pytest.param(
        "sender: unresolvable",
        envelope("a@nx.example", resolves=False),
        (),
        'sender = "<a@nx.example>", its domain does not resolve (unresolvable)',
        id="sender-unresolvable",
    ),
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
        rule("D", "sender: empty"),
        rule("C", "composite: {all: [A], any: [B], not: [D]}"),
    )
    assert trace(rulebook.rules[3], Facts()) == "composite: all of A; any of B; none of D"


# --- a hit's whole trace: composites' parts, DNS list answers -----------------------------------

LISTS = r"""
ip_lists:
  - name: ZEN
    zone: zen.test
    hits: [{name: ZEN_SBL, codes: [127.0.0.2], score: 3, description: sbl},
           {name: ZEN_PBL, codes: [127.0.0.10], score: 1, description: pbl}]
  - name: WL
    zone: wl.test
    hits: [{name: WL_HI, codes: [127.0.10.3], score: -5, description: allowlisted}]
domain_lists:
  - name: DBL
    zone: dbl.test
    check_names: [sender]
    hits: [{name: DBL_SPAM, codes: [127.0.1.2], score: 3, description: dbl}]
"""


def outcome(
    list_name: str,
    status: ListStatus,
    *codes: str,
    hits: tuple[str, ...] = (),
    subject: str = "",
    failure: str = "",
) -> ListOutcome:
    """What the list `list_name` of LISTS answered, as the resolver reports it."""
    dns_list = next(d for d in load(LISTS + "rules: []\n").dns_lists if d.name == list_name)
    scored = tuple(h for h in dns_list.scored_hits if h.name in hits)
    return ListOutcome(dns_list, status, codes, scored, failure=failure, subject=subject)


def explained(
    rules: str,
    name: str,
    facts: Facts = Facts(),  # noqa: B008 - frozen, never changed
    lists: tuple[ListOutcome, ...] = (),
    *,
    ignored: ListsIgnored | None = None,
    remembered: tuple[str, ...] = (),
) -> list[str]:
    """What explain prints under the hit `name`, for rules that fired on `facts` and `lists`
    as the RuleBook fires them (a trace never explains a hit that did not happen)."""
    policy = load(LISTS + "rules:\n" + rules)
    rulebook = RuleBook(policy)
    list_hits = [h.name for o in lists for h in o.hits] if ignored is None else []
    fired = rulebook.fire(Stage.MESSAGE, facts, [*list_hits, *remembered])
    assert name in {r.name for r in fired} | set(list_hits) | set(remembered)
    seen = seen_at(facts, Evidence(lists, ignored, fired, remembered))
    return lines(explain(name, {r.name: r for r in policy.rules}, seen))


SBL = outcome("ZEN", ListStatus.LISTED, "127.0.0.2", hits=("ZEN_SBL",))
WL_CLEAN = outcome("WL", ListStatus.CLEAN)
NO_DATE = "header: {name: Date, missing: true}"
SUBJECT = "header: {name: Subject, matches: '(?i)viagra'}"
MESSAGE = Facts(
    envelope=EnvelopeFacts("x@spam.example", recipients=("user@example.com",)),
    message=MessageFacts(header_counts={"subject": 1}, date_skew=None),
)


def test_a_composite_shows_each_part_and_the_value_it_saw() -> None:
    rules = (
        rule("NO_DATE", NO_DATE)
        + rule("PHARMA", SUBJECT)
        + rule("PARTNER", "sender_matches: '@partner\\.example$'")
        + rule("LATE", "date_behind_days: 30")
        + rule("TRAP", "recipient_matches: '^trap@'")
        + rule("LISTED_UNDATED", "composite: {all: [ZEN_SBL, NO_DATE]}")
        + rule(
            "C",
            "composite: {all: [LISTED_UNDATED], any: [ZEN_PBL, NO_DATE],"
            " not: [WL_HI, PARTNER, PHARMA, LATE, TRAP]}",
        )
    )
    assert explained(rules, "C", MESSAGE, (SBL, WL_CLEAN)) == [
        "composite: all of LISTED_UNDATED; any of ZEN_PBL, NO_DATE;"
        " none of WL_HI, PARTNER, PHARMA, LATE, TRAP",
        "  all LISTED_UNDATED fired: composite: all of ZEN_SBL, NO_DATE",
        "    all ZEN_SBL fired: list ZEN = 127.0.0.2 (listed)",
        "    all NO_DATE fired: header Date: none (missing)",
        "  any ZEN_PBL did not fire: list ZEN = 127.0.0.2 (listed, not as ZEN_PBL)",
        "  any NO_DATE fired: header Date: none (missing)",
        # A `not:` part holds because its own test failed: the value it saw, which did not match.
        "  not WL_HI did not fire, as required: list WL = no record (not listed)",
        '  not PARTNER did not fire, as required: sender = "<x@spam.example>"'
        ' (matches "@partner\\\\.example$")',
        '  not PHARMA did not fire, as required: header Subject matches "(?i)viagra": none',
        "  not LATE did not fire, as required: date skew = none (behind over 30 days)",
        '  not TRAP did not fire, as required: recipient = "user@example.com" (matches "^trap@")',
    ]


def test_a_part_on_trial_says_so() -> None:
    rules = rule("NO_DATE", NO_DATE).replace("}\n", ", mode: observe}\n") + rule(
        "C", "composite: {all: [NO_DATE]}"
    )
    assert explained(rules, "C", MESSAGE) == [
        "composite: all of NO_DATE",
        "  all NO_DATE fired on trial (observe): header Date: none (missing)",
    ]


@pytest.mark.parametrize(
    ("name", "lists", "ignored", "remembered", "expected"),
    [
        pytest.param("ZEN_SBL", (SBL,), None, (), "list ZEN = 127.0.0.2 (listed)", id="listed"),
        pytest.param(
            "ZEN_SBL",
            (
                outcome(
                    "ZEN", ListStatus.LISTED, "127.0.0.2", "127.0.0.10",
                    hits=("ZEN_SBL", "ZEN_PBL"),
                ),
            ),
            None,
            (),
            "list ZEN = 127.0.0.2, 127.0.0.10 (listed)",
            id="listed-two-codes",
        ),
        pytest.param(
            "DBL_SPAM",
            (
                outcome(
                    "DBL", ListStatus.LISTED, "127.0.1.2", hits=("DBL_SPAM",),
                    subject="sender:spam.example",
                ),
            ),
            None,
            (),
            'list DBL for sender "spam.example" = 127.0.1.2 (listed)',
            id="domain-list-names-what-it-looked-up",
        ),
        pytest.param(
            "ZEN_SBL",
            (),
            ListsIgnored.REMEMBERED,
            ("ZEN_SBL",),
            "list hit remembered from a recent refusal of this client (not asked again)",
            id="remembered",
        ),
    ],
)  # fmt: skip
def test_a_list_hit_shows_what_the_list_answered(
    name: str,
    lists: tuple[ListOutcome, ...],
    ignored: ListsIgnored | None,
    remembered: tuple[str, ...],
    expected: str,
) -> None:
    assert explained("  []\n", name, Facts(), lists, ignored=ignored, remembered=remembered) == [
        expected
    ]


@pytest.mark.parametrize(
    ("lists", "ignored", "expected"),
    [
        pytest.param(
            (outcome("WL", ListStatus.UNUSABLE, failure="timeout"),),
            None,
            "list WL = no answer (unusable: timeout)",
            id="unusable-is-no-hit",
        ),
        pytest.param(
            (outcome("WL", ListStatus.UNUSABLE, "127.255.255.254", failure="blocked"),),
            None,
            "list WL = 127.255.255.254 (unusable: blocked)",
            id="blocked-code-is-no-hit",
        ),
        pytest.param((), ListsIgnored.NO_DNS, "list answers not used (no-dns)", id="no-dns"),
        pytest.param(
            (outcome("WL", ListStatus.LISTED, "127.0.10.3", hits=("WL_HI",)),),
            ListsIgnored.TRUSTED,
            "list WL = 127.0.10.3 (listed); not counted (trusted)",
            id="listed-but-not-counted",
        ),
    ],
)
def test_a_list_part_that_did_not_fire_shows_why(
    lists: tuple[ListOutcome, ...], ignored: ListsIgnored | None, expected: str
) -> None:
    rules = rule("NO_DATE", NO_DATE) + rule("C", "composite: {all: [NO_DATE], not: [WL_HI]}")
    assert explained(rules, "C", MESSAGE, lists, ignored=ignored)[-1] == (
        f"  not WL_HI did not fire, as required: {expected}"
    )


def test_nested_composites_are_cut_at_max_depth() -> None:
    rules = rule("C0", NO_DATE) + "".join(
        rule(f"C{i}", f"composite: {{all: [C{i - 1}]}}") for i in range(1, MAX_DEPTH + 3)
    )
    top = f"C{MAX_DEPTH + 2}"
    printed = explained(rules, top, MESSAGE)
    assert len(printed) == 1 + MAX_DEPTH + 1
    assert printed[MAX_DEPTH] == "  " * MAX_DEPTH + "all C2 fired: composite: all of C1"
    assert printed[-1] == "  " * (MAX_DEPTH + 1) + "... 1 more not shown"


def test_a_composite_of_many_parts_is_cut_at_max_parts() -> None:
    names = [f"P{i}" for i in range(MAX_PARTS + 3)]
    rules = "".join(rule(n, NO_DATE) for n in names)
    rules += rule("C", f"composite: {{any: [{', '.join(names)}]}}")
    printed = explained(rules, "C", MESSAGE)
    assert len(printed) == 1 + MAX_PARTS + 1
    assert printed[-1] == "  ... 3 more not shown"


def test_shared_parts_cannot_multiply_a_trace_past_max_lines() -> None:
    """Each level names the level below twice: 2**depth parts, unless bounded."""
    rules = rule("L0", NO_DATE) + "".join(
        rule(f"L{i}", f"composite: {{all: [L{i - 1}], any: [L{i - 1}]}}") for i in range(1, 9)
    )
    printed = explained(rules, "L8", MESSAGE)
    assert len(printed) <= MAX_LINES
    assert printed[-1].endswith("more not shown")


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("user@example.com", "user@example.com", id="plain-bare"),
        pytest.param("", '""', id="empty-quoted"),
        pytest.param("a b", '"a b"', id="blank-quoted"),
        pytest.param("trap\x1b[2J@x", '"trap\\x1b[2J@x"', id="escape-quoted"),
        pytest.param("x" * 100, '"' + "x" * MAX_SHOWN + '"...', id="long-cut"),
    ],
)
def test_plain_is_bare_only_when_safe(text: str, expected: str) -> None:
    assert plain(text) == expected
