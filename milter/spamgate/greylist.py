"""Greylisting: the first attempt of a (client network, sender, recipient) triplet is told to
retry; a retry after `min_delay` and within `retry_window` passes, and the triplet is then
remembered for `pass_ttl`. A client network whose triplets pass `auto_allow_passes` times is
let through without delay for `auto_allow_ttl`. Real MTAs retry; most spam software does not.

The logic is pure given a store and a clock. State lives behind `GreylistStore` (a key, a small
JSON value, a time to live): `SqliteStore`, a local file, or `RedisStore`, a server shared by
every MX host. A store that fails makes the check fail open: the caller
accepts, logs and counts (see `GreylistOutcome.FAILED_OPEN`); after a few failures in a row
the store is left alone for a few seconds, so a dead server does not cost every session its
timeout.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from spamgate.config import GreylistSettings

log = logging.getLogger("spamgate")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


class GreylistStore(Protocol):
    """Keys with small JSON values that expire by themselves. A check reads once and writes
    at most once (each a single round trip to a server), so its cost is bounded by two."""

    def get_many(self, keys: Sequence[str]) -> list[str | None]: ...

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        """(key, value, seconds to live) each."""


def client_network(address: IPAddress, timing: GreylistTiming) -> str:
    """The network a client's retries may come from: pools of outbound servers share one.
    An IPv4-mapped IPv6 address counts as its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
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

    FAILURES_BEFORE_PAUSE = 3
    PAUSE = 5.0  # seconds the store is not asked after that many failures in a row

    def __init__(
        self, store: GreylistStore, timing: GreylistTiming, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.timing = timing
        self._clock = clock
        self._failures = 0  # in a row; races between sessions only blur the count
        self._paused_until = 0.0

    def check(self, address: IPAddress, sender: str, recipient: str) -> GreylistVerdict:
        network = client_network(address, self.timing)
        now = self._clock()
        if now < self._paused_until:
            error = f"not asked for {self.PAUSE:g} s after {self._failures} failures in a row"
            return GreylistVerdict(GreylistOutcome.FAILED_OPEN, network, error=error)
        try:
            verdict = self._check(network, sender, recipient)
        except Exception as error:  # any backend failure: accept, and say why
            self._failures += 1
            if self._failures >= self.FAILURES_BEFORE_PAUSE:
                self._paused_until = now + self.PAUSE
            return GreylistVerdict(
                GreylistOutcome.FAILED_OPEN, network, error=f"{type(error).__name__}: {error}"
            )
        self._failures = 0
        return verdict

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


class SqliteStore:
    """The embedded default: one SQLite file in WAL mode, which survives restarts, needs no
    server and lets several processes on one host share it. One connection per store, used
    under a lock (each statement takes microseconds). `timeout` bounds a whole read or write:
    half for this process's lock, half for another process's write (SQLite's busy timeout).

    The file (and its directory) is made on first use, and opening it again is tried at most
    every `REOPEN_AFTER` seconds while it fails, so a missing or unwritable directory makes
    greylisting fail open instead of stopping the daemon."""

    _PURGE_EVERY = 1000  # puts between deletions of expired rows
    REOPEN_AFTER = 10.0

    def __init__(
        self, path: Path, timeout: float = 0.2, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._puts = 0
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0

    def _connection(self) -> sqlite3.Connection:
        """The open database; the caller holds the lock."""
        if self._db is not None:
            return self._db
        now = time.monotonic()
        if now < self._next_open:
            raise OSError(f"cannot open {self.path}; trying again in {self._next_open - now:.0f} s")
        self._next_open = now + self.REOPEN_AFTER
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self._timeout / 2, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS greylist"
                " (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)"
            )
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _locked(self) -> _Held:
        if not self._lock.acquire(timeout=self._timeout / 2):
            raise TimeoutError(f"{self.path} busy for {self._timeout / 2:g} s in this process")
        return _Held(self._lock)

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = self._clock()
        with self._locked():
            found = dict(
                self._connection()
                .execute(
                    f"SELECT key, value FROM greylist WHERE expires > ?"
                    f" AND key IN ({', '.join('?' * len(keys))})",
                    (now, *keys),
                )
                .fetchall()
            )
        return [found.get(key) for key in keys]

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        now = self._clock()
        with self._locked():
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # one transaction: one lock, one WAL commit
            try:
                db.executemany(
                    "INSERT INTO greylist (key, value, expires) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                    " expires = excluded.expires",
                    [(key, value, now + ttl) for key, value, ttl in items],
                )
                self._puts += len(items)
                if self._puts >= self._PURGE_EVERY:
                    self._puts = 0
                    db.execute("DELETE FROM greylist WHERE expires <= ?", (now,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def journal_mode(self) -> str:
        with self._locked():
            return str(self._connection().execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _Held:
    """A lock already acquired (with a timeout), released at the end of a with block."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        self._lock.release()


class RedisStore:
    """Shared state for several MX hosts: each key expires by itself (PX). A read is one MGET
    and a write one pipeline, each tried once (redis-py would retry three times by default)
    with connecting and answering bounded by a quarter of `timeout` each, so a check's two
    round trips cost a session at most about `timeout` before it fails open."""

    def __init__(self, url: str, timeout: float = 0.2) -> None:
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout / 4,
            socket_connect_timeout=timeout / 4,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [None if value is None else str(value) for value in self._client.mget(keys)]

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        pipeline = self._client.pipeline(transaction=False)
        for key, value, ttl in items:
            pipeline.set(key, value, px=max(1, int(ttl * 1000)))
        pipeline.execute()

    def close(self) -> None:
        self._client.close()


class MemoryStore:
    """State in a dict, for `spamgate explain` (which keeps none between runs) and tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._items: dict[str, tuple[str, float]] = {}

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = self._clock()
        found = [self._items.get(key) for key in keys]
        return [item[0] if item is not None and item[1] > now else None for item in found]

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        now = self._clock()
        self._items.update((key, (value, now + ttl)) for key, value, ttl in items)


def open_store(settings: GreylistSettings) -> SqliteStore | RedisStore:
    """The store `settings.state` names. Neither connects here: a store that is down when
    the daemon starts fails open until it is up."""
    if settings.uses_redis:
        return RedisStore(settings.state, settings.state_timeout)
    return SqliteStore(Path(settings.state), settings.state_timeout)


class FailureReport:
    """One WARNING per `interval` while a store fails, with how many checks failed open since
    the last one: a dead Redis under load must not write a line per message."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._unreported = 0
        self._next = 0.0

    def note(self, where: str, error: str) -> None:
        with self._lock:
            self._unreported += 1
            now = self._clock()
            if now < self._next:
                return
            count, self._unreported = self._unreported, 0
            self._next = now + self._interval
        log.warning(
            "greylist state %s failed, greylisting fails open (mail accepted): %s "
            "(%d check(s) failed open since the last report)",
            where,
            error,
            count,
        )
