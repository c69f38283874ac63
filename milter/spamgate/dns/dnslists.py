"""DNS lists (IP- and domain-keyed): what to ask, and what an answer means for one list.

Everything here but `ListLookups` is pure. An answer has three meanings, as in rspamd and
postscreen: listed (with the hits its codes name), clean, or unusable — and unusable is never
a hit, whatever addresses came back.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# The address and evidence types live apart, so that the pure core can import them without
# this module's threads; the `X as X` imports re-export them (PEP 484) for the modules that
# still import them from here (the shell: session, runtime, adapter).
from spamgate.core.addresses import IPAddress as IPAddress  # noqa: PLC0414
from spamgate.core.addresses import normalize_address
from spamgate.core.evidence import Family as Family  # noqa: PLC0414
from spamgate.core.evidence import ListOutcome as ListOutcome  # noqa: PLC0414
from spamgate.core.evidence import ListStatus as ListStatus  # noqa: PLC0414
from spamgate.core.evidence import Stage
from spamgate.core.listspecs import DnsList, IpList
from spamgate.core.returncodes import BLOCKED_CODES, LOOPBACK_NET
from spamgate.dns.answers import (
    AnswerKind,
    DnsAnswer,
    Lookups,
    Pending,
    Promise,
    wait_all,
    when_all_done,
)


def query_name(address: IPAddress, zone: str) -> str:
    """RFC 5782 query name: reversed octets for IPv4, reversed nibbles for IPv6."""
    return f"{_reversed(address)}.{zone.rstrip('.')}"


def _reversed(address: IPAddress) -> str:
    """The address's labels in reverse order, without in-addr.arpa / ip6.arpa."""
    return address.reverse_pointer.rsplit(".", 2)[0]


def lists_for(address: IPAddress, ip_lists: Sequence[IpList]) -> tuple[IpList, ...]:
    if address.version == 4:
        return tuple(lst for lst in ip_lists if lst.ipv4)
    return tuple(lst for lst in ip_lists if lst.ipv6)


def network_key(address: IPAddress) -> str:
    """The client network the health monitor counts an IP list's answer for: the /24 of an
    IPv4 address, the /64 of an IPv6 one, as the labels of its query name ("100.51.198",
    16 nibbles), which cost a slice of a string the lookup makes anyway."""
    return _network_labels(_reversed(address), address.version)


def _network_labels(reversed_address: str, version: int) -> str:
    if version == 4:
        return reversed_address.partition(".")[2]  # "77.100.51.198": the host octet goes
    return reversed_address[32:]  # 32 nibbles, "x." each: the last 16 are the /64


def classify(
    dns_list: DnsList,
    answer: DnsAnswer,
    latency_ms: float | None = None,
    subject: str = "",
    *,
    key: str = "",
    family: Family | None = None,
    cached: bool = False,
) -> ListOutcome:
    """Give one list's answer its meaning (`subject`: which name a domain list was asked;
    `key` and `family`: whom it was about, for the health monitor, see ListOutcome; `cached`:
    answered from the resolver's cache)."""
    if answer.kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
        return ListOutcome(
            dns_list,
            ListStatus.CLEAN,
            latency_ms=latency_ms,
            subject=subject,
            cached=cached,
            key=key,
            family=family,
        )

    def unusable(failure: str) -> ListOutcome:
        return _unusable(
            dns_list,
            failure,
            answer.records,
            latency_ms,
            subject,
            key=key,
            family=family,
            cached=cached,
        )

    if answer.kind is not AnswerKind.RECORDS:
        return unusable(answer.kind.value)
    codes = []
    for text in answer.records:
        try:
            code = ipaddress.IPv4Address(text)
        except ValueError:
            return unusable("malformed")
        # Anything outside 127/8 is a wildcarded or hijacked zone (an expired DNSBL domain that
        # now resolves everything), not a listing.
        if code not in LOOPBACK_NET:
            return unusable("outside-127/8")
        value = int(code)
        if BLOCKED_CODES.matches(value) or any(e.matches(value) for e in dns_list.error_codes):
            return unusable("error-code")
        codes.append(value)
    hits = tuple(
        hit
        for hit in dns_list.scored_hits
        if not hit.codes or any(spec.matches(code) for spec in hit.codes for code in codes)
    )
    return ListOutcome(
        dns_list,
        ListStatus.LISTED,
        answer.records,
        hits,
        latency_ms=latency_ms,
        subject=subject,
        cached=cached,
        key=key,
        family=family,
    )


