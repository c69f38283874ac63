"""The stub resolver: response interpretation, the answer cache, and real lookups over UDP
against a scripted DNS server running in the test process."""

from __future__ import annotations

import collections
import gc
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns import dnswire
from spamgate.dns.answers import AnswerKind, DnsAnswer, Promise, wait_all
from spamgate.dns.resolver import (
    AnswerCache,
    Question,
    Resolver,
    system_nameservers,
)
from tests.fakes import FakeClock

QNAME = "2.0.0.127.zen.test"
SOA = "ns.zen.test. hostmaster.zen.test. 1 3600 600 86400 {minimum}"


# --- reading a response (dnswire) -------------------------------------------------------------


def interpret(
    message: dns.message.Message, qname: str = QNAME, qtype: str = "A"
) -> DnsAnswer | None:
    """What the resolver makes of `message` on the wire, as the response to (qname, qtype)
    with the message's ID; None: it is not that response, and the question keeps waiting."""
    question = dnswire.question_for(qname, qtype)
    assert question is not None
    response = dnswire.parse_response(message.to_wire(), message.id, question)
    return None if response is None else response.answer


def response(
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    answer: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (),
    authority: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (),
    qtype: str = "A",
    qname: str = QNAME,
) -> dns.message.Message:
    """A response to a `qtype` query for `qname`, sent through the wire format as a server's
    would be."""
    query = dns.message.make_query(qname, dns.rdatatype.from_text(qtype))
    message = dns.message.make_response(query)
    message.set_rcode(rcode)
    for section, records in ((message.answer, answer), (message.authority, authority)):
        for owner, ttl, rdtype, rdatas in records:
            name = dns.name.from_text(owner)
            section.append(dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas))
    return dns.message.from_wire(message.to_wire())


def soa(minimum: int, ttl: int = 3600) -> tuple[str, int, str, tuple[str, ...]]:
    return ("zen.test.", ttl, "SOA", (SOA.format(minimum=minimum),))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            response(answer=((QNAME, 600, "A", ("127.0.0.2", "127.0.0.10")),)),
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10", "127.0.0.2"), ttl=600),
            id="addresses-with-ttl",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, authority=(soa(minimum=150),)),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=150),
            id="nxdomain-ttl-from-soa-minimum",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, authority=(soa(minimum=900, ttl=60),)),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=60),
            id="nxdomain-ttl-from-soa-ttl",
        ),
        pytest.param(
            response(authority=(soa(minimum=120),)),
            DnsAnswer(AnswerKind.NODATA, ttl=120),
            id="nodata",
        ),
        pytest.param(
            response(answer=((QNAME, 600, "TXT", ('"spam"',)),)),
            DnsAnswer(AnswerKind.NODATA, ttl=300),
            id="only-other-types-no-soa",
        ),
        pytest.param(response(dns.rcode.SERVFAIL), DnsAnswer(AnswerKind.SERVFAIL), id="servfail"),
        pytest.param(response(dns.rcode.REFUSED), DnsAnswer(AnswerKind.REFUSED), id="refused"),
        pytest.param(
            response(dns.rcode.NOTIMP),
            DnsAnswer(AnswerKind.OTHER_RCODE, detail="NOTIMP"),
            id="other-rcode",
        ),
        pytest.param(
            response(
                answer=(
                    (QNAME, 600, "CNAME", ("listed.zen.test.",)),
                    ("listed.zen.test.", 120, "A", ("127.0.0.4",)),
                )
            ),
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.4",), ttl=120),
            id="cname-chain",
        ),
        pytest.param(
            response(answer=((QNAME, 60, "CNAME", ("listed.zen.test.",)),)),
            DnsAnswer(AnswerKind.NODATA, ttl=60),
            id="cname-to-nothing",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, answer=((QNAME, 60, "A", ("127.0.0.2",)),)),
            DnsAnswer(AnswerKind.MALFORMED, detail="AnswerForNXDOMAIN"),
            id="nxdomain-with-answer",
        ),
        pytest.param(dns.message.Message(), None, id="not-a-response-is-ignored"),
    ],
)
def test_interpret(message: dns.message.Message, expected: DnsAnswer | None) -> None:
    assert interpret(message) == expected


