"""DNS list health: counters, RFC 5782 probes and a circuit breaker, per list.

A DNS list that breaks does not stop answering politely. Its domain expires and a parking
service answers everything; its operator starts refusing you with 127.255.255.x; its servers
time out. The first two would be read as listings by a naive filter and reject the world.
spamgate already treats such answers as unusable one by one; this module notices when a list
as a whole has gone bad and suspends it (one WARNING line), so its answers stop counting and
its queries stop being sent, until probes show it is well again:

- probes (RFC 5782 section 5): an IP list must list 127.0.0.2 and must not list 127.0.0.1,
  and on IPv6 ::FFFF:7F00:2 and ::FFFF:7F00:1; a domain list must list `test` and must not
  list `invalid`. An IP list asked about both families (the default) is probed on both, and
  each family is judged and suspended apart: a list whose IPv6 side lists everyone, or does
  not answer, keeps refusing on IPv4. Sent at start, every `health.probe_interval`, after a
  suspension with exponential back-off, and when the circuit breaker asks;
- a circuit breaker: a list that lists more than `health.max_hit_ratio` of the distinct
  clients it was asked about over `health.window` (client networks, a /24 or a /64, for an IP
  list; names for a domain list; at least `health.min_checks` of them) is probed at once, and
  suspended only if the probe fails. A high ratio alone is also what a flood of listed clients
  looks like, and one bot that reconnects must not switch a list off for everyone (issue 14).
  `health.breaker` (global, or a list's own `health:`) can let the ratio alone suspend a list
  instead, or turn the breaker off;
- a run of `health.max_failures` unusable answers suspends the family they came from at once.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import ipaddress
import logging
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from spamgate.core.addresses import IPAddress, normalize_address
from spamgate.core.evidence import Family, ListOutcome, ListStatus
from spamgate.core.listspecs import DnsList, DomainList, IpList
from spamgate.core.settings import BREAKER_MAX_CLIENTS, Breaker, HealthSettings
from spamgate.dns.answers import DnsAnswer, Promise, wait_all
from spamgate.dns.dnslists import classify, query_name, side_name

log = logging.getLogger("spamgate")


class ListState(enum.Enum):
    UNPROBED = "unprobed"  # in use; no probe has answered yet
    HEALTHY = "healthy"
    SUSPENDED = "suspended"
    UNCHECKED = "unchecked"  # probes turned off for this list


@dataclass(frozen=True)
class ProbeNames:
    """The two query names that test a list (one family of an IP list): one must be listed,
    one must not."""

    listed: str
    unlisted: str
    family: Family | None = None  # None for a domain list


def families(dns_list: DnsList) -> tuple[Family | None, ...]:
    """The sides of a list that are judged and suspended apart: the families an IP list is
    asked about, or a domain list whole (None)."""
    if isinstance(dns_list, IpList):
        return tuple(
            family
            for family, asked in ((Family.IPV4, dns_list.ipv4), (Family.IPV6, dns_list.ipv6))
            if asked
        )
    return (None,)


def probe_points(dns_list: DnsList) -> tuple[ProbeNames, ...]:
    """The test names of each side of the list (RFC 5782's, or the list's own); () if probes
    are off."""
    probe = dns_list.probe
    if not probe.enabled:
        return ()
    if isinstance(dns_list, DomainList):
        listed = probe.listed or "test"
        unlisted = probe.unlisted or "invalid"
        return (ProbeNames(f"{listed}.{dns_list.query_zone}", f"{unlisted}.{dns_list.query_zone}"),)
    zone = dns_list.query_zone
    return tuple(
        ProbeNames(
            query_name(_test_point(probe.listed, "127.0.0.2", family), zone),
            query_name(_test_point(probe.unlisted, "127.0.0.1", family), zone),
            family,
        )
        for family in families(dns_list)
        if family is not None
    )


def _test_point(entry: str, default: str, family: Family) -> IPAddress:
    """The address that tests one family. RFC 5782's IPv6 test points are its IPv4 ones
    mapped (::FFFF:7F00:2 is ::ffff:127.0.0.2), and so is an IPv4 entry of the list's own on
    IPv6; an IPv6 entry tests IPv6 only (IPv4 keeps the RFC's). Queried in nibble form with
    no mapping back to IPv4, unlike a client's address."""
    address = normalize_address(ipaddress.ip_address(entry or default))
    if family is Family.IPV4:
        return address if address.version == 4 else ipaddress.IPv4Address(default)
    if address.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{address}")
    return address


def probe_names(dns_list: DnsList) -> ProbeNames | None:
    """The test names of the list's first side (IPv4 for a list asked about both); None if
    probes are off. See probe_points for all of them."""
    points = probe_points(dns_list)
    return points[0] if points else None


class ProbeFault(enum.Enum):
    """What a probe can find wrong with one side of a list."""

    LISTS_EVERYTHING = "lists-everything"  # its must-not-list test entry is listed
    LISTED_UNUSABLE = "listed-unusable"  # its test entry gets an unusable answer
    UNLISTED_UNUSABLE = "unlisted-unusable"  # so does its must-not-list one
    NOT_LISTED = "not-listed"  # its test entry is not listed
    NO_ANSWER = "no-answer"  # neither question was answered in time


# The kinds of unusable answer (ListOutcome.failure) that mean no answer came, rather than a
# wrong one.
_SILENT_FAILURES = ("timeout", "deadline", "network")


@dataclass(frozen=True)
class ProbeProblem:
    """What is wrong with one side of a list, as its probe found; its text is what the log,
    the status file and `spamgate check-config --probe` show."""

    fault: ProbeFault
    failure: str = ""  # the unusable answer's kind, for the *_UNUSABLE faults
    codes: tuple[str, ...] = ()  # the addresses it held, for LISTED_UNUSABLE

    @property
    def silent(self) -> bool:
        """Whether no answer came, rather than a wrong one (silence is asked about again
        before a list is suspended for it)."""
        if self.fault is ProbeFault.NO_ANSWER:
            return True
        unusable = (ProbeFault.LISTED_UNUSABLE, ProbeFault.UNLISTED_UNUSABLE)
        return self.fault in unusable and self.failure in _SILENT_FAILURES

    def __str__(self) -> str:
        match self.fault:
            case ProbeFault.LISTS_EVERYTHING:
                return "it lists its must-not-list test entry: it answers for everything"
            case ProbeFault.LISTED_UNUSABLE:
                codes = f" ({'+'.join(self.codes)})" if self.codes else ""
                return f"its test entry gets an unusable answer: {self.failure}{codes}"
            case ProbeFault.UNLISTED_UNUSABLE:
                return f"its must-not-list test entry gets an unusable answer: {self.failure}"
            case ProbeFault.NOT_LISTED:
                return "it does not list its test entry"
            case ProbeFault.NO_ANSWER:
                return "no answer to its test entries"


def judge_probe(dns_list: DnsList, listed: DnsAnswer, unlisted: DnsAnswer) -> ProbeProblem | None:
    """What is wrong with a list, given its answers to its two test names; None if nothing."""
    positive = classify(dns_list, listed)
    negative = classify(dns_list, unlisted)
    if negative.status is ListStatus.LISTED:
        return ProbeProblem(ProbeFault.LISTS_EVERYTHING)
    if positive.status is ListStatus.UNUSABLE:
        return ProbeProblem(ProbeFault.LISTED_UNUSABLE, positive.failure, positive.codes)
    if negative.status is ListStatus.UNUSABLE:
        return ProbeProblem(ProbeFault.UNLISTED_UNUSABLE, negative.failure)
    if positive.status is not ListStatus.LISTED:
        return ProbeProblem(ProbeFault.NOT_LISTED)
    return None


@dataclass(frozen=True)
class ProbeVerdict:
    """What a probe found wrong with each side of a list (None where nothing): an IP list's
    IPv4 and IPv6 apart, a domain list's one side as family None."""

    problems: tuple[tuple[Family | None, ProbeProblem | None], ...]

    @property
    def problem(self) -> str:
        """In one line: the problem alone if every side has it, else "ipv6: ..." for each
        side that has one; "" if none has."""
        return _in_one_line([(f, "" if p is None else str(p)) for f, p in self.problems])

    def __str__(self) -> str:
        return self.problem


def _in_one_line(problems: Sequence[tuple[Family | None, str]]) -> str:
    failing = [(family, problem) for family, problem in problems if problem]
    if not failing:
        return ""
    if len(failing) == len(problems) and len({problem for _, problem in failing}) == 1:
        return failing[0][1]
    return "; ".join(f"{family.value}: {p}" if family else p for family, p in failing)


_SILENT_PROBE_RETRY = 10.0  # seconds before a probe that got no answer is asked again


class _DistinctClients:
    """The circuit breaker's window: the distinct clients (client networks, or names for a
    domain list) a list was asked about, least recently seen first, each with whether its
    last answer listed it.

    A client seen again moves to the end and counts once, however often it reconnects; one
    not seen for `window` seconds leaves; and at most BREAKER_MAX_CLIENTS stay, the least
    recently seen going first, so memory is bounded whatever a flood brings (the window is then
    the last BREAKER_MAX_CLIENTS clients, still a fair sample of the ratio). O(1) an answer."""

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[str, tuple[float, bool]] = collections.OrderedDict()
        self.listed = 0

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str, listed: bool, now: float) -> None:
        seen = self._seen
        earlier = seen.get(key)
        if earlier is not None:
            self.listed -= earlier[1]
            seen.move_to_end(key)
        seen[key] = (now, listed)
        self.listed += listed
        if len(seen) > BREAKER_MAX_CLIENTS:
            self._forget_oldest()

    def forget_before(self, when: float) -> None:
        seen = self._seen
        while seen and next(iter(seen.values()))[0] < when:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, (_, listed) = self._seen.popitem(last=False)
        self.listed -= listed

    def clear(self) -> None:
        self._seen.clear()
        self.listed = 0


