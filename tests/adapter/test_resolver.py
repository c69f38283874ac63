"""The stub resolver: real lookups over UDP (and TCP) against a scripted DNS server running
in the test process (tests/fake_dns_server.py), and the nameservers of resolv.conf."""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer, Promise, wait_all
from spamgate.dns.resolver import Resolver, system_nameservers
from tests.fake_dns_server import (
    DOMAIN,
    NXDOMAIN,
    QNAME,
    SILENT,
    Behaviour,
    FakeDnsServer,
    resolver_pool,
)
from tests.harness.processes import find_program, wait_until

# --- scripted servers and resolvers, stopped when the test ends --------------------------------


@pytest.fixture
def servers() -> Iterator[Callable[[Behaviour], FakeDnsServer]]:
    started: list[FakeDnsServer] = []

    def start(default: Behaviour = NXDOMAIN) -> FakeDnsServer:
        server = FakeDnsServer(default)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(servers: Callable[[Behaviour], FakeDnsServer]) -> FakeDnsServer:
    return servers(NXDOMAIN)


@pytest.fixture
def resolvers() -> Iterator[Callable[..., Resolver]]:
    with resolver_pool() as start:
        yield start


def timed(future: Promise[DnsAnswer], limit: float = 3.0) -> tuple[DnsAnswer, float]:
    started = time.monotonic()
    answer = future.result(timeout=limit)
    return answer, time.monotonic() - started


# --- Resolver against the scripted server ------------------------------------------------------


