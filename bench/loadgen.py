"""An asyncio SMTP load generator: C concurrent sessions, each impersonating a client through
Postfix's XCLIENT, one message per session, as most MX traffic arrives.

A session: greeting, XCLIENT (ADDR, NAME, REVERSE_NAME, HELO), EHLO as the client,
MAIL, RCPT, DATA and the message (only if RCPT was accepted), QUIT. The time of a message is
from connect to the reply that decides it (250 after the final dot, or a refusal). Every
read has a timeout, so a stuck server fails the run instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.workload import Message

STEP_TIMEOUT = 30.0


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # 250 after the final dot: Postfix has queued it
    REFUSED = "refused"  # a 4xx or 5xx reply to MAIL, RCPT, DATA or the final dot
    FAILED = "failed"  # anything else: a connection error, a timeout, an unexpected reply


@dataclass(frozen=True)
class Sent:
    token: str
    outcome: Outcome
    seconds: float
    reply: str  # the deciding reply (or the error)
    # When each step's reply came, in seconds from the connect: ("connect", 0.01), ("greeting",
    # ...), ("XCLIENT", ...), ...: where a slow session spent its time.
    steps: tuple[tuple[str, float], ...] = ()

    def slowest_step(self) -> str:
        """The step that took longest, and how long: "RCPT 0.81 s"."""
        previous, longest = 0.0, ("", 0.0)
        for name, at in self.steps:
            if at - previous >= longest[1]:
                longest = (name, at - previous)
            previous = at
        return f"{longest[0]} {longest[1]:.2f} s"


@dataclass(frozen=True)
class LoadResult:
    sent: tuple[Sent, ...]
    seconds: float  # wall time from the first connect to the last QUIT

    def tokens(self, outcome: Outcome) -> set[str]:
        return {s.token for s in self.sent if s.outcome is outcome}

    def count(self, outcome: Outcome) -> int:
        return sum(1 for s in self.sent if s.outcome is outcome)


class _RefusedError(Exception):
    """The server answered a step with 4xx or 5xx."""


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply."""
    lines = []
    for _ in range(100):
        raw = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
        if not raw:
            raise ConnectionError("server closed the connection")
        line = raw.decode("ascii", "replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), "\n".join(lines)
    raise ConnectionError("reply longer than 100 lines")


class _Steps:
    """When each step of one session ended, from its start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ended: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.ended.append((name, time.perf_counter() - self.started))


async def _step(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    command: bytes,
    expect: int,
    *,
    steps: _Steps,
    name: str,
) -> str:
    writer.write(command)
    code, text = await _reply(reader)
    steps.mark(name)
    if code >= 400:
        raise _RefusedError(text)
    if code != expect:
        raise ConnectionError(f"unexpected reply to {command[:20]!r}: {text}")
    return text


def xclient_command(message: Message) -> bytes:
    client = message.client
    address = ipaddress.ip_address(client.address)
    addr = f"IPV6:{address.compressed}" if address.version == 6 else address.compressed
    # [UNAVAILABLE]: XCLIENT's "this client has no reverse name".
    attributes = {
        "ADDR": addr,
        "NAME": client.name or "[UNAVAILABLE]",
        "REVERSE_NAME": client.reverse_name or "[UNAVAILABLE]",
        "HELO": client.helo,
    }
    return ("XCLIENT " + " ".join(f"{k}={_xtext(v)}" for k, v in attributes.items())).encode()


def _xtext(value: str) -> str:
    """RFC 3461 xtext, which XCLIENT attribute values use."""
    return "".join(
        chr(b) if 33 <= b <= 126 and chr(b) not in "+=" else f"+{b:02X}" for b in value.encode()
    )


async def _session(
    host: str, port: int, message: Message, pause: Callable[[], Awaitable[None]] | None = None
) -> Sent:
    steps = _Steps()
    started = steps.started
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), STEP_TIMEOUT)
    except (OSError, TimeoutError) as error:
        return Sent(message.token, Outcome.FAILED, time.perf_counter() - started, repr(error))
    steps.mark("connect")
    try:
        reply = await _transaction(reader, writer, message, pause, steps)
        outcome = Outcome.ACCEPTED
    except _RefusedError as refusal:
        outcome, reply = Outcome.REFUSED, str(refusal)
    except (OSError, ConnectionError, TimeoutError, ValueError) as error:
        outcome, reply = Outcome.FAILED, repr(error)
    seconds = time.perf_counter() - started
    with contextlib.suppress(OSError, ConnectionError, TimeoutError, ValueError):
        writer.write(b"QUIT\r\n")
        await asyncio.wait_for(writer.drain(), STEP_TIMEOUT)
        await asyncio.wait_for(_reply(reader), STEP_TIMEOUT)
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
    return Sent(message.token, outcome, seconds, reply, tuple(steps.ended))


async def _transaction(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    message: Message,
    pause: Callable[[], Awaitable[None]] | None,
    steps: _Steps,
) -> str:
    """Greeting to the reply after the final dot; raises _RefusedError on a 4xx/5xx."""
    code, text = await _reply(reader)
    steps.mark("greeting")
    if code != 220:
        raise ConnectionError(f"greeting: {text}")
    step = functools.partial(_step, reader, writer, steps=steps)
    # XCLIENT may come first (Postfix answers it with a new greeting), then EHLO as the client.
    await step(xclient_command(message) + b"\r\n", 220, name="XCLIENT")
    await step(f"EHLO {message.client.helo}\r\n".encode(), 250, name="EHLO")
    await step(f"MAIL FROM:<{message.mail_from}>\r\n".encode(), 250, name="MAIL")
    await step(f"RCPT TO:<{message.rcpt}>\r\n".encode(), 250, name="RCPT")
    if pause is not None:
        await pause()
        steps.mark("pause")
    await step(b"DATA\r\n", 354, name="DATA")
    text = await step(message.data + b".\r\n", 250, name="end of data")
    return text


async def _run(
    host: str,
    port: int,
    messages: Sequence[Message],
    concurrency: int,
    on_sent: Callable[[Sent], None] | None,
) -> LoadResult:
    queue = list(reversed(messages))
    sent: list[Sent] = []

    async def worker() -> None:
        while queue:
            outcome = await _session(host, port, queue.pop())
            sent.append(outcome)
            if on_sent is not None:
                on_sent(outcome)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(messages)))))
    return LoadResult(tuple(sent), time.perf_counter() - started)


def send_all(
    port: int,
    messages: Sequence[Message],
    concurrency: int,
    on_sent: Callable[[Sent], None] | None = None,
) -> LoadResult:
    """Send `messages` to 127.0.0.1:`port` over `concurrency` parallel sessions; `on_sent` is
    told of each session as it ends (on the sending thread: it must not block)."""
    return asyncio.run(_run("127.0.0.1", port, messages, concurrency, on_sent))


async def _held_run(
    host: str, port: int, messages: Sequence[Message], measure: Callable[[int], None]
) -> LoadResult:
    release = asyncio.Event()
    everyone_there = asyncio.Event()
    arrived = 0
    held = 0

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == len(messages):
            everyone_there.set()

    async def session(message: Message) -> Sent:
        paused = False

        async def pause() -> None:
            nonlocal paused, held
            paused = True
            held += 1
            arrive()
            await release.wait()

        try:
            return await _session(host, port, message, pause)
        finally:
            # A session refused or failed before RCPT arrives too, or the rest would wait.
            if not paused:
                arrive()

    started = time.perf_counter()
    tasks = [asyncio.create_task(session(m)) for m in messages]
    try:
        await asyncio.wait_for(everyone_there.wait(), STEP_TIMEOUT * 2)
        measure(held)
    finally:
        release.set()
    sent = await asyncio.gather(*tasks)
    return LoadResult(tuple(sent), time.perf_counter() - started)


def send_held(port: int, messages: Sequence[Message], measure: Callable[[int], None]) -> LoadResult:
    """A session per message, all at once, each held after its RCPT is accepted until every
    session is there; then `measure(held sessions)` runs and the sessions finish."""
    return asyncio.run(_held_run("127.0.0.1", port, messages, measure))
