"""The fault-injecting DNS proxy, in front of a real rbldnsd, seen through dnspython."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.harness.dns import Rbldnsd, Zone
from tests.harness.dnsproxy import DnsProxy, Fault, StatsSnapshot
from tests.harness.dnsproxy_server import in_zones
from tests.harness.processes import LOOPBACK, process_exists

pytestmark = pytest.mark.e2e

BL = """\
127.0.0.2
192.0.2.99 :127.0.0.4:Listed for a test: $
"""
DBL = """\
.spam.example
"""
LISTED = "2.0.0.127.bl.test"
# Names whose answers cover listed, custom value, TXT, NXDOMAIN, a second zone, and a name
# outside every zone (rbldnsd answers REFUSED).
NAMES: list[tuple[str, str]] = [
    (LISTED, "A"),
    (LISTED, "TXT"),
    ("99.2.0.192.bl.test", "A"),
    ("3.0.0.127.bl.test", "A"),
    ("www.spam.example.dbl.test", "A"),
    ("ham.example.dbl.test", "A"),
    ("elsewhere.example", "A"),
]
# Long enough to tell "no answer" apart from a loopback round trip, short enough to keep the
# file fast.
NO_ANSWER = 0.3


@pytest.fixture(scope="module")
def rbldnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rbldnsd]:
    zones = [Zone("bl.test", "ip4set", BL), Zone("dbl.test", "dnset", DBL)]
    with Rbldnsd(tmp_path_factory.mktemp("rbldnsd"), zones) as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path, rbldnsd: Rbldnsd) -> Iterator[DnsProxy]:
    with DnsProxy(tmp_path, rbldnsd.port) as started:
        yield started


def _sections(message: dns.message.Message) -> tuple[str, str, list[str], list[str], list[str]]:
    """Everything a client sees in an answer except the id (the proxy remaps it upstream)."""
    return (
        dns.rcode.to_text(message.rcode()),
        dns.flags.to_text(message.flags),
        [rrset.to_text() for rrset in message.answer],
        [rrset.to_text() for rrset in message.authority],
        [rrset.to_text() for rrset in message.additional],
    )


def _burst(port: int, names: Sequence[str], timeout: float) -> list[bytes]:
    """Send one UDP query per name (ids 1..n) from one socket; the raw replies that arrive
    within ``timeout``."""
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        for query_id, name in enumerate(names, start=1):
            query = dns.message.make_query(name, "A")
            query.id = query_id
            sock.send(query.to_wire())
        deadline = time.monotonic() + timeout
        for _ in names:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                replies.append(sock.recv(65535))
            except TimeoutError:
                break
    return replies


def _reply_ids(replies: Sequence[bytes]) -> list[int]:
    return sorted(int.from_bytes(reply[:2], "big") for reply in replies)


def _a_records(message: dns.message.Message) -> list[tuple[str, int]]:
    return [
        (rr.to_text(), rrset.ttl)
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.A
        for rr in rrset
    ]


@pytest.mark.parametrize(
    ("build", "error"),
    [
        pytest.param(Fault, None, id="default-is-valid"),
        pytest.param(lambda: Fault(delay=0.05, drop=0.1, only_zones=("a.test",)), None, id="mix"),
        pytest.param(lambda: Fault(drop=1.5), ValueError, id="drop-above-one"),
        pytest.param(lambda: Fault(delay=-0.1), ValueError, id="negative-delay"),
        pytest.param(lambda: Fault(servfail=True, garbage=True), ValueError, id="two-made-up"),
        pytest.param(
            lambda: Fault(only_zones="bl.test"),  # type: ignore[arg-type]  # the error tested
            TypeError,
            id="zones-as-string",
        ),
    ],
)
def test_fault_validation(build: Callable[[], Fault], error: type[Exception] | None) -> None:
    if error is None:
        # What the control file carries comes back unchanged.
        assert Fault.from_json(build().to_json()) == build()
    else:
        with pytest.raises(error):
            build()


@pytest.mark.parametrize(
    ("qname", "zones", "expected"),
    [
        pytest.param("2.0.0.127.bl.test", ("bl.test",), True, id="below-zone"),
        pytest.param("bl.test", ("bl.test",), True, id="zone-apex"),
        pytest.param("2.0.0.127.BL.Test", ("bl.test",), True, id="case-insensitive"),
        pytest.param("2.0.0.127.xbl.test", ("bl.test",), False, id="label-boundary"),
        pytest.param("x.dbl.test", ("bl.test", "dbl.test"), True, id="second-zone"),
    ],
)
def test_in_zones(qname: str, zones: tuple[str, ...], expected: bool) -> None:
    zone_names = tuple(dns.name.from_text(zone) for zone in zones)
    assert in_zones(dns.name.from_text(qname), zone_names) is expected


def test_pass_through_answers_equal_direct_answers(proxy: DnsProxy, rbldnsd: Rbldnsd) -> None:
    for name, rdtype in NAMES:
        direct = _sections(rbldnsd.query(name, rdtype))
        assert _sections(proxy.query(name, rdtype)) == direct, (name, rdtype)
        # rbldnsd has no TCP: the proxy asks it over UDP and frames the answer for TCP.
        assert _sections(proxy.query(name, rdtype, tcp=True)) == direct, (name, rdtype)
    assert [rr.to_text() for rr in proxy.resolver().resolve(LISTED, "A")] == ["127.0.0.2"]

    pid = proxy.pid
    proxy.stop()
    assert not process_exists(pid)
    with pytest.raises(dns.exception.Timeout):
        proxy.query(LISTED, timeout=NO_ANSWER)


def test_delay_is_added_to_each_answer_concurrently(proxy: DnsProxy) -> None:
    delay = 0.2
    proxy.set_fault(Fault(delay=delay))
    for tcp in (False, True):
        started = time.monotonic()
        proxy.query(LISTED, tcp=tcp)
        assert delay <= time.monotonic() - started < delay + 0.2

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: proxy.query(LISTED, timeout=2.0), range(20)))
    elapsed = time.monotonic() - started
    assert all(_a_records(answer) for answer in answers)
    # Serialized, these would take 20 * 0.2 = 4 s.
    assert delay <= elapsed < 4 * delay


@pytest.mark.parametrize(
    "fault",
    [pytest.param(Fault(silent=True), id="silent"), pytest.param(Fault(drop=1.0), id="drop-all")],
)
def test_dropped_queries_time_out(proxy: DnsProxy, fault: Fault) -> None:
    proxy.set_fault(fault)
    proxy.reset_counts()
    with pytest.raises(dns.exception.Timeout):
        proxy.query(LISTED, timeout=NO_ANSWER)
    with pytest.raises(dns.exception.Timeout):
        proxy.query(LISTED, tcp=True, timeout=NO_ANSWER)
    stats = proxy.wait_for_stats(lambda s: s.received == 2)
    assert (stats.dropped, stats.forwarded, stats.answered) == (2, 0, 0)


def test_random_drops_are_reproducible_from_the_seed(proxy: DnsProxy) -> None:
    fault = Fault(drop=0.5, seed=7)
    names = [LISTED] * 40
    answered: list[list[int]] = []
    for _ in range(2):
        # A new generation restarts the random stream from the seed.
        proxy.set_fault(fault)
        before = proxy.stats()
        replies = _burst(proxy.port, names, timeout=NO_ANSWER)

        def all_decided(stats: StatsSnapshot, before: StatsSnapshot = before) -> bool:
            return (stats - before).received == len(names)

        stats = proxy.wait_for_stats(all_decided) - before
        assert stats.answered + stats.dropped == 40
        assert len(replies) == stats.answered
        answered.append(_reply_ids(replies))
    assert answered[0] == answered[1]
    assert 5 < len(answered[0]) < 35


def test_servfail_is_answered_without_asking_upstream(proxy: DnsProxy) -> None:
    proxy.set_fault(Fault(servfail=True))
    proxy.reset_counts()
    for tcp in (False, True):
        answer = proxy.query(LISTED, tcp=tcp)
        assert answer.rcode() == dns.rcode.SERVFAIL
        assert answer.answer == []
    stats = proxy.wait_for_stats(lambda s: s.answered == 2)
    assert stats.forwarded == 0


def test_truncate_sets_tc_over_udp_and_answers_over_tcp(proxy: DnsProxy, rbldnsd: Rbldnsd) -> None:
    proxy.set_fault(Fault(truncate=True))
    over_udp = proxy.query(LISTED)
    assert over_udp.flags & dns.flags.TC
    assert over_udp.answer == []
    direct = _sections(rbldnsd.query(LISTED))
    assert _sections(proxy.query(LISTED, tcp=True)) == direct

    # What a resolver does with TC: ask again over TCP, and get the full answer.
    request = dns.message.make_query(LISTED, "A")
    response, used_tcp = dns.query.udp_with_fallback(
        request, proxy.address, port=proxy.port, timeout=1.0
    )
    assert used_tcp
    assert _sections(response) == direct


def test_garbage_never_parses(proxy: DnsProxy) -> None:
    proxy.set_fault(Fault(garbage=True, seed=3))
    names = [LISTED] * 20
    replies = _burst(proxy.port, names, timeout=1.0)
    assert len(replies) == len(names)
    for reply in replies:
        with pytest.raises(dns.exception.DNSException):
            dns.message.from_wire(reply)
    # Some replies carry the query's id and some do not: a client must not trust either.
    sent_ids = set(range(1, len(names) + 1))
    matching = [reply_id for reply_id in _reply_ids(replies) if reply_id in sent_ids]
    assert 0 < len(matching) < len(names)

    with pytest.raises(dns.exception.DNSException):
        proxy.query(LISTED)
    # A client that skips what it cannot parse is left with no answer at all.
    request = dns.message.make_query(LISTED, "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(
            request, proxy.address, port=proxy.port, timeout=NO_ANSWER, ignore_errors=True
        )


def test_outside_127_rewrites_a_records_and_keeps_ttls(proxy: DnsProxy, rbldnsd: Rbldnsd) -> None:
    proxy.set_fault(Fault(outside_127=True))
    loopback = ipaddress.ip_network("127.0.0.0/8")
    for name in (LISTED, "99.2.0.192.bl.test", "www.spam.example.dbl.test"):
        direct = _a_records(rbldnsd.query(name))
        for tcp in (False, True):
            rewritten = _a_records(proxy.query(name, tcp=tcp))
            assert len(rewritten) == len(direct)
            assert [ttl for _, ttl in rewritten] == [ttl for _, ttl in direct]
            assert not any(ipaddress.ip_address(a) in loopback for a, _ in rewritten)
    # Other record types pass unchanged.
    assert _sections(proxy.query(LISTED, "TXT")) == _sections(rbldnsd.query(LISTED, "TXT"))


def test_only_zones_leaves_other_zones_intact(proxy: DnsProxy, rbldnsd: Rbldnsd) -> None:
    proxy.set_fault(Fault(servfail=True, only_zones=("bl.test",)))
    assert proxy.query(LISTED).rcode() == dns.rcode.SERVFAIL
    for name in ("www.spam.example.dbl.test", "2.0.0.127.xbl.test"):
        assert _sections(proxy.query(name)) == _sections(rbldnsd.query(name))

    proxy.set_fault(Fault(silent=True, only_zones=("dbl.test",)))
    assert _sections(proxy.query(LISTED)) == _sections(rbldnsd.query(LISTED))
    with pytest.raises(dns.exception.Timeout):
        proxy.query("www.spam.example.dbl.test", timeout=NO_ANSWER)


def test_counts_match_the_queries_sent(proxy: DnsProxy) -> None:
    before = proxy.stats()
    for _ in range(10):
        proxy.query(LISTED)
    for _ in range(5):
        proxy.query(LISTED, "TXT")
    for _ in range(3):
        proxy.query("ham.example.dbl.test", tcp=True)
    stats = proxy.wait_for_stats(lambda s: (s - before).answered == 18) - before
    assert stats.received == 18
    assert dict(stats.by_qtype) == {"A": 13, "TXT": 5}
    assert dict(stats.by_transport) == {"udp": 15, "tcp": 3}
    assert (stats.forwarded, stats.dropped, stats.upstream_timeouts) == (18, 0, 0)
    assert stats.malformed == stats.overloaded == stats.pending == 0

    proxy.reset_counts()
    assert proxy.stats().received == 0
    proxy.query(LISTED)
    assert proxy.wait_for_stats(lambda s: s.answered == 1).received == 1

    # Not DNS at all: counted apart, never forwarded.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"hello", (LOOPBACK, proxy.port))
    assert proxy.wait_for_stats(lambda s: s.malformed == 1).received == 1

    # The final stats file, written on SIGTERM, still holds the counts.
    proxy.stop()
    assert proxy.stats().answered == 1


def test_set_fault_switches_behaviour_on_the_same_port(proxy: DnsProxy) -> None:
    pid, port = proxy.pid, proxy.port
    assert proxy.query(LISTED).rcode() == dns.rcode.NOERROR

    proxy.set_fault(Fault(servfail=True))
    assert proxy.query(LISTED).rcode() == dns.rcode.SERVFAIL
    proxy.set_fault(Fault(silent=True))
    with pytest.raises(dns.exception.Timeout):
        proxy.query(LISTED, timeout=NO_ANSWER)
    proxy.set_fault(Fault())
    assert _a_records(proxy.query(LISTED))
    assert (proxy.pid, proxy.port) == (pid, port)

    # The fault in force survives a restart on the same port.
    proxy.set_fault(Fault(servfail=True))
    proxy.stop()
    proxy.start()
    assert proxy.port == port
    assert proxy.pid != pid
    assert proxy.query(LISTED).rcode() == dns.rcode.SERVFAIL
