"""Playing a dialogue into the Session (ring 1) and into the adapter through pymilter's
TestCtx (ring 2), checking every answer on the way (tests/adapter/test_hostile_input.py)."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import Milter
from Milter import testctx

from spamgate.shell.adapter import SpamgateMilter
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import RcptResult, Session
from tests.fakes import NO_REPLY_BITS
from tests.hostile_dialogues import Dialogue, c_string, session_address, text_macro, wire
from tests.hostile_world import (
    MAX_REPLY_LINE,
    InstantLookups,
    check_header_action,
    check_log,
    check_message,
    check_rcpt,
    check_reply_text,
    make_runtime,
    note,
)

# --- ring 1: the Session -----------------------------------------------------------------------


def run_session(dialogue: Dialogue, resolver: InstantLookups) -> list[str]:
    """Play a dialogue into a Session, checking every decision; the decision log lines."""
    log: list[str] = []
    session = Session(make_runtime(resolver, log.append))
    macros = {name: text_macro(value) for name, value in dialogue.macros.items()}
    session.connect(dialogue.client_name, session_address(*dialogue.endpoint), macros)
    for helo in dialogue.helos:
        session.helo(helo)
    for transaction in dialogue.transactions:
        session.mail(transaction.sender, bool(text_macro(transaction.auth)))
        results = []
        for recipient in transaction.recipients:
            decision = session.rcpt(recipient)
            check_rcpt(decision)
            results.append(decision.result)
            if decision.result is RcptResult.ACCEPT_ALL:
                break  # the MTA consults the milter no more about this message
        if RcptResult.ACCEPT_ALL in results:
            continue
        # Events in the order an MTA sends them: DATA only with a recipient left.
        if RcptResult.CONTINUE in results and transaction.ending == "eom":
            for name, value in transaction.headers:
                session.header(name, value)
            check_message(session.end_of_message(text_macro(transaction.queue_id) or ""))
        elif transaction.ending == "abort":
            session.finish_transaction()
    session.close()
    session.close()  # a second close is harmless (negotiate may close a session itself)
    check_log(log)
    return log


# --- ring 2: the adapter, through pymilter's TestCtx -------------------------------------------

ANSWER_NAMES = {
    Milter.CONTINUE: "CONTINUE",
    Milter.ACCEPT: "ACCEPT",
    Milter.REJECT: "REJECT",
    Milter.TEMPFAIL: "TEMPFAIL",
}
DEFINED = frozenset(ANSWER_NAMES)


class HostileCtx(testctx.TestCtx):  # type: ignore[misc]  # pymilter is untyped
    """TestCtx as pymilter's C layer behaves where it matters here: a macro value that is not
    UTF-8 raises UnicodeDecodeError (Py_BuildValue("s", ...)); setreply refuses what
    libmilter would drop; header actions are recorded (TestCtx's need a parsed message)."""

    def __init__(self, macros: Mapping[str, str | bytes | None]) -> None:
        super().__init__()
        self._macros = dict(macros)
        self.added: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, int]] = []
        self.quarantined: list[str] = []

    def getsymval(self, name: str) -> str | None:
        value = super().getsymval(name)
        if isinstance(value, bytes):
            return value.decode("utf-8")  # strict, as the C layer: may raise
        return value  # type: ignore[no-any-return]

    def setreply(self, rcode: str, xcode: str, *lines: str) -> None:
        for text in (rcode, xcode, *lines):
            text.encode("utf-8")
            if set(text) & {"\r", "\n", "\x00"} or len(text) > MAX_REPLY_LINE:
                raise ValueError(f"libmilter would drop this reply: {text!r}")
        super().setreply(rcode, xcode, *lines)

    def addheader(self, field: str, value: str, idx: int) -> None:
        check_header_action(field, value)
        self.added.append((field, value))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        check_header_action(field, value)
        self.deleted.append((field, idx))

    def quarantine(self, reason: str) -> None:
        check_header_action("", reason)
        self.quarantined.append(reason)


