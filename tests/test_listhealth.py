"""DNS list health: RFC 5782 probe names and verdicts, the circuit breaker, suspend and resume."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from spamgate import schema
from spamgate.answers import AnswerKind, DnsAnswer
from spamgate.config import DnsList, HealthSettings, Policy
from spamgate.dnslists import ListLookups, ListStatus, classify
from spamgate.listhealth import ListMonitor, judge_probe, probe_lists, probe_names
from tests.fakes import FakeClock, ScriptedLookups

POLICY = """
ip_lists:
  - {name: ZEN, zone: zen.test, score: 10}
  - {name: V6ONLY, zone: v6.test, score: 1, ipv4: false}
  - {name: CUSTOM, zone: custom.test, score: 1, probe: {listed: 127.0.0.4, unlisted: 127.0.0.5}}
  - {name: NOPROBE, zone: noprobe.test, score: 1, probe: {enabled: false}}
domain_lists:
  - {name: DBL, zone: dbl.test, score: 5}
"""
SETTINGS = HealthSettings(
    probe_interval=600, retry_min=60, retry_max=300, max_hit_ratio=0.5, window=60, min_checks=4
)
LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN)


def lists() -> dict[str, DnsList]:
    policy = schema.load(Policy, POLICY, "t.yaml")
    return {dns_list.name: dns_list for dns_list in (*policy.ip_lists, *policy.domain_lists)}


@pytest.mark.parametrize(
    ("name", "listed", "unlisted"),
    [
        pytest.param("ZEN", "2.0.0.127.zen.test", "1.0.0.127.zen.test", id="ipv4"),
        pytest.param(
            "V6ONLY",
            "2.0.0.0.0.0.f.7.f.f.f.f." + "0." * 20 + "v6.test",
            "1.0.0.0.0.0.f.7.f.f.f.f." + "0." * 20 + "v6.test",
            id="ipv6-only-mapped-nibbles",
        ),
        pytest.param("CUSTOM", "4.0.0.127.custom.test", "5.0.0.127.custom.test", id="custom"),
        pytest.param("DBL", "test.dbl.test", "invalid.dbl.test", id="domain"),
    ],
)
def test_probe_names(name: str, listed: str, unlisted: str) -> None:
    names = probe_names(lists()[name])
    assert names is not None
    assert (names.listed, names.unlisted) == (listed, unlisted)


def test_probes_can_be_turned_off() -> None:
    assert probe_names(lists()["NOPROBE"]) is None


@pytest.mark.parametrize(
    ("listed", "unlisted", "problem"),
    [
        pytest.param(LISTED, CLEAN, "", id="healthy"),
        pytest.param(
            LISTED,
            LISTED,
            "it lists its must-not-list test entry: it answers for everything",
            id="lists-everything",
        ),
        pytest.param(CLEAN, CLEAN, "it does not list its test entry", id="no-test-entry"),
        pytest.param(
            DnsAnswer(AnswerKind.RECORDS, ("127.255.255.254",)),
            CLEAN,
            "its test entry gets an unusable answer: error-code (127.255.255.254)",
            id="blocked",
        ),
        pytest.param(
            DnsAnswer(AnswerKind.RECORDS, ("192.0.2.1",)),
            CLEAN,
            "its test entry gets an unusable answer: outside-127/8 (192.0.2.1)",
            id="parked-domain",
        ),
        pytest.param(
            DnsAnswer(AnswerKind.TIMEOUT),
            CLEAN,
            "its test entry gets an unusable answer: timeout",
            id="timeout",
        ),
        pytest.param(
            LISTED,
            DnsAnswer(AnswerKind.SERVFAIL),
            "its must-not-list test entry gets an unusable answer: servfail",
            id="servfail",
        ),
    ],
)
def test_judge_probe(listed: DnsAnswer, unlisted: DnsAnswer, problem: str) -> None:
    assert judge_probe(lists()["ZEN"], listed, unlisted) == problem


def test_probe_lists_asks_all_at_once_and_reports_silence() -> None:
    every = lists()
    resolver = ScriptedLookups(
        {("2.0.0.127.zen.test", "A"): LISTED, ("1.0.0.127.zen.test", "A"): CLEAN}
    )
    problems = probe_lists([every["ZEN"], every["DBL"], every["NOPROBE"]], resolver.lookup, 0.05)
    assert problems == {"ZEN": "", "DBL": "no answer to its test entries"}
    assert len(resolver.calls) == 4  # two per probed list, none for NOPROBE


def monitor(clock: FakeClock) -> ListMonitor:
    return ListMonitor(tuple(lists().values()), SETTINGS, clock)


def test_breaker_trips_past_the_ratio_once_enough_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    for _ in range(3):
        watch.record([classify(zen, LISTED, 1.0)])
    assert not watch.is_suspended("ZEN")  # 3 < min_checks
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.record([classify(zen, LISTED, 1.0)])
    assert watch.is_suspended("ZEN")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("list ZEN suspended: it listed 100% of 4 clients in 60 s")
    # Later answers while suspended do not log again.
    watch.record([classify(zen, LISTED, 1.0)])
    assert len(caplog.records) == 1


def test_breaker_measures_only_the_window_and_ignores_unusable_answers() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    for _ in range(3):
        watch.record([classify(zen, LISTED, 1.0)])
    clock.now += 61  # those fell out of the window
    watch.record([classify(zen, LISTED, 1.0), classify(zen, CLEAN, 1.0)])
    watch.record([classify(zen, DnsAnswer(AnswerKind.TIMEOUT), 1.0)] * 5)
    watch.record([classify(zen, CLEAN, 1.0), classify(zen, LISTED, 1.0)])
    assert not watch.is_suspended("ZEN")  # 2 of 4 in the window: 50%, not more


def test_breaker_window_memory_is_bounded_by_time_slices_not_traffic() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    zen = lists()["ZEN"]
    for _ in range(1200):  # two windows at 100 clean answers a second
        clock.now += 0.1
        watch.record([classify(zen, CLEAN, 1.0)] * 10)
    assert len(watch._records["ZEN"].recent) <= 61  # 60 slices of one second, and the newest
    # The counts still follow the window: a list that now lists everyone trips once the last
    # window's listings pass the ratio (6,000 clean answers are in it).
    for _ in range(59):
        clock.now += 1
        watch.record([classify(zen, LISTED, 1.0)] * 100)
    assert watch.is_suspended("ZEN")


def test_a_run_of_unusable_answers_suspends_the_list(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    watch = ListMonitor(
        tuple(lists().values()), dataclasses.replace(SETTINGS, max_failures=20), clock
    )
    zen = lists()["ZEN"]
    timeout = classify(zen, DnsAnswer(AnswerKind.TIMEOUT), 1.0)
    for _ in range(19):
        watch.answered(timeout)
    watch.answered(classify(zen, CLEAN, 1.0))  # an answer that counts starts the run anew
    for _ in range(19):
        watch.answered(timeout)
    watch.record([timeout] * 100)  # verdicts collected later are not answers: not counted
    assert not watch.is_suspended("ZEN")
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        watch.answered(timeout)
    assert watch.is_suspended("ZEN")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "list ZEN suspended: its last 20 answers were unusable (the last: timeout): "
        "sessions stop waiting for it"
    )
    clock.now += 10
    assert zen in watch.due_for_probe()  # probed again soon: it may have been load


def test_max_failures_zero_never_suspends_for_unusable_answers() -> None:
    watch = ListMonitor(
        tuple(lists().values()), dataclasses.replace(SETTINGS, max_failures=0), FakeClock()
    )
    zen = lists()["ZEN"]
    for _ in range(1000):
        watch.answered(classify(zen, DnsAnswer(AnswerKind.SERVFAIL), 1.0))
    assert not watch.is_suspended("ZEN")


def test_a_probe_without_answer_is_asked_again_before_the_list_is_suspended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1000.0)
    watch = monitor(clock)
    zen = lists()["ZEN"]
    problem = "its test entry gets an unusable answer: timeout"
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
    watch.apply_probe(
        lists()["ZEN"], "it lists its must-not-list test entry: it answers for everything"
    )
    assert watch.is_suspended("ZEN")


def test_probe_suspends_and_resumes_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1000.0)
    watch = monitor(clock)
    zen = lists()["ZEN"]
    assert zen in watch.due_for_probe()  # new lists are probed at once
    caplog.set_level(logging.INFO, logger="spamgate")
    watch.apply_probe(zen, "it does not list its test entry")
    assert watch.is_suspended("ZEN")
    assert zen not in watch.due_for_probe()
    clock.now += 60
    assert zen in watch.due_for_probe()
    watch.apply_probe(zen, "it does not list its test entry")  # still bad: 120 s now
    clock.now += 119
    assert zen not in watch.due_for_probe()
    clock.now += 1
    watch.apply_probe(zen, "it does not list its test entry")  # 240
    watch.apply_probe(zen, "it does not list its test entry")  # capped at retry_max, 300
    clock.now += 300
    assert zen in watch.due_for_probe()
    watch.apply_probe(zen, "")
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
    watch.apply_probe(zen, "it lists its must-not-list test entry: it answers for everything")
    resolver = ScriptedLookups()
    lookups = ListLookups(resolver, clock, watch)
    lookups.start(zen, "5.2.0.192.zen.test")
    (outcome,) = lookups.collect(1.0)
    assert (outcome.status, outcome.failure) == (ListStatus.UNUSABLE, "suspended")
    assert resolver.calls == []
    (report,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report.state, report.checks, report.unusable) == ("suspended", 1, 1)
    assert report.unusable_by_kind == {"suspended": 1}


def test_reports_and_stats_lines() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    every = lists()
    watch.apply_probe(every["ZEN"], "")
    watch.record([classify(every["ZEN"], LISTED, 10.0), classify(every["ZEN"], CLEAN, 30.0)])
    watch.record([classify(every["ZEN"], DnsAnswer(AnswerKind.TIMEOUT), None)])
    clock.now += 5
    (zen,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (zen.state, zen.checks, zen.listed, zen.clean, zen.unusable) == ("healthy", 3, 1, 1, 1)
    assert (zen.hit_rate, zen.error_rate) == (1 / 3, 1 / 3)
    assert (zen.latency_ms_p50, zen.last_probe_age) == (20.0, 5.0)
    assert watch.lines() == [
        "list=CUSTOM state=unprobed checks=0 listed=0 clean=0 unusable=0",
        "list=DBL state=unprobed checks=0 listed=0 clean=0 unusable=0",
        "list=NOPROBE state=unchecked checks=0 listed=0 clean=0 unusable=0",
        "list=V6ONLY state=unprobed checks=0 listed=0 clean=0 unusable=0",
        "list=ZEN state=healthy checks=3 listed=1 clean=1 unusable=1 timeout=1",
    ]


def test_reconfigure_keeps_the_history_of_lists_that_stay() -> None:
    clock = FakeClock()
    watch = monitor(clock)
    every = lists()
    watch.record([classify(every["ZEN"], LISTED, 1.0)])
    watch.reconfigure([every["ZEN"]], SETTINGS)
    (zen,) = watch.reports()
    assert (zen.name, zen.checks) == ("ZEN", 1)
