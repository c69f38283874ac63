"""The pymilter adapter: the only module that imports Milter.

It turns libmilter callbacks into Session events and Session decisions into milter replies
and actions — nothing more. The dialogue lives in `session`, policy in `engine`, DNS in
`resolver`.

Protocol rules this module keeps (see PYMILTER-FACTS and libmilter's smfi_* pages):
- Callbacks marked @noreply must return CONTINUE and never raise, or the protocol falls out
  of step and Postfix waits milter_content_timeout (300 s). `_noreply_guarded` makes that
  impossible; an error there is remembered and `on_error` is applied at the next callback
  that may reply.
- Header changes are only possible in eom().
- libmilter may move one session between threads: all state lives on the instance.
- pymilter's C layer can fail before any of our code runs: it decodes a HELO, a header name
  and the client's host name as strict UTF-8 to build the callback's arguments. It then prints
  the exception (sys.excepthook) and answers with its exception policy. `serve` makes that
  policy CONTINUE and `report_uncaught` finds the session and acts for it (see there).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
import stat
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import Milter
import milter as libmilter

from spamgate.core.decisionlog import quote
from spamgate.core.policy import OnError
from spamgate.core.replies import Reply, internal_error
from spamgate.core.settings import ListenAddress, SocketMode
from spamgate.dns.dnslists import IPAddress
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import Session

log = logging.getLogger("spamgate")

# The only actions spamgate takes (asking for no more lets the MTA skip the rest), and the
# macros it reads, per stage. libmilter allows five macros per stage.
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.SETSYMLIST
CONNECT_MACROS = ("j", "{daemon_addr}", "{client_resolve}", "{client_ptr}")
MACROS = {
    Milter.M_CONNECT: CONNECT_MACROS,
    Milter.M_ENVFROM: ("{auth_authen}",),
    # Sendmail (8.17) honours a milter's end-of-message list only if it also asked for
    # end-of-header macros (milter.c checks the wrong flag): ask for the queue id at both.
    Milter.M_EOH: ("i",),
    Milter.M_EOM: ("i",),
}


Callback = TypeVar("Callback", bound=Callable[..., Any])

# pymilter gives every libmilter context (one SMTP session) a Python thread state of its own
# and switches to it for each callback of that session (_get_context() in miltermodule.c).
# threading.local keys on the thread state, so here it holds one value per *session*, even
# when libmilter moves the session to another worker thread. It is the only way back from
# sys.excepthook, which pymilter calls when it fails before our code runs, to the session.
_current = threading.local()

# The callbacks whose arguments pymilter decodes as strict UTF-8, by the callback that can
# come before them (libmilter's state machine, engine.c): after DATA or a header only a
# header; before connect, connect itself (the client's host name); otherwise a HELO.
_DECODED_AFTER = {"": "connect", "data": "header", "header": "header"}


def _noreply_guarded(method: Callback) -> Callback:
    """A callback the MTA does not wait for: it cannot fail or answer anything but CONTINUE."""

    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: SpamgateMilter, *args: Any) -> int:
        self.stage = name
        try:
            method(self, *args)
        except Exception:
            self.note_internal_error(name)
        return int(Milter.CONTINUE)

    return Milter.noreply(wrapper)  # type: ignore[no-any-return]  # untyped pymilter: Any


def _guarded(method: Callback) -> Callback:
    """A callback that replies: an internal error becomes the `on_error` answer."""

    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: SpamgateMilter, *args: Any) -> int:
        self.stage = name
        if self.failed:
            return self.error_response()
        try:
            return int(method(self, *args))
        except Exception:
            self.note_internal_error(name)
            return self.error_response()

    return wrapper  # type: ignore[return-value]  # wraps() keeps method's signature


class SpamgateMilter(Milter.Base):  # type: ignore[misc]  # pymilter is untyped
    def __init__(self, runtime: Runtime) -> None:
        self.session = Session(runtime)
        # Set by an internal error; cleared by the next MAIL FROM unless the error was in a
        # connection-stage callback (whose facts are then missing for the whole connection).
        self.failed = False
        self.connection_failed = False
        # The last of our callbacks that ran: what pymilter was about to call when it fails
        # before our code runs follows from it (_DECODED_AFTER).
        self.stage = ""
        # Whether the MTA sends the body and keeps each header's leading space (negotiate).
        self.body_asked = False
        self.leading_space = False
        self.can_skip = False
        _current.milter = self

    def negotiate(self, opts: list[int]) -> int:
        if self.session.runtime.draining:
            # Stopping: a new session is turned away, so Postfix applies milter_default_action
            # to it at once, as it would if spamgate were already gone.
            self.session.close()
            return int(Milter.REJECT)
        offered_steps = opts[1]
        result = int(super().negotiate(opts))
        self._negotiate_body(opts, offered_steps)
        offered = opts[0]
        opts[0] &= ACTIONS
        self._actions = opts[0]
        if offered & Milter.SETSYMLIST:
            try:
                for stage, macros in MACROS.items():
                    # Straight to the C context: pymilter 1.0.5's Base.setsymlist hands it
                    # bytes, which it refuses (TypeError).
                    self._ctx.setsymlist(stage, " ".join(macros))
            except Exception:
                # Without the macros spamgate still works (it looks up what it needs), but
                # a failed negotiation would cost the whole session.
                log.exception("could not ask the MTA for macros")
        return result

    def _negotiate_body(self, opts: list[int], offered: int) -> None:
        """Ask for the body, and for headers as received, only when this connection's policy
        checks DKIM (Engine.needs_body); otherwise skip the body as before.

        pymilter's Base.negotiate asks for every callback the class overrides (`body` is
        overridden, so P_NOBODY is cleared) and turns P_HDR_LEADSPC off; here it is decided
        per connection, since a reload may change the policy. With the body, the reply to
        each chunk is awaited (no P_NR_BODY) so that SKIP can end it at the byte bound;
        P_SKIP is kept when the MTA offers it (Postfix does; Base.negotiate leaves it on).
        """
        wanted = self.session.engine.needs_body
        steps = opts[1]
        if wanted:
            steps &= ~(Milter.P_NOBODY | Milter.P_NR_BODY)
            steps |= offered & Milter.P_HDR_LEADSPC
        else:
            steps = (steps | (offered & Milter.P_NOBODY)) & ~Milter.P_HDR_LEADSPC
        opts[1] = self._protocol = steps
        self.body_asked = wanted and not steps & Milter.P_NOBODY
        self.leading_space = bool(steps & Milter.P_HDR_LEADSPC)
        self.can_skip = bool(steps & Milter.P_SKIP)
        metrics = self.session.runtime.metrics
        if metrics is not None:
            metrics.record_body_negotiated(self.body_asked)
        log.debug(
            "negotiated: body=%s leading_space=%s skip=%s steps=%#x",
            "yes" if self.body_asked else "no",
            "yes" if self.leading_space else "no",
            "yes" if self.can_skip else "no",
            steps,
        )

    def getsymval(self, name: str) -> str | None:
        """A macro's value; None if the MTA sent none, or one pymilter cannot decode.

        pymilter's C layer decodes a macro as strict UTF-8 and raises UnicodeDecodeError on
        anything else (PYMILTER-FACTS). Every macro spamgate reads is optional, so such a value
        counts as absent: raising would fail the callback, and at connect the whole connection
        (whose mail, with on_error: accept, would then skip filtering).
        """
        try:
            value: str | None = super().getsymval(name)
        except UnicodeDecodeError:
            log.warning("macro %s is not UTF-8: read as absent", name)
            return None
        return value

    # What the MTA sends and waits for is what each message costs (bench/RESULTS.md):
    # - connect, helo, mail and header are no-reply callbacks. Postfix queues no-reply events
    #   in its output buffer and writes them with the next event it awaits an answer to
    #   (milter8_event() in src/milter/milter8.c), so all the headers of a message travel in
    #   a few large writes instead of one round trip each.
    # - the body is negotiated away unless the policy checks DKIM (_negotiate_body). End of
    #   headers is a no-reply callback, which starts DKIM's key lookups when there are any;
    #   it is registered in any case: libmilter's state table has no step from DATA straight
    #   to end of message (NX_DATA in engine.c), so a message without headers, which
    #   Sendmail sends as DATA then end of message, made libmilter call abort, ignore the
    #   end of message and never answer: Sendmail gave 451 4.3.2 after its milter
    #   read timeout. Postfix was never seen to hit this. (It does not show milters the
    #   Received field it adds itself: tests/e2e/test_fact_rules.py.)
    # - data answers CONTINUE. Postfix still sends the macros of an event a milter negotiated
    #   away; smtpd writes the DATA macros alone, cleanup then writes the headers, and that
    #   second small write waits (Nagle) for an ACK our side delays by ~40 ms. Answering DATA
    #   flushes Postfix's buffer at once. Measured at concurrency 1 over inet: 50.7 ms per
    #   message with DATA negotiated away, 5.2 ms with it answered.

    @_noreply_guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> None:
        macros = {name: self.getsymval(name) for name in CONNECT_MACROS}
        self.session.connect(hostname, client_address(family, hostaddr), macros)

    @_noreply_guarded
    def hello(self, heloname: str) -> None:
        self.session.helo(heloname)

    @_noreply_guarded
    def envfrom(self, mailfrom: str, *params: str) -> None:
        if not self.connection_failed:
            self.failed = False
        self.session.mail(mailfrom, bool(self.getsymval("{auth_authen}")))

    @_guarded
    def envrcpt(self, to: str, *params: str) -> int:
        decision = self.session.rcpt(to)
        # An allowlisted message (RcptResult.ACCEPT_ALL) is not scored, but goes on to the end
        # of the message all the same: only there can a forged X-Spam-* header be deleted.
        if decision.reply is not None:
            return self._refuse(decision.reply)
        return int(Milter.CONTINUE)

    @_guarded
    def data(self) -> int:
        return int(Milter.CONTINUE)

    @_noreply_guarded
    def header(self, name: str, value: str) -> None:
        if self.leading_space:
            # As received: what Postfix strips without P_HDR_LEADSPC is stripped for the
            # rules (milter8.c skips the white space after the colon), kept for DKIM.
            self.session.header(name, value.lstrip(" \t\r\n"), value)
        else:
            self.session.header(name, value)

    @_noreply_guarded
    def eoh(self) -> None:
        # Keeps libmilter's state machine on the rails (see above); and DKIM's key lookups
        # start here, while the body travels.
        self.session.end_of_headers()

    @_guarded
    def body(self, chunk: bytes) -> int:
        # Negotiated only when the policy checks DKIM; SKIP ends the body at the byte bound
        # (the MTA sends no more of it), CONTINUE where the MTA cannot skip (the rest is
        # read and dropped).
        if self.session.body(chunk) or not self.can_skip:
            return int(Milter.CONTINUE)
        return int(Milter.SKIP)

    @_guarded
    def eom(self) -> int:
        decision = self.session.end_of_message(self.getsymval("i") or "")
        if decision.reply is not None:
            return self._refuse(decision.reply)
        for name, index in decision.delete_headers:
            self.chgheader(name, index, "")
        # With P_HDR_LEADSPC (asked for DKIM) the MTA writes a header we add as given, with
        # no space after the colon of its own: "X-Spam-Status:Yes" unless we give one.
        lead = " " if self.leading_space else ""
        for name, value in decision.add_headers:
            self.addheader(name, lead + value)
        for name, value in decision.prepend_headers:
            self.addheader(name, lead + value, 0)  # smfi_insheader at index 0: on top
        if decision.quarantine_reason:
            self.quarantine(decision.quarantine_reason)
        return int(Milter.CONTINUE)

    @_guarded
    def abort(self) -> int:
        self.session.finish_transaction()
        return int(Milter.CONTINUE)

    def close(self) -> int:
        try:
            self.session.close()
        except Exception:
            self.note_internal_error("close")
        return int(Milter.CONTINUE)

    def _refuse(self, reply: Reply) -> int:
        self.setreply(str(reply.code), reply.status, reply.milter_text)
        return int(Milter.REJECT if reply.code >= 500 else Milter.TEMPFAIL)

    def note_pymilter_failure(self, error: BaseException) -> None:
        """pymilter could not make a callback of this session; it has answered CONTINUE.

        A HELO that is not UTF-8 (Postfix passes one on with smtputf8_enable = no) is read
        from the exception, byte for byte, as pymilter would pass a MAIL FROM: the HELO is
        judged like any other, and the decision line shows its odd bytes as \\xNN. A header
        name that is not UTF-8 (Postfix never passes one: is_header() ends the headers there)
        cannot be recovered with its value, so that header goes unseen. Anything else is an
        internal error of the callback, and `on_error` answers for the session.
        """
        if isinstance(error, UnicodeDecodeError):
            callback = _DECODED_AFTER.get(self.stage, "hello")
        else:
            # Which callback it was making is unknown; what ran last is not.
            callback = f"pymilter-after-{self.stage or 'negotiate'}"
        session = self.session
        if session.runtime.metrics is not None:
            session.runtime.metrics.pymilter_failures.labels(callback).inc()
        if isinstance(error, UnicodeDecodeError) and callback == "hello":
            name = bytes(error.object).decode("utf-8", "surrogateescape")
            log.warning(
                "HELO from %s is not UTF-8, which pymilter cannot pass on: read it byte for "
                "byte instead: helo=%s",
                session.address_text,
                quote(name[:200]),
            )
            self.stage = "hello"
            try:
                session.helo(name)
            except Exception:
                self.note_internal_error("hello")
        elif isinstance(error, UnicodeDecodeError) and callback == "header":
            log.warning(
                "a header name from %s is not UTF-8, which pymilter cannot pass on: that "
                "header goes unseen: id=%s name=%s",
                session.address_text,
                session.transaction.decision_id if session.transaction else "-",
                quote(bytes(error.object)[:80].decode("utf-8", "surrogateescape")),
            )
        else:
            self.note_internal_error(callback, error)

    def note_internal_error(self, callback: str, error: BaseException | None = None) -> None:
        """Log one ERROR line with the traceback folded into it, and mark the session failed.

        The error is the one being handled unless given (sys.excepthook gets it passed).
        """
        if error is None:
            error = sys.exc_info()[1]
        frames = _frames(error.__traceback__ if error is not None else None)
        self.failed = True
        if callback in ("connect", "hello"):
            self.connection_failed = True
        session = self.session
        if session.runtime.metrics is not None:
            session.runtime.metrics.errors.labels(callback).inc()
        transaction = session.transaction
        log.error(
            "internal error in %s: id=%s client=%s on_error=%s error=%r traceback=%s",
            callback,
            transaction.decision_id if transaction else "-",
            session.address_text,
            session.policy.on_error.value,
            error,
            frames,
        )

    def error_response(self) -> int:
        if self.session.policy.on_error is OnError.TEMPFAIL:
            transaction = self.session.transaction
            try:
                reply = internal_error(transaction.decision_id if transaction else "-")
                self.setreply(str(reply.code), reply.status, reply.milter_text)
            except Exception:
                log.exception("could not set the on_error reply")
            return int(Milter.TEMPFAIL)
        return int(Milter.ACCEPT)


def report_uncaught(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """sys.excepthook: what pymilter's C layer calls (via PyErr_Print) when it fails.

    It fails when it cannot build a callback's arguments (a HELO that is not UTF-8) or its own
    Python glue raises; either way before our code runs, and pymilter then answers with its
    exception policy (CONTINUE, see `serve`). Inside a session, the session acts on it
    (`note_pymilter_failure`); anywhere else it is one ERROR line, never a multi-line traceback
    on stderr. Kept total: an error here would be printed by PyErr_Print after all.
    """
    try:
        milter = getattr(_current, "milter", None)
        if isinstance(milter, SpamgateMilter) and not milter.session.closed:
            milter.note_pymilter_failure(error)
            return
        log.error("uncaught exception outside a session: error=%r traceback=%s", error, _frames(tb))
    except Exception:
        with contextlib.suppress(Exception):
            log.error("uncaught exception, and could not report it: %r", error)


def _frames(tb: Any) -> str:
    """A traceback on one line, innermost call first."""
    return " <- ".join(
        f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(traceback.extract_tb(tb))
    )


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


def serve(
    runtime: Runtime,
    listen: ListenAddress,
    mode: SocketMode,
    on_listening: Callable[[], None] = lambda: None,
) -> None:
    """Run the milter until libmilter is told to stop (SIGTERM, SIGINT or SIGHUP).

    `on_listening` runs once the socket accepts connections (systemd's READY=1 goes there).
    """
    Milter.factory = lambda: SpamgateMilter(runtime)
    libmilter.set_flags(ACTIONS)
    # pymilter answers with this policy when it fails before our code runs (our own errors
    # never reach it: the callbacks are guarded). Any other answer than CONTINUE at a no-reply
    # stage (connect, HELO, MAIL, header) is swallowed by libmilter, which then also resets
    # its state to HELO and so ignores the rest of the transaction: the MTA waits for the
    # end-of-message reply until milter_content_timeout (engine.c: sendreply(), mi_engine()).
    # So always CONTINUE; `report_uncaught` applies on_error through the session where needed.
    libmilter.set_exception_policy(Milter.CONTINUE)
    sys.excepthook = report_uncaught
    _register_callbacks()
    libmilter.setconn(str(listen))
    libmilter.register(
        "spamgate",
        data=lambda ctx: ctx.getpriv().data(),
        negotiate=Milter.negotiate_callback,
    )
    # libmilter binds and listens on a unix socket without a chmod (mi_milteropen in
    # listener.c), so the socket is born 0777 minus the umask and already accepts: under
    # umask 000, world-writable until our chmod. A umask that leaves exactly `mode` makes it
    # born right; the chmod stays for directories whose default ACL overrides the umask.
    umask = os.umask(0o777 & ~mode.bits) if listen.family == "unix" else None
    try:
        libmilter.opensocket(True)
    except libmilter.error:
        raise ListenError(f"cannot listen on {listen}: {_why_not(listen)}") from None
    finally:
        if umask is not None:
            os.umask(umask)
    if listen.family == "unix":
        os.chmod(listen.path, mode.bits)
    else:
        _set_nodelay(listen)
    on_listening()
    libmilter.main()


def stop_milter() -> None:
    """Tell libmilter to stop accepting and return from its main loop (smfi_stop)."""
    libmilter.stop()


def _socket_for(listen: ListenAddress) -> tuple[socket.socket, Any]:
    family = socket.AF_UNIX if listen.family == "unix" else socket.AF_INET
    if listen.family == "inet6":
        family = socket.AF_INET6
    address: Any = listen.path if listen.family == "unix" else (listen.host, listen.port)
    return socket.socket(family, socket.SOCK_STREAM), address


def poke(listen: ListenAddress) -> None:
    """Connect to our own socket: libmilter's accept loop checks for stop only when it wakes."""
    probe, address = _socket_for(listen)
    with contextlib.suppress(OSError), probe:
        probe.settimeout(0.2)
        probe.connect(address)


# A milter protocol option negotiation (libmilter's mfdef.h: SMFIC_OPTNEG 'O', protocol
# version 6, every action and protocol step offered), as an MTA opens a session with.
_OPTNEG = b"O" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + (0x1FFFFF).to_bytes(4, "big")


def milter_answers(listen: ListenAddress, timeout: float) -> bool:
    """Whether libmilter on `listen` answers an option negotiation within `timeout`: it
    accepts sessions and hands them to a worker. A socket that accepts a connection proves
    less: the kernel does that for a listener whose accept loop is stuck."""
    probe, address = _socket_for(listen)
    with probe:
        try:
            probe.settimeout(timeout)
            probe.connect(address)
            probe.sendall(len(_OPTNEG).to_bytes(4, "big") + _OPTNEG)
            header = b""
            while len(header) < 5:
                chunk = probe.recv(5 - len(header))
                if not chunk:
                    return False
                header += chunk
        except OSError:
            return False
    return header[4:5] == b"O"


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
        address = (listen.host, listen.port)  # type: ignore[assignment]  # bind(): a path or (host, port)
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
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
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
