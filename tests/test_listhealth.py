"""DNS list health: RFC 5782 probe names and verdicts on each family, the circuit breaker
(distinct clients, the probe as its second signal, per-list settings), suspend and resume."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import tracemalloc

import pytest

from spamgate.core import schema
from spamgate.core.evidence import Stage
from spamgate.core.policy import DnsList, IpList, Policy
from spamgate.core.settings import BREAKER_MAX_CLIENTS, Breaker, HealthSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import (
    Family,
    ListLookups,
    ListOutcome,
    ListStatus,
    classify,
    lookup_address,
    network_key,
    query_name,
)
from spamgate.dns.listhealth import (
    ListMonitor,
    ProbeFault,
    ProbeProblem,
    ProbeVerdict,
    probe_lists,
    probe_names,
    probe_points,
)
from tests.fakes import FakeClock, ScriptedLookups

POLICY = """
ip_lists:
  - {name: ZEN, zone: zen.test, score: 10}
  - {name: V6ONLY, zone: v6.test, score: 1, ipv4: false}
  - {name: V4ONLY, zone: v4.test, score: 1, ipv6: false}
  - {name: CUSTOM, zone: custom.test, score: 1, probe: {listed: 127.0.0.4, unlisted: 127.0.0.5}}
  - {name: CUSTOM6, zone: custom6.test, score: 1, probe: {listed: "2001:db8::2"}}
  - {name: NOPROBE, zone: noprobe.test, score: 1, probe: {enabled: false}}
  - name: OWN
    zone: own.test
    score: 1
    health: {min_checks: 2, max_hit_ratio: 0.75, window: 20}
  - {name: SUSPENDING, zone: suspending.test, score: 1, health: {breaker: suspend}}
  - {name: NOBREAKER, zone: nobreaker.test, score: 1, health: {breaker: "off"}}
  - name: NOPROBE_SUSPENDING
    zone: noprobe2.test
    score: 1
    probe: {enabled: false}
    health: {breaker: suspend}
domain_lists:
  - {name: DBL, zone: dbl.test, score: 5}
"""
SETTINGS = HealthSettings(
    probe_interval=600, retry_min=60, retry_max=300, max_hit_ratio=0.5, window=60, min_checks=4
)
LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN)
LISTS_EVERYTHING = "it lists its must-not-list test entry: it answers for everything"
EVERYTHING = ProbeProblem(ProbeFault.LISTS_EVERYTHING)  # LISTS_EVERYTHING, as a value
NOT_LISTED = ProbeProblem(ProbeFault.NOT_LISTED)
IPV6_NIBBLES = "0." * 20  # ::ffff:7f00:x: twenty zero nibbles above ffff


def lists() -> dict[str, DnsList]:
    policy = schema.load(Policy, POLICY, "t.yaml")
    return {dns_list.name: dns_list for dns_list in (*policy.ip_lists, *policy.domain_lists)}


def monitor(clock: FakeClock, settings: HealthSettings = SETTINGS) -> ListMonitor:
    return ListMonitor(tuple(lists().values()), settings, clock)


def seen(
    dns_list: DnsList, answer: DnsAnswer, key: str, family: Family | None = None
) -> ListOutcome:
    """One list's answer about one client network (or name), as ListLookups makes it."""
    return classify(dns_list, answer, 1.0, key=key, family=family)


