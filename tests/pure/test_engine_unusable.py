"""The pure policy engine when a list cannot be asked: on_unusable."""

from __future__ import annotations

import pytest

from spamgate.core import schema
from spamgate.core.engine import Action, Enforcement, Engine, Evidence, ListsIgnored
from spamgate.core.policy import Policy
from spamgate.core.replies import MAX_TEXT, Reply
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import ListOutcome, ListStatus, classify

# --- a list that cannot be asked: on_unusable ---------------------------------------------------

OVERLOAD = r"""
thresholds: {tag: 3, greylist: 5, quarantine: null, tempfail: null, reject: 10}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: zen.test
    on_unusable: tempfail
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 4, description: listed in the Example PBL}
  - {name: JUDGED, zone: judged.test, score: 10}
  - {name: WL, display: Example WL, zone: wl.test, on_unusable: tempfail, score: -5}
  - {name: SMALL, zone: small.test, on_unusable: tempfail, score: 1}
  - {name: TRIAL, zone: trial.test, mode: observe, on_unusable: tempfail, score: 10}
domain_lists:
  - name: DBL
    display: Example DBL
    zone: dbl.test
    on_unusable: tempfail
    hits: [{name: DBL_SPAM, codes: [127.0.1.2], score: 6, description: a spam domain}]
rules:
  - {name: BULK, score: 4, description: a bulk sender, sender_matches: '^bulk-'}
  - {name: NO_DATE, score: 6, description: no Date header, header: {name: Date, missing: true}}
  - {name: TRAP, score: 0, description: a spam trap, recipient_matches: '^trap@',
     action: reject}
recipient_policies:
  - {name: watching, recipients: ["@observe.example"], mode: observe}
  - name: lenient
    recipients: ["@lenient.example"]
    thresholds: {tag: null, greylist: null, reject: 10}
    scores: {ZEN_SBL: 1, ZEN_PBL: 1}
  - name: band
    recipients: ["@band.example"]
    thresholds: {tag: 3, greylist: null, tempfail: 4, reject: 10}
"""

OVERLOAD_ENGINE = Engine(schema.load(Policy, OVERLOAD, "t.yaml"))
ZEN_TEXT = "Cannot check your address against Example ZEN right now, please try again later"


def outcomes(eng: Engine, spec: str) -> tuple[ListOutcome, ...]:
    """`ZEN=unusable DBL=127.0.1.2 WL=clean`: one outcome per list named; the rest clean."""
    answers = dict(item.split("=") for item in spec.split())
    found = []
    for dns_list in eng.policy.dns_lists:
        answer = answers.get(dns_list.name, "clean")
        if answer == "unusable":
            found.append(ListOutcome(dns_list, ListStatus.UNUSABLE, failure="servfail"))
        elif answer == "clean":
            found.append(classify(dns_list, DnsAnswer(AnswerKind.NXDOMAIN)))
        else:
            found.append(classify(dns_list, DnsAnswer(AnswerKind.RECORDS, (answer,))))
    return tuple(found)


def overload_evidence(lists: str, rules: str = "", ignored: ListsIgnored | None = None) -> Evidence:
    eng = OVERLOAD_ENGINE
    fired = tuple(r for r in eng.policy.rules if r.name in rules.split(","))
    return Evidence(outcomes(eng, lists), ignored, fired)


