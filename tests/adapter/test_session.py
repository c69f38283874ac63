"""The SMTP dialogue as a Session sees it, without libmilter: facts in, decisions and log out.

Every session here runs on a table-driven resolver that answers at once (or never, for the
deadline cases), an injected monotonic clock that only moves when a test moves it, an
injected wall clock for Date checks, and sequential decision ids, so reply texts and log
lines can be compared whole.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from spamgate.core import headers, schema
from spamgate.core.decision import SPLIT_REPLY
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.session import (
    MAX_PARSED_PER_HEADER,
    Generation,
    MessageDecision,
    RcptDecision,
    RcptResult,
    Runtime,
    Session,
)
from tests.fakes import FakeClock, ScriptedLookups

NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
CLIENT = "192.0.2.1"
ZEN_Q = ("1.2.0.192.zen.test", "A")
PTR_Q = ("1.2.0.192.in-addr.arpa", "PTR")
NXDOMAIN = DnsAnswer(AnswerKind.NXDOMAIN, ttl=60)

ZEN = """
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: zen.test
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 7, description: listed in the Example PBL}
"""

PHARMA = """
  - name: SUBJECT_PHARMA
    score: 4
    description: the Subject advertises pharmacy products
    header: {name: Subject, matches: '(?i)\\bv[i1]agra\\b'}
"""

NO_DATE = """
  - {name: NO_DATE, score: 1, description: the message has no Date header,
     header: {name: Date, missing: true}}
"""

# The tests here score into a tempfail band (off by default: greylisting is on), except where
# a test sets thresholds of its own; tests/adapter/test_greylist_session.py covers greylisting.
TEMPFAIL_BAND = "thresholds: {tag: 3, greylist: null, tempfail: 6, reject: 10}\n"
BASE = "resolver: {deadline: 0.5}\n" + ZEN + "rules:\n" + PHARMA


def records(*addresses: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, addresses, ttl=60)


SBL = records("127.0.0.2")
PBL = records("127.0.0.10")


@dataclass
class Harness:
    session: Session
    resolver: ScriptedLookups
    clock: FakeClock
    log: list[str] = field(default_factory=list)

    def connect(self, address: str | None = CLIENT, name: str = "unknown", **macros: str) -> None:
        client = ipaddress.ip_address(address) if address else None
        given = {_macro_name(key): value for key, value in macros.items()}
        self.session.connect(name, client, given)

    def envelope(
        self, sender: str = "<a@example.org>", *, helo: str = "mx.example.org", auth: bool = False
    ) -> None:
        self.connect()
        self.session.helo(helo)
        self.session.mail(sender, auth)

    def message(self, fields: list[tuple[str, str]], queue_id: str = "QID1") -> MessageDecision:
        for name, value in fields:
            self.session.header(name, value)
        return self.session.end_of_message(queue_id)


def _macro_name(key: str) -> str:
    """Keyword arguments name macros without braces: client_resolve= is {client_resolve}."""
    return key if key in ("j", "i") else "{" + key + "}"


def start(
    policy: str,
    table: Mapping[tuple[str, str], DnsAnswer | None] | None = None,
    *,
    now: datetime.datetime = NOW,
) -> Harness:
    resolver = ScriptedLookups(table or {}, default=NXDOMAIN)
    clock = FakeClock()
    ids = (f"id{n:04d}" for n in itertools.count(1))
    log: list[str] = []
    if not policy.startswith("thresholds:") and "\nthresholds:" not in policy:
        policy = TEMPFAIL_BAND + policy
    runtime = Runtime(
        Engine(schema.load(Policy, policy, "test.yaml")),
        resolver,
        clock=clock,
        now=lambda: now,
        new_id=lambda: next(ids),
        log=log.append,
    )
    return Harness(Session(runtime), resolver, clock, log)


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def fields(line: str) -> dict[str, str]:
    """A decision line's key=value pairs (values as written, quotes included), plus `queue`."""
    queue, marker, body = line.partition(": decision ")
    assert marker, line
    return {"queue": queue} | {key: value for key, value in _FIELD.findall(body)}


def only_line(harness: Harness) -> dict[str, str]:
    (line,) = harness.log
    return fields(line)


GOOD_HEADERS = [("From", "a@example.org"), ("Subject", "hello"), ("Date", "today")]