# -- probe names, both families -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "ZEN",
            [
                (Family.IPV4, "2.0.0.127.zen.test", "1.0.0.127.zen.test"),
                (
                    Family.IPV6,
                    "2.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "zen.test",
                    "1.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "zen.test",
                ),
            ],
            id="dual-stack-both-families",
        ),
        pytest.param(
            "V6ONLY",
            [
                (
                    Family.IPV6,
                    "2.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "v6.test",
                    "1.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "v6.test",
                )
            ],
            id="ipv6-only-mapped-nibbles",
        ),
        pytest.param(
            "V4ONLY", [(Family.IPV4, "2.0.0.127.v4.test", "1.0.0.127.v4.test")], id="ipv4-only"
        ),
        pytest.param(
            "CUSTOM",
            [
                (Family.IPV4, "4.0.0.127.custom.test", "5.0.0.127.custom.test"),
                (
                    Family.IPV6,
                    "4.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "custom.test",
                    "5.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "custom.test",
                ),
            ],
            id="custom-ipv4-entries-mapped-on-ipv6",
        ),
        pytest.param(
            "CUSTOM6",
            [
                (Family.IPV4, "2.0.0.127.custom6.test", "1.0.0.127.custom6.test"),
                (
                    Family.IPV6,
                    query_name(ipaddress.ip_address("2001:db8::2"), "custom6.test"),
                    "1.0.0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "custom6.test",
                ),
            ],
            id="custom-ipv6-entry-on-ipv6-only",
        ),
        pytest.param("DBL", [(None, "test.dbl.test", "invalid.dbl.test")], id="domain"),
    ],
)
def test_probe_points(name: str, expected: list[tuple[Family | None, str, str]]) -> None:
    points = probe_points(lists()[name])
    assert [(p.family, p.listed, p.unlisted) for p in points] == expected
    first = probe_names(lists()[name])
    assert first is not None and (first.listed, first.unlisted) == expected[0][1:]


def test_probes_can_be_turned_off() -> None:
    assert probe_points(lists()["NOPROBE"]) == ()
    assert probe_names(lists()["NOPROBE"]) is None


def test_probe_lists_asks_every_family_at_once_and_judges_each() -> None:
    every = lists()
    v6 = "0.0.0.0.f.7.f.f.f.f." + IPV6_NIBBLES + "zen.test"
    resolver = ScriptedLookups(
        {
            ("2.0.0.127.zen.test", "A"): LISTED,
            ("1.0.0.127.zen.test", "A"): CLEAN,
            # The IPv6 side lists everything, its must-not-list entry too.
            ("2.0." + v6, "A"): LISTED,
            ("1.0." + v6, "A"): LISTED,
            ("test.dbl.test", "A"): LISTED,
            ("invalid.dbl.test", "A"): CLEAN,
        }
    )
    verdicts = probe_lists(
        [every["ZEN"], every["DBL"], every["V6ONLY"], every["NOPROBE"]], resolver.lookup, 0.05
    )
    assert verdicts == {
        "ZEN": ProbeVerdict(((Family.IPV4, None), (Family.IPV6, EVERYTHING))),
        "DBL": ProbeVerdict(((None, None),)),
        "V6ONLY": ProbeVerdict(((Family.IPV6, ProbeProblem(ProbeFault.NO_ANSWER)),)),
    }
    assert verdicts["ZEN"].problem == f"ipv6: {LISTS_EVERYTHING}"
    assert verdicts["DBL"].problem == ""
    assert verdicts["V6ONLY"].problem == "no answer to its test entries"
    assert len(resolver.calls) == 8  # two per family probed, none for NOPROBE


# -- suspending one family --------------------------------------------------------------------


def test_a_family_that_fails_its_probe_is_suspended_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    caplog.set_level(logging.INFO, logger="spamgate")
    watch.apply_probe(zen, ProbeVerdict(((Family.IPV4, None), (Family.IPV6, EVERYTHING))))
    assert watch.is_suspended("ZEN/ipv6")
    assert not watch.is_suspended("ZEN") and not watch.is_suspended("ZEN/ipv4")
    (report,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report.state, report.reason) == ("suspended:ipv6", f"ipv6: probe: {LISTS_EVERYTHING}")
    assert "list=ZEN state=suspended:ipv6 " in " ".join(watch.lines()) + " "

    # An IPv4 client is still asked; an IPv6 client's lookup is not sent.
    resolver = ScriptedLookups({("5.2.0.192.zen.test", "A"): LISTED})
    for address in ("192.0.2.5", "2001:db8::5"):
        lookups = ListLookups(resolver, clock, watch)
        lookups.start_ip_lists(ipaddress.ip_address(address), [zen])
        (outcome,) = lookups.collect(1.0)
        if address == "192.0.2.5":
            assert outcome.status is ListStatus.LISTED
        else:
            assert (outcome.status, outcome.failure) == (ListStatus.UNUSABLE, "suspended")
    assert resolver.calls == [("5.2.0.192.zen.test", "A")]

    clock.now += 60
    assert zen in watch.due_for_probe()
    watch.apply_probe(zen, ProbeVerdict(((Family.IPV4, None), (Family.IPV6, None))))
    assert not watch.is_suspended("ZEN/ipv6")
    assert [r.getMessage() for r in caplog.records] == [
        f"list ZEN suspended for ipv6: probe: {LISTS_EVERYTHING}",
        "list ZEN resumed for ipv6: its probes pass again",
    ]


