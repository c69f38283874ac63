"""What every session shares: the policy generation in force, the clocks, the list health
monitor, the metrics and the decision log.

A session reads `Runtime.current` once, when it starts, and keeps that Generation for the
whole connection (shell/session.py); everything else here lives as long as the process.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import Lookups
from spamgate.dns.dnslists import ListOutcome, ListRecorder
from spamgate.dns.listhealth import ListMonitor
from spamgate.shell.metrics import Metrics
from spamgate.state.greylist import Greylister, GreylistTiming
from spamgate.state.recentrejects import RecentRejects
from spamgate.state.store import FailureReport, MemoryStore

# Decision ids only need to be unique enough to find one log line: a seeded generator (seeded
# from os.urandom) gives them without a system call per message, as secrets would make.
_DECISION_IDS = random.Random()
# DMARC's pct= sampling (RFC 7489 6.6.4) needs a uniform draw per message, not a secret one.
_DMARC_SAMPLES = random.Random()
_DECISION_LOG = logging.getLogger("spamgate.decision")


@dataclass(frozen=True)
class Generation:
    """Everything made from one policy file: the policy and its engine (compiled rules
    included), the resolver its settings made, and its greylisting and reject memory.

    A reload makes a new one and installs it with one assignment (`Runtime.current`); a
    session takes one when it starts and uses only that one, so it never sees the engine of
    one policy with the resolver or greylist settings of another."""

    engine: Engine
    resolver: Lookups
    greylister: Greylister | None = None
    recent_rejects: RecentRejects | None = None
    number: int = 1  # 1 at start, one more at each reload

    @property
    def policy(self) -> Policy:
        return self.engine.policy


class Runtime:
    """What every session shares: the current generation, the clocks, the monitor, metrics
    and log. Only `current` changes with a reload, in one assignment."""

    def __init__(
        self,
        engine: Engine,
        resolver: Lookups,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        new_id: Callable[[], str] = lambda: f"{_DECISION_IDS.getrandbits(40):010x}",
        monitor: ListMonitor | None = None,  # None: one for the engine's lists is made
        # None: when the policy greylists, one that keeps its state in memory (explain, tests).
        greylister: Greylister | None = None,
        recent_rejects: RecentRejects | None = None,  # None: no memory of refused clients
        state_failures: FailureReport | None = None,
        metrics: Metrics | None = None,  # None: nothing counted (explain)
        log: Callable[[str], None] = _DECISION_LOG.info,
        dns: bool = True,  # False (explain --no-dns): no lookups; lists logged as ignored
        generation: int = 1,
        # DMARC's pct= sample point, 0..99 (tests fix it).
        dmarc_sample: Callable[[], int] = lambda: _DMARC_SAMPLES.randrange(100),
    ) -> None:
        policy = engine.policy
        if monitor is None:
            monitor = ListMonitor((*policy.ip_lists, *policy.domain_lists), policy.health, clock)
        if greylister is None and policy.uses_greylist:
            timing = GreylistTiming.from_settings(policy.greylist)
            greylister = Greylister(MemoryStore(), timing, time.time)
        self.current = Generation(engine, resolver, greylister, recent_rejects, generation)
        self.clock = clock
        self.now = now
        self.new_id = new_id
        self.monitor = monitor
        self.state_failures = FailureReport() if state_failures is None else state_failures
        self.metrics = metrics
        self.log = log
        self.dns = dns
        self.dmarc_sample = dmarc_sample
        self.draining = False  # stopping: new sessions are turned away
        self._active = 0
        self._active_lock = threading.Lock()
        self.last_session_at = -1e9  # by `clock`: when libmilter last handed us a session

    def session_started(self) -> None:
        with self._active_lock:
            self._active += 1
            self.last_session_at = self.clock()

    def session_ended(self) -> None:
        with self._active_lock:
            self._active -= 1

    def active_sessions(self) -> int:
        return self._active

    def list_recorder(self) -> ListRecorder:
        """Where a session's list outcomes go: the health monitor, and the metrics if
        counted."""
        return _Recorders(self)


class _Recorders:
    """A ListRecorder made of the runtime's monitor and metrics."""

    def __init__(self, runtime: Runtime) -> None:
        self._monitor = runtime.monitor
        self._metrics = runtime.metrics

    def record(self, outcomes: Iterable[ListOutcome]) -> None:
        outcomes = list(outcomes)
        self._monitor.record(outcomes)
        if self._metrics is not None:
            self._metrics.record_lists(outcomes)

    def answered(self, outcome: ListOutcome) -> None:
        self._monitor.answered(outcome)

    def add_suspension_waiter(self, wake: threading.Event) -> None:
        self._monitor.add_suspension_waiter(wake)

    def remove_suspension_waiter(self, wake: threading.Event) -> None:
        self._monitor.remove_suspension_waiter(wake)

    def is_suspended(self, name: str) -> bool:
        return self._monitor.is_suspended(name)
