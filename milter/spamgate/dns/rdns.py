"""The client's reverse DNS, forward-confirmed (FCrDNS): what its PTR names are, and whether
one of them resolves back to its address.

`PendingReverse` chains the lookups with future callbacks, so no thread waits for DNS; the
rest is pure. Like a DNS list answer, a reverse lookup that failed or ran out of time is
UNKNOWN, which is never evidence either way: only a definitive "no such name" is MISSING, and
only names that all resolved, elsewhere, make UNCONFIRMED.

Postfix does the same check itself before it talks to a milter (smtpd_peer.c) and can pass
its result in macros; `from_mta_macros` reads them, so a caller can skip its own lookups.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable

# RdnsStatus and ReverseDns live in evidence, for the pure core; re-exported here (PEP 484's
# `X as X`) for the modules that import them from here (rules, session).
from spamgate.core.addresses import IPAddress, normalize_address
from spamgate.core.domains import is_ip_literal, normalize_domain
from spamgate.core.evidence import RdnsStatus as RdnsStatus  # noqa: PLC0414
from spamgate.core.evidence import ReverseDns as ReverseDns  # noqa: PLC0414
from spamgate.dns.answers import AnswerKind, DnsAnswer, Lookups, Pending, Promise

_ALL_NUMERIC = re.compile(r"[0-9.]+")

# PTR names whose addresses are looked up, at most; a PTR RRset may hold dozens of names
# (shared hosting), and each costs a query. Postfix checks only the one name getnameinfo()
# returns; a few more let a multi-homed sender's second name confirm.
MAX_NAMES = 5


def ptr_names(answer: DnsAnswer) -> tuple[str, ...]:
    """The PTR names worth a forward lookup, at most MAX_NAMES, in the answer's order.

    Like Postfix's sockaddr_to_hostname() (src/util/myaddrinfo.c), which hands smtpd only names
    that pass valid_hostname() and are not numeric, a malformed or all-numeric "name" is no
    name: it cannot be a host's, and a numeric one could only ever confirm itself.
    """
    names = []
    for record in answer.records:
        normal = normalize_domain(record)
        if normal is None or is_ip_literal(normal) or _ALL_NUMERIC.fullmatch(normal):
            continue
        if normal not in names:
            names.append(normal)
    return tuple(names[:MAX_NAMES])


def confirms(answer: DnsAnswer, address: IPAddress) -> bool:
    """True when a forward answer holds `address` (records that are not addresses count for
    nothing)."""
    if answer.kind is not AnswerKind.RECORDS:
        return False
    for text in answer.records:
        try:
            if ipaddress.ip_address(text) == address:
                return True
        except ValueError:
            continue
    return False


def conclude(
    names: tuple[str, ...], forward: dict[str, DnsAnswer], address: IPAddress, finished: bool
) -> ReverseDns | None:
    """The verdict from the forward answers in so far, or None while it could still change.

    The first name in order that confirms wins, so the answer does not depend on which
    query came back first. Without a confirming name, any forward lookup that failed makes the
    whole UNKNOWN: that name might have confirmed. `finished` (the deadline has come) turns
    "could still change" into UNKNOWN.
    """
    for name in names:
        answer = forward.get(name)
        if answer is None:
            if not finished:
                return None  # an earlier name may still confirm
            continue
        if confirms(answer, address):
            return ReverseDns(RdnsStatus.CONFIRMED, names, confirmed_name=name)
    missing = [name for name in names if name not in forward]
    if missing:
        return ReverseDns(RdnsStatus.UNKNOWN, names, detail="deadline")
    failed = [forward[name] for name in names if not forward[name].kind.is_definitive]
    if failed:
        return ReverseDns(RdnsStatus.UNKNOWN, names, detail=f"forward-{failed[0].kind.value}")
    return ReverseDns(RdnsStatus.UNCONFIRMED, names)


def _answer_of(future: Promise[DnsAnswer]) -> DnsAnswer:
    """A finished lookup's answer; a resolver breaking its promise never to raise is a
    network failure, not an exception in a callback."""
    try:
        return future.result(timeout=0)
    except Exception as error:
        return DnsAnswer(AnswerKind.NETWORK, detail=type(error).__name__)


class PendingReverse:
    """One connection's reverse lookups, started at connect and collected at the first verdict.

    The PTR lookup starts here; its callback starts the forward lookups (A for an IPv4
    client, AAAA for IPv6) of up to MAX_NAMES names, whose callbacks record their answers.
    Callbacks run on the resolver's thread, or on the caller's when an answer was cached, so
    state is kept under a lock, and nothing calls the resolver while holding it.
    """

    def __init__(self, resolver: Lookups, address: IPAddress, clock: Callable[[], float]) -> None:
        self._resolver = resolver
        self._clock = clock
        self.started_at = clock()
        self._address = normalize_address(address)
        self._forward_type = "A" if self._address.version == 4 else "AAAA"
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._result: ReverseDns | None = None
        self._names: tuple[str, ...] = ()
        self._forward: dict[str, DnsAnswer] = {}
        self._collected: ReverseDns | None = None
        self._when_done: list[Callable[[ReverseDns], None]] = []
        self._start(self._address.reverse_pointer, "PTR", self._on_ptr)

    def add_done_callback(self, callback: Callable[[ReverseDns], None]) -> None:
        """Call `callback` with the result once known (now, if it is): lookups that need the
        client's name can start then, without waiting for a verdict to ask."""
        with self._lock:
            result = self._result
            if result is None:
                self._when_done.append(callback)
        if result is not None:
            callback(result)

    def _start(
        self, qname: str, rdtype: str, callback: Callable[[Promise[DnsAnswer]], None]
    ) -> None:
        future: Promise[DnsAnswer]
        try:
            future = self._resolver.lookup(qname, rdtype)
        except Exception as error:  # the Lookups promise is broken: fail this lookup only
            future = Pending.of(DnsAnswer(AnswerKind.NETWORK, detail=type(error).__name__))
        future.add_done_callback(callback)

    def _on_ptr(self, future: Promise[DnsAnswer]) -> None:
        answer = _answer_of(future)
        if answer.kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
            self._finish(ReverseDns(RdnsStatus.MISSING))
            return
        if answer.kind is not AnswerKind.RECORDS:
            self._finish(ReverseDns(RdnsStatus.UNKNOWN, detail=answer.kind.value))
            return
        names = ptr_names(answer)
        if not names:
            self._finish(ReverseDns(RdnsStatus.MISSING))
            return
        with self._lock:
            self._names = names
        for name in names:
            self._start(name, self._forward_type, self._forward_callback(name))

    def _forward_callback(self, name: str) -> Callable[[Promise[DnsAnswer]], None]:
        def record(future: Promise[DnsAnswer]) -> None:
            answer = _answer_of(future)
            with self._lock:
                self._forward[name] = answer
                verdict = conclude(self._names, self._forward, self._address, finished=False)
            if verdict is not None:
                self._finish(verdict)

        return record

    def _finish(self, result: ReverseDns) -> None:
        with self._lock:
            if self._result is not None:
                return
            self._result = result
            callbacks, self._when_done = self._when_done, []
        # The callbacks first: they start the lookups of the client's name (its domain lists),
        # and a verdict waiting in collect() must find them started (issue 14).
        for callback in callbacks:
            callback(result)
        self._finished.set()

    def collect(self, deadline: float) -> ReverseDns:
        """Wait until `deadline` seconds after the start at most; the same answer every time.

        A lookup not finished by then is UNKNOWN (`detail=deadline`), unless a name has
        already confirmed.
        """
        if self._collected is None:
            remaining = self.started_at + deadline - self._clock()
            if remaining > 0:
                self._finished.wait(timeout=remaining)
            with self._lock:
                if self._result is not None:
                    result = self._result
                elif self._names:
                    verdict = conclude(self._names, self._forward, self._address, finished=True)
                    # finished=True always concludes; the default only satisfies the types.
                    result = verdict or ReverseDns(
                        RdnsStatus.UNKNOWN, self._names, detail="deadline"
                    )
                else:
                    result = ReverseDns(RdnsStatus.UNKNOWN, detail="deadline")
            self._collected = result
        return self._collected