@pytest.mark.parametrize(
    ("lists", "rules", "group", "action", "tempfail_by"),
    [
        pytest.param("JUDGED=unusable", "", "", Action.ACCEPT, (), id="judge-is-the-default"),
        pytest.param("ZEN=unusable", "", "", Action.TEMPFAIL, ("ZEN",), id="could-reject"),
        pytest.param("SMALL=unusable", "", "", Action.ACCEPT, (), id="could-not-change"),
        pytest.param(
            "SMALL=unusable",
            "BULK",
            "",
            Action.TEMPFAIL,
            ("SMALL",),
            id="one-point-tips-tag-into-greylist",
        ),
        pytest.param(
            "ZEN=unusable",
            "BULK,NO_DATE",
            "",
            Action.REJECT,
            (),
            id="already-reject-by-score-stays-reject",
        ),
        pytest.param("ZEN=unusable", "TRAP", "", Action.REJECT, (), id="reject-floor-stays"),
        pytest.param(
            "WL=unusable",
            "BULK,NO_DATE",
            "",
            Action.TEMPFAIL,
            ("WL",),
            id="allowlist-could-have-lowered-a-reject",
        ),
        pytest.param(
            "WL=unusable DBL=127.0.1.2",
            "",
            "",
            Action.TEMPFAIL,
            ("WL",),
            id="allowlist-could-have-lowered-a-greylist",
        ),
        pytest.param("WL=unusable", "BULK", "", Action.TAG, (), id="allowlist-tag-is-no-refusal"),
        pytest.param("WL=unusable", "", "", Action.ACCEPT, (), id="allowlist-nothing-to-lower"),
        pytest.param(
            "WL=unusable",
            "TRAP",
            "",
            Action.REJECT,
            (),
            id="allowlist-cannot-lower-a-reject-floor",
        ),
        pytest.param(
            "WL=unusable ZEN=127.0.0.2",
            "BULK,NO_DATE",
            "",
            Action.REJECT,
            (),
            id="allowlist-could-not-lower-enough",
        ),
        pytest.param(
            "ZEN=unusable DBL=unusable",
            "",
            "",
            Action.TEMPFAIL,
            ("ZEN", "DBL"),
            id="several-lists-each-could",
        ),
        pytest.param(
            "ZEN=unusable SMALL=unusable",
            "",
            "",
            Action.TEMPFAIL,
            ("ZEN",),
            id="several-lists-only-one-could",
        ),
        pytest.param(
            "ZEN=unusable WL=unusable",
            "",
            "",
            Action.TEMPFAIL,
            ("ZEN",),
            id="blocklist-and-allowlist-silent-each-judged-alone",
        ),
        pytest.param(
            "ZEN=unusable",
            "",
            "lenient@lenient.example",
            Action.ACCEPT,
            (),
            id="group-scores-could-not-change",
        ),
        pytest.param(
            "ZEN=unusable",
            "BULK",
            "x@band.example",
            Action.TEMPFAIL,
            (),
            id="already-tempfail-by-score-keeps-its-reply",
        ),
    ],
)
def test_an_unusable_list_defers_only_what_it_could_have_changed(
    lists: str,
    rules: str,
    group: str,
    action: Action,
    tempfail_by: tuple[str, ...],
) -> None:
    eng = OVERLOAD_ENGINE
    judging = eng.group_for(group) if group else eng.default_group
    verdict = eng.evaluate(overload_evidence(lists, rules), judging)
    assert (verdict.action, verdict.tempfail_by) == (action, tempfail_by)
    assert (verdict.trial_action, verdict.trial_tempfail_by) == (None, ())
    enforcement = eng.enforce(verdict, "d1", group=judging)
    assert enforcement.action is action  # enforced as decided: no observe mode, no exemption
    if tempfail_by:
        assert enforcement.reply is not None
        assert (enforcement.reply.code, enforcement.reply.status) == (451, "4.7.1")
        assert enforcement.reply.text.startswith("Cannot check your address against ")


def test_the_reply_names_the_list_by_its_display_name_never_its_zone() -> None:
    eng = OVERLOAD_ENGINE
    verdict = eng.evaluate(overload_evidence("ZEN=unusable DBL=unusable"))
    enforcement = eng.enforce(verdict, "d2", client="192.0.2.7")
    assert enforcement == Enforcement(
        Action.TEMPFAIL,
        Reply(
            451,
            "4.7.1",
            "Cannot check your address against Example ZEN, Example DBL right now,"
            " please try again later (id d2)",
        ),
    )
    assert enforcement.reply is not None and "zen.test" not in enforcement.reply.text


def test_a_tempfail_by_score_keeps_its_own_reply() -> None:
    eng = OVERLOAD_ENGINE
    band = eng.group_for("x@band.example")
    verdict = eng.evaluate(overload_evidence("ZEN=unusable", "BULK"), band)
    assert eng.enforce(verdict, "b1", group=band).reply == Reply(
        451, "4.7.1", "Try again later: a bulk sender (id b1)"
    )


def test_a_hit_that_already_scored_adds_nothing() -> None:
    # DBL listed the sender domain (DBL_SPAM, 6: greylist); its answer for the From domain
    # was lost, but its only hit already counts: nothing the lost answer could have added.
    eng = OVERLOAD_ENGINE
    dbl = eng.policy.domain_lists[0]
    listed = classify(dbl, DnsAnswer(AnswerKind.RECORDS, ("127.0.1.2",)), subject="sender:x.test")
    lost = ListOutcome(dbl, ListStatus.UNUSABLE, failure="timeout", subject="from:y.test")
    verdict = eng.evaluate(Evidence((listed, lost)))
    assert (verdict.score, verdict.action, verdict.tempfail_by) == (6.0, Action.GREYLIST, ())


