"""A fault-injecting DNS proxy in front of a harness DNS server (rbldnsd), as a subprocess.

The benchmark puts it in front of rbldnsd to add the latency of a real DNSBL (``delay``) and
to count the queries spamgate makes; the fault tests use it to make one list, or all of them,
time out, answer late, lose packets, SERVFAIL, truncate, send garbage or answer outside
127.0.0.0/8. See `Fault` for the modes and how they combine.

The proxy itself is dnsproxy_server.py, a single asyncio loop in its own process group. It
talks to this module through two small JSON files, each replaced atomically by rename:

- a control file this module writes: the fault and a generation number (`set_fault`);
- a stats file the proxy writes at most every 0.1 s while its counters change: the counters
  and the generation in force, which is how `set_fault` knows the switch has happened.

Counters are cumulative for the life of the subprocess. Take a snapshot before and after and
subtract (``after - before``), or call `reset_counts()` to make `stats()` count from now on.
Either way, counts lag the traffic by up to 0.1 s: use `wait_for_stats` to wait for them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.resolver

from .dns import resolver_for
from .dnsproxy_server import Fault
from .processes import LOOPBACK, HarnessError, ManagedProcess, Service, free_port, wait_until

__all__ = ["DnsProxy", "Fault", "StatsSnapshot"]

DNSPROXY_SCRIPT = Path(__file__).with_name("dnsproxy_server.py")


@dataclass(frozen=True)
class StatsSnapshot:
    """The proxy's counters at one moment. ``later - earlier`` gives the counts in between.

    `received` counts well-formed queries (not the harness's readiness probes); once nothing
    is in flight it equals answered + dropped + upstream_timeouts + overloaded.
    """

    generation: int
    """Generation of the fault in force (see DnsProxy.set_fault)."""
    received: int
    by_qtype: Mapping[str, int]
    """Received queries by type name ("A", "TXT", ...)."""
    by_transport: Mapping[str, int]
    """Received queries by "udp" / "tcp"."""
    forwarded: int
    """Queries sent on to upstream."""
    answered: int
    """Answers sent back to clients: forwarded, made up (SERVFAIL, TC, garbage) alike."""
    dropped: int
    """Queries dropped by the fault (drop, silent)."""
    upstream_timeouts: int
    """Forwarded queries that upstream left unanswered for 2 s (then forgotten)."""
    overloaded: int
    """Queries dropped because too many were pending upstream."""
    malformed: int
    """Datagrams or frames that were not a one-question DNS query."""
    probes: int
    """Readiness probes answered by the proxy itself."""
    pending: int
    """Queries waiting for upstream right now (a level, not a count: not subtracted)."""

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StatsSnapshot:
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: document[name] for name in names})

    def __sub__(self, earlier: StatsSnapshot) -> StatsSnapshot:
        counts: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(earlier, field.name)
            if field.name in ("generation", "pending"):
                counts[field.name] = mine
            elif isinstance(mine, Mapping):
                keys = set(mine) | set(theirs)
                delta = {key: mine.get(key, 0) - theirs.get(key, 0) for key in sorted(keys)}
                counts[field.name] = {key: value for key, value in delta.items() if value}
            else:
                counts[field.name] = mine - theirs
        return StatsSnapshot(**counts)


class DnsProxy(Service):
    """The proxy on 127.0.0.1:``port`` (UDP and TCP), forwarding to ``upstream_port``.

    Restartable on the same port; the fault in force survives a restart.
    """

    address = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        *,
        fault: Fault | None = None,
        port: int | None = None,
        upstream_address: str = LOOPBACK,
    ) -> None:
        self.port = port if port is not None else free_port(udp=True)
        self.upstream = (upstream_address, upstream_port)
        self.fault = fault if fault is not None else Fault()
        # Per-port names, so that several proxies can share one workdir.
        self.control_path = workdir / f"dnsproxy-{self.port}.control.json"
        self.stats_path = workdir / f"dnsproxy-{self.port}.stats.json"
        self._generation = 0
        self._baseline: StatsSnapshot | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self._write_control()
        # -P: do not put the script's directory first on sys.path, where the harness's own
        # dns.py would shadow dnspython's package "dns".
        argv = [sys.executable, "-P", str(DNSPROXY_SCRIPT), "--port", str(self.port)]
        argv += ["--upstream-address", upstream_address, "--upstream-port", str(upstream_port)]
        argv += ["--control", str(self.control_path), "--stats", str(self.stats_path)]
        self.process = ManagedProcess(argv, workdir / f"dnsproxy-{self.port}.log")

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 5.0) -> None:
        """Start the proxy and wait until it answers a real query, with our fault in force.

        The query is the proxy's own probe (CHAOS TXT version.bind), which no fault touches:
        a proxy told to be silent must still be seen to be up.
        """
        # A stats file left by an earlier run must not pass for this one's.
        self.stats_path.unlink(missing_ok=True)
        self._baseline = None

        def ready() -> bool:
            try:
                if self._read_stats().generation != self._generation:
                    return False
                self.probe(timeout=0.05)
            except (FileNotFoundError, dns.exception.Timeout):
                return False
            return True

        self.process.start_and_wait(ready, timeout=timeout, what="dnsproxy to answer")

    def stop(self) -> None:
        """SIGTERM the proxy's process group (it writes its final stats), then reap it."""
        self.process.stop()

    def set_fault(self, fault: Fault, timeout: float = 2.0) -> None:
        """Switch to ``fault`` on the same port; if running, wait (bounded) until it is in
        force. Queries already received keep the fault they arrived under."""
        self.fault = fault
        self._write_control()
        if not self.process.running():
            return
        generation = self._generation
        wait_until(
            lambda: self._read_stats().generation == generation,
            timeout=timeout,
            what=f"dnsproxy to switch to fault generation {generation}",
            log_tail=self.log_tail,
        )

    def stats(self) -> StatsSnapshot:
        """Counters since start, or since the last `reset_counts()`; up to 0.1 s old."""
        raw = self._read_stats()
        return raw - self._baseline if self._baseline is not None else raw

    def reset_counts(self) -> None:
        """Make `stats()` count from the current snapshot on (the proxy keeps counting:
        nothing is reset there). Call it when no queries are in flight."""
        self._baseline = self._read_stats()

    def wait_for_stats(
        self,
        condition: Callable[[StatsSnapshot], bool],
        *,
        timeout: float = 2.0,
        what: str = "dnsproxy counters",
    ) -> StatsSnapshot:
        """Poll `stats()` (bounded) until ``condition`` holds; return that snapshot."""
        latest: list[StatsSnapshot] = []

        def holds() -> bool:
            latest[:] = [self.stats()]
            return condition(latest[0])

        wait_until(
            holds,
            timeout=timeout,
            what=what,
            log_tail=lambda: f"last stats: {latest[0] if latest else None}\n{self.log_tail()}",
        )
        return latest[0]

    def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 1.0
    ) -> dns.message.Message:
        """Send one query through the proxy over UDP or TCP (no resolver, no retries)."""
        request = dns.message.make_query(name, rdtype)
        if tcp:
            return dns.query.tcp(request, self.address, port=self.port, timeout=timeout)
        return dns.query.udp(request, self.address, port=self.port, timeout=timeout)

    def probe(self, timeout: float = 1.0) -> dns.message.Message:
        """The proxy's own answer to CHAOS TXT version.bind (never forwarded, never faulted)."""
        request = dns.message.make_query("version.bind", "TXT", "CH")
        return dns.query.udp(request, self.address, port=self.port, timeout=timeout)

    def resolver(self, timeout: float = 1.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this proxy."""
        return resolver_for(self.address, self.port, timeout)

    def log_tail(self) -> str:
        return self.process.log_tail()

    def _write_control(self) -> None:
        self._generation += 1
        document = {"generation": self._generation, "fault": self.fault.to_json()}
        temporary = self.control_path.with_name(self.control_path.name + ".tmp")
        temporary.write_text(json.dumps(document, sort_keys=True))
        temporary.replace(self.control_path)

    def _read_stats(self) -> StatsSnapshot:
        try:
            document = json.loads(self.stats_path.read_text())
        except FileNotFoundError:
            if self.process.running():
                raise
            raise HarnessError(f"dnsproxy on port {self.port} is not running") from None
        return StatsSnapshot.from_json(document)
