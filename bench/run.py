"""`make bench`: spamgate against no milter and a no-op milter, through a real Postfix.

    python -m bench.run [--quick] [--rounds N] [--before REV] [--output FILE]

Every round measures every configuration of a workload back to back, in an order that
rotates from round to round; the tables report medians over rounds, and ratios against
Postfix without a milter are computed within each round before taking the median. Shared
2-core machines are noisy: more rounds, steadier medians.

Workloads:
    c1         one session at a time, the realistic mix (inet and unix sockets)
    c50        50 concurrent sessions, the realistic mix, warm DNS cache
    c50-clean  50 concurrent sessions, only mail that every configuration accepts
    cold       one session at a time, clients never seen before, 50 ms on every DNS answer
    c50-greylist
               50 concurrent sessions, mail every configuration accepts, each message the
               retry of a triplet greylisted a moment before: the cost of greylisting, with
               its state in SQLite and in Redis, against the same daemon without it
    c50-real, c200-real
               50 and 200 concurrent sessions, the realistic mix with a realistic cache: the
               filters are restarted at the start of each round (nothing cached), and the
               clients are drawn from a population larger than a run, so most of them are
               seen once; Postfix alone, the no-op milter, spamgate and rspamd (its proxy in
               milter mode, its rbl module on the same lists: bench/rspamd.py)
and then 500 sessions held open at once (memory per session) and a long run (memory over
time), and a py-spy profile of spamgate under c50 load.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, measure, phases
from bench.loadgen import LoadResult, Outcome
from bench.stack import Milter, Stack, running_stack
from bench.workload import (
    CLEAN_ONLY_MIX,
    EXTRA_RULES,
    GREYLIST_MIN_DELAY,
    REALISTIC_MIX,
    REPOSITORY,
    Kind,
    Message,
    Population,
    Sizes,
    build_population,
    cold_messages,
    message_token,
    messages,
    one_per_client,
    retag,
    signed,
)
from tests.e2e.spamgate_stack import parse_decisions
from tests.harness.processes import HarnessError, wait_until

RESULTS = REPOSITORY / "bench" / "RESULTS.md"
EXEMPT_LOCAL_PARTS = ("postmaster@", "abuse@")
# In a decision line's lists=: a list that was unusable because its answer came too late (or
# because it was suspended, which a run of late answers does), and each list answer's time.
_LATE = re.compile(r":unusable:(?:deadline|suspended)\b")
_ANSWER_MS = re.compile(r":(?:listed|clean|unusable)(?::[^:,\s\"]+)*?:([0-9]+)ms")
_TAGGED = re.compile(rb"^X-Spam-Status: ", re.MULTILINE)
SPAMGATE_CONFIGS = ("spamgate", "spamgate-unix", "spamgate-cold", "spamgate-before")
# The greylisting comparison: the same daemon without greylisting, then with each store.
GREYLIST_CONFIGS = ("spamgate-nogreylist", "spamgate-greylist-sqlite", "spamgate-greylist-redis")
# Issue 13's comparison: the filters an admin would choose between, with a realistic cache.
REAL_CONFIGS = ("plain", "noop", "spamgate", "rspamd")
# Configurations whose process is a filter that keeps state (a cache): restarted for a cold
# start. The no-op milter keeps none.
STATEFUL = ("spamgate", "rspamd")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    concurrency: int
    messages: int
    configs: tuple[str, ...]
    mix: dict[Kind, float] | None  # None: cold clients
    # Configurations that greylist every message: before each round's runs, each is sent the
    # round's messages once as first attempts (451; measured too, as the `first_attempts`
    # workload), so that every message of the runs proper is a retry that passes.
    greylisted: tuple[str, ...] = ()
    # The filters are restarted before each round's runs: their caches start empty, as after
    # a restart, and fill only with what the round's own traffic brings (a realistic cache).
    cold_start: bool = False
    # Every message whose sender domain publishes a key carries a DKIM signature.
    signed: bool = False

    def with_before(self) -> Workload:
        if "spamgate" not in self.configs:
            return self
        return dataclasses.replace(self, configs=(*self.configs, "spamgate-before"))

    @property
    def first_attempts(self) -> Workload:
        """The first-attempt runs of a greylisting workload, as a workload of their own."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-first",
            title=f"The first attempts of `{self.name}`, each told to retry",
            configs=self.greylisted,
            greylisted=(),
        )


@dataclass(frozen=True)
class Plan:
    rounds: int
    sizes: Sizes
    workloads: tuple[Workload, ...]
    held_sessions: int
    long_run_batches: int
    long_run_batch: int
    profile_seconds: float


def plan(quick: bool, rounds: int | None) -> Plan:
    if quick:
        sizes = Sizes(
            clean=150,
            dynamic=20,
            allowlisted=20,
            listed_reject=20,
            listed_greylist=10,
            listed_tag=10,
            ipv6=20,
            domains=60,
            cold=40,
        )
        counts = {
            "c1": 20,
            "c50": 150,
            "c50-clean": 150,
            "cold": 8,
            "c50-greylist": 150,
            "c50-real": 150,
            "c200-real": 300,
            "c50-dkim": 150,
        }
        held, batches, batch, profile = 60, 2, 150, 0.0
        rounds = rounds or 1
    else:
        sizes = Sizes()
        counts = {
            "c1": 300,
            "c50": 2000,
            "c50-clean": 2000,
            "cold": 60,
            "c50-greylist": 2000,
            "c50-real": 2000,
            "c200-real": 3000,
            "c50-dkim": 2000,
        }
        held, batches, batch, profile = 500, 10, 2500, 15.0
        rounds = rounds or 5
    workloads = (
        Workload(
            "c1",
            "Concurrency 1, realistic mix, warm cache",
            1,
            counts["c1"],
            ("plain", "noop", "spamgate", "noop-unix", "spamgate-unix"),
            REALISTIC_MIX,
        ),
        Workload(
            "c50",
            "Concurrency 50, realistic mix, warm cache",
            50,
            counts["c50"],
            ("plain", "noop", "spamgate"),
            REALISTIC_MIX,
        ),
        Workload(
            "c50-clean",
            "Concurrency 50, only mail every configuration accepts, warm cache",
            50,
            counts["c50-clean"],
            ("plain", "noop", "spamgate"),
            CLEAN_ONLY_MIX,
        ),
        Workload(
            "cold",
            "Concurrency 1, cold cache: new clients and domains, 50 ms on every DNS answer",
            1,
            counts["cold"],
            ("noop", "spamgate-cold"),
            None,
        ),
        Workload(
            "c50-greylist",
            "Concurrency 50, greylisting every message, each a retry that passes, warm cache",
            50,
            counts["c50-greylist"],
            GREYLIST_CONFIGS,
            CLEAN_ONLY_MIX,
            greylisted=GREYLIST_CONFIGS[1:],
        ),
        *(
            Workload(
                f"c{concurrency}-real",
                f"Concurrency {concurrency}, realistic mix, realistic cache (filters restarted"
                " each round, most clients seen once)",
                concurrency,
                counts[f"c{concurrency}-real"],
                REAL_CONFIGS,
                REALISTIC_MIX,
                cold_start=True,
            )
            for concurrency in (50, 200)
        ),
        Workload(
            "c50-dkim",
            "Concurrency 50, realistic mix, warm cache, every message from a domain with a key"
            " DKIM-signed: spamgate with and without its DKIM and DMARC rules",
            50,
            counts["c50-dkim"],
            ("spamgate-nodkim", "spamgate"),
            REALISTIC_MIX,
            signed=True,
        ),
    )
    return Plan(rounds, sizes, workloads, held, batches, batch, profile)


