"""What one connection leaves behind: nothing that needs the garbage collector.

Objects in a reference cycle are freed only when the cyclic garbage collector runs, and at
200 sessions its runs cost 0.2-0.3 ms of CPU per message and stopped every thread for up to
100 ms at a time (issue 13). So a connection's objects must be freed by reference counting
alone when it ends, whatever its lookups did: answered at once from the cache, answered
later from the resolver's thread (the callbacks that chain reverse DNS, name resolution and
domain lists), or never answered.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import itertools
from collections.abc import Iterator

import pytest

from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending, wait_all
from spamgate.shell.daemon import GC_YOUNG_THRESHOLD, settle_memory
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import Session
from tests.fakes import FakeClock, ScriptedLookups

POLICY = """
resolver: {deadline: 0.2}
reverse_dns: {use_mta_macros: false}
ip_lists:
  - {name: ZEN, zone: zen.test, score: 10}
  - {name: WL, zone: wl.test, score: -5}
domain_lists:
  - {name: DBL, zone: dbl.test, score: 5}
rules:
  - {name: HELO_UNRESOLVABLE, score: 1, description: x, helo: unresolvable}
  - {name: SENDER_UNRESOLVABLE, score: 1, description: x, sender: unresolvable}
  - {name: RDNS_MISSING, score: 1, description: x, rdns: missing}
  - {name: SUBJECT, score: 1, description: x, header: {name: Subject, matches: spam}}
"""


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """The cyclic collector off, and everything it would free kept in gc.garbage."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def runtime_for(resolver: ScriptedLookups, clock: FakeClock) -> Runtime:
    """What the daemon shares between sessions (it lives as long as the policy)."""
    ids = (f"id{n}" for n in itertools.count())
    return Runtime(
        Engine(schema.load(Policy, POLICY, "test.yaml")),
        resolver,
        clock=clock,
        new_id=lambda: next(ids),
        log=lambda line: None,
    )


def run_connection(runtime: Runtime, resolver: ScriptedLookups, number: int) -> None:
    clock = runtime.clock
    assert isinstance(clock, FakeClock)
    session = Session(runtime)
    client = ipaddress.ip_address(f"192.0.2.{number}")
    session.connect("unknown", client, {})
    session.helo(f"mx{number}.example.org")
    # Answered later, from another thread, as the resolver answers: the callbacks chain
    # the next lookups (PTR -> forward, PTR name -> DBL) while the session goes on.
    for question in list(resolver.pending):
        if question[0].startswith(f"{number}."):
            resolver.answer(*question, DnsAnswer(AnswerKind.NXDOMAIN, ttl=60))
    session.mail(f"<a@sender{number}.example.net>", False)
    session.rcpt("<user@example.com>")
    for name, value in (("From", f"b@from{number}.example.net"), ("Subject", "hello")):
        session.header(name, value)
    clock.now += 1  # past the deadline: questions never answered count as unusable
    session.end_of_message("QID")
    session.close()


def test_a_connection_leaves_no_cyclic_garbage() -> None:
    resolver = ScriptedLookups({})
    runtime = runtime_for(resolver, FakeClock())
    run_connection(runtime, resolver, 100)  # builds what is built once (caches, metrics)
    with collector_off():
        for number in range(1, 21):
            run_connection(runtime, resolver, number)
        garbage = _answer_the_rest_and_collect(resolver)
    assert garbage == [], garbage


def _answer_the_rest_and_collect(resolver: ScriptedLookups) -> list[str]:
    # Questions still in flight when their sessions ended are answered now, as a slow server
    # would: the callbacks find their sessions gone.
    for question in list(resolver.pending):
        resolver.answer(*question, DnsAnswer(AnswerKind.NXDOMAIN, ttl=60))
    assert len(resolver.calls) > 100, "the sessions asked little: the test proves little"
    gc.collect()
    return sorted({type(o).__qualname__ for o in gc.garbage})


class Holder:
    """Refers to a Pending whose callback refers back to it: a cycle while it waits."""

    def __init__(self, pending: Pending[int], seen: list[int]) -> None:
        self.pending = pending
        pending.add_done_callback(lambda p: seen.append(p.result() + 0 * id(self)))


def test_pending_runs_its_callbacks_once_and_lets_go_of_them() -> None:
    seen: list[int] = []
    with collector_off():
        pending: Pending[int] = Pending()
        holder = Holder(pending, seen)
        pending.set_result(7)
        pending.set_result(8)  # the first value wins
        pending.add_done_callback(lambda p: seen.append(p.result()))  # done: runs at once
        del holder, pending
        assert gc.collect() == 0
    assert seen == [7, 7]


def test_wait_all_wakes_when_the_last_is_done() -> None:
    first: Pending[int] = Pending()
    second = Pending.of(2)
    first.add_done_callback(lambda p: None)
    wait_all([first, second], 0.01)
    assert not first.done()
    first.set_result(1)
    wait_all([first, second], 5)
    assert (first.result(timeout=0), second.result(timeout=0)) == (1, 2)
    with pytest.raises(TimeoutError):
        Pending[int]().result(timeout=0.01)


def test_settle_memory_freezes_what_start_made() -> None:
    before = gc.get_threshold()
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