class WatchedMilter(SpamgateMilter):
    """SpamgateMilter that remembers each internal error the guards turn into `on_error`."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.errors: list[str] = []

    def note_internal_error(self, callback: str) -> None:
        self.errors.append(f"{callback}: {traceback.format_exc()}")
        super().note_internal_error(callback)


@dataclass
class Connection:
    """One milter connection: callbacks called as libmilter's C layer calls them."""

    milter: WatchedMilter
    ctx: HostileCtx
    answers: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def open(cls, runtime: Runtime, macros: Mapping[str, str | bytes | None]) -> Connection:
        milter = WatchedMilter(runtime)
        ctx = HostileCtx(macros)
        milter._setctx(ctx)
        ctx._stage = -1  # negotiation: TestCtx allows setsymlist only then
        # An MTA offering every action and protocol step but the no-reply ones (TestCtx
        # treats NOREPLY as a refusal): fresh lists, as negotiation mutates them.
        offered = [Milter.CURR_ACTS, 0x1FFFFF & ~NO_REPLY_BITS, 0, 0]
        assert milter.negotiate(offered) == Milter.CONTINUE
        ctx._opts = offered
        ctx._protocol = offered[1]
        return cls(milter, ctx)

    def call(self, stage: int, name: str, *args: Any) -> int:
        """Call one callback at `stage`; check the answer and the reply it set."""
        ctx = self.ctx
        ctx._stage = stage
        ctx._reply = None
        try:
            answer = int(getattr(self.milter, name)(*args))
        finally:
            ctx._stage = None
        self.answers.append((name, answer))
        assert answer in DEFINED, (name, answer)
        if name in ("envrcpt_bytes", "eom"):
            note(f"{name}: {ANSWER_NAMES[answer]}")
        if name in ("connect", "hello", "envfrom_bytes"):
            # No-reply callbacks: anything but CONTINUE would desynchronise the protocol.
            assert answer == Milter.CONTINUE, (name, answer)
        reply = ctx._reply
        if answer in (Milter.REJECT, Milter.TEMPFAIL):
            assert reply is not None, f"{name} refused without a reply"
            code, status, text = reply
            assert code[0] == ("5" if answer == Milter.REJECT else "4"), (name, answer, reply)
            assert len(code) == 3 and code.isdigit() and status[0] == code[0], reply
            # libmilter drops a reply with a lone %; the client sees one % for each %%.
            assert "%" not in text.replace("%%", ""), text
            check_reply_text(text.replace("%%", "%"))
        else:
            assert reply is None, f"{name} answered {answer} with a reply {reply}"
        return answer


def run_adapter(dialogue: Dialogue, resolver: InstantLookups) -> Connection:
    log: list[str] = []
    conn = Connection.open(make_runtime(resolver, log.append), dialogue.macros)
    ctx = conn.ctx
    conn.call(Milter.M_CONNECT, "connect", c_string(dialogue.client_name), *dialogue.endpoint)
    for helo in dialogue.helos:
        conn.call(Milter.M_HELO, "hello", c_string(helo))
    for transaction in dialogue.transactions:
        ctx._macros["{auth_authen}"] = transaction.auth
        ctx._macros["i"] = transaction.queue_id
        conn.call(
            Milter.M_ENVFROM,
            "envfrom_bytes",
            wire(transaction.sender),
            *(wire(p) for p in transaction.params),
        )
        accepted = whole_message_accepted = False
        for recipient in transaction.recipients:
            # RCPT parameters (NOTIFY=, ORCPT=) come after the address, as for MAIL.
            rcpt_params = (wire(p) for p in transaction.params[1:])
            answer = conn.call(Milter.M_ENVRCPT, "envrcpt_bytes", wire(recipient), *rcpt_params)
            accepted = accepted or answer == Milter.CONTINUE
            if answer == Milter.ACCEPT:  # the MTA asks this milter nothing more about it
                whole_message_accepted = True
                break
        if whole_message_accepted:
            continue
        if not accepted or transaction.ending == "abort":
            conn.call(Milter.M_EOM, "abort")  # RSET, or no recipient left for DATA
            continue
        if conn.call(Milter.M_DATA, "data") != Milter.CONTINUE:
            continue
        for name, value in transaction.headers:
            answer = conn.call(Milter.M_DATA, "header_bytes", c_string(name), wire(value))
            if answer != Milter.CONTINUE:
                break
        else:
            if conn.call(Milter.M_EOH, "eoh") == Milter.CONTINUE:
                ctx._body = True  # eom: header actions allowed
                conn.call(Milter.M_EOM, "eom")
                ctx._body = None
    assert conn.milter.close() == Milter.CONTINUE
    assert not conn.milter.errors, "\n".join(conn.milter.errors)
    check_log(log)
    return conn