def test_both_families_failing_alike_suspend_the_list_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = monitor(FakeClock())
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.apply_probe(
            lists()["ZEN"],
            ProbeVerdict(((Family.IPV4, EVERYTHING), (Family.IPV6, EVERYTHING))),
        )
    assert watch.is_suspended("ZEN")
    assert watch.is_suspended("ZEN/ipv4") and watch.is_suspended("ZEN/ipv6")
    (report,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report.state, report.reason) == ("suspended", f"probe: {LISTS_EVERYTHING}")
    assert [r.getMessage() for r in caplog.records] == [
        f"list ZEN suspended: probe: {LISTS_EVERYTHING}"
    ]


def test_a_run_of_unusable_answers_suspends_the_family_it_came_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock, dataclasses.replace(SETTINGS, max_failures=20))
    zen = lists()["ZEN"]
    timeout = seen(zen, DnsAnswer(AnswerKind.TIMEOUT), "8.b.d.0.1.0.0.2", Family.IPV6)
    for _ in range(19):
        watch.answered(timeout)
    watch.answered(seen(zen, CLEAN, "8.b.d.0.1.0.0.2", Family.IPV6))  # starts the run anew
    for _ in range(19):
        watch.answered(timeout)
        watch.answered(seen(zen, CLEAN, "100.51.198", Family.IPV4))  # the other family
    watch.record([timeout] * 100)  # verdicts collected later are not answers: not counted
    assert not watch.is_suspended("ZEN/ipv6")
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.answered(timeout)
    assert watch.is_suspended("ZEN/ipv6")
    assert not watch.is_suspended("ZEN/ipv4") and not watch.is_suspended("ZEN")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "list ZEN suspended for ipv6: its last 20 answers were unusable (the last: timeout): "
        "sessions stop waiting for it"
    )
    clock.now += 10
    assert zen in watch.due_for_probe()  # probed again soon: it may have been load


def test_a_run_of_unusable_answers_suspends_a_domain_list_whole() -> None:
    watch = monitor(FakeClock(), dataclasses.replace(SETTINGS, max_failures=5))
    dbl = lists()["DBL"]
    for _ in range(5):
        watch.answered(seen(dbl, DnsAnswer(AnswerKind.SERVFAIL), "spam.example.dbl.test"))
    assert watch.is_suspended("DBL")


def test_max_failures_zero_never_suspends_for_unusable_answers() -> None:
    watch = monitor(FakeClock(), dataclasses.replace(SETTINGS, max_failures=0))
    zen = lists()["ZEN"]
    for _ in range(1000):
        watch.answered(classify(zen, DnsAnswer(AnswerKind.SERVFAIL), 1.0))
    assert not watch.is_suspended("ZEN") and not watch.is_suspended("ZEN/ipv4")


def test_a_probe_without_answer_is_asked_again_before_the_list_is_suspended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1000.0)
    watch = monitor(clock)
    zen = lists()["ZEN"]
    problem = ProbeProblem(ProbeFault.LISTED_UNUSABLE, "timeout")
    with caplog.at_level(logging.INFO, logger="spamgate"):
        watch.apply_probe(zen, problem)
        assert not watch.is_suspended("ZEN")
        assert zen not in watch.due_for_probe()
        clock.now += 10
        assert zen in watch.due_for_probe()  # asked again 10 s later, not probe_interval
        watch.apply_probe(zen, problem)
    assert watch.is_suspended("ZEN")
    assert [r.getMessage() for r in caplog.records] == [
        f"list ZEN: probe: {problem}; asking again before suspending",
        f"list ZEN suspended: probe: {problem}",
    ]


def test_a_wrong_probe_answer_suspends_at_once() -> None:
    watch = monitor(FakeClock(1000.0))
    watch.apply_probe(lists()["ZEN"], EVERYTHING)
    assert watch.is_suspended("ZEN")