def test_listed_name_resolves_to_its_codes(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2", "127.0.0.10"), ttl=600)
    resolver = resolvers(server.nameserver)
    answer, _ = timed(resolver.lookup(QNAME))
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10", "127.0.0.2"), ttl=600)
    assert server.packets(QNAME) == 1
    assert resolver.stats.queries_sent == 1


def test_second_lookup_comes_from_the_cache(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",), ttl=600)
    resolver = resolvers(server.nameserver)
    first, _ = timed(resolver.lookup(QNAME))

    again = resolver.lookup(QNAME.upper())
    assert again.done()
    assert again.result() == first
    assert server.packets(QNAME) == 1
    assert (resolver.stats.lookups, resolver.stats.cache_hits) == (2, 1)


def test_nxdomain_is_an_answer_and_is_cached(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    resolver = resolvers(server.nameserver)
    answer, _ = timed(resolver.lookup(QNAME))
    assert answer == DnsAnswer(AnswerKind.NXDOMAIN, ttl=900)
    assert resolver.lookup(QNAME).result(timeout=0) == answer
    assert server.packets(QNAME) == 1


def test_name_never_answered_times_out_by_the_deadline(
    servers: Callable[[Behaviour], FakeDnsServer], resolvers: Callable[..., Resolver]
) -> None:
    silent = servers(SILENT)
    resolver = resolvers(silent.nameserver, query_timeout=0.2, deadline=0.5)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert answer.kind is AnswerKind.TIMEOUT
    assert 0.45 <= elapsed < 0.5 + 0.4
    assert 2 <= silent.packets(QNAME) <= 4  # retried within the deadline, never beyond
    assert len(resolver.cache) == 0


def test_closed_nameserver_port_fails_at_once_not_at_the_deadline(
    resolvers: Callable[..., Resolver],
) -> None:
    """Queries leave on a connected socket, so the kernel reports the ICMP port-unreachable
    of a stopped local resolver (an unconnected socket would wait out the deadline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    resolver = resolvers(Nameserver("127.0.0.1", port), query_timeout=0.5, deadline=2.0)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert (answer.kind, answer.detail) == (AnswerKind.NETWORK, "Connection refused")
    assert elapsed < 0.5
    assert len(resolver.cache) == 0


def test_concurrent_lookups_of_one_name_share_one_query(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.4",), ttl=300, delay=0.3)
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    barrier = threading.Barrier(4)
    asked: list[Promise[DnsAnswer]] = []
    lock = threading.Lock()

    def ask_five() -> None:
        barrier.wait(timeout=2)
        mine = [resolver.lookup(QNAME) for _ in range(5)]
        with lock:
            asked.extend(mine)

    threads = [threading.Thread(target=ask_five) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2)

    wait_all(asked, 3)
    assert sum(1 for f in asked if f.done()) == 20
    assert {f.result() for f in asked} == {DnsAnswer(AnswerKind.RECORDS, ("127.0.0.4",), 300)}
    assert server.packets(QNAME) == 1
    assert (resolver.stats.lookups, resolver.stats.merged) == (20, 19)
    assert resolver.stats.queries_sent == 1


def test_second_nameserver_answers_when_the_first_is_silent(
    servers: Callable[[Behaviour], FakeDnsServer], resolvers: Callable[..., Resolver]
) -> None:
    silent, good = servers(SILENT), servers(NXDOMAIN)
    good.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",), ttl=60)
    resolver = resolvers(silent.nameserver, good.nameserver, query_timeout=0.2, deadline=1.0)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
    assert 0.15 <= elapsed < 0.2 + 0.4
    assert (silent.packets(QNAME), good.packets(QNAME)) == (1, 1)


@pytest.mark.parametrize(
    ("rcode", "expected"),
    [
        pytest.param(dns.rcode.SERVFAIL, DnsAnswer(AnswerKind.SERVFAIL), id="servfail"),
        pytest.param(dns.rcode.REFUSED, DnsAnswer(AnswerKind.REFUSED), id="refused"),
        pytest.param(
            dns.rcode.NOTIMP, DnsAnswer(AnswerKind.OTHER_RCODE, detail="NOTIMP"), id="notimp"
        ),
    ],
)
def test_failure_from_the_only_server_is_prompt_and_not_cached(
    server: FakeDnsServer,
    resolvers: Callable[..., Resolver],
    rcode: dns.rcode.Rcode,
    expected: DnsAnswer,
) -> None:
    server.script[QNAME, "A"] = Behaviour(rcode=rcode)
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert answer == expected
    assert elapsed < 0.5  # not held until the 2 s deadline
    assert server.packets(QNAME) == 1
    assert len(resolver.cache) == 0

    again, _ = timed(resolver.lookup(QNAME))
    assert again == expected
    assert server.packets(QNAME) == 2


def test_answers_are_cached_per_record_type(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[DOMAIN, "A"] = Behaviour(records=("192.0.2.10",), ttl=600)
    server.script[DOMAIN, "MX"] = Behaviour(records=("10 mx.example.test.",), ttl=600)
    resolver = resolvers(server.nameserver)
    a_answer, _ = timed(resolver.lookup(DOMAIN))
    mx_answer, _ = timed(resolver.lookup(DOMAIN, "MX"))
    assert a_answer == DnsAnswer(AnswerKind.RECORDS, ("192.0.2.10",), ttl=600)
    assert mx_answer == DnsAnswer(AnswerKind.RECORDS, ("10 mx.example.test",), ttl=600)
    assert (server.packets(DOMAIN, "A"), server.packets(DOMAIN, "MX")) == (1, 1)

    assert resolver.lookup(DOMAIN, "A").result(timeout=0) == a_answer
    assert resolver.lookup(DOMAIN, "MX").result(timeout=0) == mx_answer
    assert resolver.stats.cache_hits == 2
    # An AAAA lookup of the same name is a question of its own, not served from either entry.
    aaaa, _ = timed(resolver.lookup(DOMAIN, "AAAA"))
    assert aaaa == DnsAnswer(AnswerKind.NXDOMAIN, ttl=900)
    assert server.packets(DOMAIN, "AAAA") == 1


def test_concurrent_lookups_of_two_types_are_not_merged(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[DOMAIN, "A"] = Behaviour(records=("192.0.2.10",), delay=0.2)
    server.script[DOMAIN, "TXT"] = Behaviour(records=('"hello"',), delay=0.2)
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    a_future, txt_future = resolver.lookup(DOMAIN), resolver.lookup(DOMAIN, "TXT")
    assert timed(a_future)[0].records == ("192.0.2.10",)
    assert timed(txt_future)[0].records == ("hello",)
    assert resolver.stats.merged == 0
    assert (server.packets(DOMAIN, "A"), server.packets(DOMAIN, "TXT")) == (1, 1)


def test_ptr_and_mx_lookups_against_the_server(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    ptr_qname = ipaddress.IPv4Address("192.0.2.1").reverse_pointer
    server.script[ptr_qname, "PTR"] = Behaviour(records=("Mail.Example.TEST.",), ttl=3600)
    server.script[DOMAIN, "MX"] = Behaviour(records=("10 mx1.example.test.", "0 ."), ttl=60)
    resolver = resolvers(server.nameserver)
    ptr, _ = timed(resolver.lookup(ptr_qname, "PTR"))
    mx, _ = timed(resolver.lookup(DOMAIN.upper(), "MX"))
    assert ptr == DnsAnswer(AnswerKind.RECORDS, ("mail.example.test",), ttl=3600)
    assert mx == DnsAnswer(AnswerKind.RECORDS, ("0 .", "10 mx1.example.test"), ttl=60)
    assert (server.packets(ptr_qname, "PTR"), server.packets(DOMAIN, "MX")) == (1, 1)


@pytest.mark.parametrize(
    "rdtype",
    [
        pytest.param("SOA", id="soa"),
        pytest.param("ANY", id="any"),
        pytest.param("a", id="lower-case"),
        pytest.param("", id="empty"),
    ],
)
def test_unsupported_record_type_is_a_programming_error(rdtype: str) -> None:
    resolver = Resolver(ResolverSettings(nameservers=(Nameserver("127.0.0.1", 9),)))
    with pytest.raises(ValueError, match="unsupported record type"):
        resolver.lookup(QNAME, rdtype)
    assert resolver.stats.lookups == 0


@pytest.mark.parametrize(
    "qname",
    [
        pytest.param("a..example.test", id="empty-label"),
        pytest.param("x" * 64 + ".example.test", id="label-over-63"),
        pytest.param(".".join(["x" * 60] * 5), id="name-over-255"),
        pytest.param("bad\udcff.example.test", id="surrogate"),
    ],
)
def test_name_that_cannot_be_asked_is_malformed_at_once(
    server: FakeDnsServer, resolvers: Callable[..., Resolver], qname: str
) -> None:
    resolver = resolvers(server.nameserver)
    future = resolver.lookup(qname, "MX")
    assert future.done()
    assert future.result() == DnsAnswer(AnswerKind.MALFORMED, detail="bad query name")
    assert sum(server.received.values()) == 0


def test_lookup_before_start_is_a_network_failure() -> None:
    resolver = Resolver(ResolverSettings(nameservers=(Nameserver("127.0.0.1", 9),)))
    future = resolver.lookup(QNAME)
    assert future.done()
    assert future.result() == DnsAnswer(AnswerKind.NETWORK, detail="resolver not running")


def test_truncated_answer_is_asked_again_over_tcp(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[DOMAIN, "TXT"] = Behaviour(records=('"v=spf1 -all"',), truncate=True)
    server.serve_tcp()
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    answer, _ = timed(resolver.lookup(DOMAIN, "TXT"))
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("v=spf1 -all",), ttl=300)
    assert (server.packets(DOMAIN, "TXT"), server.tcp_queries) == (1, 1)


def test_truncated_answer_without_tcp_fails_promptly(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script[DOMAIN, "TXT"] = Behaviour(records=('"x"',), truncate=True)
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    answer, elapsed = timed(resolver.lookup(DOMAIN, "TXT"))
    assert (answer.kind, answer.detail) == (AnswerKind.NETWORK, "Connection refused")
    assert elapsed < 0.5


def test_a_forged_answer_with_another_id_is_ignored(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    """A datagram that is not the response to the question in flight never answers it."""
    server.script[QNAME, "A"] = Behaviour(rcode=dns.rcode.NXDOMAIN, forge_first=True, delay=0.1)
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    answer, _ = timed(resolver.lookup(QNAME))
    assert answer.kind is AnswerKind.NXDOMAIN


def test_a_late_answer_to_the_first_attempt_is_taken(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    """The first answer comes after the query timeout: it still answers the question, while
    the second attempt is under way."""
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",), delay=0.6, delay_only_first=False)
    resolver = resolvers(server.nameserver, query_timeout=0.4, deadline=2.0)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=300)
    assert server.packets(QNAME) == 2
    # The first answer (0.6 s), not the second (1.0 s); wide apart for a busy machine.
    assert 0.55 <= elapsed < 0.95


def test_sockets_are_replaced_so_source_ports_vary(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    asked: list[Promise[DnsAnswer]] = []
    for batch in range(6):  # in batches the scripted server (Python) keeps up with
        asked += [resolver.lookup(f"{batch}-{n}.example.test") for n in range(100)]
        wait_all(asked[-100:], 3)
    assert {f.result(timeout=0).kind for f in asked} == {AnswerKind.NXDOMAIN}
    assert len(server.source_ports) >= 9  # a new socket every 64 queries


def lookup_then_stop(server: FakeDnsServer) -> Promise[DnsAnswer]:
    """Start a lookup the server never answers and stop the resolver while it is in flight."""
    settings = ResolverSettings(nameservers=(server.nameserver,), query_timeout=5, deadline=10)
    resolver = Resolver(settings)
    resolver.start()
    future = resolver.lookup(QNAME)
    for _ in range(100):  # until the query is on the wire
        if server.packets(QNAME):
            break
        time.sleep(0.01)
    resolver.stop()
    return future


def test_stop_settles_lookups_in_flight(servers: Callable[[Behaviour], FakeDnsServer]) -> None:
    future = lookup_then_stop(servers(SILENT))
    answer = future.result(timeout=0.5)
    assert (answer.kind, answer.detail) == (AnswerKind.NETWORK, "resolver stopped")
    gc.collect()  # a task destroyed unsettled would warn here; -W error makes that fail


# --- system_nameservers ------------------------------------------------------------------------


def resolv_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
            "options edns0\n",
            (Nameserver("192.0.2.53"), Nameserver("2001:db8::53")),
            id="v4-and-v6",
        ),
        pytest.param(
            "nameserver fe80::1%eth0\n", (Nameserver("fe80::1"),), id="scoped-ipv6-loses-scope"
        ),
        pytest.param(
            "nameserver\t198.51.100.1   # upstream\n",
            (Nameserver("198.51.100.1"),),
            id="tabs-and-trailing-comment",
        ),
        pytest.param(
            "search example.org\noptions ndots:2\n", (Nameserver("127.0.0.1"),), id="none"
        ),
        pytest.param("", (Nameserver("127.0.0.1"),), id="empty"),
        pytest.param("nameserver\n", (Nameserver("127.0.0.1"),), id="nameserver-without-address"),
        pytest.param("; nameserver 192.0.2.9\n", (Nameserver("127.0.0.1"),), id="commented-out"),
    ],
)
def test_system_nameservers(tmp_path: Path, text: str, expected: tuple[Nameserver, ...]) -> None:
    assert system_nameservers(resolv_conf(tmp_path, text)) == expected


def test_system_nameservers_skips_a_bad_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = resolv_conf(tmp_path, "nameserver dns.example\nnameserver 192.0.2.53\n")
    with caplog.at_level(logging.WARNING, logger="spamgate.resolver"):
        assert system_nameservers(path) == (Nameserver("192.0.2.53"),)
    assert caplog.messages == [f"ignoring nameserver 'dns.example' in {path}"]


def test_system_nameservers_without_the_file(tmp_path: Path) -> None:
    assert system_nameservers(str(tmp_path / "absent")) == (Nameserver("127.0.0.1"),)


def test_a_spare_socket_opened_twice_while_reading_answers_does_not_hang_the_resolver(
    server: FakeDnsServer,
) -> None:
    """The deadlock `make soak` found (dns-truncated, 8 sessions hung for good): a thread
    reading answers holds _reading and retries a failed attempt; the retry's _provide_for
    finds that another thread opened the spare socket meanwhile, and closing its own extra
    one took _reading again. Now the extra socket is retired, closed later by the receiver."""
    resolver = Resolver(ResolverSettings(nameservers=(server.nameserver,)))
    resolver.start()
    opened = resolver._open

    def another_thread_was_quicker(index: int) -> object:
        resolver._spares[index] = opened(index)
        return opened(index)

    resolver._spares[0] = None
    resolver._open = another_thread_was_quicker  # type: ignore[method-assign]
    finished = threading.Event()

    def retry_while_reading() -> None:
        with resolver._reading:
            resolver._provide_for(0)
        finished.set()

    threading.Thread(target=retry_while_reading, daemon=True).start()
    # On failure the resolver is left running: stopping it would wait for _reading forever.
    assert finished.wait(5), "the resolver deadlocked on its own reading lock"
    resolver._open = opened  # type: ignore[method-assign]
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",))
    try:
        answer = resolver.lookup(QNAME).result(timeout=5)
    finally:
        resolver.stop()
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=300)


def test_answers_come_while_a_session_reading_them_waits_for_the_interpreter_lock(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    """A session reading the answers that have arrived (read_arrived) holds _reading, and
    under a flood it can lose the interpreter lock there and wait its turn behind hundreds
    of threads. The receiver does not wait for it: here the test holds _reading for good,
    and the answer comes all the same (before, the receiver waited for it: 9 waits of 140 ms
    on average in one round at 200 sessions, issue 13)."""
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",))
    resolver = resolvers(server.nameserver)
    with resolver._reading:
        answer, _ = timed(resolver.lookup(QNAME))
    assert answer.records == ("127.0.0.2",)


def test_the_receiver_and_a_session_reading_at_once_each_get_their_own_datagrams(
    server: FakeDnsServer, resolvers: Callable[..., Resolver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver reads while a session reads too, each into a buffer of its own. With one
    buffer, a thread switch between one thread's read and its copy let the other's datagram
    overwrite it: here the receiver is held between the two while a session reads the next
    answer, and with one buffer the first answer was lost and waited for the retry (5 s)."""
    server.script["first.example.test", "A"] = Behaviour(records=("127.0.0.2",))
    server.script["second.example.test", "A"] = Behaviour(records=("127.0.0.3",), delay=0.3)
    resolver = resolvers(server.nameserver, query_timeout=5.0, deadline=10.0)
    receiver = started_receiver(resolver)
    copy = ctypes.string_at
    receiver_holds_a_datagram = threading.Event()
    session_has_read = threading.Event()

    def held_copy(buffer: object, size: int) -> bytes:
        if threading.get_native_id() == receiver and not receiver_holds_a_datagram.is_set():
            receiver_holds_a_datagram.set()
            session_has_read.wait(5)
        return copy(buffer, size)  # type: ignore[arg-type]

    monkeypatch.setattr(ctypes, "string_at", held_copy)
    first = resolver.lookup("first.example.test")
    second = resolver.lookup("second.example.test")
    assert receiver_holds_a_datagram.wait(3), "the receiver read nothing"
    wait_until(lambda: server.packets("second.example.test"), timeout=3, what="the 2nd query")
    time.sleep(0.6)  # the second answer (0.3 s) waits in the socket
    resolver.read_arrived()  # a session reads it, while the receiver holds the first
    session_has_read.set()
    assert timed(second, 1.0)[0].records == ("127.0.0.3",)
    assert timed(first, 1.0)[0].records == ("127.0.0.2",)


def test_a_retired_socket_is_closed_only_when_no_session_reads(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    """A session reading answers may have read a socket's descriptor number a moment ago; a
    socket closed under it could give that number to another socket at once. So the
    receiver closes the sockets it retired (one every 64 queries) only when no session
    reads, and at its next wake-up otherwise."""
    resolver = resolvers(server.nameserver, query_timeout=1.0, deadline=2.0)
    with resolver._reading:
        asked: list[Promise[DnsAnswer]] = []
        for batch in range(3):  # in batches the scripted server (Python) keeps up with
            asked += [resolver.lookup(f"{batch}-{n}.example.test") for n in range(50)]
            wait_all(asked[-50:], 3)
        retired = list(resolver._retired)
        assert len(retired) >= 2  # 150 queries, a new socket every 64
        assert all(c.sock.fileno() >= 0 for c in retired), "closed while a session read"
    resolver._wake()
    wait_until(
        lambda: all(c.sock.fileno() == -1 for c in retired),
        timeout=5,
        what="the retired sockets closed",
    )
    assert not resolver._retired
    assert {f.result(timeout=0).kind for f in asked} == {AnswerKind.NXDOMAIN}


# --- the receiver thread's priority (resolver.realtime_receiver) --------------------------------


def started_receiver(resolver: Resolver) -> int:
    wait_until(
        lambda: resolver.receiver_thread_id is not None, timeout=5, what="the receiver thread"
    )
    thread_id = resolver.receiver_thread_id
    assert thread_id is not None
    return thread_id


def test_the_receiver_thread_runs_at_the_lowest_real_time_priority(
    server: FakeDnsServer,
    resolvers: Callable[..., Resolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """make test runs as root, which may: SCHED_RR at priority 1, said in the log, and the
    answers come as before."""
    caplog.set_level(logging.INFO, logger="spamgate.resolver")
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",))
    resolver = resolvers(server.nameserver)
    thread_id = started_receiver(resolver)
    assert os.sched_getscheduler(thread_id) == os.SCHED_RR
    assert os.sched_getparam(thread_id).sched_priority == 1
    # Only the receiver: the thread that started it runs as it did.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    answer, _ = timed(resolver.lookup(QNAME))
    assert answer.records == ("127.0.0.2",)
    assert "DNS receiver thread at real-time priority (SCHED_RR 1)" in caplog.text


def test_realtime_receiver_off_leaves_the_receiver_thread_as_it_was(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    resolver = resolvers(server.nameserver, realtime_receiver=False)
    assert os.sched_getscheduler(started_receiver(resolver)) == os.SCHED_OTHER


REFUSED_REALTIME = """
import logging, os, sys
from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns.resolver import Resolver
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
resolver = Resolver(ResolverSettings(nameservers=(Nameserver("127.0.0.1", int(sys.argv[1])),)))
resolver.start()
answer = resolver.lookup(sys.argv[2]).result(timeout=5)
print("policy", os.sched_getscheduler(resolver.receiver_thread_id), "records", answer.records)
resolver.stop()
"""


def test_a_receiver_refused_real_time_says_so_and_answers_as_usual(
    server: FakeDnsServer,
) -> None:
    """As an unprivileged daemon without LimitRTPRIO: root without CAP_SYS_NICE (setpriv)
    and a RLIMIT_RTPRIO of 0 is refused SCHED_RR, as such a daemon is."""
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",))
    result = subprocess.run(
        [
            find_program("setpriv"),
            "--bounding-set=-sys_nice",
            find_program("prlimit"),
            "--rtprio=0:0",
            sys.executable,
            "-c",
            REFUSED_REALTIME,
            str(server.nameserver.port),
            QNAME,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING DNS receiver thread at normal priority: real-time refused" in result.stderr
    assert "LimitRTPRIO=1" in result.stderr
    assert f"policy {os.SCHED_OTHER} records ('127.0.0.2',)" in result.stdout


@pytest.mark.parametrize("realtime", [True, False])
def test_a_session_about_to_wait_reads_arrived_answers_itself_real_time_receiver_or_not(
    server: FakeDnsServer, realtime: bool
) -> None:
    """A session about to wait reads what has arrived itself (read_arrived), with a real-time
    receiver too: a libmilter worker that does not wait is free for the next command, and
    without these reads the soak suite's 200-session burst had RCPT TO waits of 4-5 s in 3 of
    11 runs (bench/RESULTS.md, "Before and after")."""
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",), delay=0.3)
    settings = ResolverSettings(nameservers=(server.nameserver,), realtime_receiver=realtime)
    resolver = Resolver(settings)
    resolver.start()
    here = threading.current_thread()
    reads: list[threading.Thread] = []
    read = resolver._read

    def counted(channel: object, receive: Callable[[socket.socket], bytes]) -> None:
        reads.append(threading.current_thread())
        read(channel, receive)  # type: ignore[arg-type]

    try:
        started_receiver(resolver)
        resolver._read = counted  # type: ignore[method-assign]
        pending = resolver.lookup(QNAME)
        resolver.read_arrived()
        answer, _ = timed(pending)
    finally:
        resolver.stop()
    assert answer.records == ("127.0.0.2",)
    assert here in reads