@dataclass
class _Side:
    """What is suspended: one family of an IP list, or a domain list whole."""

    state: ListState = ListState.UNPROBED
    reason: str = ""
    failures_in_row: int = 0


@dataclass
class _Record:
    # The global health settings with the list's own (its `health:`) in their place.
    settings: HealthSettings = field(default_factory=HealthSettings)
    probed: bool = True  # probes on
    sides: dict[Family | None, _Side] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    recent: _DistinctClients = field(default_factory=_DistinctClients)
    silent_probe: bool = False  # the last probe got no answer (once is forgiven)
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=512)
    )
    backoff: float = 0.0
    next_probe_at: float = 0.0
    last_probe_at: float | None = None
    # Why the circuit breaker asked for the probe now due ("" if it did not), and until when
    # it asks (or warns) no more.
    breaker_reason: str = ""
    breaker_quiet_until: float = 0.0
    resumed_at: float | None = None  # when its last suspension ended

    def side_of(self, outcome: ListOutcome) -> _Side:
        side = self.sides.get(outcome.family)
        # An outcome that does not say which family (a test's, or one made by hand) counts for
        # the list's first side.
        return side if side is not None else next(iter(self.sides.values()))

    def suspended(self) -> list[Family | None]:
        return [family for family, side in self.sides.items() if side.state is ListState.SUSPENDED]

    def naming(self, sides: Iterable[Family | None]) -> str:
        """ " for ipv6" when some sides of the list are meant, "" when all are."""
        named = [family for family in sides if family is not None]
        if not named or set(named) == set(self.sides):
            return ""
        return " for " + " and ".join(family.value for family in named)


