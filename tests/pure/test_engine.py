"""The pure policy engine: scoring, thresholds, enforcement, headers, exemptions, recipient
policy groups, quarantine, observed hits and the choice of action.
"""

from __future__ import annotations

import pytest

from spamgate.core import schema
from spamgate.core.engine import (
    DEFAULT_GROUP,
    Action,
    Enforcement,
    Engine,
    Evidence,
    Group,
    Hit,
    ListsIgnored,
    choose_action,
)
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.core.scoring import Mode, Thresholds
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import classify
from tests.engine_harness import engine, evidence


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
        pytest.param(
            "{tag: null, greylist: null, tempfail: null, reject: null}",
            100,
            Action.ACCEPT,
            id="never",
        ),
        pytest.param("{tag: 3}", 6, Action.GREYLIST, id="default-greylist-band"),
        pytest.param("{tag: 3}", 9.9, Action.GREYLIST, id="default-greylist-band-top"),
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
    verdict = eng.evaluate(Evidence(full.lists, ListsIgnored.AUTHENTICATED, full.rules))
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


# --- recipient policy groups -------------------------------------------------------------------

GROUPS = """
recipient_policies:
  - name: sales
    recipients: ["@sales.example", "boss@example.com"]
    thresholds: {tag: 1, tempfail: null, reject: 20}
    scores: {BL_HIGH: 3, WL: 0}
  - name: trial
    recipients: ["@*.example.org", "@sales.example"]
    mode: observe
"""


@pytest.mark.parametrize(
    ("recipient", "group"),
    [
        pytest.param("a@sales.example", "sales", id="domain"),
        pytest.param("boss@example.com", "sales", id="address"),
        pytest.param("<Boss@Example.COM>", "sales", id="brackets-and-case"),
        pytest.param("x@eu.example.org", "trial", id="subdomain-glob"),
        pytest.param("x@example.org", DEFAULT_GROUP, id="glob-needs-a-subdomain"),
        pytest.param("someone@example.com", DEFAULT_GROUP, id="no-match"),
    ],
)
def test_group_for_takes_the_first_matching_policy(recipient: str, group: str) -> None:
    assert engine(GROUPS).group_for(recipient).name == group


def test_groups_inherit_what_they_do_not_override() -> None:
    eng = engine(GROUPS)
    policy = eng.policy
    sales, trial = eng.group_for("a@sales.example"), eng.group_for("x@eu.example.org")
    assert sales == Group(
        "sales", Mode.ENFORCE, Thresholds(tag=1, tempfail=None, reject=20), {"BL_HIGH": 3, "WL": 0}
    )
    assert trial == Group("trial", Mode.OBSERVE, policy.thresholds, {})
    assert eng.default_group == Group(DEFAULT_GROUP, Mode.ENFORCE, policy.thresholds, {})


def test_group_scores_override_the_hit_scores() -> None:
    eng = engine(GROUPS)
    sales = eng.group_for("a@sales.example")
    proof = evidence(eng, ("127.0.0.2",), wl=True)
    default = eng.evaluate(proof)
    assert (default.score, default.action, default.group) == (6.0, Action.TEMPFAIL, DEFAULT_GROUP)
    verdict = eng.evaluate(proof, sales)
    assert verdict.hits == (
        Hit("BL_HIGH", 3.0, "listed for spamming"),
        Hit("WL", 0.0, "listed by WL"),
    )
    assert (verdict.score, verdict.action, verdict.group) == (3.0, Action.TAG, "sales")


def test_observe_group_waives_a_refusal_that_enforce_would_send() -> None:
    eng = engine(GROUPS)
    trial = eng.group_for("x@eu.example.org")
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",)), trial)
    assert (verdict.action, verdict.group) == (Action.REJECT, "trial")
    assert eng.enforce(verdict, "g1", group=trial) == Enforcement(Action.TAG, waived_by="observe")
    refused = eng.enforce(verdict, "g1")  # the same verdict under the default group
    assert refused.reply == Reply(550, "5.7.1", "Message refused: listed for spamming (id g1)")