@dataclass(frozen=True)
class Run:
    """One configuration, one workload, one round."""

    workload: str
    config: str
    round: int
    sent: int
    accepted: int
    refused: int
    failed: int
    lost: int
    untagged: int  # spamgate configurations: delivered without an X-Spam-Status header
    seconds: float
    p50_ms: float
    p99_ms: float
    milter_user_ms: float | None  # per message
    milter_system_ms: float | None  # per message
    postfix_cpu_ms: float  # per message
    milter_peak_rss_mb: float | None
    dns_queries: float | None  # per message
    cache_hit_rate: float | None
    other_load: float  # cores busy with processes not ours, on average over the run
    state_cpu_ms: float | None = None  # per message: the milter's greylisting server (Redis)
    greylist: dict[str, float] = field(default_factory=dict)  # checks during the run by outcome
    # Messages from clients on Spamhaus ZEN, to others than postmaster@ (every filter must
    # refuse them).
    listed_sent: int = 0
    listed_accepted: int = 0  # ... that were accepted all the same
    # spamgate: decisions in which a list was unusable because its answer came after the
    # deadline (or the list was suspended), and every list answer's time, from its log.
    deadline_lost: int | None = None
    list_answer_ms: tuple[float, ...] = ()
    # spamgate: RCPT verdicts during the run by how long each took (DNS waits included), as
    # its cumulative histogram: {upper bound in seconds: verdicts that took at most that}.
    rcpt_verdicts: dict[float, float] = field(default_factory=dict)

    def rcpt_verdicts_over(self, seconds: float) -> tuple[int, int]:
        """(RCPT verdicts that took longer than `seconds`, all of them); `seconds` must be a
        bound of the histogram."""
        total = self.rcpt_verdicts.get(float("inf"), 0.0)
        return round(total - self.rcpt_verdicts.get(seconds, total)), round(total)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def total_cpu_ms(self) -> float | None:
        """The milter's CPU per message and its state server's, if it has one."""
        if self.milter_cpu_ms is None:
            return None
        return self.milter_cpu_ms + (self.state_cpu_ms or 0.0)

    def greylisted(self, *outcomes: str) -> int:
        """Greylist checks during the run with these outcomes."""
        return round(sum(self.greylist.get(outcome, 0.0) for outcome in outcomes))

    @property
    def milter_cpu_ms(self) -> float | None:
        if self.milter_user_ms is None or self.milter_system_ms is None:
            return None
        return self.milter_user_ms + self.milter_system_ms


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _delivered(stack: Stack) -> dict[str, bool]:
    """Tokens of the messages at the sink, and whether each carries spamgate's header."""
    found = {}
    for path in stack.sink.dump_dir.iterdir():
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        token = message_token(data)
        if token is not None:
            found[token] = bool(_TAGGED.search(data))
    return found


@dataclass(frozen=True)
class _Snapshot:
    """CPU counters at one moment: the milter under test, Postfix, every process of the
    benchmark, and the whole machine (for the load that was not ours)."""

    milter_user: float
    milter_system: float
    postfix: float
    ours: float
    machine: float
    at: float

    @classmethod
    def take(cls, stack: Stack, milter: Milter | None) -> _Snapshot:
        user = system = 0.0
        if milter is not None:
            user, system = milter.times()
        postfix = measure.group_cpu(stack.postfix.pid)
        own = os.times()
        ours = postfix + own.user + own.system
        for pid in stack.helper_pids():
            with contextlib.suppress(OSError):
                ours += measure.process_cpu(pid)
        return cls(user, system, postfix, ours, measure.machine_busy(), time.monotonic())


@dataclass(frozen=True)
class _Counters:
    """spamgate's own counters (its /metrics) at one moment."""

    dns: measure.DnsCounters
    greylist: dict[str, float]
    rcpt_verdicts: dict[float, float]

    @classmethod
    def read(cls, port: int) -> _Counters:
        return cls(
            measure.DnsCounters.read(port),
            measure.greylist_outcomes(port),
            measure.rcpt_verdict_buckets(port),
        )

    def __sub__(self, earlier: _Counters) -> _Counters:
        return _Counters(
            self.dns - earlier.dns,
            {
                outcome: count - earlier.greylist.get(outcome, 0.0)
                for outcome, count in self.greylist.items()
                if count > earlier.greylist.get(outcome, 0.0)
            },
            {
                bound: count - earlier.rcpt_verdicts.get(bound, 0.0)
                for bound, count in self.rcpt_verdicts.items()
            },
        )


