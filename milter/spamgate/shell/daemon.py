"""The running daemon: logging, the resolver, reload, list health, start and stop.

Threads: the main thread (takes the signals: SIGUSR1 reloads, SIGTERM/SIGINT/SIGHUP drain
and stop), libmilter's main loop and its workers (one per SMTP session), the resolver's
asyncio loop, health (probes lists, writes the status file), stats (the periodic stats
lines) and, while a reload runs, the reload thread. Every loop of ours is bounded by the
`stopping` event or a timeout.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

from spamgate import __version__
from spamgate.config.preflight import load_checked_policy
from spamgate.core import domains
from spamgate.core.engine import Engine
from spamgate.core.listspecs import DnsList
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError
from spamgate.core.settings import ListenAddress, LogSettings, SchedulingSettings
from spamgate.dns.listhealth import ListMonitor, probe_lists
from spamgate.dns.resolver import Resolver, system_nameservers
from spamgate.shell import sdnotify
from spamgate.shell.adapter import ListenError, milter_answers, poke, serve, stop_milter
from spamgate.shell.logmasking import KeyMaskingFormatter
from spamgate.shell.metrics import DaemonState, Metrics
from spamgate.shell.runtime import Generation, Runtime
from spamgate.shell.signals import wait_for_signal
from spamgate.state.greylist import Greylister, GreylistTiming
from spamgate.state.recentrejects import RecentRejects
from spamgate.state.store import PausingStore, open_store

log = logging.getLogger("spamgate")
decisions = logging.getLogger("spamgate.decision")

_FORMAT = "%(asctime)s %(levelname)s %(message)s"
RELOAD_SIGNAL = signal.SIGUSR1
# Blocked in every thread (threads inherit the mask, so before any starts: otherwise the kernel
# may hand SIGTERM to, say, the resolver thread and the process dies on the spot) and taken
# by the main thread (shell/signals.py).
HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, RELOAD_SIGNAL}
STATUS_EVERY = 10.0
# A reload runs on a thread of its own (Daemon.request_reload). One that has not ended after
# RELOAD_TIMEOUT seconds is given up and logged as failed: the limits on what a load reads keep
# it to seconds (config.MAX_POLICY_BYTES, config.MAX_FILE_BYTES), so a longer one is stuck,
# on a file of a hung network mount, say. SIGTERM waits STOP_WAITS_FOR_RELOAD seconds at most
# for a reload in progress, so that its outcome is logged before the daemon stops.
RELOAD_TIMEOUT = 60.0
STOP_WAITS_FOR_RELOAD = 5.0

# The watchdog's test of libmilter: a session within this many seconds proves it hands them
# out; otherwise an option negotiation with our own socket must be answered within the other.
WATCHDOG_RECENT_SESSION = 30.0
WATCHDOG_PROBE_TIMEOUT = 5.0


class LogFile(logging.FileHandler):
    """A FileHandler that does not wait for ever on a FIFO: open(2) of a FIFO for writing
    blocks until a reader opens it (fifo(7)), which would hang a start or a reload that names
    one as `log.target`. Opened with O_NONBLOCK, a FIFO without a reader fails at once with
    ENXIO; the descriptor is then made blocking again, so writes behave as in a FileHandler."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        descriptor = os.open(self.baseFilename, flags, 0o666)
        os.set_blocking(descriptor, True)
        return open(descriptor, "a", encoding=self.encoding, errors=self.errors)


def configure_logging(settings: LogSettings, secrets: Iterable[str] = ()) -> None:
    # One decision line per message: skip what the logging module would otherwise collect
    # for every record and our format never prints (the logging HOWTO, "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller file and line: a walk up the stack per record
    handler: logging.Handler
    if settings.target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(KeyMaskingFormatter(_FORMAT, secrets))
    elif settings.target == "syslog":
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        # syslog adds its own time stamp and host.
        handler.setFormatter(KeyMaskingFormatter("spamgate: %(levelname)s %(message)s", secrets))
    else:
        handler = LogFile(settings.target)
        handler.setFormatter(KeyMaskingFormatter(_FORMAT, secrets))
    root = logging.getLogger("spamgate")
    old = root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(settings.level.value.upper())
    root.propagate = False
    for stale in old:
        stale.close()


