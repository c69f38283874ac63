"""Test doubles shared by the unit tests: a clock that stands still, a scripted resolver, and
what an MTA offers in negotiation."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import Milter

from spamgate.dns.answers import DnsAnswer, Pending

Question = tuple[str, str]  # (qname, rdtype)

# The milter protocol's "no reply" bits: an MTA offering none of them answers every event.
NO_REPLY_BITS = (
    Milter.P_NR_CONN
    | Milter.P_NR_HELO
    | Milter.P_NR_MAIL
    | Milter.P_NR_RCPT
    | Milter.P_NR_DATA
    | Milter.P_NR_UNKN
    | Milter.P_NR_EOH
    | Milter.P_NR_BODY
    | Milter.P_NR_HDR
)


class FakeClock:
    """A monotonic clock that stands still until a test sets `now`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedLookups:
    """Answers scripted questions at once; leaves the others pending for the test to answer.
    A question scripted as None is never answered; with a `default`, a question not in the
    script gets it at once (a table resolver: NXDOMAIN, or a clean list answer).
    Every question is recorded in `calls`, in order.
    A question asked again while pending shares its answer, as the resolver merges them."""

    def __init__(
        self,
        script: Mapping[Question, DnsAnswer | None] | None = None,
        *,
        default: DnsAnswer | None = None,
    ) -> None:
        self.script = dict(script or {})
        self.default = default
        self.calls: list[Question] = []
        self.pending: dict[Question, Pending[DnsAnswer]] = {}
        self._lock = threading.Lock()

    def lookup(self, qname: str, rdtype: str = "A") -> Pending[DnsAnswer]:
        future: Pending[DnsAnswer] = Pending()
        with self._lock:
            self.calls.append((qname, rdtype))
            answer = self.script.get((qname, rdtype), self.default)
            if answer is None:
                future = self.pending.setdefault((qname, rdtype), future)
        if answer is not None:
            future.set_result(answer)
        return future

    def answer(self, qname: str, rdtype: str, answer: DnsAnswer) -> None:
        with self._lock:
            future = self.pending.pop((qname, rdtype))
        future.set_result(answer)


class BrokenStore:
    """A state store that is down: every read and write fails, as a stopped Redis does."""

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        raise ConnectionError("Connection refused")

    def put_many(self, items: Sequence[tuple[str, str, float]]) -> None:
        raise ConnectionError("Connection refused")