def measure_run(
    stack: Stack, workload: Workload, config: str, round_number: int, batch: Sequence[Message]
) -> Run:
    milter = stack.milters.get(config)
    stack.clear_sink()
    counters_before = None
    server = milter.state_server if milter is not None else None
    log_offset = 0
    if milter is not None:
        milter.reset_peak_rss()
        log_offset = milter.log_size()
        if milter.metrics_port:
            counters_before = _Counters.read(milter.metrics_port)
    state_before = measure.process_cpu(server.pid) if server is not None else 0.0
    before = _Snapshot.take(stack, milter)

    result = loadgen.send_all(stack.port(config), batch, workload.concurrency)

    accepted = result.tokens(Outcome.ACCEPTED)
    delivered: dict[str, bool] = {}

    def all_delivered() -> bool:
        delivered.update(_delivered(stack))
        return accepted <= delivered.keys()

    with contextlib.suppress(HarnessError):
        wait_until(all_delivered, timeout=120, what="delivery to the sink", interval=0.1)
    after = _Snapshot.take(stack, milter)
    sent = len(result.sent)
    state_cpu_ms = None
    if server is not None:
        state_cpu_ms = (measure.process_cpu(server.pid) - state_before) * 1000 / sent
    milter_user_ms = milter_system_ms = peak_mb = queries = hit_rate = None
    counted = None
    if milter is not None:
        milter_user_ms = (after.milter_user - before.milter_user) * 1000 / sent
        milter_system_ms = (after.milter_system - before.milter_system) * 1000 / sent
        peak_mb = milter.rss_kib()[1] / 1024
        if counters_before is not None and milter.metrics_port:
            counted = _Counters.read(milter.metrics_port) - counters_before
            queries = counted.dns.queries / sent
            hit_rate = counted.dns.cache_hits / counted.dns.lookups if counted.dns.lookups else None
    times = [s.seconds * 1000 for s in result.sent if s.outcome is not Outcome.FAILED]
    untagged = 0
    if _is_spamgate(config):
        untagged = sum(1 for token in accepted if not delivered.get(token, True))
    others = (after.machine - before.machine) - (after.ours - before.ours)
    # Messages to postmaster@ are accepted from anyone, by design (RFC 5321 4.5.1).
    listed = {
        m.token
        for m in batch
        if m.client.kind is Kind.LISTED_REJECT and not m.rcpt.startswith(EXEMPT_LOCAL_PARTS)
    }
    deadline_lost = None
    answer_ms: tuple[float, ...] = ()
    if milter is not None and _is_spamgate(config):
        decisions = parse_decisions(milter.log_since(log_offset))
        deadline_lost = sum(1 for d in decisions if _LATE.search(d.get("lists", "")))
        answer_ms = tuple(
            float(ms) for d in decisions for ms in _ANSWER_MS.findall(d.get("lists", ""))
        )
    return Run(
        workload=workload.name,
        config=config,
        round=round_number,
        sent=sent,
        accepted=len(accepted),
        refused=result.count(Outcome.REFUSED),
        failed=result.count(Outcome.FAILED),
        lost=len(accepted - delivered.keys()),
        untagged=untagged,
        seconds=result.seconds,
        p50_ms=statistics.median(times) if times else float("nan"),
        p99_ms=_percentile(times, 0.99) if times else float("nan"),
        milter_user_ms=milter_user_ms,
        milter_system_ms=milter_system_ms,
        postfix_cpu_ms=(after.postfix - before.postfix) * 1000 / sent,
        milter_peak_rss_mb=peak_mb,
        dns_queries=queries,
        cache_hit_rate=hit_rate,
        other_load=max(0.0, others / (after.at - before.at)),
        state_cpu_ms=state_cpu_ms,
        greylist=counted.greylist if counted is not None else {},
        listed_sent=len(listed),
        listed_accepted=len(listed & accepted),
        deadline_lost=deadline_lost,
        list_answer_ms=answer_ms,
        rcpt_verdicts=counted.rcpt_verdicts if counted is not None else {},
    )


def _wait_for_delivery(stack: Stack, result: LoadResult, what: str) -> None:
    """Until the sink holds as many messages as Postfix accepted (bounded)."""
    accepted = result.count(Outcome.ACCEPTED)
    wait_until(lambda: len(_delivered(stack)) >= accepted, timeout=120, what=what, interval=0.1)


def _is_spamgate(config: str) -> bool:
    return config.startswith("spamgate")


def _is_filter(config: str) -> bool:
    """A configuration that refuses listed clients: spamgate, and rspamd."""
    return _is_spamgate(config) or config == "rspamd"


def _failures(result: LoadResult) -> list[str]:
    return [s.reply for s in result.sent if s.outcome is Outcome.FAILED][:5]


