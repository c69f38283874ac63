"""Greylisting as the SMTP dialogue sees it: which transactions are asked to retry, what the
sender is told, what is logged and counted. Sessions run on a scripted resolver, a state kept
in memory and a wall clock that only moves when a test moves it."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re

import pytest

from spamgate.core import schema
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.metrics import Metrics
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import RcptResult, Session
from spamgate.state.greylist import Greylister, GreylistTiming
from spamgate.state.store import MemoryStore, StateStore
from tests.fakes import BrokenStore, FakeClock, ScriptedLookups

CLIENT = "192.0.2.1"
PBL_Q = ("1.2.0.192.zen.test", "A")
PBL = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10",), ttl=60)

POLICY = """
resolver: {deadline: 0.5}
thresholds: {tag: 3, greylist: 5, tempfail: null, reject: 10}
greylist: {min_delay: 300, retry_window: 3600}
ip_lists:
  - name: ZEN
    zone: zen.test
    hits:
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 6, description: listed in the PBL}
rules:
  - {name: SUBJECT_OFFER, score: 6, description: an offer, header: {name: Subject, matches: offer}}
  - {name: FROM_BULK, score: 0, description: a bulk sender, sender_matches: '^bulk@',
     action: greylist}
  - {name: FROM_TRIAL, score: 0, description: on trial, sender_matches: '^trial@',
     action: greylist, mode: observe}