def test_probe_suspends_and_resumes_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1000.0)
    watch = monitor(clock)
    zen = lists()["ZEN"]
    assert zen in watch.due_for_probe()  # new lists are probed at once
    caplog.set_level(logging.INFO, logger="spamgate")
    watch.apply_probe(zen, NOT_LISTED)
    assert watch.is_suspended("ZEN")
    assert zen not in watch.due_for_probe()
    clock.now += 60
    assert zen in watch.due_for_probe()
    watch.apply_probe(zen, NOT_LISTED)  # still bad: 120 s now
    clock.now += 119
    assert zen not in watch.due_for_probe()
    clock.now += 1
    watch.apply_probe(zen, NOT_LISTED)  # 240
    watch.apply_probe(zen, NOT_LISTED)  # capped at retry_max, 300
    clock.now += 300
    assert zen in watch.due_for_probe()
    watch.apply_probe(zen, None)
    assert not watch.is_suspended("ZEN")
    clock.now += 599
    assert zen not in watch.due_for_probe()  # healthy: probe_interval
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "list ZEN suspended: probe: it does not list its test entry",
        "list ZEN resumed: its probes pass again",
    ]


def test_suspended_list_is_not_asked_and_counts_as_unusable() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    watch.apply_probe(zen, EVERYTHING)
    resolver = ScriptedLookups()
    lookups = ListLookups(resolver, clock, watch)
    lookups.start(zen, "5.2.0.192.zen.test")
    (outcome,) = lookups.collect(1.0)
    assert (outcome.status, outcome.failure) == (ListStatus.UNUSABLE, "suspended")
    assert resolver.calls == []
    (report,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report.state, report.checks, report.unusable) == ("suspended", 1, 1)
    assert report.unusable_by_kind == {"suspended": 1}


# -- the circuit breaker ----------------------------------------------------------------------


def connect(
    watch: ListMonitor, clock: FakeClock, address: str, dns_list: IpList
) -> tuple[ListOutcome, ...]:
    """One session's IP list lookup, as the session makes it: every client is listed (the
    must-not-list test entries are not asked here)."""
    target = lookup_address(ipaddress.ip_address(address))
    resolver = ScriptedLookups({(query_name(target, dns_list.zone), "A"): LISTED})
    lookups = ListLookups(resolver, clock, watch)
    lookups.start_ip_lists(target, [dns_list])
    return lookups.collect(1.0)


