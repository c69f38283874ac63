"""IP-keyed DNS lists: query names, which lists apply, what an answer means, and collection."""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent import futures
from typing import Any

import pytest

from spamgate.core.addresses import normalize_address
from spamgate.core.evidence import Stage
from spamgate.core.listspecs import DomainList, IpList, ListHit
from spamgate.core.returncodes import parse_return_code
from spamgate.core.settings import HealthSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending
from spamgate.dns.dnslists import (
    IPAddress,
    ListLookups,
    ListOutcome,
    ListStatus,
    classify,
    lists_for,
    query_name,
)
from spamgate.dns.listhealth import ListMonitor
from spamgate.shell.metrics import Metrics
from tests.fakes import FakeClock, ScriptedLookups


def hit(name: str, score: float, *codes: str) -> ListHit:
    return ListHit(name=name, score=score, codes=tuple(parse_return_code(c) for c in codes))


ZEN = IpList(
    name="SPAMHAUS_ZEN",
    zone="zen.spamhaus.org",
    hits=(
        hit("SPAMHAUS_SBL", 10, "127.0.0.2"),
        hit("SPAMHAUS_XBL", 10, "127.0.0.4-127.0.0.7"),
        hit("SPAMHAUS_PBL", 10, "127.0.0.10", "127.0.0.11"),
    ),
)
DNSWL = IpList(
    name="DNSWL",
    zone="list.dnswl.org",
    error_codes=(parse_return_code("127.0.0.255"),),
    hits=(hit("DNSWL_HIGH", -10, "127.0.*.3"), hit("DNSWL_NONE", 0, "127.0.*.0")),
)
SPAMCOP = IpList(name="SPAMCOP", zone="bl.spamcop.net", score=6, ipv6=False)
V6_ONLY = IpList(name="V6_ONLY", zone="v6.example", score=1, ipv4=False)
ALL_LISTS = (ZEN, DNSWL, SPAMCOP, V6_ONLY)


def addresses(*codes: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, codes, ttl=300)


def names(outcome: ListOutcome) -> list[str]:
    return [h.name for h in outcome.hits]


# --- query names -------------------------------------------------------------------------------

V6_NIBBLES = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"


@pytest.mark.parametrize(
    ("address", "zone", "expected"),
    [
        pytest.param("192.0.2.1", "zen.spamhaus.org", "1.2.0.192.zen.spamhaus.org", id="ipv4"),
        pytest.param(
            "192.0.2.1", "zen.spamhaus.org.", "1.2.0.192.zen.spamhaus.org", id="zone-trailing-dot"
        ),
        pytest.param(
            "2001:db8::1", "zen.spamhaus.org", f"{V6_NIBBLES}.zen.spamhaus.org", id="ipv6-nibbles"
        ),
        pytest.param(
            "2001:db8:1234:5678:9abc:def0:1:2",
            "v6.example",
            "2.0.0.0.1.0.0.0.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.8.b.d.0.1.0.0.2.v6.example",
            id="ipv6-every-nibble",
        ),
        pytest.param(
            "::ffff:192.0.2.1", "zen.spamhaus.org", "1.2.0.192.zen.spamhaus.org", id="ipv4-mapped"
        ),
    ],
)
def test_query_name(address: str, zone: str, expected: str) -> None:
    target = normalize_address(ipaddress.ip_address(address))
    assert query_name(target, zone) == expected