@dataclass(frozen=True)
class ListReport:
    """One list's health, as `spamgate lists`, the status file and metrics show it."""

    name: str
    state: str  # "suspended:ipv6" when only some families of an IP list are suspended
    reason: str
    checks: int
    listed: int
    clean: int
    unusable: int
    unusable_by_kind: dict[str, int]
    hit_rate: float
    error_rate: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    last_probe_age: float | None


@dataclass(frozen=True)
class _Queued:
    """A decision's outcomes (record), or one answer as it came (answered), and when."""

    outcomes: tuple[ListOutcome, ...]
    answer: ListOutcome | None
    at: float


def _log_notes(notes: Iterable[tuple[int, str]]) -> None:
    for level, message in notes:
        log.log(level, "%s", message)


class ListMonitor:
    """Per-list counters and health; shared by every session, so all of it is thread-safe."""

    def __init__(
        self,
        lists: Sequence[DnsList],
        settings: HealthSettings,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        # What sessions and the resolver's thread report, waiting to be counted under the lock
        # by whichever thread holds it (see _submit).
        self._queued: collections.deque[_Queued] = collections.deque()
        self._lists: dict[str, DnsList] = {}
        self._records: dict[str, _Record] = {}
        # The names ListRecorder.is_suspended knows: a list suspended whole, and each
        # suspended side of an IP list ("ZEN/ipv6").
        self._suspended: frozenset[str] = frozenset()
        self._suspension_waiters: set[threading.Event] = set()
        self.reconfigure(lists, settings)

    def reconfigure(self, lists: Sequence[DnsList], settings: HealthSettings) -> None:
        """Follow a reloaded policy: keep the history of lists that stay, add new ones."""
        now = self._clock()
        with self._locked():  # what is queued is counted under the settings it came under
            self._settings = settings
            self._lists = {dns_list.name: dns_list for dns_list in lists}
            old = self._records
            self._records = {}
            for name, dns_list in self._lists.items():
                record = old.get(name) or _Record()
                record.settings = dns_list.health.applied_to(settings)
                record.probed = bool(probe_points(dns_list))
                sides: dict[Family | None, _Side] = {}
                unprobed = name not in old
                for family in families(dns_list):
                    side = record.sides.get(family)
                    if side is None:
                        side, unprobed = _Side(), True
                    if not record.probed:
                        side.state, side.reason = ListState.UNCHECKED, ""
                    elif side.state is ListState.UNCHECKED:
                        side.state, unprobed = ListState.UNPROBED, True
                    sides[family] = side
                record.sides = sides
                if record.probed and unprobed:
                    record.next_probe_at = now
                self._records[name] = record
            self._refresh_suspended()

    def _refresh_suspended(self) -> None:
        suspended = set()
        for name, record in self._records.items():
            sides = record.suspended()
            if sides and len(sides) == len(record.sides):
                suspended.add(name)
            dns_list = self._lists[name]
            suspended.update(side_name(dns_list, family) for family in sides if family)
        newly = suspended - self._suspended
        self._suspended = frozenset(suspended)
        if newly:
            # Wake the sessions waiting for DNS: they stop waiting for a suspended list.
            for wake in tuple(self._suspension_waiters):
                wake.set()

    # Every session waiting for DNS adds itself and leaves again: without the lock. A set's
    # add, discard and copy (tuple() above) are each one step under the interpreter lock, and
    # taking self._lock here made the waits of a flood queue behind each other on it (issue
    # 13: 11% of py-spy's samples under c50 load sat in this method, waiting for the lock).
    def add_suspension_waiter(self, wake: threading.Event) -> None:
        """Set `wake` whenever a list is suspended (see ListLookups._wait)."""
        self._suspension_waiters.add(wake)

    def remove_suspension_waiter(self, wake: threading.Event) -> None:
        self._suspension_waiters.discard(wake)

    def is_suspended(self, name: str) -> bool:
        """Whether a list ("ZEN": the whole list) or one side of an IP list ("ZEN/ipv6") is
        suspended (dnslists.side_name)."""
        # Read on every lookup: a frozenset swapped whole is safe to read without the lock.
        return name in self._suspended

    def record(self, outcomes: Iterable[ListOutcome]) -> None:
        """A decision's list outcomes: counted, and judged by the circuit breaker."""
        self._submit(_Queued(tuple(outcomes), None, self._clock()))

    def _submit(self, item: _Queued) -> None:
        """Queue `item` and count what is queued if the lock is free; never wait for it.

        Every session ends by recording its outcomes, and the resolver's real-time receiver
        thread reports each answer (answered): when they waited for the lock, a holder that
        had lost its CPU or the interpreter lock made all of them wait, the receiver too, and
        with it every list answer (issue 13). Whoever holds the lock counts what others
        queued meanwhile: after letting go it looks again, since an item queued just as it
        let go would otherwise wait for the next caller. Two passes at most; what is left
        then is counted by the next caller, or by the next reader (_locked)."""
        self._queued.append(item)
        for _ in range(2):
            if not self._queued or not self._lock.acquire(blocking=False):
                return
            try:
                notes = self._count_queued()
            finally:
                self._lock.release()
            _log_notes(notes)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[int, str]]]:
        """The lock, for a method that reads or changes the state: everything queued is
        counted first, so that nothing reported is read stale. The lines to log (the queue's,
        and any the caller adds) are logged once the lock is let go."""
        with self._lock:
            notes = self._count_queued()
            yield notes
        _log_notes(notes)

    def _count_queued(self) -> list[tuple[int, str]]:
        """Count everything queued (the lock is held); the lines to log once it is let go."""
        notes: list[tuple[int, str]] = []
        queued = self._queued
        while queued:
            item = queued.popleft()
            if item.answer is not None:
                notes.extend(self._count_answer(item.answer, item.at))
            else:
                notes.extend(self._count_outcomes(item.outcomes, item.at))
        return notes

    def _count_outcomes(self, outcomes: Sequence[ListOutcome], now: float) -> list[tuple[int, str]]:
        notes: list[tuple[int, str]] = []
        for outcome in outcomes:
            record = self._records.get(outcome.dns_list.name)
            if record is None:
                continue
            record.counts["checks"] += 1
            record.counts[outcome.status.value] += 1
            if outcome.failure:
                record.counts[f"unusable:{outcome.failure}"] += 1
            if (
                outcome.latency_ms is not None
                and outcome.failure != "suspended"
                and not outcome.cached
            ):
                record.latencies.append(outcome.latency_ms)
            if outcome.status is ListStatus.UNUSABLE:
                continue
            settings = record.settings
            if (
                settings.breaker is Breaker.OFF
                or record.side_of(outcome).state is ListState.SUSPENDED
            ):
                continue
            clients = record.recent
            clients.add(outcome.key, outcome.status is ListStatus.LISTED, now)
            clients.forget_before(now - settings.window)
            if len(clients) < settings.min_checks or now < record.breaker_quiet_until:
                continue
            if clients.listed / len(clients) > settings.max_hit_ratio:
                notes.append(self._trip(outcome.dns_list, record, now))
        if notes:
            self._refresh_suspended()
        return notes

    def _trip(self, dns_list: DnsList, record: _Record, now: float) -> tuple[int, str]:
        """The breaker goes off: probe the list now, or suspend it (`health.breaker`)."""
        settings, clients = record.settings, record.recent
        noun = "client networks" if isinstance(dns_list, IpList) else "names"
        reason = (
            f"it listed {clients.listed / len(clients):.0%} of {len(clients)} {noun} in "
            f"{settings.window:g} s (more than {settings.max_hit_ratio:.0%})"
        )
        name = dns_list.name
        if settings.breaker is Breaker.SUSPEND:
            active = [
                f for f, side in record.sides.items() if side.state is not ListState.SUSPENDED
            ]
            reason += ": a broken list that lists everyone must not refuse the world"
            self._suspend(record, active, reason, now)
            return logging.WARNING, f"list {name} suspended{record.naming(active)}: {reason}"
        record.breaker_quiet_until = now + settings.window
        if not record.probed:
            return logging.WARNING, (
                f"list {name}: {reason}, and its probes are off: nothing tells a list gone bad "
                f"from a flood of listed clients, so it stays active (health.breaker: suspend "
                f"lets the ratio alone suspend it)"
            )
        # A flood of listed clients (a botnet, or one that reconnects from many networks)
        # looks the same as a list that lists everyone: only the list's probes tell them apart.
        record.breaker_reason = reason
        record.next_probe_at = min(record.next_probe_at, now)
        return logging.INFO, f"list {name}: {reason}: probing it now"

    def answered(self, outcome: ListOutcome) -> None:
        """One answer from the DNS, as it arrives (the resolver's thread calls this).

        Counted here rather than when a session collects its verdict, so that a run of
        timeouts suspends the list the moment the run is complete: libmilter's worker pool
        queues sessions behind the ones waiting for DNS, so a session may collect long after
        its answer (or its silence) came. A run suspends the family it came from."""
        if not self._settings.max_failures or outcome.failure == "suspended":
            return
        self._submit(_Queued((), outcome, self._clock()))

    def _count_answer(self, outcome: ListOutcome, now: float) -> list[tuple[int, str]]:
        limit = self._settings.max_failures
        record = self._records.get(outcome.dns_list.name)
        if not limit or record is None:
            return []
        side = record.side_of(outcome)
        if side.state is ListState.SUSPENDED:
            return []
        if outcome.status is not ListStatus.UNUSABLE:
            side.failures_in_row = 0
            return []
        side.failures_in_row += 1
        if side.failures_in_row < limit:
            return []
        reason = (
            f"its last {side.failures_in_row} answers were unusable (the last: "
            f"{outcome.failure}): sessions stop waiting for it"
        )
        family = next(f for f, s in record.sides.items() if s is side)
        self._suspend(record, [family], reason, now)
        if record.probed:
            # Asked again soon: a run of timeouts can also be a burst of load on this host.
            # (A list without probes is resumed on trial after its back-off instead: each
            # trial costs a run of sessions the deadline.)
            record.next_probe_at = now + min(_SILENT_PROBE_RETRY, record.settings.retry_min)
        self._refresh_suspended()
        naming = record.naming([family])
        return [(logging.WARNING, f"list {outcome.dns_list.name} suspended{naming}: {reason}")]

    def _suspend(
        self, record: _Record, sides: Iterable[Family | None], reason: str, now: float
    ) -> None:
        settings = record.settings
        if record.resumed_at is not None and now - record.resumed_at >= settings.retry_max:
            record.backoff = 0.0  # well for a long while: this is a new failure, not the last
        for family in sides:
            side = record.sides[family]
            side.state, side.reason, side.failures_in_row = ListState.SUSPENDED, reason, 0
        record.backoff = min(max(record.backoff * 2, settings.retry_min), settings.retry_max)
        record.next_probe_at = now + record.backoff
        record.recent.clear()
        record.breaker_reason = ""

    def due_for_probe(self) -> list[DnsList]:
        """The lists whose probe is due. A list with probes off whose suspension (by a run of
        failures, or `breaker: suspend`) has waited out its back-off is resumed here, on
        trial: only its answers can tell whether it is well again."""
        now = self._clock()
        resumed = []
        with self._locked():
            due = []
            for name, record in self._records.items():
                if record.next_probe_at > now:
                    continue
                if record.probed:
                    due.append(self._lists[name])
                elif record.suspended():
                    for side in record.sides.values():
                        side.state, side.reason = ListState.UNCHECKED, ""
                    record.resumed_at = now
                    record.recent.clear()
                    resumed.append(name)
            if resumed:
                self._refresh_suspended()
        for name in resumed:
            log.info("list %s resumed on trial: its probes are off", name)
        return due

    def apply_probe(self, dns_list: DnsList, verdict: ProbeVerdict | ProbeProblem | None) -> None:
        """A probe's verdict: suspend (one WARNING) or resume (one INFO) each side that
        changes. A single problem is the verdict on every side of the list, and so is None
        (nothing wrong)."""
        now = self._clock()
        with self._locked() as notes:
            record = self._records.get(dns_list.name)
            if record is None or not record.probed:
                return
            problems: dict[Family | None, ProbeProblem | None]
            if isinstance(verdict, ProbeVerdict):
                problems = {f: p for f, p in verdict.problems if f in record.sides}
            else:
                problems = dict.fromkeys(record.sides, verdict)
            change = _judge(record, problems, now)
            self._refresh_suspended()
            notes.extend(change.lines(dns_list.name, record))

    def reports(self) -> list[ListReport]:
        now = self._clock()
        with self._locked():
            return [self._report(name, record, now) for name, record in self._records.items()]

    @staticmethod
    def _report(name: str, record: _Record, now: float) -> ListReport:
        counts = record.counts
        checks = counts["checks"]
        latencies = sorted(record.latencies)
        p50 = statistics.median(latencies) if latencies else None
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] if latencies else None
        suspended = record.suspended()
        if len(suspended) == len(record.sides):
            state = ListState.SUSPENDED.value
            reason = _in_one_line([(family, record.sides[family].reason) for family in suspended])
        elif suspended:
            # Some families of an IP list: "suspended:ipv6", and each one's reason by name.
            named = [family for family in suspended if family is not None]
            state = "suspended:" + ",".join(family.value for family in named)
            reason = "; ".join(f"{family.value}: {record.sides[family].reason}" for family in named)
        else:
            states = {side.state for side in record.sides.values()}
            shown = next(
                (s for s in (ListState.UNCHECKED, ListState.UNPROBED) if s in states),
                ListState.HEALTHY,
            )
            state, reason = shown.value, ""
        return ListReport(
            name=name,
            state=state,
            reason=reason,
            checks=checks,
            listed=counts["listed"],
            clean=counts["clean"],
            unusable=counts["unusable"],
            unusable_by_kind={
                key.removeprefix("unusable:"): value
                for key, value in sorted(counts.items())
                if key.startswith("unusable:")
            },
            hit_rate=counts["listed"] / checks if checks else 0.0,
            error_rate=counts["unusable"] / checks if checks else 0.0,
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            last_probe_age=None if record.last_probe_at is None else now - record.last_probe_at,
        )

    def lines(self) -> list[str]:
        """One `list=NAME state=... checks=N listed=N clean=N unusable=N <kind>=N` per list."""
        lines = []
        for report in sorted(self.reports(), key=lambda r: r.name):
            kinds = " ".join(f"{k}={v}" for k, v in report.unusable_by_kind.items())
            lines.append(
                f"list={report.name} state={report.state} checks={report.checks} "
                f"listed={report.listed} clean={report.clean} unusable={report.unusable}"
                + (f" {kinds}" if kinds else "")
            )
        return lines