def _unusable(
    dns_list: DnsList,
    failure: str,
    codes: tuple[str, ...],
    latency_ms: float | None,
    subject: str = "",
    *,
    key: str = "",
    family: Family | None = None,
    cached: bool = False,
) -> ListOutcome:
    return ListOutcome(
        dns_list,
        ListStatus.UNUSABLE,
        codes,
        failure=failure,
        latency_ms=latency_ms,
        subject=subject,
        cached=cached,
        key=key,
        family=family,
    )


class ListRecorder(Protocol):
    """Where list outcomes are counted, and which lists are suspended (see listhealth)."""

    def record(self, outcomes: Iterable[ListOutcome]) -> None: ...

    def answered(self, outcome: ListOutcome) -> None: ...

    def add_suspension_waiter(self, wake: threading.Event) -> None:
        """Set `wake` whenever a list is suspended, until removed."""

    def remove_suspension_waiter(self, wake: threading.Event) -> None: ...

    def is_suspended(self, name: str) -> bool:
        """Whether `name` is suspended: a list's name (the list as a whole), or one side of
        an IP list, "NAME/ipv4" or "NAME/ipv6" (see side_name)."""


def side_name(dns_list: DnsList, family: Family | None) -> str:
    """How ListRecorder.is_suspended names one side of an IP list; "" for a domain list."""
    return f"{dns_list.name}/{family.value}" if family is not None else ""


def _is_suspended(recorder: ListRecorder, dns_list: DnsList, side: str) -> bool:
    return recorder.is_suspended(dns_list.name) or (bool(side) and recorder.is_suspended(side))


@dataclass
class _Lookup:
    dns_list: DnsList
    qname: str
    subject: str
    stage: Stage
    future: Promise[DnsAnswer]
    started_at: float
    answered_at: float | None = None
    outcome: ListOutcome | None = None
    cached: bool = False
    key: str = ""  # whom it is about, for the health monitor (ListOutcome.key)
    family: Family | None = None
    side: str = ""  # side_name(dns_list, family)


def _merge(lookup: _Lookup, subject: str, stage: Stage) -> None:
    merged = _with_source(lookup.subject, subject.partition(":")[0])
    if merged != lookup.subject:
        lookup.subject = merged
        if lookup.outcome is not None:
            lookup.outcome = dataclasses.replace(lookup.outcome, subject=lookup.subject)
    lookup.stage = min(lookup.stage, stage)


def _with_source(subject: str, source: str) -> str:
    """ "helo:example.com" with the source "sender" is "helo,sender:example.com"."""
    sources, _, name = subject.partition(":")
    if not source or source in sources.split(","):
        return subject
    return f"{sources},{source}:{name}"