# --- list evidence at RCPT TO ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reply", "action", "scored"),
    [
        pytest.param(
            SBL,
            Reply(550, "5.7.1", "Go away: listed in the Example SBL [id0001] 10.0 192.0.2.1"),
            Action.REJECT,
            "score=10.0 hits=ZEN_SBL:10 lists=ZEN:listed:127.0.0.2:0ms",
            id="reject-template",
        ),
        pytest.param(
            PBL,
            Reply(451, "4.7.1", "Later: listed in the Example PBL [id0001] 7.0 192.0.2.1"),
            Action.TEMPFAIL,
            "score=7.0 hits=ZEN_PBL:7 lists=ZEN:listed:127.0.0.10:0ms",
            id="tempfail-template",
        ),
    ],
)
def test_listed_client_is_refused_at_rcpt_with_the_reply_template(
    answer: DnsAnswer, reply: Reply, action: Action, scored: str
) -> None:
    templates = (
        'replies: {reject: "Go away: {reasons} [{id}] {score} {client}",'
        ' tempfail: "Later: {reasons} [{id}] {score} {client}"}\n'
    )
    harness = start(BASE + templates, {ZEN_Q: answer})
    harness.envelope()
    decision = harness.session.rcpt("<User@Example.com>")
    assert (decision.result, decision.reply, decision.action) == (RcptResult.REFUSE, reply, action)
    assert harness.resolver.calls == [ZEN_Q]
    harness.session.close()
    assert harness.log == [
        "NOQUEUE: decision id=id0001 client=192.0.2.1 client_name=unknown helo=mx.example.org"
        " from=<a@example.org> rcpt= refused=<user@example.com> stage=rcpt"
        f" action={action.label} enforced={action.label} mode=enforce {scored}"
    ]


def test_unanswered_list_is_unusable_at_the_deadline_without_waiting() -> None:
    harness = start(BASE, {ZEN_Q: None})
    harness.envelope()
    harness.clock.now += 0.5  # the deadline has come: nothing may be waited for any more
    decision = harness.session.rcpt("<user@example.com>")
    assert (decision.result, decision.reply) == (RcptResult.CONTINUE, None)
    harness.message(GOOD_HEADERS)
    line = only_line(harness)
    assert (line["lists"], line["fails"], line["score"]) == (
        "ZEN:unusable:deadline:500ms",
        "ZEN_FAIL",
        "0.0",
    )


# --- exempt recipients -------------------------------------------------------------------------


def test_exempt_recipient_is_accepted_and_the_refusal_becomes_tag_at_end_of_message() -> None:
    harness = start(BASE, {ZEN_Q: SBL})
    harness.envelope()
    refused = harness.session.rcpt("<user@example.com>")
    assert (refused.result, refused.action) == (RcptResult.REFUSE, Action.REJECT)
    exempt = harness.session.rcpt("<Postmaster@Example.COM>")
    assert exempt == RcptDecision(RcptResult.CONTINUE, why="exempt")
    outcome = harness.message(GOOD_HEADERS)
    assert (outcome.action, outcome.reply, outcome.quarantine_reason) == (Action.TAG, None, "")
    assert outcome.add_headers == (
        ("X-Spam-Score", "10.0"),
        ("X-Spam-Status", "Yes, score=10.0 hits=ZEN_SBL"),
    )
    assert harness.log == [
        "QID1: decision id=id0001 client=192.0.2.1 client_name=unknown helo=mx.example.org"
        " from=<a@example.org> rcpt=<postmaster@example.com> refused=<user@example.com>"
        " stage=eom action=reject enforced=tag waived_by=exempt mode=enforce score=10.0"
        " hits=ZEN_SBL:10 lists=ZEN:listed:127.0.0.2:0ms"
    ]


# --- allow lists -------------------------------------------------------------------------------


def test_allowed_client_network_accepts_everything_without_dns() -> None:
    policy = BASE + "  - {name: HELO_BARE, score: 5, description: d, helo: bare_ip}\n"
    policy += "allow: {clients: [192.0.2.0/24]}\n"
    harness = start(policy, {ZEN_Q: SBL})
    harness.envelope(helo="192.0.2.1")
    decision = harness.session.rcpt("<user@example.com>")
    assert decision == RcptDecision(RcptResult.ACCEPT_ALL, why="allowed_by=client:192.0.2.0/24")
    harness.session.close()
    assert harness.resolver.calls == []
    assert harness.log == [
        "NOQUEUE: decision id=id0001 client=192.0.2.1 client_name=unknown helo=192.0.2.1"
        " from=<a@example.org> rcpt=<user@example.com> refused= stage=rcpt action=accept"
        " enforced=accept allowed_by=client:192.0.2.0/24 mode=enforce score=0.0"
        " lists_ignored=allowed"
    ]