def test_ipv6_query_name_has_32_single_nibbles() -> None:
    qname = query_name(ipaddress.IPv6Address("2001:db8::1"), "zen.spamhaus.org")
    labels = qname.removesuffix(".zen.spamhaus.org").split(".")
    assert len(labels) == 32
    assert all(len(label) == 1 and label in "0123456789abcdef" for label in labels)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("::ffff:192.0.2.1", ipaddress.IPv4Address("192.0.2.1"), id="mapped-to-v4"),
        pytest.param("192.0.2.1", ipaddress.IPv4Address("192.0.2.1"), id="ipv4-unchanged"),
        pytest.param("2001:db8::1", ipaddress.IPv6Address("2001:db8::1"), id="ipv6-unchanged"),
    ],
)
def test_normalize_address(address: str, expected: IPAddress) -> None:
    assert normalize_address(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("192.0.2.1", (ZEN, DNSWL, SPAMCOP), id="ipv4-skips-ipv6-only"),
        pytest.param("2001:db8::1", (ZEN, DNSWL, V6_ONLY), id="ipv6-skips-ipv4-only"),
    ],
)
def test_lists_for_honours_address_family(address: str, expected: tuple[IpList, ...]) -> None:
    assert lists_for(ipaddress.ip_address(address), ALL_LISTS) == expected


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dns_list", "answer", "hits"),
    [
        pytest.param(ZEN, addresses("127.0.0.2"), ["SPAMHAUS_SBL"], id="zen-sbl"),
        pytest.param(ZEN, addresses("127.0.0.6"), ["SPAMHAUS_XBL"], id="zen-xbl-range"),
        pytest.param(ZEN, addresses("127.0.0.11"), ["SPAMHAUS_PBL"], id="zen-pbl-second-code"),
        pytest.param(
            ZEN,
            addresses("127.0.0.10", "127.0.0.2"),
            ["SPAMHAUS_SBL", "SPAMHAUS_PBL"],
            id="zen-sbl-and-pbl-one-answer",
        ),
        pytest.param(
            ZEN,
            addresses("127.0.0.11", "127.0.0.4", "127.0.0.2"),
            ["SPAMHAUS_SBL", "SPAMHAUS_XBL", "SPAMHAUS_PBL"],
            id="zen-three-hits",
        ),
        pytest.param(ZEN, addresses("127.0.0.3"), [], id="zen-code-without-hit"),
        pytest.param(DNSWL, addresses("127.0.15.3"), ["DNSWL_HIGH"], id="dnswl-high-wildcard"),
        pytest.param(DNSWL, addresses("127.0.5.0"), ["DNSWL_NONE"], id="dnswl-none-zero-score"),
        pytest.param(SPAMCOP, addresses("127.0.0.2"), ["SPAMCOP"], id="score-shorthand"),
        pytest.param(SPAMCOP, addresses("127.0.0.77"), ["SPAMCOP"], id="score-any-code"),
    ],
)
def test_classify_listed(dns_list: IpList, answer: DnsAnswer, hits: list[str]) -> None:
    outcome = classify(dns_list, answer, latency_ms=12.0)
    assert outcome.status is ListStatus.LISTED
    assert outcome.dns_list is dns_list
    assert outcome.codes == answer.records
    assert names(outcome) == hits
    assert outcome.failure == ""
    assert outcome.latency_ms == 12.0


def test_score_shorthand_hit_carries_the_list_score() -> None:
    (only,) = classify(SPAMCOP, addresses("127.0.0.2")).hits
    assert (only.name, only.score, only.codes) == ("SPAMCOP", 6, ())


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(AnswerKind.NXDOMAIN, id="nxdomain"),
        pytest.param(AnswerKind.NODATA, id="nodata"),
    ],
)
def test_classify_clean(kind: AnswerKind) -> None:
    outcome = classify(ZEN, DnsAnswer(kind, ttl=300), latency_ms=3.0)
    assert outcome == ListOutcome(ZEN, ListStatus.CLEAN, latency_ms=3.0)


