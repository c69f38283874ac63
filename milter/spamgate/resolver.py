"""The only module that talks DNS: a small stub resolver for list, reverse and domain queries.

Milter callbacks run on libmilter's threads; the queries run on one asyncio loop in a thread
of its own, so every list for every connection is in flight at once without a thread each.
Callers get a concurrent Future that always ends in a DnsAnswer — failures are answers of a
failed kind, never exceptions — and they decide themselves how long to wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

from spamgate.answers import AnswerKind, DnsAnswer
from spamgate.config import Nameserver, ResolverSettings

log = logging.getLogger("spamgate.resolver")

_FAILED_RCODES = {dns.rcode.SERVFAIL: AnswerKind.SERVFAIL, dns.rcode.REFUSED: AnswerKind.REFUSED}
# Rounds over the server list when every attempt times out; the deadline usually ends it first.
_MAX_ROUNDS = 4

_ASYNCIO = dns.asyncbackend.get_backend("asyncio")

# The record types callers may ask for, and how interpret() writes each as text.
RDTYPES = frozenset({"A", "AAAA", "PTR", "MX", "TXT"})


class Question(NamedTuple):
    """What was asked: the key of the cache and of merged queries in flight (a tuple, so
    that hashing it, on every lookup, costs no Python code)."""

    qname: str
    rdtype: str = "A"


def system_nameservers(resolv_conf: str = "/etc/resolv.conf") -> tuple[Nameserver, ...]:
    """The nameservers the machine uses, or 127.0.0.1 when resolv.conf names none."""
    found = []
    try:
        lines = Path(resolv_conf).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(Nameserver.from_config(fields[1].split("%")[0]))
            except ValueError:
                log.warning("ignoring nameserver %r in %s", fields[1], resolv_conf)
    # resolv(5): with no nameserver line the local machine is queried.
    return tuple(found) or (Nameserver("127.0.0.1"),)


class AnswerCache:
    """Definitive answers by question, kept for their TTL clamped to [min_ttl, max_ttl]."""

    def __init__(
        self, min_ttl: int, max_ttl: int, max_entries: int, clock: Callable[[], float]
    ) -> None:
        self._min_ttl, self._max_ttl, self._max_entries = min_ttl, max_ttl, max_entries
        self._clock = clock
        # Answers only: a future per entry would cost 1.6 KB each (a Condition and its lock),
        # 160 MB for a full cache, to save 1.6 us per hit.
        self._entries: dict[Question, tuple[float, DnsAnswer]] = {}
        self._lock = threading.Lock()

    def get(self, question: Question) -> DnsAnswer | None:
        with self._lock:
            entry = self._entries.get(question)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[question]
                return None
            return entry[1]

    def put(self, question: Question, answer: DnsAnswer) -> None:
        ttl = min(max(answer.ttl, self._min_ttl), self._max_ttl)
        if ttl <= 0 or self._max_entries == 0:
            return
        with self._lock:
            self._entries.pop(question, None)
            # Insertion order makes the first key the oldest entry: evicting it is O(1).
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[question] = (self._clock() + ttl, answer)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ResolverStats:
    """Counters for logs and benchmarks; plain ints updated under the GIL."""

    lookups: int = 0
    cache_hits: int = 0
    merged: int = 0
    queries_sent: int = 0


class Resolver:
    def __init__(
        self,
        settings: ResolverSettings,
        nameservers: Sequence[Nameserver] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._nameservers = tuple(nameservers or settings.nameservers or system_nameservers())
        self._clock = clock
        self.cache = AnswerCache(
            settings.cache_min_ttl, settings.cache_max_ttl, settings.cache_entries, clock
        )
        self.stats = ResolverStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Owned by the loop thread only: callers waiting on each query in flight.
        self._inflight: dict[Question, list[futures.Future[DnsAnswer]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def nameservers(self) -> tuple[Nameserver, ...]:
        return self._nameservers

    @property
    def settings(self) -> ResolverSettings:
        return self._settings

    @property
    def running(self) -> bool:
        thread = self._thread
        return self._loop is not None and thread is not None and thread.is_alive()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="spamgate-dns", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("DNS resolver thread did not start")

    def stop(self) -> None:
        """Stop the loop; every lookup still waiting is answered "resolver stopped"."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        # New lookups are answered at once from here on (see lookup()).
        self._loop = None
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # the loop is already closed
            return
        thread.join(timeout=5)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
            # Settle what is left: callbacks queued before stop() ran, then queries in flight.
            loop.run_until_complete(self._settle())
        finally:
            loop.close()

    async def _settle(self) -> None:
        await asyncio.sleep(0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        stopped = DnsAnswer(AnswerKind.NETWORK, detail="resolver stopped")
        for waiters in self._inflight.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(stopped)
        self._inflight.clear()

    def lookup(
        self, qname: str, rdtype: str = "A", *, fresh: bool = False
    ) -> futures.Future[DnsAnswer]:
        """Start (or join) the lookup of `qname`'s `rdtype` records; safe from any thread.

        `rdtype` is one of RDTYPES; anything else is a programming error (ValueError). A name
        that cannot be put in a query (an empty label, a label over 63 octets) is answered at
        once as MALFORMED: such names come from clients and must not reach the loop as errors.
        `fresh` skips the cache (health probes must see the list as it is now).
        """
        if rdtype not in RDTYPES:
            raise ValueError(f"unsupported record type {rdtype!r}")
        key = Question(qname.lower(), rdtype)
        self.stats.lookups += 1
        future: futures.Future[DnsAnswer] = futures.Future()
        # The hot path on a busy MX: a cached answer, with no further checks (only names that
        # passed them were ever asked, so only they are in the cache).
        cached = None if fresh else self.cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            future.set_result(cached)
            return future
        if not _queryable(key.qname):
            future.set_result(DnsAnswer(AnswerKind.MALFORMED, detail="bad query name"))
            return future
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("resolver not running")
            loop.call_soon_threadsafe(self._join_or_start, key, future, fresh)
        except RuntimeError as error:
            future.set_result(DnsAnswer(AnswerKind.NETWORK, detail=str(error)))
        return future

    def _join_or_start(
        self, key: Question, future: futures.Future[DnsAnswer], fresh: bool = False
    ) -> None:
        if self._loop is None:  # stop() has begun
            future.set_result(DnsAnswer(AnswerKind.NETWORK, detail="resolver stopped"))
            return
        waiting = self._inflight.get(key)
        if waiting is not None:
            self.stats.merged += 1
            waiting.append(future)
            return
        # Another caller's query may have filled the cache since this one looked.
        cached = None if fresh else self.cache.get(key)
        if cached is not None:
            future.set_result(cached)
            return
        self._inflight[key] = [future]
        task = asyncio.get_running_loop().create_task(self._resolve_and_publish(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_and_publish(self, key: Question) -> None:
        try:
            answer = await self.resolve(key.qname, key.rdtype)
        except asyncio.CancelledError:
            answer = DnsAnswer(AnswerKind.NETWORK, detail="resolver stopped")
        except Exception as error:  # an answer must reach every waiter, whatever happened
            log.exception("DNS lookup of %s/%s failed unexpectedly", key.qname, key.rdtype)
            answer = DnsAnswer(AnswerKind.NETWORK, detail=type(error).__name__)
        if answer.kind.is_definitive:
            self.cache.put(key, answer)
        for waiter in self._inflight.pop(key, []):
            if not waiter.done():
                waiter.set_result(answer)

    async def resolve(self, qname: str, rdtype: str = "A") -> DnsAnswer:
        """Ask the nameservers in turn until one answers or the deadline passes."""
        query = dns.message.make_query(qname, dns.rdatatype.from_text(rdtype))
        give_up_at = self._clock() + self._settings.deadline
        last = DnsAnswer(AnswerKind.TIMEOUT)
        for _ in range(_MAX_ROUNDS):
            timed_out = False
            for server in self._nameservers:
                remaining = give_up_at - self._clock()
                if remaining <= 0:
                    return last
                timeout = min(self._settings.query_timeout, remaining)
                try:
                    response = await self._exchange(query, server, timeout)
                except dns.exception.Timeout:
                    timed_out, last = True, DnsAnswer(AnswerKind.TIMEOUT)
                    continue
                except OSError as error:
                    last = DnsAnswer(AnswerKind.NETWORK, detail=error.strerror or str(error))
                    continue
                except dns.exception.DNSException as error:
                    last = DnsAnswer(AnswerKind.MALFORMED, detail=type(error).__name__)
                    continue
                answer = interpret(response)
                if answer.kind.is_definitive:
                    return answer
                last = answer
            # Every server answered, badly: asking again at once would get the same answers.
            if not timed_out:
                return last
        return last

    async def _exchange(
        self, query: dns.message.Message, server: Nameserver, timeout: float
    ) -> dns.message.Message:
        self.stats.queries_sent += 1
        started = self._clock()
        # A connected socket of our own: dnspython's asyncio backend would bind 0.0.0.0 and
        # not connect (dns/asyncquery.py, udp()), which makes every query in flight a UDP
        # listener on all interfaces. Connected, the kernel picks the source by route
        # (127.0.0.1 for a local resolver) and delivers only the nameserver's datagrams; a
        # closed port is reported at once (ECONNREFUSED) instead of timing out.
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        # dnspython leaves its backends' make_socket unannotated; it returns a DatagramSocket.
        connected = await _ASYNCIO.make_socket(  # type: ignore[no-untyped-call]
            family, socket.SOCK_DGRAM, 0, None, (server.host, server.port)
        )
        async with connected:
            response = await dns.asyncquery.udp(
                query,
                server.host,
                timeout=timeout,
                port=server.port,
                ignore_unexpected=True,
                sock=connected,
            )
        if response.flags & dns.flags.TC:
            remaining = timeout - (self._clock() - started)
            if remaining <= 0:
                raise dns.exception.Timeout
            response = await dns.asyncquery.tcp(
                query, server.host, timeout=remaining, port=server.port
            )
        return response


def _queryable(qname: str) -> bool:
    """True when `qname` makes a valid DNS name (dnspython's rules: labels of 1..63 octets,
    255 in all; non-ASCII goes through its IDNA codec)."""
    try:
        dns.name.from_text(qname)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return False
    return True


def interpret(response: dns.message.Message) -> DnsAnswer:
    """Reduce a DNS response to a DnsAnswer, its records written as text by their type.

    The type is the question's: dnspython's resolve_chaining() follows CNAMEs to the RRset of
    the type asked and ignores records of any other type.
    """
    if not isinstance(response, dns.message.QueryMessage):
        return DnsAnswer(AnswerKind.MALFORMED, detail="not a query response")
    rcode = response.rcode()
    if rcode in _FAILED_RCODES:
        return DnsAnswer(_FAILED_RCODES[rcode])
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return DnsAnswer(AnswerKind.OTHER_RCODE, detail=dns.rcode.to_text(rcode))
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as error:
        return DnsAnswer(AnswerKind.MALFORMED, detail=type(error).__name__)
    if rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(AnswerKind.NXDOMAIN, ttl=chain.minimum_ttl)
    if chain.answer is None:
        return DnsAnswer(AnswerKind.NODATA, ttl=chain.minimum_ttl)
    records = tuple(sorted({_record_text(rdata) for rdata in chain.answer}))
    return DnsAnswer(AnswerKind.RECORDS, records, ttl=chain.minimum_ttl)


def _record_text(rdata: dns.rdata.Rdata) -> str:
    """One record as callers read it.

    A: dotted quad. AAAA: dnspython's compressed form (`2001:db8::1`). PTR: the target,
    lower-cased, without the final dot. MX: `PREFERENCE exchange`, the exchange written like a
    PTR target, so RFC 7505's null MX stays `0 .`. TXT: the character-strings joined and
    decoded as UTF-8 with replacement characters. Other types: dnspython's presentation form.
    """
    if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(rdata.address)
    if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR):
        return _name_text(rdata.target)
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return f"{rdata.preference} {_name_text(rdata.exchange)}"
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rdata.strings).decode("utf-8", errors="replace")
    return rdata.to_text()


def _name_text(name: dns.name.Name) -> str:
    # to_text() escapes dots inside labels and unprintable octets (`\032`), so the text is
    # printable ASCII whatever a hostile zone put in the name; the root stays ".".
    return name.to_text(omit_final_dot=True).lower()