@dataclass
class _ProbeChange:
    """What one probe changed for a list, to be logged."""

    again: dict[Family | None, ProbeProblem]  # silent sides, asked again before suspending
    newly: dict[Family | None, ProbeProblem]  # sides suspended now
    resumed: list[Family | None]
    breaker: str  # why the breaker asked for this probe, if it did
    stays_active: bool  # the breaker asked, and the probe passed

    def lines(self, name: str, record: _Record) -> list[tuple[int, str]]:
        because = f" (probed because {self.breaker})" if self.breaker else ""
        lines = [
            (
                logging.INFO,
                f"list {name}: probe{record.naming(sides)}: "
                f"{problem}; asking again before suspending",
            )
            for problem, sides in _by_problem(self.again)
        ]
        lines += [
            (
                logging.WARNING,
                f"list {name} suspended{record.naming(sides)}: probe: {problem}{because}",
            )
            for problem, sides in _by_problem(self.newly)
        ]
        if self.resumed:
            naming = record.naming(self.resumed)
            lines.append((logging.INFO, f"list {name} resumed{naming}: its probes pass again"))
        if self.stays_active:
            lines.append(
                (
                    logging.INFO,
                    f"list {name} stays active: its probes pass, so {self.breaker} is a flood "
                    "of listed clients, not a list gone bad",
                )
            )
        return lines


