"""Reverse DNS with forward confirmation: PendingReverse driven by a fake resolver whose futures
the tests complete, and Postfix's macros read by from_mta_macros."""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent import futures

import pytest

from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.rdns import (
    MAX_NAMES,
    PendingReverse,
    RdnsStatus,
    ReverseDns,
    from_mta_macros,
    ptr_names,
)
from tests.fakes import FakeClock
from tests.fakes import ScriptedLookups as FakeLookups

CLIENT_V4 = "192.0.2.1"
PTR_V4 = "1.2.0.192.in-addr.arpa"
CLIENT_V6 = "2001:db8::25"
PTR_V6 = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"

Key = tuple[str, str]


def records(*texts: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, texts, ttl=300)


NXDOMAIN = DnsAnswer(AnswerKind.NXDOMAIN, ttl=300)
NODATA = DnsAnswer(AnswerKind.NODATA, ttl=300)
SERVFAIL = DnsAnswer(AnswerKind.SERVFAIL)
TIMEOUT = DnsAnswer(AnswerKind.TIMEOUT)


def start(lookups: FakeLookups, client: str = CLIENT_V4) -> PendingReverse:
    return PendingReverse(lookups, ipaddress.ip_address(client), FakeClock())


def collect_timed(pending: PendingReverse, deadline: float) -> tuple[ReverseDns, float]:
    started = time.monotonic()
    result = pending.collect(deadline)
    return result, time.monotonic() - started