"""

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


class Mx:
    """One MX host: a policy, the greylist state, and the clocks; `session()` is a connection."""

    def __init__(self, policy: str = POLICY, store: StateStore | None = None) -> None:
        self.policy = schema.load(Policy, policy, "test.yaml")
        self.wall = FakeClock(1_700_000_000.0)
        self.lookups = ScriptedLookups({PBL_Q: PBL})
        self.log: list[str] = []
        self.metrics = Metrics()
        timing = GreylistTiming.from_settings(self.policy.greylist)
        self.greylister = Greylister(store or MemoryStore(self.wall), timing, self.wall)
        ids = (f"id{n:04d}" for n in itertools.count(1))
        self.runtime = Runtime(
            Engine(self.policy),
            self.lookups,
            clock=FakeClock(),
            new_id=lambda: next(ids),
            log=self.log.append,
            metrics=self.metrics,
            greylister=self.greylister,
        )

    def session(self, client: str = CLIENT, sender: str = "<a@example.org>") -> Session:
        session = Session(self.runtime)
        session.connect("unknown", ipaddress.ip_address(client), {})
        session.helo("mx.example.org")
        session.mail(sender, False)
        return session

    def last_line(self) -> dict[str, str]:
        return dict(_FIELD.findall(self.log[-1].partition(": decision ")[2]))

    def counted(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "spamgate_greylist_total", {"outcome": outcome}
        )
        return value or 0.0


def attempt(mx: Mx, recipient: str = "<user@example.com>", **kwargs: str) -> tuple[str, str]:
    """One delivery attempt to the end of RCPT: (SMTP code or "ok", the reply text)."""
    session = mx.session(**kwargs)
    decision = session.rcpt(recipient)
    session.close()
    if decision.reply is None:
        return "ok", ""
    return str(decision.reply.code), f"{decision.reply.status} {decision.reply.text}"


def test_first_attempt_early_retry_valid_retry_and_known_triplet() -> None:
    mx = Mx()
    assert attempt(mx) == ("451", "4.7.1 Greylisted: please try again in 300 seconds (id id0001)")
    line = mx.last_line()
    assert (line["action"], line["enforced"], line["greylist"]) == ("greylist", "greylist", "new")
    mx.wall.now += 100
    assert attempt(mx) == ("451", "4.7.1 Greylisted: please try again in 200 seconds (id id0002)")
    assert mx.last_line()["greylist"] == "early"
    mx.wall.now += 200
    session = mx.session()
    decision = session.rcpt("<user@example.com>")
    assert (decision.result, decision.action) == (RcptResult.CONTINUE, Action.TAG)
    message = session.end_of_message("QID1")
    assert message.action is Action.TAG
    assert ("X-Greylist", "delayed 300 seconds by spamgate") in message.add_headers
    assert ("X-Spam-Status", "Yes, score=6.0 hits=ZEN_PBL") in message.add_headers
    line = mx.last_line()
    assert (line["action"], line["enforced"], line["greylist"]) == ("greylist", "tag", "passed")
    session.close()
    mx.wall.now += 86400  # a day later: remembered, not delayed again, no X-Greylist
    session = mx.session()
    assert session.rcpt("<user@example.com>").reply is None
    message = session.end_of_message("QID2")
    assert not [name for name, _ in message.add_headers if name == "X-Greylist"]
    assert mx.last_line()["greylist"] == "known"
    assert [mx.counted(o) for o in ("new", "early", "passed", "known")] == [1, 1, 1, 1]


def test_a_retry_after_the_window_starts_over() -> None:
    mx = Mx()
    assert attempt(mx)[0] == "451"
    mx.wall.now += 3601
    assert attempt(mx)[0] == "451"
    assert mx.last_line()["greylist"] == "new"


def test_a_retry_from_another_address_of_the_same_network_passes() -> None:
    mx = Mx()
    assert attempt(mx, client="192.0.2.1")[0] == "451"
    mx.wall.now += 300
    assert attempt(mx, client="192.0.2.200") == ("ok", "")


def test_each_recipient_is_its_own_triplet() -> None:
    mx = Mx()
    session = mx.session()
    replies = [session.rcpt(r).reply for r in ("<a@example.com>", "<b@example.com>")]
    assert [r.code if r else None for r in replies] == [451, 451]
    session.close()
    mx.wall.now += 300
    session = mx.session()
    passed, fresh = session.rcpt("<a@example.com>"), session.rcpt("<c@example.com>")
    session.close()
    assert passed.reply is None  # a retried in time
    assert fresh.reply is not None and fresh.reply.code == 451  # c is new
    assert (mx.last_line()["rcpt"], mx.last_line()["refused"]) == (
        "<a@example.com>",
        "<c@example.com>",
    )


@pytest.mark.parametrize(
    ("recipient", "client", "sender", "waived_by"),
    [
        pytest.param("<postmaster@example.com>", CLIENT, "<a@example.org>", "", id="postmaster"),
        pytest.param("<abuse@example.com>", CLIENT, "<a@example.org>", "", id="abuse"),
        pytest.param("<user@example.com>", "10.1.2.3", "<bulk@example.org>", "trusted",
                     id="trusted-network"),
    ],
)  # fmt: skip
def test_who_is_never_greylisted(recipient: str, client: str, sender: str, waived_by: str) -> None:
    mx = Mx()
    session = mx.session(client=client, sender=sender)
    assert session.rcpt(recipient).reply is None
    session.end_of_message("QID1")
    session.close()
    line = mx.last_line()
    assert "greylist" not in line
    assert line.get("waived_by", "") in (waived_by, "exempt")


def test_authenticated_clients_are_never_greylisted() -> None:
    mx = Mx()
    session = Session(mx.runtime)
    session.connect("unknown", ipaddress.ip_address(CLIENT), {})
    session.mail("<bulk@example.org>", True)
    assert session.rcpt("<user@example.com>").reply is None
    session.close()
    line = mx.last_line()
    assert (line["action"], line["waived_by"]) == ("greylist", "authenticated")
    assert "greylist" not in line


def test_allowlisted_clients_are_never_greylisted() -> None:
    mx = Mx(POLICY + "allow: {clients: [192.0.2.0/24]}\n")
    assert attempt(mx) == ("ok", "")
    assert "greylist" not in mx.last_line()


def test_observe_mode_logs_the_greylist_but_asks_no_one_to_retry() -> None:
    mx = Mx(POLICY + "mode: observe\n")
    assert attempt(mx) == ("ok", "")
    line = mx.last_line()
    assert (line["action"], line["waived_by"]) == ("greylist", "observe")


def test_a_rule_with_action_greylist_greylists_whatever_the_score() -> None:
    mx = Mx()
    mx.lookups.script.clear()  # the client is listed nowhere: the score is 0
    assert attempt(mx, sender="<bulk@example.org>")[0] == "451"
    line = mx.last_line()
    assert (line["score"], line["hits"], line["action"]) == ("0.0", "FROM_BULK:0", "greylist")


def test_a_rule_on_trial_only_says_it_would_have_greylisted() -> None:
    mx = Mx()
    mx.lookups.script.clear()
    assert attempt(mx, sender="<trial@example.org>") == ("ok", "")
    line = mx.last_line()
    assert (line["action"], line["trial_action"]) == ("accept", "greylist:0.0")


def test_header_evidence_greylists_the_whole_message_at_end_of_data() -> None:
    mx = Mx()
    mx.lookups.script.clear()

    def deliver() -> tuple[int | None, tuple[tuple[str, str], ...]]:
        session = mx.session()
        for recipient in ("<a@example.com>", "<b@example.com>"):
            assert session.rcpt(recipient).reply is None  # score 0 at RCPT
        session.header("Subject", "an offer")
        message = session.end_of_message("QID")
        session.close()
        return (message.reply.code if message.reply else None), message.add_headers

    code, _ = deliver()
    assert code == 451
    assert mx.last_line()["greylist"] == "new"
    mx.wall.now += 300
    code, added = deliver()
    assert code is None
    assert ("X-Greylist", "delayed 300 seconds by spamgate") in added


def test_a_failing_state_fails_open_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    mx = Mx(POLICY + "state: {store: 'redis://:hunter2@127.0.0.1:6379/0'}\n", BrokenStore())
    caplog.set_level(logging.WARNING, logger="spamgate")
    for _ in range(3):
        session = mx.session()
        assert session.rcpt("<user@example.com>").reply is None
        message = session.end_of_message("QID")
        session.close()
        assert message.action is Action.TAG
        line = mx.last_line()
        assert (line["action"], line["enforced"], line["greylist"]) == (
            "greylist",
            "tag",
            "failed-open",
        )
    assert mx.counted("failed-open") == 3
    warnings = [r.getMessage() for r in caplog.records if "fail open" in r.getMessage()]
    assert len(warnings) == 1  # one per minute, not one per message
    assert "redis://:***@127.0.0.1:6379/0" in warnings[0]
    assert "ConnectionError: Connection refused" in warnings[0]
    assert "hunter2" not in warnings[0]


def test_without_a_greylist_band_no_state_is_asked() -> None:
    mx = Mx(POLICY.replace("greylist: 5", "greylist: null"), BrokenStore())
    mx.lookups.script.clear()
    assert attempt(mx) == ("ok", "")
    assert "greylist" not in mx.last_line()