@pytest.mark.parametrize(
    ("client_name", "allowed_by"),
    [
        pytest.param("mail.partner.example", "client_name:*.partner.example", id="verified"),
        pytest.param("MX.Partner.Example.", "client_name:*.partner.example", id="case-and-dot"),
        pytest.param("mail.other.example", "client_name:*", id="any-verified-name"),
        pytest.param("unknown", "", id="postfix-unknown-is-no-name"),
        pytest.param("[192.0.2.1]", "", id="address-literal-is-no-name"),
    ],
)
def test_allow_by_verified_client_name(client_name: str, allowed_by: str) -> None:
    harness = start(BASE + 'allow: {client_names: ["*.partner.example", "*"]}\n', {ZEN_Q: SBL})
    harness.connect(name=client_name)
    harness.session.helo("mx.example.org")
    harness.session.mail("<a@example.org>", False)
    decision = harness.session.rcpt("<user@example.com>")
    if allowed_by:
        assert decision == RcptDecision(RcptResult.ACCEPT_ALL, why=f"allowed_by={allowed_by}")
        assert harness.resolver.calls == []
        # Logged when the message ends, with every recipient (it goes on to the end of
        # message, where forged verdict headers are deleted).
        assert harness.log == []
        harness.session.end_of_message("QID1")
        assert only_line(harness)["allowed_by"] == allowed_by
    else:
        # Not a name: scored as usual, and the client's name is looked up (it is not there).
        assert (decision.result, decision.action) == (RcptResult.REFUSE, Action.REJECT)
        assert harness.resolver.calls == [ZEN_Q, PTR_Q]


def test_allow_by_client_name_confirmed_by_our_own_reverse_lookup() -> None:
    table = {
        ZEN_Q: SBL,
        PTR_Q: records("mail.partner.example"),
        ("mail.partner.example", "A"): records(CLIENT),
    }
    harness = start(BASE + 'allow: {client_names: ["*.partner.example"]}\n', table)
    harness.envelope()
    decision = harness.session.rcpt("<user@example.com>")
    assert decision == RcptDecision(
        RcptResult.ACCEPT_ALL, why="allowed_by=client_name:*.partner.example"
    )
    assert harness.resolver.calls == [ZEN_Q, PTR_Q, ("mail.partner.example", "A")]
    harness.session.finish_transaction()  # RSET: logged as it ends
    line = only_line(harness)
    assert (line["allowed_by"], line["rdns"]) == (
        "client_name:*.partner.example",
        "confirmed:mail.partner.example",
    )


def test_allowed_recipient_is_accepted_from_a_listed_client_and_the_message_tagged() -> None:
    harness = start(BASE + "allow: {recipients: [vip@example.com]}\n", {ZEN_Q: SBL})
    harness.envelope()
    refused = harness.session.rcpt("<user@example.com>")
    assert (refused.result, refused.reply) == (
        RcptResult.REFUSE,
        Reply(550, "5.7.1", "Message refused: listed in the Example SBL (id id0001)"),
    )
    allowed = harness.session.rcpt("<VIP@example.com>")
    assert allowed == RcptDecision(RcptResult.CONTINUE, why="allowed_by=recipient:vip@example.com")
    outcome = harness.message([*GOOD_HEADERS, ("Subject", "viagra")])
    assert (outcome.action, outcome.reply) == (Action.TAG, None)
    assert outcome.add_headers[1] == (
        "X-Spam-Status",
        "Yes, score=14.0 hits=ZEN_SBL,SUBJECT_PHARMA",
    )
    line = only_line(harness)
    assert {k: line[k] for k in ("rcpt", "refused", "action", "enforced", "allowed_by")} == {
        "rcpt": "<vip@example.com>",
        "refused": "<user@example.com>",
        "action": "reject",
        "enforced": "tag",
        "allowed_by": "recipient:vip@example.com",
    }


# --- deny lists --------------------------------------------------------------------------------

DENY_REPLY = 'deny: {reply: "Not from you ({client}, id {id})"}\n'


