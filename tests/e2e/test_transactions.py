"""Transactions through a real Postfix: what one message taught spamgate stays with that
message (issue 14, item 0), and a recipient that must not be refused shields no other
(item 1).

MTAs send many messages per connection (Postfix's connection cache, large providers). A
connection's facts (the client, its name, its HELO) serve every message on it; a
transaction's (its sender, its From: domain) end with it. Before issue 14 the domain-list
lookups of every transaction stayed with the connection: after one message from a listed
domain, clean messages on the same connection were refused, with or without RSET, and every
decision line grew by the domains of all the messages before it.
"""

from __future__ import annotations

import os
import smtplib
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import (
    ZEN_LIST,
    ZEN_ZONE,
    ZONES,
    SpamgateDaemon,
    parse_decisions,
    start_behind_postfix,
)
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import PostfixInstance
from tests.harness.processes import LOOPBACK, wait_until
from tests.harness.sink import SmtpSink
from tests.harness.smtp import build_message

pytestmark = pytest.mark.e2e

CLIENT = "192.0.2.60"  # in no test zone
HELO = "mail.client.example"
LISTED = "news@spam.example"  # its domain is on the test DBL: score 10, a reject
CLEAN = "news@clean.example"

POLICY = (
    """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{status_dir}/status-{port}.json"}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
ip_lists:
"""
    + ZEN_LIST
    + """
domain_lists:
  - name: DBL
    display: Example DBL
    zone: dbl.test
    check_names: [helo, sender, from]
    hits: [{{name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}}]
allow: {{recipients: [vip@example.com]}}
rules:
  - name: SUBJECT_PHARMA
    score: 10
    description: the Subject advertises pharmacy products
    header: {{name: Subject, matches: '(?i)\\bv[i1]agra\\b'}}
"""
)


@dataclass
class Stack:
    postfix: PostfixInstance
    sink: SmtpSink
    spamgate: SpamgateDaemon

    @property
    def port(self) -> int:
        return self.postfix.ports["spamgate"]

    def connection(self) -> smtplib.SMTP:
        """An SMTP session as the test client (XCLIENT), ready for MAIL FROM."""
        client = smtplib.SMTP(LOOPBACK, self.port, timeout=30)
        client.ehlo("harness.localhost")
        code, text = client.docmd("XCLIENT", f"ADDR={CLIENT} NAME=[UNAVAILABLE] HELO={HELO}")
        assert code == 220, text
        client.ehlo(HELO)
        return client


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("transactions")
    workdir.chmod(0o755)
    zones = [*ZONES, Zone("dbl.test", "dnset", "test\n.spam.example :127.0.1.2:\n")]
    with ExitStack() as stack:
        dns = stack.enter_context(Rbldnsd(workdir, zones))
        sink = stack.enter_context(SmtpSink(workdir))
        daemon = SpamgateDaemon.from_template(
            workdir, POLICY, dns_port=dns.port, status_dir=workdir, zen_zone=ZEN_ZONE
        )
        postfix = start_behind_postfix(stack, workdir, sink, {"spamgate": daemon})
        yield Stack(postfix, sink, daemon)


def _message(subject: str, header_from: str = CLEAN) -> bytes:
    return build_message(mail_from=header_from, to=["user@example.com"], subject=subject)


def _send(client: smtplib.SMTP, sender: str, subject: str, header_from: str = CLEAN) -> int:
    """One transaction on an open connection; the reply code that decided it."""
    code, _ = client.mail(sender)
    if code != 250:
        return code
    code, _ = client.rcpt("user@example.com")
    if code != 250:
        client.rset()
        return code
    code, _ = client.data(_message(subject, header_from))
    return code


def _decision(stack: Stack, sender: str) -> dict[str, str]:
    """The decision line of the transaction from `sender` (each test's senders are its own)."""
    return stack.spamgate.wait_for_decision(**{"from": f"<{sender}>"})


def test_a_listed_sender_does_not_follow_the_connection_to_the_next_message(
    stack: Stack,
) -> None:
    """The incident: one message from a listed domain, then clean ones on the connection."""
    client = stack.connection()
    try:
        code, text = client.mail(LISTED)
        assert code == 250
        code, text = client.rcpt("user@example.com")
        assert code == 550 and b"a spam domain" in text, text
        client.rset()
        # After RSET, and after a transaction that simply ends with the next MAIL FROM.
        assert _send(client, "after-rset@clean.example", "after RSET") == 250
        assert _send(client, "after-message@clean.example", "after a message") == 250
    finally:
        client.quit()
    for sender in ("after-rset@clean.example", "after-message@clean.example"):
        line = _decision(stack, sender)
        assert (line["action"], line["score"]) == ("accept", "0.0"), line
        assert "spam.example" not in line["lists"], line