# --- quarantine --------------------------------------------------------------------------------

QUARANTINE = "thresholds: {tag: 3, quarantine: 8, tempfail: null, reject: 12}\n"


def test_quarantine_band_is_accepted_with_a_reason_and_no_reply() -> None:
    eng = engine(QUARANTINE)
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",), rules="R1"))
    assert (verdict.score, verdict.action) == (11.5, Action.QUARANTINE)
    assert eng.enforce(verdict, "q1", client="192.0.2.1") == Enforcement(
        Action.QUARANTINE,
        quarantine_reason="spamgate: score 11.5: listed for spamming; rule one (id q1)",
    )
    assert eng.spam_headers(verdict, Action.QUARANTINE) == (
        ("X-Spam-Score", "11.5"),
        ("X-Spam-Status", "Yes, score=11.5 hits=BL_HIGH,R1"),
    )


@pytest.mark.parametrize(
    ("extra", "exempt", "expected"),
    [
        pytest.param("", True, Enforcement(Action.TAG, waived_by="exempt"), id="exempt"),
        pytest.param(
            "mode: observe\n", False, Enforcement(Action.TAG, waived_by="observe"), id="observe"
        ),
    ],
)
def test_quarantine_is_waived_like_a_refusal(
    extra: str, exempt: bool, expected: Enforcement
) -> None:
    eng = engine(QUARANTINE + extra)
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",)))
    assert verdict.action is Action.QUARANTINE
    assert eng.enforce(verdict, "q2", exempt=exempt) == expected


# --- observed hits -----------------------------------------------------------------------------

OBSERVED = """
ip_lists:
  - name: TRIAL_BL
    zone: trial.test
    mode: observe
    hits: [{name: TRIAL_HIT, score: 8, description: listed by the trial list}]
rules:
  - {name: COUNTED, score: 4, description: a counted rule, header: {name: Subject, missing: true}}
  - {name: ON_TRIAL, score: 5, description: a rule on trial, mode: observe,
     header: {name: Date, missing: true}}
"""