# Postfix's milter macros, as smtpd_milter_eval() (src/smtpd/smtpd_milter.c) computes them from
# the lookups in smtpd_peer_sockaddr_to_hostname() (src/smtpd/smtpd_peer.c); read in Postfix
# 3.12's source:
#   {client_resolve}  name_status: "OK" (the PTR name resolves to the client address, looked up
#                     for the client's address family only), "FORGED" (the name does not resolve
#                     to it, or its forward lookup failed permanently), "TEMP" (the PTR or the
#                     forward lookup failed temporarily), else "FAIL" (no PTR name, a numeric or
#                     malformed one, or smtpd_peername_lookup = no). FORGED exists since Postfix
#                     2.3 (postfix-2.3-20060629); before it a mismatch was FAIL.
#   {client_ptr}      reverse_name: the unverified PTR name, "unknown" when the PTR lookup failed.
#   {client_name}     name: the verified name, "unknown" unless the status is OK.
# The hostname libmilter passes to the connect callback is {client_name}, with "unknown" written
# "[ADDR]" (milter8_conn_event() in src/milter/milter8.c): either form may be given here.
# MILTER_README documents {client_name} and {client_ptr} but not {client_resolve}. None of the
# three is in Postfix's default milter_connect_macros ("j {daemon_name} {daemon_addr} v _"):
# the milter must ask for them (smfi_setsymlist) or the admin must add them.
_UNKNOWN = "unknown"


def from_mta_macros(
    client_resolve: str | None, client_ptr: str | None, client_name: str | None
) -> ReverseDns | None:
    """Postfix's own FCrDNS result, or None when the macros are absent or make no sense (then
    the caller looks the client up itself).

    Caveat: with `smtpd_peername_lookup = no` Postfix reports FAIL for every client, which
    reads as MISSING here; an admin who turns the lookup off must not send these macros.
    """
    if client_resolve is None:
        return None
    ptr = _macro_name(client_ptr)
    name = _macro_name(client_name)
    match client_resolve.strip():
        case "OK":
            confirmed = name or ptr
            if not confirmed:
                return None
            return ReverseDns(
                RdnsStatus.CONFIRMED, (ptr or confirmed,), confirmed_name=confirmed, source="mta"
            )
        case "FORGED":
            if not ptr:
                return None
            return ReverseDns(RdnsStatus.UNCONFIRMED, (ptr,), source="mta")
        case "FAIL":
            # A PTR name with FAIL: a Postfix older than 2.3, or XCLIENT REVERSE_NAME with an
            # unavailable NAME; the name exists and did not verify.
            if ptr:
                return ReverseDns(RdnsStatus.UNCONFIRMED, (ptr,), source="mta")
            return ReverseDns(RdnsStatus.MISSING, source="mta")
        case "TEMP":
            return ReverseDns(
                RdnsStatus.UNKNOWN, (ptr,) if ptr else (), source="mta", detail="mta-temp"
            )
        case _:
            return None


def _macro_name(value: str | None) -> str:
    """A host name from a macro, normalized; "" for none, "unknown", "[ADDR]" or anything
    invalid."""
    if value is None or value.strip().lower() == _UNKNOWN:
        return ""
    normal = normalize_domain(value)
    if normal is None or is_ip_literal(normal):
        return ""
    return normal