def test_a_response_without_the_question_is_ignored() -> None:
    message = dns.message.make_response(dns.message.make_query(QNAME, dns.rdatatype.A))
    message.question = []
    assert interpret(message) is None


def test_a_servfail_need_not_repeat_the_question() -> None:
    """As dnspython's Message.is_response: FORMERR, SERVFAIL, NOTIMP and REFUSED answers
    may come with an empty question section."""
    message = dns.message.make_response(dns.message.make_query(QNAME, dns.rdatatype.A))
    message.question = []
    message.set_rcode(dns.rcode.SERVFAIL)
    assert interpret(message) == DnsAnswer(AnswerKind.SERVFAIL)


@pytest.mark.parametrize(
    ("qname", "qtype", "response_id_delta"),
    [
        pytest.param(QNAME, "A", 1, id="another-id"),
        pytest.param("3.0.0.127.zen.test", "A", 0, id="another-name"),
        pytest.param(QNAME, "TXT", 0, id="another-type"),
    ],
)
def test_a_response_to_another_question_is_ignored(
    qname: str, qtype: str, response_id_delta: int
) -> None:
    """A stray or forged datagram never answers a question: the question keeps waiting."""
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    question = dnswire.question_for(qname, qtype)
    assert question is not None
    wire = message.to_wire()
    assert dnswire.parse_response(wire, message.id + response_id_delta, question) is None


def test_names_compare_without_regard_to_case() -> None:
    message = response(answer=((QNAME.upper(), 600, "A", ("127.0.0.2",)),), qname=QNAME.upper())
    assert interpret(message) == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=600)


def test_truncated_response_asks_for_tcp() -> None:
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    message.flags |= dns.flags.TC
    question = dnswire.question_for(QNAME, "A")
    assert question is not None
    parsed = dnswire.parse_response(message.to_wire(), message.id, question)
    assert parsed is not None and parsed.truncated


def _answer_owner_points_at_itself(wire: bytes) -> bytes:
    owner = 12 + len(dns.name.from_text(QNAME).to_wire() or b"") + 4
    return wire[:owner] + bytes((0xC0 | owner >> 8, owner & 0xFF)) + wire[owner + 2 :]


def _one_more_answer_than_there_is(wire: bytes) -> bytes:
    return wire[:6] + (int.from_bytes(wire[6:8], "big") + 1).to_bytes(2, "big") + wire[8:]


@pytest.mark.parametrize(
    ("wire_edit", "detail"),
    [
        pytest.param(lambda w: w[:-3], "FormError", id="cut-short"),
        pytest.param(_answer_owner_points_at_itself, "BadPointer", id="pointer-loop"),
        pytest.param(_one_more_answer_than_there_is, "FormError", id="count-beyond-the-data"),
    ],
)
def test_a_broken_response_is_malformed(wire_edit: Callable[[bytes], bytes], detail: str) -> None:
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    question = dnswire.question_for(QNAME, "A")
    assert question is not None
    parsed = dnswire.parse_response(wire_edit(message.to_wire()), message.id, question)
    assert parsed == dnswire.Response(DnsAnswer(AnswerKind.MALFORMED, detail=detail))


