"""Header analysis on hostile values: every function of spamgate.core.headers total, and bounded
in time on a megabyte. Each function's results are pinned in test_header_text.py,
test_header_addresses.py and test_header_dates.py."""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable

import pytest

from spamgate.core.headers import (
    MAX_ADDRESS_CHARS,
    date_skew,
    decoded_text,
    header_addresses,
    parse_date,
    raw_bytes,
    unfold,
)

MEGABYTE = 1024 * 1024
# date_skew's now: any will do, as long as it is timezone-aware.
NOW = datetime.datetime(2024, 1, 1, 10, tzinfo=datetime.UTC)


# --- every function: total and bounded on hostile values ---------------------------------------

FUNCTIONS: list[tuple[str, Callable[[str], object]]] = [
    ("unfold", unfold),
    ("raw_bytes", raw_bytes),
    ("decoded_text", decoded_text),
    ("header_addresses", header_addresses),
    ("parse_date", parse_date),
    ("date_skew", lambda value: date_skew(value, NOW)),
]

HOSTILE = [
    pytest.param("x" * MEGABYTE, id="letters"),
    pytest.param("a " * (MEGABYTE // 2), id="words"),
    pytest.param("a." * (MEGABYTE // 2), id="dots"),
    pytest.param("a@b.c," * (MEGABYTE // 6), id="addresses"),
    pytest.param("\udcff" * MEGABYTE, id="non-utf8"),
    pytest.param("\x00" * MEGABYTE, id="nuls"),
    pytest.param("\r\n " * (MEGABYTE // 3), id="folds"),
    pytest.param("(" * MEGABYTE, id="open-comments"),
    pytest.param('"' + "\\" * MEGABYTE, id="unterminated-quote"),
    pytest.param("=?utf-8?q?a?= " * (MEGABYTE // 14), id="encoded-words"),
    pytest.param("=?a?q?" * (MEGABYTE // 6), id="unterminated-encoded-words"),
    # email.header.decode_header takes 3.7 s on 56 KB of this: quadratic.
    pytest.param("=?a?q?x" * (MEGABYTE // 7), id="encoded-word-prefixes"),
    pytest.param("=?utf-8?B?" + "A" * MEGABYTE + "?=", id="one-huge-encoded-word"),
    pytest.param("=?" * (MEGABYTE // 2), id="encoded-word-starts"),
    pytest.param("1 Jan " * (MEGABYTE // 6), id="date-parts"),
]


@pytest.mark.parametrize("value", HOSTILE)
def test_megabyte_values_take_bounded_time(value: str) -> None:
    for name, function in FUNCTIONS:
        start = time.perf_counter()
        function(value)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"{name} took {elapsed:.3f} s"


@pytest.mark.parametrize(
    "unit",
    ["a@b.c,", "<a@b.c>,", "a.", "x,", "a ", "(", "((a)", "g:a@b.c,", '"a"', "[a]"],
)
def test_the_worst_address_values_under_the_cap_are_fast(unit: str) -> None:
    value = (unit * (MAX_ADDRESS_CHARS // len(unit) + 1))[:MAX_ADDRESS_CHARS]
    start = time.perf_counter()
    header_addresses(value)
    assert time.perf_counter() - start < 0.5  # about 30 ms measured


def test_every_function_is_total_on_random_values() -> None:
    rng = random.Random(2047)
    pieces = [
        *'aZ@.,;:<>()[]"\\ \t\r\n\x00\x07\udcff\ud800é😀=?_-+0123456789',
        "=?utf-8?B?",
        "=?x-unknown?Q?",
        "?=",
        "=C3",
        "=?utf-7?Q?+2D0-?=",
        " Jan ",
        " 2024 ",
        "10:00:00",
        " +0200",
        "-0000",
        "user@example.com",
    ]
    for _ in range(5000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randrange(40)))
        assert isinstance(unfold(value), str)
        assert isinstance(raw_bytes(value), bytes)
        decoded_text(value).encode("utf-8")  # never a lone surrogate
        addresses = header_addresses(value)
        assert addresses is None or all("@" in address for address in addresses)
        required = header_addresses(value, mailbox_required=True)
        assert required is None or required == addresses
        parsed = parse_date(value)
        assert parsed is None or parsed.utcoffset() is not None
        skew = date_skew(value, NOW)
        assert (skew is None) == (parsed is None)
