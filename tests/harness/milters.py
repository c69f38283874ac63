"""Running a milter as a subprocess on a free 127.0.0.1 TCP port."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .processes import (
    LOOPBACK,
    ManagedProcess,
    Service,
    free_port,
    stop_libmilter,
    tcp_accepts,
)

NOOP_MILTER_SCRIPT = Path(__file__).with_name("noop_milter.py")


class MilterProcess(Service):
    """A milter started from ``argv`` that listens on 127.0.0.1:``port``.

    The same socket is spelled differently on each side: libmilter (the milter's own
    command line) wants ``inet:PORT@HOST``, Postfix's smtpd_milters wants ``inet:HOST:PORT``.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, port: int) -> None:
        self.port = port
        self.process = ManagedProcess(argv, log_path)

    @classmethod
    def noop(cls, workdir: Path, *, header_name: str = "X-Harness-Milter") -> MilterProcess:
        """The harness's header-adding milter (noop_milter.py) on a free port."""
        port = free_port()
        argv = [sys.executable, str(NOOP_MILTER_SCRIPT), f"inet:{port}@{LOOPBACK}", header_name]
        return cls(argv, workdir / f"milter-{port}.log", port)

    @property
    def postfix_address(self) -> str:
        return f"inet:{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the milter and wait until its port accepts connections."""
        self.process.start_and_wait(
            lambda: tcp_accepts(LOOPBACK, self.port), timeout=timeout, what="milter to listen"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the milter, waking libmilter so that it exits at once, then reap it."""
        stop_libmilter(
            self.process, lambda: tcp_accepts(LOOPBACK, self.port, timeout=0.1), timeout, "milter"
        )

    def log_tail(self) -> str:
        return self.process.log_tail()