# --- scripted outcomes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "script", "expected", "calls"),
    [
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("mail.example.test"),
                ("mail.example.test", "A"): records(CLIENT_V4),
            },
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test"),
            [(PTR_V4, "PTR"), ("mail.example.test", "A")],
            id="confirmed",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("mail.example.test"),
                ("mail.example.test", "A"): records("198.51.100.7", "192.0.2.10"),
            },
            ReverseDns(RdnsStatus.UNCONFIRMED, ("mail.example.test",)),
            [(PTR_V4, "PTR"), ("mail.example.test", "A")],
            id="unconfirmed-points-elsewhere",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): records("gone.example.test"), ("gone.example.test", "A"): NXDOMAIN},
            ReverseDns(RdnsStatus.UNCONFIRMED, ("gone.example.test",)),
            [(PTR_V4, "PTR"), ("gone.example.test", "A")],
            id="unconfirmed-name-does-not-exist",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): records("v6only.example.test"), ("v6only.example.test", "A"): NODATA},
            ReverseDns(RdnsStatus.UNCONFIRMED, ("v6only.example.test",)),
            [(PTR_V4, "PTR"), ("v6only.example.test", "A")],
            id="unconfirmed-no-address-of-the-family",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("a.example.test", "b.example.test"),
                ("a.example.test", "A"): records("198.51.100.7"),
                ("b.example.test", "A"): records("198.51.100.8", CLIENT_V4),
            },
            ReverseDns(
                RdnsStatus.CONFIRMED, ("a.example.test", "b.example.test"), "b.example.test"
            ),
            [(PTR_V4, "PTR"), ("a.example.test", "A"), ("b.example.test", "A")],
            id="second-name-confirms",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("a.example.test", "b.example.test"),
                ("a.example.test", "A"): SERVFAIL,
                ("b.example.test", "A"): records(CLIENT_V4),
            },
            ReverseDns(
                RdnsStatus.CONFIRMED, ("a.example.test", "b.example.test"), "b.example.test"
            ),
            [(PTR_V4, "PTR"), ("a.example.test", "A"), ("b.example.test", "A")],
            id="failed-forward-does-not-spoil-a-confirmation",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("a.example.test", "b.example.test"),
                ("a.example.test", "A"): records("198.51.100.7"),
                ("b.example.test", "A"): SERVFAIL,
            },
            ReverseDns(
                RdnsStatus.UNKNOWN, ("a.example.test", "b.example.test"), detail="forward-servfail"
            ),
            [(PTR_V4, "PTR"), ("a.example.test", "A"), ("b.example.test", "A")],
            id="forward-failure-is-unknown-not-unconfirmed",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): records("slow.example.test"), ("slow.example.test", "A"): TIMEOUT},
            ReverseDns(RdnsStatus.UNKNOWN, ("slow.example.test",), detail="forward-timeout"),
            [(PTR_V4, "PTR"), ("slow.example.test", "A")],
            id="forward-timeout-is-unknown",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): NXDOMAIN},
            ReverseDns(RdnsStatus.MISSING),
            [(PTR_V4, "PTR")],
            id="ptr-nxdomain-is-missing",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): NODATA},
            ReverseDns(RdnsStatus.MISSING),
            [(PTR_V4, "PTR")],
            id="ptr-nodata-is-missing",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): SERVFAIL},
            ReverseDns(RdnsStatus.UNKNOWN, detail="servfail"),
            [(PTR_V4, "PTR")],
            id="ptr-servfail-is-unknown",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): TIMEOUT},
            ReverseDns(RdnsStatus.UNKNOWN, detail="timeout"),
            [(PTR_V4, "PTR")],
            id="ptr-timeout-is-unknown",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): DnsAnswer(AnswerKind.MALFORMED, detail="FormError")},
            ReverseDns(RdnsStatus.UNKNOWN, detail="malformed"),
            [(PTR_V4, "PTR")],
            id="ptr-malformed-is-unknown",
        ),
        pytest.param(
            CLIENT_V4,
            {(PTR_V4, "PTR"): records("192.0.2.1", "1.2.3", "bad..name", ".")},
            ReverseDns(RdnsStatus.MISSING),
            [(PTR_V4, "PTR")],
            id="only-numeric-or-malformed-names-is-missing",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("192.0.2.1", "Host.Example.TEST."),
                ("host.example.test", "A"): records(CLIENT_V4),
            },
            ReverseDns(RdnsStatus.CONFIRMED, ("host.example.test",), "host.example.test"),
            [(PTR_V4, "PTR"), ("host.example.test", "A")],
            id="numeric-name-skipped-other-normalized",
        ),
        pytest.param(
            CLIENT_V6,
            {
                (PTR_V6, "PTR"): records("mail6.example.test"),
                ("mail6.example.test", "AAAA"): records("2001:db8:0:0::25"),
            },
            ReverseDns(RdnsStatus.CONFIRMED, ("mail6.example.test",), "mail6.example.test"),
            [(PTR_V6, "PTR"), ("mail6.example.test", "AAAA")],
            id="ipv6-client-uses-aaaa",
        ),
        pytest.param(
            CLIENT_V6,
            {
                (PTR_V6, "PTR"): records("mail6.example.test"),
                ("mail6.example.test", "AAAA"): records("2001:db8::26"),
            },
            ReverseDns(RdnsStatus.UNCONFIRMED, ("mail6.example.test",)),
            [(PTR_V6, "PTR"), ("mail6.example.test", "AAAA")],
            id="ipv6-client-unconfirmed",
        ),
        pytest.param(
            "::ffff:192.0.2.1",
            {
                (PTR_V4, "PTR"): records("mail.example.test"),
                ("mail.example.test", "A"): records(CLIENT_V4),
            },
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test"),
            [(PTR_V4, "PTR"), ("mail.example.test", "A")],
            id="ipv4-mapped-client-is-looked-up-as-ipv4",
        ),
        pytest.param(
            CLIENT_V4,
            {
                (PTR_V4, "PTR"): records("mail.example.test"),
                ("mail.example.test", "A"): records("not-an-address", CLIENT_V4),
            },
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test"),
            [(PTR_V4, "PTR"), ("mail.example.test", "A")],
            id="junk-forward-record-ignored",
        ),
    ],
)
def test_reverse_outcome(
    client: str, script: dict[Key, DnsAnswer], expected: ReverseDns, calls: list[Key]
) -> None:
    lookups = FakeLookups(script)
    result, elapsed = collect_timed(start(lookups, client), deadline=2.0)
    assert result == expected
    assert lookups.calls == calls
    assert elapsed < 0.5  # everything was answered: collect does not sit out the deadline


# --- order, deadline, limits -------------------------------------------------------------------


def two_names() -> FakeLookups:
    return FakeLookups({(PTR_V4, "PTR"): records("a.example.test", "b.example.test")})


