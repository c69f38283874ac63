"""DNS list health: RFC 5782 probe names and verdicts on each family, suspend and resume,
reports. The circuit breaker is in test_listhealth_breaker.py."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading

import pytest

from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import Family, ListLookups, ListStatus, classify, query_name
from spamgate.dns.listhealth import (
    ProbeFault,
    ProbeProblem,
    ProbeVerdict,
    probe_lists,
    probe_names,
    probe_points,
)
from tests.fakes import FakeClock, ScriptedLookups
from tests.listhealth_helpers import (
    CLEAN,
    EVERYTHING,
    IPV6_NIBBLES,
    LISTED,
    LISTS_EVERYTHING,
    NOT_LISTED,
    SETTINGS,
    lists,
    monitor,
    seen,
)

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


def test_reporting_never_waits_for_the_lock_and_nothing_reported_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sessions (record) and the resolver's real-time receiver (answered) report while
    another thread holds the monitor's lock, as a session that lost its CPU inside it does:
    neither waits, and what they reported is counted by the next thread to take the lock,
    here the reader of the reports. (Issue 13: when they waited, the receiver waited too, and
    every list answer with it.)"""
    watch = monitor(FakeClock(), dataclasses.replace(SETTINGS, max_failures=3))
    every = lists()
    zen, dbl = every["ZEN"], every["DBL"]
    watch.apply_probe(zen, None)
    servfail = seen(dbl, DnsAnswer(AnswerKind.SERVFAIL), "spam.example.dbl.test")
    reported = threading.Event()

    def report() -> None:
        watch.record([classify(zen, LISTED, 10.0), classify(zen, CLEAN, 30.0)])
        for _ in range(3):
            watch.answered(servfail)
        reported.set()

    holder_lets_go = threading.Event()

    def hold() -> None:
        with watch._lock:  # white box: the holder that lost its CPU
            holder_lets_go.wait(timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        reporter = threading.Thread(target=report)
        reporter.start()
        assert reported.wait(timeout=5), "a report waited for the lock"
        reporter.join(timeout=5)
        assert not watch.is_suspended("DBL")  # not counted yet: the lock is held
    finally:
        holder_lets_go.set()
        holder.join(timeout=10)
    with caplog.at_level(logging.WARNING, logger="spamgate"):
        (report_zen,) = [r for r in watch.reports() if r.name == "ZEN"]
    assert (report_zen.checks, report_zen.listed, report_zen.clean) == (2, 1, 1)
    assert watch.is_suspended("DBL")
    assert [r.getMessage() for r in caplog.records] == [
        "list DBL suspended: its last 3 answers were unusable (the last: servfail): "
        "sessions stop waiting for it"
    ]