@pytest.mark.parametrize(
    ("dns_list", "answer", "failure"),
    [
        pytest.param(
            ZEN, addresses("127.255.255.254"), "error-code", id="zen-public-resolver-blocked"
        ),
        pytest.param(ZEN, addresses("127.255.255.252"), "error-code", id="zen-typo-in-zone"),
        pytest.param(ZEN, addresses("127.255.255.255"), "error-code", id="zen-excessive-queries"),
        pytest.param(SPAMCOP, addresses("127.255.255.1"), "error-code", id="shorthand-blocked"),
        pytest.param(
            ZEN, addresses("127.0.0.2", "127.255.255.254"), "error-code", id="real-and-blocked"
        ),
        pytest.param(DNSWL, addresses("127.0.0.255"), "error-code", id="dnswl-own-error-code"),
        pytest.param(ZEN, addresses("192.0.2.1"), "outside-127/8", id="parking-ip"),
        pytest.param(
            ZEN, addresses("127.0.0.2", "192.0.2.1"), "outside-127/8", id="real-and-parking"
        ),
        pytest.param(SPAMCOP, addresses("10.0.0.2"), "outside-127/8", id="shorthand-outside"),
        pytest.param(ZEN, addresses("::1"), "malformed", id="not-ipv4"),
        pytest.param(ZEN, addresses("garbage"), "malformed", id="not-an-address"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.SERVFAIL), "servfail", id="servfail"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.REFUSED), "refused", id="refused"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.TIMEOUT), "timeout", id="timeout"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.NETWORK, detail="x"), "network", id="network"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.MALFORMED), "malformed", id="malformed"),
        pytest.param(ZEN, DnsAnswer(AnswerKind.OTHER_RCODE, detail="NOTIMP"), "rcode", id="rcode"),
    ],
)
def test_classify_unusable_is_never_a_hit(
    dns_list: IpList, answer: DnsAnswer, failure: str
) -> None:
    outcome = classify(dns_list, answer, latency_ms=7.0)
    assert outcome.status is ListStatus.UNUSABLE
    assert outcome.failure == failure
    assert outcome.hits == ()
    assert outcome.codes == answer.records
    assert outcome.latency_ms == 7.0


def test_dnswl_error_code_is_only_an_error_for_that_list() -> None:
    assert classify(ZEN, addresses("127.0.0.255")).status is ListStatus.LISTED


@pytest.mark.parametrize(
    ("dns_list", "marker"),
    [
        pytest.param(ZEN, "SPAMHAUS_ZEN_FAIL", id="zen"),
        pytest.param(DNSWL, "DNSWL_FAIL", id="dnswl"),
    ],
)
def test_fail_marker(dns_list: IpList, marker: str) -> None:
    assert classify(dns_list, DnsAnswer(AnswerKind.TIMEOUT)).fail_marker == marker


# --- ListLookups -------------------------------------------------------------------------------


def checks_for(
    resolver: Any, address: IPAddress, lists: tuple[IpList, ...], clock: Any
) -> ListLookups:
    lookups = ListLookups(resolver, clock)
    lookups.start_ip_lists(address, lists)
    return lookups


CLIENT = ipaddress.IPv4Address("192.0.2.1")
ZEN_Q = "1.2.0.192.zen.spamhaus.org"
DNSWL_Q = "1.2.0.192.list.dnswl.org"
SPAMCOP_Q = "1.2.0.192.bl.spamcop.net"


def test_pending_checks_ask_each_applicable_list_once() -> None:
    lookups = ScriptedLookups()
    checks_for(lookups, ipaddress.ip_address("::ffff:192.0.2.1"), ALL_LISTS, FakeClock())
    assert lookups.calls == [(ZEN_Q, "A"), (DNSWL_Q, "A"), (SPAMCOP_Q, "A")]


def test_pending_checks_classify_answers_with_latency() -> None:
    lookups, clock = ScriptedLookups(), FakeClock(1000.0)
    checks = checks_for(lookups, CLIENT, (ZEN, DNSWL, SPAMCOP), clock)
    clock.now = 1000.05
    lookups.answer(ZEN_Q, "A", addresses("127.0.0.2", "127.0.0.10"))
    clock.now = 1000.12
    lookups.answer(DNSWL_Q, "A", DnsAnswer(AnswerKind.NXDOMAIN))
    clock.now = 1000.3
    lookups.answer(SPAMCOP_Q, "A", DnsAnswer(AnswerKind.SERVFAIL))
    clock.now = 1000.5

    zen, dnswl, spamcop = checks.collect(2.0)

    assert (zen.status, names(zen)) == (ListStatus.LISTED, ["SPAMHAUS_SBL", "SPAMHAUS_PBL"])
    assert zen.latency_ms == pytest.approx(50.0)
    assert dnswl.status is ListStatus.CLEAN
    assert dnswl.latency_ms == pytest.approx(120.0)
    assert (spamcop.status, spamcop.failure) == (ListStatus.UNUSABLE, "servfail")
    assert spamcop.latency_ms == pytest.approx(300.0)


