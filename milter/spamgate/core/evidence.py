"""Evidence: what the lookups of a connection found, as plain values. Pure.

The rules, the engine and the decision log read these; the modules that look them up
(`dnslists`, `rdns`) make them. Keeping the values here lets the pure core import them
without importing the lookups' threads, promises and resolver, as postscreen reads the
verdicts dnsblog sends without linking the DNS code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spamgate.core.listspecs import DnsList, ListHit


class Stage(enum.IntEnum):
    """The point of the SMTP dialogue by which a fact is complete; later stages know more."""

    CONNECTION = 1
    ENVELOPE = 2
    MESSAGE = 3


class ListStatus(enum.Enum):
    LISTED = "listed"
    CLEAN = "clean"
    UNUSABLE = "unusable"


class Family(enum.Enum):
    """Which side of an IP list was asked: the health monitor judges and suspends an IP
    list's IPv4 and IPv6 sides apart (a list's IPv6 side can die, or list everyone, while its
    IPv4 side is well)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclass(frozen=True, slots=True)
class ListOutcome:
    """What one list said about the client or one of its names."""

    dns_list: DnsList
    status: ListStatus
    codes: tuple[str, ...] = ()
    hits: tuple[ListHit, ...] = ()
    failure: str = ""
    latency_ms: float | None = None
    subject: str = ""  # for domain lists: which name, as "sender:example.com"
    # Answered from the resolver's cache (its latency_ms is 0): left out of latency figures,
    # which would otherwise show the cache's hit rate instead of the list's speed.
    cached: bool = False
    # Who the answer was about, as the health monitor's circuit breaker counts distinct
    # clients: the client's network (its /24 or /64) for an IP list, the name asked for a
    # domain list; "" if not known.
    key: str = ""
    # The side of an IP list that was asked; None for a domain list (or if not known).
    family: Family | None = None

    @property
    def fail_marker(self) -> str:
        return f"{self.dns_list.name}_FAIL"


class RdnsStatus(enum.Enum):
    CONFIRMED = "confirmed"  # a PTR name resolves (A or AAAA, the client's family) to the IP
    UNCONFIRMED = "unconfirmed"  # PTR names exist, and none resolves back to the IP
    MISSING = "missing"  # NXDOMAIN or no PTR records
    UNKNOWN = "unknown"  # lookups failed or timed out: never evidence either way


@dataclass(frozen=True, slots=True)
class ReverseDns:
    """What the client's reverse DNS says.

    `ptr_names` are the PTR names examined (at most rdns.MAX_NAMES), lower-cased, without the
    final dot, in the resolver's (sorted) order. `detail` says why the status is UNKNOWN
    (`deadline`, `timeout`, `servfail`, `forward-servfail`, ...) for the log; "" otherwise.
    """

    status: RdnsStatus
    ptr_names: tuple[str, ...] = ()
    confirmed_name: str = ""
    source: str = "lookup"
    detail: str = ""

    @property
    def name(self) -> str:
        """The name to show and match: the confirmed one, else the first PTR name, else ""."""
        if self.confirmed_name:
            return self.confirmed_name
        return self.ptr_names[0] if self.ptr_names else ""