@pytest.mark.parametrize(
    ("deny", "client_name", "helo", "sender", "denied_by"),
    [
        pytest.param(
            "clients: [192.0.2.0/24]",
            "unknown",
            "mx.example.org",
            "<a@example.org>",
            "client:192.0.2.0/24",
            id="client",
        ),
        pytest.param(
            'recipients: ["user@"]',
            "unknown",
            "mx.example.org",
            "<a@example.org>",
            "recipient:user@",
            id="recipient",
        ),
    ],
)
def test_denied_gets_the_deny_reply_and_postmaster_stays_reachable(
    deny: str, client_name: str, helo: str, sender: str, denied_by: str
) -> None:
    policy = BASE + DENY_REPLY.replace("{reply", "{" + deny + ", reply")
    harness = start(policy)
    harness.connect(name=client_name)
    harness.session.helo(helo)
    harness.session.mail(sender, False)
    denied = harness.session.rcpt("<user@example.com>")
    assert denied == RcptDecision(
        RcptResult.REFUSE,
        Reply(550, "5.7.1", "Not from you (192.0.2.1, id id0001)"),
        action=Action.REJECT,
        why=f"denied_by={denied_by}",
    )
    assert harness.session.rcpt("<postmaster@example.com>") == RcptDecision(
        RcptResult.CONTINUE, why="exempt"
    )
    outcome = harness.message(GOOD_HEADERS)
    assert (outcome.action, outcome.reply) == (Action.ACCEPT, None)
    line = only_line(harness)
    assert (line["denied_by"], line["refused"], line["rcpt"]) == (
        denied_by,
        "<user@example.com>",
        "<postmaster@example.com>",
    )


# --- recipient policies ------------------------------------------------------------------------

GROUPS = """
recipient_policies:
  - name: lenient
    recipients: ["@example.net"]
    thresholds: {tag: 3, tempfail: null, reject: 100}
    scores: {ZEN_SBL: 4}
  - name: trial
    recipients: ["@trial.example"]
    mode: observe
"""


def test_recipient_of_another_policy_is_deferred_with_452_when_split() -> None:
    harness = start(BASE + GROUPS)
    harness.envelope()
    first = harness.session.rcpt("<user@example.com>")
    assert (first.result, first.reply) == (RcptResult.CONTINUE, None)
    second = harness.session.rcpt("<x@example.net>")
    assert second == RcptDecision(
        RcptResult.REFUSE,
        SPLIT_REPLY,
        action=Action.TEMPFAIL,
        why="split: policy lenient, transaction default",
    )
    assert (SPLIT_REPLY.code, SPLIT_REPLY.status) == (452, "4.5.3")
    third = harness.session.rcpt("<other@example.com>")
    assert third.result is RcptResult.CONTINUE
    harness.message(GOOD_HEADERS)
    line = only_line(harness)
    assert (line["rcpt"], line["refused"], line["deferred"]) == (
        "<user@example.com>,<other@example.com>",
        "",
        "<x@example.net>",
    )


def test_transaction_is_judged_by_its_group_thresholds_and_scores() -> None:
    harness = start(BASE + GROUPS, {ZEN_Q: SBL})
    harness.envelope()
    first = harness.session.rcpt("<x@example.net>")
    assert first.verdict is not None
    assert (first.result, first.action, first.verdict.score, first.verdict.group) == (
        RcptResult.CONTINUE,
        Action.TAG,
        4.0,
        "lenient",
    )
    # The default group would reject this one, but it is split off before it is judged.
    assert harness.session.rcpt("<user@example.com>").reply == SPLIT_REPLY
    outcome = harness.message(GOOD_HEADERS)
    assert (outcome.action, outcome.reply) == (Action.TAG, None)
    assert outcome.add_headers[1] == ("X-Spam-Status", "Yes, score=4.0 hits=ZEN_SBL")
    line = only_line(harness)
    assert (line["policy_group"], line["hits"], line["action"]) == ("lenient", "ZEN_SBL:4", "tag")


def test_observe_group_waives_the_refusal() -> None:
    harness = start(BASE + GROUPS, {ZEN_Q: SBL})
    harness.envelope()
    decision = harness.session.rcpt("<x@trial.example>")
    assert (decision.result, decision.reply, decision.action, decision.why) == (
        RcptResult.CONTINUE,
        None,
        Action.TAG,
        "observe",
    )
    assert decision.verdict is not None and decision.verdict.action is Action.REJECT
    outcome = harness.message(GOOD_HEADERS)
    assert (outcome.action, outcome.reply) == (Action.TAG, None)
    line = only_line(harness)
    assert (line["action"], line["enforced"], line["waived_by"], line["policy_group"]) == (
        "reject",
        "tag",
        "observe",
        "trial",
    )


