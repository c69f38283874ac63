"""What a DNS lookup came back with, before any list gives it a meaning, and the promise of
an answer that has not come yet."""

from __future__ import annotations

import enum
from _thread import allocate_lock
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class AnswerKind(enum.Enum):
    RECORDS = "records"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    OTHER_RCODE = "rcode"
    TIMEOUT = "timeout"
    NETWORK = "network"
    MALFORMED = "malformed"

    @property
    def is_definitive(self) -> bool:
        """True when the server gave an answer worth caching (a name exists or does not)."""
        return self in _DEFINITIVE


_DEFINITIVE = frozenset({AnswerKind.RECORDS, AnswerKind.NXDOMAIN, AnswerKind.NODATA})


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The records for one query, as text sorted and without duplicates, or why there are none.

    The text depends on the type asked (see resolver.interpret): A `192.0.2.1`, AAAA
    `2001:db8::1`, PTR `mail.example.com`, MX `10 mx.example.com` (null MX `0 .`), TXT the
    joined strings decoded as UTF-8.
    """

    kind: AnswerKind
    records: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""


class Promise(Protocol[T_co]):
    """A value that may come later: what `Pending` gives, and what a concurrent Future gives
    too (the tests' scripted resolvers hand out those)."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co:
        """The value, waiting at most `timeout` seconds (TimeoutError after that)."""

    def add_done_callback(self, fn: Callable[[Promise[T_co]], object]) -> None: ...


class Lookups(Protocol):
    """A resolver as its users see it: thread-safe lookups whose promises always end in an
    answer (failures are answers of a failed kind), never in an exception."""

    def lookup(self, qname: str, rdtype: str = "A") -> Promise[DnsAnswer]: ...


class Pending(Generic[T]):
    """A value set once, from any thread; callbacks run when it is set (at once if it is).

    What concurrent.futures.Future does for this use, at a fraction of its cost, which is
    paid for every DNS lookup of every connection: a Future makes a Condition, an RLock and
    a deque, keeps its callbacks after it is done (so a callback that refers back to whoever
    holds the Future makes a reference cycle, which only the garbage collector frees), and
    wakes its waiters through the Condition. A Pending holds one C lock, drops its callbacks
    once it has run them, and makes a lock to wait on only for a caller that does wait.
    """

    __slots__ = ("_callbacks", "_done", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._done = False
        self._value: T | None = None
        self._callbacks: list[Callable[[Pending[T]], object]] | None = None

    @classmethod
    def of(cls, value: T) -> Pending[T]:
        """One that is done already."""
        pending: Pending[T] = cls()
        pending._value, pending._done = value, True
        return pending

    def done(self) -> bool:
        return self._done

    def set_result(self, value: T) -> None:
        """Set the value and run the callbacks; a second value is ignored (the first wins)."""
        with self._lock:
            if self._done:
                return
            self._value, self._done = value, True
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    def add_done_callback(self, fn: Callable[[Pending[T]], object]) -> None:
        with self._lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)

    def result(self, timeout: float | None = None) -> T:
        if not self._done:
            wake = allocate_lock()
            wake.acquire()
            self.add_done_callback(lambda _: wake.release())
            if not wake.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError
        return self._value  # type: ignore[return-value]  # done: set by set_result


def when_all_done(promises: Iterable[Promise[object]], callback: Callable[[], object]) -> None:
    """Call `callback` once, when the last of `promises` is done (at once if all are): a
    waiter is woken once, not once per answer, which with hundreds of sessions waiting would
    take the interpreter lock from whoever delivers the answers often enough to delay them."""
    open_ = [p for p in promises if not p.done()]
    if not open_:
        callback()
        return
    left = [len(open_)]
    count_lock = allocate_lock()

    def one_done(_: object) -> None:
        with count_lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            callback()

    for promise in open_:
        promise.add_done_callback(one_done)


def wait_all(promises: Iterable[Promise[object]], timeout: float) -> None:
    """Until every one of `promises` is done, or `timeout` seconds have passed."""
    wake = allocate_lock()
    wake.acquire()
    when_all_done(promises, wake.release)
    wake.acquire(timeout=max(0.0, timeout))
