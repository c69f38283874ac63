"""The pure policy engine: scoring, thresholds, enforcement, headers, exemptions."""

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
    Verdict,
    choose_action,
)
from spamgate.core.policy import Mode, Policy, Thresholds
from spamgate.core.replies import MAX_TEXT, Reply
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import ListOutcome, ListStatus, classify

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


# Most tests here score into a tempfail band, which is off by default (greylisting is on).
TEMPFAIL_BAND = "thresholds: {tag: 3, greylist: null, tempfail: 6, reject: 10}\n"


def engine(extra: str = "") -> Engine:
    top_level = extra.startswith("thresholds:") or "\nthresholds:" in extra
    band = "" if top_level else TEMPFAIL_BAND
    return Engine(schema.load(Policy, band + POLICY + extra, "t.yaml"))


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
    return Evidence(tuple(outcomes), None, fired)


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


# --- reply templates ---------------------------------------------------------------------------

TEMPLATES = (
    'replies: {reject: "{client} scored {score}: {reasons} [{id}]",'
    ' tempfail: "{reasons}; retry (id {id}, {client})"}\n'
)


@pytest.mark.parametrize(
    ("codes", "reply"),
    [
        pytest.param(
            ("127.0.0.2",),
            Reply(550, "5.7.1", "2001:db8::7 scored 10.0: listed for spamming [t-1]"),
            id="reject",
        ),
        pytest.param(
            ("127.0.0.2", "127.0.0.3"),
            Reply(
                550,
                "5.7.1",
                "2001:db8::7 scored 12.5: listed for spamming; listed by Example BL [t-1]",
            ),
            id="reject-two-reasons",
        ),
        pytest.param(
            ("127.0.0.3", "127.0.0.2"),
            Reply(
                550,
                "5.7.1",
                "2001:db8::7 scored 12.5: listed for spamming; listed by Example BL [t-1]",
            ),
            id="worst-reason-first",
        ),
    ],
)
def test_reply_template_fields(codes: tuple[str, ...], reply: Reply) -> None:
    eng = engine(TEMPLATES)
    verdict = eng.evaluate(evidence(eng, codes))
    assert eng.enforce(verdict, "t-1", client="2001:db8::7").reply == reply


def test_tempfail_template_fields() -> None:
    eng = engine(TEMPLATES)
    verdict = eng.evaluate(evidence(eng, ("127.0.0.2",), wl=True))
    assert eng.enforce(verdict, "t-2", client="192.0.2.1").reply == Reply(
        451, "4.7.1", "listed for spamming; retry (id t-2, 192.0.2.1)"
    )


def long_reasons_policy(template: str) -> str:
    rules = "".join(
        f"  - {{name: LONG{n}, score: {5 - n}, description: {'x' * 140}{n},"
        f" header: {{name: X-H{n}, missing: true}}}}\n"
        for n in range(3)
    )
    return f"replies: {{reject: {template!r}}}\nrules:\n{rules}"


def test_reasons_are_cut_so_the_id_survives() -> None:
    eng = Engine(schema.load(Policy, long_reasons_policy("Refused: {reasons} (id {id})"), "t"))
    verdict = eng.evaluate(Evidence((), None, eng.policy.rules))
    assert verdict.action is Action.REJECT  # 5 + 4 + 3
    reply = eng.enforce(verdict, "abc123").reply
    assert reply is not None
    assert len(reply.text) == MAX_TEXT
    reasons = reply.text.removeprefix("Refused: ").removesuffix(" (id abc123)")
    room = MAX_TEXT - len("Refused:  (id abc123)")
    assert reasons == ("x" * 140 + "0; " + "x" * 140 + "1; " + "x" * 140)[: room - 3] + "..."
    assert reply.text.endswith(" (id abc123)")


def test_the_id_survives_a_long_reply_template() -> None:
    template = (
        "Your message to example.com was refused by our mail filter, for the following reasons "
        "(worst first): {reasons} (id {id})"
    )
    eng = Engine(schema.load(Policy, long_reasons_policy(template), "t"))
    verdict = eng.evaluate(Evidence((), None, eng.policy.rules))
    reply = eng.enforce(verdict, "abc123").reply
    assert reply is not None and reply.text.endswith("(id abc123)")


def test_a_percent_sign_in_a_reason_is_doubled_for_libmilter() -> None:
    eng = engine(
        "  - {name: PCT, score: 10, description: 100% spam, header: {name: X-P, missing: true}}\n"
    )
    reply = eng.enforce(eng.evaluate(Evidence((), None, (eng.policy.rules[-1],))), "p1").reply
    assert reply is not None
    assert reply.text == "Message refused: 100% spam (id p1)"
    assert reply.milter_text == "Message refused: 100%% spam (id p1)"


# --- deny --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        pytest.param("", "Refused by local policy (id d-1)", id="default"),
        pytest.param(
            'deny: {reply: "No mail from {client}, sorry (ref {id})"}\n',
            "No mail from 192.0.2.66, sorry (ref d-1)",
            id="template",
        ),
        pytest.param(
            'deny: {reply: "Go   away\\tnow {id}"}\n',
            "Go away now d-1",
            id="blanks-squeezed",
        ),
    ],
)
def test_deny_is_a_550_with_the_deny_reply(extra: str, text: str) -> None:
    eng = engine(extra)
    denied = Verdict(0.0, (), Action.REJECT)
    enforced = eng.enforce(denied, "d-1", client="192.0.2.66", denied=True)
    assert enforced == Enforcement(Action.REJECT, Reply(550, "5.7.1", text))


@pytest.mark.parametrize(
    ("thresholds", "enforced"),
    [
        pytest.param("", Action.ACCEPT, id="unscored-below-tag"),
        pytest.param("thresholds: {tag: 0, greylist: null, reject: 10}\n", Action.TAG, id="tag-0"),
    ],
)
def test_observe_mode_waives_a_deny_like_any_refusal(thresholds: str, enforced: Action) -> None:
    eng = engine("mode: observe\n" + thresholds)
    denied = Verdict(0.0, (), Action.REJECT)
    assert eng.enforce(denied, "d-1", client="192.0.2.66", denied=True) == Enforcement(
        enforced, waived_by="observe"
    )


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
