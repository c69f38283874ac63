"""What the benchmark reads from the processes it runs: CPU time, peak and current RSS, and
spamgate's own counters (Prometheus text from its metrics port)."""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import group_members

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which may contain spaces: field 3 (state) is index 0.
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, all its threads included."""
    user, system = process_times(pid)
    return user + system


def process_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all its threads included."""
    fields = _stat_fields(pid)
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def machine_busy() -> float:
    """CPU seconds all processors have spent running processes since boot, or stolen by the
    hypervisor (/proc/stat). Interrupt time is left out: on loopback it is mostly the
    benchmark's own traffic, which no process is charged for."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, steal = (int(fields[i]) for i in (0, 1, 2, 7))
    return (user + nice + system + steal) / _TICKS


def group_cpu(leader: int) -> float:
    """CPU seconds of a process group: the leader, its children alive now, and the children it
    has reaped (Postfix's master reaps its daemons). Differences of two readings are exact
    as long as the leader lives, whichever children come and go in between."""
    fields = _stat_fields(leader)
    total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for pid in group_members(leader):
        if pid != leader:
            try:
                child = _stat_fields(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited between the listing and the read: counted in cutime
            total += int(child[11]) + int(child[12])
    return total / _TICKS


def group_times(leader: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process group that keeps its children (rspamd's main
    process and its workers): the leader, its children alive now and those it has reaped."""
    fields = _stat_fields(leader)
    user = int(fields[11]) + int(fields[13])
    system = int(fields[12]) + int(fields[14])
    for pid in group_members(leader):
        if pid != leader:
            try:
                child = _stat_fields(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            user += int(child[11])
            system += int(child[12])
    return user / _TICKS, system / _TICKS


def group_rss_kib(leader: int) -> tuple[int, int]:
    """(current, peak) RSS of every process of a group, added up."""
    current = peak = 0
    for pid in {leader, *group_members(leader)}:
        try:
            now, most = rss_kib(pid)
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
        current += now
        peak += most
    return current, peak


def reset_group_peak_rss(leader: int) -> None:
    for pid in {leader, *group_members(leader)}:
        try:
            reset_peak_rss(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS since start or the last reset_peak_rss) in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh at the current RSS (proc(5), /proc/PID/clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def scrape(port: int) -> dict[str, float]:
    """Every sample of spamgate's /metrics, keyed by name and labels as written."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {name + (labels or ""): float(value) for name, labels, value in _SAMPLE.findall(text)}


@dataclass(frozen=True)
class DnsCounters:
    lookups: float
    cache_hits: float
    merged: float
    queries: float

    @classmethod
    def read(cls, port: int) -> DnsCounters:
        samples = scrape(port)
        return cls(
            samples["spamgate_dns_lookups_total"],
            samples["spamgate_dns_cache_hits_total"],
            samples["spamgate_dns_merged_total"],
            samples["spamgate_dns_queries_total"],
        )

    def __sub__(self, earlier: DnsCounters) -> DnsCounters:
        return DnsCounters(
            self.lookups - earlier.lookups,
            self.cache_hits - earlier.cache_hits,
            self.merged - earlier.merged,
            self.queries - earlier.queries,
        )


_RCPT_BUCKET = re.compile(r'^spamgate_decision_seconds_bucket\{le="([^"]+)",stage="rcpt"\}$')


def rcpt_verdict_buckets(port: int) -> dict[float, float]:
    """spamgate's RCPT verdicts so far by how long each took, DNS waits included: the
    cumulative histogram, {upper bound in seconds: verdicts that took at most that}."""
    buckets = {}
    for sample, value in scrape(port).items():
        match = _RCPT_BUCKET.match(sample)
        if match:
            buckets[float(match.group(1))] = value
    return buckets


_GREYLIST = re.compile(r'^spamgate_greylist_total\{outcome="([^"]+)"\}$')


def greylist_outcomes(port: int) -> dict[str, float]:
    """spamgate's greylist checks so far, by outcome (new, early, passed, known, allowed,
    failed-open); an outcome not seen yet is not there."""
    outcomes = {}
    for sample, value in scrape(port).items():
        match = _GREYLIST.match(sample)
        if match:
            outcomes[match.group(1)] = value
    return outcomes
