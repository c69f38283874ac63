"""The pure policy engine: scoring, thresholds, enforcement, headers, exemptions."""

from __future__ import annotations

import pytest

from spamgate import schema
from spamgate.answers import AnswerKind, DnsAnswer
from spamgate.config import Policy
from spamgate.dnslists import classify
from spamgate.engine import Action, Engine, Evidence, choose_action

POLICY = """
ip_lists:
  - name: BL
    display: Example BL
    zone: bl.test
    hits:
      - {name: BL_HIGH, codes: [127.0.0.2], score: 10, description: listed for spamming}
      - {name: BL_LOW, codes: [127.0.0.3], score: 2.5}
  - name: WL
    zone: wl.test
    score: -4
rules:
  - {name: R1, score: 1.5, description: rule one, header: {name: Subject, missing: true}}
  - {name: R2, score: -1, description: rule two, header: {name: Date, missing: true}}
"""


def engine(extra: str = "") -> Engine:
    return Engine(schema.load(Policy, POLICY + extra, "t.yaml"))


def evidence(eng: Engine, bl: tuple[str, ...] = (), wl: bool = False, rules: str = "") -> Evidence:
    bl_list, wl_list = eng.policy.ip_lists
    outcomes = [
        classify(
            bl_list, DnsAnswer(AnswerKind.RECORDS, bl) if bl else DnsAnswer(AnswerKind.NXDOMAIN)
        ),
        classify(
            wl_list,
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",)) if wl else DnsAnswer(AnswerKind.NXDOMAIN),
        ),
    ]
    fired = tuple(r for r in eng.policy.rules if r.name in rules.split(","))
    return Evidence(tuple(outcomes), "", fired)


@pytest.mark.parametrize(
    ("codes", "allow", "rules", "score", "action"),
    [
        pytest.param((), False, "", 0.0, Action.ACCEPT, id="nothing"),
        pytest.param(("127.0.0.3",), False, "", 2.5, Action.ACCEPT, id="low-below-tag"),
        pytest.param(("127.0.0.3",), False, "R1", 4.0, Action.TAG, id="tag"),
        pytest.param(("127.0.0.2",), True, "", 6.0, Action.TEMPFAIL, id="allowlist-offsets"),
        pytest.param(("127.0.0.2",), False, "", 10.0, Action.REJECT, id="reject-at-threshold"),
        pytest.param(("127.0.0.2", "127.0.0.3"), False, "R1", 14.0, Action.REJECT, id="multi"),
        pytest.param((), True, "R2", -5.0, Action.ACCEPT, id="negative"),
    ],
)
def test_score_and_action(
    codes: tuple[str, ...], allow: bool, rules: str, score: float, action: Action
) -> None:
    eng = engine()
    verdict = eng.evaluate(evidence(eng, codes, allow, rules))
    assert verdict.score == score
    assert verdict.action is action


@pytest.mark.parametrize(
    ("thresholds", "score", "action"),
    [
        pytest.param("{tag: null, tempfail: null, reject: null}", 100, Action.ACCEPT, id="never"),
        pytest.param("{tag: 1, tempfail: null, reject: 5}", 4, Action.TAG, id="no-tempfail-band"),
        pytest.param("{tag: 1, tempfail: 5, reject: 5}", 5, Action.REJECT, id="reject-wins-tie"),
        pytest.param("{tag: 0, tempfail: 5, reject: 9}", 0, Action.TAG, id="tag-everything"),
        pytest.param("{tag: 0, tempfail: 5, reject: 9}", -0.5, Action.ACCEPT, id="below-zero"),
    ],
)
def test_thresholds(thresholds: str, score: float, action: Action) -> None:
    assert choose_action(score, engine(f"thresholds: {thresholds}\n").policy.thresholds) is action


def test_lists_ignored_do_not_score() -> None:
    eng = engine()
    full = evidence(eng, ("127.0.0.2",))
    verdict = eng.evaluate(Evidence(full.lists, "authenticated", full.rules))
    assert verdict.score == 0.0 and verdict.hits == ()


