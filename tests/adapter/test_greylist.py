"""Greylisting's triplet logic with an injected clock, over the SQLite store and over a real
redis-server on loopback (whose keys expire by the real clock: the Redis tests move the
injected clock only within a key's lifetime)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from spamgate.state.greylist import Greylister, GreylistOutcome, GreylistTiming, client_network
from spamgate.state.store import PausingStore, RedisStore, SqliteStore, StateStore
from tests.fakes import FakeClock
from tests.harness.redis import RedisServer

TIMING = GreylistTiming(
    min_delay=300, retry_window=3600, pass_ttl=86400, auto_allow_passes=3, auto_allow_ttl=7200
)
CLIENT = ipaddress.ip_address("192.0.2.10")
SENDER, RECIPIENT = "news@example.org", "user@example.com"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    sqlite = SqliteStore(tmp_path / "greylist.sqlite", clock=clock)
    yield sqlite
    sqlite.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisStore]:
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    yield store
    store.close()


def greylister(store: StateStore, clock: FakeClock, timing: GreylistTiming = TIMING) -> Greylister:
    return Greylister(store, timing, clock)


def outcome(grey: Greylister, client: str = "192.0.2.10", sender: str = SENDER) -> str:
    return grey.check(ipaddress.ip_address(client), sender, RECIPIENT).outcome.value


def test_first_attempt_is_told_to_retry_after_the_minimum_delay(
    store: SqliteStore, clock: FakeClock
) -> None:
    verdict = greylister(store, clock).check(CLIENT, SENDER, RECIPIENT)
    assert (verdict.outcome, verdict.retry_after, verdict.network) == (
        GreylistOutcome.NEW,
        300,
        "192.0.2.0/24",
    )
    assert verdict.outcome.tempfails


def test_early_retry_waits_for_what_is_left_and_a_valid_retry_passes(
    store: SqliteStore, clock: FakeClock
) -> None:
    grey = greylister(store, clock)
    grey.check(CLIENT, SENDER, RECIPIENT)
    clock.now += 120
    early = grey.check(CLIENT, SENDER, RECIPIENT)
    assert (early.outcome, early.retry_after) == (GreylistOutcome.EARLY, 180)
    clock.now += 180
    assert outcome(grey) == "passed"
    clock.now += 5 * 86400 / 10
    assert outcome(grey) == "known"  # remembered, without a new delay


def test_a_retry_after_the_window_starts_anew(store: SqliteStore, clock: FakeClock) -> None:
    grey = greylister(store, clock)
    grey.check(CLIENT, SENDER, RECIPIENT)
    clock.now += 3601
    assert outcome(grey) == "new"
    clock.now += 300
    assert outcome(grey) == "passed"


def test_a_passed_triplet_is_forgotten_after_pass_ttl_of_silence(
    store: SqliteStore, clock: FakeClock
) -> None:
    grey = greylister(store, clock)
    grey.check(CLIENT, SENDER, RECIPIENT)
    clock.now += 300
    assert outcome(grey) == "passed"
    clock.now += 86400 - 1
    assert outcome(grey) == "known"  # and seen again: remembered another pass_ttl
    clock.now += 86400 - 1
    assert outcome(grey) == "known"
    clock.now += 86400 + 1
    assert outcome(grey) == "new"


def test_retries_from_other_hosts_of_the_same_network_count(
    store: SqliteStore, clock: FakeClock
) -> None:
    grey = greylister(store, clock)
    assert outcome(grey, "192.0.2.10") == "new"
    clock.now += 300
    assert outcome(grey, "192.0.2.200") == "passed"  # same /24: an outbound pool
    assert outcome(grey, "192.0.3.10") == "new"  # another /24


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),  # IPv4-mapped: the IPv4 network
    ],
)
def test_client_network(address: str, network: str) -> None:
    assert client_network(ipaddress.ip_address(address), TIMING) == network


def test_prefixes_are_configurable() -> None:
    timing = GreylistTiming(ipv4_prefix=32, ipv6_prefix=48)
    assert client_network(ipaddress.ip_address("192.0.2.77"), timing) == "192.0.2.77/32"
    assert client_network(ipaddress.ip_address("2001:db8:1:2::1"), timing) == "2001:db8:1::/48"


def test_addresses_compare_without_case_and_the_null_sender_is_its_own(
    store: SqliteStore, clock: FakeClock
) -> None:
    grey = greylister(store, clock)
    grey.check(CLIENT, "News@Example.ORG", "User@Example.com")
    grey.check(CLIENT, "", RECIPIENT)
    clock.now += 300
    assert outcome(grey, sender="news@example.org") == "passed"
    assert outcome(grey, sender="") == "passed"
    assert outcome(grey, sender="other@example.org") == "new"


def test_a_network_that_passes_often_is_allowed_for_a_while(
    store: SqliteStore, clock: FakeClock
) -> None:
    grey = greylister(store, clock)
    for n in range(3):  # auto_allow_passes = 3 triplets that pass
        grey.check(CLIENT, f"s{n}@example.org", RECIPIENT)
        clock.now += 300
        assert outcome(grey, sender=f"s{n}@example.org") == "passed"
    assert outcome(grey, "192.0.2.99", "never-seen@example.net") == "allowed"
    clock.now += 7200 + 1
    assert outcome(grey, "192.0.2.99", "never-seen@example.net") == "new"


def test_auto_allow_can_be_turned_off(store: SqliteStore, clock: FakeClock) -> None:
    grey = greylister(store, clock, GreylistTiming(auto_allow_passes=0))
    for n in range(10):
        grey.check(CLIENT, f"s{n}@example.org", RECIPIENT)
        clock.now += 300
        assert outcome(grey, sender=f"s{n}@example.org") == "passed"
    assert outcome(grey, sender="new@example.org") == "new"


def test_a_store_that_cannot_be_opened_fails_open_and_is_tried_again_later(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqliteStore(blocker / "greylist.sqlite", clock=clock)
    grey = greylister(store, clock)
    verdict = grey.check(CLIENT, SENDER, RECIPIENT)
    assert verdict.outcome is GreylistOutcome.FAILED_OPEN
    assert not verdict.outcome.tempfails
    assert verdict.error.startswith(("FileExistsError", "NotADirectoryError"))
    blocker.unlink()
    clock.now += 1  # the same second: not tried again yet
    assert "trying again in" in grey.check(CLIENT, SENDER, RECIPIENT).error
    monkeypatch.setattr(SqliteStore, "REOPEN_AFTER", 0.0)
    store._next_open = 0.0
    assert outcome(grey) == "new"  # the directory can be made now
    store.close()


def test_a_store_failing_again_and_again_is_left_alone_for_a_while(clock: FakeClock) -> None:
    class Broken:
        calls = 0

        def get_many(self, keys: Sequence[str]) -> list[str | None]:
            Broken.calls += 1
            raise ConnectionError("down")

        def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
            raise AssertionError("never reached")

    grey = greylister(PausingStore(Broken(), clock), clock)
    errors = [grey.check(CLIENT, SENDER, RECIPIENT).error for _ in range(5)]
    assert Broken.calls == PausingStore.FAILURES_BEFORE_PAUSE
    assert errors[-1] == "StatePausedError: not asked for 5 s after 3 failures in a row"
    clock.now += PausingStore.PAUSE
    assert grey.check(CLIENT, SENDER, RECIPIENT).error == "ConnectionError: down"
    assert Broken.calls == PausingStore.FAILURES_BEFORE_PAUSE + 1


def test_a_value_it_cannot_read_starts_afresh(store: SqliteStore, clock: FakeClock) -> None:
    store.put_many([("tri:192.0.2.0/24|news@example.org|user@example.com", "{not json", 3600)])
    assert outcome(greylister(store, clock)) == "new"


def test_state_survives_a_restart_in_wal_mode(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "greylist.sqlite"
    first = SqliteStore(path, clock=clock)
    assert first.journal_mode() == "wal"
    greylister(first, clock).check(CLIENT, SENDER, RECIPIENT)
    first.close()
    clock.now += 300
    second = SqliteStore(path, clock=clock)
    assert outcome(greylister(second, clock)) == "passed"
    second.close()


def test_two_stores_on_one_file_share_state(tmp_path: Path, clock: FakeClock) -> None:
    """Two daemons on one host (or a restart overlapping the old process)."""
    path = tmp_path / "greylist.sqlite"
    one, other = SqliteStore(path, clock=clock), SqliteStore(path, clock=clock)
    greylister(one, clock).check(CLIENT, SENDER, RECIPIENT)
    clock.now += 300
    assert outcome(greylister(other, clock)) == "passed"
    one.close()
    other.close()


def test_expired_rows_are_purged(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "greylist.sqlite"
    store = SqliteStore(path, clock=clock)
    store.put_many([(f"k{n}", "{}", 10) for n in range(SqliteStore._PURGE_EVERY - 1)])
    clock.now += 11
    store.put_many([("last", "{}", 10)])  # the 1000th write deletes what expired
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT key FROM state").fetchall() == [("last",)]


# --- Redis: shared by several MX hosts ---------------------------------------------------------


def test_redis_first_attempt_early_retry_valid_retry_and_known(
    redis_store: RedisStore, clock: FakeClock
) -> None:
    grey = greylister(redis_store, clock)
    assert outcome(grey) == "new"
    clock.now += 100
    assert outcome(grey) == "early"
    clock.now += 200
    assert outcome(grey) == "passed"
    assert outcome(grey) == "known"


def test_redis_state_is_shared_by_two_mx_hosts(
    redis_server: RedisServer, redis_store: RedisStore, clock: FakeClock
) -> None:
    other_mx = RedisStore(redis_server.url)
    try:
        greylister(redis_store, clock).check(CLIENT, SENDER, RECIPIENT)
        clock.now += 300
        assert outcome(greylister(other_mx, clock)) == "passed"  # the retry went elsewhere
        assert outcome(greylister(redis_store, clock)) == "known"
    finally:
        other_mx.close()


def test_redis_keys_expire_by_themselves(redis_store: RedisStore) -> None:
    redis_store.put_many([("k", "v", 0.05), ("j", "w", 60)])
    assert redis_store.get_many(["k", "j", "none"]) == ["v", "w", None]
    assert 0 < redis_store._client.pttl("k") <= 50
    time.sleep(0.1)
    assert redis_store.get_many(["k", "j"]) == [None, "w"]


def test_redis_that_does_not_answer_fails_open_within_the_bound(clock: FakeClock) -> None:
    # A port that accepts and never answers: the worst case, a hung server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        store = RedisStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.2)
        started = time.monotonic()
        verdict = greylister(store, clock).check(CLIENT, SENDER, RECIPIENT)
        elapsed = time.monotonic() - started
        store.close()
    assert verdict.outcome is GreylistOutcome.FAILED_OPEN
    assert "Timeout" in verdict.error
    assert elapsed < 0.2 * 3 + 0.5  # the bound per command, not a TCP timeout


def test_redis_stopped_mid_run_fails_open_and_recovers(tmp_path: Path, clock: FakeClock) -> None:
    with RedisServer(tmp_path) as server:
        store = RedisStore(server.url)
        grey = greylister(store, clock)
        assert outcome(grey) == "new"
        server.stop()
        verdict = grey.check(CLIENT, SENDER, RECIPIENT)
        assert verdict.outcome is GreylistOutcome.FAILED_OPEN
        assert "ConnectionError" in verdict.error
        server.start()  # back, empty: the triplet starts anew
        assert outcome(grey) == "new"
        store.close()


class CountingStore:
    """Counts the round trips a check makes to its store."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.reads = self.writes = 0

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        self.reads += 1
        return self.inner.get_many(keys)

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        self.writes += 1
        self.inner.put_many(items)