# Tracked allocations between two collections of the youngest generation (Python's default is
# 700). Sessions hold a few hundred objects each and most die by reference counting when the
# session ends; collecting every 700 allocations, with 200 sessions open, meant walking the
# live sessions' objects hundreds of times a second and promoting them into older generations
# whose collections then walked them again (issue 13: 0.2-0.3 ms of CPU per message, and
# pauses of 70-100 ms with every thread stopped, at 200 sessions; bench/RESULTS.md).
GC_YOUNG_THRESHOLD = 10_000


def settle_memory() -> None:
    """Before the first session: build what is built lazily, then take every object made so
    far (modules, the policy, the Public Suffix List) out of the garbage collector's sight
    (gc.freeze), so that its full collections walk only what sessions and caches made."""
    domains.organizational_domain("example.com")  # parses the Public Suffix List
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def set_scheduling(settings: SchedulingSettings) -> None:
    """Give the calling thread the policy and nice value of `scheduling:`, and say in the log
    what came of it. Called by the main thread at start, before any other thread is made:
    on Linux both belong to a thread, and a new thread takes its creator's, so every thread
    of the daemon (libmilter's included) runs so; the DNS receiver then raises itself to
    real time (resolver.realtime_receiver).

    Why (issue 13, bench/RESULTS.md): under a flood a session that waits for the interpreter
    lock waits for whichever thread holds it, and on a busy CPU that thread is often not
    running: a Postfix process or another spamgate thread, just woken, preempted it. Under
    SCHED_BATCH a woken spamgate thread no longer preempts the running one, and at nice -10
    Postfix's processes seldom do. Measured against the same code without them, in the same
    rounds, three times: 11-15% more messages a second and 6-9% less CPU a message at 50
    sessions, 6-9% and 6-10% at 200, every time; fewer slow verdicts at 50 sessions every
    time, at 200 in two runs of three."""
    done = []
    if settings.batch:
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            done.append("SCHED_BATCH")
        except OSError as error:
            log.warning(
                "scheduling: SCHED_BATCH refused (%s); threads run under the normal policy",
                error.strerror or error,
            )
    if settings.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, settings.nice)
            done.append(f"nice {settings.nice}")
        except OSError as error:
            log.warning(
                "scheduling: nice %d refused (%s); threads run at nice %d. Allow it with "
                "LimitNICE=%d (systemd) or set scheduling.nice: 0",
                settings.nice,
                error.strerror or error,
                os.getpriority(os.PRIO_PROCESS, 0),
                settings.nice,
            )
    if done:
        log.info("threads run at %s", ", ".join(done))


def one_line_traceback(error: BaseException) -> str:
    """`error` and its traceback as one log line (a reload's failure is one ERROR line)."""
    text = "".join(traceback.format_exception(error))
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


