"""The daemon process: it listens where the policy says, and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from spamgate.config.preflight import CheckedPolicy, load_checked_policy
from spamgate.core.policy import Policy
from spamgate.core.scoring import Mode
from spamgate.core.settings import ListenAddress, Nameserver
from spamgate.shell import daemon as daemon_module
from spamgate.shell.adapter import milter_answers
from spamgate.shell.daemon import Daemon
from tests.harness.processes import (
    find_program,
    free_port,
    stop_milter_process,
    tcp_accepts,
    unix_accepts,
    wait_until,
)

# For daemons that log their start-up but have no directory of their own for the state.
NO_GREYLISTING = "thresholds: {greylist: null}\n"


def local_state(tmp_path: Path) -> str:
    """Greylisting (on by default) keeps its state in the test's directory, not /var/lib."""
    return f"state: {{store: '{tmp_path}/state.sqlite'}}\n"


def start(policy: Path, command: Sequence[str] = ("-m", "spamgate")) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *command, "run", "-c", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def listen_then_sigterm(
    tmp_path: Path, command: Sequence[str] = ("-m", "spamgate")
) -> tuple[int, int, str]:
    """(port, exit status, output) of a daemon on an inet port, stopped once it listens."""
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path))
    process = start(policy, command)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
    finally:
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
    return port, code, output


def test_inet_listener_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port, code, output = listen_then_sigterm(tmp_path)
    assert code == 0, output
    assert f"listening on inet:{port}@127.0.0.1" in output
    assert "INFO stats resolver lookups=0 cache_hits=0 merged=0 queries_sent=0" in output
    assert output.rstrip().endswith("INFO spamgate stopped")


