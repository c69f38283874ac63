"""The pymilter adapter: the only module that imports Milter.

It turns libmilter callbacks into facts for the engine and the engine's enforcement into
milter replies — nothing more. Policy lives in `engine`, DNS in `resolver`.

Protocol rules this module keeps (see PYMILTER-FACTS and libmilter's smfi_* pages):
- Callbacks marked @noreply must return CONTINUE and never raise, or the protocol falls out
  of step and Postfix waits milter_content_timeout (300 s). `_noreply_guarded` makes that
  impossible; an error there is remembered and `on_error` is applied at the next callback
  that may reply.
- Header changes are only possible in eom().
- libmilter may move one session between threads: all state lives on the instance.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import secrets
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import Milter
import milter as libmilter

from spamgate.config import ListenAddress, OnError, Rule, SocketMode
from spamgate.decisionlog import Decision, format_decision
from spamgate.dnslists import (
    IPAddress,
    ListCounters,
    ListOutcome,
    Lookups,
    PendingChecks,
    lookup_address,
)
from spamgate.engine import OUR_HEADERS, Action, Enforcement, Engine, Evidence, Verdict
from spamgate.replies import Reply, internal_error

log = logging.getLogger("spamgate")
decisions = logging.getLogger("spamgate.decision")

# The only actions spamgate takes; asking for no more lets the MTA skip the rest.
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS


@dataclass
class Runtime:
    """What every session shares. `engine` is read once per connection, so a connection keeps
    the policy it started with even if a newer one is installed meanwhile."""

    engine: Engine
    resolver: Lookups
    clock: Callable[[], float] = time.monotonic
    new_id: Callable[[], str] = field(default=lambda: secrets.token_hex(5))
    counters: ListCounters = field(default_factory=ListCounters)


@dataclass
class Connection:
    engine: Engine
    address: IPAddress | None
    address_text: str
    name: str
    checks: PendingChecks | None
    lists_ignored: str
    helo: str = ""


@dataclass
class Transaction:
    decision_id: str
    sender: str
    authenticated: bool
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    rcpt_evidence: Evidence | None = None
    rcpt_verdict: Verdict | None = None
    last_enforcement: Enforcement | None = None
    rule_hits: dict[str, Rule] = field(default_factory=dict)
    seen_headers: set[str] = field(default_factory=set)
    our_headers: dict[str, int] = field(default_factory=dict)
    failed: bool = False
    logged: bool = False


Callback = TypeVar("Callback", bound=Callable[..., Any])


def _noreply_guarded(method: Callback) -> Callback:
    """A callback the MTA does not wait for: it cannot fail or answer anything but CONTINUE."""

    @functools.wraps(method)
    def wrapper(self: SpamgateMilter, *args: Any) -> int:
        try:
            method(self, *args)
        except Exception:
            self.note_internal_error(method.__name__)
        return int(Milter.CONTINUE)

    return Milter.noreply(wrapper)  # type: ignore[no-any-return]


def _guarded(method: Callback) -> Callback:
    """A callback that replies: an internal error becomes the `on_error` answer."""

    @functools.wraps(method)
    def wrapper(self: SpamgateMilter, *args: Any) -> int:
        try:
            return int(method(self, *args))
        except Exception:
            self.note_internal_error(method.__name__)
            return self.error_response()

    return wrapper  # type: ignore[return-value]


class SpamgateMilter(Milter.Base):  # type: ignore[misc]  # pymilter is untyped
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.connection: Connection | None = None
        self.transaction: Transaction | None = None
        # Set by an internal error in a connection-stage callback; lasts for the connection.
        self.connection_failed = False

    def negotiate(self, opts: list[int]) -> int:
        result = int(super().negotiate(opts))
        opts[0] &= ACTIONS
        self._actions = opts[0]
        return result

    # -- connection stage -------------------------------------------------------------------

    @_noreply_guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> None:
        engine = self.runtime.engine
        address = client_address(family, hostaddr)
        address_text = str(address) if address else "unknown"
        checks, ignored = None, ""
        policy = engine.policy
        if address is None:
            ignored = "no-address"
        elif any(lookup_address(address) in net for net in policy.trusted_networks):
            ignored = "trusted"
        elif policy.ip_lists:
            # Start now so the lookups overlap HELO, MAIL and the rest of the dialogue.
            runtime = self.runtime
            checks = PendingChecks(
                runtime.resolver, address, policy.ip_lists, runtime.clock, runtime.counters
            )
        self.connection = Connection(engine, address, address_text, hostname, checks, ignored)

    @_noreply_guarded
    def hello(self, heloname: str) -> None:
        if self.connection is not None:
            self.connection.helo = heloname

    # -- transaction stage ------------------------------------------------------------------

    @_noreply_guarded
    def envfrom(self, mailfrom: str, *params: str) -> None:
        self._finish_transaction()
        authenticated = bool(self.getsymval("{auth_authen}"))
        self.transaction = Transaction(self.runtime.new_id(), mailfrom, authenticated)

    @_guarded
    def envrcpt(self, to: str, *params: str) -> int:
        if self._failed():
            return self.error_response()
        connection, transaction = self._session()
        engine = connection.engine
        if transaction.rcpt_verdict is None:
            transaction.rcpt_evidence = self._evidence(connection, transaction)
            transaction.rcpt_verdict = engine.evaluate(transaction.rcpt_evidence)
        enforcement = engine.enforce(
            transaction.rcpt_verdict, transaction.decision_id, engine.is_exempt(to)
        )
        transaction.last_enforcement = enforcement
        if enforcement.reply is not None:
            transaction.refused.append(to)
            return self._refuse(enforcement.action, enforcement.reply)
        transaction.accepted.append(to)
        return int(Milter.CONTINUE)

    # data, header and eoh answer CONTINUE rather than being no-reply callbacks. Postfix sends
    # the events of the message back to back; if we never answer, each of its small writes
    # waits (Nagle) for the ACK of the previous one, which our side delays by ~40 ms. An answer
    # carries the ACK at once. Measured: 42 ms -> ~1 ms at end of message over inet:.
    # (connect, helo and mail can stay no-reply: an SMTP round trip separates them.)
    @_guarded
    def data(self) -> int:
        return int(Milter.CONTINUE)

    @_guarded
    def header(self, name: str, value: str) -> int:
        transaction = self.transaction
        if transaction is not None:
            rulebook = self._session()[0].engine.rulebook
            lowered = name.lower()
            if lowered in OUR_HEADERS:
                transaction.our_headers[name] = transaction.our_headers.get(name, 0) + 1
            if rulebook.checks_missing(lowered):
                transaction.seen_headers.add(lowered)
            for rule in rulebook.match_header(lowered, value):
                transaction.rule_hits.setdefault(rule.name, rule)
        return int(Milter.CONTINUE)

    @_guarded
    def eoh(self) -> int:
        return int(Milter.CONTINUE)

    @_guarded
    def eom(self) -> int:
        if self._failed():
            return self.error_response()
        connection, transaction = self._session()
        engine = connection.engine
        for rule in engine.rulebook.missing(transaction.seen_headers):
            transaction.rule_hits.setdefault(rule.name, rule)
        evidence = self._evidence(connection, transaction)
        verdict = engine.evaluate(evidence)
        exempt = any(engine.is_exempt(rcpt) for rcpt in transaction.accepted)
        enforcement = engine.enforce(verdict, transaction.decision_id, exempt)
        if enforcement.reply is None:
            self._rewrite_headers(transaction, engine.spam_headers(verdict, enforcement.action))
        queue_id = self.getsymval("i") or ""
        self._log_decision(
            connection=connection,
            transaction=transaction,
            evidence=evidence,
            verdict=verdict,
            enforcement=enforcement,
            stage="eom",
            queue_id=queue_id,
        )
        if enforcement.reply is not None:
            return self._refuse(enforcement.action, enforcement.reply)
        return int(Milter.CONTINUE)

    def _rewrite_headers(self, transaction: Transaction, ours: tuple[tuple[str, str], ...]) -> None:
        # Headers named like ours that came from outside would be believed downstream: delete
        # every occurrence (highest index first, so earlier indexes stay valid).
        for name, count in transaction.our_headers.items():
            for index in range(count, 0, -1):
                self.chgheader(name, index, "")
        for name, value in ours:
            self.addheader(name, value)

    @_guarded
    def abort(self) -> int:
        self._finish_transaction()
        return int(Milter.CONTINUE)

    @_guarded
    def close(self) -> int:
        self._finish_transaction()
        self.connection = None
        return int(Milter.CONTINUE)

    # -- helpers ----------------------------------------------------------------------------

    def _failed(self) -> bool:
        transaction = self.transaction
        return self.connection_failed or (transaction is not None and transaction.failed)

    def _session(self) -> tuple[Connection, Transaction]:
        if self.connection is None or self.transaction is None:
            raise RuntimeError("callback outside a transaction")
        return self.connection, self.transaction

    def _evidence(self, connection: Connection, transaction: Transaction) -> Evidence:
        policy = connection.engine.policy
        outcomes: tuple[ListOutcome, ...] = ()
        if connection.checks is not None:
            outcomes = connection.checks.collect(policy.resolver.deadline)
        ignored = connection.lists_ignored
        if not ignored and transaction.authenticated and policy.skip_authenticated:
            ignored = "authenticated"
        return Evidence(outcomes, ignored, tuple(transaction.rule_hits.values()))

    def _refuse(self, action: Action, reply: Reply) -> int:
        self.setreply(str(reply.code), reply.status, reply.milter_text)
        return int(Milter.REJECT if action is Action.REJECT else Milter.TEMPFAIL)

    def _finish_transaction(self) -> None:
        """Log a transaction that ended before end-of-message, if anything was decided."""
        transaction, self.transaction = self.transaction, None
        connection = self.connection
        if connection is None or transaction is None or transaction.logged:
            return
        if transaction.rcpt_evidence is None or transaction.rcpt_verdict is None:
            return
        self._log_decision(
            connection=connection,
            transaction=transaction,
            evidence=transaction.rcpt_evidence,
            verdict=transaction.rcpt_verdict,
            enforcement=transaction.last_enforcement or Enforcement(Action.ACCEPT),
            stage="rcpt",
            queue_id="",
        )

    @staticmethod
    def _log_decision(
        *,
        connection: Connection,
        transaction: Transaction,
        evidence: Evidence,
        verdict: Verdict,
        enforcement: Enforcement,
        stage: str,
        queue_id: str,
    ) -> None:
        transaction.logged = True
        decision = Decision(
            decision_id=transaction.decision_id,
            queue_id=queue_id,
            client_address=connection.address_text,
            client_name=connection.name,
            helo=connection.helo,
            sender=transaction.sender,
            accepted=tuple(transaction.accepted),
            refused=tuple(transaction.refused),
            stage=stage,
            verdict=verdict,
            enforced=enforcement,
            mode=connection.engine.policy.mode,
            lists=evidence.lists,
            lists_ignored=evidence.lists_ignored,
            policy_digest=connection.engine.policy.digest,
        )
        decisions.info(format_decision(decision))

    def note_internal_error(self, callback: str) -> None:
        """Log one ERROR line with the traceback folded into it, and mark the session failed."""
        kind, error, tb = sys.exc_info()
        frames = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in reversed(traceback.extract_tb(tb))
        )
        transaction, connection = self.transaction, self.connection
        if transaction is not None and callback not in ("connect", "hello", "close"):
            transaction.failed = True
        else:
            self.connection_failed = True
        decision_id = transaction.decision_id if transaction else "-"
        client = connection.address_text if connection else "unknown"
        policy = (connection.engine if connection else self.runtime.engine).policy
        log.error(
            "internal error in %s: id=%s client=%s on_error=%s error=%r traceback=%s",
            callback,
            decision_id,
            client,
            policy.on_error.value,
            error if kind else None,
            frames,
        )

    def error_response(self) -> int:
        connection = self.connection
        policy = (connection.engine if connection else self.runtime.engine).policy
        if policy.on_error is OnError.TEMPFAIL:
            decision_id = self.transaction.decision_id if self.transaction else "-"
            try:
                reply = internal_error(decision_id)
                self.setreply(str(reply.code), reply.status, reply.milter_text)
            except Exception:
                log.exception("could not set the on_error reply")
            return int(Milter.TEMPFAIL)
        return int(Milter.ACCEPT)


def client_address(family: int, hostaddr: Any) -> IPAddress | None:
    """The client's IP from connect()'s hostaddr: ('1.2.3.4', port) or ('2001:db8::5', ...)."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not hostaddr:
        return None
    text = hostaddr[0] if isinstance(hostaddr, tuple) else hostaddr
    if not isinstance(text, str):
        return None
    try:
        # A scoped link-local address (fe80::1%eth0) is still the same client.
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def serve(runtime: Runtime, listen: ListenAddress, mode: SocketMode) -> None:
    """Run the milter until libmilter is told to stop (SIGTERM, SIGINT or SIGHUP)."""
    Milter.factory = lambda: SpamgateMilter(runtime)
    libmilter.set_flags(ACTIONS)
    _register_callbacks()
    libmilter.setconn(str(listen))
    libmilter.register(
        "spamgate",
        data=lambda ctx: ctx.getpriv().data(),
        negotiate=Milter.negotiate_callback,
    )
    # The socket exists from here on, so its mode and options can be set before serving.
    try:
        libmilter.opensocket(True)
    except libmilter.error:
        raise ListenError(f"cannot listen on {listen}: {_why_not(listen)}") from None
    if listen.family == "unix":
        os.chmod(listen.path, mode.bits)
    else:
        _set_nodelay(listen)
    log.info("listening on %s", listen)
    libmilter.main()