def test_a_listed_from_domain_does_not_follow_the_connection(stack: Stack) -> None:
    client = stack.connection()
    try:
        assert _send(client, "from-listed@clean.example", "x", header_from="x@spam.example") == 550
        assert _send(client, "after-from@clean.example", "after a listed From:") == 250
    finally:
        client.quit()
    line = _decision(stack, "after-from@clean.example")
    assert "spam.example" not in line["lists"] and line["action"] == "accept", line


def test_pipelined_transactions_keep_their_own_evidence(stack: Stack) -> None:
    """MAIL, RCPT and DATA written at once (PIPELINING, RFC 2920), listed then clean."""
    with socket.create_connection((LOOPBACK, stack.port), timeout=30) as conn:
        reader = conn.makefile("rb")

        def reply() -> bytes:
            lines = [reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(reader.readline())
            return b"".join(lines)

        def command(line: str) -> bytes:
            conn.sendall(line.encode() + b"\r\n")
            return reply()

        assert reply().startswith(b"220")
        assert command("EHLO harness.localhost").startswith(b"250")
        assert command(f"XCLIENT ADDR={CLIENT} NAME=[UNAVAILABLE] HELO={HELO}").startswith(b"220")
        assert b"PIPELINING" in command(f"EHLO {HELO}")
        replies = []
        for sender, token in ((LISTED, "listed"), ("pipelined@clean.example", "clean")):
            conn.sendall(f"MAIL FROM:<{sender}>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n".encode())
            mail, rcpt, data = reply(), reply(), reply()
            if data.startswith(b"354"):
                body = _message(token).replace(b"\n.", b"\n..")
                conn.sendall(body + b"\r\n.\r\n")
                data = reply()
            replies.append((mail[:3], rcpt[:3], data[:3]))
            command("RSET")
        command("QUIT")
    assert replies[0][1] == b"550", replies  # the listed sender: refused at RCPT
    assert replies[1] == (b"250", b"250", b"250"), replies
    line = _decision(stack, "pipelined@clean.example")
    assert "spam.example" not in line["lists"] and line["action"] == "accept", line


@pytest.mark.parametrize("shield", ["postmaster@example.com", "vip@example.com"])
def test_a_recipient_that_must_not_be_refused_shields_no_other(stack: Stack, shield: str) -> None:
    """The bypass: header-stage spam to user@ and postmaster@ (or an allowlisted recipient)
    reached user@, tagged. Now the second kind of recipient is told to come back in a
    transaction of its own (452 4.5.3), and the spam is refused at end of data."""
    tag = shield.partition("@")[0]
    client = stack.connection()
    try:
        code, _ = client.mail(f"shield-{tag}@clean.example")
        assert code == 250
        assert client.rcpt("user@example.com")[0] == 250
        code, text = client.rcpt(shield)
        assert (code, text[:5]) == (452, b"4.5.3"), text
        code, text = client.data(_message("cheap viagra"))
        assert code == 550 and b"pharmacy" in text, text
        # The shield alone gets the message, tagged: it must stay reachable.
        code, _ = client.mail(f"shield-alone-{tag}@clean.example")
        assert code == 250
        assert client.rcpt(shield)[0] == 250
        assert client.rcpt("user@example.com")[0] == 452
        assert client.data(_message("cheap viagra again"))[0] == 250
    finally:
        client.quit()
    delivered = stack.sink.wait_for_message(
        lambda m: m.mail_from == f"shield-alone-{tag}@clean.example", "the shield's own message"
    )
    assert delivered.rcpts == (shield,)
    assert delivered.message["X-Spam-Status"].startswith("Yes")
    assert not [m for m in stack.sink.messages() if m.mail_from == f"shield-{tag}@clean.example"]


def test_two_thousand_messages_on_one_connection_stay_as_cheap_as_the_first(
    stack: Stack,
) -> None:
    """Every decision line as long as the first, and the last messages cost the daemon no
    more CPU than the first ones (before issue 14, 1,500 messages grew the last line to
    66 KB and doubled the CPU per message)."""
    offset = len(stack.spamgate.log_text())
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{stack.spamgate.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    client = stack.connection()
    spent = []
    try:
        for batch in range(8):
            started = cpu_seconds()
            for number in range(250):
                sender = LISTED if number % 50 == 0 else f"n{batch}-{number}@clean.example"
                _send(client, sender, f"long-{batch}-{number}")
            spent.append(cpu_seconds() - started)
    finally:
        client.quit()

    def logged() -> bool:
        return len(parse_decisions(stack.spamgate.log_text()[offset:])) >= 2000

    wait_until(logged, timeout=60, what="2,000 decision lines")
    lines = [
        line
        for line in stack.spamgate.log_text()[offset:].splitlines()
        if ": decision " in line and "@clean.example" in line
    ]
    assert len(lines) >= 1900
    first, last = max(len(x) for x in lines[:100]), max(len(x) for x in lines[-100:])
    assert last <= first + 20, (first, last)  # the ids and names differ a little, no more
    # CPU: the last 250 messages against the first 250, with room for a busy machine.
    assert spent[-1] <= 2 * spent[0] + 0.5, spent