def test_a_check_reads_once_and_writes_at_most_once(store: SqliteStore, clock: FakeClock) -> None:
    """So a slow or hung server costs a session at most two timeouts."""
    counting = CountingStore(store)
    grey = greylister(counting, clock)
    seen = []
    for step in (0, 100, 200, 10):  # new, early, passed (and the network counted), known
        clock.now += step
        seen.append((outcome(grey), counting.reads, counting.writes))
        counting.reads = counting.writes = 0
    assert seen == [("new", 1, 1), ("early", 1, 0), ("passed", 1, 1), ("known", 1, 1)]


def test_fifty_concurrent_sessions_share_one_sqlite_store(tmp_path: Path) -> None:
    """Safe under concurrent sessions: 50 threads checking at once, none fails open, and every
    triplet is remembered once."""
    store = SqliteStore(tmp_path / "greylist.sqlite", timeout=0.5)
    grey = Greylister(store, TIMING, time.time)
    outcomes: list[str] = []

    def session(n: int) -> None:
        for attempt in range(10):
            verdict = grey.check(CLIENT, f"s{n}@example.org", f"r{attempt}@example.com")
            outcomes.append(verdict.outcome.value + verdict.error)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(set(outcomes)) == ["new"] and len(outcomes) == 500
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("SELECT count(*) FROM state").fetchone() == (500,)
    store.close()
