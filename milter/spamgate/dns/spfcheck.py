"""SPF checks through spamgate's resolver: the pure evaluation (core/spf.py) driven by DNS
answers, under a deadline.

`PendingSpf` chains the evaluation's questions with the answers' callbacks, as rdns's
PendingReverse does, so no thread waits while the lookups run: a session starts the check when
it learns the sender (MAIL FROM) and collects the verdict when it decides (RCPT TO). Each batch
of questions the evaluation asks at once (an MX's addresses, a PTR's names) is sent together.
The verdict waits at most `deadline` seconds counted from the check's start; a check not done
by then is temperror (RFC 7208 2.6.6: a transient error while checking), never a hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from spamgate.core.addresses import IPAddress
from spamgate.core.spf import (
    DEFAULT_EXPLANATION,
    DnsQuestion,
    DnsReply,
    ReplyKind,
    SmtpFacts,
    SpfIdentity,
    SpfResult,
    SpfVerdict,
    check_host,
    mail_from_identity,
    smtp_facts,
)
from spamgate.dns.answers import AnswerKind, DnsAnswer, Lookups, Pending, Promise, when_all_done

# Batches of questions one check may ask: the RFC's limits allow about 130 (10 terms of up to
# 11 batches each, a %{p} and the exp= lookup); this only guards the loop.
MAX_BATCHES = 256

_REPLY_KINDS = {
    AnswerKind.RECORDS: ReplyKind.RECORDS,
    AnswerKind.NXDOMAIN: ReplyKind.NXDOMAIN,
    AnswerKind.NODATA: ReplyKind.NODATA,
}


def reply_of(answer: DnsAnswer) -> DnsReply:
    """What the evaluation needs of a resolver's answer: records, no such name, no records,
    or an error (SERVFAIL, timeout, anything unusable: RFC 7208 2.6.6 makes it temperror)."""
    kind = _REPLY_KINDS.get(answer.kind, ReplyKind.ERROR)
    if kind is ReplyKind.RECORDS and not answer.records:
        kind = ReplyKind.NODATA
    detail = (answer.detail or answer.kind.value) if kind is ReplyKind.ERROR else ""
    return DnsReply(kind, answer.records, detail)


def _answer_of(promise: Promise[DnsAnswer]) -> DnsAnswer:
    """A finished lookup's answer; a resolver breaking its promise never to raise is a
    network failure, not an exception in a callback."""
    try:
        return promise.result(timeout=0)
    except Exception as error:
        return DnsAnswer(AnswerKind.NETWORK, detail=type(error).__name__)


class PendingSpf:
    """One SPF check in progress: started at once, collected with a deadline.

    Only one batch of questions is open at a time, so the evaluation is advanced by one
    thread at a time: the caller's (for answers from the cache) or the resolver's.
    """

    def __init__(
        self,
        resolver: Lookups,
        facts: SmtpFacts,
        identity: SpfIdentity,
        *,
        clock: Callable[[], float] = time.monotonic,
        default_explanation: str = DEFAULT_EXPLANATION,
    ) -> None:
        self._resolver = resolver
        self._evaluation = check_host(facts, identity, default_explanation=default_explanation)
        self._domain = identity.domain
        self._clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._verdict: SpfVerdict | None = None
        self._batches = 0
        self._advance(None)

    def _advance(self, replies: tuple[DnsReply, ...] | None) -> None:
        """Send `replies` to the evaluation and start its next questions; loop while the
        answers are at hand already (cached), so that no recursion grows with them."""
        for _ in range(MAX_BATCHES):
            if self._finished.is_set():
                return  # collected at the deadline already: stop asking
            try:
                if replies is None:
                    batch = next(self._evaluation)
                else:
                    batch = self._evaluation.send(replies)
            except StopIteration as done:
                self._finish(done.value)
                return
            except Exception as error:  # a bug must not leave the session waiting
                self._finish(self._temperror(f"evaluation failed: {type(error).__name__}"))
                return
            self._batches += 1
            if self._batches > MAX_BATCHES:
                break
            promises = [self._start(question) for question in batch]
            if not all(promise.done() for promise in promises):
                when_all_done(promises, self._continuation(promises))
                return
            replies = _replies(promises)
        self._finish(self._temperror(f"more than {MAX_BATCHES} batches of questions"))

    def _continuation(self, promises: Sequence[Promise[DnsAnswer]]) -> Callable[[], None]:
        """What runs when the last of `promises` is done: the evaluation's next step."""
        return lambda: self._advance(_replies(promises))

    def _start(self, question: DnsQuestion) -> Promise[DnsAnswer]:
        try:
            return self._resolver.lookup(question.qname, question.rdtype)
        except Exception as error:  # the Lookups promise is broken: fail this lookup only
            return Pending.of(DnsAnswer(AnswerKind.NETWORK, detail=type(error).__name__))

    def _temperror(self, reason: str) -> SpfVerdict:
        return SpfVerdict(SpfResult.TEMPERROR, self._domain, reason=reason)

    def _finish(self, verdict: SpfVerdict) -> None:
        with self._lock:
            if self._verdict is not None:
                return
            self._verdict = verdict
        self._finished.set()

    @property
    def verdict(self) -> SpfVerdict | None:
        """The verdict if there is one yet (finished, or collected at the deadline); None
        otherwise. Never waits, and never ends the check."""
        return self._verdict

    def collect(self, deadline: float) -> SpfVerdict:
        """The verdict, waiting until `deadline` seconds after the start at most; temperror
        if the check is not done by then. The same verdict every time."""
        remaining = self.started_at + deadline - self._clock()
        if remaining > 0:
            self._finished.wait(timeout=remaining)
        self._finish(self._temperror(f"no verdict within {deadline:g} s"))
        verdict = self._verdict
        assert verdict is not None  # _finish set it, or an earlier verdict stands
        return verdict


def _replies(promises: Sequence[Promise[DnsAnswer]]) -> tuple[DnsReply, ...]:
    return tuple(reply_of(_answer_of(promise)) for promise in promises)


def check_mail_from(
    resolver: Lookups,
    client: IPAddress | str,
    mail_from: str,
    helo: str,
    *,
    deadline: float,
    receiver: str = "unknown",
    clock: Callable[[], float] = time.monotonic,
    default_explanation: str = DEFAULT_EXPLANATION,
) -> SpfVerdict:
    """The MAIL FROM identity's verdict (the HELO name's for a null sender), waiting
    `deadline` seconds at most."""
    facts = smtp_facts(client, helo, receiver=receiver, timestamp=int(time.time()))
    identity = mail_from_identity(mail_from, helo)
    pending = PendingSpf(
        resolver, facts, identity, clock=clock, default_explanation=default_explanation
    )
    return pending.collect(deadline)


def check_helo(
    resolver: Lookups,
    client: IPAddress | str,
    helo: str,
    *,
    deadline: float,
    receiver: str = "unknown",
    clock: Callable[[], float] = time.monotonic,
    default_explanation: str = DEFAULT_EXPLANATION,
) -> SpfVerdict:
    """The HELO identity's verdict, waiting `deadline` seconds at most: what a null sender's
    MAIL FROM is checked as (RFC 7208 2.3, 2.4: postmaster@helo either way)."""
    return check_mail_from(
        resolver,
        client,
        "",
        helo,
        deadline=deadline,
        receiver=receiver,
        clock=clock,
        default_explanation=default_explanation,
    )
