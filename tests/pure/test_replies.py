"""SMTP replies: protocol rules in the type, sanitised text, bounded length."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from spamgate.core.replies import (
    MAX_TEXT,
    Reply,
    clean_text,
    internal_error,
    rejection,
    temporary_refusal,
)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param(550, "5.7.1", id="reject"),
        pytest.param(554, "5.7.0", id="reject-554"),
        pytest.param(451, "4.7.1", id="tempfail"),
        pytest.param(421, "4.3.2", id="tempfail-421"),
        pytest.param(450, "4.123.456", id="three-digit-parts"),
    ],
)
def test_reply_accepts_matching_classes(code: int, status: str) -> None:
    reply = Reply(code, status, "text")
    assert (reply.code, reply.status, reply.text) == (code, status, "text")


@pytest.mark.parametrize(
    ("code", "status", "text", "message"),
    [
        pytest.param(250, "2.0.0", "ok", "a milter reply must be 4xx or 5xx, not 250", id="2xx"),
        pytest.param(354, "3.0.0", "go", "a milter reply must be 4xx or 5xx, not 354", id="3xx"),
        pytest.param(600, "5.7.1", "x", "a milter reply must be 4xx or 5xx, not 600", id="6xx"),
        pytest.param(45, "4.7.1", "x", "a milter reply must be 4xx or 5xx, not 45", id="2-digit"),
        pytest.param(
            451, "5.7.1", "x", "status 5.7.1 does not match reply code 451", id="451-with-5.7.1"
        ),
        pytest.param(
            550, "4.7.1", "x", "status 4.7.1 does not match reply code 550", id="550-with-4.7.1"
        ),
        pytest.param(550, "2.0.0", "x", "bad enhanced status code '2.0.0'", id="status-2.x"),
        pytest.param(550, "5.7", "x", "bad enhanced status code '5.7'", id="status-short"),
        pytest.param(550, "5.7.1000", "x", "bad enhanced status code '5.7.1000'", id="status-long"),
        pytest.param(550, "5.7.1 ", "x", "bad enhanced status code '5.7.1 '", id="status-space"),
        pytest.param(550, "5.7.1", "a\r\nb", "reply text must be printable ASCII", id="crlf"),
        pytest.param(550, "5.7.1", "tab\there", "reply text must be printable ASCII", id="tab"),
        pytest.param(550, "5.7.1", "caf\xe9", "reply text must be printable ASCII", id="latin1"),
        pytest.param(550, "5.7.1", "\x7f", "reply text must be printable ASCII", id="del"),
    ],
)
def test_reply_refuses_protocol_violations(code: int, status: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Reply(code, status, text)


@pytest.mark.parametrize(
    ("text", "milter_text"),
    [
        pytest.param("no percent", "no percent", id="none"),
        pytest.param("100% spam", "100%% spam", id="one"),
        pytest.param("%s%%", "%%s%%%%", id="several"),
    ],
)
def test_milter_text_doubles_percent(text: str, milter_text: str) -> None:
    assert Reply(550, "5.7.1", text).milter_text == milter_text


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("plain text", 400, "plain text", id="unchanged"),
        pytest.param("line one\r\nline two", 400, "line one line two", id="crlf-one-space"),
        pytest.param("a\tb\x00c\x7fd", 400, "a b c d", id="controls"),
        pytest.param("caf\xe9 \u20ac5", 400, "caf 5", id="non-ascii"),
        pytest.param("\r\n  padded \n", 400, "padded", id="stripped"),
        pytest.param("abcdefghij", 10, "abcdefghij", id="exactly-limit"),
        pytest.param("abcdefghijk", 10, "abcdefg...", id="truncated"),
        pytest.param("abcd efghij", 8, "abcd...", id="truncated-no-trailing-space"),
    ],
)
def test_clean_text(text: str, limit: int, expected: str) -> None:
    assert clean_text(text, limit) == expected


@pytest.mark.parametrize("limit", [pytest.param(n, id=f"limit-{n}") for n in (0, 1, 2)])
def test_clean_text_never_exceeds_a_small_limit(limit: int) -> None:
    assert len(clean_text("abcdefgh", limit)) <= limit


@pytest.mark.parametrize(
    ("make", "code", "status"),
    [
        pytest.param(rejection, 550, "5.7.1", id="rejection"),
        pytest.param(temporary_refusal, 451, "4.7.1", id="temporary-refusal"),
    ],
)
def test_reply_kinds(make: Callable[[str], Reply], code: int, status: str) -> None:
    reply = make("Message refused: listed in the Spamhaus SBL (id 5f3a9c01d2)")
    assert (reply.code, reply.status) == (code, status)
    assert reply.text == "Message refused: listed in the Spamhaus SBL (id 5f3a9c01d2)"


def test_internal_error_reply() -> None:
    reply = internal_error("5f3a9c01d2")
    assert (reply.code, reply.status) == (451, "4.3.0")
    assert reply.text == "Temporary local problem, try again later (id 5f3a9c01d2)"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(rejection, id="rejection"),
        pytest.param(temporary_refusal, id="temporary-refusal"),
    ],
)
def test_long_text_is_cut(make: Callable[[str], Reply]) -> None:
    reply = make("reason; " * 200)
    assert len(reply.text) == MAX_TEXT
    assert reply.text.endswith("...")


def test_hostile_text_is_flattened() -> None:
    reply = rejection("evil\r\n250 OK\x00 100%")
    assert reply.text == "evil 250 OK 100%"
    assert reply.milter_text == "evil 250 OK 100%%"


def test_hostile_id_in_internal_error_is_flattened_and_cut() -> None:
    reply = internal_error("id\r\nX" + "y" * 100)
    assert len(reply.text) <= MAX_TEXT
    # The id is cut to 32 characters of its own.
    assert reply.text.endswith(f" (id {'id X' + 'y' * 25}...)")