def test_unusable_answer_scores_nothing() -> None:
    eng = engine()
    bl_list = eng.policy.ip_lists[0]
    blocked = classify(bl_list, DnsAnswer(AnswerKind.RECORDS, ("127.255.255.254",)))
    assert eng.evaluate(Evidence((blocked,))).score == 0.0


def test_enforce_reject_reply_names_reasons_worst_first() -> None:
    eng = engine()
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2", "127.0.0.3"), rules="R1"))
    enforced = eng.enforce(verdict, "abc123", exempt=False)
    assert enforced.action is Action.REJECT
    assert enforced.reply is not None
    assert (enforced.reply.code, enforced.reply.status) == (550, "5.7.1")
    assert enforced.reply.text == (
        "Message refused: listed for spamming; listed by Example BL; rule one (id abc123)"
    )
    assert "bl.test" not in enforced.reply.text


def test_enforce_tempfail() -> None:
    eng = engine()
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",), wl=True))
    enforced = eng.enforce(verdict, "x1", exempt=False)
    assert enforced.action is Action.TEMPFAIL and enforced.reply is not None
    assert (enforced.reply.code, enforced.reply.status) == (451, "4.7.1")


@pytest.mark.parametrize(
    ("extra", "exempt", "waived_by", "applied"),
    [
        pytest.param("mode: observe\n", False, "observe", Action.TAG, id="observe"),
        pytest.param("", True, "exempt", Action.TAG, id="exempt"),
        pytest.param(
            "mode: observe\nthresholds: {tag: null}\n",
            False,
            "observe",
            Action.ACCEPT,
            id="observe-no-tagging",
        ),
    ],
)
def test_refusal_waived(extra: str, exempt: bool, waived_by: str, applied: Action) -> None:
    eng = engine(extra)
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",)))
    assert verdict.action is Action.REJECT
    enforced = eng.enforce(verdict, "x", exempt=exempt)
    assert (enforced.action, enforced.reply, enforced.waived_by) == (applied, None, waived_by)


@pytest.mark.parametrize(
    ("recipient", "exempt"),
    [
        pytest.param("<postmaster@example.com>", True, id="postmaster"),
        pytest.param("<POSTMASTER@Example.com>", True, id="case"),
        pytest.param("<postmaster>", True, id="bare-postmaster-rfc5321"),
        pytest.param("<abuse@example.net>", True, id="abuse"),
        pytest.param("<postmaster-x@example.com>", False, id="prefix"),
        pytest.param("<user@postmaster.example>", False, id="domain"),
        pytest.param("<ceo@example.com>", True, id="configured-address"),
        pytest.param("<ceo@example.org>", False, id="other-domain"),
    ],
)
def test_exempt_recipients(recipient: str, exempt: bool) -> None:
    eng = engine("exempt_recipients: [postmaster, abuse, ceo@example.com]\n")
    assert eng.is_exempt(recipient) is exempt


@pytest.mark.parametrize(
    ("add_headers", "codes", "expected"),
    [
        pytest.param(
            "always",
            (),
            (("X-Spam-Score", "0.0"), ("X-Spam-Status", "No, score=0.0 hits=none")),
            id="always-clean",
        ),
        pytest.param("tagged", (), (), id="tagged-clean"),
        pytest.param(
            "tagged",
            ("127.0.0.3",),
            (("X-Spam-Score", "4.0"), ("X-Spam-Status", "Yes, score=4.0 hits=BL_LOW,R1")),
            id="tagged-spam",
        ),
    ],
)
def test_spam_headers(
    add_headers: str, codes: tuple[str, ...], expected: tuple[tuple[str, str], ...]
) -> None:
    eng = engine(f"add_headers: {add_headers}\n")
    verdict = eng.evaluate(evidence(eng, codes, rules="R1" if codes else ""))
    applied = eng.enforce(verdict, "x", exempt=False).action
    assert eng.spam_headers(verdict, applied) == expected
