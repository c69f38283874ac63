"""The only module that talks DNS: a small stub resolver for list, reverse and domain queries.

Milter callbacks run on libmilter's threads, one per SMTP session, and every one of them shares
the interpreter lock with this resolver. Under a flood of new clients the resolver must ask
thousands of questions a second while hundreds of sessions want the same lock, so it is built
to need the lock as briefly and as seldom as possible (issue 13; bench/dnsload.py measures it):

- A caller's thread encodes its question (dnswire: a few microseconds, not dnspython's
  ~330 us) and sends it itself, on a long-lived UDP socket: no socket, event-loop task or
  cross-thread hand-off per query, and the send keeps the interpreter lock (_Datagrams).
- One receiver thread sleeps in epoll until answers or a timeout are due, then reads every
  answer that is waiting, matches each to its question by socket and query ID, caches it and
  completes the callers' promises. A caller waiting for several answers is woken once.
- A session about to wait for its answers first reads what has arrived itself
  (read_arrived): under a flood the receiver may wait long for the interpreter lock, which
  the session already holds.
- The receiver never waits for a lock a session may hold while it queues for the interpreter
  lock: it reads answers while a session reads too (each datagram goes to one reader), and
  a socket it would close while a session reads is closed at its next wake-up instead.
- Timeouts and retries (the next server, another round) are timers on the receiver thread.
- The receiver thread runs at the lowest real-time priority where it may (_become_realtime):
  under a flood it is then woken as its answers arrive, not after its turn among hundreds
  of session threads.
- The resolver's lock is never held across a system call: sockets and query IDs are made
  ahead, outside it (_provide_for).

Sockets are connected to their nameserver, so the kernel delivers only that server's
datagrams and reports a closed port (ECONNREFUSED) at once; each is replaced after 64
queries (few enough answers in flight that its receive buffer never overflows, which cost a
1 s retry each at 200 sessions), so an off-path forger must guess the source port as well as
the 16-bit query ID, which comes from os.urandom. A datagram that is not the response to a
question in flight (unknown ID, another question) is ignored, and the question keeps waiting.

Callers get a Pending (answers.py) that always ends in a DnsAnswer — failures are answers of a
failed kind, never exceptions — and they decide themselves how long to wait for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import heapq
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns import dnswire
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending

log = logging.getLogger("spamgate.resolver")

# Rounds over the server list when every attempt times out; the deadline usually ends it first.
_MAX_ROUNDS = 4
# Queries a socket sends before a new one (a new random source port) takes its place.
_QUERIES_PER_SOCKET = 64
# Query IDs drawn from os.urandom at a time (one system call per this many queries).
_IDS_PER_DRAW = 512

# The record types callers may ask for, and how dnswire writes each as text.
RDTYPES = frozenset(dnswire.RDTYPE_CODES)

_STOPPED = DnsAnswer(AnswerKind.NETWORK, detail="resolver stopped")
_NOT_RUNNING = DnsAnswer(AnswerKind.NETWORK, detail="resolver not running")
_BAD_NAME = DnsAnswer(AnswerKind.MALFORMED, detail="bad query name")
_TIMEOUT = DnsAnswer(AnswerKind.TIMEOUT)


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
        # Without the lock, which only keeps put's eviction whole: dict.get and pop are each
        # one step under the interpreter lock. A reader holding the lock when the interpreter
        # switched threads made every other session's lookup queue on it (issue 13).
        entry = self._entries.get(question)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(question, None)
            return None
        return entry[1]

    def put(self, question: Question, answer: DnsAnswer) -> None:
        ttl = min(max(answer.ttl, self._min_ttl), self._max_ttl)
        if ttl <= 0 or self._max_entries == 0:
            return
        with self._lock:
            self._entries.pop(question, None)
            # Insertion order makes the first key the oldest entry: evicting it is O(1).
            # pop, not del: get() may drop an expired entry meanwhile, without the lock.
            while len(self._entries) >= self._max_entries:
                oldest = next(iter(self._entries), None)
                if oldest is None:
                    break
                self._entries.pop(oldest, None)
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


class _Datagrams:
    """send() and recv() of whole datagrams on non-blocking sockets, without letting go of
    the interpreter lock.

    Python's socket methods release the lock around every system call, even one that cannot
    block. Under a flood that is the expensive part: another of the hundreds of session
    threads takes the lock, and the caller waits for it to come back (a futex wait and two
    context switches), once per query sent and once per answer read. libc's send and recv
    called through ctypes.PyDLL keep the lock: on a non-blocking UDP socket each returns in
    microseconds, and the receiver reads a whole batch of answers in one turn. Where libc
    cannot be loaded, the socket methods do the same work, only with the hand-offs.
    """

    def __init__(self) -> None:
        self._send: Callable[..., int] | None = None
        self._recv: Callable[..., int] | None = None
        try:
            libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            send, recv = libc.send, libc.recv
        except (OSError, AttributeError):
            return
        send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
        send.restype = ctypes.c_ssize_t
        recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        recv.restype = ctypes.c_ssize_t
        self._send, self._recv = send, recv

    def send(self, sock: socket.socket, data: bytes) -> None:
        """Send one datagram; BlockingIOError if the socket's buffer is full, OSError for
        an error the kernel reports (ECONNREFUSED for an earlier datagram's ICMP error)."""
        send = self._send
        if send is None:
            sock.send(data)
            return
        if send(sock.fileno(), data, len(data), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL) < 0:
            raise _os_error(ctypes.get_errno())

    def receiver(self) -> Callable[[socket.socket], bytes]:
        """A function that reads one datagram (BlockingIOError when none is waiting), with a
        buffer of its own: for one thread at a time."""
        recv = self._recv
        if recv is None:
            return lambda sock: sock.recv(65535)
        buffer = ctypes.create_string_buffer(65535)

        def read(sock: socket.socket) -> bytes:
            size = recv(sock.fileno(), buffer, 65535, socket.MSG_DONTWAIT)
            if size < 0:
                raise _os_error(ctypes.get_errno())
            return ctypes.string_at(buffer, size)

        return read


def _os_error(number: int) -> OSError:
    """The exception Python's socket methods raise for `number` (BlockingIOError for EAGAIN,
    ConnectionRefusedError for ECONNREFUSED, ...)."""
    return OSError(number, os.strerror(number))


_DATAGRAMS = _Datagrams()


class _Channel:
    """One connected UDP socket to one nameserver, and the questions waiting on it by ID."""

    __slots__ = ("fd", "pending", "retired", "sent", "sock")

    def __init__(self, server: Nameserver) -> None:
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            # Connected: the kernel picks the source address by route (127.0.0.1 for a local
            # resolver), delivers only this server's datagrams, and reports a closed port.
            self.sock.connect((server.host, server.port))
        except OSError:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        # By query ID: the question, and which of its attempts used that ID.
        self.pending: dict[int, tuple[_Query, int]] = {}
        self.sent = 0
        self.retired = False


class _Query:
    """One question in flight, shared by every caller who asked it meanwhile."""

    __slots__ = (
        "attempt",
        "attempt_ends",
        "done",
        "give_up_at",
        "key",
        "last",
        "question",
        "round",
        "sent_on",
        "server",
        "timed_out",
        "waiters",
    )

    def __init__(self, key: Question, question: dnswire.Question, give_up_at: float) -> None:
        self.key = key
        self.question = question
        self.waiters: list[Pending[DnsAnswer]] = []
        self.give_up_at = give_up_at
        self.server = 0  # index into the nameservers, this round
        self.round = 0
        self.timed_out = False  # an attempt of this round timed out
        self.last = _TIMEOUT  # what to answer if nothing better comes
        self.attempt = 0  # a timer or TCP exchange of an earlier attempt is stale
        self.attempt_ends = 0.0
        self.sent_on: list[tuple[_Channel, int]] = []  # every (socket, ID) it was sent with
        self.done = False


class Resolver:
    def __init__(
        self,
        settings: ResolverSettings,
        nameservers: Sequence[Nameserver] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._first_timeout = min(settings.query_timeout, settings.deadline)
        self._nameservers = tuple(nameservers or settings.nameservers or system_nameservers())
        self._clock = clock
        self.cache = AnswerCache(
            settings.cache_min_ttl, settings.cache_max_ttl, settings.cache_entries, clock
        )
        self.stats = ResolverStats()
        # Guards everything below; held for dictionary and list work only, never across a
        # system call (but for opening a socket when none was opened ahead).
        self._lock = threading.Lock()
        self._running = False
        self._thread: threading.Thread | None = None
        # The receiver thread's id in the kernel, once it runs (for tests and diagnostics).
        self.receiver_thread_id: int | None = None
        self._epoll: select.epoll | None = None
        self._wake_read = self._wake_write = -1
        self._inflight: dict[Question, _Query] = {}
        self._active: list[_Channel | None] = [None] * len(self._nameservers)
        # Sockets opened ahead, outside the lock, to replace each server's active one: opening
        # a socket lets go of the interpreter lock, and with the resolver's lock held, every
        # other session asking a question would queue behind it.
        self._spares: list[_Channel | None] = [None] * len(self._nameservers)
        self._channels: dict[int, _Channel] = {}  # by file descriptor, for the receiver
        self._retired: list[_Channel] = []
        # (when, sequence, query, attempt): the receiver's timers, earliest first.
        self._timers: list[tuple[float, int, _Query, int]] = []
        self._sequence = itertools.count()
        self._sleep_until = 0.0  # when the receiver wakes by itself at the latest
        # Held by a session that reads the answers that have arrived (read_arrived), so that
        # no socket is closed under it (_close_retired). The receiver reads without it: a
        # session holding it can lose the interpreter lock and queue for it behind hundreds
        # of threads, and a receiver waiting for that session's turn held up every answer
        # (9 waits of 140 ms on average in one round at 200 sessions; issue 13).
        self._reading = threading.Lock()
        # A receive buffer each for the sessions (one at a time, under _reading) and for the
        # receiver, which reads alongside them.
        self._session_receive = _DATAGRAMS.receiver()
        self._receiver_receive = _DATAGRAMS.receiver()
        self._ids: list[int] = []

    @property
    def nameservers(self) -> tuple[Nameserver, ...]:
        return self._nameservers

    @property
    def settings(self) -> ResolverSettings:
        return self._settings

    @property
    def running(self) -> bool:
        thread = self._thread
        return self._running and thread is not None and thread.is_alive()

    def start(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._running = True
        self._thread = threading.Thread(target=self._run_receiver, name="spamgate-dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the receiver; every lookup still waiting is answered "resolver stopped"."""
        thread = self._thread
        with self._lock:
            if not self._running or thread is None:
                return
            self._running = False  # new lookups are answered at once from here on
        self._wake()
        thread.join(timeout=5)
        with self._lock:
            left = list(self._inflight.values())
        for query in left:
            self._finish(query, _STOPPED)
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._active = [None] * len(self._nameservers)
            self._spares = [None] * len(self._nameservers)
            self._retired.clear()
        with self._reading:  # a session may be reading what had arrived (see _close_retired)
            for channel in channels:
                channel.sock.close()
        if self._epoll is not None:
            self._epoll.close()
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1

    def lookup(self, qname: str, rdtype: str = "A", *, fresh: bool = False) -> Pending[DnsAnswer]:
        """Start (or join) the lookup of `qname`'s `rdtype` records; safe from any thread.

        `rdtype` is one of RDTYPES; anything else is a programming error (ValueError). A name
        that cannot be put in a query (an empty label, a label over 63 octets) is answered at
        once as MALFORMED: such names come from clients and must not reach the wire as errors.
        `fresh` skips the cache (health probes must see the list as it is now).
        """
        if rdtype not in RDTYPES:
            raise ValueError(f"unsupported record type {rdtype!r}")
        key = Question(qname.lower(), rdtype)
        self.stats.lookups += 1
        # The hot path on a busy MX: a cached answer, with no further checks (only names that
        # passed them were ever asked, so only they are in the cache).
        cached = None if fresh else self.cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return Pending.of(cached)
        question = dnswire.question_for(key.qname, rdtype)
        if question is None:
            return Pending.of(_BAD_NAME)
        future: Pending[DnsAnswer] = Pending()
        self._provide_for(0)
        with self._lock:
            if not self._running:
                return Pending.of(_NOT_RUNNING)
            query = self._inflight.get(key)
            if query is not None:
                self.stats.merged += 1
                query.waiters.append(future)
                return future
            query = _Query(key, question, self._clock() + self._settings.deadline)
            query.waiters.append(future)
            self._inflight[key] = query
            sending: tuple[_Channel, bytes, int, bool] | OSError
            try:
                sending = self._register(query, self._first_timeout)
            except OSError as error:  # no socket could be opened
                sending = error
        if isinstance(sending, OSError):
            self._failed(query, query.attempt, _network(sending))
        else:
            self._transmit(query, sending)
        return future

    # -- attempts: one question to one server ------------------------------------------------

    def _attempt(self, query: _Query) -> None:
        """Send `query` to its current server, or answer it if its time is up."""
        try:
            self._provide_for(query.server)
            with self._lock:
                if query.done:
                    return
                remaining = query.give_up_at - self._clock()
                if remaining <= 0 or not self._running:
                    sending = None
                else:
                    sending = self._register(query, min(self._settings.query_timeout, remaining))
        except OSError as error:  # no socket could be opened
            self._failed(query, query.attempt, _network(error))
            return
        if sending is None:
            self._finish(query, query.last)
            return
        self._transmit(query, sending)

    def _transmit(self, query: _Query, sending: tuple[_Channel, bytes, int, bool]) -> None:
        """Send what _register made ready, outside the lock."""
        channel, wire, attempt, wake = sending
        if wake:
            self._wake()
        self.stats.queries_sent += 1
        try:
            _DATAGRAMS.send(channel.sock, wire)
        except BlockingIOError:
            pass  # the socket buffer is full: as if the datagram were lost; the timer runs
        except OSError as error:
            self._failed(query, attempt, _network(error))

    def _register(self, query: _Query, timeout: float) -> tuple[_Channel, bytes, int, bool]:
        """Under the lock: pick the socket and ID for the next attempt and set its timer."""
        channel = self._channel(query.server)
        query_id = self._new_id()
        while query_id in channel.pending:
            query_id = self._new_id()
        query.attempt += 1
        channel.pending[query_id] = (query, query.attempt)
        query.sent_on.append((channel, query_id))
        now = self._clock()
        query.attempt_ends = now + timeout
        heapq.heappush(self._timers, (now + timeout, next(self._sequence), query, query.attempt))
        wake = now + timeout < self._sleep_until
        if wake:
            self._sleep_until = now + timeout
        return channel, dnswire.encode_query(query_id, query.question), query.attempt, wake

    def _channel(self, server: int) -> _Channel:
        """Under the lock: the socket for the next query to `server`."""
        channel = self._active[server]
        if channel is None or channel.sent >= _QUERIES_PER_SOCKET:
            if channel is not None:
                channel.retired = True
                self._retired.append(channel)
            channel, self._spares[server] = self._spares[server], None
            if channel is None:  # none opened ahead (the first query, or a failed open)
                channel = self._open(server)
            self._active[server] = channel
        channel.sent += 1
        return channel

    def _open(self, server: int) -> _Channel:
        channel = _Channel(self._nameservers[server])
        self._channels[channel.fd] = channel
        assert self._epoll is not None
        self._epoll.register(channel.fd, select.EPOLLIN)
        return channel

    def _provide_for(self, server: int) -> None:
        """Outside the lock: a socket opened ahead for `server`, and query IDs drawn ahead,
        so that the lock is never held across a system call."""
        if self._spares[server] is None and self._running:
            try:
                spare = self._open(server)
            except OSError:
                return  # _channel() tries again, and reports the error to the query
            with self._lock:
                if self._spares[server] is None:
                    self._spares[server] = spare
                else:
                    # Another thread was quicker. Retired, not closed here: only the receiver
                    # closes sockets, when no session is reading them (_close_retired). This
                    # may be a session reading answers (a failed attempt is retried from
                    # _read), holding _reading: closing here once deadlocked the resolver
                    # under truncated answers (make soak, dns-truncated).
                    self._retired.append(spare)
        if len(self._ids) < _IDS_PER_DRAW // 4:
            drawn = struct.unpack(f"!{_IDS_PER_DRAW}H", os.urandom(2 * _IDS_PER_DRAW))
            self._ids.extend(drawn)  # one call: atomic for the interpreter lock

    def _new_id(self) -> int:
        if not self._ids:
            self._ids = list(struct.unpack(f"!{_IDS_PER_DRAW}H", os.urandom(2 * _IDS_PER_DRAW)))
        return self._ids.pop()

    def _failed(self, query: _Query, attempt: int, answer: DnsAnswer) -> None:
        """Attempt number `attempt` of `query` ended without a definitive answer: ask the next
        server, or the first again in a new round, as long as it is worth it."""
        with self._lock:
            if query.done or query.attempt != attempt:
                return  # a later attempt is under way, or an answer came
            query.attempt += 1  # its timer, if it was not what fired, is stale now
            query.last = answer
            if answer.kind is AnswerKind.TIMEOUT:
                query.timed_out = True
            query.server += 1
            finished = False
            if query.server >= len(self._nameservers):
                # Every server answered, badly: asking again at once would get the same answers.
                if not query.timed_out or query.round + 1 >= _MAX_ROUNDS:
                    finished = True
                query.round += 1
                query.server = 0
                query.timed_out = False
        if finished:
            self._finish(query, query.last)
        else:
            self._attempt(query)

    def _finish(self, query: _Query, answer: DnsAnswer) -> None:
        with self._lock:
            if query.done:
                return
            query.done = True
            if self._inflight.get(query.key) is query:
                del self._inflight[query.key]
            for channel, query_id in query.sent_on:
                if channel.pending.get(query_id, (None,))[0] is query:
                    del channel.pending[query_id]
        if answer.kind.is_definitive:
            self.cache.put(query.key, answer)
        for waiter in query.waiters:
            waiter.set_result(answer)  # the first answer wins: a second one is ignored

    def _answered(self, query: _Query, attempt: int, response: dnswire.Response) -> None:
        if response.answer.kind.is_definitive:
            self._finish(query, response.answer)
        elif response.truncated:
            self._ask_over_tcp(query)
        else:
            self._failed(query, attempt, response.answer)

    # -- the receiver thread ----------------------------------------------------------------

    def _wake(self) -> None:
        # Full (it is awake anyway) or closed (stopping): either way nothing to do.
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"!")

    def read_arrived(self) -> None:
        """Read every answer that has arrived, on the caller's thread; nothing if another
        session is reading them just now (the receiver may be reading too: each datagram
        goes to one of them). Sessions call this before they wait for answers.

        Under a flood the receiver thread is one of hundreds that want the interpreter lock,
        and it may get it tens of milliseconds after its answers arrived (p90 250 ms at 200
        sessions, bench/RESULTS.md). A session that holds the lock already, and is about to
        wait, reads them itself: what has arrived is then answered at once, without a
        wake-up of the receiver or of the session."""
        if not self._running or not self._reading.acquire(blocking=False):
            return
        try:
            for channel in list(self._channels.values()):
                if channel.pending:
                    self._read(channel, self._session_receive)
        finally:
            self._reading.release()

    def _run_receiver(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        self.receiver_thread_id = threading.get_native_id()
        if self._settings.realtime_receiver:
            _become_realtime()
        while True:
            with self._lock:
                if not self._running:
                    return
                timeout = self._timers[0][0] - self._clock() if self._timers else 3600.0
                self._sleep_until = self._clock() + timeout
            try:
                events = epoll.poll(max(0.0, timeout))
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_read:
                    _drain_pipe(fd)
                    continue
                channel = self._channels.get(fd)
                if channel is not None:
                    self._read(channel, self._receiver_receive)
            self._expire()
            self._close_retired()

    def _read(self, channel: _Channel, receive: Callable[[socket.socket], bytes]) -> None:
        """Every datagram waiting on `channel`: each answer is matched to its question."""
        while True:
            try:
                data = receive(channel.sock)
            except BlockingIOError:
                return
            except OSError as error:
                # A connected UDP socket reports an ICMP error of an earlier datagram here
                # (ECONNREFUSED: nothing listens on the server's port): none of the questions
                # waiting on it will be answered by that server.
                if error.errno in (errno.EBADF, errno.ENOTSOCK):
                    return
                with self._lock:
                    waiting = list(channel.pending.values())
                for query, attempt in waiting:
                    self._failed(query, attempt, _network(error))
                continue
            query_id = dnswire.query_id_of(data)
            sent = channel.pending.get(query_id) if query_id is not None else None
            if sent is None or query_id is None:
                continue  # late (already answered or given up) or forged
            query, attempt = sent
            response = dnswire.parse_response(data, query_id, query.question)
            if response is None:
                continue  # not the answer to that question: keep waiting for it
            # A late answer to an earlier attempt is as good as the current one's if it is
            # definitive; a failure it reports is that attempt's, long since given up.
            self._answered(query, attempt, response)

    def _expire(self) -> None:
        now = self._clock()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, query, attempt = heapq.heappop(self._timers)
                if not query.done and query.attempt == attempt:
                    due.append((query, attempt))
        for query, attempt in due:
            self._failed(query, attempt, _TIMEOUT)

    def _close_retired(self) -> None:
        """On the receiver thread, the only one that closes sockets while the resolver runs:
        forget and close the retired sockets nothing waits on any more.

        Never while a session reads answers: it may have read a socket's descriptor number a
        moment ago, and once closed the number can be given to a new socket at once (libmilter
        accepts SMTP sessions without the interpreter lock). Then they wait for the next
        wake-up: the receiver does not wait for the session (see _reading)."""
        if not self._retired:  # most wake-ups: no lock taken for nothing
            return
        if not self._reading.acquire(blocking=False):
            return
        try:
            with self._lock:
                idle = [c for c in self._retired if not c.pending]
                if not idle:
                    return
                self._retired = [c for c in self._retired if c.pending]
                for channel in idle:
                    self._channels.pop(channel.fd, None)
            for channel in idle:
                if self._epoll is not None:
                    with contextlib.suppress(OSError, ValueError):  # stopped meanwhile
                        self._epoll.unregister(channel.fd)
                channel.sock.close()
        finally:
            self._reading.release()

    # -- TCP, for an answer too large for UDP (TC set) -------------------------------------

    def _ask_over_tcp(self, query: _Query) -> None:
        """Ask the same server again over TCP, on a thread of its own (it is rare: list
        answers are small), within what is left of the attempt's timeout."""
        with self._lock:
            if query.done:
                return
            query.attempt += 1  # the UDP timer is stale: the TCP exchange keeps its own time
            attempt = query.attempt
            server = self._nameservers[query.server]
            timeout = query.attempt_ends - self._clock()
        if timeout <= 0:
            self._failed(query, attempt, _TIMEOUT)
            return
        threading.Thread(
            target=self._tcp_exchange,
            args=(query, attempt, server, timeout),
            name="spamgate-dns-tcp",
            daemon=True,
        ).start()

    def _tcp_exchange(
        self, query: _Query, attempt: int, server: Nameserver, timeout: float
    ) -> None:
        query_id = self._tcp_id()
        ends = time.monotonic() + timeout
        try:
            with socket.create_connection((server.host, server.port), timeout=timeout) as conn:
                wire = dnswire.encode_query(query_id, query.question)
                conn.sendall(len(wire).to_bytes(2, "big") + wire)
                size = int.from_bytes(_read_exactly(conn, 2, ends), "big")
                data = _read_exactly(conn, size, ends)
        except TimeoutError:
            self._failed(query, attempt, _TIMEOUT)
            return
        except OSError as error:
            self._failed(query, attempt, _network(error))
            return
        self.stats.queries_sent += 1
        response = dnswire.parse_response(data, query_id, query.question)
        if response is None or response.truncated:
            self._failed(query, attempt, DnsAnswer(AnswerKind.MALFORMED, detail="BadResponse"))
            return
        self._answered(query, attempt, response)

    def _tcp_id(self) -> int:
        with self._lock:
            return self._new_id()


def _become_realtime() -> None:
    """Put the calling thread (the receiver) under SCHED_RR at priority 1, the lowest
    real-time priority, and say in the log whether that worked.

    Why (issue 13, bench/RESULTS.md): at 200 sessions rbldnsd answered within a millisecond,
    yet the answers waited in spamgate's sockets p50 70-100 ms and p99 200-800 ms (kernel
    receive times against the time they were read): the receiver thread, woken by epoll,
    queued for a CPU and for the interpreter lock behind hundreds of busy session threads,
    and every session waiting for a list waited for it. A real-time thread is run as soon as
    it is woken. It spends almost all its time asleep in epoll, and the kernel keeps 5% of
    every second for normal threads whatever real-time threads do (sched_rt_runtime_us).
    Only this thread: session threads and libmilter's stay as they are."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, AttributeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        log.warning(
            "DNS receiver thread at normal priority: real-time refused (%s); under a flood "
            "list answers may wait for the session threads. Allow it with LimitRTPRIO=1 "
            "(systemd) or set resolver.realtime_receiver: false",
            reason,
        )
        return
    log.info("DNS receiver thread at real-time priority (SCHED_RR 1)")


def _read_exactly(conn: socket.socket, size: int, ends: float) -> bytes:
    chunks = []
    while size:
        conn.settimeout(max(0.001, ends - time.monotonic()))
        chunk = conn.recv(size)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed by the server")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _network(error: OSError) -> DnsAnswer:
    return DnsAnswer(AnswerKind.NETWORK, detail=error.strerror or str(error))