def _judge(
    record: _Record, problems: dict[Family | None, ProbeProblem | None], now: float
) -> _ProbeChange:
    """Apply a probe's problems, side by side, to a list's record (its monitor's lock held)."""
    record.last_probe_at = now
    settings = record.settings
    breaker = record.breaker_reason
    because = f" (probed because {breaker})" if breaker else ""
    # A probe shares the resolver with the traffic: under load, or with DNS that answers only
    # over TCP, one can time out while the list is fine. Silence is suspended on the second
    # probe in a row (a silent list is suspended sooner by its run of failed answers, see
    # ListMonitor.answered); a wrong answer on the first.
    again = {
        family: problem
        for family, problem in problems.items()
        if problem is not None
        and problem.silent
        and record.sides[family].state is not ListState.SUSPENDED
        and not record.silent_probe
    }
    newly: dict[Family | None, ProbeProblem] = {}
    resumed = []
    for family, problem in problems.items():
        side = record.sides[family]
        if family in again:
            continue
        if problem is not None:
            if side.state is not ListState.SUSPENDED:
                newly[family] = problem
            side.state, side.reason = ListState.SUSPENDED, f"probe: {problem}{because}"
            side.failures_in_row = 0
        else:
            if side.state is ListState.SUSPENDED:
                resumed.append(family)
            side.state, side.reason = ListState.HEALTHY, ""
    record.silent_probe = bool(again)
    if not again:
        record.breaker_reason = ""
    if record.suspended():
        if newly:
            record.recent.clear()
        record.backoff = min(max(record.backoff * 2, settings.retry_min), settings.retry_max)
        record.next_probe_at = now + record.backoff
    else:
        record.backoff = 0.0
        record.next_probe_at = now + settings.probe_interval
        if resumed:
            record.resumed_at = now
    if again:
        retry = now + min(_SILENT_PROBE_RETRY, settings.retry_min)
        record.next_probe_at = min(record.next_probe_at, retry)
    stays_active = bool(breaker) and not again and not record.suspended()
    return _ProbeChange(again, newly, resumed, breaker, stays_active)


