"""Adapter tests of failure: an error in our code answered by on_error, and pymilter failing
before our code runs, through pymilter's own test context (the harness:
tests/adapter_harness.py).
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import Milter
import pytest

from spamgate.core.policy import Policy
from spamgate.dns.answers import DnsAnswer, Pending
from spamgate.shell.adapter import report_uncaught
from tests.adapter_harness import (
    GOOD_HEADERS,
    Session,
    _capture,  # noqa: F401  (a fixture: pytest finds it by name)
    answering,
    decisions,
    fresh_options,
    make_policy,
)
from tests.fakes import ScriptedLookups


class ExplodingLookups(ScriptedLookups):
    def lookup(self, qname: str, rdtype: str = "A") -> Pending[DnsAnswer]:
        raise RuntimeError("resolver exploded")


@pytest.mark.parametrize(
    ("on_error", "expected", "reply"),
    [
        pytest.param("accept", Milter.ACCEPT, None, id="accept"),
        pytest.param("tempfail", Milter.TEMPFAIL, ("451", "4.3.0"), id="tempfail"),
    ],
)
def test_error_in_a_noreply_callback_follows_on_error_at_the_next_reply(
    caplog: pytest.LogCaptureFixture, on_error: str, expected: int, reply: tuple[str, str] | None
) -> None:
    session = Session(make_policy(f"on_error: {on_error}\n"), ExplodingLookups({}))
    # connect must still answer CONTINUE/NOREPLY: anything else desynchronises the protocol.
    assert session.connect("192.0.2.1") in (Milter.CONTINUE, Milter.NOREPLY)
    session.mail()
    assert session.rcpt("<user@example.com>") == expected
    assert (session.reply[:2] if session.reply else None) == reply
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "internal error in connect" in message and "resolver exploded" in message
    assert f"on_error={on_error}" in message and "traceback=" in message
    assert "\n" not in message


def test_error_in_header_callback_is_answered_with_on_error_at_end_of_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session(make_policy("on_error: tempfail\n"), answering({}))
    session.connect()
    session.mail()
    session.rcpt("<user@example.com>")
    session.milter.session.transaction.our_headers = None  # type: ignore[union-attr]
    session.ctx._reply = None
    # Headers are no-reply events: the error waits for the next answer, end of message.
    assert session.ctx._header("X-Spam-Status", "boom") == Milter.CONTINUE
    assert session.reply is None
    assert session.ctx._eom() == Milter.TEMPFAIL
    assert session.reply is not None and session.reply[:2] == ("451", "4.3.0")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "internal error in header" in errors[0]


@pytest.mark.parametrize(
    ("family", "hostaddr"),
    [
        pytest.param(0, None, id="unknown-family"),
        pytest.param(2, None, id="no-address"),
        pytest.param(2, ("not-an-ip", 25), id="garbage"),
        pytest.param(10, ("fe80::1%eth0", 25, 0, 2), id="scoped-link-local"),
    ],
)
def test_connect_without_a_usable_address_is_scored_without_lists(
    caplog: pytest.LogCaptureFixture, family: int, hostaddr: Any
) -> None:
    lookups = answering({})
    session = Session(make_policy(), lookups)
    fresh_options()
    session.ctx._negotiate()
    milter = session.milter
    assert milter.connect("host", family, hostaddr) in (Milter.CONTINUE, Milter.NOREPLY)
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.close()
    assert lookups.calls == []
    (line,) = decisions(caplog)
    if family == 10:
        assert "client=fe80::1" in line and "lists_ignored=trusted" in line
    else:
        assert "client=unknown" in line and "lists_ignored=no-address" in line


# -- pymilter failing before our code runs -------------------------------------------------
# pymilter's C layer decodes a HELO (and a header name) as strict UTF-8 to build the callback's
# arguments; on failure it calls sys.excepthook (PyErr_Print) from the session's own Python
# thread state and answers with its exception policy, CONTINUE. These tests make that call
# as pymilter does, from the thread the session's callbacks ran in.

HELO_RULE = """
  - {name: HELO_SHORT, score: 1, description: the HELO is not a FQDN, helo: not_fqdn}
