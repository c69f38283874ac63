"""A minimal pymilter milter for harness self-tests; run it as a script, not imported.

    python noop_milter.py inet:PORT@127.0.0.1 [HEADER-NAME]

It accepts everything and adds one header, "HEADER-NAME: client=ADDR helo=NAME", so a test
can see both that the milter ran and which client address Postfix told it about.
"""

from __future__ import annotations

import sys

import Milter


class HeaderMilter(Milter.Base):  # type: ignore[misc]  # pymilter is untyped
    header_name = "X-Harness-Milter"

    def __init__(self) -> None:
        self.client = ""
        self.helo = ""

    def connect(self, hostname: str, family: int, hostaddr: tuple[str, ...]) -> int:
        self.client = hostaddr[0]
        return int(Milter.CONTINUE)

    def hello(self, hostname: str) -> int:
        self.helo = hostname
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        self.addheader(self.header_name, f"client={self.client} helo={self.helo}")
        return int(Milter.ACCEPT)


def main(argv: list[str]) -> None:
    if len(argv) > 2:
        HeaderMilter.header_name = argv[2]
    Milter.factory = HeaderMilter
    Milter.set_flags(Milter.ADDHDRS)
    # libmilter stops main() cleanly on SIGTERM, which is how the harness stops this process.
    Milter.runmilter("harness-noop", argv[1], timeout=30)


if __name__ == "__main__":
    main(sys.argv)