PTR_QNAME = "1.2.0.192.in-addr.arpa"
DOMAIN = "example.test"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            response(
                answer=(
                    (QNAME, 300, "AAAA", ("2001:DB8:0:0::1", "2001:db8::1", "::FFFF:c000:201")),
                ),
                qtype="AAAA",
            ),
            DnsAnswer(AnswerKind.RECORDS, ("2001:db8::1", "::ffff:192.0.2.1"), ttl=300),
            id="aaaa-compressed-deduplicated",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 3600, "PTR", ("Mail.Example.COM.", "mail.example.com.")),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("mail.example.com",), ttl=3600),
            id="ptr-lower-case-no-final-dot",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 60, "PTR", ("b.example.", "a.example.", "c.example.")),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("a.example", "b.example", "c.example"), ttl=60),
            id="ptr-several-names-sorted",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 60, "PTR", ("evil\\032name\\.x\\255.example.",)),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("evil\\032name\\.x\\255.example",), ttl=60),
            id="ptr-hostile-octets-stay-escaped",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 600, "MX", ("10 MX1.Example.TEST.", "5 mx2.example.test.")),),
                qtype="MX",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("10 mx1.example.test", "5 mx2.example.test"), ttl=600),
            id="mx-preference-and-exchange",
        ),
        pytest.param(
            response(answer=((DOMAIN, 600, "MX", ("0 .",)),), qtype="MX", qname=DOMAIN),
            DnsAnswer(AnswerKind.RECORDS, ("0 .",), ttl=600),
            id="mx-rfc7505-null-mx",
        ),
        pytest.param(
            response(
                answer=(
                    (DOMAIN, 600, "CNAME", ("alias.example.test.",)),
                    ("alias.example.test.", 200, "MX", ("20 mx.example.test.",)),
                ),
                qtype="MX",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("20 mx.example.test",), ttl=200),
            id="mx-through-cname",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"v=spf1 " "ip4:192.0.2.0/24 " "-all"',)),),
                qtype="TXT",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("v=spf1 ip4:192.0.2.0/24 -all",), ttl=300),
            id="txt-strings-joined",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"zeta"', '"alpha"', '"bad\\255utf8"')),),
                qtype="TXT",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("alpha", "bad\ufffdutf8", "zeta"), ttl=300),
            id="txt-several-sorted-invalid-utf8-replaced",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"caf\\195\\169"',)),), qtype="TXT", qname=DOMAIN
            ),
            DnsAnswer(AnswerKind.RECORDS, ("caf\u00e9",), ttl=300),
            id="txt-utf8-decoded",
        ),
        pytest.param(
            response(answer=((DOMAIN, 300, "A", ("192.0.2.1",)),), qtype="MX", qname=DOMAIN),
            DnsAnswer(AnswerKind.NODATA, ttl=300),
            id="mx-question-a-answer-is-nodata",
        ),
        pytest.param(
            response(
                dns.rcode.NXDOMAIN,
                authority=(("2.0.192.in-addr.arpa.", 3600, "SOA", (SOA.format(minimum=90),)),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=90),
            id="ptr-nxdomain",
        ),
    ],
)
def test_interpret_other_types(message: dns.message.Message, expected: DnsAnswer) -> None:
    question = message.question[0]
    qname = question.name.to_text(omit_final_dot=True)
    assert interpret(message, qname, dns.rdatatype.to_text(question.rdtype)) == expected


# --- AnswerCache -------------------------------------------------------------------------------


def listed(ttl: int) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=ttl)


@pytest.mark.parametrize(
    ("ttl", "kept_for"),
    [
        pytest.param(300, 300, id="own-ttl"),
        pytest.param(5, 30, id="raised-to-min"),
        pytest.param(0, 30, id="zero-raised-to-min"),
        pytest.param(86400, 3600, id="cut-to-max"),
    ],
)
def test_cache_keeps_an_answer_for_its_clamped_ttl(ttl: int, kept_for: int) -> None:
    clock = FakeClock()
    cache = AnswerCache(min_ttl=30, max_ttl=3600, max_entries=10, clock=clock)
    cache.put(Question("q"), listed(ttl))
    clock.now += kept_for - 0.001
    assert cache.get(Question("q")) == listed(ttl)
    clock.now += 0.001
    assert cache.get(Question("q")) is None
    assert len(cache) == 0  # an expired entry is dropped when it is found


def test_cache_evicts_the_oldest_entry() -> None:
    cache = AnswerCache(min_ttl=0, max_ttl=3600, max_entries=2, clock=FakeClock())
    cache.put(Question("a"), listed(60))
    cache.put(Question("b"), listed(60))
    cache.put(Question("c"), listed(60))
    assert (cache.get(Question("a")), cache.get(Question("b")), cache.get(Question("c"))) == (
        None,
        listed(60),
        listed(60),
    )
    assert len(cache) == 2


