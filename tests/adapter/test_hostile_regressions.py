"""Regressions: bugs the hostile-input properties (tests/adapter/test_hostile_input.py) found."""

from __future__ import annotations

import ipaddress
import socket

import Milter
import pytest

from spamgate.shell.session import Session
from tests.hostile_dialogues import CONNECT_MACRO_NAMES, Dialogue, Transaction
from tests.hostile_drivers import run_adapter
from tests.hostile_world import CALM, InstantLookups, _records, check_log, check_rcpt, make_runtime

# --- regressions: bugs the properties of test_hostile_input.py found ---------------------------


@pytest.mark.parametrize(
    ("queue_id", "prefix"),
    [
        pytest.param("4XyZ1", "4XyZ1", id="postfix-id-stays-bare"),
        pytest.param(
            "QID\nNOQUEUE: decision id=forged action=accept",
            '"QID\\nNOQUEUE:\\x20decision\\x20id\\x3dforged\\x20action\\x3daccept"',
            id="newline-forges-a-line",
        ),
        pytest.param("Q I D", '"Q\\x20I\\x20D"', id="blanks"),
        pytest.param("\x00", '"\\x00"', id="nul"),
        pytest.param('"', '"\\""', id="quote"),
    ],
)
def test_regression_garbage_queue_id_cannot_forge_a_decision_line(
    queue_id: str, prefix: str
) -> None:
    """The queue id (the MTA's `i` macro) began the decision line unescaped: a newline in it
    wrote a second, forged line; a blank made the prefix two tokens."""
    log: list[str] = []
    session = Session(make_runtime(CALM, log.append))
    session.connect("unknown", ipaddress.ip_address("192.0.2.1"), {})
    session.mail("<a@example.org>", False)
    session.rcpt("<user@example.com>")
    session.end_of_message(queue_id)
    check_log(log)
    (line,) = log
    assert line.startswith(f"{prefix}: decision id=id0001 ")
    assert line.count(": decision ") == 1


def test_regression_scoped_ipv6_client_is_looked_up_without_its_zone() -> None:
    """`spamgate explain --ip 2001:db8::25%eth0` crashed in Session.connect: Python 3.11's
    reverse_pointer raises AddressValueError on a scoped address. The zone is the host's,
    not the client's: lists and reverse DNS look up the address without it."""
    resolver = InstantLookups(CALM.answers, 0)
    log: list[str] = []
    session = Session(make_runtime(resolver, log.append))
    session.connect("unknown", ipaddress.ip_address("2001:db8::25%eth0"), {})
    session.mail("<a@example.org>", False)
    check_rcpt(session.rcpt("<user@example.com>"))
    session.close()
    nibbles = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    assert (f"{nibbles}.s3cr3tkey.zen.test", "A") in resolver.asked
    assert (f"{nibbles}.ip6.arpa", "PTR") in resolver.asked
    check_log(log)
    assert " client=2001:db8::25%eth0 " in log[0]


def test_regression_undecodable_macro_is_read_as_absent_not_as_an_internal_error() -> None:
    """A macro value that is not UTF-8 makes pymilter's getsymval raise. In connect that
    failed the whole connection over to `on_error`: with the default `on_error: accept`, a
    listed client's mail then went through unfiltered."""
    listed = {("1.2.0.192.s3cr3tkey.zen.test", "A"): _records("127.0.0.2")}
    macros = dict.fromkeys(CONNECT_MACRO_NAMES, b"\xff\xfe")
    transaction = Transaction(
        "<a@example.org>", (), b"\xc3(", ("<user@example.com>",), (), "eom", b"\x80QID"
    )
    dialogue = Dialogue(
        "unknown", (socket.AF_INET, ("192.0.2.1", 25)), macros, ("mx.example.org",), (transaction,)
    )
    conn = run_adapter(dialogue, InstantLookups(CALM.answers, 0, listed))  # no internal error
    assert ("envrcpt_bytes", Milter.REJECT) in conn.answers
