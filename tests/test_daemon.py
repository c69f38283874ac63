"""The daemon process: it listens where the policy says, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.processes import (
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


def start(policy: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_inet_listener_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"listen: inet:{port}@127.0.0.1\n" + local_state(tmp_path))
    process = start(policy)
    try:
        wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate to listen")
    finally:
        code, output = stop_milter_process(
            process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
        )
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


def test_public_resolver_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from spamgate import schema  # noqa: PLC0415
    from spamgate.config import Policy  # noqa: PLC0415
    from spamgate.daemon import Daemon, public_resolvers  # noqa: PLC0415

    text = (
        'resolver: {nameservers: ["8.8.8.8", "127.0.0.1:5353", "[2606:4700:4700::1111]:53"]}\n'
        "ip_lists: [{name: ZEN, zone: zen.test, score: 10}]\n" + NO_GREYLISTING
    )
    policy = schema.load(Policy, text, "t.yaml")
    daemon = Daemon(policy, "t.yaml")  # constructed, never started: nothing is sent
    assert public_resolvers(daemon.resolver.nameservers) == [
        "8.8.8.8:53",
        "[2606:4700:4700::1111]:53",
    ]
    caplog.set_level("WARNING", logger="spamgate")
    daemon._log_start()
    (warning,) = [r.getMessage() for r in caplog.records if "resolver" in r.getMessage()]
    assert warning.startswith(
        "DNS lists are asked through 8.8.8.8:53, [2606:4700:4700::1111]:53, a public resolver"
    )


# libmilter's opensocket() binds and listens without a chmod: the script looks at the socket
# between that call and spamgate's own chmod, under umask 000 (the worst case).
_BIRTH_MODE_SCRIPT = """
import os, stat, sys
from spamgate import adapter
from spamgate.config import ListenAddress, SocketMode

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
    from spamgate import daemon as daemon_module  # noqa: PLC0415
    from spamgate import schema  # noqa: PLC0415
    from spamgate.config import Policy  # noqa: PLC0415

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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listen: inet:8894@127.0.0.1\nmetrics: {listen: '[::1]:9464'}\n", [], id="loopback"
        ),
        pytest.param("listen: unix:/run/spamgate/spamgate.sock\n", [], id="unix"),
        pytest.param(
            "listen: inet:8894@0.0.0.0\nmetrics: {listen: '192.0.2.1:9464'}\n",
            [
                "the milter socket inet:8894@0.0.0.0 listens beyond loopback: any host that "
                "reaches it may use it, and spamgate authenticates no one (firewall it, or use "
                "a loopback address)",
                "the metrics endpoint 192.0.2.1:9464 listens beyond loopback: any host that "
                "reaches it may use it, and spamgate authenticates no one (firewall it, or use "
                "a loopback address)",
            ],
            id="wildcard-and-public",
        ),
        pytest.param(
            "listen: 'inet6:8894@[::]'\n",
            [
                "the milter socket inet6:8894@[::] listens beyond loopback: any host that "
                "reaches it may use it, and spamgate authenticates no one (firewall it, or use "
                "a loopback address)"
            ],
            id="ipv6-wildcard",
        ),
    ],
)
def test_listeners_beyond_loopback_get_a_warning_each(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    expected: list[str],
) -> None:
    from spamgate import daemon as daemon_module  # noqa: PLC0415
    from spamgate import schema  # noqa: PLC0415
    from spamgate.config import Policy  # noqa: PLC0415

    text += "resolver: {nameservers: ['127.0.0.1']}\n" + NO_GREYLISTING
    policy = schema.load(Policy, text, "t.yaml")
    daemon = daemon_module.Daemon(policy, "t.yaml")  # constructed, never started
    monkeypatch.setattr(daemon_module.os, "geteuid", lambda: 1000)
    caplog.set_level("WARNING", logger="spamgate")
    daemon._log_start()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == expected