def test_first_name_confirming_concludes_without_waiting_for_the_second() -> None:
    lookups = two_names()
    pending = start(lookups)
    lookups.answer("a.example.test", "A", records(CLIENT_V4))
    result, elapsed = collect_timed(pending, deadline=2.0)
    assert result == ReverseDns(
        RdnsStatus.CONFIRMED, ("a.example.test", "b.example.test"), "a.example.test"
    )
    assert elapsed < 0.5
    assert list(lookups.pending) == [("b.example.test", "A")]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(("a", "b"), id="a-answers-first"),
        pytest.param(("b", "a"), id="b-answers-first"),
    ],
)
def test_the_first_confirming_name_wins_whatever_answers_first(order: tuple[str, str]) -> None:
    lookups = two_names()
    pending = start(lookups)
    for label in order:
        lookups.answer(f"{label}.example.test", "A", records(CLIENT_V4))
    assert pending.collect(2.0).confirmed_name == "a.example.test"


def test_later_name_confirming_waits_for_an_earlier_one() -> None:
    lookups = two_names()
    pending = start(lookups)
    lookups.answer("b.example.test", "A", records(CLIENT_V4))

    def answer_a_later() -> None:
        time.sleep(0.1)
        lookups.answer("a.example.test", "A", records("198.51.100.7"))

    thread = threading.Thread(target=answer_a_later)
    thread.start()
    result, elapsed = collect_timed(pending, deadline=2.0)
    thread.join(timeout=2)
    assert result.confirmed_name == "b.example.test"
    assert 0.05 <= elapsed < 1.0  # woken by the answer, not by the deadline


def test_a_confirmed_name_counts_at_the_deadline_while_an_earlier_one_is_unanswered() -> None:
    lookups = two_names()
    pending = PendingReverse(lookups, ipaddress.ip_address(CLIENT_V4), time.monotonic)
    lookups.answer("b.example.test", "A", records(CLIENT_V4))
    result, elapsed = collect_timed(pending, deadline=0.2)
    assert result == ReverseDns(
        RdnsStatus.CONFIRMED, ("a.example.test", "b.example.test"), "b.example.test"
    )
    assert 0.15 <= elapsed < 0.2 + 0.3


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param({}, ReverseDns(RdnsStatus.UNKNOWN, detail="deadline"), id="ptr-never-answers"),
        pytest.param(
            {(PTR_V4, "PTR"): records("mail.example.test")},
            ReverseDns(RdnsStatus.UNKNOWN, ("mail.example.test",), detail="deadline"),
            id="forward-never-answers",
        ),
        pytest.param(
            {
                (PTR_V4, "PTR"): records("a.example.test", "b.example.test"),
                ("a.example.test", "A"): records("198.51.100.7"),
            },
            ReverseDns(RdnsStatus.UNKNOWN, ("a.example.test", "b.example.test"), detail="deadline"),
            id="one-forward-unanswered-is-not-unconfirmed",
        ),
    ],
)
def test_deadline_is_respected(script: dict[Key, DnsAnswer], expected: ReverseDns) -> None:
    deadline = 0.2
    pending = PendingReverse(FakeLookups(script), ipaddress.ip_address(CLIENT_V4), time.monotonic)
    result, elapsed = collect_timed(pending, deadline)
    assert result == expected
    assert deadline - 0.05 <= elapsed < deadline + 0.3


def test_deadline_counts_from_the_start_not_from_collect() -> None:
    clock = FakeClock()
    pending = PendingReverse(FakeLookups(), ipaddress.ip_address(CLIENT_V4), clock)
    clock.now += 5.0  # HELO and MAIL FROM took longer than the deadline
    result, elapsed = collect_timed(pending, deadline=2.0)
    assert result == ReverseDns(RdnsStatus.UNKNOWN, detail="deadline")
    assert elapsed < 0.05


def test_collect_gives_the_same_answer_after_a_late_reply() -> None:
    lookups = FakeLookups()
    clock = FakeClock()
    pending = PendingReverse(lookups, ipaddress.ip_address(CLIENT_V4), clock)
    clock.now += 3.0
    first = pending.collect(2.0)
    lookups.answer(PTR_V4, "PTR", NXDOMAIN)
    assert pending.collect(2.0) == first == ReverseDns(RdnsStatus.UNKNOWN, detail="deadline")


