"""The SMTP dialogue as a Session sees it, without libmilter: facts in, decisions and log out.

Every session in tests/adapter/test_session*.py runs on a table-driven resolver that answers at
once (or never, for the deadline cases), an injected monotonic clock that only moves when a test
moves it, an injected wall clock for Date checks, and sequential decision ids, so reply texts
and log lines can be compared whole.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import MessageDecision, Session
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
    dmarc_sample: int = 0,
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
        dmarc_sample=lambda: dmarc_sample,
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
