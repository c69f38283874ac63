"""The soak suite's parts on loopback, started and stopped here, by PID.

rbldnsd serves the benchmark's zones (bench/workload.py) behind the fault-injecting DNS proxy;
spamgate runs the shipped policy with the benchmark's extra rules, asking the proxy; one
Postfix listener hands every session to spamgate and relays what it accepts to smtp-sink.
spamgate listens on a fixed port for the life of the stack, so that the scenarios can stop,
kill and restart it while Postfix keeps pointing at the same address.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import measure
from bench.stack import Milter, fresh_workdir, no_milter_for_loopback
from bench.workload import REPOSITORY, Population, bench_policy, build_zones, message_token
from tests.harness.dns import Rbldnsd
from tests.harness.dnsproxy import DnsProxy
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import LOOPBACK, HarnessError, free_port, wait_until
from tests.harness.sink import SmtpSink

UNIT_FILE = REPOSITORY / "systemd" / "spamgate.service"
LISTENER = "soak"

# The DNS-fault scenarios' resolver timing: shorter than the shipped 1 s / 2 s, so that an
# answer 1 s late is always past the deadline (the "slow" fault) and those scenarios stay
# short. The others keep the shipped timing: at 200 concurrent sessions with a cold cache on
# 2 cores lookups took 0.8 to 2 s, and with 0.8 s most decisions went without their lists.
QUERY_TIMEOUT = 0.3
DEADLINE = 0.8
# The DNS-fault scenarios also suspend a list after fewer failed answers in a row than the
# shipped 50: at 50 sessions, 50 failures take a queue of sessions behind libmilter's
# workers (p99 2.6 s against the 0.8 s deadline, measured) and 20 do not (1.1-1.4 s).
FAULT_MAX_FAILURES = 20
SHUTDOWN_GRACE = 10
# smtpd processes: 200 concurrent sessions and headroom.
PROCESS_LIMIT = 400


def soak_policy(
    *,
    listen: str,
    dns_port: int,
    metrics_port: int,
    status_file: Path,
    variant: int = 0,
    cache_entries: int | None = None,
    dns_fault_timing: bool = False,
) -> str:
    """The benchmark's policy (the shipped one plus a few dozen header rules), with the DNS
    fault scenarios' resolver timing if asked. `variant` changes the policy's digest and
    nothing it decides: the reload scenario alternates between variants."""
    policy = yaml.safe_load(
        bench_policy(
            listen=listen, dns_port=dns_port, metrics_port=metrics_port, status_file=status_file
        )
    )
    if dns_fault_timing:
        policy["resolver"]["query_timeout"] = QUERY_TIMEOUT
        policy["health"]["max_failures"] = FAULT_MAX_FAILURES
        policy["resolver"]["deadline"] = DEADLINE
    if cache_entries is not None:
        policy["resolver"]["cache_entries"] = cache_entries
    policy["shutdown_grace"] = SHUTDOWN_GRACE
    policy["rules"].append(
        {
            "name": "SOAK_VARIANT",
            "score": 0.01 * variant,
            "description": f"soak policy variant {variant}",
            "header": {"name": "X-Soak-Never-Sent", "matches": "."},
        }
    )
    return str(yaml.safe_dump(policy, sort_keys=False))


@dataclass(frozen=True)
class RestartRule:
    """What systemd/spamgate.service tells systemd to do when the daemon exits."""

    restart: str  # Restart=
    restart_seconds: float  # RestartSec=
    prevent_statuses: frozenset[int]  # RestartPreventExitStatus=

    def restarts_after(self, status: int) -> bool:
        """systemd.service(5): on-failure restarts after an unclean exit status or a signal
        (a negative Popen status), always after any exit; never after the statuses listed in
        RestartPreventExitStatus. Other Restart= values (on-abnormal, on-watchdog, ...) count as
        "no" here: the shipped unit says on-failure, and the suite checks that it still does."""
        if status in self.prevent_statuses:
            return False
        return self.restart == "always" or (self.restart == "on-failure" and status != 0)


def restart_rule(unit_file: Path = UNIT_FILE) -> RestartRule:
    settings: dict[str, str] = {}
    for line in unit_file.read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and key.strip() in ("Restart", "RestartSec", "RestartPreventExitStatus"):
            settings[key.strip()] = value.strip()
    return RestartRule(
        restart=settings.get("Restart", "no"),
        restart_seconds=_timespan(settings.get("RestartSec", "100ms")),
        prevent_statuses=frozenset(
            int(s) for s in settings.get("RestartPreventExitStatus", "").split()
        ),
    )


def _timespan(text: str) -> float:
    """A systemd time span of one unit ("2s", "500ms", "2"; systemd.time(7))."""
    match = re.fullmatch(r"([0-9.]+)\s*(ms|s|sec|min)?", text)
    if match is None:
        raise ValueError(f"unsupported time span {text!r}")
    scale = {"ms": 0.001, "min": 60.0}.get(match.group(2) or "s", 1.0)
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class Restart:
    status: int  # the exit status of the daemon that died (negative: killed by that signal)
    down_seconds: float  # from its death until the new one accepted connections


class Supervisor:
    """Plays systemd's Restart= for spamgate, as the unit file sets it: a daemon that dies is
    started again RestartSec later if the rule says so; a clean exit is left alone."""

    def __init__(self, milter: Milter, rule: RestartRule) -> None:
        self.milter = milter
        self.rule = rule
        self.restarts: list[Restart] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if self.milter.process.running():
                continue
            died_at = time.monotonic()
            status = self.milter.process.wait(timeout=1)
            if not self.rule.restarts_after(status):
                return
            if self._stop.wait(self.rule.restart_seconds):
                return
            try:
                self.milter.start()
            except HarnessError as error:
                self.errors.append(str(error))
                return
            self.restarts.append(Restart(status, time.monotonic() - died_at))


class PeakRss:
    """The highest VmHWM of the spamgate process(es) while it is running, sampled every 0.1 s:
    a restarted daemon is a new PID, and a killed one cannot be asked afterwards."""

    def __init__(self, milter: Milter) -> None:
        self.milter = milter
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            measure.reset_peak_rss(self.milter.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._read()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self._read()

    def _read(self) -> None:
        with contextlib.suppress(OSError, KeyError, HarnessError):
            self.peak_kib = max(self.peak_kib, measure.rss_kib(self.milter.pid)[1])


@dataclass
class SinkIndex:
    """Tokens of the messages at the sink, read once per dump file."""

    sink: SmtpSink
    tokens: dict[str, str] = field(default_factory=dict)  # file name -> token
    _seen: set[str] = field(default_factory=set)

    def scan(self) -> set[str]:
        for path in self.sink.dump_dir.iterdir():
            if path.name in self._seen:
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # an aborted transaction, unlinked by smtp-sink
                continue
            token = message_token(data)
            if token is not None:
                self._seen.add(path.name)
                self.tokens[path.name] = token
        return set(self.tokens.values())

    def wait_for(self, tokens: set[str], timeout: float) -> set[str]:
        """The tokens at the sink once all of `tokens` are there, or after `timeout`."""
        with contextlib.suppress(HarnessError):
            wait_until(
                lambda: tokens <= self.scan(),
                timeout=timeout,
                what="delivery to the sink",
                interval=0.25,
            )
        return self.scan()

    def clear(self) -> None:
        self.sink.clear()
        self.tokens.clear()
        self._seen.clear()


@dataclass
class SoakStack:
    workdir: Path
    population: Population
    dns: Rbldnsd
    proxy: DnsProxy
    sink: SmtpSink
    postfix: PostfixInstance
    spamgate: Milter
    config_path: Path
    metrics_port: int

    @property
    def smtp_port(self) -> int:
        return self.postfix.ports[LISTENER]

    @property
    def milter_default_action(self) -> str:
        return self.postfix.main_cf["milter_default_action"]

    def write_policy(
        self,
        *,
        variant: int = 0,
        cache_entries: int | None = None,
        dns_fault_timing: bool = False,
        through_proxy: bool = False,
    ) -> None:
        """`through_proxy`: ask the fault proxy, for the DNS-fault scenarios; the others ask
        rbldnsd itself. The proxy is Python (dnspython parses every query and answer, about
        0.5 ms of CPU each): at 100-200 sessions it needs most of a core of its own and
        answers late, which would measure the proxy, not spamgate. rbldnsd answers in
        microseconds, like the local caching resolver spamgate is meant to ask."""
        self.config_path.write_text(
            soak_policy(
                listen=self.spamgate.socket_spec,
                dns_port=self.proxy.port if through_proxy else self.dns.port,
                metrics_port=self.metrics_port,
                status_file=self.workdir / "status.json",
                variant=variant,
                cache_entries=cache_entries,
                dns_fault_timing=dns_fault_timing,
            )
        )

    def policy(self) -> dict[str, Any]:
        document: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return document

    def restart_spamgate(self) -> None:
        """A fresh daemon: an empty DNS cache and list health, peak RSS from zero."""
        self.spamgate.stop()
        self.spamgate.start()

    def log_offset(self) -> int:
        try:
            return self.spamgate.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.spamgate.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def signal_daemon(self, sig: signal.Signals) -> None:
        """A signal to the daemon alone, as systemctl sends it to the main PID."""
        os.kill(self.spamgate.pid, sig)


@contextlib.contextmanager
def running_soak_stack(population: Population, *, keep: bool = False) -> Iterator[SoakStack]:
    workdir, _ = fresh_workdir("spamgate-soak-")
    try:
        with ExitStack() as stack:
            dns = stack.enter_context(Rbldnsd(workdir, build_zones(population)))
            proxy = stack.enter_context(DnsProxy(workdir, dns.port))
            sink = stack.enter_context(SmtpSink(workdir))
            milter_port, metrics_port = free_port(), free_port()
            config = workdir / "spamgate.yaml"
            argv = [sys.executable, "-m", "spamgate", "run", "-c", str(config)]
            socket_spec = f"inet:{milter_port}@{LOOPBACK}"
            milter = Milter("spamgate", argv, workdir / "spamgate.log", socket_spec, metrics_port)
            listener = Listener(
                milters=milter.postfix_address, options=no_milter_for_loopback(workdir)
            )
            # Postfix first: it asks the milter only once sessions come.
            postfix = stack.enter_context(
                PostfixInstance(
                    workdir,
                    relay_port=sink.port,
                    listeners={LISTENER: listener},
                    relay_domains=["example.com"],
                    main_cf={
                        "default_process_limit": str(PROCESS_LIMIT),
                        "default_destination_concurrency_limit": "50",
                        "smtp_destination_concurrency_limit": "50",
                    },
                )
            )
            soak = SoakStack(
                workdir, population, dns, proxy, sink, postfix, milter, config, metrics_port
            )
            soak.write_policy()
            stack.enter_context(milter)
            yield soak
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