class Daemon:
    def __init__(self, policy: Policy, config_path: str, warnings: Sequence[str] = ()) -> None:
        self.config_path = config_path
        self.policy = policy
        self._preflight_warnings = tuple(warnings)  # logged at start (preflight.py)
        self.generation = 1
        self.resolver = Resolver(policy.resolver)
        lists = (*policy.ip_lists, *policy.domain_lists)
        self.monitor = ListMonitor(lists, policy.health, time.monotonic)
        self.metrics = Metrics()
        self._state_store: tuple[tuple[str, float], PausingStore] | None = None
        state = self._state_for(policy)
        self._state_store = state.store
        self.runtime = Runtime(
            Engine(policy),
            self.resolver,
            monitor=self.monitor,
            metrics=self.metrics,
            log=decisions.info,
            greylister=state.greylister,
            recent_rejects=state.recent_rejects,
            generation=self.generation,
        )
        self.metrics.watch(self._state)
        self.stopping = threading.Event()
        # The reload thread and what it is asked: guarded by _reload_state. An apply holds
        # _apply_lock, and the stop takes it to set `stopping`: no apply after that.
        self._reload_state = threading.Lock()
        self._apply_lock = threading.Lock()
        self._reloader: threading.Thread | None = None  # the reload in progress
        self._reload_started = 0.0
        self._reload_again = False  # SIGUSR1 came during a reload: load once more after it
        self._reload_given_up = False  # it ran past RELOAD_TIMEOUT: its result is dropped
        self._status_warned = False
        self._watchdog: sdnotify.Watchdog | None = None
        self._milter_thread: MilterThread | None = None
        # Keys of every policy loaded so far: sessions that began under an older policy may
        # still log with its key in them.
        self._keys = frozenset(policy.access_keys)

    # -- start and stop ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            configure_logging(self.policy.log, self._keys)
        except OSError as error:
            print(f"spamgate: cannot log to {self.policy.log.target}: {error}", file=sys.stderr)
            return 1
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        set_scheduling(self.policy.scheduling)  # before any thread starts: they inherit it
        self.resolver.start()
        self._log_start()
        if self.policy.metrics.listen:
            try:
                self.metrics.serve(*self.policy.metrics.address())
            except OSError as error:
                log.error("cannot serve metrics on %s: %s", self.policy.metrics.listen, error)
                self.resolver.stop()
                return 1
        helpers = [
            threading.Thread(target=self._health_loop, name="spamgate-health", daemon=True),
            threading.Thread(target=self._stats_loop, name="spamgate-stats", daemon=True),
        ]
        for thread in helpers:
            thread.start()
        settle_memory()
        milter = MilterThread(self.runtime, self.policy, self._ready)
        self._milter_thread = milter
        milter.start()
        try:
            self._wait_for_signals(milter)
            return milter.exit_status
        finally:
            # No reload may apply once the teardown starts; one stuck in applying (a read or
            # a connection that hangs) is not waited for beyond a bound.
            locked = self._apply_lock.acquire(timeout=STOP_WAITS_FOR_RELOAD)
            self.stopping.set()
            if locked:
                self._apply_lock.release()
            if self._watchdog is not None:
                self._watchdog.stop()
            for thread in helpers:
                thread.join(timeout=5)
            self.resolver.stop()
            self.log_stats()
            log.info("spamgate stopped")

    def _wait_for_signals(self, milter: MilterThread) -> None:
        """The main thread owns the signals: reload on SIGUSR1, drain and stop on the others.

        libmilter's own signal thread also waits for SIGTERM, SIGHUP and SIGINT and would stop
        at once, dropping sessions in progress. Linux hands a signal sent to the process to its
        main thread when that thread is waiting for it (complete_signal() in kernel/signal.c
        tries the thread group leader first), so it is this loop that sees them. Only while it
        waits, though: so it does nothing slow between waits (a reload runs on its own thread).
        """
        while milter.is_alive():
            received = wait_for_signal(HANDLED_SIGNALS, 1.0)
            self._watch_reload()
            if received is None:
                continue
            if received == RELOAD_SIGNAL:
                self.request_reload()
                continue
            log.info("received %s: stopping", received.name)
            self._end_reload_before_stop()
            sdnotify.stopping()
            self.runtime.draining = True
            self._drain()
            # Where libmilter listens: a reload that changed `listen` takes effect at restart.
            milter.stop(milter.listen)
            return
        # libmilter stopped on its own (a signal that came while this thread was not waiting):
        # a reload in progress still ends, and is logged, first.
        self._end_reload_before_stop()

    def _ready(self) -> None:
        log.info("listening on %s", self.policy.listen)
        sdnotify.ready(f"serving, policy {self.policy.digest}")
        self._watchdog = sdnotify.start_watchdog(self._healthy)

    def _state(self) -> DaemonState:
        return DaemonState(
            self.monitor,
            self.resolver.stats,
            len(self.resolver.cache),
            self.runtime.active_sessions(),
            self.generation,
        )

    def _healthy(self) -> bool:
        """What the systemd watchdog asks: the resolver runs, and libmilter hands out
        sessions, as a session that started lately shows, or else an option negotiation
        with our own socket that is answered (a stuck accept loop or worker pool would keep
        the process alive and every MTA waiting)."""
        if self.stopping.is_set() or not self.resolver.running:
            return False
        milter = self._milter_thread
        if milter is None or not milter.is_alive():
            return False
        if self.runtime.clock() - self.runtime.last_session_at < WATCHDOG_RECENT_SESSION:
            return True
        return milter_answers(self.policy.listen, WATCHDOG_PROBE_TIMEOUT)

    def _log_start(self) -> None:
        policy = self.policy
        servers = self.resolver.nameservers
        log.info(
            "spamgate %s starting: policy %s (%s), mode=%s, %d IP lists, %d domain lists, "
            "%d rules, DNS via %s",
            __version__,
            self.config_path,
            policy.digest,
            policy.mode.value,
            len(policy.ip_lists),
            len(policy.domain_lists),
            len(policy.rules),
            ", ".join(str(s) for s in servers),
        )
        if os.geteuid() == 0:
            # A warning, not a refusal: `make run` starts it as root on a fresh machine, and
            # spamgate needs no privilege (its ports are unprivileged, it reads no root-only
            # file), so root only widens what a flaw in it could reach. About this process,
            # so not among the pre-flight checks, which check-config runs as whoever checks.
            log.warning(
                "running as root: spamgate needs no privileges; run it as its own user "
                "(systemd/spamgate.service has User=spamgate)"
            )
        for warning in self._preflight_warnings:
            log.warning("%s", warning)
        self._log_state(policy)

    def _state_for(self, policy: Policy) -> StateParts:
        """Greylisting and the reject memory for `policy`, on the store already open if its
        location is unchanged: a reload keeps the connections, and sessions of the old policy
        share the store with the new. Made without installing anything (a reload may still
        fail)."""
        greylister, recent = None, None
        entry = self._state_store
        if policy.uses_state:
            settings = policy.state
            where = (settings.store, settings.timeout)
            if entry is None or entry[0] != where:
                entry = (where, PausingStore(open_store(settings)))
            store = entry[1]
            if policy.uses_greylist:
                timing = GreylistTiming.from_settings(policy.greylist)
                greylister = Greylister(store, timing, time.time)
            if settings.remember_rejects:
                recent = RecentRejects(store, settings.remember_rejects)
        return StateParts(entry, greylister, recent)

    def _log_state(self, policy: Policy) -> None:
        """Say where the state is kept and what uses it, and whether it answers now."""
        if self._state_store is None or not policy.uses_state:
            return
        settings = policy.state
        uses = ["greylisting"] if policy.uses_greylist else []
        if settings.remember_rejects:
            uses.append(f"reject memory {settings.remember_rejects:g}s")
        try:
            self._state_store[1].inner.get_many(["probe"])
        except Exception as error:
            log.warning(
                "state %s does not answer: %s: %s; %s fail(s) open (mail accepted) until it does",
                settings.store_shown,
                type(error).__name__,
                error,
                " and ".join(uses),
            )
            return
        log.info("state %s for %s", settings.store_shown, " and ".join(uses))

    def _drain(self) -> None:
        """New sessions are turned away (see SpamgateMilter.negotiate); let the sessions in
        progress finish, for `shutdown_grace` seconds at most."""
        grace = self.runtime.current.policy.shutdown_grace
        active = self.runtime.active_sessions()
        if not active:
            return
        log.info("stopping: %d session(s) in progress, waiting up to %g s", active, grace)
        give_up = time.monotonic() + grace
        while self.runtime.active_sessions() and time.monotonic() < give_up:
            time.sleep(0.05)
        left = self.runtime.active_sessions()
        if left:
            log.warning("stopping with %d session(s) still in progress", left)

    # -- reload -----------------------------------------------------------------------------

    def reload(self, timeout: float = RELOAD_TIMEOUT) -> bool:
        """Load the policy file again and swap it in whole, or keep the old one; True if the
        new one is in use. Waits for the reload, which SIGUSR1 does not (request_reload)."""
        generation = self.generation
        thread = self.request_reload()
        if thread is not None:
            thread.join(timeout)
        return self.generation != generation

    def request_reload(self) -> threading.Thread | None:
        """Start a reload on a thread of its own, and return at once; the reload thread, or
        None if none runs.

        Not on the main thread, which takes the signals and must take SIGTERM whatever a
        reload does. The limits on what a load reads (regular files only, each of a bounded
        size) keep a load short, yet a policy within them still takes seconds of pure-Python
        YAML, a read from a hung network mount can block for ever, and a bug must not reach
        the signal loop. Also, libmilter's own signal thread takes a SIGTERM that arrives while
        the main thread is not waiting for signals (see _wait_for_signals) and stops at once,
        without draining: the main thread should wait for signals nearly all the time.
        """
        with self._reload_state:
            thread = self._reloader
            if thread is not None:
                if not self._reload_given_up:
                    # A file may have changed after this reload read it: load once more.
                    self._reload_again = True
                    return thread
                # One stuck thread at most: another load would most likely get stuck too.
                log.error(
                    "reload failed, still using policy %s: the reload started %.0f s ago, "
                    "given up, has not ended yet",
                    self.policy.digest,
                    time.monotonic() - self._reload_started,
                )
                return None
            thread = threading.Thread(target=self._reload_loop, name="spamgate-reload")
            thread.daemon = True  # a stop does not wait for a stuck load
            self._reloader = thread
            self._reload_started = time.monotonic()
            self._reload_again = False
            self._reload_given_up = False
        thread.start()
        return thread

    def _reload_loop(self) -> None:
        try:
            while True:
                sdnotify.reloading()
                self._reload_once()
                if not self.stopping.is_set():  # READY=1 after STOPPING=1 would confuse systemd
                    sdnotify.ready(f"serving, policy {self.policy.digest}")
                with self._reload_state:  # decided and cleared at once: no request is lost
                    if not self._reload_again or self._reload_given_up or self.stopping.is_set():
                        self._reloader = None
                        return
                    self._reload_again = False
                    self._reload_started = time.monotonic()
        except BaseException:  # _reload_once catches all; should it not, reloads go on anyway
            with self._reload_state:
                self._reloader = None
            raise

    def _reload_once(self) -> None:
        """Load the policy and swap it in whole, or log in one ERROR line why the old one
        stays. Never raises: whatever goes wrong, the daemon serves on."""
        old = self.policy
        try:
            checked = load_checked_policy(self.config_path, system_nameservers)
        except ConfigError as error:
            problem = str(error)
        except Exception as error:  # a bug in loading, not a bad file: say where it happened
            problem = f"cannot load {self.config_path}: {one_line_traceback(error)}"
        else:
            with self._apply_lock:
                if self._reload_given_up or self.stopping.is_set():
                    return
                try:
                    self._apply(checked.policy, checked.warnings)
                    return
                except Exception as error:
                    problem = f"cannot apply {self.config_path}: {one_line_traceback(error)}"
        if not self._reload_given_up:
            log.error("reload failed, still using policy %s: %s", old.digest, problem)

    def _watch_reload(self) -> None:
        """Give up on a reload that has run for RELOAD_TIMEOUT (main thread, every second)."""
        with self._reload_state:
            if self._reloader is None or self._reload_given_up:
                return
            if time.monotonic() - self._reload_started < RELOAD_TIMEOUT:
                return
            self._reload_given_up = True
        log.error(
            "reload failed, still using policy %s: loading %s did not end within %g s",
            self.policy.digest,
            self.config_path,
            RELOAD_TIMEOUT,
        )
        sdnotify.ready(f"serving, policy {self.policy.digest}")

    def _end_reload_before_stop(self) -> None:
        """A reload asked for before the stop ends first (so its outcome is logged, as when
        reloads ran on the main thread), if it ends within STOP_WAITS_FOR_RELOAD."""
        with self._reload_state:
            thread = None if self._reload_given_up else self._reloader
            self._reload_again = False
        if thread is None:
            return
        thread.join(STOP_WAITS_FOR_RELOAD)
        if thread.is_alive():
            log.warning("stopping before the reload in progress has ended")

    def _apply(self, new: Policy, warnings: Sequence[str] = ()) -> None:
        """Swap `new` in whole, or raise and change nothing that matters: what can fail (the
        engine, the state store, the resolver, the log) is made before anything is installed,
        and the sessions' view of it, the generation, is installed last, in one assignment."""
        old = self.policy
        engine = Engine(new)
        state = self._state_for(new)
        fresh = None
        if new.resolver != old.resolver:
            fresh = Resolver(new.resolver)
            fresh.start()
        keys = self._keys | set(new.access_keys)
        if new.log != old.log or keys != self._keys:
            try:
                configure_logging(new.log, keys)
            except OSError as error:
                if fresh is not None:
                    fresh.stop()
                log.error("reload failed, still using policy %s: log: %s", old.digest, error)
                return
            self._keys = keys
        for warning in warnings:  # the pre-flight checks', as at start
            log.warning("%s", warning)
        for key in ("listen", "socket_mode", "metrics", "scheduling"):
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
        generation = Generation(
            engine,
            fresh or self.resolver,
            state.greylister,
            state.recent_rejects,
            self.generation + 1,
        )
        if fresh is not None:
            self._retire_resolver(new, fresh)
        self.monitor.reconfigure((*new.ip_lists, *new.domain_lists), new.health)
        state_changed = (new.uses_greylist, new.state) != (old.uses_greylist, old.state)
        self.generation = generation.number
        self.policy = new
        self._state_store = state.store
        # One assignment: a session takes the generation once, when it starts, and keeps it.
        self.runtime.current = generation
        log.info(
            "reloaded policy %s (%s), generation %d", self.config_path, new.digest, self.generation
        )
        if state_changed:
            self._log_state(new)

    def _retire_resolver(self, new: Policy, fresh: Resolver) -> None:
        old = self.resolver
        self.resolver = fresh
        # Sessions that started before keep asking the old one until they end.
        grace = max(new.resolver.deadline, old.settings.deadline) * 2 + new.shutdown_grace
        timer = threading.Timer(grace, old.stop)
        timer.daemon = True
        timer.start()

    # -- list health and status -------------------------------------------------------------

    def _health_loop(self) -> None:
        next_status = 0.0
        while not self.stopping.wait(1.0):
            due = self.monitor.due_for_probe()
            if due:
                self.probe(due)
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY
                self.write_status()

    def probe(self, lists: list[DnsList]) -> None:
        lookup = partial(self.resolver.lookup, rdtype="A", fresh=True)
        problems = probe_lists(lists, lookup, self.policy.resolver.deadline * 2)
        for dns_list in lists:
            if dns_list.name in problems:
                self.monitor.apply_probe(dns_list, problems[dns_list.name])

    def write_status(self) -> None:
        path = self.policy.health.status_file
        if not path:
            return
        status = {
            "written_at": time.time(),
            "pid": os.getpid(),
            "policy": self.policy.digest,
            "generation": self.generation,
            "sessions": self.runtime.active_sessions(),
            "lists": [asdict(report) for report in self.monitor.reports()],
        }
        target = Path(path)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(status, indent=1))
            os.replace(temporary, target)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self._status_warned:
                log.warning("cannot write the status file %s: %s", path, error.strerror)
                self._status_warned = True

    # -- stats ------------------------------------------------------------------------------

    def _stats_loop(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(1.0):
            interval = self.policy.log.stats_interval
            if interval and time.monotonic() - last >= interval:
                last = time.monotonic()
                self.log_stats()

    def log_stats(self) -> None:
        for line in self.monitor.lines():
            log.info("stats %s", line)
        stats = self.resolver.stats
        log.info(
            "stats resolver lookups=%d cache_hits=%d merged=%d queries_sent=%d cache_entries=%d",
            stats.lookups,
            stats.cache_hits,
            stats.merged,
            stats.queries_sent,
            len(self.resolver.cache),
        )


@dataclass(frozen=True)
class StateParts:
    """What the state settings of a policy make: the open store (with the settings it was
    opened with), greylisting and the reject memory."""

    store: tuple[tuple[str, float], PausingStore] | None
    greylister: Greylister | None
    recent_rejects: RecentRejects | None


class MilterThread(threading.Thread):
    """libmilter's main loop, off the main thread so that the main thread can own signals."""

    def __init__(self, runtime: Runtime, policy: Policy, on_listening: Callable[[], None]) -> None:
        super().__init__(name="spamgate-milter", daemon=True)
        self._runtime = runtime
        self._policy = policy
        self.listen = policy.listen
        self._on_listening = on_listening
        self.exit_status = 0

    def run(self) -> None:
        try:
            serve(self._runtime, self._policy.listen, self._policy.socket_mode, self._on_listening)
        except ListenError as error:
            log.error("%s", error)
            self.exit_status = 1
        except Exception:
            log.exception("milter stopped with an error")
            self.exit_status = 1

    def stop(self, listen: ListenAddress) -> None:
        """Ask libmilter to stop, and wake its accept loop, which looks only every 5 s."""
        stop_milter()
        deadline = time.monotonic() + 10
        while self.is_alive() and time.monotonic() < deadline:
            poke(listen)
            self.join(timeout=0.1)
        if self.is_alive():
            log.warning("libmilter did not stop within 10 s")


def run(policy: Policy, config_path: str, warnings: Sequence[str] = ()) -> NoReturn:
    """`spamgate run`: serve until stopped, then leave the process without finalizing the
    interpreter, with the daemon's exit status.

    libmilter's session threads are detached: its main loop returns while some of them still
    end their sessions, and one that calls into pymilter after the interpreter is finalized
    makes it create a thread state for an interpreter that is gone. The process then died of
    SIGSEGV (in PyThreadState_New) instead of exiting 0 after SIGTERM: twice in 48 runs of the
    soak suite's short form (`sigterm`). Nothing is left to do in Python by then: what is
    written is flushed, and the process ends at once."""
    status = Daemon(policy, config_path, warnings).run()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
