"""The resolver's answer cache: TTLs clamped, the oldest entry evicted, a cache that keeps
nothing."""

from __future__ import annotations

import pytest

from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.resolver import AnswerCache, Question
from tests.fakes import FakeClock

# --- AnswerCache -------------------------------------------------------------------------------


def listed(ttl: int) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=ttl)


@pytest.mark.parametrize(
    ("ttl", "kept_for"),
    [
        pytest.param(300, 300, id="own-ttl"),
        pytest.param(5, 30, id="raised-to-min"),
        pytest.param(0, 30, id="zero-raised-to-min"),
        pytest.param(86400, 3600, id="cut-to-max"),
    ],
)
def test_cache_keeps_an_answer_for_its_clamped_ttl(ttl: int, kept_for: int) -> None:
    clock = FakeClock()
    cache = AnswerCache(min_ttl=30, max_ttl=3600, max_entries=10, clock=clock)
    cache.put(Question("q"), listed(ttl))
    clock.now += kept_for - 0.001
    assert cache.get(Question("q")) == listed(ttl)
    clock.now += 0.001
    assert cache.get(Question("q")) is None
    assert len(cache) == 0  # an expired entry is dropped when it is found


def test_cache_evicts_the_oldest_entry() -> None:
    cache = AnswerCache(min_ttl=0, max_ttl=3600, max_entries=2, clock=FakeClock())
    cache.put(Question("a"), listed(60))
    cache.put(Question("b"), listed(60))
    cache.put(Question("c"), listed(60))
    assert (cache.get(Question("a")), cache.get(Question("b")), cache.get(Question("c"))) == (
        None,
        listed(60),
        listed(60),
    )
    assert len(cache) == 2


def test_cache_put_again_makes_an_entry_new() -> None:
    cache = AnswerCache(min_ttl=0, max_ttl=3600, max_entries=2, clock=FakeClock())
    cache.put(Question("a"), listed(60))
    cache.put(Question("b"), listed(60))
    cache.put(Question("a"), listed(120))
    cache.put(Question("c"), listed(60))
    assert (cache.get(Question("a")), cache.get(Question("b")), cache.get(Question("c"))) == (
        listed(120),
        None,
        listed(60),
    )


@pytest.mark.parametrize(
    ("min_ttl", "max_ttl", "entries", "ttl"),
    [
        pytest.param(30, 3600, 0, 300, id="size-0"),
        pytest.param(0, 0, 10, 300, id="max-ttl-0"),
        pytest.param(0, 3600, 10, 0, id="ttl-0-without-min"),
    ],
)
def test_cache_that_keeps_nothing(min_ttl: int, max_ttl: int, entries: int, ttl: int) -> None:
    cache = AnswerCache(min_ttl, max_ttl, entries, FakeClock())
    cache.put(Question("q"), listed(ttl))
    assert cache.get(Question("q")) is None
    assert len(cache) == 0