def test_answer_already_there_at_start_has_zero_latency() -> None:
    class Cached(ScriptedLookups):
        def lookup(self, qname: str, rdtype: str = "A") -> Pending[DnsAnswer]:
            future = super().lookup(qname)
            future.set_result(DnsAnswer(AnswerKind.NXDOMAIN))
            return future

    (outcome,) = checks_for(Cached(), CLIENT, (ZEN,), FakeClock()).collect(2.0)
    assert (outcome.status, outcome.latency_ms, outcome.cached) == (ListStatus.CLEAN, 0.0, True)


def test_cache_hits_stay_out_of_latency_figures() -> None:
    """A cached answer's 0 ms would show the cache's hit rate, not the list's speed, in the
    latency metric and in `spamgate lists` (issue 14)."""
    metrics = Metrics()
    monitor = ListMonitor((ZEN,), HealthSettings(), FakeClock())
    cached = ListOutcome(ZEN, ListStatus.CLEAN, latency_ms=0.0, cached=True)
    asked = ListOutcome(ZEN, ListStatus.CLEAN, latency_ms=40.0)
    metrics.record_lists([cached, cached, asked])
    monitor.record([cached, cached, asked])
    count = metrics.registry.get_sample_value(
        "spamgate_list_latency_seconds_count", {"list": ZEN.name}
    )
    assert count == 1
    (report,) = monitor.reports()
    assert report.latency_ms_p50 == 40.0


def test_unanswered_list_is_unusable_at_the_deadline() -> None:
    lookups = ScriptedLookups()
    checks = checks_for(lookups, CLIENT, (ZEN, DNSWL), time.monotonic)
    lookups.answer(DNSWL_Q, "A", DnsAnswer(AnswerKind.NXDOMAIN))

    started = time.monotonic()
    zen, dnswl = checks.collect(0.2)
    elapsed = time.monotonic() - started

    assert 0.15 <= elapsed < 0.2 + 0.5
    assert (zen.status, zen.failure, zen.hits) == (ListStatus.UNUSABLE, "deadline", ())
    assert zen.latency_ms == 200.0
    assert zen.fail_marker == "SPAMHAUS_ZEN_FAIL"
    assert dnswl.status is ListStatus.CLEAN


def test_collect_waits_only_for_what_is_left_of_the_deadline() -> None:
    lookups, clock = ScriptedLookups(), FakeClock(1000.0)
    checks = checks_for(lookups, CLIENT, (ZEN,), clock)
    clock.now = 1000.15  # 0.15 s of the 0.2 s deadline have passed since connect

    started = time.monotonic()
    (zen,) = checks.collect(0.2)
    elapsed = time.monotonic() - started

    assert elapsed < 0.14
    assert zen.failure == "deadline"


def test_collect_after_the_deadline_does_not_wait() -> None:
    lookups, clock = ScriptedLookups(), FakeClock(1000.0)
    checks = checks_for(lookups, CLIENT, (ZEN,), clock)
    clock.now = 1005.0

    started = time.monotonic()
    (zen,) = checks.collect(2.0)
    assert time.monotonic() - started < 0.1
    assert (zen.status, zen.failure, zen.latency_ms) == (ListStatus.UNUSABLE, "deadline", 2000.0)


def test_collect_twice_gives_the_same_result_without_waiting() -> None:
    lookups = ScriptedLookups()
    checks = checks_for(lookups, CLIENT, (ZEN,), time.monotonic)
    first = checks.collect(0.1)
    lookups.answer(ZEN_Q, "A", addresses("127.0.0.2"))  # too late: the verdict is already out

    started = time.monotonic()
    second = checks.collect(5.0)
    assert time.monotonic() - started < 0.05
    assert second == first
    assert second[0].failure == "deadline"


def test_future_that_raises_is_a_resolver_error() -> None:
    failing: futures.Future[DnsAnswer] = futures.Future()

    class Failing(ScriptedLookups):  # a concurrent Future can fail; a Pending cannot
        def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:  # type: ignore[override]
            super().lookup(qname, rdtype)
            return failing

    checks = checks_for(Failing(), CLIENT, (ZEN,), FakeClock())
    failing.set_exception(RuntimeError("boom"))
    (zen,) = checks.collect(2.0)
    assert (zen.status, zen.failure, zen.hits) == (ListStatus.UNUSABLE, "resolver-error", ())