SOFT = """
  - name: soft
    recipients: ["@soft.example"]
    thresholds: {tag: 3, tempfail: 5, reject: 50}
"""

MILDEST_POLICY = (
    BASE
    + NO_DATE
    + GROUPS
    + SOFT
    + "thresholds: {tag: 3, greylist: null, tempfail: null, reject: 5}\n"
    + "split_recipient_policies: false\n"
)


@pytest.mark.parametrize(
    ("recipients", "action", "reply", "group"),
    [
        pytest.param(
            ["<user@example.com>", "<x@soft.example>"],
            Action.TEMPFAIL,
            Reply(
                451,
                "4.7.1",
                "Try again later: the Subject advertises pharmacy products;"
                " the message has no Date header (id id0001)",
            ),
            "soft",
            id="tempfail-beats-reject",
        ),
    ],
)
def test_without_split_the_mildest_group_decides_at_end_of_message(
    recipients: list[str], action: Action, reply: Reply | None, group: str
) -> None:
    # Header evidence only (Subject 4 + no Date 1 = 5): every recipient is accepted at RCPT TO,
    # and at end of message the default group rejects, soft tempfails, lenient tags.
    harness = start(MILDEST_POLICY)
    harness.envelope()
    for recipient in recipients:
        assert harness.session.rcpt(recipient).result is RcptResult.CONTINUE
    outcome = harness.message([("Subject", "viagra")])
    assert (outcome.action, outcome.reply) == (action, reply)
    line = only_line(harness)
    assert (line["enforced"], line["policy_group"], "deferred" in line) == (
        action.label,
        group,
        False,
    )


# --- quarantine --------------------------------------------------------------------------------


def test_quarantine_band_holds_the_message_with_a_reason_and_headers() -> None:
    policy = BASE + NO_DATE + "thresholds: {tag: 3, greylist: null, quarantine: 8, reject: 10}\n"
    harness = start(policy, {ZEN_Q: PBL})
    harness.envelope()
    decision = harness.session.rcpt("<user@example.com>")
    assert (decision.result, decision.action) == (RcptResult.CONTINUE, Action.TAG)
    outcome = harness.message([("From", "a@example.org"), ("X-Spam-Score", "-50")])
    assert outcome == MessageDecision(
        Action.QUARANTINE,
        outcome.verdict,
        delete_headers=(("X-Spam-Score", 1),),
        add_headers=(
            ("X-Spam-Score", "8.0"),
            ("X-Spam-Status", "Yes, score=8.0 hits=ZEN_PBL,NO_DATE"),
        ),
        quarantine_reason=(
            "spamgate: score 8.0: listed in the Example PBL; the message has no Date header"
            " (id id0001)"
        ),
    )
    line = only_line(harness)
    assert (line["action"], line["enforced"]) == ("quarantine", "quarantine")


# --- domain lists ------------------------------------------------------------------------------

DOMAIN_LISTS = """
resolver: {deadline: 0.5}
domain_lists:
  - name: DBL
    zone: dbl.test
    hits:
      - {name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}
  - name: EXACT
    zone: exact.test
    query: exact
    check_names: [helo, sender]
    score: 1
"""


def test_domain_lists_start_when_their_name_is_known() -> None:
    table = {("phish.example.dbl.test", "A"): records("127.0.1.2")}
    harness = start(DOMAIN_LISTS, table)
    session, asked = harness.session, harness.resolver.calls
    harness.connect()
    assert asked == [PTR_Q]  # `ptr` is checked: the client's name is looked up
    session.helo("mail.example.co.uk")
    assert asked[1:] == [
        ("example.co.uk.dbl.test", "A"),
        ("mail.example.co.uk.exact.test", "A"),
    ]
    session.mail("<a@News.Example.org>", False)
    assert asked[3:] == [("example.org.dbl.test", "A"), ("news.example.org.exact.test", "A")]
    assert session.rcpt("<user@example.com>").result is RcptResult.CONTINUE
    assert len(asked) == 5
    session.header("From", "Bank <alerts@login.phish.example>")
    session.header("Reply-To", "x@reply.example.net")
    assert asked[5:] == [("phish.example.dbl.test", "A"), ("example.net.dbl.test", "A")]
    outcome = session.end_of_message("QID1")
    assert outcome.reply == Reply(550, "5.7.1", "Message refused: a spam domain (id id0001)")
    assert only_line(harness)["lists"] == (
        "DBL[helo:example.co.uk]:clean:0ms,EXACT[helo:mail.example.co.uk]:clean:0ms,"
        "DBL[sender:example.org]:clean:0ms,EXACT[sender:news.example.org]:clean:0ms,"
        "DBL[from:phish.example]:listed:127.0.1.2:0ms,DBL[reply_to:example.net]:clean:0ms"
    )


