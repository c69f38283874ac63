"""A scripted DNS server on loopback, in the test process, for the resolver's tests: what it
does with a question is scripted per name and type (a Behaviour)."""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns.resolver import Resolver

# A name in a DNS list's zone and that zone's SOA record ({minimum}: its negative TTL), and a
# domain to ask other record types of: the names the resolver's tests ask about.
QNAME = "2.0.0.127.zen.test"
SOA = "ns.zen.test. hostmaster.zen.test. 1 3600 600 86400 {minimum}"
DOMAIN = "example.test"


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

    def __init__(
        self, default: Behaviour = NXDOMAIN, *, lifetime: float = _SERVER_LIFETIME
    ) -> None:
        self.default = default
        # How long it serves at most: a module of end-to-end tests shares one for longer.
        self.lifetime = lifetime
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
        give_up_at = time.monotonic() + self.lifetime
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


@contextlib.contextmanager
def resolver_pool() -> Iterator[Callable[..., Resolver]]:
    """Real resolvers, started on demand against the nameservers given (short timeouts and
    no cache floor, for tests), every one stopped at the end."""
    started: list[Resolver] = []

    def start(
        *nameservers: Nameserver,
        query_timeout: float = 0.2,
        deadline: float = 0.5,
        realtime_receiver: bool = True,
    ) -> Resolver:
        settings = ResolverSettings(
            nameservers=nameservers,
            query_timeout=query_timeout,
            deadline=deadline,
            cache_min_ttl=0,
            cache_max_ttl=3600,
            cache_entries=1000,
            realtime_receiver=realtime_receiver,
        )
        resolver = Resolver(settings)
        resolver.start()
        started.append(resolver)
        return resolver

    try:
        yield start
    finally:
        for resolver in started:
            resolver.stop()