def test_one_client_reconnecting_cannot_switch_a_list_off_for_everyone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14, item 2: 150 sessions from one listed address suspended ZEN for every client
    (the breaker counted lookups, cached answers included)."""
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    assert isinstance(zen, IpList)
    watch.apply_probe(zen, None)
    with caplog.at_level(logging.INFO, logger="spamgate"):
        for _ in range(150):
            clock.now += 0.1
            connect(watch, clock, "198.51.100.77", zen)
    assert not watch.is_suspended("ZEN") and not watch.is_suspended("ZEN/ipv4")
    assert caplog.records == []
    assert len(watch._records["ZEN"].recent) == 1  # one client network, seen 150 times
    (report,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report.state, report.checks, report.listed) == ("healthy", 150, 150)


@pytest.mark.parametrize(
    ("addresses", "networks"),
    [
        pytest.param(["198.51.100.1", "198.51.100.77", "198.51.100.254"], 1, id="one-ipv4-24"),
        pytest.param(["198.51.100.1", "198.51.101.1", "203.0.113.9"], 3, id="three-ipv4-24s"),
        pytest.param(
            ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:a::b"],
            1,
            id="one-ipv6-64",
        ),
        pytest.param(["2001:db8:1:2::1", "2001:db8:1:3::1"], 2, id="two-ipv6-64s"),
        pytest.param(["::ffff:198.51.100.1", "198.51.100.2"], 1, id="ipv4-mapped-is-ipv4"),
        pytest.param(["198.51.100.1", "2001:db8:1:2::1"], 2, id="either-family"),
    ],
)
def test_the_breaker_counts_client_networks(addresses: list[str], networks: int) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    assert isinstance(zen, IpList)
    for address in addresses:
        connect(watch, clock, address, zen)
    assert len(watch._records["ZEN"].recent) == networks


@pytest.mark.parametrize(
    ("address", "key"),
    [
        pytest.param("198.51.100.77", "100.51.198", id="ipv4-24"),
        pytest.param("2001:db8:1:2:3:4:5:6", "2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2", id="ipv6-64"),
    ],
)
def test_network_key(address: str, key: str) -> None:
    assert network_key(ipaddress.ip_address(address)) == key


def test_the_breaker_counts_a_domain_list_by_name() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    dbl = lists()["DBL"]
    resolver = ScriptedLookups(
        {("spam.example.dbl.test", "A"): LISTED, ("other.example.dbl.test", "A"): LISTED}
    )
    # 12 connections of 10 MAIL FROM:<x@spam.example> each: one name.
    for _ in range(12):
        connection = ListLookups(resolver, clock, watch)
        for _ in range(10):
            transaction = ListLookups(resolver, clock, watch, connection=connection)
            transaction.start(
                dbl, "spam.example.dbl.test", subject="sender:spam.example", stage=Stage.ENVELOPE
            )
            transaction.collect(1.0)
    assert len(watch._records["DBL"].recent) == 1
    assert not watch.is_suspended("DBL")
    transaction = ListLookups(resolver, clock, watch)
    transaction.start(
        dbl, "other.example.dbl.test", subject="sender:other.example", stage=Stage.ENVELOPE
    )
    transaction.collect(1.0)
    assert len(watch._records["DBL"].recent) == 2


def test_the_breaker_forgets_clients_not_seen_for_its_window() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    for n in range(3):
        watch.record([seen(zen, LISTED, f"{n}.51.198")])
    clock.now += 61  # those fell out of the window
    watch.record([seen(zen, LISTED, "3.51.198"), seen(zen, CLEAN, "4.51.198")])
    watch.record([seen(zen, DnsAnswer(AnswerKind.TIMEOUT), f"{n}.0.10") for n in range(5)])
    watch.record([seen(zen, CLEAN, "5.51.198"), seen(zen, LISTED, "6.51.198")])
    assert len(watch._records["ZEN"].recent) == 4  # unusable answers are not counted
    # 2 of 4 in the window: 50%, not more; a client seen again counts its last answer.
    assert watch._records["ZEN"].breaker_reason == ""
    watch.record([seen(zen, LISTED, "5.51.198")])  # 3 of 4 now
    assert watch._records["ZEN"].breaker_reason.startswith("it listed 75% of 4 client networks")


def test_the_breaker_holds_at_most_its_bound_of_clients_whatever_a_flood_brings() -> None:
    clock = FakeClock()
    watch = monitor(clock, dataclasses.replace(SETTINGS, window=86400))
    zen = lists()["ZEN"]
    keys = [f"{n % 256}.{n // 256 % 256}.{n // 65536}" for n in range(100_000)]

    def flood(batch: list[str]) -> None:
        for key in batch:
            clock.now += 0.001
            watch.record([seen(zen, CLEAN, key)])

    tracemalloc.start()
    try:
        flood(keys[:20_000])
        assert len(watch._records["ZEN"].recent) == BREAKER_MAX_CLIENTS
        before = tracemalloc.get_traced_memory()[0]
        flood(keys[20_000:])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(watch._records["ZEN"].recent) == BREAKER_MAX_CLIENTS
    assert grown < 16 * 1024  # 80,000 more clients: flat (the keys were made beforehand)
    # The bound keeps the most recent clients: a list that now lists everyone shows as soon
    # as it has listed more than half (max_hit_ratio) of the last BREAKER_MAX_CLIENTS.
    watch.apply_probe(zen, None)
    for n in range(BREAKER_MAX_CLIENTS // 2 + 1):
        assert zen not in watch.due_for_probe()
        watch.record([seen(zen, LISTED, f"{n}.listed")])
    assert zen in watch.due_for_probe()
    assert watch._records["ZEN"].breaker_reason.startswith(
        f"it listed 50% of {BREAKER_MAX_CLIENTS} client networks"
    )


def test_a_high_ratio_probes_the_list_now_and_suspends_it_only_if_the_probe_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    watch.apply_probe(zen, None)
    assert zen not in watch.due_for_probe()  # the next regular probe is 600 s away
    caplog.set_level(logging.INFO, logger="spamgate")
    # A flood of listed clients: four networks, all listed.
    watch.record([seen(zen, LISTED, f"{n}.113.0") for n in range(4)])
    assert not watch.is_suspended("ZEN")
    assert zen in watch.due_for_probe()  # probed at once
    watch.apply_probe(zen, None)  # the must-not-list entry is not listed: a flood, not a fault
    assert not watch.is_suspended("ZEN")
    breaker = "it listed 100% of 4 client networks in 60 s (more than 50%)"
    assert [r.getMessage() for r in caplog.records] == [
        f"list ZEN: {breaker}: probing it now",
        f"list ZEN stays active: its probes pass, so {breaker} is a flood of listed clients, "
        "not a list gone bad",
    ]
    # While the ratio stays high, the breaker asks again once a window, not on every answer.
    caplog.clear()
    clock.now += 30
    watch.record([seen(zen, LISTED, f"{n}.113.1") for n in range(40)])
    assert zen not in watch.due_for_probe() and caplog.records == []
    clock.now += 31
    watch.record([seen(zen, LISTED, "99.113.1")])
    assert zen in watch.due_for_probe()
    # This time the list does list everyone: suspended, and the reason says why it was asked.
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.apply_probe(zen, EVERYTHING)
    assert watch.is_suspended("ZEN")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"list ZEN suspended: probe: {LISTS_EVERYTHING} (probed because it listed 100% of 41 "
        "client networks in 60 s (more than 50%))"
    ]


def test_a_list_with_its_own_breaker_settings_uses_them() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    every = lists()
    own, zen = every["OWN"], every["ZEN"]
    assert own.health.applied_to(SETTINGS) == dataclasses.replace(
        SETTINGS, min_checks=2, max_hit_ratio=0.75, window=20
    )
    for dns_list in (own, zen):
        watch.apply_probe(dns_list, None)
        # Two networks, both listed: past OWN's min_checks (2) and ratio (75%), not ZEN's (4).
        watch.record([seen(dns_list, LISTED, f"{n}.113.0") for n in range(2)])
    due = watch.due_for_probe()
    assert own in due and zen not in due
    assert watch._records["OWN"].breaker_reason == (
        "it listed 100% of 2 client networks in 20 s (more than 75%)"
    )


def test_breaker_suspend_lets_the_ratio_alone_suspend_the_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    suspending = lists()["SUSPENDING"]
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.record([seen(suspending, LISTED, f"{n}.113.0") for n in range(4)])
    assert watch.is_suspended("SUSPENDING")
    assert [r.getMessage() for r in caplog.records] == [
        "list SUSPENDING suspended: it listed 100% of 4 client networks in 60 s (more than 50%): "
        "a broken list that lists everyone must not refuse the world"
    ]


def test_breaker_off_never_trips() -> None:
    watch = monitor(FakeClock())
    nobreaker = lists()["NOBREAKER"]
    watch.apply_probe(nobreaker, None)
    watch.record([seen(nobreaker, LISTED, f"{n}.113.0") for n in range(1000)])
    assert not watch.is_suspended("NOBREAKER")
    assert nobreaker not in watch.due_for_probe()
    assert len(watch._records["NOBREAKER"].recent) == 0


def test_a_list_without_probes_stays_active_on_a_high_ratio_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    noprobe = lists()["NOPROBE"]
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        for n in range(100):
            watch.record([seen(noprobe, LISTED, f"{n}.113.0")])
        clock.now += 61
        watch.record([seen(noprobe, LISTED, f"{n}.113.1") for n in range(4)])
    assert not watch.is_suspended("NOPROBE")
    assert noprobe not in watch.due_for_probe()
    warning = (
        "list NOPROBE: it listed 100% of 4 client networks in 60 s (more than 50%), and its "
        "probes are off: nothing tells a list gone bad from a flood of listed clients, so it "
        "stays active (health.breaker: suspend lets the ratio alone suspend it)"
    )
    # Once a window: at the fourth network, and again 61 s later.
    assert [r.getMessage() for r in caplog.records] == [warning, warning]


def test_a_list_without_probes_suspended_is_resumed_on_trial_after_its_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    noprobe = lists()["NOPROBE_SUSPENDING"]
    watch.record([seen(noprobe, LISTED, f"{n}.113.0") for n in range(4)])
    assert watch.is_suspended("NOPROBE_SUSPENDING")
    clock.now += 59
    watch.due_for_probe()
    assert watch.is_suspended("NOPROBE_SUSPENDING")
    clock.now += 1
    with caplog.at_level(logging.INFO, logger="spamgate"):
        assert noprobe not in watch.due_for_probe()  # nothing to probe: resumed instead
    assert not watch.is_suspended("NOPROBE_SUSPENDING")
    assert "list NOPROBE_SUSPENDING resumed on trial: its probes are off" in caplog.messages
    (report,) = [r for r in watch.reports() if r.name == "NOPROBE_SUSPENDING"]
    assert report.state == "unchecked"
    # Still listing everyone: suspended again, for twice as long.
    watch.record([seen(noprobe, LISTED, f"{n}.113.1") for n in range(4)])
    assert watch.is_suspended("NOPROBE_SUSPENDING")
    clock.now += 119
    watch.due_for_probe()
    assert watch.is_suspended("NOPROBE_SUSPENDING")


def test_the_breaker_settings_default_to_the_global_ones() -> None:
    zen = lists()["ZEN"]
    assert zen.health.applied_to(SETTINGS) is SETTINGS
    assert lists()["SUSPENDING"].health.applied_to(SETTINGS).breaker is Breaker.SUSPEND


# -- reports ----------------------------------------------------------------------------------


def test_reports_and_stats_lines() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    every = lists()
    watch.apply_probe(every["ZEN"], None)
    watch.record([classify(every["ZEN"], LISTED, 10.0), classify(every["ZEN"], CLEAN, 30.0)])
    watch.record([classify(every["ZEN"], DnsAnswer(AnswerKind.TIMEOUT), None)])
    clock.now += 5
    (zen,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (zen.state, zen.checks, zen.listed, zen.clean, zen.unusable) == ("healthy", 3, 1, 1, 1)
    assert (zen.hit_rate, zen.error_rate) == (1 / 3, 1 / 3)
    assert (zen.latency_ms_p50, zen.last_probe_age) == (20.0, 5.0)
    lines = watch.lines()
    assert "list=DBL state=unprobed checks=0 listed=0 clean=0 unusable=0" in lines
    assert "list=NOPROBE state=unchecked checks=0 listed=0 clean=0 unusable=0" in lines
    assert "list=ZEN state=healthy checks=3 listed=1 clean=1 unusable=1 timeout=1" in lines


def test_reconfigure_keeps_the_history_of_lists_that_stay() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    every = lists()
    watch.record([classify(every["ZEN"], LISTED, 1.0)])
    watch.apply_probe(every["ZEN"], ProbeVerdict(((Family.IPV4, None), (Family.IPV6, NOT_LISTED))))
    watch.reconfigure([every["ZEN"]], SETTINGS)
    (zen,) = watch.reports()
    assert (zen.name, zen.checks, zen.state) == ("ZEN", 1, "suspended:ipv6")
    # The same list asked about IPv4 only: its IPv6 side, and that suspension, are gone.
    v4 = dataclasses.replace(every["ZEN"], ipv6=False)
    watch.reconfigure([v4], SETTINGS)
    (zen,) = watch.reports()
    assert (zen.checks, zen.state) == (1, "healthy")
    assert not watch.is_suspended("ZEN/ipv6")


def test_a_silent_list_without_probes_is_resumed_on_trial_not_left_suspended() -> None:
    # Before, nothing ever resumed a list with probes off once its failures suspended it.
    clock = FakeClock()
    watch = monitor(clock, dataclasses.replace(SETTINGS, max_failures=5))
    noprobe = lists()["NOPROBE"]
    for _ in range(5):
        watch.answered(seen(noprobe, DnsAnswer(AnswerKind.TIMEOUT), "100.51.198", Family.IPV4))
    assert watch.is_suspended("NOPROBE/ipv4")
    clock.now += 10
    watch.due_for_probe()
    assert watch.is_suspended("NOPROBE/ipv4")  # no probe to ask 10 s later: its back-off
    clock.now += 50
    assert noprobe not in watch.due_for_probe()
    assert not watch.is_suspended("NOPROBE/ipv4")
