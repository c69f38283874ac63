"""spamgate's resolver alone under a flood: many session threads, cold cache, local rbldnsd.

    python -m bench.dnsload [--sessions 200] [--rate 300] [--seconds 10] [--lists 4]
                            [--work-us 400]

Each session thread does what a milter session does with DNS, over and over: it starts the
lookups of a client address never seen before on every list (the cold cache of a large
population), does `--work-us` microseconds of Python work (the callbacks between connect and
RCPT, holding the interpreter lock like them), then waits for the answers up to the deadline.
With `--rate`, new sessions start at that many a second in all (a flood of a given size, as
an MX sees it); without, each thread starts its next session at once (the resolver's
ceiling: the process is then busy all the time, and answer times are mostly queueing).
It reports the lookups per second, the process's CPU per lookup, the time from asking to the
answer (p50 / p90 / p99), the answers that missed the deadline, and the context switches per
lookup (every thread's, from /proc: each is an interpreter-lock or wake-up hand-off).

It measures the resolver the way the daemon uses it, without Postfix and libmilter, so that
a change to the resolver can be measured in seconds; `make bench` measures the whole.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from spamgate.core.settings import Nameserver, ResolverSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer, Promise, wait_all
from spamgate.dns.resolver import Resolver
from tests.harness.dns import Rbldnsd, Zone

ZONES = tuple(f"list{n}.dnsload.test" for n in range(8))
LISTED_SHARE = 0.05  # one client in twenty is on every list


def _busy(microseconds: float) -> None:
    """Pure Python work that holds the interpreter lock, like a callback's."""
    ends = time.perf_counter() + microseconds / 1e6
    total = 0
    while time.perf_counter() < ends:
        total += sum(range(50))


def _context_switches() -> int:
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _address(rng: random.Random) -> ipaddress.IPv4Address:
    # 100.64/10 is never on a real list; every session gets an address of its own.
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + rng.randrange(1 << 22))


def run(  # noqa: PLR0917 -- the command line's options
    sessions: int, rate: float | None, seconds: float, lists: int, work_us: float, deadline: float
) -> str:
    rng = random.Random(7)
    listed = [_address(rng) for _ in range(200)]
    zone_data = "".join(f"{a}\n" for a in listed)
    zones = [Zone(z, "ip4set", f":127.0.0.2:listed\n{zone_data}") for z in ZONES[:lists]]
    with tempfile.TemporaryDirectory(prefix="spamgate-dnsload-") as work:
        workdir = Path(work)
        workdir.chmod(0o755)
        with Rbldnsd(workdir, zones) as server:
            settings = ResolverSettings(deadline=deadline)
            resolver = Resolver(settings, [Nameserver("127.0.0.1", server.port)])
            resolver.start()
            try:
                return _drive(resolver, listed, sessions, rate, seconds, lists, work_us, deadline)
            finally:
                resolver.stop()


def _drive(  # noqa: PLR0917
    resolver: Resolver,
    listed: list[ipaddress.IPv4Address],
    sessions: int,
    rate: float | None,
    seconds: float,
    lists: int,
    work_us: float,
    deadline: float,
) -> str:
    latencies: list[float] = []
    late = [0]
    counted = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    started = time.monotonic()

    def session(number: int) -> None:
        rng = random.Random(number)
        next_start = started + (number / rate if rate else 0.0)
        while time.monotonic() < stop_at:
            if rate:
                # This thread's share of the rate: one session every `sessions / rate` s.
                time.sleep(max(0.0, next_start - time.monotonic()))
                next_start += sessions / rate
            address = rng.choice(listed) if rng.random() < LISTED_SHARE else _address(rng)
            reversed_ = address.reverse_pointer.rsplit(".", 2)[0]
            asked = time.monotonic()
            answered: list[float] = []
            pending = []
            for zone in ZONES[:lists]:
                future = resolver.lookup(f"{reversed_}.{zone}")

                def stamp(_: Promise[DnsAnswer], into: list[float] = answered) -> None:
                    into.append(time.monotonic())

                future.add_done_callback(stamp)
                pending.append(future)
            _busy(work_us)
            wait_all(pending, asked + deadline - time.monotonic())
            done = [f for f in pending if f.done()]
            failed = sum(
                1 for f in done if f.result().kind not in (AnswerKind.RECORDS, AnswerKind.NXDOMAIN)
            )
            with lock:
                latencies.extend((t - asked) * 1000 for t in answered)
                late[0] += len(pending) - len(done) + failed
                counted[0] += len(pending)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    switches_before = _context_switches()
    threads = [threading.Thread(target=session, args=(n,), daemon=True) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + deadline + 30)
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    switches = _context_switches() - switches_before
    lookups = counted[0]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    ordered = sorted(latencies)

    def pct(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0

    offered = f"{rate:.0f} sessions/s" if rate else "as fast as it goes"
    return (
        f"sessions {sessions}  {offered}  lists {lists}  work {work_us:.0f} us  "
        f"deadline {deadline} s\n"
        f"lookups {lookups} in {elapsed:.1f} s = {lookups / elapsed:.0f}/s; "
        f"queries sent {resolver.stats.queries_sent}\n"
        f"process CPU {cpu * 1e6 / max(1, lookups):.0f} us per lookup "
        f"(includes the simulated callback work: {work_us / lists:.0f} us per lookup)\n"
        f"answer time ms: p50 {pct(0.5):.2f}  p90 {pct(0.9):.2f}  p99 {pct(0.99):.2f}  "
        f"max {pct(1.0):.2f}  mean {statistics.fmean(ordered) if ordered else 0:.2f}\n"
        f"missed the deadline or failed: {late[0]} of {lookups}\n"
        f"context switches per lookup: {switches / max(1, lookups):.2f}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=None, help="new sessions a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lists", type=int, default=4)
    parser.add_argument("--work-us", type=float, default=400.0)
    parser.add_argument("--deadline", type=float, default=2.0)
    args = parser.parse_args()
    print(f"pid {os.getpid()}")
    report = run(args.sessions, args.rate, args.seconds, args.lists, args.work_us, args.deadline)
    print(report, end="")


if __name__ == "__main__":
    main()
