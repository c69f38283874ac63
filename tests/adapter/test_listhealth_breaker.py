"""The DNS list circuit breaker: distinct clients, the probe as its second signal, per-list
settings."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import tracemalloc

import pytest

from spamgate.core.addresses import normalize_address
from spamgate.core.evidence import Stage
from spamgate.core.listspecs import IpList
from spamgate.core.settings import BREAKER_MAX_CLIENTS, Breaker
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import ListLookups, ListOutcome, network_key, query_name
from spamgate.dns.listhealth import ListMonitor
from tests.fakes import FakeClock, ScriptedLookups
from tests.listhealth_helpers import (
    CLEAN,
    EVERYTHING,
    LISTED,
    LISTS_EVERYTHING,
    SETTINGS,
    lists,
    monitor,
    seen,
)

# -- the circuit breaker ----------------------------------------------------------------------


def connect(
    watch: ListMonitor, clock: FakeClock, address: str, dns_list: IpList
) -> tuple[ListOutcome, ...]:
    """One session's IP list lookup, as the session makes it: every client is listed (the
    must-not-list test entries are not asked here)."""
    target = normalize_address(ipaddress.ip_address(address))
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