def test_confirmed_client_name_is_looked_up_in_domain_lists() -> None:
    table = {
        PTR_Q: records("mail.client.example.com"),
        ("mail.client.example.com", "A"): records(CLIENT),
        ("example.com.dbl.test", "A"): records("127.0.1.2"),
    }
    harness = start(DOMAIN_LISTS, table)
    harness.envelope(helo="[192.0.2.1]")
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.reply == Reply(550, "5.7.1", "Message refused: a spam domain (id id0001)")
    harness.session.close()
    line = only_line(harness)
    # The client's name is known at connect (Postfix's macros): its lookup starts first.
    assert line["lists"] == (
        "DBL[ptr:example.com]:listed:127.0.1.2:0ms,"
        "DBL[sender:example.org]:clean:0ms,EXACT[sender:example.org]:clean:0ms"
    )
    assert line["rdns"] == "confirmed:mail.client.example.com"


def test_names_sharing_a_domain_share_one_lookup_logged_with_every_source() -> None:
    table = {
        PTR_Q: records("mail.client.example.com"),
        ("mail.client.example.com", "A"): records(CLIENT),
        ("example.com.dbl.test", "A"): records("127.0.1.2"),
    }
    harness = start(DOMAIN_LISTS, table)
    harness.envelope("<news@example.com>", helo="mx.example.com")
    session = harness.session
    assert session.rcpt("<postmaster@example.com>").result is RcptResult.CONTINUE
    session.header("From", "News <news@mail.example.com>")
    session.end_of_message("QID1")
    # PTR, HELO, sender and From all have the organizational domain example.com: one query,
    # counted once, scored once, named with each source (the From joined after RCPT).
    assert harness.resolver.calls.count(("example.com.dbl.test", "A")) == 1
    line = only_line(harness)
    assert line["lists"].startswith("DBL[ptr,helo,sender,from:example.com]:listed:127.0.1.2:")
    assert line["hits"] == "DBL_SPAM:10"


def test_a_listed_sender_domain_stays_with_its_own_transaction() -> None:
    """The incident of issue 14: after one message from a listed domain, the next ones on the
    same connection (after RSET or not) were refused for it."""
    table = {("spam.example.dbl.test", "A"): records("127.0.1.2")}
    harness = start(DOMAIN_LISTS, table)
    harness.envelope("<news@spam.example>", helo="[192.0.2.1]")
    session = harness.session
    assert session.rcpt("<user@example.com>").result is RcptResult.REFUSE
    session.finish_transaction()  # RSET
    for sender in ("<a@clean.example>", "<b@clean.example>"):  # the second: no RSET before
        session.mail(sender, False)
        decision = session.rcpt("<user@example.com>")
        assert decision.result is RcptResult.CONTINUE, sender
        assert decision.verdict is not None and decision.verdict.score == 0.0
        session.end_of_message("QID")
    lines = [fields(line) for line in harness.log]
    assert [line["action"] for line in lines] == ["reject", "accept", "accept"]
    assert "spam.example" not in lines[1]["lists"] + lines[2]["lists"]


def test_a_transaction_adds_its_source_to_a_connection_lookup_for_itself_only() -> None:
    """HELO and sender share example.org: one query, logged with both sources in the first
    transaction; the next transaction, from another domain, sees the HELO's alone."""
    harness = start(DOMAIN_LISTS)
    harness.envelope("<news@example.org>", helo="mx.example.org")
    session = harness.session
    session.rcpt("<user@example.com>")
    session.end_of_message("QID1")
    session.mail("<news@other.example>", False)
    session.rcpt("<user@example.com>")
    session.end_of_message("QID2")
    first, second = (fields(line)["lists"] for line in harness.log)
    assert "DBL[helo,sender:example.org]" in first
    assert "DBL[helo:example.org]" in second and "DBL[sender:other.example]" in second
    assert harness.resolver.calls.count(("example.org.dbl.test", "A")) == 1


