"""The pure policy engine's replies: reply templates and deny."""

from __future__ import annotations

import pytest

from spamgate.core import schema
from spamgate.core.engine import Action, Enforcement, Engine, Evidence, Verdict
from spamgate.core.policy import Policy
from spamgate.core.replies import MAX_TEXT, Reply
from tests.engine_harness import engine, evidence

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
