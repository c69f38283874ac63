"""Process and port plumbing shared by the e2e harness.

Every wait here is bounded both by an iteration count and by a wall-clock deadline, and
every process is stopped through the PID (process group) that this module created.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"

# Ports already handed out by free_port() in this test process: the kernel may offer a port
# again once the probe socket is closed, and two services must not both be told to use it.
_handed_out: set[int] = set()
_MAX_PORT_ATTEMPTS = 50


class HarnessError(RuntimeError):
    """A harness-managed service failed to start, answer or stop in time."""


def free_port(*, udp: bool = False) -> int:
    """Return a TCP port on 127.0.0.1 that is currently free (and free for UDP too if asked).

    There is an unavoidable race between this probe and the service binding the port; the
    caller's start-up check (a real connection or query) turns a lost race into a clear error.
    """
    for _ in range(_MAX_PORT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if port in _handed_out:
                continue
            if udp:
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                        dgram.bind((LOOPBACK, port))
                except OSError:
                    continue
        _handed_out.add(port)
        return port
    raise HarnessError(f"no free port found on {LOOPBACK} after {_MAX_PORT_ATTEMPTS} attempts")


def find_program(name: str) -> str:
    """Absolute path of an installed program, also looking in the sbin directories."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise HarnessError(f"{name} is not installed")
    return found


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_tail: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it is true; raise HarnessError (with a log tail) on timeout."""
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        if condition():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if condition():
        return
    tail = f"\n--- log tail ---\n{log_tail()}" if log_tail is not None else ""
    raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}{tail}")


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_accepts(path: Path | str, timeout: float = 0.5) -> bool:
    """True if a connection to the unix socket at `path` succeeds right now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def process_exists(pid: int) -> bool:
    """True if PID is a live process. Zombies count as gone: our reaper may lag behind."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Service:
    """Something the harness starts and stops: `with` starts it and always stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ManagedProcess(Service):
    """A child process in its own session, with output appended to a log file.

    Because the child is started with ``start_new_session=True`` its PID is also the ID of a
    process group that only it and its descendants belong to, so ``stop()`` can signal that
    group without touching anything this harness did not start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise HarnessError(f"{self.argv[0]} was never started")
        return self._popen.pid

    def start(self) -> None:
        if self.running():
            raise HarnessError(f"{self.argv[0]} is already running as PID {self.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so that the log of a restarted process keeps its earlier history.
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )

    def start_and_wait(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        log_tail: Callable[[], str] | None = None,
    ) -> None:
        """Start, then poll ``ready()`` (bounded); if the process dies or never gets ready,
        stop it again and raise with the log tail, so a failed start leaks nothing."""
        tail = log_tail or self.log_tail
        self.start()

        def alive_and_ready() -> bool:
            if not self.running():
                code = self._popen.returncode if self._popen is not None else None
                raise HarnessError(
                    f"{' '.join(self.argv)!r} exited with status {code} while waiting for"
                    f" {what}\n--- log tail ---\n{tail()}"
                )
            return ready()

        try:
            wait_until(alive_and_ready, timeout=timeout, what=what, log_tail=tail)
        except BaseException:
            self.stop()
            raise

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit status, waiting at most `timeout` seconds for it (raises on timeout)."""
        if self._popen is None:
            raise HarnessError(f"{self.argv[0]} was never started")
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self.argv[0]} did not exit within {timeout} s\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our process group, wait (bounded), then SIGKILL whatever is left of it."""
        popen = self._popen
        if popen is None:
            return

        def gone() -> bool:
            # poll() also reaps the leader, so it does not linger as a zombie of ours.
            return popen.poll() is not None and not group_members(popen.pid)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            if gone():
                return
            self.signal_group(sig)
            try:
                wait_until(
                    gone,
                    timeout=timeout,
                    what=f"process group {popen.pid} ({self.argv[0]}) to exit on {sig.name}",
                    log_tail=self.log_tail,
                    interval=0.01,
                )
                return
            except HarnessError:
                if sig == signal.SIGKILL:
                    raise

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group we created (no-op once it is gone)."""
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])


def stop_milter_process(
    process: subprocess.Popen[str], poke: Callable[[], object], timeout: float = 10.0
) -> tuple[int, str]:
    """SIGTERM a daemon started with text pipes, poking its socket meanwhile: libmilter's
    accept loop looks for a stop only every 5 s, or when a connection wakes it. Killed if it
    is not gone within `timeout`. Its exit status and output."""
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        poke()
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def stop_libmilter(
    process: ManagedProcess, poke: Callable[[], object], timeout: float, what: str
) -> None:
    """SIGTERM a libmilter daemon the harness started and reap it. libmilter notices its stop
    flag only when its accept loop wakes (every 5 s, or at a connection), so `poke` connects
    until it exits; if it does not, process.stop() escalates to SIGKILL."""
    if process.running():
        process.signal_group(signal.SIGTERM)

        def exited() -> bool:
            if not process.running():
                return True
            poke()
            return False

        with contextlib.suppress(HarnessError):
            wait_until(exited, timeout=timeout, what=f"{what} to exit", interval=0.05)
    process.stop()
