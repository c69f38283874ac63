"""The decision at RCPT TO as a pure function: facts in, a ruling out (decision.decide).

Which of exempt recipients, allow and deny lists, recipient policies, observe mode, the
split with 452 4.5.3 and the score decides a recipient, what the sender is told, and which
facts `decide` asks for before it answers. No resolver, no clock, no session: every fact is
a plain value (tests/rulings.py); tests/pure/test_decision_message.py has the end of message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from spamgate.core.decision import SPLIT_REPLY, Disposition, Need, Ruling, decide
from spamgate.core.engine import Action, ListsIgnored
from spamgate.core.replies import Reply
from spamgate.core.spf import SpfResult, SpfVerdict
from tests.rulings import (
    ALLOW,
    CLEAN,
    DENY,
    GATHERED,
    GROUPS,
    PBL,
    SBL,
    engine,
    facts,
    said,
)

# --- RCPT TO: who decides --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "given", "expected"),
    [
        pytest.param("", {}, "accepted accept", id="clean"),
        pytest.param("", {"zen_code": SBL}, "refused reject 550", id="listed"),
        pytest.param("", {"zen_code": PBL}, "refused tempfail 451", id="tempfail-band"),
        pytest.param(
            "",
            {"zen_code": SBL, "recipient": "postmaster@example.com"},
            "unrefusable accept exempt",
            id="exempt-postmaster",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "address": "192.0.2.200"},
            "allowed accept allowed_by=client:192.0.2.128/25",
            id="allow-client",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "name": "mx.partner.example"},
            "allowed accept allowed_by=client_name:*.partner.example",
            id="allow-verified-name",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "name": "[192.0.2.1]"},
            "refused reject 550",
            id="address-literal-is-no-name",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "confirmed": "mail.partner.example"},
            "allowed accept allowed_by=client_name:*.partner.example",
            id="allow-confirmed-name",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "helo": "MX.Friend.Example"},
            "allowed accept allowed_by=helo:*.friend.example",
            id="allow-helo",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "sender": ""},
            "allowed accept allowed_by=sender:<>",
            id="allow-null-sender",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "sender": "news@elsewhere.example"},
            "allowed accept allowed_by=sender:news@",
            id="allow-sender-local-part",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "recipient": "vip@example.com"},
            "unrefusable accept allowed_by=recipient:vip@example.com",
            id="allow-recipient",
        ),
        pytest.param(
            ALLOW,
            {"zen_code": SBL, "accepted": ("vip@example.com",), "unrefusable": 1, "judged": True},
            "refused reject 550",
            id="an-allowed-recipient-allows-no-other",
        ),
        pytest.param(
            DENY,
            {"address": "198.51.100.7"},
            "refused reject 550 denied_by=client:198.51.100.0/24",
            id="deny-client",
        ),
        pytest.param(
            DENY,
            {"name": "mx.bad.example"},
            "refused reject 550 denied_by=client_name:*.bad.example",
            id="deny-verified-name",
        ),
        pytest.param(
            DENY,
            {"confirmed": "mx.bad.example"},
            "refused reject 550 denied_by=client_name:*.bad.example",
            id="deny-confirmed-name",
        ),
        pytest.param(
            DENY,
            {"helo": "mx.bad.example"},
            "refused reject 550 denied_by=helo:*.bad.example",
            id="deny-helo",
        ),
        pytest.param(
            DENY,
            {"sender": "x@bad.example"},
            "refused reject 550 denied_by=sender:@bad.example",
            id="deny-sender",
        ),
        pytest.param(
            DENY,
            {"recipient": "gone@example.com"},
            "refused reject 550 denied_by=recipient:gone@",
            id="deny-recipient",
        ),
        pytest.param(
            DENY,
            {"sender": "x@bad.example", "recipient": "postmaster@example.com"},
            "unrefusable accept exempt",
            id="exempt-beats-deny",
        ),
        pytest.param(
            ALLOW + DENY.replace("senders: [", "senders: ['@partner.example', "),
            {"sender": "x@partner.example"},
            "allowed accept allowed_by=sender:@partner.example",
            id="allowed-sender-beats-denied-sender",
        ),
        pytest.param(
            ALLOW + DENY,
            {"address": "192.0.2.200", "sender": "x@bad.example"},
            "allowed accept allowed_by=client:192.0.2.128/25",
            id="allowed-client-beats-denied-sender",
        ),
        pytest.param(
            ALLOW + DENY,
            {"sender": "x@bad.example", "recipient": "vip@example.com"},
            "unrefusable accept allowed_by=recipient:vip@example.com",
            id="allowed-recipient-beats-denied-sender",
        ),
        pytest.param(
            DENY + "mode: observe\n",
            {"sender": "x@bad.example"},
            "accepted accept denied_by=sender:@bad.example, observe",
            id="observe-waives-deny",
        ),
        pytest.param(
            DENY + "mode: observe\nthresholds: {tag: 0, greylist: null, reject: 10}\n",
            {"sender": "x@bad.example"},
            "accepted tag denied_by=sender:@bad.example, observe",
            id="observe-waives-deny-as-enforce-does-tagged-from-tag",
        ),
        pytest.param(
            "mode: observe\n", {"zen_code": SBL}, "accepted tag observe", id="observe-waives-score"
        ),
        pytest.param(
            GROUPS,
            {"zen_code": SBL, "recipient": "x@example.net"},
            "accepted tag",
            id="group-scores",
        ),
        pytest.param(
            GROUPS,
            {"zen_code": SBL, "recipient": "x@trial.example"},
            "accepted tag observe",
            id="observe-group",
        ),
    ],
)
def test_who_decides_a_recipient(extra: str, given: dict[str, Any], expected: str) -> None:
    assert said(decide(engine(extra), facts(engine(extra), **given))) == expected


@pytest.mark.parametrize(
    ("extra", "given", "reply"),
    [
        pytest.param(
            'replies: {reject: "Go away: {reasons} [{id}] {score} {client}"}\n',
            {"zen_code": SBL},
            Reply(550, "5.7.1", "Go away: listed in the Example SBL [d1] 10.0 192.0.2.1"),
            id="reject-template",
        ),
        pytest.param(
            "",
            {"zen_code": PBL},
            Reply(451, "4.7.1", "Try again later: listed in the Example PBL (id d1)"),
            id="tempfail",
        ),
        pytest.param(
            'deny: {senders: ["@bad.example"], reply: "Not from you ({client}, id {id})"}\n',
            {"sender": "x@bad.example"},
            Reply(550, "5.7.1", "Not from you (192.0.2.1, id d1)"),
            id="deny-template",
        ),
    ],
)
def test_replies(extra: str, given: dict[str, Any], reply: Reply | None) -> None:
    assert decide(engine(extra), facts(engine(extra), **given)).reply == reply


def test_an_allowed_transaction_is_unscored_and_its_lists_ignored() -> None:
    ruling = decide(engine(ALLOW), facts(engine(ALLOW), address="192.0.2.200", zen_code=SBL))
    assert ruling.judged is not None and ruling.verdict is None
    assert ruling.allowed_by == "client:192.0.2.128/25"
    evidence, verdict = ruling.judged.evidence, ruling.judged.verdict
    assert (evidence.lists_ignored, verdict.score, verdict.hits) == (ListsIgnored.ALLOWED, 0, ())


def test_a_denied_recipient_is_logged_as_an_unscored_reject() -> None:
    ruling = decide(engine(DENY), facts(engine(DENY), recipient="gone@example.com"))
    assert ruling.judged is not None and ruling.denied_by == "recipient:gone@"
    judged = ruling.judged
    assert (judged.verdict.action, judged.verdict.score, judged.evidence.lists_ignored) == (
        Action.REJECT,
        0.0,
        ListsIgnored.DENIED,
    )


# --- splitting: 452 4.5.3 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "given", "why"),
    [
        pytest.param(
            GROUPS,
            {
                "recipient": "x@example.net",
                "accepted": ("u@example.com",),
                "groups": "u@example.com",
            },
            "split: policy lenient, transaction default",
            id="another-policy",
        ),
        pytest.param(
            ALLOW,
            {"recipient": "postmaster@example.com", "accepted": ("u@example.com",)},
            "split: exempt, transaction for others",
            id="exempt-after-others",
        ),
        pytest.param(
            ALLOW,
            {"recipient": "vip@example.com", "accepted": ("u@example.com",)},
            "split: allowed_by=recipient:vip@example.com, transaction for others",
            id="allowlisted-after-others",
        ),
        pytest.param(
            "",
            {"accepted": ("postmaster@example.com",), "unrefusable": 1, "judged": True},
            "split: transaction for exempt recipients",
            id="others-after-exempt",
        ),
    ],
)
def test_split_recipients(extra: str, given: dict[str, Any], why: str) -> None:
    eng = engine(extra)
    if "groups" in given:
        given = {**given, "groups": (eng.group_for(given["groups"]),)}
    ruling = decide(eng, facts(eng, **given))
    assert said(ruling) == f"deferred tempfail 452 {why}"
    assert ruling.reply == SPLIT_REPLY and (SPLIT_REPLY.code, SPLIT_REPLY.status) == (452, "4.5.3")


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(
            {"recipient": "x@example.net", "accepted": ("u@example.com",), "groups": ()},
            id="no-judged-recipient-yet",
        ),
        pytest.param(
            {"recipient": "postmaster@example.com", "accepted": ("u@example.com",)},
            id="exempt-after-others",
        ),
        pytest.param(
            {"accepted": ("postmaster@example.com",), "unrefusable": 1, "judged": True},
            id="others-after-exempt",
        ),
    ],
)
def test_without_splitting_nobody_is_deferred(given: dict[str, Any]) -> None:
    eng = engine(GROUPS + "split_recipient_policies: false\n")
    assert decide(eng, facts(eng, **given)).disposition is not Disposition.DEFERRED


# --- what decide asks for --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "given", "needs"),
    [
        pytest.param("", {}, Need.CLIENT_NAME, id="first-the-client-name"),
        pytest.param(
            "", {"known": Need.CLIENT_NAME}, Need.EVIDENCE | Need.HELO_NAME, id="then-evidence"
        ),
        pytest.param(
            "",
            {"recipient": "postmaster@example.com"},
            Need.EVIDENCE | GATHERED,
            id="exempt-judged-for-the-log",
        ),
        pytest.param(
            "",
            {"recipient": "postmaster@example.com", "judged": True},
            Need.NOTHING,
            id="exempt-already-judged",
        ),
        pytest.param(
            DENY,
            {"known": Need.CLIENT_NAME, "sender": "x@bad.example"},
            Need.NOTHING,
            id="denied-waits-for-no-dns",
        ),
        pytest.param(
            ALLOW,
            {"known": Need.CLIENT_NAME, "sender": ""},
            Need.NOTHING,
            id="allowed-waits-for-no-dns",
        ),
        pytest.param(
            "",
            {"known": Need.CLIENT_NAME, "authenticated": True},
            Need.EVIDENCE,
            id="authenticated-no-helo-check",
        ),
        pytest.param(
            "",
            {"known": Need.NOTHING, "message": CLEAN},
            Need.EVIDENCE | GATHERED,
            id="end-of-message",
        ),
    ],
)
def test_what_decide_asks_for(extra: str, given: dict[str, Any], needs: Need) -> None:
    eng = engine(extra)
    given.setdefault("known", Need.NOTHING)
    ruling = decide(eng, facts(eng, gathered=False, **given))
    assert ruling.needs == needs
    if needs:
        assert ruling == Ruling(needs=needs)


VERIFIED = 'allow: {verified_senders: ["@partner.example"]}\n'


@pytest.mark.parametrize(
    ("spf_result", "expected"),
    [
        pytest.param(
            SpfResult.PASS,
            "allowed accept allowed_by=verified_sender:@partner.example(spf)",
            id="pass",
        ),
        pytest.param(SpfResult.FAIL, "refused reject 550", id="fail-is-judged"),
        pytest.param(SpfResult.TEMPERROR, "refused reject 550", id="temperror-is-judged"),
        pytest.param(None, "refused reject 550", id="not-checked-is-judged"),
    ],
)
def test_a_verified_sender_is_allowed_only_when_spf_passes(
    spf_result: SpfResult | None, expected: str
) -> None:
    eng = engine(VERIFIED)
    given = facts(eng, sender="x@partner.example", zen_code=SBL)
    verdict = None if spf_result is None else SpfVerdict(spf_result, "partner.example")
    assert said(decide(eng, dataclasses.replace(given, spf=verdict))) == expected


def test_a_verified_sender_waits_for_the_evidence_that_brings_spf() -> None:
    eng = engine(VERIFIED)
    ruling = decide(eng, facts(eng, sender="x@partner.example", gathered=False))
    assert ruling.needs == Need.EVIDENCE