def test_many_transactions_on_one_connection_keep_their_lines_short() -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect()
    session = harness.session
    session.helo("mx.example.org")
    for number in range(300):
        session.mail(f"<a@d{number}.example>", False)
        session.rcpt("<user@example.com>")
        session.header("From", f"b@f{number}.example")
        session.end_of_message(f"QID{number}")
    lengths = [len(line) for line in harness.log]
    assert max(lengths[-10:]) <= max(lengths[:10]) + 10, (lengths[:3], lengths[-3:])


def test_each_lookup_is_waited_for_until_its_own_start_plus_the_deadline() -> None:
    harness = start(DOMAIN_LISTS, {("example.org.dbl.test", "A"): None})
    harness.connect()  # at 1000.0; the deadline is 0.5
    harness.session.helo("[192.0.2.1]")
    harness.clock.now = 1000.25
    harness.session.mail("<a@example.org>", False)  # its lookups start now
    harness.clock.now = 1000.5
    started = time.monotonic()
    harness.session.rcpt("<user@example.com>")
    waited = time.monotonic() - started
    assert 0.2 <= waited < 0.25 + 0.2  # until 1000.75, not until connect + deadline
    harness.session.close()
    assert only_line(harness)["lists"] == (
        "DBL[sender:example.org]:unusable:deadline:500ms,EXACT[sender:example.org]:clean:0ms"
    )


def test_a_client_name_from_mta_macros_is_looked_up_in_domain_lists_at_connect() -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect(client_resolve="OK", client_ptr="mail.client.example.com")
    assert harness.resolver.calls == [("example.com.dbl.test", "A")]


@pytest.mark.parametrize(
    "helo",
    [
        pytest.param("[192.0.2.1]", id="ipv4-literal"),
        pytest.param("192.0.2.1", id="bare-ipv4"),
        pytest.param("[IPv6:2001:db8::1]", id="ipv6-literal"),
        pytest.param("localhost", id="single-label"),
        pytest.param("", id="empty"),
    ],
)
def test_no_domain_query_for_address_literals_or_single_labels(helo: str) -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect()
    harness.session.helo(helo)
    harness.session.mail("<a@[192.0.2.7]>", False)
    harness.session.mail("<a@localhost>", False)
    harness.session.mail("<>", False)
    assert harness.resolver.calls == [PTR_Q]


def test_a_header_with_many_addresses_gets_four_lookups_and_a_repeated_domain_none() -> None:
    harness = start(DOMAIN_LISTS)
    harness.envelope("<>", helo="[192.0.2.1]")
    harness.session.rcpt("<user@example.com>")
    names = ", ".join(f"u@d{n}.example" for n in range(6))
    harness.session.header("From", names)
    harness.session.header("Reply-To", "u@d0.example")  # the same query for another source
    harness.session.header("From", "v@d1.example")  # from:d1.example again
    assert harness.resolver.calls[1:] == [(f"d{n}.example.dbl.test", "A") for n in range(4)]
    transaction = harness.session.transaction
    assert transaction is not None and transaction.lookups is not None
    subjects = [o.subject for o in transaction.lookups.collect(1.0) if o.subject]
    assert subjects[:2] == ["from,reply_to:d0.example", "from:d1.example"]


# --- trusted and authenticated clients ---------------------------------------------------------

CONNECTION_RULES = """
  - {name: HELO_BARE, score: 2, description: bare IP HELO, helo: bare_ip}
  - {name: RDNS_MISSING, score: 1, description: no reverse DNS, rdns: missing}
"""

DBL = """
domain_lists:
  - {name: DBL, zone: dbl.test, score: 10}
"""


