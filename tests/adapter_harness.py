"""SpamgateMilter driven through pymilter's own test context, with a fake resolver, for
tests/adapter/test_adapter*.py.

Milter.testctx.TestCtx has traps (PYMILTER-FACTS): its class-level default options are mutated
by the first negotiation; it treats NOREPLY as a refusal and closes the session; its chgheader
appends instead of replacing. So each session here gets fresh options that offer no
"no reply" protocol bits (as an MTA without that protocol step would), and header actions are
recorded instead of applied. The no-reply path itself is proven end to end through Postfix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import Milter
import pytest
from Milter import testctx

from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.adapter import SpamgateMilter
from spamgate.shell.runtime import Runtime
from tests.fakes import NO_REPLY_BITS, ScriptedLookups

LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN, ttl=60)

BASE_POLICY = """
resolver: {deadline: 0.2}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: s3cr3tkey.zen.test
    error_codes: [127.0.0.255]
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 7}
  - name: WL
    zone: wl.test
    hits:
      - {name: WL_HI, codes: ["127.0.*.3"], score: -5}
rules:
  - name: SUBJECT_PHARMA
    score: 4
    description: the Subject advertises pharmacy products
    header: {name: Subject, matches: '(?i)\\bv[i1]agra\\b'}
  - name: NO_DATE
    score: 1
    description: the message has no Date header
    header: {name: Date, missing: true}
"""


def make_policy(extra: str = "") -> Policy:
    return schema.load(Policy, BASE_POLICY + extra, "test.yaml")


def answering(answers: Mapping[str, DnsAnswer | None]) -> ScriptedLookups:
    """A resolver that answers these A questions at once (None: never) and any other clean."""
    return ScriptedLookups(
        {(qname, "A"): answer for qname, answer in answers.items()}, default=CLEAN
    )


class RecordingCtx(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records header actions instead of editing a parsed message."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, int]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        assert self._body is not None, "addheader outside eom"
        self.added.append((field, value))

    def setsymlist(self, stage: int, macros: str) -> None:
        # libmilter's C binding takes str only (pymilter's own Base.setsymlist passes bytes).
        assert isinstance(macros, str), macros
        super().setsymlist(stage, macros)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        assert self._body is not None, "chgheader outside eom"
        assert value == "", "spamgate only deletes headers"
        self.deleted.append((field, idx))


def fresh_options() -> None:
    # TestCtx passes (and negotiation mutates) one class-level list: replace it every time.
    testctx.TestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF & ~NO_REPLY_BITS, 0, 0]


class Session:
    def __init__(self, policy: Policy, lookups: ScriptedLookups) -> None:
        fresh_options()
        self.runtime = Runtime(Engine(policy), lookups)
        Milter.factory = lambda: SpamgateMilter(self.runtime)
        self.ctx = RecordingCtx()

    def connect(self, ip: str = "192.0.2.1", helo: str = "mx.example.org") -> int:
        return int(self.ctx._connect(host="mx.example.org", helo=helo, ip=ip))

    def mail(self, sender: str = "<a@example.org>", auth: str | None = None) -> int:
        self.ctx._setsymval("{auth_authen}", auth)
        return int(self.ctx._envfrom(sender))

    def rcpt(self, recipient: str) -> int:
        self.ctx._reply = None
        return int(self.ctx._envrcpt(recipient))

    def message(self, headers: list[tuple[str, str]], queue_id: str = "4XyZ1") -> int:
        ctx = self.ctx
        ctx._reply = None
        ctx._setsymval("i", queue_id)
        ctx._data()
        for name, value in headers:
            ctx._header(name, value)
        ctx._eoh()
        return int(ctx._eom())

    def close(self) -> None:
        self.ctx._close()

    @property
    def reply(self) -> tuple[Any, ...] | None:
        return self.ctx._reply  # type: ignore[no-any-return]

    @property
    def milter(self) -> SpamgateMilter:
        return self.ctx.getpriv()  # type: ignore[no-any-return]


GOOD_HEADERS = [("From", "a@example.org"), ("Subject", "hello"), ("Date", "today")]


@pytest.fixture
def decision_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    caplog.set_level(logging.INFO, logger="spamgate")
    lines: list[str] = []
    yield lines
    lines.extend(r.getMessage() for r in caplog.records if r.name == "spamgate.decision")


def decisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spamgate.decision"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spamgate")
