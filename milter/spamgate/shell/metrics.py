"""Prometheus metrics: what spamgate decides, how its DNS lists answer, how it is doing.

Counting is always on (it costs a few microseconds a message); the HTTP endpoint is off unless
`metrics.listen` names one. Values that already live elsewhere (resolver counters, list
health, sessions in progress, policy generation) are read at scrape time by a collector
instead of being copied on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spamgate.core.evidence import ListOutcome
from spamgate.dns.listhealth import ListMonitor

log = logging.getLogger("spamgate")

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.decisions = Counter(
            "spamgate_decisions",
            "Transactions decided, by stage, the action the score chose, and what was enforced.",
            ["stage", "action", "enforced"],
            registry=registry,
        )
        self.hits = Counter(
            "spamgate_hits",
            "Hits that scored in a decision, by name.",
            ["name"],
            registry=registry,
        )
        self.list_answers = Counter(
            "spamgate_list_answers",
            "DNS list answers by list and meaning (listed, clean, unusable).",
            ["list", "status"],
            registry=registry,
        )
        self.list_unusable = Counter(
            "spamgate_list_unusable",
            "Unusable DNS list answers by list and kind (timeout, error-code, suspended, ...).",
            ["list", "kind"],
            registry=registry,
        )
        self.unusable_tempfails = Counter(
            "spamgate_unusable_tempfail",
            "Decisions made a tempfail by a list with `on_unusable: tempfail` that could not be "
            "asked, by list and what was enforced (tempfail; accept or tag when observe mode or "
            "an exempt recipient waived it).",
            ["list", "enforced"],
            registry=registry,
        )
        self.list_latency = Histogram(
            "spamgate_list_latency_seconds",
            "Time from a list lookup's start to its answer.",
            ["list"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.decision_latency = Histogram(
            "spamgate_decision_seconds",
            "Time a verdict took, waiting for DNS included, by stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.greylist = Counter(
            "spamgate_greylist",
            "Greylist checks by outcome: new and early were told to retry; passed, known and "
            "allowed were accepted; failed-open were accepted because the state store failed.",
            ["outcome"],
            registry=registry,
        )
        self.spf = Counter(
            "spamgate_spf",
            "SPF checks by identity (mail_from, helo) and result (pass, fail, softfail, neutral, "
            "none, temperror, permerror), counted once per check when its result is logged.",
            ["identity", "result"],
            registry=registry,
        )
        self.dkim = Counter(
            "spamgate_dkim",
            "DKIM results of checked messages (pass, fail, none, neutral, permerror, temperror, "
            "policy, body_not_read): each result some signature of a message had, once per "
            "message.",
            ["result"],
            registry=registry,
        )
        self.dmarc = Counter(
            "spamgate_dmarc",
            "DMARC results of checked messages (pass, fail_reject, fail_quarantine, fail_none, "
            "none, temperror, permerror).",
            ["result"],
            registry=registry,
        )
        self.body_negotiated = Counter(
            "spamgate_body_negotiated",
            "Milter sessions by whether the message body was asked of the MTA (yes: the policy "
            "checks DKIM; no: the body was negotiated away).",
            ["asked"],
            registry=registry,
        )
        self.errors = Counter(
            "spamgate_errors",
            "Internal errors, by callback (each followed on_error).",
            ["callback"],
            registry=registry,
        )
        self.pymilter_failures = Counter(
            "spamgate_pymilter_failures",
            "Callbacks pymilter's C layer failed before spamgate's code ran (a HELO that is not "
            "UTF-8, say), by the callback it was making.",
            ["callback"],
            registry=registry,
        )

    def _labelled(self, metric: Any, *values: str) -> Any:
        """metric.labels(*values), remembered: labels() costs more than the update itself, and
        every label value here comes from the policy or a fixed set, so the memo is bounded."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def record_decision(
        self,
        stage: str,
        action: str,
        enforced: str,
        hits: Iterable[str],
        tempfail_by: Iterable[str] = (),
    ) -> None:
        self._labelled(self.decisions, stage, action, enforced).inc()
        for name in hits:
            self._labelled(self.hits, name).inc()
        for name in tempfail_by:
            self._labelled(self.unusable_tempfails, name, enforced).inc()

    def record_spf(self, identity: str, result: str) -> None:
        self._labelled(self.spf, identity, result).inc()

    def record_dkim(self, results: Iterable[str]) -> None:
        for result in results:
            self._labelled(self.dkim, result).inc()

    def record_dmarc(self, result: str) -> None:
        self._labelled(self.dmarc, result).inc()

    def record_body_negotiated(self, asked: bool) -> None:
        self._labelled(self.body_negotiated, "yes" if asked else "no").inc()

    def record_greylist(self, outcome: str) -> None:
        self._labelled(self.greylist, outcome).inc()

    def record_decision_latency(self, stage: str, seconds: float) -> None:
        self._labelled(self.decision_latency, stage).observe(seconds)

    def record_lists(self, outcomes: Iterable[ListOutcome]) -> None:
        for outcome in outcomes:
            name = outcome.dns_list.name
            self._labelled(self.list_answers, name, outcome.status.value).inc()
            if outcome.failure:
                self._labelled(self.list_unusable, name, outcome.failure).inc()
            elif outcome.latency_ms is not None and not outcome.cached:
                self._labelled(self.list_latency, name).observe(outcome.latency_ms / 1000.0)

    def watch(self, state: Callable[[], DaemonState]) -> None:
        """Expose the daemon's state (read at scrape time) alongside the counters."""
        self.registry.register(_StateCollector(state))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)


class DaemonState:
    """What the collector reads at scrape time; the daemon hands out a fresh one each time."""

    def __init__(
        self,
        monitor: ListMonitor,
        resolver_stats: Any,
        cache_entries: int,
        sessions: int,
        generation: int,
    ) -> None:
        self.monitor = monitor
        self.resolver_stats = resolver_stats
        self.cache_entries = cache_entries
        self.sessions = sessions
        self.generation = generation


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], DaemonState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        state = self._state()
        stats = state.resolver_stats
        for name, value, text in (
            ("spamgate_dns_lookups", stats.lookups, "DNS lookups asked of the resolver."),
            ("spamgate_dns_cache_hits", stats.cache_hits, "Lookups answered from the cache."),
            ("spamgate_dns_merged", stats.merged, "Lookups that joined one already in flight."),
            ("spamgate_dns_queries", stats.queries_sent, "Queries sent to nameservers."),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "spamgate_dns_cache_entries", "Answers in the DNS cache.", value=state.cache_entries
        )
        yield GaugeMetricFamily(
            "spamgate_sessions_in_progress", "SMTP sessions being filtered.", value=state.sessions
        )
        yield GaugeMetricFamily(
            "spamgate_policy_generation",
            "Policy generation: 1 at start, one more each successful reload.",
            value=state.generation,
        )
        health = GaugeMetricFamily(
            "spamgate_list_state",
            "1 for the state each DNS list is in (healthy, suspended, suspended:ipv4 or "
            "suspended:ipv6 for one family of an IP list, unprobed, unchecked).",
            labels=["list", "state"],
        )
        for report in state.monitor.reports():
            health.add_metric([report.name, report.state], 1)
        yield health
