"""DNS list health: counters, RFC 5782 probes and a circuit breaker, per list.

A DNS list that breaks does not stop answering politely. Its domain expires and a parking
service answers everything; its operator starts refusing you with 127.255.255.x; its servers
time out. The first two would be read as listings by a naive filter and reject the world.
spamgate already treats such answers as unusable one by one; this module notices when a list
as a whole has gone bad and suspends it (one WARNING line), so its answers stop counting and
its queries stop being sent, until probes show it is well again:

- probes (RFC 5782 section 5): an IP list must list 127.0.0.2 and must not list 127.0.0.1
  (IPv6-only lists: ::FFFF:7F00:2 and ::FFFF:7F00:1); a domain list must list `test` and must
  not list `invalid`. Sent at start, every `health.probe_interval`, and after a suspension
  with exponential back-off;
- a circuit breaker: a list whose share of listings over `health.window` seconds goes past
  `health.max_hit_ratio` (with at least `health.min_checks` checks) is suspended too.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import logging
import statistics
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from spamgate.answers import DnsAnswer, Promise, wait_all
from spamgate.config import DnsList, DomainList, HealthSettings, IpList
from spamgate.dnslists import ListOutcome, ListStatus, classify, query_name

log = logging.getLogger("spamgate")


class ListState(enum.Enum):
    UNPROBED = "unprobed"  # in use; no probe has answered yet
    HEALTHY = "healthy"
    SUSPENDED = "suspended"
    UNCHECKED = "unchecked"  # probes turned off for this list


@dataclass(frozen=True)
class ProbeNames:
    """The two query names that test a list: one must be listed, one must not."""

    listed: str
    unlisted: str


def probe_names(dns_list: DnsList) -> ProbeNames | None:
    """RFC 5782's test points for the list, or the list's own; None if probes are off."""
    probe = dns_list.probe
    if not probe.enabled:
        return None
    if isinstance(dns_list, DomainList):
        listed = probe.listed or "test"
        unlisted = probe.unlisted or "invalid"
        return ProbeNames(f"{listed}.{dns_list.query_zone}", f"{unlisted}.{dns_list.query_zone}")
    assert isinstance(dns_list, IpList)
    if dns_list.ipv4:
        default_listed, default_unlisted = "127.0.0.2", "127.0.0.1"
    else:
        default_listed, default_unlisted = "::ffff:7f00:2", "::ffff:7f00:1"
    positive = ipaddress.ip_address(probe.listed or default_listed)
    negative = ipaddress.ip_address(probe.unlisted or default_unlisted)
    # RFC 5782 tests an IPv6 list with the nibble form of an IPv4-mapped address: no mapping
    # back to IPv4 here, unlike a client's address.
    return ProbeNames(
        query_name(positive, dns_list.query_zone), query_name(negative, dns_list.query_zone)
    )


def judge_probe(dns_list: DnsList, listed: DnsAnswer, unlisted: DnsAnswer) -> str:
    """What is wrong with a list, given its answers to its two test names; "" if nothing."""
    positive = classify(dns_list, listed)
    negative = classify(dns_list, unlisted)
    if negative.status is ListStatus.LISTED:
        return "it lists its must-not-list test entry: it answers for everything"
    if positive.status is ListStatus.UNUSABLE:
        codes = f" ({'+'.join(positive.codes)})" if positive.codes else ""
        return f"its test entry gets an unusable answer: {positive.failure}{codes}"
    if negative.status is ListStatus.UNUSABLE:
        return f"its must-not-list test entry gets an unusable answer: {negative.failure}"
    if positive.status is not ListStatus.LISTED:
        return "it does not list its test entry"
    return ""


_WINDOW_SLICES = 60  # the breaker's window is counted in this many time slices
_SILENT_PROBE_RETRY = 10.0  # seconds before a probe that got no answer is asked again
_NO_ANSWER = "no answer to its test entries"
_SILENT_FAILURES = ("timeout", "deadline", "network")


def _is_silence(problem: str) -> bool:
    """Whether a probe's problem is that no answer came, rather than a wrong one."""
    if problem == _NO_ANSWER:
        return True
    kind = problem.rpartition("unusable answer: ")[2]
    return kind in _SILENT_FAILURES