"""


def pymilter_fails(error: BaseException) -> None:
    report_uncaught(type(error), error, error.__traceback__)


def undecodable(raw: bytes) -> UnicodeDecodeError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return error
    raise AssertionError(f"{raw!r} is UTF-8")


def connected(policy: Policy) -> Session:
    session = Session(policy, answering({}))
    fresh_options()
    session.ctx._negotiate()
    assert session.milter.connect("mx.example.org", 2, ("192.0.2.7", 4567)) in (
        Milter.CONTINUE,
        Milter.NOREPLY,
    )
    return session


def test_a_helo_pymilter_cannot_decode_is_read_byte_for_byte_and_judged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected(make_policy(HELO_RULE))
    pymilter_fails(undecodable(b"[h\xff\xfe\nforged=1"))
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    assert session.message(GOOD_HEADERS) == Milter.CONTINUE
    (line,) = decisions(caplog)
    assert 'helo="[h\\xff\\xfe\\nforged\\x3d1"' in line
    assert "hits=HELO_SHORT:1" in line
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "HELO from 192.0.2.7 is not UTF-8" in warning and "\n" not in warning
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_header_name_pymilter_cannot_decode_goes_unseen_and_the_message_is_judged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected(make_policy())
    session.mail()
    session.rcpt("<user@example.com>")
    session.ctx._data()
    pymilter_fails(undecodable(b"X-\xff"))
    for name, value in GOOD_HEADERS:
        session.ctx._header(name, value)
    assert session.ctx._eom() == Milter.CONTINUE
    (line,) = decisions(caplog)
    assert "stage=eom action=accept" in line
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a header name from 192.0.2.7 is not UTF-8" in warning
    assert 'name="X-\\xff"' in warning


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        pytest.param("accept", Milter.ACCEPT, id="accept"),
        pytest.param("tempfail", Milter.TEMPFAIL, id="tempfail"),
    ],
)
def test_any_other_pymilter_failure_is_an_internal_error_answered_by_on_error(
    caplog: pytest.LogCaptureFixture, on_error: str, expected: int
) -> None:
    session = connected(make_policy(f"on_error: {on_error}\n"))
    session.mail()
    pymilter_fails(AttributeError("'NoneType' object has no attribute 'envrcpt_bytes'"))
    assert session.rcpt("<user@example.com>") == expected
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "internal error in pymilter-after-envfrom" in error
    assert f"on_error={on_error}" in error
    assert "\n" not in error


def test_an_uncaught_exception_outside_a_session_is_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail_in_a_fresh_thread() -> None:
        try:
            raise ValueError("line one\nline two")
        except ValueError as error:
            pymilter_fails(error)

    with futures.ThreadPoolExecutor(1) as pool:
        pool.submit(fail_in_a_fresh_thread).result(timeout=10)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error.startswith("uncaught exception outside a session: ")
    assert "line one\\nline two" in error and "\n" not in error
    assert "test_adapter.py" in error  # the traceback, folded onto the line


def test_a_client_name_pymilter_cannot_decode_fails_the_connection_by_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No MTA here passes one (Postfix validates the name or says "unknown"), but if one did,
    # connect() never runs: the connection has no facts, so on_error answers for all of it.
    session = Session(make_policy("on_error: tempfail\n"), answering({}))
    fresh_options()
    session.ctx._negotiate()
    pymilter_fails(undecodable(b"host\xff.example"))
    for _ in range(2):  # a new MAIL FROM does not clear a connection-stage failure
        session.mail()
        assert session.rcpt("<user@example.com>") == Milter.TEMPFAIL
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "internal error in connect" in error and "UnicodeDecodeError" in error
