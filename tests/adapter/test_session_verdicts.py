"""A Session's verdicts: list evidence at RCPT TO, exempt recipients, allow and deny lists,
recipient policies and quarantine (the harness: tests/session_harness.py).
"""

from __future__ import annotations

import pytest

from spamgate.core.decision import SPLIT_REPLY
from spamgate.core.engine import Action
from spamgate.core.replies import Reply
from spamgate.dns.answers import DnsAnswer
from spamgate.shell.session import MessageDecision, RcptDecision, RcptResult
from tests.session_harness import (
    BASE,
    CLIENT,
    GOOD_HEADERS,
    NO_DATE,
    PBL,
    PTR_Q,
    SBL,
    ZEN_Q,
    only_line,
    records,
    start,
)

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
