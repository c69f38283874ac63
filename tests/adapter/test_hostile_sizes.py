"""Hostile input by size: a megabyte header value of every kind, ten thousand headers;
decided on in bounded time by the Session and the adapter."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Mapping

import Milter
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile_dialogues import (
    BOUNDED,
    HEADER_NAMES,
    HEADER_VALUES,
    Dialogue,
    Transaction,
    _surrogateescaped,
)
from tests.hostile_drivers import run_adapter, run_session
from tests.hostile_world import CALM

# --- sizes: a megabyte header, ten thousand headers --------------------------------------------

MEGABYTE = 1024 * 1024


def _repeat(piece: str) -> str:
    return (piece * (MEGABYTE // len(piece) + 1))[:MEGABYTE]


BIG_VALUES: Mapping[str, Callable[[], str]] = {
    "letters": lambda: _repeat("a"),
    "words": lambda: _repeat("cheap viagra "),
    "encoded-word-openers": lambda: _repeat("=?a?q?x"),
    "bad-base64-words": lambda: _repeat("=?utf-8?B?!!!?= "),
    "nuls": lambda: _repeat("\x00"),
    "folds": lambda: _repeat("x\r\n\t"),
    "bare-lfs": lambda: _repeat("\n"),
    "not-utf8": lambda: _surrogateescaped(_repeat("\xff").encode("latin-1")),
    "comments": lambda: _repeat("("),
    "addresses": lambda: _repeat("a@b.example, "),
    "percent": lambda: _repeat("%"),
}
BIG_HEADER_NAMES = ("Subject", "From", "To", "Date", "Message-ID", "Reply-To", "X-Spam-Status")


def plain_dialogue(headers: tuple[tuple[str, str], ...], client: str = "192.0.2.1") -> Dialogue:
    transaction = Transaction(
        "<a@example.org>", (), None, ("<user@example.com>",), headers, "eom", "4XyZ1"
    )
    return Dialogue(
        "unknown", (socket.AF_INET, (client, 25)), {}, ("mail.example.org",), (transaction,)
    )


# Few enough to try every one (hypothesis would sample a finite space with repeats).
@pytest.mark.parametrize("name", BIG_HEADER_NAMES)
@pytest.mark.parametrize("kind", sorted(BIG_VALUES))
def test_a_megabyte_header_value_is_decided_on(kind: str, name: str) -> None:
    value = BIG_VALUES[kind]()
    dialogue = plain_dialogue(((name, value), ("Subject", "hello")))
    started = time.perf_counter()
    run_session(dialogue, CALM)
    assert run_adapter(dialogue, CALM).answers[-1][0] == "eom"  # decided, not cut short
    # Generous: the point is "no hang" (each parser is linear or capped), not a benchmark.
    assert time.perf_counter() - started < 10


@settings(BOUNDED, max_examples=8)
@given(
    pattern=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)),
        min_size=1,
        max_size=4,
    )
)
def test_ten_thousand_headers_are_decided_on(pattern: list[tuple[str, str]]) -> None:
    many = tuple(itertools.islice(itertools.cycle(pattern), 10_000))
    dialogue = plain_dialogue(many)
    started = time.perf_counter()
    run_session(dialogue, CALM)
    conn = run_adapter(dialogue, CALM)
    assert time.perf_counter() - started < 20
    # Of a message that is let through, each forged copy of our own headers is deleted.
    ours = sum(1 for name, _ in many if name.lower() in ("x-spam-status", "x-spam-score"))
    passed = conn.answers[-1] == ("eom", Milter.CONTINUE)
    assert len(conn.ctx.deleted) == (ours if passed else 0)
