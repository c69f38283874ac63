"""Does a name resolve? PendingResolution driven by a fake resolver whose futures the tests
settle, for HELO names (A, then AAAA) and mail domains (MX, then A, then AAAA)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import pytest

from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.nameprobes import PendingResolution
from tests.fakes import FakeClock
from tests.fakes import ScriptedLookups as FakeLookups

NAME = "client.example"
Key = tuple[str, str]


def records(*texts: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, texts, ttl=300)


NXDOMAIN = DnsAnswer(AnswerKind.NXDOMAIN, ttl=300)
NODATA = DnsAnswer(AnswerKind.NODATA, ttl=300)
SERVFAIL = DnsAnswer(AnswerKind.SERVFAIL)
REFUSED = DnsAnswer(AnswerKind.REFUSED)
TIMEOUT = DnsAnswer(AnswerKind.TIMEOUT)
NETWORK = DnsAnswer(AnswerKind.NETWORK)
MALFORMED = DnsAnswer(AnswerKind.MALFORMED)
OTHER_RCODE = DnsAnswer(AnswerKind.OTHER_RCODE)


def probe(
    lookups: FakeLookups, *, mail_domain: bool, clock: FakeClock | None = None
) -> PendingResolution:
    return PendingResolution(lookups, NAME, mail_domain=mail_domain, clock=clock or FakeClock())


def timed_collect(pending: PendingResolution, deadline: float) -> tuple[bool | None, float]:
    started = time.monotonic()
    result = pending.collect(deadline)
    return result, time.monotonic() - started


# -- HELO names: A, then AAAA --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "aaaa", "expected", "asked"),
    [
        pytest.param(records("192.0.2.1"), None, True, ["A"], id="a-records"),
        pytest.param(NXDOMAIN, None, False, ["A"], id="nxdomain-asks-no-aaaa"),
        pytest.param(NODATA, records("2001:db8::1"), True, ["A", "AAAA"], id="aaaa-only"),
        pytest.param(NODATA, NODATA, False, ["A", "AAAA"], id="no-address-records"),
        pytest.param(NODATA, NXDOMAIN, False, ["A", "AAAA"], id="nodata-then-nxdomain"),
        pytest.param(SERVFAIL, None, None, ["A"], id="a-servfail"),
        pytest.param(TIMEOUT, None, None, ["A"], id="a-timeout"),
        pytest.param(REFUSED, None, None, ["A"], id="a-refused"),
        pytest.param(NETWORK, None, None, ["A"], id="a-network"),
        pytest.param(MALFORMED, None, None, ["A"], id="a-malformed"),
        pytest.param(OTHER_RCODE, None, None, ["A"], id="a-other-rcode"),
        pytest.param(NODATA, SERVFAIL, None, ["A", "AAAA"], id="aaaa-servfail"),
        pytest.param(NODATA, TIMEOUT, None, ["A", "AAAA"], id="aaaa-timeout"),
    ],
)
def test_helo_name(
    a: DnsAnswer, aaaa: DnsAnswer | None, expected: bool | None, asked: list[str]
) -> None:
    script = {(NAME, "A"): a}
    if aaaa is not None:
        script[NAME, "AAAA"] = aaaa
    lookups = FakeLookups(script)
    pending = probe(lookups, mail_domain=False)
    assert pending.collect(1.0) is expected
    assert lookups.calls == [(NAME, rdtype) for rdtype in asked]


# -- mail domains: MX, then A, then AAAA ---------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected", "asked"),
    [
        pytest.param({"MX": records("10 mx.client.example")}, True, ["MX"], id="mx"),
        pytest.param(
            {"MX": records("10 mx1.client.example", "20 mx2.client.example")},
            True,
            ["MX"],
            id="several-mx",
        ),
        pytest.param({"MX": records("0 .")}, False, ["MX"], id="null-mx"),
        pytest.param(
            {"MX": records("0 .", "10 mx.client.example")},
            True,
            ["MX"],
            id="null-mx-beside-a-real-one-is-no-null-mx",
        ),
        pytest.param({"MX": NXDOMAIN}, False, ["MX"], id="mx-nxdomain"),
        pytest.param(
            {"MX": NODATA, "A": records("192.0.2.1")}, True, ["MX", "A"], id="implicit-mx-a"
        ),
        pytest.param(
            {"MX": NODATA, "A": NODATA, "AAAA": records("2001:db8::1")},
            True,
            ["MX", "A", "AAAA"],
            id="implicit-mx-aaaa",
        ),
        pytest.param(
            {"MX": NODATA, "A": NODATA, "AAAA": NODATA},
            False,
            ["MX", "A", "AAAA"],
            id="nothing-at-all",
        ),
        pytest.param({"MX": NODATA, "A": NXDOMAIN}, False, ["MX", "A"], id="nodata-then-nxdomain"),
        pytest.param({"MX": SERVFAIL}, None, ["MX"], id="mx-servfail"),
        pytest.param({"MX": TIMEOUT}, None, ["MX"], id="mx-timeout"),
        pytest.param({"MX": REFUSED}, None, ["MX"], id="mx-refused"),
        pytest.param({"MX": NODATA, "A": SERVFAIL}, None, ["MX", "A"], id="a-servfail"),
        pytest.param(
            {"MX": NODATA, "A": NODATA, "AAAA": TIMEOUT},
            None,
            ["MX", "A", "AAAA"],
            id="aaaa-timeout",
        ),
    ],
)
def test_mail_domain(script: dict[str, DnsAnswer], expected: bool | None, asked: list[str]) -> None:
    lookups = FakeLookups({(NAME, rdtype): answer for rdtype, answer in script.items()})
    pending = probe(lookups, mail_domain=True)
    assert pending.collect(1.0) is expected
    assert lookups.calls == [(NAME, rdtype) for rdtype in asked]


def test_future_holding_an_exception_is_no_evidence() -> None:
    class Failing(FakeLookups):
        def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:
            self.calls.append((qname, rdtype))
            future: futures.Future[DnsAnswer] = futures.Future()
            future.set_exception(OSError("socket gone"))
            return future

    lookups = Failing()
    result, elapsed = timed_collect(probe(lookups, mail_domain=True), 5.0)
    assert result is None
    assert elapsed < 1.0  # settled at once, not left to the deadline
    assert lookups.calls == [(NAME, "MX")]


# -- answers arriving later, on another thread ---------------------------------------------------


def test_chain_continues_as_answers_arrive() -> None:
    lookups = FakeLookups()
    pending = probe(lookups, mail_domain=True)
    assert lookups.calls == [(NAME, "MX")]
    lookups.answer(NAME, "MX", NODATA)
    assert lookups.calls == [(NAME, "MX"), (NAME, "A")]
    lookups.answer(NAME, "A", NODATA)
    assert lookups.calls == [(NAME, "MX"), (NAME, "A"), (NAME, "AAAA")]
    lookups.answer(NAME, "AAAA", records("2001:db8::25"))
    assert pending.collect(0.0) is True


def test_collect_wakes_when_an_answer_arrives_on_another_thread() -> None:
    lookups = FakeLookups()
    pending = probe(lookups, mail_domain=False)
    timer = threading.Timer(0.05, lookups.answer, (NAME, "A", records("192.0.2.1")))
    timer.start()
    try:
        result, elapsed = timed_collect(pending, 5.0)
    finally:
        timer.join()
    assert result is True
    assert elapsed < 2.0  # woken by the answer, not by the 5 s deadline


# -- the deadline --------------------------------------------------------------------------------


def test_never_answered_is_none_at_the_deadline() -> None:
    lookups = FakeLookups()
    pending = PendingResolution(lookups, NAME, mail_domain=False, clock=time.monotonic)
    result, elapsed = timed_collect(pending, 0.2)
    assert result is None
    assert 0.15 <= elapsed < 1.5
    assert list(lookups.pending) == [(NAME, "A")]


def test_deadline_counts_from_the_start_not_from_collect() -> None:
    clock = FakeClock()
    pending = probe(FakeLookups(), mail_domain=False, clock=clock)
    clock.now += 1.6  # the lookup started 1.6 s ago: 0.4 s of the 2 s deadline are left
    result, elapsed = timed_collect(pending, 2.0)
    assert result is None
    assert 0.35 <= elapsed < 1.5


def test_deadline_already_past_returns_at_once() -> None:
    clock = FakeClock()
    pending = probe(FakeLookups(), mail_domain=True, clock=clock)
    clock.now += 10.0
    result, elapsed = timed_collect(pending, 2.0)
    assert result is None
    assert elapsed < 0.5


def test_late_answer_still_counts_for_a_later_collect() -> None:
    clock = FakeClock()
    lookups = FakeLookups()
    pending = probe(lookups, mail_domain=False, clock=clock)
    clock.now += 3.0
    assert pending.collect(2.0) is None
    lookups.answer(NAME, "A", NXDOMAIN)
    assert pending.collect(2.0) is False


def test_collect_after_completion_returns_at_once() -> None:
    lookups = FakeLookups({(NAME, "A"): records("192.0.2.1")})
    pending = PendingResolution(lookups, NAME, mail_domain=False, clock=time.monotonic)
    first, elapsed = timed_collect(pending, 10.0)
    assert first is True
    assert elapsed < 0.5
    again, elapsed = timed_collect(pending, 10.0)
    assert again is True
    assert elapsed < 0.5


# -- resolvers that break the Lookups promise ----------------------------------------------------


def test_cancelled_lookup_settles_at_once() -> None:
    class Cancelling(FakeLookups):
        def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:
            future: futures.Future[DnsAnswer] = futures.Future()
            future.cancel()
            return future

    pending = PendingResolution(Cancelling(), NAME, mail_domain=False, clock=time.monotonic)
    result, elapsed = timed_collect(pending, 5.0)
    assert result is None
    assert elapsed < 2.5  # at once, not at the 5 s deadline


def test_lookup_that_raises_is_no_evidence() -> None:
    class Raising(FakeLookups):
        def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:
            raise RuntimeError("resolver bug")

    pending = probe(Raising(), mail_domain=True)
    assert pending.collect(0.0) is None
