"""`spamgate lists` and `spamgate check-config --probe`: the health of the DNS lists."""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from os import EX_UNAVAILABLE  # sysexits(3)
from pathlib import Path
from typing import Any, TextIO

from spamgate.core.policy import Policy
from spamgate.dns.listhealth import probe_lists
from spamgate.dns.resolver import Resolver
from spamgate.state.store import RedisStore

STALE_AFTER = 60.0  # the daemon writes every 10 s


def probe(policy: Policy, out: TextIO = sys.stdout) -> int:
    """Probe every list now; 0 if all are healthy, 69 naming the others."""
    resolver = Resolver(policy.resolver)
    resolver.start()
    lists = (*policy.ip_lists, *policy.domain_lists)
    try:
        lookup = partial(resolver.lookup, rdtype="A", fresh=True)
        problems = probe_lists(lists, lookup, policy.resolver.deadline * 2)
    finally:
        resolver.stop()
    unhealthy = []
    for dns_list in lists:
        if dns_list.name not in problems:
            print(f"{dns_list.name}: not probed (probe.enabled: false)", file=out)
            continue
        # "UNHEALTHY: ipv6: ..." when only one family of an IP list fails.
        problem = problems[dns_list.name].problem
        print(f"{dns_list.name}: {'UNHEALTHY: ' + problem if problem else 'ok'}", file=out)
        if problem:
            unhealthy.append(dns_list.name)
    if not _state_answers(policy, out):
        unhealthy.append("state")
    if unhealthy:
        print(f"unhealthy: {', '.join(unhealthy)}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _state_answers(policy: Policy, out: TextIO) -> bool:
    """Whether a shared (Redis) state answers a read within its timeout. A local SQLite file
    is left alone: opening it as root here would make a file the daemon's user cannot write."""
    settings = policy.state
    if not policy.uses_state:
        return True
    if not settings.uses_redis:
        return True
    store = RedisStore(settings.store, settings.timeout)
    try:
        store.get_many(["probe"])
    except Exception as error:
        print(f"state {settings.store_shown}: UNHEALTHY: {type(error).__name__}: {error}", file=out)
        return False
    finally:
        store.close()
    print(f"state {settings.store_shown}: ok", file=out)
    return True


def show(policy: Policy, out: TextIO = sys.stdout) -> int:
    """Print the running daemon's view of each list, from its status file."""
    path = policy.health.status_file
    if not path:
        print("spamgate: health.status_file is empty: the daemon writes no status", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        status: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        print(f"spamgate: no status in {path} (is spamgate running?): {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    age = time.time() - float(status.get("written_at", 0))
    print(
        f"spamgate pid {status.get('pid')}, policy {status.get('policy')} "
        f"(generation {status.get('generation')}), {status.get('sessions')} session(s), "
        f"status {age:.0f} s old",
        file=out,
    )
    columns = ("list", "state", "checks", "hit rate", "error rate", "p50 ms", "p95 ms", "note")
    rows = [columns]
    for entry in status.get("lists", []):
        kinds = ", ".join(f"{k} {v}" for k, v in entry["unusable_by_kind"].items())
        rows.append(
            (
                entry["name"],
                entry["state"],
                str(entry["checks"]),
                f"{entry['hit_rate']:.1%}",
                f"{entry['error_rate']:.1%}",
                _ms(entry["latency_ms_p50"]),
                _ms(entry["latency_ms_p95"]),
                entry["reason"] or kinds,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    if age > STALE_AFTER:
        print(f"spamgate: the status is {age:.0f} s old: is spamgate running?", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
