"""An SMTP client that sends exactly the bytes it is given: for input smtplib will not send.

smtplib encodes commands as ASCII and fixes line endings; the hostile-input tests need 8-bit
bytes, NUL, bare CR and bare LF on the wire. Each command is sent as given (CRLF included)
and its whole (possibly multi-line) reply is read before the next one is sent.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .processes import LOOPBACK

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; Postfix's are shorter still.
_MAX_REPLY_LINE = 4096
_MAX_REPLY_LINES = 100


@dataclass(frozen=True)
class Exchange:
    """One command and the server's reply; code 0 when the server closed the connection."""

    sent: bytes
    code: int
    lines: tuple[bytes, ...]

    @property
    def text(self) -> str:
        """The reply text without codes, lines joined by a space (8-bit bytes as \\xNN)."""
        return " ".join(line[4:].decode("ascii", "backslashreplace") for line in self.lines).strip()


@dataclass(frozen=True)
class Conversation:
    greeting: Exchange
    exchanges: tuple[Exchange, ...]
    elapsed: float  # seconds from connect to the last reply

    def reply_to(self, prefix: bytes) -> Exchange:
        """The exchange of the first command that starts with ``prefix`` (e.g. b"RCPT")."""
        for exchange in self.exchanges:
            if exchange.sent.startswith(prefix):
                return exchange
        raise AssertionError(f"no command starting with {prefix!r} was answered: {self}")

    @property
    def end_of_data(self) -> Exchange:
        """The reply to the message content (the exchange that sent the final dot)."""
        for exchange in self.exchanges:
            if exchange.sent.endswith(b"\r\n.\r\n"):
                return exchange
        raise AssertionError(f"no message content was answered: {self}")

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1] if self.exchanges else self.greeting

    @property
    def milter_replies(self) -> list[Exchange]:
        """Refusals that carry a decision id, i.e. spamgate's texts rather than Postfix's."""
        return [e for e in self.exchanges if e.code >= 400 and "(id " in e.text]


def converse(
    port: int, commands: Sequence[bytes], *, timeout: float = 10.0, host: str = LOOPBACK
) -> Conversation:
    """Greeting, then each command with its reply, until the list ends or the server closes
    (or says it will: 221, 421).

    Every read is bounded by ``timeout``: a server that does not answer raises TimeoutError,
    so a hang fails the test instead of passing as "no reply".
    """
    started = time.monotonic()
    exchanges: list[Exchange] = []
    with socket.create_connection((host, port), timeout=timeout) as conn:
        replies = conn.makefile("rb")
        greeting = _read_reply(b"", replies)
        for command in commands:
            if not exchanges or exchanges[-1].code != 0:
                try:
                    conn.sendall(command)
                except (BrokenPipeError, ConnectionResetError):
                    exchanges.append(Exchange(command, 0, ()))
                    break
                exchanges.append(_read_reply(command, replies))
            # 221 and 421 announce that the server closes the connection.
            if exchanges[-1].code in (0, 221, 421):
                break
    return Conversation(greeting, tuple(exchanges), time.monotonic() - started)


def _read_reply(sent: bytes, replies: BinaryIO) -> Exchange:
    lines: list[bytes] = []
    for _ in range(_MAX_REPLY_LINES):
        try:
            line = replies.readline(_MAX_REPLY_LINE)
        except ConnectionResetError:
            line = b""
        except TimeoutError as error:
            raise TimeoutError(f"no reply to {sent[:60]!r} in time") from error
        if not line:
            return Exchange(sent, 0, tuple(lines))
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            break
    code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else 0
    return Exchange(sent, code, tuple(lines))


def xtext(value: bytes) -> str:
    """RFC 3461 xtext, which XCLIENT attribute values use: any byte can be sent."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in b"+=" else f"+{b:02X}" for b in value)


def xclient(addr: str, *, name: str = "[UNAVAILABLE]") -> bytes:
    """An XCLIENT command for ``addr`` (IPv6 as "IPV6:..."), with no HELO of its own."""
    return f"XCLIENT ADDR={xtext(addr.encode())} NAME={xtext(name.encode())}\r\n".encode()
