"""A private redis-server on 127.0.0.1, in the foreground, with no persistence: the shared
greylisting state of several MX hosts in the tests."""

from __future__ import annotations

import socket
from pathlib import Path

from .processes import LOOPBACK, ManagedProcess, Service, find_program, free_port


class RedisServer(Service):
    """redis-server on 127.0.0.1:``port``; restartable on the same port (empty again)."""

    address = LOOPBACK

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_program("redis-server"),
            "--bind", self.address,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = ManagedProcess(argv, workdir / f"redis-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 5.0) -> None:
        self.process.start_and_wait(self.answers_ping, timeout=timeout, what="redis to answer")

    def stop(self) -> None:
        self.process.stop()

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=0.2) as client:
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self) -> str:
        return self.process.log_tail()
