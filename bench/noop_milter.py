"""The floor any pymilter milter pays: every callback registered, every one answers CONTINUE.

    python bench/noop_milter.py SOCKET      (libmilter syntax: inet:PORT@127.0.0.1, unix:/path)

Nothing is negotiated away and no action is taken, so Postfix sends every event (connect,
HELO, MAIL, RCPT, DATA, each header, end of headers, the body, end of message) and waits
for each answer, as it would for a milter written the obvious way.
"""

from __future__ import annotations

import os
import sys

import Milter


class NoopMilter(Milter.Base):  # type: ignore[misc]  # pymilter is untyped
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return int(Milter.CONTINUE)

    def hello(self, hostname: str) -> int:
        return int(Milter.CONTINUE)

    def envfrom(self, mailfrom: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def envrcpt(self, to: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def data(self) -> int:
        return int(Milter.CONTINUE)

    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    def eoh(self) -> int:
        return int(Milter.CONTINUE)

    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        return int(Milter.CONTINUE)

    def abort(self) -> int:
        return int(Milter.CONTINUE)

    def close(self) -> int:
        return int(Milter.CONTINUE)


def main(socket_spec: str) -> None:
    if socket_spec.startswith("unix:"):
        # Postfix's smtpd runs as another user and must be able to connect to the socket.
        os.umask(0)
    Milter.factory = NoopMilter
    Milter.set_flags(0)
    # libmilter stops main() on SIGTERM, which is how the benchmark stops this process.
    Milter.runmilter("bench-noop", socket_spec, timeout=30)


if __name__ == "__main__":
    main(sys.argv[1])