def test_cache_put_again_makes_an_entry_new() -> None:
    cache = AnswerCache(min_ttl=0, max_ttl=3600, max_entries=2, clock=FakeClock())
    cache.put(Question("a"), listed(60))
    cache.put(Question("b"), listed(60))
    cache.put(Question("a"), listed(120))
    cache.put(Question("c"), listed(60))
    assert (cache.get(Question("a")), cache.get(Question("b")), cache.get(Question("c"))) == (
        listed(120),
        None,
        listed(60),
    )


@pytest.mark.parametrize(
    ("min_ttl", "max_ttl", "entries", "ttl"),
    [
        pytest.param(30, 3600, 0, 300, id="size-0"),
        pytest.param(0, 0, 10, 300, id="max-ttl-0"),
        pytest.param(0, 3600, 10, 0, id="ttl-0-without-min"),
    ],
)
def test_cache_that_keeps_nothing(min_ttl: int, max_ttl: int, entries: int, ttl: int) -> None:
    cache = AnswerCache(min_ttl, max_ttl, entries, FakeClock())
    cache.put(Question("q"), listed(ttl))
    assert cache.get(Question("q")) is None
    assert len(cache) == 0


# --- a scripted DNS server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """What the fake server does with a query for one name and type: `records` are answered
    in the presentation format of the type asked ("127.0.0.2" for A, "10 mx.test." for MX)."""

    records: tuple[str, ...] = ()
    ttl: int = 300
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False  # over UDP, TC and no records; the answer over TCP
    forge_first: bool = False  # first, at once, a "listed" answer with another query ID
    delay_only_first: bool = False  # `delay` applies to the first query for the name only


NXDOMAIN = Behaviour(rcode=dns.rcode.NXDOMAIN, ttl=900)
SILENT = Behaviour(drop=True)
_SERVER_LIFETIME = 30.0  # seconds: a server left running by a broken test stops by itself


def _port_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to one free port number on 127.0.0.1. The TCP one is not
    listening (a connection to it is refused) until serve_tcp: a TCP port of the number the
    kernel gave the UDP socket may be in use by any connection on the machine."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(tcp.getsockname())
        except OSError:
            udp.close()
            tcp.close()
            continue
        return tcp, udp
    raise OSError("no port free for both TCP and UDP")


class FakeDnsServer:
    """A UDP DNS server on 127.0.0.1 that answers by script and counts what it receives."""

    def __init__(self, default: Behaviour = NXDOMAIN) -> None:
        self.default = default
        self.script: dict[tuple[str, str], Behaviour] = {}
        self.received: collections.Counter[tuple[str, str]] = collections.Counter()
        self.source_ports: set[int] = set()
        self.tcp_queries = 0
        self._tcp_thread: threading.Thread | None = None
        self._tcp, self._socket = _port_pair()
        self._socket.settimeout(0.01)
        self.port: int = self._socket.getsockname()[1]
        self._outbox: list[tuple[float, bytes, tuple[str, int]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)

    @property
    def nameserver(self) -> Nameserver:
        return Nameserver("127.0.0.1", self.port)

    def packets(self, qname: str, rdtype: str = "A") -> int:
        with self._lock:
            return self.received[qname, rdtype]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()
        if self._tcp_thread is not None:
            # Its listener closed before the next test may get the same port number.
            self._tcp_thread.join(timeout=2)
        self._tcp.close()

    def _serve(self) -> None:
        give_up_at = time.monotonic() + _SERVER_LIFETIME
        while not self._stop.is_set() and time.monotonic() < give_up_at:
            self._send_due()
            try:
                wire, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self._receive(wire, peer)

    def _receive(self, wire: bytes, peer: tuple[str, int]) -> None:
        query = dns.message.from_wire(wire)
        qname = query.question[0].name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(query.question[0].rdtype)
        with self._lock:
            self.received[qname, rdtype] += 1
            self.source_ports.add(peer[1])
            first = self.received[qname, rdtype] == 1
        behaviour = self.script.get((qname, rdtype), self.default)
        if behaviour.drop:
            return
        delay = behaviour.delay if first or not behaviour.delay_only_first else 0.0
        if behaviour.forge_first and first:
            forged = dns.message.make_response(query)
            forged.id = (query.id + 1) % 65536
            forged.answer.append(dns.rrset.from_text(qname + ".", 60, "IN", "A", "127.0.0.2"))
            self._outbox.append((time.monotonic(), forged.to_wire(), peer))
        reply = self._reply(query, behaviour)
        if behaviour.truncate:
            reply.answer.clear()
            reply.flags |= dns.flags.TC
        self._outbox.append((time.monotonic() + delay, reply.to_wire(), peer))

    def _reply(self, query: dns.message.Message, behaviour: Behaviour) -> dns.message.Message:
        qname = query.question[0].name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(query.question[0].rdtype)
        reply = dns.message.make_response(query)
        reply.set_rcode(behaviour.rcode)
        if behaviour.records:
            reply.answer.append(
                dns.rrset.from_text(qname + ".", behaviour.ttl, "IN", rdtype, *behaviour.records)
            )
        elif behaviour.rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            zone = dns.name.from_text(qname).parent().to_text()
            record = SOA.format(minimum=behaviour.ttl)
            reply.authority.append(dns.rrset.from_text(zone, 3600, "IN", "SOA", record))
        return reply

    def serve_tcp(self) -> None:
        """Answer queries over TCP too, on the same port (for truncated answers)."""
        listener = self._tcp
        listener.listen()
        listener.settimeout(0.05)

        def accept() -> None:
            with listener:
                give_up_at = time.monotonic() + _SERVER_LIFETIME
                while not self._stop.is_set() and time.monotonic() < give_up_at:
                    try:
                        conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.settimeout(2)
                        size = int.from_bytes(conn.recv(2), "big")
                        query = dns.message.from_wire(conn.recv(size))
                        qname = query.question[0].name.to_text(omit_final_dot=True)
                        rdtype = dns.rdatatype.to_text(query.question[0].rdtype)
                        behaviour = self.script.get((qname, rdtype), self.default)
                        wire = self._reply(query, behaviour).to_wire()
                        with self._lock:
                            self.tcp_queries += 1
                        conn.sendall(len(wire).to_bytes(2, "big") + wire)

        self._tcp_thread = threading.Thread(target=accept, name="fake-dns-tcp", daemon=True)
        self._tcp_thread.start()

    def _send_due(self) -> None:
        now = time.monotonic()
        due = [item for item in self._outbox if item[0] <= now]
        self._outbox = [item for item in self._outbox if item[0] > now]
        for _, wire, peer in due:
            self._socket.sendto(wire, peer)


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
    started: list[Resolver] = []

    def start(
        *nameservers: Nameserver, query_timeout: float = 0.2, deadline: float = 0.5
    ) -> Resolver:
        settings = ResolverSettings(
            nameservers=nameservers,
            query_timeout=query_timeout,
            deadline=deadline,
            cache_min_ttl=0,
            cache_max_ttl=3600,
            cache_entries=1000,
        )
        resolver = Resolver(settings)
        resolver.start()
        started.append(resolver)
        return resolver

    yield start
    for resolver in started:
        resolver.stop()


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
    server.script[QNAME, "A"] = Behaviour(records=("127.0.0.2",), delay=0.3, delay_only_first=False)
    resolver = resolvers(server.nameserver, query_timeout=0.2, deadline=1.0)
    answer, elapsed = timed(resolver.lookup(QNAME))
    assert answer == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=300)
    assert server.packets(QNAME) == 2
    assert 0.25 <= elapsed < 0.45  # the first answer, not the second (0.5 s)


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
    with caplog.at_level(logging.WARNING, logger="spamgate.dns.resolver"):
        assert system_nameservers(path) == (Nameserver("192.0.2.53"),)
    assert caplog.messages == [f"ignoring nameserver 'dns.example' in {path}"]


def test_system_nameservers_without_the_file(tmp_path: Path) -> None:
    assert system_nameservers(str(tmp_path / "absent")) == (Nameserver("127.0.0.1"),)
