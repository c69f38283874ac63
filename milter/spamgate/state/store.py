"""Where spamgate keeps what it remembers between connections: greylist triplets and recently
rejected clients. Keys with small JSON values that expire by themselves, behind one small
interface (`StateStore`) with two backends: `SqliteStore`, a local file that survives restarts
and needs no server, and `RedisStore`, a server every MX host of a domain shares.

This is the only module that touches SQLite or Redis. Every operation is bounded by the
configured `state.timeout`; callers treat any exception as "the state did not answer" and fail
open. `PausingStore` stops asking a store that failed several times in a row for a few seconds,
so a dead server does not cost every session its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from spamgate.core.settings import StateSettings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("spamgate")
_Result = TypeVar("_Result")


class StateStore(Protocol):
    """Keys with small JSON values that expire by themselves. A check reads once and writes
    at most once (each a single round trip to a server), so its cost is bounded by two."""

    def get_many(self, keys: Sequence[str]) -> list[str | None]: ...

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        """(key, value, seconds to live) each."""


class SqliteStore:
    """The embedded default: one SQLite file in WAL mode, which survives restarts, needs no
    server and lets several processes on one host share it.

    A read is one SELECT and a write one INSERT .. ON CONFLICT statement, its own transaction,
    so SQLite's write lock is held only inside one call, which runs without the GIL. Sessions
    take a connection from a pool for each statement. A connection is held until its thread
    has the GIL back after the statement, which under 50 busy sessions takes tens of
    milliseconds: with one connection under a lock, most checks timed out at 50 sessions, and
    with a pool of 8, some still did (bench). So the pool grows to `POOL`, with a small page
    cache each. `timeout` bounds a whole read or write: half for a free connection, half for
    another connection's write (SQLite's busy timeout).

    The file (and its directory) is made on first use, and opening it again is tried at most
    every `REOPEN_AFTER` seconds while it fails, so a missing or unwritable directory makes
    greylisting fail open instead of stopping the daemon."""

    _PURGE_EVERY = 1000  # puts between deletions of expired rows
    REOPEN_AFTER = 10.0
    POOL = 64  # connections at most
    CACHE_KIB = 256  # page cache per connection

    def __init__(
        self, path: Path, timeout: float = 0.5, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._timeout = timeout
        self._clock = clock
        self._opening = threading.Lock()
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._opened = 0
        self._prepared = False
        self._next_open = 0.0
        self._puts = 0  # shared by the sessions without a lock: a lost count only delays a purge

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = self._borrow()
        try:
            yield db
        finally:
            self._idle.put(db)

    def _borrow(self) -> sqlite3.Connection:
        with contextlib.suppress(queue.Empty):
            return self._idle.get_nowait()
        with self._opening:
            if self._opened < self.POOL:
                db = self._open()
                self._opened += 1
                return db
        try:
            return self._idle.get(timeout=self._timeout / 2)
        except queue.Empty:
            raise TimeoutError(
                f"all {self.POOL} connections to {self.path} busy for {self._timeout / 2:g} s"
            ) from None

    def _open(self) -> sqlite3.Connection:
        """A new connection; the first makes the file, its directory and its table. The
        caller holds `_opening`."""
        if not self._prepared:
            now = time.monotonic()
            if now < self._next_open:
                wait = self._next_open - now
                raise OSError(f"cannot open {self.path}; trying again in {wait:.0f} s")
            self._next_open = now + self.REOPEN_AFTER
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self._timeout / 2, isolation_level=None, check_same_thread=False
        )
        try:
            if not self._prepared:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS state"
                    " (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)"
                )
            # In WAL mode, NORMAL syncs at checkpoints only: a crash may forget the last
            # commits (a retry greylisted once more), never corrupt the file.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{self.CACHE_KIB}")
        except BaseException:
            db.close()
            raise
        self._prepared = True
        return db

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = self._clock()
        with self._connection() as db:
            found = dict(
                db.execute(
                    f"SELECT key, value FROM state WHERE expires > ?"
                    f" AND key IN ({', '.join('?' * len(keys))})",
                    (now, *keys),
                ).fetchall()
            )
        return [found.get(key) for key in keys]

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        now = self._clock()
        rows = ", ".join("(?, ?, ?)" for _ in items)
        values = [field for key, value, ttl in items for field in (key, value, now + ttl)]
        with self._connection() as db:
            db.execute(
                f"INSERT INTO state (key, value, expires) VALUES {rows}"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " expires = excluded.expires",
                values,
            )
            self._puts += len(items)
            if self._puts >= self._PURGE_EVERY:
                self._puts = 0
                db.execute("DELETE FROM state WHERE expires <= ?", (now,))

    def journal_mode(self) -> str:
        with self._connection() as db:
            return str(db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        with self._opening:
            while self._opened:
                self._idle.get(timeout=5).close()
                self._opened -= 1


class RedisStore:
    """Shared state for several MX hosts: each key expires by itself (PX). A read is one MGET
    and a write one pipeline, each tried once (redis-py would retry three times by default)
    with connecting and answering bounded by half of `timeout` each, so each costs a session
    at most `timeout` before it fails open."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        # Imported here: redis-py adds about 20 MB to the process, which the default SQLite
        # state does not need.
        import redis  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout / 2,
            socket_connect_timeout=timeout / 2,
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


def open_store(settings: StateSettings) -> SqliteStore | RedisStore:
    """The store `settings.state` names. Neither connects here: a store that is down when
    the daemon starts fails open until it is up."""
    if settings.uses_redis:
        return RedisStore(settings.store, settings.timeout)
    return SqliteStore(Path(settings.store), settings.timeout)


class FailureReport:
    """One WARNING per `interval` while a store fails, with how many uses failed since the
    last one: a dead Redis under load must not write a line per message."""

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
            "state %s failed, greylisting and the reject memory fail open (mail accepted): %s "
            "(%d failure(s) since the last report)",
            where,
            error,
            count,
        )


class StatePausedError(Exception):
    """The store failed too often lately and is not asked for a while."""


class PausingStore:
    """A store that is left alone for `PAUSE` seconds after `FAILURES_BEFORE_PAUSE` failures
    in a row: while Redis is down, sessions fail open at once instead of each waiting out
    its timeout. Races between sessions only blur the count."""

    FAILURES_BEFORE_PAUSE = 3
    PAUSE = 5.0

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = store
        self._clock = clock
        self._failures = 0
        self._paused_until = 0.0

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return self._guarded(lambda: self.inner.get_many(keys))

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        self._guarded(lambda: self.inner.put_many(items))

    def _guarded(self, operation: Callable[[], _Result]) -> _Result:
        now = self._clock()
        if now < self._paused_until:
            raise StatePausedError(
                f"not asked for {self.PAUSE:g} s after {self._failures} failures in a row"
            )
        try:
            result = operation()
        except Exception:
            self._failures += 1
            if self._failures >= self.FAILURES_BEFORE_PAUSE:
                self._paused_until = now + self.PAUSE
            raise
        self._failures = 0
        return result