def test_at_most_max_names_forward_lookups() -> None:
    names = tuple(f"host{n:02d}.example.test" for n in range(50))
    lookups = FakeLookups({(PTR_V4, "PTR"): records(*names)})
    for name in names:
        lookups.script[name, "A"] = records("198.51.100.7")
    result = start(lookups).collect(2.0)
    assert MAX_NAMES == 5
    assert lookups.calls == [(PTR_V4, "PTR")] + [(name, "A") for name in names[:MAX_NAMES]]
    assert result == ReverseDns(RdnsStatus.UNCONFIRMED, names[:MAX_NAMES])


def test_answers_arriving_on_another_thread_wake_collect() -> None:
    lookups = FakeLookups()
    pending = PendingReverse(lookups, ipaddress.ip_address(CLIENT_V4), time.monotonic)

    def resolve() -> None:
        time.sleep(0.05)
        lookups.answer(PTR_V4, "PTR", records("mail.example.test"))
        time.sleep(0.05)
        lookups.answer("mail.example.test", "A", records(CLIENT_V4))

    thread = threading.Thread(target=resolve)
    thread.start()
    result, elapsed = collect_timed(pending, deadline=2.0)
    thread.join(timeout=2)
    assert result.status is RdnsStatus.CONFIRMED
    assert 0.08 <= elapsed < 1.0


def test_collect_returns_after_the_done_callbacks_have_run() -> None:
    """The session starts its lookups of the client's name (its domain lists) in a done
    callback: a verdict that collects the reverse DNS must find them started, or the list
    misses the verdict (issue 14)."""
    lookups = FakeLookups()
    pending = PendingReverse(lookups, ipaddress.ip_address(CLIENT_V4), time.monotonic)
    started: list[str] = []

    def start_name_lists(result: ReverseDns) -> None:
        time.sleep(0.1)  # the callback takes a while, as a lookup's start may
        started.append(result.name)

    pending.add_done_callback(start_name_lists)

    def resolve() -> None:
        time.sleep(0.05)
        lookups.answer(PTR_V4, "PTR", NXDOMAIN)

    thread = threading.Thread(target=resolve)
    thread.start()
    result, _ = collect_timed(pending, deadline=2.0)
    seen = list(started)  # before the resolving thread is waited for
    thread.join(timeout=2)
    assert result.status is RdnsStatus.MISSING
    assert seen == [""]