def _by_problem(
    problems: dict[Family | None, ProbeProblem],
) -> list[tuple[ProbeProblem, list[Family | None]]]:
    """The sides that have each problem, in the order first seen."""
    grouped: dict[ProbeProblem, list[Family | None]] = {}
    for family, problem in problems.items():
        grouped.setdefault(problem, []).append(family)
    return list(grouped.items())


def probe_lists(
    lists: Sequence[DnsList],
    lookup: Callable[[str], Promise[DnsAnswer]],
    timeout: float,
) -> dict[str, ProbeVerdict]:
    """Ask each side of each list its two test questions, all at once; what is wrong with
    each side. Lists with probes turned off are left out."""
    asked = []
    for dns_list in lists:
        for names in probe_points(dns_list):
            asked.append((dns_list, names.family, lookup(names.listed), lookup(names.unlisted)))
    wait_all([f for *_, listed, unlisted in asked for f in (listed, unlisted)], timeout)
    found: dict[str, list[tuple[Family | None, ProbeProblem | None]]] = {}
    for dns_list, family, listed, unlisted in asked:
        problem: ProbeProblem | None
        if not (listed.done() and unlisted.done()):
            problem = ProbeProblem(ProbeFault.NO_ANSWER)
        else:
            problem = judge_probe(dns_list, listed.result(), unlisted.result())
        found.setdefault(dns_list.name, []).append((family, problem))
    return {name: ProbeVerdict(tuple(problems)) for name, problems in found.items()}
