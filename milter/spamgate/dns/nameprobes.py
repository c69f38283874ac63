"""Does a name resolve? For `helo: unresolvable` and `sender: unresolvable`.

A HELO name resolves if it has an A or AAAA record. A mail domain can receive mail (and so
bounces) if it has MX records other than a null MX (RFC 7505 `0 .`), or else an A or AAAA
record (RFC 5321 5.1 implicit MX). Lookups chain through callbacks on the resolver's
thread, so no milter thread blocks until the verdict needs the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spamgate.dns.answers import AnswerKind, DnsAnswer, Lookups, Pending, Promise

NULL_MX = "0 ."


class PendingResolution:
    """True (resolves), False (definitely does not) or None (DNS failed: no evidence)."""

    def __init__(
        self, resolver: Lookups, name: str, *, mail_domain: bool, clock: Callable[[], float]
    ) -> None:
        self._resolver = resolver
        self._name = name
        self._clock = clock
        self.started_at = clock()
        self._result: Pending[bool | None] = Pending()
        steps: Sequence[str] = ("MX", "A", "AAAA") if mail_domain else ("A", "AAAA")
        self._ask(list(steps))

    def _ask(self, steps: list[str]) -> None:
        rdtype, rest = steps[0], steps[1:]

        def answered(future: Promise[DnsAnswer]) -> None:
            self._settle_or_continue(rdtype, future, rest)

        try:
            self._resolver.lookup(self._name, rdtype).add_done_callback(answered)
        except Exception:  # a resolver that breaks its promise: no evidence, not a crash
            self._settle(None)

    def _settle_or_continue(self, rdtype: str, future: Promise[DnsAnswer], rest: list[str]) -> None:
        try:
            answer: DnsAnswer | None = future.result(timeout=0)
        except Exception:  # a resolver that breaks its promise: no evidence, not a crash
            answer = None
        if answer is None or not answer.kind.is_definitive:
            self._settle(None)
        elif answer.kind is AnswerKind.RECORDS:
            # A null MX says the domain accepts no mail at all: no bounce could reach it.
            self._settle(not (rdtype == "MX" and answer.records == (NULL_MX,)))
        elif answer.kind is AnswerKind.NXDOMAIN:
            self._settle(False)
        elif rest:
            self._ask(rest)
        else:
            self._settle(False)

    def _settle(self, value: bool | None) -> None:
        self._result.set_result(value)  # the first value wins

    def collect(self, deadline: float) -> bool | None:
        remaining = self.started_at + deadline - self._clock()
        try:
            return self._result.result(timeout=max(0.0, remaining))
        except TimeoutError:
            return None