class BrokenLookups:
    """A resolver that breaks the promise never to raise, in both ways it could."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:
        if self.mode == "raise":
            raise RuntimeError("resolver bug")
        future: futures.Future[DnsAnswer] = futures.Future()
        if self.mode == "exception":
            future.set_exception(OSError("socket gone"))
        else:
            future.cancel()
        return future


@pytest.mark.parametrize(
    ("mode", "detail"),
    [
        pytest.param("raise", "network", id="lookup-raises"),
        pytest.param("exception", "network", id="future-holds-an-exception"),
        pytest.param("cancel", "network", id="future-cancelled"),
    ],
)
def test_a_broken_resolver_is_unknown_never_an_exception(mode: str, detail: str) -> None:
    pending = PendingReverse(BrokenLookups(mode), ipaddress.ip_address(CLIENT_V4), FakeClock())
    assert pending.collect(1.0) == ReverseDns(RdnsStatus.UNKNOWN, detail=detail)


# --- small pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(
            records("b.example", "a.example"), ("b.example", "a.example"), id="order-kept"
        ),
        pytest.param(records("A.Example.", "a.example"), ("a.example",), id="normalized-dedup"),
        pytest.param(records("192.0.2.1", "2001:db8::1"), (), id="addresses-dropped"),
        pytest.param(records("10.20.30", "123"), (), id="all-numeric-dropped"),
        pytest.param(records("x\\032y.example", "."), (), id="escaped-octets-and-root-dropped"),
        pytest.param(records("localhost"), ("localhost",), id="single-label-kept"),
        pytest.param(NXDOMAIN, (), id="no-records"),
    ],
)
def test_ptr_names(answer: DnsAnswer, expected: tuple[str, ...]) -> None:
    assert ptr_names(answer) == expected


@pytest.mark.parametrize(
    ("reverse", "name"),
    [
        pytest.param(
            ReverseDns(RdnsStatus.CONFIRMED, ("a.test", "b.test"), "b.test"),
            "b.test",
            id="confirmed",
        ),
        pytest.param(
            ReverseDns(RdnsStatus.UNCONFIRMED, ("a.test", "b.test")), "a.test", id="first-ptr"
        ),
        pytest.param(ReverseDns(RdnsStatus.MISSING), "", id="none"),
    ],
)
def test_reverse_dns_name(reverse: ReverseDns, name: str) -> None:
    assert reverse.name == name


# --- Postfix's macros --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolve", "ptr", "name", "expected"),
    [
        pytest.param(
            "OK",
            "mail.example.test",
            "mail.example.test",
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test", "mta"),
            id="ok",
        ),
        pytest.param(
            "OK",
            "Mail.Example.TEST.",
            "Mail.Example.TEST",
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test", "mta"),
            id="ok-normalized",
        ),
        pytest.param(
            "OK",
            None,
            "mail.example.test",
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test", "mta"),
            id="ok-without-client-ptr-macro",
        ),
        pytest.param(
            "OK",
            "localhost",
            "localhost",
            ReverseDns(RdnsStatus.CONFIRMED, ("localhost",), "localhost", "mta"),
            id="ok-local-connection",
        ),
        pytest.param("OK", "unknown", "unknown", None, id="ok-without-a-name-is-nonsense"),
        pytest.param(
            "FORGED",
            "dyn-192-0-2-1.isp.test",
            "unknown",
            ReverseDns(RdnsStatus.UNCONFIRMED, ("dyn-192-0-2-1.isp.test",), source="mta"),
            id="forged",
        ),
        pytest.param(
            "FORGED",
            "dyn-192-0-2-1.isp.test",
            "[192.0.2.1]",
            ReverseDns(RdnsStatus.UNCONFIRMED, ("dyn-192-0-2-1.isp.test",), source="mta"),
            id="forged-connect-hostname-form",
        ),
        pytest.param(
            "FAIL",
            "unknown",
            "[IPv6:2001:db8::25]",
            ReverseDns(RdnsStatus.MISSING, source="mta"),
            id="fail-connect-hostname-form",
        ),
        pytest.param("FORGED", "unknown", "unknown", None, id="forged-without-a-name-is-nonsense"),
        pytest.param(
            "FAIL", "unknown", "unknown", ReverseDns(RdnsStatus.MISSING, source="mta"), id="fail"
        ),
        pytest.param(
            "FAIL", None, None, ReverseDns(RdnsStatus.MISSING, source="mta"), id="fail-names-absent"
        ),
        pytest.param(
            "FAIL",
            "old.example.test",
            "unknown",
            ReverseDns(RdnsStatus.UNCONFIRMED, ("old.example.test",), source="mta"),
            id="fail-with-a-ptr-name-did-not-verify",
        ),
        pytest.param(
            "TEMP",
            "unknown",
            "unknown",
            ReverseDns(RdnsStatus.UNKNOWN, source="mta", detail="mta-temp"),
            id="temp-ptr-lookup",
        ),
        pytest.param(
            "TEMP",
            "mail.example.test",
            "unknown",
            ReverseDns(RdnsStatus.UNKNOWN, ("mail.example.test",), source="mta", detail="mta-temp"),
            id="temp-forward-lookup",
        ),
        pytest.param(None, "mail.example.test", "mail.example.test", None, id="macro-not-sent"),
        pytest.param("", "unknown", "unknown", None, id="empty"),
        pytest.param("ok", "a.test", "a.test", None, id="wrong-case"),
        pytest.param("MAYBE", "a.test", "a.test", None, id="garbage"),
        pytest.param("OK\x00", "a.test", "a.test", None, id="nul"),
        pytest.param("FORGED", "bad name\udcff", "unknown", None, id="forged-with-an-invalid-name"),
        pytest.param("FORGED", "192.0.2.1", "unknown", None, id="forged-with-a-numeric-name"),
        pytest.param(
            "OK",
            "x" * 10_000,
            "mail.example.test",
            ReverseDns(RdnsStatus.CONFIRMED, ("mail.example.test",), "mail.example.test", "mta"),
            id="huge-ptr-ignored",
        ),
    ],
)
def test_from_mta_macros(
    resolve: str | None, ptr: str | None, name: str | None, expected: ReverseDns | None
) -> None:
    assert from_mta_macros(resolve, ptr, name) == expected
