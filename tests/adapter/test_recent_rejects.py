"""The memory of recently rejected clients (`state.remember_rejects`): a client refused for its
IP list listings alone is refused again at once on its next connections, without a DNS query,
for as long as the memory lasts; anything else is judged afresh."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re

import pytest

from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import Session
from spamgate.state.recentrejects import RecentRejects
from spamgate.state.store import MemoryStore, StateStore
from tests.fakes import BrokenStore, FakeClock, ScriptedLookups

LISTED = "192.0.2.2"
SBL = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
PBL = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10",), ttl=60)
TTL = 600

POLICY = f"""
resolver: {{deadline: 0.5}}
thresholds: {{tag: 3, greylist: null, reject: 10}}
state: {{remember_rejects: {TTL}}}
ip_lists:
  - name: ZEN
    zone: zen.test
    hits:
      - {{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the SBL}}
      - {{name: ZEN_PBL, codes: [127.0.0.10], score: 6, description: listed in the PBL}}
rules:
  - {{name: HELO_BARE_IP, score: 5, description: a bare IP HELO, helo: bare_ip}}
"""

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


class Mx:
    def __init__(self, store: StateStore, policy: str = POLICY) -> None:
        self.lookups = ScriptedLookups(
            {("2.2.0.192.zen.test", "A"): SBL, ("3.2.0.192.zen.test", "A"): PBL}
        )
        self.log: list[str] = []
        parsed = schema.load(Policy, policy, "test.yaml")
        ids = (f"id{n:04d}" for n in itertools.count(1))
        self.runtime = Runtime(
            Engine(parsed),
            self.lookups,
            clock=FakeClock(),
            new_id=lambda: next(ids),
            log=self.log.append,
            recent_rejects=RecentRejects(store, parsed.state.remember_rejects),
        )

    def attempt(
        self,
        client: str = LISTED,
        rcpt: str = "<user@example.com>",
        helo: str = "mx.example.org",
        auth: bool = False,
    ) -> tuple[str, list[tuple[str, str]]]:
        """(the RCPT reply, or "ok"; the DNS questions the connection asked)."""
        before = len(self.lookups.calls)
        session = Session(self.runtime)
        session.connect("unknown", ipaddress.ip_address(client), {})
        session.helo(helo)
        session.mail("<a@example.org>", auth)
        decision = session.rcpt(rcpt)
        session.close()
        reply = decision.reply
        text = "ok" if reply is None else f"{reply.code} {reply.status} {reply.text}"
        return text, self.lookups.calls[before:]

    def last_line(self) -> dict[str, str]:
        return dict(_FIELD.findall(self.log[-1].partition(": decision ")[2]))


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def test_a_client_refused_for_its_listing_is_refused_again_without_dns(wall: FakeClock) -> None:
    mx = Mx(MemoryStore(wall))
    first, asked = mx.attempt()
    assert first == "550 5.7.1 Message refused: listed in the SBL (id id0001)"
    assert asked == [("2.2.0.192.zen.test", "A")]
    again, asked = mx.attempt()
    assert again == "550 5.7.1 Message refused: listed in the SBL (id id0002)"
    assert asked == []
    line = mx.last_line()
    assert (line["lists_ignored"], line["hits"], line["action"]) == (
        "remembered",
        "ZEN_SBL:10",
        "reject",
    )
    assert "lists" not in line


def test_postmaster_stays_reachable_from_a_remembered_client(wall: FakeClock) -> None:
    mx = Mx(MemoryStore(wall))
    mx.attempt()
    assert mx.attempt(rcpt="<postmaster@example.com>")[0] == "ok"


def test_the_memory_ends_after_its_time(wall: FakeClock) -> None:
    mx = Mx(MemoryStore(wall))
    mx.attempt()
    wall.now += TTL + 1
    refused, asked = mx.attempt()
    assert refused.startswith("550 ")
    assert asked == [("2.2.0.192.zen.test", "A")]


def test_a_refusal_that_other_evidence_completed_is_not_remembered(wall: FakeClock) -> None:
    mx = Mx(MemoryStore(wall))
    # PBL (6) and a bare-IP HELO (5) reach 10 together, not the listing alone.
    assert mx.attempt(client="192.0.2.3", helo="192.0.2.3")[0].startswith("550 ")
    refused, asked = mx.attempt(client="192.0.2.3", helo="192.0.2.3")
    assert refused.startswith("550 ")
    assert asked == [("3.2.0.192.zen.test", "A")]


def test_remembered_hits_count_as_the_policy_now_scores_them(wall: FakeClock) -> None:
    store = MemoryStore(wall)
    Mx(store).attempt()
    milder = Mx(store, POLICY.replace("score: 10, description: listed in the SBL", "score: 4"))
    assert milder.attempt() == ("ok", [])
    line = milder.last_line()
    assert (line["hits"], line["action"]) == ("ZEN_SBL:4", "tag")


def test_authenticated_clients_are_not_refused_from_memory(wall: FakeClock) -> None:
    mx = Mx(MemoryStore(wall))
    mx.attempt()
    assert mx.attempt(auth=True)[0] == "ok"
    assert mx.last_line()["lists_ignored"] == "authenticated"


def test_off_by_default() -> None:
    policy = schema.load(Policy, POLICY.replace(f"remember_rejects: {TTL}", "timeout: 0.2"), "t")
    assert policy.state.remember_rejects == 0
    assert not policy.uses_state


def test_a_failing_store_means_asking_the_lists(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spamgate")
    mx = Mx(BrokenStore())
    for _ in range(2):
        refused, asked = mx.attempt()
        assert refused.startswith("550 ")
        assert asked == [("2.2.0.192.zen.test", "A")]
    (warning,) = [r.getMessage() for r in caplog.records if "fail open" in r.getMessage()]
    assert "ConnectionError: Connection refused" in warning