@pytest.mark.parametrize("mode", ["0660", "0600"])
def test_unix_socket_gets_the_configured_mode(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "spamgate.sock"
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: unix:{path}\nsocket_mode: '{mode}'\n" + local_state(tmp_path))
    process = start(policy)
    try:
        wait_until(lambda: unix_accepts(path), timeout=10, what="spamgate to listen")
        assert stat.S_IMODE(path.stat().st_mode) == int(mode, 8)
    finally:
        code, output = stop_milter_process(process, lambda: unix_accepts(path))
    assert code == 0, output


def test_port_in_use_is_an_error_exit(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        policy = tmp_path / "p.yaml"
        policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path))
        result = subprocess.run(
            [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"ERROR cannot listen on inet:{port}@127.0.0.1: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_log_to_a_file(tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "spamgate.log"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"listen: inet:{port}@127.0.0.1\nlog: {{target: {log_file}}}\n" + local_state(tmp_path)
    )
    process = start(policy)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
    finally:
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
    assert code == 0, output
    assert output == ""
    written = log_file.read_text()
    assert f"INFO listening on inet:{port}@127.0.0.1" in written
    assert written.rstrip().endswith("INFO spamgate stopped")


def test_unwritable_log_target_is_an_error_exit(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    missing_dir = tmp_path / "no" / "such" / "dir"
    policy.write_text(
        f"listen: inet:{free_port()}@127.0.0.1\nlog: {{target: {missing_dir}/x.log}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"spamgate: cannot log to {missing_dir}/x.log: ")


# libmilter's opensocket() binds and listens without a chmod: the script looks at the socket
# between that call and spamgate's own chmod, under umask 000 (the worst case).
_BIRTH_MODE_SCRIPT = """
import os, stat, sys
from spamgate.shell import adapter
from spamgate.core.settings import ListenAddress, SocketMode

path, mode = sys.argv[1], int(sys.argv[2], 8)
opensocket = adapter.libmilter.opensocket

def open_and_look(remove):
    opensocket(remove)
    print(f"born {stat.S_IMODE(os.stat(path).st_mode):04o}")

adapter.libmilter.opensocket = open_and_look
adapter.libmilter.main = lambda: None
os.umask(0)
adapter.serve(None, ListenAddress("unix", path=path), SocketMode(mode))
print(f"served {stat.S_IMODE(os.stat(path).st_mode):04o} umask {os.umask(0):04o}")
"""


@pytest.mark.parametrize("mode", ["0660", "0600"])
def test_unix_socket_is_born_with_its_mode_under_umask_000(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "spamgate.sock"
    result = subprocess.run(
        [sys.executable, "-c", _BIRTH_MODE_SCRIPT, str(path), mode],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Never world-writable, not even before the chmod; and the umask is given back.
    assert result.stdout.splitlines() == [f"born {mode}", f"served {mode} umask 0000"]


def test_unix_socket_mode_survives_sessions_and_reload(tmp_path: Path) -> None:
    """libmilter accepts and serves connections on the socket without widening its mode."""
    path = tmp_path / "spamgate.sock"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"listen: unix:{path}\nsocket_mode: '0600'\nhealth: {{status_file: ''}}\n"
        + local_state(tmp_path)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        umask=0,
    )
    try:
        wait_until(lambda: unix_accepts(path), timeout=10, what="spamgate to listen")
        first = stat.S_IMODE(path.stat().st_mode)
        for _ in range(5):
            assert unix_accepts(path)
        process.send_signal(signal.SIGUSR1)
        wait_until(lambda: unix_accepts(path), timeout=10, what="spamgate after reload")
        later = stat.S_IMODE(path.stat().st_mode)
    finally:
        code, output = stop_milter_process(process, lambda: unix_accepts(path))
    assert code == 0, output
    assert "reloaded policy" in output
    assert (first, later) == (0o600, 0o600)


@pytest.mark.parametrize(("euid", "warned"), [(0, True), (1000, False)])
def test_running_as_root_gets_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, euid: int, warned: bool
) -> None:
    from spamgate.core import schema  # noqa: PLC0415
    from spamgate.core.policy import Policy  # noqa: PLC0415
    from spamgate.shell import daemon as daemon_module  # noqa: PLC0415

    text = "resolver: {nameservers: ['127.0.0.1:53']}\n" + NO_GREYLISTING
    policy = schema.load(Policy, text, "t.yaml")
    daemon = daemon_module.Daemon(policy, "t.yaml")  # constructed, never started
    monkeypatch.setattr(daemon_module.os, "geteuid", lambda: euid)
    caplog.set_level("WARNING", logger="spamgate")
    daemon._log_start()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = [
        "running as root: spamgate needs no privileges; run it as its own user "
        "(systemd/spamgate.service has User=spamgate)"
    ]
    assert warnings == (expected if warned else [])


# -- reload with a broken or hostile policy (issue 14) -----------------------------------------

GOOD = "resolver: {nameservers: ['127.0.0.1:53']}\n" + NO_GREYLISTING


def _broken(tmp_path: Path, kind: str) -> tuple[str, str]:
    """A policy text of `kind` (files it names made in `tmp_path`), and what its error says."""
    policy = tmp_path / "p.yaml"
    if kind == "bad-tag":
        return GOOD + "mode: !!float x\n", f"{policy}:3:7: mode: cannot read 'x' as a number"
    if kind == "undefined-tag":
        return GOOD + "mode: !foo x\n", f"{policy}:3:7: mode: the tag !foo is not allowed here"
    if kind == "impossible-date":
        return GOOD + "log: {target: 2024-02-30}\n", f"{policy}:3:15: log.target: cannot read"
    if kind == "fifo-list":
        fifo = tmp_path / "clients"
        os.mkfifo(fifo)
        return (
            GOOD + f"allow: {{clients: ['file:{fifo}']}}\n",
            f"{policy}:3:19: allow.clients[0]: {fifo}: cannot read: a FIFO, not a regular file",
        )
    if kind == "dev-zero-list":
        return (
            GOOD + "allow: {clients: ['file:/dev/zero']}\n",
            f"{policy}:3:19: allow.clients[0]: /dev/zero: cannot read: a character device",
        )
    if kind == "dev-zero-key-file":
        return (
            GOOD + "ip_lists: [{name: Z, zone: '{key}.zen.test', key_file: /dev/zero, score: 1}]\n",
            f"{policy}:3:46: ip_lists[0].key_file: cannot read /dev/zero: a character device",
        )
    assert kind == "oversized"
    return GOOD + "#" * 2**20 + "\n", f"{policy}: larger than 1 MiB"


BROKEN_KINDS = [
    "bad-tag",
    "undefined-tag",
    "impossible-date",
    "fifo-list",
    "dev-zero-list",
    "dev-zero-key-file",
    "oversized",
]


def _daemon(tmp_path: Path) -> tuple[Daemon, Path]:
    """A daemon on a good policy file, constructed but never started: nothing is sent."""
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    return Daemon(load_policy(path), str(path)), path


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_reload_of_a_broken_policy_keeps_the_old_one_with_one_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    daemon, path = _daemon(tmp_path)
    old = daemon.policy
    text, problem = _broken(tmp_path, kind)
    path.write_text(text)
    caplog.set_level("INFO", logger="spamgate")
    assert daemon.reload(timeout=10) is False
    (error,) = _errors(caplog)
    assert error.startswith(f"reload failed, still using policy {old.digest}: {problem}")
    assert "\n" not in error
    assert (daemon.policy, daemon.generation, daemon.runtime.current.policy) == (old, 1, old)
    path.write_text(GOOD + "mode: observe\n")  # and a good one is taken afterwards
    assert daemon.reload(timeout=10) is True
    assert (daemon.policy.mode, daemon.generation) == (Mode.OBSERVE, 2)


def test_reload_survives_a_bug_in_loading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, path = _daemon(tmp_path)

    def broken(config_path: str, system_nameservers: object) -> CheckedPolicy:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon_module, "load_checked_policy", broken)
    caplog.set_level("INFO", logger="spamgate")
    assert daemon.reload(timeout=10) is False
    (error,) = _errors(caplog)
    assert error.startswith(
        f"reload failed, still using policy {daemon.policy.digest}: cannot load {path}: "
        "Traceback (most recent call last): | "
    )
    assert error.endswith(" | RuntimeError: a bug")
    assert "\n" not in error


def test_reload_survives_a_bug_in_applying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, path = _daemon(tmp_path)
    old = daemon.policy

    def broken(policy: Policy) -> object:
        raise RuntimeError("no engine")

    monkeypatch.setattr(daemon_module, "Engine", broken)
    path.write_text(GOOD + "mode: observe\n")
    caplog.set_level("INFO", logger="spamgate")
    assert daemon.reload(timeout=10) is False
    (error,) = _errors(caplog)
    assert error.startswith(f"reload failed, still using policy {old.digest}: cannot apply {path}")
    assert error.endswith(" | RuntimeError: no engine")
    assert (daemon.policy, daemon.runtime.current.policy, daemon.generation) == (old, old, 1)


class _BlockingLoad:
    """load_checked_policy that blocks until released, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def __call__(
        self, config_path: str, system_nameservers: Callable[[], Sequence[Nameserver]]
    ) -> CheckedPolicy:
        self.calls += 1
        self.release.wait(10)
        return load_checked_policy(config_path, system_nameservers)


def test_reload_never_waits_and_one_asked_during_a_reload_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _ = _daemon(tmp_path)
    blocking = _BlockingLoad()
    monkeypatch.setattr(daemon_module, "load_checked_policy", blocking)
    started = time.monotonic()
    thread = daemon.request_reload()
    assert thread is not None
    assert daemon.request_reload() is thread  # the file may change while it is read
    assert daemon.request_reload() is thread
    assert time.monotonic() - started < 1
    blocking.release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert (blocking.calls, daemon.generation) == (2, 3)


def test_reload_that_does_not_end_is_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, path = _daemon(tmp_path)
    old = daemon.policy
    blocking = _BlockingLoad()
    monkeypatch.setattr(daemon_module, "load_checked_policy", blocking)
    monkeypatch.setattr(daemon_module, "RELOAD_TIMEOUT", 0.2)
    caplog.set_level("INFO", logger="spamgate")
    thread = daemon.request_reload()
    assert thread is not None
    daemon._watch_reload()
    assert _errors(caplog) == []
    time.sleep(0.3)
    daemon._watch_reload()
    daemon._watch_reload()
    assert _errors(caplog) == [
        f"reload failed, still using policy {old.digest}: loading {path} did not end within 0.2 s"
    ]
    assert daemon.request_reload() is None  # one stuck reload at most
    assert _errors(caplog)[1].startswith(
        f"reload failed, still using policy {old.digest}: the reload started "
    )
    blocking.release.set()  # it ends at last: too late, it changes nothing
    thread.join(10)
    assert (daemon.policy, daemon.generation, blocking.calls) == (old, 1, 1)
    assert len(_errors(caplog)) == 2
    assert daemon.reload(timeout=10) is True  # and the next reload runs


@pytest.mark.parametrize("kind", ["bad-tag", "fifo-list", "dev-zero-key-file", "oversized"])
def test_daemon_serves_on_after_a_broken_reload_and_stops_on_sigterm(
    tmp_path: Path, kind: str
) -> None:
    port = free_port()
    log_file = tmp_path / "spamgate.log"
    path = tmp_path / "p.yaml"
    served = f"listen: inet:{port}@127.0.0.1\nlog: {{target: {log_file}}}\n"
    path.write_text(served + local_state(tmp_path))
    process = start(path)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
        digest = load_policy(path).digest
        text, problem = _broken(tmp_path, kind)
        path.write_text(served + text)
        process.send_signal(signal.SIGUSR1)
        wait_until(lambda: "reload failed" in log_file.read_text(), timeout=10, what="the reload")
        assert tcp_accepts("127.0.0.1", port)
    finally:
        code, _ = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1), timeout=15
        )
    written = log_file.read_text()
    assert code == 0, written
    (error,) = [line for line in written.splitlines() if " ERROR " in line]
    assert f"ERROR reload failed, still using policy {digest}: {path}" in error
    assert problem.split(": ", 1)[1] in error  # what is wrong, and in which file
    assert "INFO received SIGTERM: stopping" in written
    assert written.rstrip().endswith("INFO spamgate stopped")


def test_log_target_that_is_a_fifo_without_a_reader_is_refused_at_start(tmp_path: Path) -> None:
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{free_port()}@127.0.0.1\nlog: {{target: {fifo}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        capture_output=True,
        text=True,
        timeout=20,  # opening it for writing used to wait for a reader, for ever
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"spamgate: cannot log to {fifo}: [Errno 6] No such device or address: '{fifo}'\n"
    )


def test_reload_to_a_fifo_log_target_keeps_the_old_policy_and_sigterm_still_stops(
    tmp_path: Path,
) -> None:
    port = free_port()
    log_file = tmp_path / "spamgate.log"
    fifo = tmp_path / "log-fifo"
    os.mkfifo(fifo)
    path = tmp_path / "p.yaml"
    path.write_text(f"listen: inet:{port}@127.0.0.1\nlog: {{target: {log_file}}}\n" + GOOD)
    process = start(path)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
        digest = load_policy(path).digest
        path.write_text(f"listen: inet:{port}@127.0.0.1\nlog: {{target: {fifo}}}\n" + GOOD)
        process.send_signal(signal.SIGUSR1)
        wait_until(lambda: "reload failed" in log_file.read_text(), timeout=10, what="reload")
    finally:
        code, _ = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1), timeout=15
        )
    written = log_file.read_text()
    assert code == 0, written
    assert (
        f"ERROR reload failed, still using policy {digest}: log: [Errno 6] No such device or "
        f"address: '{fifo}'"
    ) in written
    assert "INFO received SIGTERM: stopping" in written
    assert written.rstrip().endswith("INFO spamgate stopped")


# --- the watchdog's question: does libmilter still hand out sessions? -----------------------


def test_milter_answers_an_option_negotiation_through_real_libmilter(tmp_path: Path) -> None:
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path))
    process = start(policy)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
        assert milter_answers(ListenAddress.from_config(f"inet:{port}@127.0.0.1"), 5.0)
    finally:
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
    assert code == 0, output


def test_a_socket_that_accepts_but_never_answers_is_not_a_milter() -> None:
    """What a stuck accept loop looks like from outside: the kernel completes the connection
    (the listen backlog), and nothing answers."""
    with socket.create_server(("127.0.0.1", 0)) as stuck:
        port = stuck.getsockname()[1]
        started = time.monotonic()
        assert not milter_answers(ListenAddress.from_config(f"inet:{port}@127.0.0.1"), 0.3)
        assert time.monotonic() - started < 2
    assert not milter_answers(ListenAddress.from_config(f"inet:{port}@127.0.0.1"), 0.3)


def test_watchdog_health_asks_libmilter_when_no_session_came_lately(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before issue 14 the watchdog checked only the resolver: a daemon whose libmilter had
    stopped handing out sessions stayed "healthy" and every MTA waited."""
    daemon, _ = _daemon(tmp_path)
    monkeypatch.setattr(daemon_module, "WATCHDOG_PROBE_TIMEOUT", 0.3)
    alive = threading.Thread(target=time.sleep, args=(30,), daemon=True)
    alive.start()
    daemon._milter_thread = alive  # type: ignore[assignment]  # only is_alive() is asked
    daemon.resolver.start()
    try:
        with socket.create_server(("127.0.0.1", 0)) as stuck:
            listen = ListenAddress.from_config(f"inet:{stuck.getsockname()[1]}@127.0.0.1")
            monkeypatch.setattr(daemon, "policy", dataclasses.replace(daemon.policy, listen=listen))
            assert not daemon._healthy()  # no session lately, and the socket does not answer
            daemon.runtime.session_started()  # a session just came: libmilter hands them out
            daemon.runtime.session_ended()
            assert daemon._healthy()
    finally:
        daemon.resolver.stop()


# -- how the kernel schedules the daemon's threads (issue 13) ---------------------------------


# SMFIC_OPTNEG: milter protocol version 6, every action and protocol step offered.
NEGOTIATION = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)


def thread_scheduling(pid: int) -> list[tuple[int, int]]:
    """(nice value, scheduling policy) of every thread of `pid`, from /proc (proc(5): fields
    19 and 41 of stat, counted after the command name, which may hold spaces)."""
    threads = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            threads.append((int(fields[16]), int(fields[38])))
    return threads


def run_and_watch_threads(
    tmp_path: Path, policy_text: str, prefix: Sequence[str] = ()
) -> tuple[list[tuple[int, int]], str]:
    """Start a daemon (under `prefix`, a command that changes its privileges), hold one
    milter connection open once libmilter has answered it, and return every thread's
    scheduling and the daemon's log."""
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path) + policy_text)
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
        # A milter connection that a worker has answered (libmilter keeps a pool of them).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(NEGOTIATION)
            assert connection.recv(5)[4:] == b"O"
            threads = thread_scheduling(process.pid)
    finally:
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
    assert code == 0, output
    return threads, output


