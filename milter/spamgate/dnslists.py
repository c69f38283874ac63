"""IP-keyed DNS lists: what to ask, and what an answer means for one list.

Everything here but `PendingChecks` is pure. An answer has three meanings, as in rspamd and
postscreen: listed (with the hits its codes name), clean, or unusable — and unusable is never
a hit, whatever addresses came back.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol

from spamgate.answers import AnswerKind, DnsAnswer
from spamgate.config import IpList, ListHit
from spamgate.returncodes import BLOCKED_CODES, LOOPBACK_NET

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ListStatus(enum.Enum):
    LISTED = "listed"
    CLEAN = "clean"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class ListOutcome:
    """What one list said about the client."""

    dns_list: IpList
    status: ListStatus
    codes: tuple[str, ...] = ()
    hits: tuple[ListHit, ...] = ()
    failure: str = ""
    latency_ms: float | None = None

    @property
    def fail_marker(self) -> str:
        return f"{self.dns_list.name}_FAIL"


def lookup_address(address: IPAddress) -> IPAddress:
    """The address to look up: an IPv4-mapped IPv6 client is queried as the IPv4 it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def query_name(address: IPAddress, zone: str) -> str:
    """RFC 5782 query name: reversed octets for IPv4, reversed nibbles for IPv6."""
    return f"{address.reverse_pointer.rsplit('.', 2)[0]}.{zone.rstrip('.')}"


def lists_for(address: IPAddress, ip_lists: Sequence[IpList]) -> tuple[IpList, ...]:
    if address.version == 4:
        return tuple(lst for lst in ip_lists if lst.ipv4)
    return tuple(lst for lst in ip_lists if lst.ipv6)


def classify(dns_list: IpList, answer: DnsAnswer, latency_ms: float | None = None) -> ListOutcome:
    """Give one list's answer its meaning."""
    if answer.kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
        return ListOutcome(dns_list, ListStatus.CLEAN, latency_ms=latency_ms)
    if answer.kind is not AnswerKind.RECORDS:
        return _unusable(dns_list, answer.kind.value, answer.records, latency_ms)
    codes = []
    for text in answer.records:
        try:
            code = ipaddress.IPv4Address(text)
        except ValueError:
            return _unusable(dns_list, "malformed", answer.records, latency_ms)
        # Anything outside 127/8 is a wildcarded or hijacked zone (an expired DNSBL domain that
        # now resolves everything), not a listing.
        if code not in LOOPBACK_NET:
            return _unusable(dns_list, "outside-127/8", answer.records, latency_ms)
        value = int(code)
        if BLOCKED_CODES.matches(value) or any(e.matches(value) for e in dns_list.error_codes):
            return _unusable(dns_list, "error-code", answer.records, latency_ms)
        codes.append(value)
    hits = tuple(
        hit
        for hit in dns_list.scored_hits
        if not hit.codes or any(spec.matches(code) for spec in hit.codes for code in codes)
    )
    return ListOutcome(dns_list, ListStatus.LISTED, answer.records, hits, latency_ms=latency_ms)


def _unusable(
    dns_list: IpList, failure: str, codes: tuple[str, ...], latency_ms: float | None
) -> ListOutcome:
    return ListOutcome(dns_list, ListStatus.UNUSABLE, codes, failure=failure, latency_ms=latency_ms)


class ListCounters:
    """How each list has answered since start, for the periodic stats line; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, collections.Counter[str]] = {}

    def record(self, outcomes: Sequence[ListOutcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                counts = self._counts.setdefault(outcome.dns_list.name, collections.Counter())
                counts["checks"] += 1
                counts[outcome.status.value] += 1
                if outcome.failure:
                    counts[outcome.failure] += 1

    def lines(self) -> list[str]:
        """One `list=NAME checks=N listed=N clean=N unusable=N <failure>=N ...` per list."""
        with self._lock:
            snapshot = {name: dict(counts) for name, counts in sorted(self._counts.items())}
        lines = []
        for name, counts in snapshot.items():
            fixed = ("checks", "listed", "clean", "unusable")
            parts = [f"{key}={counts.get(key, 0)}" for key in fixed]
            parts += [f"{k}={v}" for k, v in sorted(counts.items()) if k not in fixed]
            lines.append(f"list={name} " + " ".join(parts))
        return lines


class Lookups(Protocol):
    """What the list checks need from a resolver: thread-safe lookups that never raise."""

    def lookup(self, qname: str) -> futures.Future[DnsAnswer]: ...


class PendingChecks:
    """One connection's list lookups, started at connect and collected at the first verdict."""

    def __init__(
        self,
        resolver: Lookups,
        address: IPAddress,
        ip_lists: Sequence[IpList],
        clock: Callable[[], float],
        counters: ListCounters | None = None,
    ) -> None:
        self._clock = clock
        self._counters = counters
        self.started_at = clock()
        self._answered_at: dict[str, float] = {}
        target = lookup_address(address)
        self._lookups: list[tuple[IpList, futures.Future[DnsAnswer]]] = []
        for dns_list in lists_for(target, ip_lists):
            future = resolver.lookup(query_name(target, dns_list.zone))
            future.add_done_callback(self._stamp(dns_list.name))
            self._lookups.append((dns_list, future))
        self._outcomes: tuple[ListOutcome, ...] | None = None

    def _stamp(self, name: str) -> Callable[[futures.Future[DnsAnswer]], None]:
        def record(_: futures.Future[DnsAnswer]) -> None:
            self._answered_at[name] = self._clock()

        return record

    def collect(self, deadline: float) -> tuple[ListOutcome, ...]:
        """Wait until `deadline` seconds after the start at most; late lists are unusable."""
        if self._outcomes is None:
            remaining = self.started_at + deadline - self._clock()
            pending = [future for _, future in self._lookups]
            if remaining > 0 and pending:
                futures.wait(pending, timeout=remaining)
            self._outcomes = tuple(self._outcome(lst, f, deadline) for lst, f in self._lookups)
            if self._counters is not None:
                self._counters.record(self._outcomes)
        return self._outcomes

    def _outcome(
        self, dns_list: IpList, future: futures.Future[DnsAnswer], deadline: float
    ) -> ListOutcome:
        if not future.done():
            return _unusable(dns_list, "deadline", (), deadline * 1000.0)
        if future.exception() is not None:
            return _unusable(dns_list, "resolver-error", (), None)
        answered_at = self._answered_at.get(dns_list.name, self._clock())
        latency_ms = max(0.0, (answered_at - self.started_at) * 1000.0)
        return classify(dns_list, future.result(), latency_ms)