def test_no_applicable_lists_collects_nothing() -> None:
    lookups = ScriptedLookups()
    checks = checks_for(lookups, CLIENT, (V6_ONLY,), FakeClock())
    assert lookups.calls == []
    assert checks.collect(2.0) == ()


def test_domain_lookups_carry_their_subject_and_stage() -> None:
    dbl = DomainList(name="DBL", zone="dbl.test", score=6.0)
    lookups, clock = ScriptedLookups(), FakeClock()
    checks = ListLookups(lookups, clock)
    checks.start(dbl, "example.org.dbl.test", subject="helo:example.org", stage=Stage.CONNECTION)
    checks.start(dbl, "example.net.dbl.test", subject="from:example.net", stage=Stage.MESSAGE)
    # The same again: merged.
    checks.start(dbl, "example.net.dbl.test", subject="from:example.net", stage=Stage.MESSAGE)
    assert lookups.calls == [("example.org.dbl.test", "A"), ("example.net.dbl.test", "A")]
    lookups.answer("example.org.dbl.test", "A", addresses("127.0.1.2"))
    lookups.answer("example.net.dbl.test", "A", DnsAnswer(AnswerKind.NXDOMAIN))

    (helo,) = checks.collect(2.0, stage=Stage.ENVELOPE)  # the header domain is not known at RCPT
    assert (helo.subject, helo.status, names(helo)) == (
        "helo:example.org",
        ListStatus.LISTED,
        ["DBL"],
    )
    helo_again, header = checks.collect(2.0, stage=Stage.MESSAGE)
    assert helo_again == helo
    assert (header.subject, header.status) == ("from:example.net", ListStatus.CLEAN)


class SuspendingRecorder:
    """A health monitor that suspends a list when the test says so."""

    def __init__(self) -> None:
        self.suspended: set[str] = set()
        self.recorded: list[ListOutcome] = []
        self.answers: list[ListOutcome] = []
        self.waiters: set[threading.Event] = set()

    def record(self, outcomes: Any) -> None:
        self.recorded.extend(outcomes)

    def answered(self, outcome: ListOutcome) -> None:
        self.answers.append(outcome)

    def suspend(self, name: str) -> None:
        self.suspended.add(name)
        for wake in list(self.waiters):
            wake.set()

    def add_suspension_waiter(self, wake: threading.Event) -> None:
        self.waiters.add(wake)

    def remove_suspension_waiter(self, wake: threading.Event) -> None:
        self.waiters.discard(wake)

    def is_suspended(self, name: str) -> bool:
        return name in self.suspended


def test_a_session_stops_waiting_for_a_list_suspended_while_it_waits() -> None:
    lookups, recorder = ScriptedLookups(), SuspendingRecorder()
    checks = ListLookups(lookups, time.monotonic, recorder)
    checks.start_ip_lists(CLIENT, (ZEN, DNSWL))
    lookups.answer(DNSWL_Q, "A", DnsAnswer(AnswerKind.NXDOMAIN))
    timer = threading.Timer(0.2, lambda: recorder.suspend(ZEN.name))
    timer.start()
    try:
        started = time.monotonic()
        zen, dnswl = checks.collect(5.0)
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
    assert 0.15 <= elapsed < 1.0  # not the 5 s deadline
    assert (zen.status, zen.failure) == (ListStatus.UNUSABLE, "suspended")
    assert dnswl.status is ListStatus.CLEAN
    assert [o.failure for o in recorder.recorded] == ["suspended", ""]
    assert not recorder.waiters  # a waiter leaves when it is done
    lookups.answer(ZEN_Q, "A", DnsAnswer(AnswerKind.TIMEOUT))  # the resolver gives up later
    assert [(o.dns_list.name, o.failure) for o in recorder.answers] == [
        (DNSWL.name, ""),
        (ZEN.name, "timeout"),
    ]