@dataclass
class _Record:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    # The breaker's window as time slices of [start, checks, listed]: memory grows with the
    # number of slices, not with the traffic (one entry per answer held 900,000 tuples for
    # ten minutes of a busy MX).
    recent: collections.deque[list[float]] = field(default_factory=collections.deque)
    recent_checks: int = 0
    recent_listed: int = 0
    failures_in_row: int = 0
    silent_probe: bool = False  # the last probe got no answer (once is forgiven)
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=512)
    )
    state: ListState = ListState.UNPROBED
    reason: str = ""
    backoff: float = 0.0
    next_probe_at: float = 0.0
    last_probe_at: float | None = None


@dataclass(frozen=True)
class ListReport:
    """One list's health, as `spamgate lists`, the status file and metrics show it."""

    name: str
    state: str
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
        self._records: dict[str, _Record] = {}
        self._suspended: frozenset[str] = frozenset()
        self._suspension_waiters: set[threading.Event] = set()
        self.reconfigure(lists, settings)

    def reconfigure(self, lists: Sequence[DnsList], settings: HealthSettings) -> None:
        """Follow a reloaded policy: keep the history of lists that stay, add new ones."""
        now = self._clock()
        with self._lock:
            self._settings = settings
            self._slice = settings.window / _WINDOW_SLICES
            self._lists = {dns_list.name: dns_list for dns_list in lists}
            old = self._records
            self._records = {name: old.get(name) or _Record() for name in self._lists}
            for name, record in self._records.items():
                if probe_names(self._lists[name]) is None:
                    record.state, record.reason = ListState.UNCHECKED, ""
                elif record.state is ListState.UNCHECKED or name not in old:
                    record.state, record.next_probe_at = ListState.UNPROBED, now
            self._refresh_suspended()

    def _refresh_suspended(self) -> None:
        suspended = frozenset(
            name for name, r in self._records.items() if r.state is ListState.SUSPENDED
        )
        newly = suspended - self._suspended
        self._suspended = suspended
        if newly:
            # Wake the sessions waiting for DNS: they stop waiting for a suspended list.
            for wake in self._suspension_waiters:
                wake.set()

    def add_suspension_waiter(self, wake: threading.Event) -> None:
        """Set `wake` whenever a list is suspended (see ListLookups._wait)."""
        with self._lock:
            self._suspension_waiters.add(wake)

    def remove_suspension_waiter(self, wake: threading.Event) -> None:
        with self._lock:
            self._suspension_waiters.discard(wake)

    def is_suspended(self, name: str) -> bool:
        # Read on every lookup: a frozenset swapped whole is safe to read without the lock.
        return name in self._suspended

    def record(self, outcomes: Iterable[ListOutcome]) -> None:
        now = self._clock()
        tripped: list[tuple[str, str]] = []
        with self._lock:
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
                if outcome.status is ListStatus.UNUSABLE or record.state is ListState.SUSPENDED:
                    continue
                listed = outcome.status is ListStatus.LISTED
                recent = record.recent
                if not recent or now >= recent[-1][0] + self._slice:
                    recent.append([now, 0, 0])
                recent[-1][1] += 1
                recent[-1][2] += listed
                record.recent_checks += 1
                record.recent_listed += listed
                reason = self._breaker(record, now)
                if reason:
                    tripped.append((outcome.dns_list.name, reason))
                    self._suspend(record, reason, now)
            if tripped:
                self._refresh_suspended()
        for name, reason in tripped:
            log.warning("list %s suspended: %s", name, reason)

    def answered(self, outcome: ListOutcome) -> None:
        """One answer from the DNS, as it arrives (the resolver's thread calls this).

        Counted here rather than when a session collects its verdict, so that a run of
        timeouts suspends the list the moment the run is complete: libmilter's worker pool
        queues sessions behind the ones waiting for DNS, so a session may collect long after
        its answer (or its silence) came."""
        limit = self._settings.max_failures
        if not limit or outcome.failure == "suspended":
            return
        with self._lock:
            record = self._records.get(outcome.dns_list.name)
            if record is None or record.state is ListState.SUSPENDED:
                return
            if outcome.status is not ListStatus.UNUSABLE:
                record.failures_in_row = 0
                return
            record.failures_in_row += 1
            if record.failures_in_row < limit:
                return
            reason = (
                f"its last {record.failures_in_row} answers were unusable (the last: "
                f"{outcome.failure}): sessions stop waiting for it"
            )
            now = self._clock()
            self._suspend(record, reason, now)
            # Asked again soon: a run of timeouts can also be a burst of load on this host.
            record.next_probe_at = now + min(_SILENT_PROBE_RETRY, self._settings.retry_min)
            self._refresh_suspended()
        log.warning("list %s suspended: %s", outcome.dns_list.name, reason)

    def _breaker(self, record: _Record, now: float) -> str:
        settings = self._settings
        # A slice leaves the window whole, up to one slice early: 1/_WINDOW_SLICES of it.
        while record.recent and record.recent[0][0] < now - settings.window:
            _, checks, listed = record.recent.popleft()
            record.recent_checks -= int(checks)
            record.recent_listed -= int(listed)
        checks = record.recent_checks
        if checks < settings.min_checks:
            return ""
        ratio = record.recent_listed / checks
        if ratio <= settings.max_hit_ratio:
            return ""
        return (
            f"it listed {ratio:.0%} of {checks} clients in {settings.window:g} s "
            f"(more than {settings.max_hit_ratio:.0%}): a broken list that lists everyone "
            f"must not refuse the world"
        )

    def _suspend(self, record: _Record, reason: str, now: float) -> None:
        settings = self._settings
        record.state, record.reason = ListState.SUSPENDED, reason
        record.backoff = min(max(record.backoff * 2, settings.retry_min), settings.retry_max)
        record.next_probe_at = now + record.backoff
        record.recent.clear()
        record.recent_checks = record.recent_listed = record.failures_in_row = 0

    def due_for_probe(self) -> list[DnsList]:
        now = self._clock()
        with self._lock:
            return [
                self._lists[name]
                for name, record in self._records.items()
                if record.state is not ListState.UNCHECKED and record.next_probe_at <= now
            ]

    def apply_probe(self, dns_list: DnsList, problem: str) -> None:
        """A probe's verdict: suspend (one WARNING) or resume (one INFO) on a change."""
        now = self._clock()
        with self._lock:
            record = self._records.get(dns_list.name)
            if record is None or record.state is ListState.UNCHECKED:
                return
            record.last_probe_at = now
            was = record.state
            # A probe shares the resolver with the traffic: under load, or with DNS that
            # answers only over TCP, one can time out while the list is fine. Silence is
            # suspended on the second probe in a row (a silent list is suspended sooner by
            # its run of failed answers, see `answered`); a wrong answer on the first.
            asking_again = (
                bool(problem)
                and _is_silence(problem)
                and was is not ListState.SUSPENDED
                and not record.silent_probe
            )
            if asking_again:
                record.silent_probe = True
                record.next_probe_at = now + min(_SILENT_PROBE_RETRY, self._settings.retry_min)
            elif problem:
                self._suspend(record, f"probe: {problem}", now)
            else:
                record.state, record.reason, record.backoff = ListState.HEALTHY, "", 0.0
                record.next_probe_at = now + self._settings.probe_interval
            if not asking_again:
                record.silent_probe = False
            self._refresh_suspended()
        if asking_again:
            log.info("list %s: probe: %s; asking again before suspending", dns_list.name, problem)
        elif problem and was is not ListState.SUSPENDED:
            log.warning("list %s suspended: probe: %s", dns_list.name, problem)
        elif not problem and was is ListState.SUSPENDED:
            log.info("list %s resumed: its probes pass again", dns_list.name)

    def reports(self) -> list[ListReport]:
        now = self._clock()
        with self._lock:
            return [self._report(name, record, now) for name, record in self._records.items()]

    @staticmethod
    def _report(name: str, record: _Record, now: float) -> ListReport:
        counts = record.counts
        checks = counts["checks"]
        latencies = sorted(record.latencies)
        p50 = statistics.median(latencies) if latencies else None
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] if latencies else None
        return ListReport(
            name=name,
            state=record.state.value,
            reason=record.reason,
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


def probe_lists(
    lists: Sequence[DnsList],
    lookup: Callable[[str], Promise[DnsAnswer]],
    timeout: float,
) -> dict[str, str]:
    """Ask each list its two test questions, all at once; what is wrong with each ("" if
    nothing). Lists with probes turned off are left out."""
    asked = []
    for dns_list in lists:
        names = probe_names(dns_list)
        if names is not None:
            asked.append((dns_list, lookup(names.listed), lookup(names.unlisted)))
    wait_all([f for _, *pair in asked for f in pair], timeout)
    problems = {}
    for dns_list, listed, unlisted in asked:
        if not (listed.done() and unlisted.done()):
            problems[dns_list.name] = _NO_ANSWER
        else:
            problems[dns_list.name] = judge_probe(dns_list, listed.result(), unlisted.result())
    return problems