def observed_engine() -> tuple[Engine, Evidence]:
    eng = Engine(schema.load(Policy, OBSERVED, "t.yaml"))
    listed = classify(eng.policy.ip_lists[0], DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",)))
    return eng, Evidence((listed,), None, eng.policy.rules)


def test_observed_hits_do_not_count_but_say_what_would_have_happened() -> None:
    eng, proof = observed_engine()
    verdict = eng.evaluate(proof)
    assert verdict.hits == (
        Hit("TRIAL_HIT", 8.0, "listed by the trial list", observe=True),
        Hit("COUNTED", 4.0, "a counted rule"),
        Hit("ON_TRIAL", 5.0, "a rule on trial", observe=True),
    )
    assert (verdict.score, verdict.action) == (4.0, Action.TAG)
    assert (verdict.trial_score, verdict.trial_action) == (17.0, Action.REJECT)
    assert eng.enforce(verdict, "o1") == Enforcement(Action.TAG)
    assert eng.spam_headers(verdict, Action.TAG)[1] == (
        "X-Spam-Status",
        "Yes, score=4.0 hits=COUNTED",
    )


def test_observed_hits_are_not_reasons() -> None:
    eng, proof = observed_engine()
    only_observed = Evidence(proof.lists, None, (eng.policy.rules[1],))
    verdict = eng.evaluate(only_observed)
    assert (verdict.score, verdict.action, verdict.trial_action) == (
        0,
        Action.ACCEPT,
        Action.REJECT,
    )
    assert eng.reasons(verdict) == "policy score too high"
    assert eng.spam_headers(verdict, Action.ACCEPT) == (
        ("X-Spam-Score", "0.0"),
        ("X-Spam-Status", "No, score=0.0 hits=none"),
    )
    counted = eng.evaluate(Evidence(proof.lists, None, eng.policy.rules))
    assert eng.reasons(counted) == "a counted rule"


def test_without_observed_hits_there_is_no_trial() -> None:
    eng = engine()
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",)))
    assert (verdict.trial_score, verdict.trial_action) == (None, None)


# --- choosing the action -----------------------------------------------------------------------

T = Thresholds


@pytest.mark.parametrize(
    ("thresholds", "score", "action"),
    [
        pytest.param(
            T(tag=5, greylist=5, quarantine=5, tempfail=5, reject=5),
            5,
            Action.REJECT,
            id="five-way-tie-reject",
        ),
        pytest.param(
            T(tag=3, quarantine=5, tempfail=5, reject=None), 5, Action.TEMPFAIL, id="tie-tempfail"
        ),
        pytest.param(
            T(tag=3, greylist=5, quarantine=5, reject=None),
            5,
            Action.QUARANTINE,
            id="tie-quarantine",
        ),
        pytest.param(
            T(tag=3, greylist=5, tempfail=None, reject=None), 5, Action.GREYLIST, id="tie-greylist"
        ),
        pytest.param(
            T(tag=3, greylist=4, tempfail=6, reject=10), 3.999, Action.TAG, id="just-below-greylist"
        ),
        pytest.param(
            T(tag=3, greylist=4, tempfail=6, reject=10), 5.9, Action.GREYLIST, id="greylist-band"
        ),
        pytest.param(
            T(tag=3, greylist=4, tempfail=6, reject=10),
            6,
            Action.TEMPFAIL,
            id="tempfail-above-greylist",
        ),
        pytest.param(
            T(tag=3, quarantine=5, tempfail=6, reject=10),
            4.999,
            Action.TAG,
            id="just-below-quarantine",
        ),
        pytest.param(
            T(tag=3, quarantine=5, tempfail=6, reject=10),
            5.5,
            Action.QUARANTINE,
            id="quarantine-band",
        ),
        pytest.param(
            T(tag=3, quarantine=12, tempfail=None, reject=10),
            11,
            Action.REJECT,
            id="reject-below-q",
        ),
        pytest.param(
            T(tag=3, quarantine=12, tempfail=None, reject=10),
            12,
            Action.QUARANTINE,
            id="quarantine-above",
        ),
        pytest.param(T(tag=3, tempfail=10, reject=6), 8, Action.REJECT, id="reject-below-tempfail"),
        pytest.param(T(tag=3, tempfail=10, reject=6), 10, Action.TEMPFAIL, id="tempfail-above"),
        pytest.param(
            T(tag=None, tempfail=None, reject=1), 0.5, Action.ACCEPT, id="nothing-reached"
        ),
        pytest.param(T(tag=-5, tempfail=None, reject=None), -4, Action.TAG, id="negative-tag"),
    ],
)
def test_the_highest_threshold_reached_wins(
    thresholds: Thresholds, score: float, action: Action
) -> None:
    assert choose_action(score, thresholds) is action


# --- hits --------------------------------------------------------------------------------------

DOMAINS = """
domain_lists:
  - name: DBL
    zone: dbl.test
    hits: [{name: DBL_SPAM, codes: [127.0.1.2], score: 6, description: a spam domain}]
"""


def test_a_hit_scores_once_however_many_names_matched() -> None:
    eng = Engine(schema.load(Policy, DOMAINS, "t.yaml"))
    dbl = eng.policy.domain_lists[0]
    listed = DnsAnswer(AnswerKind.RECORDS, ("127.0.1.2",))
    outcomes = tuple(classify(dbl, listed) for _ in range(3))  # HELO, sender and From names
    verdict = eng.evaluate(Evidence(outcomes))
    assert verdict.hits == (Hit("DBL_SPAM", 6.0, "a spam domain"),)
    assert (verdict.score, verdict.action) == (6.0, Action.GREYLIST)  # the default band


def test_a_rule_and_a_list_hit_each_score_once() -> None:
    eng = engine()
    proof = evidence(eng, ("127.0.0.2", "127.0.0.2"), rules="R1")
    doubled = Evidence(proof.lists * 2, None, proof.rules * 2)
    assert eng.evaluate(doubled) == eng.evaluate(proof)
    assert eng.evaluate(doubled).score == 11.5