@dataclass
class Report:
    plan: Plan
    command: str
    started: datetime.datetime
    runs: list[Run] = field(default_factory=list)
    held: dict[str, float] = field(default_factory=dict)
    long_run: list[tuple[int, float]] = field(default_factory=list)
    profile: list[tuple[str, float, float]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    on_tmpfs: bool = False
    before: str | None = None


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def warm_up(stack: Stack, population: Population, configs: Sequence[str]) -> None:
    """Send one message from every client through each spamgate, to fill its DNS cache, and a
    few through the rest, so every process has started and paged in its code."""
    every_client = one_per_client(population, "warm")
    for config in configs:
        batch = every_client if _is_spamgate(config) else every_client[:200]
        batch = [retag(m, f"{m.token}.{config}") for m in batch]
        started = time.monotonic()
        result = loadgen.send_all(stack.port(config), batch, 50)
        failed = result.count(Outcome.FAILED)
        log(
            f"warm-up {config}: {len(batch)} messages in {time.monotonic() - started:.1f} s"
            f" ({result.count(Outcome.ACCEPTED)} accepted, {failed} failed)"
        )
        refused = result.count(Outcome.REFUSED)
        if failed or (refused and not _is_filter(config)):
            problems = [s.reply for s in result.sent if s.outcome is not Outcome.ACCEPTED][:5]
            raise HarnessError(f"warm-up through {config} went wrong: {problems}")
        _wait_for_delivery(stack, result, "warm-up delivery")
        stack.clear_sink()


def run_rounds(stack: Stack, population: Population, report: Report) -> None:
    workloads = report.plan.workloads
    cold_next = 0
    restarted: set[str] = set()  # filters whose cache a cold start emptied since the warm-up
    for round_number in range(report.plan.rounds):
        for workload in workloads:
            configs = list(workload.configs)
            shift = round_number % len(configs)
            configs = configs[shift:] + configs[:shift]
            stateful = [c for c in configs if c.startswith(STATEFUL)]
            if workload.cold_start:
                for config in stateful:
                    stack.milters[config].restart()
                restarted.update(stateful)
            elif workload.mix is not None and restarted & set(stateful):
                # A warm-cache workload after a cold start: warm those filters up again.
                warm_up(stack, population, sorted(restarted & set(stateful)))
                restarted -= set(stateful)
            if workload.mix is None:
                base = cold_messages(
                    population, cold_next, workload.messages, f"r{round_number}.{workload.name}"
                )
                cold_next += workload.messages
            else:
                base = messages(
                    population,
                    workload.mix,
                    workload.messages,
                    f"r{round_number}.{workload.name}",
                    seed=round_number * 100 + len(workload.name),
                    new_triplets=bool(workload.greylisted),
                )
                if workload.signed:
                    base = signed(population, base)
            if workload.greylisted:
                greylisted = [c for c in configs if c in workload.greylisted]
                send_first_attempts(
                    stack, report, workload, base, configs=greylisted, round_number=round_number
                )
            for config in configs:
                batch = [retag(m, f"{m.token}.{config}") for m in base]
                run = measure_run(stack, workload, config, round_number, batch)
                report.runs.append(run)
                _log_run(report, run)


def send_first_attempts(
    stack: Stack,
    report: Report,
    workload: Workload,
    base: Sequence[Message],
    *,
    configs: Sequence[str],
    round_number: int,
) -> None:
    """The round's messages once through each greylisting configuration: every one is a
    first attempt, told to retry (451, greylist=new) and remembered. Then greylist.min_delay
    goes by, so that the same messages sent again are retries that pass (greylist=passed),
    each one read and one write of the state, and delivered."""
    first = workload.first_attempts
    for config in configs:
        batch = [retag(m, f"{m.token}.{config}.first") for m in base]
        run = measure_run(stack, first, config, round_number, batch)
        report.runs.append(run)
        _log_run(report, run)
    # The earlier configurations' first attempts are older still.
    time.sleep(GREYLIST_MIN_DELAY + 0.5)


def _log_run(report: Report, run: Run) -> None:
    state = "" if run.state_cpu_ms is None else f"  state server {run.state_cpu_ms:.2f} ms/msg"
    extra = ""
    if run.greylist:
        extra = "  greylist " + ",".join(f"{k}={v:.0f}" for k, v in sorted(run.greylist.items()))
    if run.dns_queries:  # a warm cache asks nothing
        extra += f"  DNS queries {run.dns_queries:.2f}/msg"
    log(
        f"round {run.round + 1}/{report.plan.rounds} {run.workload:9} "
        f"{run.config:15} {run.rate:7.1f} msg/s  p50 {run.p50_ms:6.2f} ms  "
        f"p99 {run.p99_ms:7.2f} ms  milter {_fmt(run.milter_cpu_ms)} ms/msg{state}  "
        f"postfix {run.postfix_cpu_ms:5.2f} ms/msg  refused {run.refused}  "
        f"failed {run.failed}  lost {run.lost}{extra}"
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def measure_held(stack: Stack, population: Population, report: Report) -> None:
    """RSS of each milter with N sessions open at once (each held after its RCPT)."""
    count = report.plan.held_sessions
    for config in ("noop", "spamgate"):
        milter = stack.milters[config]
        batch = messages(population, CLEAN_ONLY_MIX, count, f"held.{config}", seed=9)
        idle_rss = measure.rss_kib(milter.pid)[0] / 1024
        seen: dict[str, float] = {}

        def at_peak(held: int, pid: int = milter.pid, seen: dict[str, float] = seen) -> None:
            seen["held"] = held
            seen["rss"] = measure.rss_kib(pid)[0] / 1024

        stack.clear_sink()
        result = loadgen.send_held(stack.port(config), batch, at_peak)
        _wait_for_delivery(stack, result, "delivery of the held sessions")
        report.held[f"{config}.idle"] = idle_rss
        report.held[f"{config}.held"] = seen.get("held", 0)
        report.held[f"{config}.rss"] = seen.get("rss", float("nan"))
        report.held[f"{config}.failed"] = result.count(Outcome.FAILED)
        log(
            f"held {config}: {seen.get('held', 0):.0f} sessions open, RSS {idle_rss:.1f} MB idle"
            f" -> {seen.get('rss', float('nan')):.1f} MB; {result.count(Outcome.FAILED)} failed"
        )


def measure_long_run(stack: Stack, population: Population, report: Report) -> None:
    """RSS of spamgate after each batch of a long run at concurrency 50."""
    milter = stack.milters["spamgate"]
    sent = 0
    for number in range(report.plan.long_run_batches):
        batch = messages(
            population,
            REALISTIC_MIX,
            report.plan.long_run_batch,
            f"long.{number}",
            seed=1000 + number,
        )
        stack.clear_sink()
        result = loadgen.send_all(stack.port("spamgate"), batch, 50)
        sent += len(batch)
        rss = measure.rss_kib(milter.pid)[0] / 1024
        report.long_run.append((sent, rss))
        log(f"long run: {sent} messages, spamgate RSS {rss:.1f} MB, {_failures(result)}")
        _wait_for_delivery(stack, result, "long-run delivery")


def profile(stack: Stack, population: Population, report: Report) -> None:
    """py-spy samples spamgate under c50 load (realistic mix)."""
    milter = stack.milters["spamgate"]
    raw = stack.workdir / "profile.txt"
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--pid", str(milter.pid), "--rate", "250"]
    argv += ["--format", "raw", "--output", str(raw), "--duration", "600"]
    with open(stack.workdir / "py-spy.log", "wb") as py_spy_log:
        recorder = subprocess.Popen(
            argv, stdout=py_spy_log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        time.sleep(1.0)  # py-spy attaches
        deadline = time.monotonic() + report.plan.profile_seconds
        number = 0
        while time.monotonic() < deadline and number < 100:
            batch = messages(population, REALISTIC_MIX, 1000, f"prof.{number}", seed=number)
            loadgen.send_all(stack.port("spamgate"), batch, 50)
            number += 1
    finally:
        # SIGINT makes py-spy stop and write what it has.
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(timeout=10)
    if raw.exists():
        report.profile = summarize_profile(raw.read_text())
    else:
        report.notes.append("py-spy wrote no profile (see its log); profile section left out")


# Frames where a thread waits rather than works: py-spy cannot always tell a blocked thread
# from a running one (libmilter's threads have no Python frames between callbacks at all).
_WAITING = (
    "Condition.wait",
    ".select (",
    "_wait_for_signals",
    "serve (spamgate/shell/adapter.py)",
    "_wait_for_tstate_lock",
    "Event.wait",
    "sigtimedwait",
    "Handler.acquire",
)


def summarize_profile(raw: str, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) of the costliest functions in py-spy's raw output
    (one collapsed stack and its sample count per line), over the samples that were running
    Python code in a milter callback (lock waits and idle threads left out)."""
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_function(frame) for frame in stack.split(";") if frame.strip()]
        if not frames or any(mark in frames[-1] for mark in _WAITING):
            continue
        count = int(count_text)
        total += count
        self_samples[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return []
    ranked = sorted(self_samples, key=lambda name: -self_samples[name])[:top]
    return [
        (name, 100 * self_samples[name] / total, 100 * inclusive[name] / total) for name in ranked
    ]


def _function(frame: str) -> str:
    """'envrcpt (spamgate/shell/adapter.py:140)' -> 'envrcpt (spamgate/shell/adapter.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})" if parts else name


# ---------------------------------------------------------------------------------------
# The report


def _median(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _by_round(runs: Sequence[Run], workload: str) -> list[dict[str, Run]]:
    """A workload's runs, round by round, by configuration."""
    by_round: dict[int, dict[str, Run]] = collections.defaultdict(dict)
    for run in runs:
        if run.workload == workload:
            by_round[run.round][run.config] = run
    return list(by_round.values())


def _round_ratio(
    runs: Sequence[Run], workload: str, config: str, base: str, value: Callable[[Run], float]
) -> float | None:
    """Median over rounds of value(config) / value(base) within the same round."""
    ratios = [
        value(r[config]) / value(r[base])
        for r in _by_round(runs, workload)
        if config in r and base in r and value(r[base])
    ]
    return statistics.median(ratios) if ratios else None


def _round_difference(
    runs: Sequence[Run], workload: str, config: str, base: str, value: Callable[[Run], float]
) -> float | None:
    differences = [
        value(r[config]) - value(r[base])
        for r in _by_round(runs, workload)
        if config in r and base in r
    ]
    return statistics.median(differences) if differences else None


def render(report: Report) -> str:
    runs = report.runs
    lines = [
        "# spamgate benchmark results",
        "",
        "Written by `make bench` (bench/run.py); do not edit by hand above the line"
        ' "Before and after". Medians over rounds; every ratio is taken within a round'
        " (against Postfix without a milter, or against the no-op milter) before the median.",
        "",
        f"- Command: `{report.command}`",
        f"- Date: {report.started:%Y-%m-%d %H:%M} UTC, {report.plan.rounds} rounds",
        f"- Machine: {_machine()}",
        f"- Software: {_versions()}",
        f"- Commit: {_commit()}",
        f"- Postfix queue on tmpfs: {'yes' if report.on_tmpfs else 'no (no tmpfs found)'}",
        "- Policy: config/spamgate.yaml (4 IP lists, 1 domain list checked for 5 names,"
        " reverse DNS from Postfix's macros, HELO and sender checks) pointed at rbldnsd, plus"
        f" {len(EXTRA_RULES)} header rules (bench/workload.py); metrics on.",
        "- Clients: a seeded population of "
        f"{sum(_population_sizes(report.plan.sizes).values())} addresses"
        " (clean, dynamic, allowlisted, listed, IPv6) presented through XCLIENT; 2 KB messages.",
        "",
    ]
    if report.before:
        lines += [f"- `spamgate-before`: the same daemon at commit {report.before}.", ""]
    for workload in report.plan.workloads:
        if workload.greylisted:
            lines += _greylist_tables(runs, workload, report.on_tmpfs)
        elif workload.cold_start:
            lines += _real_table(runs, workload)
        else:
            lines += _workload_table(runs, workload)
    lines += _targets(report)
    lines += _memory(report)
    lines += _phases(report)
    lines += _profile(report)
    notes = list(report.notes) + greylist_problems(report)
    busy = [r for r in report.runs if r.other_load > 0.25]
    if busy:
        notes.append(
            f"{len(busy)} of {len(report.runs)} runs shared the machine with other work"
            " (more than 0.25 cores busy outside the benchmark, column 'other load'):"
            " their numbers are less trustworthy."
        )
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _population_sizes(sizes: Sizes) -> dict[str, int]:
    return {
        name: getattr(sizes, name)
        for name in (
            "clean",
            "dynamic",
            "allowlisted",
            "listed_reject",
            "listed_greylist",
            "listed_tag",
            "ipv6",
        )
    }


def _workload_table(runs: Sequence[Run], workload: Workload) -> list[str]:
    own = [r for r in runs if r.workload == workload.name]
    if not own:
        return []
    configs = [c for c in workload.configs if any(r.config == c for r in own)]
    base = "plain" if "plain" in configs else configs[0]
    lines = [
        f"## {workload.title} (`{workload.name}`, {workload.messages} messages per run)",
        "",
        f"| configuration | msg/s | vs {base} | p50 ms | p99 ms | p50 - {base} ms"
        " | milter CPU ms/msg (user + sys) | Postfix CPU ms/msg | milter peak RSS MB"
        " | DNS queries/msg | cache hits | refused | failed | lost | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        mine = [r for r in own if r.config == config]
        rate_ratio = _round_ratio(runs, workload.name, config, base, lambda r: r.rate)
        p50_diff = _round_difference(runs, workload.name, config, base, lambda r: r.p50_ms)
        hit = _median(r.cache_hit_rate for r in mine)
        lines.append(
            f"| {config} | {_median(r.rate for r in mine):.1f}"
            f" | {_fmt(rate_ratio and rate_ratio * 100, 1)}%"
            f" | {_median(r.p50_ms for r in mine):.2f} | {_median(r.p99_ms for r in mine):.2f}"
            f" | {_fmt(p50_diff)}"
            f" | {_cpu(mine)}"
            f" | {_median(r.postfix_cpu_ms for r in mine):.2f}"
            f" | {_fmt(_median(r.milter_peak_rss_mb for r in mine), 1)}"
            f" | {_fmt(_median(r.dns_queries for r in mine))}"
            f" | {_fmt(hit and hit * 100, 1)}{'%' if hit is not None else ''}"
            f" | {sum(r.refused for r in mine)} | {sum(r.failed for r in mine)}"
            f" | {sum(r.lost for r in mine)} | {_median(r.other_load for r in mine):.2f} |"
        )
    lines.append("")
    return lines


def _real_table(runs: Sequence[Run], workload: Workload) -> list[str]:
    """Issue 13's comparison: every filter with a realistic cache, against the no-op milter."""
    own = [r for r in runs if r.workload == workload.name]
    if not own:
        return []
    configs = [c for c in workload.configs if any(r.config == c for r in own)]
    lines = [
        f"## {workload.title} (`{workload.name}`, {workload.messages} messages per run)",
        "",
        "Each round starts with spamgate and rspamd restarted (empty caches) and draws its"
        " messages from the whole population, so most clients are seen once or twice. CPU:"
        " the filter's (for rspamd, its main process and workers). List answers: the time from"
        " a lookup's start to its answer inside spamgate, from its decision log, over all"
        " rounds (a cached answer counts 0 ms; an answer the deadline cut off counts the"
        " deadline): when spamgate read it, which under load can be long after it arrived if"
        " no session needed it yet. RCPT verdicts over 50 ms: how many verdicts at RCPT took"
        " longer than 50 ms, waiting for DNS included (spamgate's decision-time"
        " histogram). Lost to the deadline: decisions with a list unusable because its answer"
        " came after spamgate's own deadline (or the list was suspended for that). Listed"
        " accepted: messages from clients on Spamhaus ZEN that were accepted, of all sent"
        " (those to postmaster@ left out: spamgate accepts them from anyone, rspamd does not).",
        "",
        "| configuration | msg/s | vs no-op | p50 ms | p99 ms | filter CPU ms/msg (user + sys)"
        " | CPU vs no-op | Postfix CPU ms/msg | filter peak RSS MB | DNS queries/msg"
        " | cache hits | list answers p50 / p99 ms | RCPT verdicts over 50 ms"
        " | lost to the deadline | listed accepted | refused | failed | lost | other load |",
        "|---|" + "---:|" * 19,
    ]
    for config in configs:
        mine = [r for r in own if r.config == config]
        rate_ratio = _round_ratio(runs, workload.name, config, "noop", lambda r: r.rate)
        cpu_ratio = _round_ratio(
            runs, workload.name, config, "noop", lambda r: r.milter_cpu_ms or 0.0
        )
        if config == "plain":
            cpu_ratio = None
        hit = _median(r.cache_hit_rate for r in mine)
        answers = sorted(ms for r in mine for ms in r.list_answer_ms)
        answer_text = "-"
        if answers:
            answer_text = f"{_percentile(answers, 0.5):.0f} / {_percentile(answers, 0.99):.0f}"
        lost_lists = [r.deadline_lost for r in mine if r.deadline_lost is not None]
        slow = [r.rcpt_verdicts_over(0.05) for r in mine if r.rcpt_verdicts]
        slow_text = f"{sum(n for n, _ in slow)} of {sum(t for _, t in slow)}" if slow else "-"
        lines.append(
            f"| {config} | {_median(r.rate for r in mine):.1f}"
            f" | {_fmt(rate_ratio and rate_ratio * 100, 1)}%"
            f" | {_median(r.p50_ms for r in mine):.2f} | {_median(r.p99_ms for r in mine):.2f}"
            f" | {_cpu(mine)} | {_fmt(cpu_ratio and cpu_ratio * 100, 1)}"
            f"{'%' if cpu_ratio is not None else ''}"
            f" | {_median(r.postfix_cpu_ms for r in mine):.2f}"
            f" | {_fmt(_median(r.milter_peak_rss_mb for r in mine), 1)}"
            f" | {_fmt(_median(r.dns_queries for r in mine))}"
            f" | {_fmt(hit and hit * 100, 1)}{'%' if hit is not None else ''}"
            f" | {answer_text} | {slow_text}"
            f" | {sum(lost_lists) if lost_lists else '-'}"
            f" | {sum(r.listed_accepted for r in mine)} of {sum(r.listed_sent for r in mine)}"
            f" | {sum(r.refused for r in mine)} | {sum(r.failed for r in mine)}"
            f" | {sum(r.lost for r in mine)} | {_median(r.other_load for r in mine):.2f} |"
        )
    lines.append("")
    return lines


def _greylist_tables(runs: Sequence[Run], workload: Workload, on_tmpfs: bool) -> list[str]:
    """The cost of greylisting: each store against the same daemon without greylisting, and
    the first attempts that made every measured message a retry."""
    own = [r for r in runs if r.workload == workload.name]
    if not own:
        return []
    base = workload.configs[0]
    where = "on tmpfs, like Postfix's queue" if on_tmpfs else "on disk"
    lines = [
        f"## {workload.title} (`{workload.name}`, {workload.messages} messages per run)",
        "",
        "The `c50-clean` mix, each message to a recipient of its own. Every spamgate here has"
        " one more rule, BENCH_GREYLIST, that fires on every message and scores 0, and"
        " `state.remember_rejects: 0`, so that only greylisting uses the state store."
        f" `{base}` does not greylist (no greylisting: the baseline); the others give the rule"
        " `action: greylist`, with their state in an SQLite file in the benchmark's work"
        f" directory ({where}) or in a private redis-server on loopback, and"
        f" `greylist.min_delay: {GREYLIST_MIN_DELAY:g}` and `greylist.auto_allow_passes: 0`;"
        " `state.timeout` is the shipped one, and a check that fails open fails the run."
        " Before each round's runs the greylisting"
        " configurations were sent the round's messages once (the first attempts, next"
        " table) and more than `min_delay` went by: here every message is a retry that passes"
        " (one read and one write of the state) and is delivered. The columns"
        ' "- no greylisting" are the median over rounds of the difference from the baseline'
        " within a round: the cost of greylisting. CPU: the milter's, plus the redis-server's"
        " for the Redis state.",
        "",
        "| configuration | msg/s | vs no greylisting | p50 ms | p99 ms"
        " | p50 - no greylisting ms | p99 - no greylisting ms | milter CPU ms/msg (user + sys)"
        " | redis-server CPU ms/msg | CPU - no greylisting ms/msg | Postfix CPU ms/msg"
        " | greylist passed + known | failed open | refused | failed | lost | other load |",
        "|---|" + "---:|" * 16,
    ]
    for config in workload.configs:
        mine = [r for r in own if r.config == config]
        if not mine:
            continue

        def difference(value: Callable[[Run], float], config: str = config) -> str:
            return _fmt(_round_difference(runs, workload.name, config, base, value))

        rate_ratio = _round_ratio(runs, workload.name, config, base, lambda r: r.rate)
        retries = sum(r.greylisted("passed", "known") for r in mine)
        greylisted = str(retries) if config in workload.greylisted else "-"
        lines.append(
            f"| {config} | {_median(r.rate for r in mine):.1f}"
            f" | {_fmt(rate_ratio and rate_ratio * 100, 1)}%"
            f" | {_median(r.p50_ms for r in mine):.2f} | {_median(r.p99_ms for r in mine):.2f}"
            f" | {difference(lambda r: r.p50_ms)} | {difference(lambda r: r.p99_ms)}"
            f" | {_cpu(mine)} | {_fmt(_median(r.state_cpu_ms for r in mine))}"
            f" | {difference(lambda r: r.total_cpu_ms or 0.0)}"
            f" | {_median(r.postfix_cpu_ms for r in mine):.2f} | {greylisted}"
            f" | {sum(r.greylisted('failed-open') for r in mine)}"
            f" | {sum(r.refused for r in mine)} | {sum(r.failed for r in mine)}"
            f" | {sum(r.lost for r in mine)} | {_median(r.other_load for r in mine):.2f} |"
        )
    lines.append("")
    first = workload.first_attempts
    mine_first = [r for r in runs if r.workload == first.name]
    if not mine_first:
        return lines
    lines += [
        f"## {first.title} (`{first.name}`, {first.messages} messages per run)",
        "",
        "The same messages' first attempts, sent before each round's runs above: every"
        " triplet is new, so each costs one read and one write of the state and is told"
        " `451 4.7.1` at RCPT (no DATA follows).",
        "",
        "| configuration | msg/s | p50 ms | p99 ms | milter CPU ms/msg (user + sys)"
        " | redis-server CPU ms/msg | Postfix CPU ms/msg | greylist new + early | failed open"
        " | accepted | failed | other load |",
        "|---|" + "---:|" * 11,
    ]
    for config in first.configs:
        mine = [r for r in mine_first if r.config == config]
        if not mine:
            continue
        lines.append(
            f"| {config} | {_median(r.rate for r in mine):.1f}"
            f" | {_median(r.p50_ms for r in mine):.2f} | {_median(r.p99_ms for r in mine):.2f}"
            f" | {_cpu(mine)} | {_fmt(_median(r.state_cpu_ms for r in mine))}"
            f" | {_median(r.postfix_cpu_ms for r in mine):.2f}"
            f" | {sum(r.greylisted('new', 'early') for r in mine)}"
            f" | {sum(r.greylisted('failed-open') for r in mine)}"
            f" | {sum(r.accepted for r in mine)} | {sum(r.failed for r in mine)}"
            f" | {_median(r.other_load for r in mine):.2f} |"
        )
    lines.append("")
    return lines


def greylist_problems(report: Report) -> list[str]:
    """What makes a greylisting workload's numbers meaningless: a measured message that was
    not a retry passing greylisting (or was not delivered), a first attempt that was not
    told to retry, a store that failed open."""
    problems = []
    for workload in report.plan.workloads:
        if not workload.greylisted:
            continue
        first = workload.first_attempts.name
        for run in report.runs:
            where = f"`{run.workload}` {run.config} round {run.round + 1}"
            if run.workload == workload.name:
                if run.refused:
                    problems.append(f"{where}: {run.refused} of {run.sent} messages refused")
                if run.config not in workload.greylisted:
                    if run.greylist:
                        problems.append(f"{where}: greylisted though it should not: {run.greylist}")
                    continue
                retries = run.greylisted("passed", "known")
                others = {
                    k: round(v) for k, v in run.greylist.items() if k not in ("passed", "known")
                }
                if retries != run.sent or others:
                    problems.append(
                        f"{where}: {retries} of {run.sent} messages were greylisting retries"
                        f" that passed; other greylist outcomes: {others or 'none'}"
                    )
            elif run.workload == first:
                told = run.greylisted("new", "early")
                others = {k: round(v) for k, v in run.greylist.items() if k not in ("new", "early")}
                if told != run.sent or others or run.accepted:
                    problems.append(
                        f"{where}: {told} of {run.sent} first attempts were told to retry,"
                        f" {run.accepted} accepted; other greylist outcomes: {others or 'none'}"
                    )
    return problems


def _cpu(runs: Sequence[Run]) -> str:
    total = _median(r.milter_cpu_ms for r in runs)
    if total is None:
        return "-"
    user = _median(r.milter_user_ms for r in runs)
    system = _median(r.milter_system_ms for r in runs)
    return f"{total:.2f} ({_fmt(user)} + {_fmt(system)})"


def _targets(report: Report) -> list[str]:
    runs = report.runs
    rows = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**not met**")

    c1 = _round_difference(runs, "c1", "spamgate", "noop", lambda r: r.p50_ms)
    rows.append(
        (
            "C=1: spamgate median time per message at most 0.5 ms above the no-op milter's",
            f"{_fmt(c1)} ms above",
            verdict(None if c1 is None else c1 <= 0.5),
        )
    )
    for workload in ("c50-clean", "c50"):
        rate = _round_ratio(runs, workload, "spamgate", "noop", lambda r: r.rate)
        cpu = _round_ratio(runs, workload, "spamgate", "noop", lambda r: r.milter_cpu_ms or 0)
        rows.append(
            (
                f"`{workload}`: spamgate throughput at least 95% of the no-op milter's",
                f"{_fmt(rate and rate * 100, 1)}%",
                verdict(None if rate is None else rate >= 0.95),
            )
        )
        rows.append(
            (
                f"`{workload}`: spamgate CPU per message at most the no-op milter's",
                f"{_fmt(cpu and cpu * 100, 1)}% of it",
                verdict(None if cpu is None else cpu <= 1.0),
            )
        )
    rows += _real_targets(runs)
    dkim_cpu = _round_difference(
        runs, "c50-dkim", "spamgate", "spamgate-nodkim", lambda r: r.milter_cpu_ms or 0.0
    )
    dkim_rate = _round_ratio(runs, "c50-dkim", "spamgate", "spamgate-nodkim", lambda r: r.rate)
    rows.append(
        (
            "`c50-dkim` (issue 17, no target): what DKIM and DMARC cost on signed mail, CPU per"
            " message and throughput against the same policy without them",
            f"{_fmt(dkim_cpu)} ms more CPU, {_fmt(dkim_rate and dkim_rate * 100, 1)}% of the"
            " throughput",
            "-",
        )
    )
    cold = _round_difference(runs, "cold", "spamgate-cold", "noop", lambda r: r.p50_ms)
    lookup_ms = 50.0
    rows.append(
        (
            "Cold cache, 50 ms per DNS answer: time added about one lookup, not one per list",
            f"{_fmt(cold, 1)} ms added (one lookup: {lookup_ms:.0f} ms)",
            verdict(None if cold is None else cold < 2 * lookup_ms),
        )
    )
    held_rss = report.held.get("spamgate.rss")
    held = report.held.get("spamgate.held", 0)
    rows.append(
        (
            f"RSS with {held:.0f} concurrent sessions under 150 MB",
            f"{_fmt(held_rss, 1)} MB",
            verdict(None if held_rss is None else held_rss < 150),
        )
    )
    growth = _long_run_growth(report)
    rows.append(
        (
            "RSS flat over a long run (growth over the second half under 5%)",
            "-" if growth is None else f"{growth * 100:+.1f}%",
            verdict(None if growth is None else growth < 0.05),
        )
    )
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", *_trap_lines(runs), ""]
    return lines


def _real_targets(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """Issue 13's targets, at 50 and 200 sessions with a realistic cache."""
    rows = []

    def verdict(ok: bool | None, aim: bool = False) -> str:
        if ok is None:
            return "-"
        return ("met" if ok else "**not met**") + (" (aim)" if aim else "")

    for workload in ("c50-real", "c200-real"):
        mine = [r for r in runs if r.workload == workload and r.config == "spamgate"]
        if not mine:
            continue
        lost = sum(r.deadline_lost or 0 for r in mine)
        decisions = sum(r.sent for r in mine)
        rows.append(
            (
                f"`{workload}`: no decision loses a list to spamgate's own deadline",
                f"{lost} of {decisions} messages' decisions",
                verdict(lost == 0),
            )
        )
        worst = max(
            (_percentile(r.list_answer_ms, 0.99) for r in mine if r.list_answer_ms),
            default=None,
        )
        rows.append(
            (
                f"`{workload}`: list answers inside spamgate p99 under 50 ms (worst round)",
                f"{_fmt(worst, 0)} ms",
                verdict(None if worst is None else worst < 50),
            )
        )
        slow = [r.rcpt_verdicts_over(0.05) for r in mine if r.rcpt_verdicts]
        waited = sum(n for n, _ in slow)
        rows.append(
            (
                f"`{workload}`: RCPT verdicts that took over 50 ms, DNS waits included",
                f"{waited} of {sum(t for _, t in slow)}",
                "(reported)",
            )
        )
        listed = sum(r.listed_accepted for r in mine)
        rows.append(
            (
                f"`{workload}`: no client listed on ZEN accepted",
                f"{listed} of {sum(r.listed_sent for r in mine)}",
                verdict(listed == 0),
            )
        )
        rate = _round_ratio(runs, workload, "spamgate", "noop", lambda r: r.rate)
        rows.append(
            (
                f"`{workload}`: spamgate throughput at least the no-op milter's",
                f"{_fmt(rate and rate * 100, 1)}%",
                verdict(None if rate is None else rate >= 1.0),
            )
        )
        cpu = _round_ratio(runs, workload, "spamgate", "noop", lambda r: r.milter_cpu_ms or 0)
        rows.append(
            (
                f"`{workload}`: spamgate CPU per message at most 1.25 times the no-op milter's",
                f"{_fmt(cpu and cpu * 100, 1)}% of it",
                verdict(None if cpu is None else cpu <= 1.25),
            )
        )
        versus = _round_ratio(runs, workload, "spamgate", "rspamd", lambda r: r.rate)
        rows.append(
            (
                f"`{workload}`: spamgate throughput at least rspamd's",
                f"{_fmt(versus and versus * 100, 1)}%",
                verdict(None if versus is None else versus >= 1.0, aim=True),
            )
        )
    return rows


def _long_run_growth(report: Report) -> float | None:
    series = report.long_run
    if len(series) < 2:
        return None
    middle = series[len(series) // 2 - 1][1] if len(series) > 2 else series[0][1]
    return (series[-1][1] - middle) / middle


def _trap_lines(runs: Sequence[Run]) -> list[str]:
    """The ~40 ms traps: an inet socket that is much slower than a unix one at C=1."""
    lines = ["Latency traps (Nagle / delayed ACK, ~40 ms each when present), C=1 medians:", ""]
    for inet, unix in (("noop", "noop-unix"), ("spamgate", "spamgate-unix")):
        difference = _round_difference(runs, "c1", inet, unix, lambda r: r.p50_ms)
        if difference is None:
            continue
        state = "absent" if difference < 10 else "**present**"
        lines.append(f"- {inet} over inet vs unix: {difference:+.2f} ms: trap {state}")
    worst = max((r.p99_ms for r in runs if r.workload == "c1"), default=None)
    if worst is not None:
        lines.append(f"- worst p99 of any configuration at C=1: {worst:.2f} ms")
    return lines


def _memory(report: Report) -> list[str]:
    lines = ["## Memory", ""]
    if report.held:
        lines += ["| milter | sessions held open | RSS idle MB | RSS with sessions MB | failed |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for config in ("noop", "spamgate"):
            if f"{config}.held" in report.held:
                held = report.held
                lines.append(
                    f"| {config} | {held[f'{config}.held']:.0f}"
                    f" | {held[f'{config}.idle']:.1f} | {held[f'{config}.rss']:.1f}"
                    f" | {held[f'{config}.failed']:.0f} |"
                )
        lines.append("")
    if report.long_run:
        lines.append("Long run at C=50 (realistic mix), spamgate RSS after each batch:")
        lines.append("")
        lines.append("| messages | " + " | ".join(str(n) for n, _ in report.long_run) + " |")
        lines.append("|---|" + "---:|" * len(report.long_run))
        lines.append("| RSS MB | " + " | ".join(f"{r:.1f}" for _, r in report.long_run) + " |")
        lines.append("")
    return lines


def _phases(report: Report) -> list[str]:
    if not report.phases:
        return []
    lines = [
        "## spamgate's own Python per message, by callback (`python -m bench.phases`)",
        "",
        "The daemon's runtime driven without a socket, warm cache, one thread: the work",
        "spamgate adds to the pymilter floor before fifty threads share one GIL.",
        "",
        "| callback | " + " | ".join(report.phases) + " | total |",
        "|---|" + "---:|" * (len(report.phases) + 1),
        "| CPU us | "
        + " | ".join(f"{v:.0f}" for v in report.phases.values())
        + f" | {sum(report.phases.values()):.0f} |",
        "",
    ]
    return lines


def _profile(report: Report) -> list[str]:
    if not report.profile:
        return []
    lines = [
        "## Where spamgate's time goes under load (py-spy, C=50, realistic mix)",
        "",
        "Share of the samples that were running Python code (threads waiting for a lock or",
        "for work left out). libmilter's own C code and the GIL hand-overs between threads",
        "do not show here: see the milter's system time in the tables above.",
        "",
        "| function | self % | inclusive % |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{name}` | {own:.1f} | {total:.1f} |" for name, own, total in report.profile]
    lines.append("")
    return lines


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {model}, {memory:.0f} GiB, Linux {platform.release()}"


def _versions() -> str:
    postfix = subprocess.run(
        ["postconf", "-dh", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    pymilter = importlib.metadata.version("pymilter")
    return f"Python {platform.python_version()}, pymilter {pymilter}, Postfix {postfix}"


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "milter")
    return commit + (" (with uncommitted changes under milter/)" if dirty else "")


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about 1 min)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; --quick: 1)")
    parser.add_argument("--before", help="also measure spamgate at this git revision")
    parser.add_argument("--output", type=Path, help=f"results file (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", help="comma-separated workloads to run (default: all)")
    parser.add_argument("--profile", type=float, help="seconds of py-spy profile under load")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the held-sessions and long-run parts"
    )
    args = parser.parse_args(argv)
    the_plan = plan(args.quick, args.rounds)
    workloads = the_plan.workloads
    if args.only:
        wanted = args.only.split(",")
        workloads = tuple(w for w in workloads if w.name in wanted)
    if args.before:
        workloads = tuple(w.with_before() if w.name != "cold" else w for w in workloads)
    the_plan = dataclasses.replace(
        the_plan,
        workloads=workloads,
        profile_seconds=the_plan.profile_seconds if args.profile is None else args.profile,
        held_sessions=0 if args.no_memory else the_plan.held_sessions,
        long_run_batches=0 if args.no_memory else the_plan.long_run_batches,
    )
    return args, the_plan


def main(argv: Sequence[str] | None = None) -> int:
    args, the_plan = _arguments(argv)
    output = args.output or (None if args.quick else RESULTS)
    command = "python -m bench.run " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    report = Report(the_plan, command.strip(), datetime.datetime.now(datetime.UTC))
    population = build_population(the_plan.sizes)
    started = time.monotonic()
    with running_stack(population, keep=args.keep, before=args.before) as stack:
        report.on_tmpfs = stack.on_tmpfs
        report.before = args.before
        log(f"stack up in {stack.workdir}")
        configs = sorted({c for w in the_plan.workloads for c in w.configs})
        warm_up(stack, population, [c for c in configs if c != "spamgate-cold"])
        run_rounds(stack, population, report)
        if the_plan.held_sessions:
            measure_held(stack, population, report)
        measure_long_run(stack, population, report)
        if the_plan.profile_seconds:
            profile(stack, population, report)
    log("measuring spamgate's Python per callback (bench/phases.py)")
    report.phases = phases.measure(200 if args.quick else 800)
    text = render(report)
    if output is not None:
        output.write_text(_keep_before_after(output, text))
        log(f"wrote {output}")
    print(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    return _verdict(report)


def _verdict(report: Report) -> int:
    """1 if any message was lost, any session failed, spamgate let a message through
    untagged, or a greylisting run did not measure what it says (greylist_problems): the
    numbers of such a run mean nothing."""
    lost = sum(r.lost for r in report.runs)
    failed = sum(r.failed for r in report.runs)
    untagged = sum(r.untagged for r in report.runs)
    greylisting = greylist_problems(report)
    if lost or failed or untagged or greylisting:
        log(
            f"FAILED: {lost} messages lost, {failed} sessions failed, {untagged} messages"
            " delivered through spamgate without its X-Spam-Status header,"
            f" {len(greylisting)} greylisting runs that did not measure greylisting"
        )
        for problem in greylisting[:10]:
            log(f"  {problem}")
        return 1
    return 0


BEFORE_AFTER = "## Before and after"


def _keep_before_after(path: Path, text: str) -> str:
    """Keep the hand-written "Before and after" section of an existing results file."""
    with contextlib.suppress(FileNotFoundError):
        old = path.read_text()
        if BEFORE_AFTER in old:
            return text.rstrip("\n") + "\n\n" + old[old.index(BEFORE_AFTER) :]
    return text


if __name__ == "__main__":
    sys.exit(main())