def test_every_thread_runs_batch_at_nice_minus_10_and_the_dns_receiver_real_time(
    tmp_path: Path,
) -> None:
    """The shipped defaults, as root: set by the main thread before any other starts, so
    libmilter's threads (the one serving the held connection too) inherit them."""
    threads, output = run_and_watch_threads(tmp_path, "")
    assert len(threads) >= 5
    assert {nice for nice, _ in threads} == {-10}
    policies = [policy for _, policy in threads]
    assert policies.count(os.SCHED_RR) == 1  # the DNS receiver
    assert policies.count(os.SCHED_BATCH) == len(threads) - 1
    assert "INFO threads run at SCHED_BATCH, nice -10" in output
    assert "scheduling:" not in output  # no warning


def test_scheduling_off_leaves_every_thread_as_started(tmp_path: Path) -> None:
    threads, output = run_and_watch_threads(tmp_path, "scheduling: {nice: 0, batch: false}\n")
    assert {nice for nice, _ in threads} == {0}
    policies = [policy for _, policy in threads]
    assert policies.count(os.SCHED_OTHER) == len(threads) - 1
    assert "threads run at" not in output


def test_nice_refused_is_said_once_and_the_daemon_serves_as_started(tmp_path: Path) -> None:
    """As an unprivileged daemon without the unit's LimitNICE=-10: root without CAP_SYS_NICE
    (setpriv) and a RLIMIT_NICE of 0. SCHED_BATCH needs neither, and stays. (That a
    RLIMIT_NICE of 30, LimitNICE=-10, allows nice -10 without the capability is the kernel's
    rule, setpriority(2); it is not tried here: raising a limit needs CAP_SYS_RESOURCE, which
    the machines that run these tests may not grant even to root.)"""
    prefix = [
        find_program("setpriv"),
        "--bounding-set=-sys_nice",
        find_program("prlimit"),
        "--nice=0:0",
        "--rtprio=0:0",  # the DNS receiver stays under SCHED_BATCH too
    ]
    threads, output = run_and_watch_threads(tmp_path, "", prefix)
    assert {nice for nice, _ in threads} == {0}
    assert [policy for _, policy in threads].count(os.SCHED_BATCH) == len(threads)
    warning = (
        "WARNING scheduling: nice -10 refused (Permission denied); threads run at nice 0. "
        "Allow it with LimitNICE=-10 (systemd) or set scheduling.nice: 0\n"
    )
    assert output.count(warning) == 1
    assert "INFO threads run at SCHED_BATCH\n" in output


