"""sd_notify(3) and sd_watchdog_enabled(3), against real AF_UNIX datagram sockets."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spamgate.shell import sdnotify


class Manager:
    """The service manager's end: a bound datagram socket, as systemd's notify socket is."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 2.0) -> list[str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every datagram already queued, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return messages
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def path_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Manager(sock, str(path))


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    name = f"spamgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Manager(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest) -> Manager:
    return request.getfixturevalue(f"{request.param}_manager")  # type: ignore[no-any-return]


def test_fields_arrive_as_one_datagram_of_lines(manager: Manager) -> None:
    assert sdnotify.notify("READY=1", "STATUS=listening on inet:8894@127.0.0.1")
    assert manager.receive() == ["READY=1", "STATUS=listening on inet:8894@127.0.0.1"]
    assert manager.pending() == []


def test_newline_in_a_value_cannot_inject_an_assignment(path_manager: Manager) -> None:
    assert sdnotify.notify("STATUS=bad policy\nREADY=1")
    assert path_manager.receive() == ["STATUS=bad policy READY=1"]


def test_helpers_send_the_documented_assignments(path_manager: Manager) -> None:
    sdnotify.ready("listening")
    assert path_manager.receive() == ["READY=1", "STATUS=listening"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.reloading()
    reloading, monotonic = path_manager.receive()
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.stopping()
    assert path_manager.receive() == ["STOPPING=1", "STATUS=stopping"]


@pytest.mark.parametrize("value", [None, "", "relative/path", "@"])
def test_no_usable_socket_means_false_and_nothing_sent(
    value: str | None, path_manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET")
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False
    assert path_manager.pending() == []


def test_no_fields_sends_nothing(path_manager: Manager) -> None:
    assert sdnotify.notify() is False
    assert path_manager.pending() == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("missing", id="no-such-socket"),
        pytest.param("directory", id="not-a-socket"),
    ],
)
def test_send_failure_is_false_not_an_exception(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / target
    if target == "directory":
        path.mkdir()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.notify("READY=1") is False


def test_stream_socket_is_refused_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        pytest.param("30000000", None, 15.0, id="half-of-30s"),
        pytest.param("30000000", "self", 15.0, id="for-this-process"),
        pytest.param("30000000", "other", None, id="for-another-process"),
        pytest.param("30000000", "junk", None, id="bad-pid"),
        pytest.param("500000", "", 0.25, id="empty-pid-means-any"),
        pytest.param(None, None, None, id="unset"),
        pytest.param("0", None, None, id="zero"),
        pytest.param("-5", None, None, id="negative"),
        pytest.param("30s", None, None, id="not-a-number"),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, pids.get(value, value))
    assert sdnotify.watchdog_interval() == expected


def _arrival_times(manager: Manager, until: float) -> list[float]:
    times = []
    while (remaining := until - time.monotonic()) > 0:
        manager.sock.settimeout(remaining)
        try:
            assert manager.sock.recv(4096) == b"WATCHDOG=1"
        except TimeoutError:
            break
        times.append(time.monotonic())
    return times


def test_watchdog_pings_at_its_interval_and_stops(path_manager: Manager) -> None:
    # A long interval, so that a busy CI machine (which can stall a thread for 0.1-0.3 s)
    # cannot make "at once" look late, or a late ping look like a missing one.
    interval = 0.5
    started = time.monotonic()
    watchdog = sdnotify.Watchdog(interval, healthy=lambda: True)
    watchdog.start()
    try:
        times = _arrival_times(path_manager, started + 2.6)
    finally:
        watchdog.stop()
    assert not watchdog.running
    # At once, then every interval: 6 pings in 2.6 s; a loaded machine may delay the last.
    assert times[0] - started < interval
    assert 4 <= len(times) <= 7, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= interval * 0.9, gaps
    time.sleep(interval * 3)
    assert path_manager.pending() == []


def test_watchdog_stops_pinging_while_unhealthy_and_resumes(path_manager: Manager) -> None:
    healthy = threading.Event()
    healthy.set()
    interval = 0.05
    watchdog = sdnotify.Watchdog(interval, healthy=healthy.is_set)
    watchdog.start()
    try:
        assert path_manager.receive() == ["WATCHDOG=1"]
        healthy.clear()
        time.sleep(interval * 2)  # a ping may have been on its way when the check failed
        path_manager.pending()
        assert _arrival_times(path_manager, time.monotonic() + interval * 6) == []
        assert watchdog.running
        healthy.set()
        assert path_manager.receive() == ["WATCHDOG=1"]
    finally:
        watchdog.stop()


def test_a_check_that_raises_counts_as_unhealthy(path_manager: Manager) -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("resolver loop is gone")

    watchdog = sdnotify.Watchdog(0.02, healthy=broken)
    watchdog.start()
    try:
        assert _arrival_times(path_manager, time.monotonic() + 0.2) == []
    finally:
        watchdog.stop()
    assert len(calls) >= 3  # it kept checking, it did not die on the first exception


def test_stop_is_bounded_by_a_hung_check(path_manager: Manager) -> None:
    release = threading.Event()
    watchdog = sdnotify.Watchdog(10.0, healthy=lambda: release.wait(30))
    watchdog.start()
    try:
        started = time.monotonic()
        watchdog.stop(timeout=0.2)
        assert time.monotonic() - started < 1.0
        assert watchdog.running  # still inside the check: stop() did not wait for it
    finally:
        release.set()
        watchdog.stop()
    assert not watchdog.running


def test_stop_interrupts_a_long_interval(path_manager: Manager) -> None:
    watchdog = sdnotify.Watchdog(3600.0, healthy=lambda: True)
    watchdog.start()
    assert path_manager.receive() == ["WATCHDOG=1"]
    started = time.monotonic()
    watchdog.stop()
    assert time.monotonic() - started < 1.0
    assert not watchdog.running


def test_watchdog_rejects_a_nonpositive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        sdnotify.Watchdog(0, healthy=lambda: True)


def test_start_watchdog_follows_the_environment(
    path_manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.start_watchdog(lambda: True) is None
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    watchdog = sdnotify.start_watchdog(lambda: True)
    assert watchdog is not None
    try:
        assert watchdog.interval == 0.1
        assert path_manager.receive() == ["WATCHDOG=1"]
    finally:
        watchdog.stop()


def test_watchdog_without_notify_socket_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent = []

    def send(field: str) -> bool:
        sent.append(field)
        return sdnotify.notify(field)

    watchdog = sdnotify.Watchdog(0.02, healthy=lambda: True, send=send)
    watchdog.start()
    time.sleep(0.1)
    watchdog.stop()
    assert not watchdog.running
    assert sent and set(sent) == {"WATCHDOG=1"}
