"""Greylisting: the first attempt of a (client network, sender, recipient) triplet is told to
retry; a retry after `min_delay` and within `retry_window` passes, and the triplet is then
remembered for `pass_ttl`. A client network whose triplets pass `auto_allow_passes` times is
let through without delay for `auto_allow_ttl`. Real MTAs retry; most spam software does not.

The logic is pure given a store and a clock; the stores are in `state`. A store that fails
makes the check fail open: the caller accepts, logs and counts (see
`GreylistOutcome.FAILED_OPEN`).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spamgate.core.addresses import IPAddress, normalize_address
from spamgate.core.policy import GreylistSettings
from spamgate.state.store import StateStore


@dataclass(frozen=True)
class GreylistTiming:
    min_delay: float = 300.0  # a retry sooner than this is told to wait again
    retry_window: float = 4 * 3600.0  # a retry later than this (after the first try) starts anew
    pass_ttl: float = 36 * 86400.0  # how long a triplet that passed is remembered
    auto_allow_passes: int = 5  # passes that allowlist a client network; 0: never
    auto_allow_ttl: float = 7 * 86400.0
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64

    @classmethod
    def from_settings(cls, settings: GreylistSettings) -> GreylistTiming:
        return cls(
            min_delay=settings.min_delay,
            retry_window=settings.retry_window,
            pass_ttl=settings.pass_ttl,
            auto_allow_passes=settings.auto_allow_passes,
            auto_allow_ttl=settings.auto_allow_ttl,
            ipv4_prefix=settings.ipv4_prefix,
            ipv6_prefix=settings.ipv6_prefix,
        )


class GreylistOutcome(enum.Enum):
    NEW = "new"  # first attempt: retry later
    EARLY = "early"  # retried before min_delay: retry later
    PASSED = "passed"  # a valid retry: accepted, and the triplet is remembered
    KNOWN = "known"  # a triplet that passed before
    ALLOWED = "allowed"  # the client network has passed often enough to skip greylisting
    FAILED_OPEN = "failed-open"  # the state store failed: accepted

    @property
    def tempfails(self) -> bool:
        return self in (GreylistOutcome.NEW, GreylistOutcome.EARLY)


@dataclass(frozen=True)
class GreylistVerdict:
    outcome: GreylistOutcome
    network: str
    retry_after: float = 0.0  # seconds until a retry would pass, when told to retry
    delayed: float = 0.0  # when a retry passed: seconds since the first attempt
    error: str = ""  # what the store said, when it failed


def client_network(address: IPAddress, timing: GreylistTiming) -> str:
    """The network a client's retries may come from: pools of outbound servers share one.
    An IPv4-mapped IPv6 address counts as its IPv4 address."""
    address = normalize_address(address)
    prefix = timing.ipv4_prefix if address.version == 4 else timing.ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True)
class _Triplet:
    first_seen: float
    passed_at: float | None = None


@dataclass(frozen=True)
class _Network:
    passes: int = 0
    allowed_until: float = 0.0


class Greylister:
    """Decides one triplet at a time. Two sessions deciding the same new triplet at once both
    tell it to retry and both write about the same first attempt: harmless."""

    def __init__(
        self, store: StateStore, timing: GreylistTiming, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.timing = timing
        self._clock = clock

    def check(self, address: IPAddress, sender: str, recipient: str) -> GreylistVerdict:
        network = client_network(address, self.timing)
        try:
            return self._check(network, sender, recipient)
        except Exception as error:  # any backend failure: accept, and say why
            return GreylistVerdict(
                GreylistOutcome.FAILED_OPEN, network, error=f"{type(error).__name__}: {error}"
            )

    def _check(self, network: str, sender: str, recipient: str) -> GreylistVerdict:
        timing, now = self.timing, self._clock()
        network_key, key = f"net:{network}", triplet_key(network, sender, recipient)
        network_value, triplet_value = self.store.get_many([network_key, key])
        seen = _load(network_value, _Network)
        if seen is not None and seen.allowed_until > now:
            return GreylistVerdict(GreylistOutcome.ALLOWED, network)
        triplet = _load(triplet_value, _Triplet)
        if triplet is not None and triplet.passed_at is not None:
            renewed = _Triplet(triplet.first_seen, now)
            self.store.put_many([(key, _dump(renewed), timing.pass_ttl)])
            return GreylistVerdict(GreylistOutcome.KNOWN, network)
        age = now - triplet.first_seen if triplet is not None else None
        if age is None or age > timing.retry_window or age < 0:
            self.store.put_many([(key, _dump(_Triplet(now)), timing.retry_window)])
            return GreylistVerdict(GreylistOutcome.NEW, network, retry_after=timing.min_delay)
        if age < timing.min_delay:
            return GreylistVerdict(
                GreylistOutcome.EARLY, network, retry_after=timing.min_delay - age
            )
        passed = (key, _dump(_Triplet(now - age, now)), timing.pass_ttl)
        self.store.put_many([passed, self._network_after_pass(network_key, seen, now)])
        return GreylistVerdict(GreylistOutcome.PASSED, network, delayed=age)

    def _network_after_pass(
        self, network_key: str, seen: _Network | None, now: float
    ) -> tuple[str, str, float]:
        timing = self.timing
        passes = (seen.passes if seen is not None else 0) + 1
        if timing.auto_allow_passes and passes >= timing.auto_allow_passes:
            allowed = _Network(0, now + timing.auto_allow_ttl)
            return (network_key, _dump(allowed), timing.auto_allow_ttl)
        return (network_key, _dump(_Network(passes)), timing.pass_ttl)


def triplet_key(network: str, sender: str, recipient: str) -> str:
    """Addresses compared without case, as mail systems treat them in practice; the null
    sender as `<>`."""
    return f"tri:{network}|{sender.lower() or '<>'}|{recipient.lower()}"


def _dump(record: _Triplet | _Network) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"))


_Record = TypeVar("_Record", _Triplet, _Network)


def _load(text: str | None, kind: type[_Record]) -> _Record | None:
    if text is None:
        return None
    try:
        return kind(**json.loads(text))
    except (ValueError, TypeError):
        return None  # a value another version wrote: start afresh rather than fail