class ListLookups:
    """List lookups, each started as soon as its name is known (the client address at
    connect, a HELO name at HELO, a header domain as the header arrives) and waited for at
    most `deadline` seconds from its own start.

    Two lifetimes, as facts have (STYLE.md): a connection's lookups (the client address, its
    reverse name, the HELO name) serve every transaction on it, and each transaction has its
    own (the sender's and the header domains), made with `connection=` and dropped with the
    transaction. A transaction sees the connection's outcomes and its own, never an earlier
    transaction's: a listed sender domain must not refuse the next message on the connection.
    A transaction's name that the connection already asked about (a HELO name and a sender
    domain often share a domain) is not asked again; the transaction logs it with both
    sources, "helo,sender:example.com", and the connection's lookup stays as it was."""

    def __init__(
        self,
        resolver: Lookups,
        clock: Callable[[], float],
        recorder: ListRecorder | None = None,
        *,
        connection: ListLookups | None = None,
    ) -> None:
        self._resolver = resolver
        self._connection = connection
        # The connection's lookups this transaction asked about too, by id(): the lookup
        # and the sources this transaction adds to its subject.
        self._shared: dict[int, tuple[_Lookup, list[str]]] = {}
        # The resolver's answers that have arrived, read on this thread before it waits for
        # them (Resolver.read_arrived); the scripted resolvers of the tests answer by
        # themselves and have none.
        self._read_arrived: Callable[[], None] | None = getattr(resolver, "read_arrived", None)
        self._clock = clock
        self._recorder = recorder
        self._lookups: list[_Lookup] = []
        self._lock = threading.Lock()

    def start(
        self,
        dns_list: DnsList,
        qname: str,
        *,
        subject: str = "",
        stage: Stage = Stage.CONNECTION,
        started_at: float | None = None,
        key: str = "",
        family: Family | None = None,
    ) -> None:
        """Start one lookup; its deadline runs from `started_at` (default: now). `key` is
        whom the health monitor counts the answer for (default: the query name, which names
        the domain a domain list is asked), `family` the side of an IP list asked.

        A query already started for this list (HELO, PTR and sender names often share a
        domain) is not asked again: its subject gains the new source, as in
        "helo,sender:example.com", and it is counted and logged once."""
        connection = self._connection
        shared = connection.find(dns_list, qname) if connection is not None else None
        with self._lock:
            if shared is not None:
                _, sources = self._shared.setdefault(id(shared), (shared, []))
                sources.append(subject.partition(":")[0])
                return
            for earlier in self._lookups:
                if earlier.dns_list is dns_list and earlier.qname == qname:
                    _merge(earlier, subject, stage)
                    return
        recorder = self._recorder
        key = key or qname
        side = side_name(dns_list, family)
        if recorder is not None and _is_suspended(recorder, dns_list, side):
            # A list gone bad is not asked at all: its outcome is known.
            outcome = _unusable(dns_list, "suspended", (), None, subject, key=key, family=family)
            recorder.record([outcome])
            done = Pending.of(DnsAnswer(AnswerKind.NETWORK, detail="suspended"))
            with self._lock:
                self._lookups.append(
                    _Lookup(
                        dns_list,
                        qname,
                        subject,
                        stage,
                        done,
                        0.0,
                        0.0,
                        outcome,
                        key=key,
                        family=family,
                        side=side,
                    )
                )
            return
        now = self._clock()
        begun = now if started_at is None else started_at
        future = self._resolver.lookup(qname)
        lookup = _Lookup(
            dns_list, qname, subject, stage, future, begun, key=key, family=family, side=side
        )
        with self._lock:
            self._lookups.append(lookup)
        if lookup.future.done():
            lookup.answered_at = now  # from the cache: answered as it was asked
            lookup.cached = True
            return

        def stamp(_: Promise[DnsAnswer]) -> None:
            lookup.answered_at = self._clock()
            if recorder is not None:
                recorder.answered(self._outcome(lookup, 0.0))

        lookup.future.add_done_callback(stamp)

    @property
    def recorder(self) -> ListRecorder | None:
        return self._recorder

    def find(self, dns_list: DnsList, qname: str) -> _Lookup | None:
        """The lookup of `qname` on `dns_list` started here, if any."""
        with self._lock:
            for earlier in self._lookups:
                if earlier.dns_list is dns_list and earlier.qname == qname:
                    return earlier
        return None

    def start_ip_lists(self, address: IPAddress, ip_lists: Sequence[IpList]) -> None:
        target = normalize_address(address)
        reversed_address = _reversed(target)
        family = Family.IPV4 if target.version == 4 else Family.IPV6
        key = _network_labels(reversed_address, target.version)
        for dns_list in lists_for(target, ip_lists):
            self.start(
                dns_list,
                f"{reversed_address}.{dns_list.query_zone.rstrip('.')}",
                key=key,
                family=family,
            )

    def collect(self, deadline: float, stage: Stage = Stage.MESSAGE) -> tuple[ListOutcome, ...]:
        """The outcomes of the lookups of `stage` or earlier, waiting for the unanswered ones
        until their own start + `deadline` at most; a list still silent then is unusable. A
        transaction's are the connection's (first) and its own."""
        connection = self._connection
        outcomes = []
        if connection is not None:
            with self._lock:
                shared = dict(self._shared)
            for lookup in connection._collect(deadline, stage):
                outcome = lookup.outcome
                assert outcome is not None  # _collect gives every lookup an outcome
                if id(lookup) in shared:
                    subject = outcome.subject
                    for source in shared[id(lookup)][1]:
                        subject = _with_source(subject, source)
                    outcome = dataclasses.replace(outcome, subject=subject)
                outcomes.append(outcome)
        outcomes += [x.outcome for x in self._collect(deadline, stage) if x.outcome is not None]
        return tuple(outcomes)

    def _collect(self, deadline: float, stage: Stage) -> list[_Lookup]:
        """The lookups of `stage` or earlier, each with its outcome (see collect)."""
        with self._lock:
            wanted = [x for x in self._lookups if x.stage <= stage]
        open_ = [x for x in wanted if x.outcome is None]
        if open_ and self._read_arrived is not None and not all(x.future.done() for x in open_):
            self._read_arrived()
        if open_:
            remaining = max(x.started_at for x in open_) + deadline - self._clock()
            if remaining > 0:
                self._wait(open_, remaining)
            for lookup in open_:
                lookup.outcome = self._outcome(lookup, deadline)
            if self._recorder is not None:
                self._recorder.record([x.outcome for x in open_ if x.outcome is not None])
        return wanted

    def _wait(self, open_: list[_Lookup], remaining: float) -> None:
        """Wait up to `remaining` seconds for the open lookups, but not for a list that the
        health monitor suspends meanwhile (after a run of unusable answers): the sessions
        already waiting for a silent list are let go as soon as it is known to be silent.

        One wake-up when the last answer comes (answers.when_all_done), or at a
        suspension."""
        recorder = self._recorder
        pending = [x for x in open_ if not x.future.done()]
        if recorder is None:
            wait_all([x.future for x in pending], remaining)
            return
        ends = time.monotonic() + remaining
        wake = threading.Event()
        answered: list[bool] = []  # not empty once every lookup is answered

        def all_answered() -> None:
            answered.append(True)
            wake.set()

        when_all_done([x.future for x in pending], all_answered)
        recorder.add_suspension_waiter(wake)  # before the check below: none is missed
        try:
            # Each round but the last ends with a suspension, of which there are few.
            for _ in range(len(pending) + 1):
                pending = [
                    x
                    for x in pending
                    if not x.future.done() and not _is_suspended(recorder, x.dns_list, x.side)
                ]
                left = ends - time.monotonic()
                if not pending or left <= 0:
                    return
                wake.clear()
                if answered:  # set before the clear: nothing else will wake this thread
                    return
                wake.wait(left)
        finally:
            recorder.remove_suspension_waiter(wake)

    def _outcome(self, lookup: _Lookup, deadline: float) -> ListOutcome:
        dns_list, subject = lookup.dns_list, lookup.subject
        key, family = lookup.key, lookup.family
        future = lookup.future
        if not future.done():
            recorder = self._recorder
            if recorder is not None and _is_suspended(recorder, dns_list, lookup.side):
                return _unusable(dns_list, "suspended", (), None, subject, key=key, family=family)
            return _unusable(
                dns_list, "deadline", (), deadline * 1000.0, subject, key=key, family=family
            )
        try:
            answer = future.result(timeout=0)
        except Exception:  # a resolver that broke its promise: unusable, never a crash
            return _unusable(dns_list, "resolver-error", (), None, subject, key=key, family=family)
        answered_at = lookup.answered_at if lookup.answered_at is not None else self._clock()
        latency_ms = max(0.0, (answered_at - lookup.started_at) * 1000.0)
        # The cached flag goes in as the outcome is made: dataclasses.replace, once per cached
        # answer, cost more than the classification itself (bench.phases, issue 13).
        return classify(
            dns_list, answer, latency_ms, subject, key=key, family=family, cached=lookup.cached
        )
