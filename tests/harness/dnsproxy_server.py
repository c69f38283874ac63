"""A fault-injecting DNS proxy; run it as a script (started by dnsproxy.DnsProxy), not imported
except for `Fault`.

    python -P dnsproxy_server.py --port P --upstream-port U --control FILE --stats FILE

It listens on 127.0.0.1:P over UDP and TCP and forwards every query to the upstream server over
UDP (rbldnsd serves UDP only, so a TCP query is answered over TCP with what upstream said over
UDP). On the way it applies the `Fault` read from the control file, and it writes its counters
to the stats file. Only the standard library and dnspython: it must run from any interpreter
that can run the test suite. (-P keeps this directory off sys.path: the harness's dns.py
would shadow dnspython's package "dns".)

Protocol with the harness (both files are replaced atomically, by rename):

- control file: ``{"generation": N, "fault": {...Fault fields...}}``, read every 0.1 s.
- stats file: the counters (cumulative since this process started) and the generation of the
  fault in force, written at most every 0.1 s while they change, and on SIGTERM at exit.

A CHAOS-class TXT query for ``version.bind`` is answered by the proxy itself, whatever the
fault: it is the harness's readiness probe, and is counted only under ``probes``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

LOOPBACK = "127.0.0.1"
# Pending upstream queries are forgotten after this long: memory stays bounded even when
# upstream never answers. (A client gave up long before: resolvers wait 1-5 s per try.)
UPSTREAM_TIMEOUT = 2.0
# At most this many queries waiting for upstream; beyond it new queries are dropped and
# counted as "overloaded". Far above what 2 s of hundreds of queries per second needs.
MAX_PENDING = 20_000
# How often the control file is polled and dirty counters are written out.
HOUSEKEEPING_INTERVAL = 0.1
# A TCP client whose answers back up this far is not reading: disconnect it.
MAX_WRITE_BUFFER = 1 << 20
# A TCP client silent this long is disconnected (RFC 7766 6.2.3 lets servers close idle ones).
TCP_IDLE_TIMEOUT = 10.0
# Replacement A records for `outside_127` come from TEST-NET-1 (RFC 5737): never a real host.
OUTSIDE_127_NETWORK = "192.0.2."
PROBE_NAME = dns.name.from_text("version.bind.")
HEADER_SIZE = 12

log = logging.getLogger("dnsproxy")


@dataclass(frozen=True)
class Fault:
    """What the proxy does to the queries it applies to (all of them, or only_zones').

    The default is a faithful pass-through. Modes combine: a query is first dropped (`silent`,
    or with probability `drop`); if not, its answer is made up (`servfail`, `truncate` over UDP,
    `garbage`: at most one of these) or else fetched from upstream (and rewritten if
    `outside_127`); whatever answer results is sent `delay` seconds later.
    """

    delay: float = 0.0
    """Seconds added before each answer is sent back (answers are delayed concurrently)."""
    drop: float = 0.0
    """Probability 0..1 that a query is silently dropped."""
    seed: int = 0
    """Seeds the drop decisions and the garbage bytes: equal runs see equal faults."""
    silent: bool = False
    """Never answer (drop = 1.0)."""
    servfail: bool = False
    """Answer SERVFAIL without asking upstream."""
    truncate: bool = False
    """Over UDP answer with TC set and no records; over TCP answer normally."""
    garbage: bool = False
    """Answer with random bytes that never parse as DNS, sometimes with the query's id."""
    outside_127: bool = False
    """Rewrite every A record of upstream's answer to 192.0.2.x, keeping the TTL."""
    only_zones: tuple[str, ...] = ()
    """Apply the fault only to names at or under these zones; empty means every name."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay <= 60.0:
            raise ValueError(f"delay must be 0..60 seconds, got {self.delay!r}")
        if not 0.0 <= self.drop <= 1.0:
            raise ValueError(f"drop must be a probability 0..1, got {self.drop!r}")
        made_up = [name for name in ("servfail", "truncate", "garbage") if getattr(self, name)]
        if len(made_up) > 1:
            raise ValueError(f"at most one of servfail, truncate, garbage; got {made_up}")
        if isinstance(self.only_zones, str):
            # A bare string would pass for a tuple of one-letter "zones".
            raise TypeError("only_zones must be a tuple of zone names, not a string")

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["only_zones"] = list(self.only_zones)
        return fields

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> Fault:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown Fault fields: {unknown}")
        values = dict(fields)
        if "only_zones" in values:
            values["only_zones"] = tuple(values["only_zones"])
        return cls(**values)


def in_zones(qname: dns.name.Name, zones: tuple[dns.name.Name, ...]) -> bool:
    """True if ``qname`` is one of ``zones`` or below one (label-wise, case-insensitive)."""
    return any(qname.is_subdomain(zone) for zone in zones)


def make_garbage(rng: random.Random, query_id: bytes) -> bytes:
    """Random bytes of a plausible DNS answer length that do not parse as a DNS message.

    Half of them carry the query's id, so a client that matches ids before parsing still has
    to reject them; the other half a different id.
    """
    for _ in range(20):
        blob = bytearray(rng.randbytes(rng.randint(HEADER_SIZE, 512)))
        if rng.random() < 0.5:
            blob[:2] = query_id
        elif blob[:2] == query_id:
            blob[0] ^= 0xFF
        try:
            dns.message.from_wire(bytes(blob))
        except dns.exception.DNSException:
            return bytes(blob)
    # Practically unreachable (most random blobs fail to parse): a short header never parses.
    return query_id + rng.randbytes(HEADER_SIZE - 3)


def rewrite_outside_127(wire: bytes) -> bytes:
    """``wire`` with every A record of the answer section moved to 192.0.2.x, TTLs kept.

    Distinct replacement addresses keep the number of records (an rdataset is a set).
    """
    try:
        message = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return wire
    rewritten = []
    for rrset in message.answer:
        if rrset.rdtype != dns.rdatatype.A or rrset.rdclass != dns.rdataclass.IN:
            rewritten.append(rrset)
            continue
        replacement = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
        for index in range(len(rrset)):
            address = f"{OUTSIDE_127_NETWORK}{index % 254 + 1}"
            replacement.add(dns.rdata.from_text(rrset.rdclass, rrset.rdtype, address), rrset.ttl)
        rewritten.append(replacement)
    message.answer = rewritten
    return message.to_wire()


@dataclass
class Counters:
    """Cumulative since start. `received` counts well-formed queries (not probes);
    it equals answered + dropped + upstream_timeouts + overloaded once nothing is in flight."""

    received: int = 0
    by_qtype: Counter[str] = dataclasses.field(default_factory=Counter)
    by_transport: Counter[str] = dataclasses.field(default_factory=Counter)
    forwarded: int = 0
    answered: int = 0
    dropped: int = 0
    upstream_timeouts: int = 0
    overloaded: int = 0
    malformed: int = 0
    probes: int = 0


class ActiveFault:
    """A Fault in force, with its own random stream: every generation restarts from `seed`."""

    def __init__(self, fault: Fault, generation: int) -> None:
        self.fault = fault
        self.generation = generation
        self.zones = tuple(dns.name.from_text(zone) for zone in fault.only_zones)
        self.rng = random.Random(fault.seed)

    def applies_to(self, qname: dns.name.Name) -> bool:
        return not self.zones or in_zones(qname, self.zones)

    def drops(self) -> bool:
        if self.fault.silent or self.fault.drop >= 1.0:
            return True
        # Draw only when the outcome is uncertain, so the stream depends only on those queries.
        return self.fault.drop > 0.0 and self.rng.random() < self.fault.drop


# Sends one answer to the client that asked; False if it could not be sent.
Reply = Callable[[bytes], bool]


@dataclass
class Pending:
    """A query forwarded upstream under a fresh id, waiting for its answer."""

    client_id: bytes
    question: bytes
    reply: Reply
    fault: ActiveFault | None
    timer: asyncio.TimerHandle | None = None


class Proxy:
    """The event-loop side: listeners call `handle_query`, upstream calls `handle_answer`."""

    def __init__(self, control: Path, stats: Path) -> None:
        self.control = control
        self.stats_path = stats
        self.counters = Counters()
        self.active = ActiveFault(Fault(), 0)
        self.pending: dict[int, Pending] = {}
        self.ids = random.Random()
        self.upstream_socket: UpstreamSocket | None = None
        self.tcp_clients: set[TcpClient] = set()
        self._dirty = True
        self._control_text: str | None = None
        self._loop = asyncio.get_running_loop()

    # --- queries ---------------------------------------------------------------------------

    def handle_query(self, wire: bytes, transport: str, reply: Reply) -> None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self._count_malformed()
            return
        if query.flags & dns.flags.QR or len(query.question) != 1:
            self._count_malformed()
            return
        question = query.question[0]
        if question.rdclass == dns.rdataclass.CH and question.name == PROBE_NAME:
            self._answer_probe(query, reply)
            return
        counters = self.counters
        counters.received += 1
        counters.by_qtype[dns.rdatatype.to_text(question.rdtype)] += 1
        counters.by_transport[transport] += 1
        self._dirty = True

        active = self.active
        if not active.applies_to(question.name):
            self._forward(wire, question.name, reply, None)
            return
        fault = active.fault
        if active.drops():
            counters.dropped += 1
        elif fault.servfail:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            self._send(response.to_wire(), reply, active)
        elif fault.truncate and transport == "udp":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            self._send(response.to_wire(), reply, active)
        elif fault.garbage:
            self._send(make_garbage(active.rng, wire[:2]), reply, active)
        else:
            self._forward(wire, question.name, reply, active)

    def _forward(
        self, wire: bytes, qname: dns.name.Name, reply: Reply, fault: ActiveFault | None
    ) -> None:
        upstream = self.upstream_socket
        if upstream is None or upstream.paused or len(self.pending) >= MAX_PENDING:
            self.counters.overloaded += 1
            return
        # A fresh id per upstream query: two clients may well use the same id at once.
        upstream_id = self.ids.getrandbits(16)
        while upstream_id in self.pending:
            upstream_id = self.ids.getrandbits(16)
        # The question section follows the header; its first name is never compressed, so
        # it is as long as the name's canonical form, plus type and class.
        question = wire[HEADER_SIZE : HEADER_SIZE + len(qname.to_digestable()) + 4]
        entry = Pending(wire[:2], question, reply, fault)
        entry.timer = self._loop.call_later(UPSTREAM_TIMEOUT, self._expire, upstream_id)
        self.pending[upstream_id] = entry
        upstream.send(upstream_id.to_bytes(2, "big") + wire[2:])
        self.counters.forwarded += 1

    def _expire(self, upstream_id: int) -> None:
        if self.pending.pop(upstream_id, None) is not None:
            self.counters.upstream_timeouts += 1
            self._dirty = True

    def handle_answer(self, wire: bytes) -> None:
        if len(wire) < HEADER_SIZE or not wire[2] & 0x80:  # QR: a response
            return
        entry = self.pending.get(int.from_bytes(wire[:2], "big"))
        if entry is None or not _same_question(entry.question, wire):
            # Late (already expired) or not an answer to what we asked: ignore, as a
            # resolver would.
            return
        del self.pending[int.from_bytes(wire[:2], "big")]
        if entry.timer is not None:
            entry.timer.cancel()
        answer = entry.client_id + wire[2:]
        if entry.fault is not None and entry.fault.fault.outside_127:
            answer = rewrite_outside_127(answer)
        self._send(answer, entry.reply, entry.fault)

    def _send(self, wire: bytes, reply: Reply, fault: ActiveFault | None) -> None:
        delay = fault.fault.delay if fault is not None else 0.0
        if delay > 0.0:
            # call_later, not sleep: delayed answers overlap instead of queueing behind
            # each other, as with a distant server.
            self._loop.call_later(delay, self._deliver, wire, reply)
        else:
            self._deliver(wire, reply)

    def _deliver(self, wire: bytes, reply: Reply) -> None:
        if reply(wire):
            self.counters.answered += 1
        else:
            self.counters.overloaded += 1
        self._dirty = True

    def _answer_probe(self, query: dns.message.Message, reply: Reply) -> None:
        response = dns.message.make_response(query)
        text = f'"spamgate-dnsproxy generation={self.active.generation}"'
        response.answer.append(dns.rrset.from_text(PROBE_NAME, 0, "CH", "TXT", text))
        reply(response.to_wire())
        self.counters.probes += 1
        self._dirty = True

    def _count_malformed(self) -> None:
        self.counters.malformed += 1
        self._dirty = True

    # --- control and stats files -----------------------------------------------------------

    def poll_control(self) -> None:
        # Read, not stat: a tiny file ten times a second costs nothing, and mtime plus inode
        # could repeat when two rewrites fall into one timestamp tick.
        try:
            text = self.control.read_text()
        except FileNotFoundError:
            return
        if text == self._control_text:
            return
        self._control_text = text
        try:
            document = json.loads(text)
            generation = int(document["generation"])
            fault = Fault.from_json(document["fault"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Not acknowledged, so the harness's set_fault() times out and shows this line.
            log.error("event=control_rejected file=%s error=%r", self.control, error)
            return
        if generation != self.active.generation:
            self.active = ActiveFault(fault, generation)
            self._dirty = True
            log.info("event=fault generation=%d fault=%s", generation, json.dumps(fault.to_json()))

    def write_stats(self, *, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        self._dirty = False
        counters = self.counters
        document = {
            "pid": os.getpid(),
            "generation": self.active.generation,
            "fault": self.active.fault.to_json(),
            "pending": len(self.pending),
            **{field.name: getattr(counters, field.name) for field in dataclasses.fields(counters)},
        }
        temporary = self.stats_path.with_name(self.stats_path.name + ".tmp")
        temporary.write_text(json.dumps(document, sort_keys=True))
        temporary.replace(self.stats_path)


def _same_question(question: bytes, answer: bytes) -> bool:
    """True if ``answer`` echoes ``question`` (name compared case-insensitively)."""
    echoed = answer[HEADER_SIZE : HEADER_SIZE + len(question)]
    return (
        answer[4:6] == b"\x00\x01"  # QDCOUNT
        and echoed[:-4].lower() == question[:-4].lower()
        and echoed[-4:] == question[-4:]
    )


class DatagramSocket(asyncio.DatagramProtocol):
    """A UDP socket that drops what it cannot send rather than buffer it without bound."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        # asyncio buffers datagrams the kernel will not take yet, and asks us to pause past
        # its high-water mark: then we drop, as a congested network would.
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: 3.11's selector datagram transport does not subclass
        # asyncio.DatagramTransport, though it implements it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def send(self, wire: bytes, addr: tuple[str | Any, int] | None = None) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing() or self.paused:
            return False
        transport.sendto(wire, addr)
        return True


class UdpListener(DatagramSocket):
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy.handle_query(data, "udp", lambda wire: self.send(wire, addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away: nothing to do.
        log.debug("event=udp_client_error error=%r", exc)


class UpstreamSocket(DatagramSocket):
    """Connected to upstream: one socket for all forwarded queries, told apart by id."""

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy.handle_answer(data)

    def error_received(self, exc: Exception) -> None:
        # "Connection refused" while upstream is down; its queries time out as pending.
        log.debug("event=upstream_error error=%r", exc)


class TcpClient(asyncio.Protocol):
    """DNS over TCP (RFC 1035 4.2.2): two-byte length prefix, several queries per connection,
    answers in any order (RFC 7766 7)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy.tcp_clients.add(self)
        self._reset_idle()

    def data_received(self, data: bytes) -> None:
        self._reset_idle()
        self.buffer += data
        while len(self.buffer) >= 2:
            size = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            self.proxy.handle_query(message, "tcp", self._reply)

    def _reply(self, wire: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            # A client that does not read its answers: drop it, not our memory.
            transport.abort()
            return False
        transport.write(len(wire).to_bytes(2, "big") + wire)
        return True

    def _reset_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self.close)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.proxy.tcp_clients.discard(self)
        self.transport = None


async def serve(port: int, upstream: tuple[str, int], control: Path, stats: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    proxy = Proxy(control, stats)
    proxy.poll_control()
    upstream_transport, upstream_socket = await loop.create_datagram_endpoint(
        lambda: UpstreamSocket(proxy), remote_addr=upstream
    )
    proxy.upstream_socket = upstream_socket
    udp_transport, _ = await loop.create_datagram_endpoint(
        lambda: UdpListener(proxy), local_addr=(LOOPBACK, port)
    )
    tcp_server = await loop.create_server(lambda: TcpClient(proxy), LOOPBACK, port)
    # The first stats file tells the harness that both listeners are bound.
    proxy.write_stats(force=True)
    log.info("event=listening address=%s port=%d upstream=%s:%d", LOOPBACK, port, *upstream)
    try:
        while not stop.is_set():
            proxy.poll_control()
            proxy.write_stats()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOUSEKEEPING_INTERVAL)
    finally:
        tcp_server.close()
        for client in list(proxy.tcp_clients):
            client.close()
        await tcp_server.wait_closed()
        udp_transport.close()
        upstream_transport.close()
        for entry in proxy.pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
        proxy.write_stats(force=True)
        log.info(
            "event=stopped received=%d answered=%d",
            proxy.counters.received,
            proxy.counters.answered,
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-address", default=LOOPBACK)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s dnsproxy %(message)s"
    )
    upstream = (args.upstream_address, args.upstream_port)
    asyncio.run(serve(args.port, upstream, args.control, args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
