"""State that lives longer than a session stays bounded, however many clients come.

A busy MX sees millions of distinct addresses, names and header values. Everything spamgate
remembers across sessions must stop growing at a bound: the DNS cache
(tests/adapter/test_resolver_cache.py checks its eviction order), the memos of pure name
functions, the rule book's header verdicts and dynamic-name verdicts, and the circuit
breaker's window. `make soak`'s long run watches
the same thing from outside (RSS, and the cache size on /metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from spamgate.core import domains, schema
from spamgate.core.policy import Policy
from spamgate.core.rules import RuleBook
from spamgate.core.settings import HealthSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import classify
from spamgate.dns.listhealth import ListMonitor
from spamgate.dns.resolver import AnswerCache, Question
from tests.fakes import FakeClock

FLOOD = 10_000  # more distinct inputs than any bound below


def _currsize(memo: Callable[..., Any]) -> tuple[int, int | None]:
    info = memo.cache_info()  # type: ignore[attr-defined]  # a functools.lru_cache wrapper
    return info.currsize, info.maxsize


def test_the_dns_cache_holds_at_most_its_entries() -> None:
    cache = AnswerCache(min_ttl=30, max_ttl=3600, max_entries=100, clock=FakeClock())
    for n in range(FLOOD):
        cache.put(Question(f"{n}.zen.test"), DnsAnswer(AnswerKind.NXDOMAIN, ttl=3600))
    assert len(cache) == 100


@pytest.mark.parametrize(
    ("function", "argument"),
    [
        pytest.param(domains.normalize_domain, "host{}.example", id="normalize_domain"),
        pytest.param(domains.is_ip_literal, "[192.0.2.{}]", id="is_ip_literal"),
        pytest.param(domains.is_fqdn, "mx{}.example", id="is_fqdn"),
        pytest.param(domains.organizational_domain, "a.b{}.example.co.uk", id="org_domain"),
    ],
)
def test_name_memos_stop_at_their_bound(function: Callable[[str], Any], argument: str) -> None:
    for n in range(FLOOD):
        function(argument.format(n))
    size, bound = _currsize(function)
    assert bound is not None and size <= bound < FLOOD


RULES = """
rules:
  - {name: SUBJ, score: 1, description: d, header: {name: Subject, matches: 'x{3}'}}
  - {name: DYN, score: 1, description: d, rdns: dynamic}
"""


def test_header_verdicts_and_dynamic_names_are_remembered_within_bounds() -> None:
    book = RuleBook(schema.load(Policy, RULES, "t.yaml"))
    for n in range(FLOOD):
        book.match_header("subject", f"campaign {n}")
        book._is_dynamic(f"dyn-{n}.pool.isp.example")  # the memo rdns rules go through
    for memo in (book._remembered_matches, book._is_dynamic):
        size, bound = _currsize(memo)
        assert bound is not None and size <= bound < FLOOD


def test_the_breaker_window_forgets_answers_older_than_the_window() -> None:
    # Bounded by time, not count: at most the answers of the last `window` seconds per list.
    settings = HealthSettings(
        probe_interval=600, retry_min=60, retry_max=300, max_hit_ratio=0.99, window=60,
        min_checks=10**9,
    )  # fmt: skip
    policy = schema.load(Policy, "ip_lists: [{name: ZEN, zone: zen.test, score: 1}]", "t.yaml")
    zen = policy.ip_lists[0]
    clock = FakeClock()
    watch = ListMonitor((zen,), settings, clock)
    clean = classify(zen, DnsAnswer(AnswerKind.NXDOMAIN), 1.0)
    for _ in range(10):
        watch.record([clean] * 1000)
        clock.now += 30
    window = watch._records["ZEN"].recent
    assert len(window) <= 3 * 1000  # the last 60 s: three batches, not ten