def test_trusted_client_gets_no_lists_and_no_connection_rules_but_header_rules() -> None:
    harness = start(BASE + CONNECTION_RULES + DBL)
    harness.connect("127.0.0.1")
    harness.session.helo("192.0.2.9")
    harness.session.mail("<a@spam.example>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert (decision.result, decision.verdict.hits) == (RcptResult.CONTINUE, ())
    outcome = harness.message([("Subject", "viagra"), ("From", "x@spam.example")])
    assert [hit.name for hit in outcome.verdict.hits] == ["SUBJECT_PHARMA"]
    assert harness.resolver.calls == []
    line = only_line(harness)
    assert (line["lists_ignored"], line["hits"], "lists" in line) == (
        "trusted",
        "SUBJECT_PHARMA:4",
        False,
    )


def test_the_same_client_unauthenticated_is_scored_on_lists_and_connection_rules() -> None:
    # The control for the two tests around it: every rule and list there can fire.
    table = {ZEN_Q: SBL, ("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + CONNECTION_RULES + DBL, table)
    harness.envelope("<a@spam.example>", helo="192.0.2.9")
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert [hit.name for hit in decision.verdict.hits] == [
        "ZEN_SBL",
        "DBL",
        "HELO_BARE",
        "RDNS_MISSING",
    ]
    assert harness.resolver.calls == [ZEN_Q, PTR_Q, ("spam.example.dbl.test", "A")]


def test_authenticated_client_gets_no_list_scores_and_no_connection_rules() -> None:
    table = {ZEN_Q: SBL, ("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + CONNECTION_RULES + DBL, table)
    harness.envelope("<a@spam.example>", helo="192.0.2.9", auth=True)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert (decision.result, decision.verdict.hits) == (RcptResult.CONTINUE, ())
    outcome = harness.message([("Subject", "viagra"), ("From", "x@spam.example")])
    assert (outcome.action, [hit.name for hit in outcome.verdict.hits]) == (
        Action.TAG,
        ["SUBJECT_PHARMA"],
    )
    # The address was looked up at connect, before anyone knew; no name is looked up after.
    assert harness.resolver.calls == [ZEN_Q, PTR_Q]
    line = only_line(harness)
    assert (line["lists_ignored"], line["hits"], line["lists"]) == (
        "authenticated",
        "SUBJECT_PHARMA:4",
        "ZEN:listed:127.0.0.2:0ms",
    )


def test_skip_authenticated_off_scores_authenticated_senders_on_domain_lists() -> None:
    table = {("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + DBL + "skip_authenticated: false\n", table)
    harness.envelope("<a@spam.example>", auth=True)
    assert ("spam.example.dbl.test", "A") in harness.resolver.calls
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.reply == Reply(550, "5.7.1", "Message refused: listed by DBL (id id0001)")


def test_skip_authenticated_off_scores_authenticated_clients_on_ip_lists() -> None:
    harness = start(BASE + "skip_authenticated: false\n", {ZEN_Q: SBL})
    harness.envelope(auth=True)
    decision = harness.session.rcpt("<user@example.com>")
    assert (decision.result, decision.action) == (RcptResult.REFUSE, Action.REJECT)


# --- reverse DNS -------------------------------------------------------------------------------

RDNS_RULES = "  - {name: RDNS_UNCONFIRMED, score: 1, description: d, rdns: unconfirmed}\n"


def test_reverse_dns_from_mta_macros_asks_no_ptr() -> None:
    harness = start(BASE + RDNS_RULES)
    harness.connect(client_resolve="FORGED", client_ptr="gw.other.test")
    harness.session.helo("mx.example.org")
    harness.session.mail("<a@example.org>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert [hit.name for hit in decision.verdict.hits] == ["RDNS_UNCONFIRMED"]
    assert harness.resolver.calls == [ZEN_Q]
    harness.session.close()
    assert only_line(harness)["rdns"] == "unconfirmed:gw.other.test"


def test_reverse_dns_from_our_own_lookup_when_macros_are_not_used() -> None:
    table = {PTR_Q: records("mail.client.example"), ("mail.client.example", "A"): records(CLIENT)}
    policy = BASE + RDNS_RULES + "reverse_dns: {use_mta_macros: false}\n"
    harness = start(policy, table)
    harness.connect(client_resolve="FORGED", client_ptr="gw.other.test")
    harness.session.helo("mx.example.org")
    harness.session.mail("<a@example.org>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None and decision.verdict.hits == ()
    assert harness.resolver.calls == [ZEN_Q, PTR_Q, ("mail.client.example", "A")]
    harness.session.close()
    assert only_line(harness)["rdns"] == "confirmed:mail.client.example"


def test_reverse_lookup_still_running_at_the_deadline_is_unknown() -> None:
    harness = start(BASE + RDNS_RULES, {PTR_Q: None})
    harness.envelope()
    harness.clock.now += 0.5
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None and decision.verdict.hits == ()
    harness.session.close()
    assert only_line(harness)["rdns"] == "unknown"


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