@pytest.mark.parametrize(
    "ignored",
    [
        pytest.param(ListsIgnored.AUTHENTICATED, id="authenticated"),
        pytest.param(ListsIgnored.TRUSTED, id="trusted"),
        pytest.param(ListsIgnored.ALLOWED, id="allowlisted"),
        pytest.param(ListsIgnored.REMEMBERED, id="refused-lately"),
    ],
)
def test_lists_not_asked_or_not_counted_never_defer(ignored: ListsIgnored) -> None:
    verdict = OVERLOAD_ENGINE.evaluate(overload_evidence("ZEN=unusable", ignored=ignored))
    assert (verdict.action, verdict.tempfail_by) == (Action.ACCEPT, ())


def test_observe_group_logs_the_tempfail_and_accepts() -> None:
    eng = OVERLOAD_ENGINE
    watching = eng.group_for("x@observe.example")
    verdict = eng.evaluate(overload_evidence("ZEN=unusable"), watching)
    assert (verdict.action, verdict.tempfail_by) == (Action.TEMPFAIL, ("ZEN",))
    assert eng.enforce(verdict, "o1", group=watching) == Enforcement(
        Action.ACCEPT, waived_by="observe"
    )


def test_an_exempt_recipient_is_never_deferred() -> None:
    eng = OVERLOAD_ENGINE
    verdict = eng.evaluate(overload_evidence("ZEN=unusable"))
    assert verdict.action is Action.TEMPFAIL
    assert eng.enforce(verdict, "e1", exempt=True) == Enforcement(Action.ACCEPT, waived_by="exempt")
    tagged = eng.evaluate(overload_evidence("ZEN=unusable", "BULK"))
    assert eng.enforce(tagged, "e2", exempt=True) == Enforcement(Action.TAG, waived_by="exempt")


def test_a_list_on_trial_says_what_would_have_happened() -> None:
    eng = OVERLOAD_ENGINE
    verdict = eng.evaluate(overload_evidence("TRIAL=unusable"))
    assert (verdict.action, verdict.tempfail_by) == (Action.ACCEPT, ())
    assert (verdict.trial_score, verdict.trial_action) == (0.0, Action.TEMPFAIL)
    assert verdict.trial_tempfail_by == ("TRIAL",)
    assert eng.enforce(verdict, "t1") == Enforcement(Action.ACCEPT)


def test_a_list_on_trial_that_could_not_have_changed_anything_leaves_no_trial() -> None:
    verdict = OVERLOAD_ENGINE.evaluate(overload_evidence("TRIAL=unusable", "BULK,NO_DATE"))
    assert (verdict.action, verdict.trial_action, verdict.trial_tempfail_by) == (
        Action.REJECT,
        None,
        (),
    )


def test_unusable_reply_template_and_cut_list_names_keep_the_id() -> None:
    displays = "".join(
        f"  - {{name: L{n}, display: {'x' * 150}{n}, zone: l{n}.test, on_unusable: tempfail,"
        " score: 10}\n"
        for n in range(3)
    )
    text = (
        'replies: {unusable: "{client}: {lists} unreachable, retry (ref {id})"}\n'
        f"ip_lists:\n{displays}"
    )
    eng = Engine(schema.load(Policy, text, "t.yaml"))
    silent = tuple(
        ListOutcome(dns_list, ListStatus.UNUSABLE, failure="deadline")
        for dns_list in eng.policy.ip_lists
    )
    verdict = eng.evaluate(Evidence(silent))
    assert verdict.tempfail_by == ("L0", "L1", "L2")
    reply = eng.enforce(verdict, "abc123", client="192.0.2.9").reply
    assert reply is not None
    assert len(reply.text) == MAX_TEXT
    assert reply.text.startswith("192.0.2.9: " + "x" * 150 + "0, " + "x" * 150 + "1, x")
    assert reply.text.endswith("... unreachable, retry (ref abc123)")


def test_lists_that_could_only_together_have_changed_the_action_do_not_defer() -> None:
    text = (
        "thresholds: {tag: null, greylist: null, reject: 10}\n"
        "ip_lists:\n"
        "  - {name: ONE, zone: one.test, on_unusable: tempfail, score: 6}\n"
        "  - {name: TWO, zone: two.test, on_unusable: tempfail, score: 6}\n"
    )
    eng = Engine(schema.load(Policy, text, "t.yaml"))
    silent = tuple(
        ListOutcome(dns_list, ListStatus.UNUSABLE, failure="timeout")
        for dns_list in eng.policy.ip_lists
    )
    verdict = eng.evaluate(Evidence(silent))
    assert (verdict.action, verdict.tempfail_by) == (Action.ACCEPT, ())