def test_a_reload_that_changes_scheduling_says_it_waits_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The threads took their scheduling at start; a reload does not change running threads."""
    daemon, path = _daemon(tmp_path)
    path.write_text(GOOD + "scheduling: {nice: 0}\n")
    caplog.set_level("INFO", logger="spamgate")
    assert daemon.reload(timeout=10) is True
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "reload: scheduling changed; it takes effect at the next restart" in warnings
    assert daemon.policy.scheduling.nice == 0


# --- a profiler attached to the running daemon (py-spy stops its threads with ptrace) --------

PY_SPY = Path(sys.executable).with_name("py-spy")

WAIT_AND_PRINT = """
import signal, sys, time
from spamgate.shell.signals import wait_for_signal
wanted = {signal.SIGTERM, signal.SIGUSR1}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
print("waiting", flush=True)
until = time.monotonic() + float(sys.argv[1])
while time.monotonic() < until:
    received = wait_for_signal(wanted, 0.05)
    if received is not None:
        print("received", int(received), flush=True)
"""


def profiled(pid: int, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` as an admin would (it stops the threads with ptrace each time)."""
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", "500"]
    argv += ["--duration", str(seconds), "--format", "raw", "--output", os.devnull]
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_the_wait_for_signals_reads_only_signals_that_came_while_a_profiler_samples() -> None:
    """Python 3.11's signal.sigtimedwait, interrupted after its deadline (ptrace interrupts it
    hundreds of times a second), returned signals that never came, from a siginfo nobody
    wrote (here 0 and 3 among others); the daemon read one as a request to stop. Short waits,
    so that many of them end while py-spy samples: only the one SIGUSR1 sent comes out."""
    child = subprocess.Popen(
        [sys.executable, "-c", WAIT_AND_PRINT, "4"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    spy = profiled(child.pid, 3)
    time.sleep(1.5)
    child.send_signal(signal.SIGUSR1)
    spy.wait(timeout=30)
    output, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert output.splitlines() == [f"received {int(signal.SIGUSR1)}"]


def test_a_profiler_attached_under_load_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """py-spy on the running daemon (docs/performance.md tells admins to profile it so), with
    sessions coming: it serves on, logs no error, and stops on SIGTERM as usual. Before, it
    stopped within seconds with "ValueError: 535302704 is not a valid Signals"."""
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path))
    process = start(policy)
    address = ListenAddress.from_config(f"inet:{port}@127.0.0.1")
    stop = threading.Event()
    answered: list[bool] = []

    def sessions() -> None:
        while not stop.is_set():
            answered.append(milter_answers(address, 2.0))

    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
        clients = [threading.Thread(target=sessions, daemon=True) for _ in range(4)]
        for client in clients:
            client.start()
        spy = profiled(process.pid, 6)
        spy.wait(timeout=60)
        stop.set()
        for client in clients:
            client.join(timeout=10)
        still_running = process.poll() is None
    finally:
        stop.set()
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
    assert still_running, output
    assert " ERROR " not in output, output
    assert answered and all(answered[: len(answered) // 2])
    assert code == 0, output
    assert "INFO received SIGTERM: stopping" in output


RUN_WATCHING_FINALIZATION = """
import atexit, sys
atexit.register(lambda: print("interpreter finalized", flush=True))
from spamgate.commands.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_after_sigterm_the_daemon_exits_without_finalizing_the_interpreter(
    tmp_path: Path,
) -> None:
    """libmilter's session threads outlive its main loop, and one that called into pymilter
    after the interpreter was finalized crashed the process (SIGSEGV in PyThreadState_New:
    exit -11 after SIGTERM, twice in 48 runs of the soak suite). So `spamgate run` leaves
    without finalizing: no atexit handler runs, the log is complete, and the status is 0."""
    _, code, output = listen_then_sigterm(tmp_path, ("-c", RUN_WATCHING_FINALIZATION))
    assert code == 0, output
    assert output.rstrip().endswith("INFO spamgate stopped"), output
    assert "interpreter finalized" not in output
