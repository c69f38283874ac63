"""The running daemon: logging, the resolver, reload, list health, start and stop.

Threads: the main thread (takes the signals: SIGUSR1 reloads, SIGTERM/SIGINT/SIGHUP drain
and stop), libmilter's main loop and its workers (one per SMTP session), the resolver's
asyncio loop, health (probes lists, writes the status file) and stats (the periodic stats
lines). Every loop of ours is bounded by the `stopping` event or a timeout.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from spamgate import __version__, domains, sdnotify
from spamgate.accesskeys import KeyMaskingFormatter, exposed_secret_files
from spamgate.adapter import ListenError, poke, serve, stop_milter
from spamgate.config import (
    DnsList,
    ListenAddress,
    LogSettings,
    Nameserver,
    Policy,
    load_policy,
)
from spamgate.engine import Engine
from spamgate.greylist import Greylister, GreylistTiming
from spamgate.listhealth import ListMonitor, probe_lists
from spamgate.metrics import DaemonState, Metrics
from spamgate.recentrejects import RecentRejects
from spamgate.resolver import Resolver
from spamgate.schema import ConfigError
from spamgate.session import Runtime
from spamgate.state import PausingStore, open_store

log = logging.getLogger("spamgate")
decisions = logging.getLogger("spamgate.decision")

_FORMAT = "%(asctime)s %(levelname)s %(message)s"
RELOAD_SIGNAL = signal.SIGUSR1
# Blocked in every thread (threads inherit the mask, so before any starts: otherwise the kernel
# may hand SIGTERM to, say, the resolver thread and the process dies on the spot) and taken
# with sigtimedwait() by the main thread.
HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, RELOAD_SIGNAL}
STATUS_EVERY = 10.0
EX_CONFIG = 78

# Resolvers that DNS list operators refuse (Spamhaus answers them 127.255.255.254): shared by
# millions, they exceed any free query quota. A local caching resolver is the fix.
PUBLIC_RESOLVERS = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",  # Google
        "1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001",  # Cloudflare
        "9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9",  # Quad9
        "208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53",  # OpenDNS
        "94.140.14.14", "94.140.15.15",  # AdGuard
        "64.6.64.6", "64.6.65.6",  # Verisign
        "4.2.2.1", "4.2.2.2", "4.2.2.3", "4.2.2.4", "4.2.2.5", "4.2.2.6",  # Level 3
        "185.228.168.9", "185.228.169.9",  # CleanBrowsing
        "76.76.2.0", "76.76.10.0",  # Control D
    )
)  # fmt: skip


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
        handler = logging.FileHandler(settings.target)
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


def public_resolvers(nameservers: tuple[Nameserver, ...]) -> list[str]:
    return [str(ns) for ns in nameservers if ipaddress.ip_address(ns.host) in PUBLIC_RESOLVERS]


def beyond_loopback(policy: Policy) -> list[str]:
    """The listeners of `policy` that other hosts could reach."""
    found = []
    listen = policy.listen
    if listen.family != "unix" and not ipaddress.ip_address(listen.host).is_loopback:
        found.append(f"the milter socket {listen}")
    if policy.metrics.listen:
        host, _ = policy.metrics.address()
        if not ipaddress.ip_address(host).is_loopback:
            found.append(f"the metrics endpoint {policy.metrics.listen}")
    return found


class Daemon:
    def __init__(self, policy: Policy, config_path: str) -> None:
        self.config_path = config_path
        self.policy = policy
        self.generation = 1
        self.resolver = Resolver(policy.resolver)
        lists = (*policy.ip_lists, *policy.domain_lists)
        self.monitor = ListMonitor(lists, policy.health, time.monotonic)
        self.metrics = Metrics()
        self._state_store: tuple[tuple[str, float], PausingStore] | None = None
        self.runtime = Runtime(
            Engine(policy),
            self.resolver,
            monitor=self.monitor,
            metrics=self.metrics,
            log=decisions.info,
            generation=self.generation,
        )
        self._use_state(policy)
        self.metrics.watch(self._state)
        self.stopping = threading.Event()
        self._reload_lock = threading.Lock()
        self._status_warned = False
        self._watchdog: sdnotify.Watchdog | None = None
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
        milter.start()
        try:
            self._wait_for_signals(milter)
            return milter.exit_status
        finally:
            self.stopping.set()
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
        tries the thread group leader first), so it is this loop that sees them.
        """
        while milter.is_alive():
            received = signal.sigtimedwait(HANDLED_SIGNALS, 1.0)
            if received is None:
                continue
            if received.si_signo == RELOAD_SIGNAL:
                self.reload()
                continue
            log.info("received %s: stopping", signal.Signals(received.si_signo).name)
            sdnotify.stopping()
            self.runtime.draining = True
            self._drain()
            milter.stop(self.policy.listen)
            return

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
        return not self.stopping.is_set() and self.resolver.running

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
            # file), so root only widens what a flaw in it could reach.
            log.warning(
                "running as root: spamgate needs no privileges; run it as its own user "
                "(systemd/spamgate.service has User=spamgate)"
            )
        self._warn_exposed_secrets(policy)
        self._log_state(policy)
        for listener in beyond_loopback(policy):
            log.warning(
                "%s listens beyond loopback: any host that reaches it may use it, and spamgate "
                "authenticates no one (firewall it, or use a loopback address)",
                listener,
            )
        public = public_resolvers(servers)
        if public and (policy.ip_lists or policy.domain_lists):
            log.warning(
                "DNS lists are asked through %s, a public resolver: most list operators refuse "
                "those (Spamhaus answers 127.255.255.254) and the lists will be unusable; use a "
                "local caching resolver (resolver.nameservers)",
                ", ".join(public),
            )

    def _use_state(self, policy: Policy) -> None:
        """Greylisting and the reject memory for `policy`, on the store already open if its
        location is unchanged: a reload keeps the connections, and sessions of the old policy
        share the store with the new."""
        greylister, recent = None, None
        if policy.uses_state:
            settings = policy.state
            where = (settings.store, settings.timeout)
            if self._state_store is None or self._state_store[0] != where:
                self._state_store = (where, PausingStore(open_store(settings)))
            store = self._state_store[1]
            if policy.uses_greylist:
                timing = GreylistTiming.from_settings(policy.greylist)
                greylister = Greylister(store, timing, time.time)
            if settings.remember_rejects:
                recent = RecentRejects(store, settings.remember_rejects)
        # A session reads these when it starts: one that starts between these assignments and
        # the engine's uses the new state settings under the old policy, which is harmless.
        self.runtime.greylister = greylister
        self.runtime.recent_rejects = recent

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

    def _warn_exposed_secrets(self, policy: Policy) -> None:
        for warning in exposed_secret_files(policy, self.config_path):
            log.warning("%s", warning)

    def _drain(self) -> None:
        """New sessions are turned away (see SpamgateMilter.negotiate); let the sessions in
        progress finish, for `shutdown_grace` seconds at most."""
        grace = self.runtime.engine.policy.shutdown_grace
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

    def reload(self) -> bool:
        """Load the policy file again and swap it in whole, or keep the old one."""
        with self._reload_lock:
            sdnotify.reloading()
            try:
                return self._swap()
            finally:
                sdnotify.ready(f"serving, policy {self.policy.digest}")

    def _swap(self) -> bool:
        old = self.policy
        try:
            new = load_policy(self.config_path)
        except ConfigError as error:
            log.error("reload failed, still using policy %s: %s", old.digest, error)
            return False
        keys = self._keys | set(new.access_keys)
        if new.log != old.log or keys != self._keys:
            try:
                configure_logging(new.log, keys)
            except OSError as error:
                log.error("reload failed, still using policy %s: log: %s", old.digest, error)
                return False
            self._keys = keys
        self._warn_exposed_secrets(new)
        for key in ("listen", "socket_mode", "metrics"):
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
        if new.resolver != old.resolver:
            self._swap_resolver(new)
        self.monitor.reconfigure((*new.ip_lists, *new.domain_lists), new.health)
        state_changed = (new.uses_greylist, new.state) != (old.uses_greylist, old.state)
        self.generation += 1
        self.policy = new
        self._use_state(new)
        # One assignment: a connection reads `engine` once when it starts and keeps it.
        self.runtime.engine = Engine(new)
        self.runtime.generation = self.generation
        log.info(
            "reloaded policy %s (%s), generation %d", self.config_path, new.digest, self.generation
        )
        if state_changed:
            self._log_state(new)
        return True

    def _swap_resolver(self, new: Policy) -> None:
        old = self.resolver
        fresh = Resolver(new.resolver)
        fresh.start()
        self.resolver = fresh
        self.runtime.resolver = fresh
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


class MilterThread(threading.Thread):
    """libmilter's main loop, off the main thread so that the main thread can own signals."""

    def __init__(self, runtime: Runtime, policy: Policy, on_listening: Callable[[], None]) -> None:
        super().__init__(name="spamgate-milter", daemon=True)
        self._runtime = runtime
        self._policy = policy
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


def run(policy: Policy, config_path: str) -> int:
    return Daemon(policy, config_path).run()