class ListenError(Exception):
    """The milter socket could not be opened."""


def _why_not(listen: ListenAddress) -> str:
    """libmilter only says that opensocket failed; binding ourselves tells the admin why."""
    if listen.family == "unix":
        family, address = socket.AF_UNIX, listen.path
        parent = Path(listen.path).parent
        if not parent.is_dir():
            return f"directory {parent} does not exist"
    else:
        family = socket.AF_INET if listen.family == "inet" else socket.AF_INET6
        address = (listen.host, listen.port)  # type: ignore[assignment]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        return error.strerror or str(error)
    return "libmilter refused the socket (see the mail log)"


def _register_callbacks() -> None:
    # The same wiring Milter.runmilter does, split out so the socket can be tuned between
    # opensocket() and main(). Bytes callbacks let pymilter apply its surrogateescape decoding.
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)


def _set_nodelay(listen: ListenAddress) -> None:
    """Set TCP_NODELAY on libmilter's listening socket; accepted sockets inherit it on Linux.

    libmilter never sets it, so an action packet (ADDHEADER) followed by the final reply waits
    for the MTA's delayed ACK: ~40 ms per message on an inet socket (PYMILTER-FACTS).
    """
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if not stat.S_ISSOCK(os.stat(entry).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(int(entry.name)))
        except (ValueError, OSError):
            continue
        with sock:
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                if listening and sock.getsockname()[1] == listen.port:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return
            except OSError:
                continue
    log.warning("could not set TCP_NODELAY on %s; expect ~40 ms per tagged message", listen)
