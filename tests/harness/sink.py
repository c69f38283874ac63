"""Postfix's smtp-sink as the final destination: it accepts everything and dumps each
message to its own file, which ``SmtpSink.messages()`` parses back."""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from .processes import (
    LOOPBACK,
    HarnessError,
    ManagedProcess,
    Service,
    find_program,
    free_port,
    tcp_accepts,
    wait_until,
)

_ENVELOPE_ADDRESS = re.compile(r"<([^>]*)>")
# Unprivileged user that smtp-sink must switch to when started as root (it refuses otherwise).
_SINK_USER = "nobody"


@dataclass(frozen=True)
class SinkMessage:
    """One dumped mail transaction, as smtp-sink saw it."""

    path: Path
    client_addr: str  # the SMTP client of the sink, i.e. Postfix's smtp(8): 127.0.0.1
    helo: str | None
    mail_from: str  # "" for the null sender
    rcpts: tuple[str, ...]
    raw: bytes  # header + body as received; smtp-sink drops every CR, so lines end in LF
    message: EmailMessage


class SmtpSink(Service):
    """``smtp-sink -d`` on a free 127.0.0.1 port, one dump file per message in ``dump_dir``."""

    address = LOOPBACK

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        # Per-port names, so that several sinks can share one workdir.
        self.dump_dir = workdir / f"sink-{self.port}"
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        argv = [find_program("smtp-sink")]
        if os.geteuid() == 0:
            # smtp-sink opens its dump files after switching user, so that user must own the
            # dump directory. The template below is relative: the sink inherits the dump
            # directory as cwd while still root, so the 0700 pytest parents don't matter.
            user = pwd.getpwnam(_SINK_USER)
            os.chown(self.dump_dir, user.pw_uid, user.pw_gid)
            argv += ["-u", _SINK_USER]
        # "-d TEMPLATE": one dump file per transaction, named strftime(TEMPLATE) plus a random
        # hex suffix; the order of arrival comes from the files' mtimes instead.
        argv += ["-d", "msg.", f"{self.address}:{self.port}", "64"]
        self.process = ManagedProcess(argv, workdir / f"sink-{self.port}.log", cwd=self.dump_dir)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 5.0) -> None:
        self.process.start_and_wait(
            lambda: tcp_accepts(self.address, self.port),
            timeout=timeout,
            what="smtp-sink to accept connections",
        )

    def stop(self) -> None:
        self.process.stop()

    def messages(self) -> list[SinkMessage]:
        """Completely received messages, oldest first."""
        # smtp-sink creates the dump file at MAIL FROM and fills it while the transaction runs;
        # a file it no longer holds open is complete (aborted transactions are unlinked).
        candidates = [p for p in self.dump_dir.iterdir() if p.is_file()]
        in_progress = self._open_files()
        done = []
        for path in candidates:
            if path.resolve() in in_progress:
                continue
            try:
                done.append((path.stat().st_mtime_ns, path, path.read_bytes()))
            except FileNotFoundError:
                continue
        return [_parse_dump(path, data) for _, path, data in sorted(done)]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait (bounded) until at least ``count`` messages have arrived; return them all."""
        wait_until(
            lambda: len(self.messages()) >= count,
            timeout=timeout,
            what=f"{count} message(s) at the smtp-sink",
            log_tail=lambda: f"{len(self.messages())} message(s) so far\n{self.log_tail()}",
            interval=0.05,
        )
        return self.messages()

    def wait_for_message(
        self, matches: Callable[[SinkMessage], bool], what: str, timeout: float = 10.0
    ) -> SinkMessage:
        """The first received message that `matches` (bounded wait)."""
        found: list[SinkMessage] = []

        def arrived() -> bool:
            found[:] = [m for m in self.messages() if matches(m)]
            return bool(found)

        wait_until(arrived, timeout=timeout, what=what, log_tail=self.log_tail, interval=0.05)
        return found[0]

    def clear(self) -> None:
        """Forget the messages received so far."""
        for path in self.dump_dir.iterdir():
            path.unlink()

    def _open_files(self) -> set[Path]:
        fd_dir = Path(f"/proc/{self.pid}/fd")
        open_files = set()
        try:
            fds = list(fd_dir.iterdir())
        except FileNotFoundError:
            return set()
        for fd in fds:
            try:
                open_files.add(Path(os.readlink(fd)))
            except FileNotFoundError:
                continue
        return open_files

    def log_tail(self) -> str:
        return self.process.log_tail()


def _parse_dump(path: Path, data: bytes) -> SinkMessage:
    """Split smtp-sink's pseudo-headers (see smtp-sink(1), DUMP FILE FORMAT) from the message.

    The pseudo-headers end with smtp-sink's own three-line Received: header; the message
    follows, and smtp-sink appends one empty line after it.
    """
    lines = data.split(b"\n")
    received = next((i for i, line in enumerate(lines) if line.startswith(b"Received: ")), None)
    if received is None:
        raise HarnessError(f"{path}: no smtp-sink Received: header in {data[:300]!r}")
    fields: dict[str, list[str]] = {}
    for line in lines[:received]:
        name, _, value = line.decode("utf-8", "replace").partition(": ")
        fields.setdefault(name, []).append(value)
    start = received + 1
    while start < len(lines) and lines[start].startswith(b"\t"):
        start += 1
    raw = b"\n".join(lines[start:]).removesuffix(b"\n")
    return SinkMessage(
        path=path,
        client_addr=fields["X-Client-Addr"][0],
        helo=fields.get("X-Helo-Args", [None])[0],
        mail_from=_envelope_address(fields["X-Mail-Args"][0]),
        rcpts=tuple(_envelope_address(args) for args in fields.get("X-Rcpt-Args", [])),
        raw=raw,
        message=email.message_from_bytes(raw, policy=email.policy.default),
    )


def _envelope_address(args: str) -> str:
    """The address of a MAIL/RCPT argument string like "<a@b.example> SIZE=123"."""
    match = _ENVELOPE_ADDRESS.match(args)
    if match is None:
        raise HarnessError(f"unexpected smtp-sink envelope arguments: {args!r}")
    return match.group(1)
