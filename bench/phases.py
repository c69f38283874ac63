"""Python CPU per message, callback by callback, without a socket: `python -m bench.phases`.

The daemon's real runtime (resolver against rbldnsd, health monitor, metrics, decision log)
is built from the benchmark policy and driven through SpamgateMilter, the way libmilter
calls it, with a stand-in for pymilter's context. The cache is warmed first, so this is the
warm-cache cost of spamgate's own code: what the benchmark's milter CPU adds on top of the
pymilter floor, before GIL hand-overs between fifty threads multiply it. Each figure is the
minimum over several repetitions (the least disturbed by other work on the machine).

    python -m bench.phases [--messages N] [--profile CALLBACK] [--no-dkim]

The benchmark policy checks DKIM and DMARC (the shipped rules): the body is then fed to the
milter as Postfix would (`body`, part of `eom` here); `--no-dkim` drops those rules, and the
body is negotiated away as before.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import logging
import pstats
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import Milter

from bench.workload import (
    CLEAN_ONLY_MIX,
    Message,
    Sizes,
    bench_policy,
    build_population,
    build_zones,
    messages,
)
from spamgate.config.files import load_policy
from spamgate.shell.adapter import SpamgateMilter
from spamgate.shell.daemon import Daemon, configure_logging
from tests.harness.dns import Rbldnsd

CALLBACKS = (
    "negotiate",
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "headers",
    "body",
    "eom",
    "close",
)
_ALL_PROTOCOL = 0x1FFFFF


class _Context:
    """What SpamgateMilter asks of pymilter's C context object."""

    def __init__(self, macros: dict[str, str]) -> None:
        self.macros = macros
        self.private: object = None

    def getsymval(self, name: str) -> str | None:
        return self.macros.get(name)

    def setsymlist(self, stage: int, macros: str) -> None:
        pass

    def setreply(self, *reply: str) -> None:
        pass

    def addheader(self, *header: object) -> None:
        pass

    def chgheader(self, *header: object) -> None:
        pass

    def quarantine(self, reason: str) -> None:
        pass

    def setpriv(self, private: object) -> None:
        self.private = private

    def getpriv(self) -> object:
        return self.private


def _headers(data: bytes) -> list[tuple[str, bytes]]:
    """Header fields as Postfix passes them: folded lines joined by LF; with P_HDR_LEADSPC
    (negotiated with the body) the space after the colon is kept."""
    head = data.partition(b"\r\n\r\n")[0]
    fields = []
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        fields.append((name.decode(), value.replace(b"\r\n", b"\n")))
    return fields


def _one_message(
    daemon: Daemon, message: Message, timed: Callable[..., Any], headers: list[tuple[str, bytes]]
) -> None:
    client = message.client
    macros = {
        "j": "mx.spamgate.test",
        "{daemon_addr}": "127.0.0.1",
        "{client_resolve}": "OK" if client.name else "FAIL",
        "{client_ptr}": client.reverse_name or "unknown",
        "i": "4XbENCh",
    }
    milter = SpamgateMilter(daemon.runtime)
    milter._ctx = _Context(macros)
    timed("negotiate", milter.negotiate, [Milter.CURR_ACTS, _ALL_PROTOCOL, 0, 0])
    family = socket.AF_INET6 if ":" in client.address else socket.AF_INET
    timed("connect", milter.connect, client.name or "unknown", family, (client.address, 4321))
    timed("helo", milter.hello, client.helo)
    timed("mail", milter.envfrom_bytes, f"<{message.mail_from}>".encode())
    if timed("rcpt", milter.envrcpt_bytes, f"<{message.rcpt}>".encode()) == Milter.CONTINUE:
        timed("data", milter.data)
        for name, value in headers:
            shown = value if milter.leading_space else value.lstrip(b" \t")
            timed("headers", milter.header_bytes, name, shown)
        timed("headers", milter.eoh)
        if milter.body_asked:
            body = message.data.partition(b"\r\n\r\n")[2]
            timed("body", milter.body, body)
        timed("eom", milter.eom)
    timed("close", milter.close)


def measure(count: int, profile: str | None = None, *, dkim: bool = True) -> dict[str, float]:
    """Microseconds of CPU per message by callback (minimum over repetitions)."""
    population = build_population(Sizes(clean=400, allowlisted=40, ipv6=40, domains=120))
    workdir = Path(tempfile.mkdtemp(prefix="spamgate-phases-"))
    workdir.chmod(0o755)
    try:
        with Rbldnsd(workdir, build_zones(population)) as dns:
            config = workdir / "policy.yaml"
            text = bench_policy(
                listen="inet:1@127.0.0.1",
                dns_port=dns.port,
                metrics_port=1,
                status_file=workdir / "status.json",
                dkim=dkim,
            )
            config.write_text(text.replace("listen: 127.0.0.1:1", 'listen: ""'))
            policy = load_policy(str(config))
            daemon = Daemon(policy, str(config))
            configure_logging(policy.log)
            with open(workdir / "decisions.log", "w") as log_file:
                logging.getLogger("spamgate").handlers[0].stream = log_file  # type: ignore[attr-defined]
                daemon.resolver.start()
                try:
                    return _measure(daemon, population, count, profile)
                finally:
                    daemon.resolver.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Timer:
    """Adds up the CPU time of each callback; runs the profiler around the one asked for."""

    def __init__(self, profiler: cProfile.Profile, profiled: str | None) -> None:
        self.spent: dict[str, float] = collections.defaultdict(float)
        self._profiler = profiler
        self._profiled = profiled

    def __call__(self, label: str, function: Callable[..., Any], *args: Any) -> Any:
        profiling = label == self._profiled
        if profiling:
            self._profiler.enable()
        started = time.process_time()
        result = function(*args)
        self.spent[label] += time.process_time() - started
        if profiling:
            self._profiler.disable()
        return result


def _measure(daemon: Daemon, population: Any, count: int, profile: str | None) -> dict[str, float]:
    batch = [(m, _headers(m.data)) for m in messages(population, CLEAN_ONLY_MIX, count, "p", 3)]

    def untimed(label: str, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)

    for message, headers in batch:  # warm the DNS cache and every lazy structure
        _one_message(daemon, message, untimed, headers)
    time.sleep(0.2)
    best: dict[str, float] = {}
    profiler = cProfile.Profile()
    for _ in range(5):
        timer = _Timer(profiler, profile)
        for message, headers in batch:
            _one_message(daemon, message, timer, headers)
        for label in CALLBACKS:
            per_message = timer.spent[label] / len(batch) * 1e6
            best[label] = min(best.get(label, per_message), per_message)
    if profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=800)
    parser.add_argument("--profile", choices=CALLBACKS, help="cProfile this callback")
    parser.add_argument("--no-dkim", action="store_true", help="the policy without DKIM rules")
    args = parser.parse_args(argv)
    best = measure(args.messages, args.profile, dkim=not args.no_dkim)
    for label in CALLBACKS:
        print(f"{label:10} {best[label]:7.1f} us")
    print(f"{'total':10} {sum(best.values()):7.1f} us per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
