"""Header facts end to end through a real Postfix: a `fact:` rule fires on what the message's
header fields say, and shows in X-Spam-Status and the decision line; a clean message gets
no hit; behind a relay of ours, the received.external facts read the hop before it.
(spamgate + Postfix + rbldnsd on loopback, as in test_policy_language.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port
from tests.harness.sink import SmtpSink
from tests.harness.smtp import send

pytestmark = pytest.mark.e2e

ZONES = [Zone("client.example", "generic", "@ MX 10 mail.client.example\nmail A 192.0.2.50\n")]

POLICY = r"""
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.3, deadline: 1.0}}
health: {{status_file: ""}}
thresholds: {{tag: 1, greylist: null, quarantine: null, tempfail: null, reject: 10}}
# The client the tests claim to be is our backup MX (relays); its own field is trusted.
relays: {{names: [mail.client.example], addresses: [192.0.2.60/32]}}
rules:
  - {{name: SUBJECT_SHOUTS, score: 1, description: a Subject in capitals,
      fact: {{name: subject.caps_ratio, over: 0.9}}}}
  - {{name: MSGID_FOREIGN, score: 0.5, description: Message-ID not of the From domain,
      fact: {{name: message_id.from_domain, is: false}}}}
  - {{name: EXTERNAL_TESTNET, score: 0.25, description: entered from TEST-NET-3,
      fact: {{name: received.external.address, matches: '^203\.0\.113\.'}}}}
  - {{name: VIA_RELAY, score: 0.125, description: passed one relay of ours,
      fact: {{name: received.relays_passed, over: 0}}}}
"""

NAME = "mail.client.example"


@dataclass
class FactStack:
    postfix: PostfixInstance
    sink: SmtpSink
    spamgate: SpamgateDaemon

    def send(self, subject: str, message_id: str, received: str = "") -> tuple[str, dict[str, str]]:
        """Send a message (with a Received field the client wrote, if given); its
        X-Spam-Status hits at the sink, and its decision line."""
        head = (
            (f"Received: {received}\r\n" if received else "")
            + "From: someone@client.example\r\nTo: user@example.com\r\n"
            f"Subject: {subject}\r\nDate: {format_datetime(datetime.now(UTC))}\r\n"
            f"Message-ID: {message_id}\r\n"
        )
        result = send(
            self.postfix.ports["smtp"],
            client_addr="192.0.2.60",
            client_name=NAME,
            reverse_name=NAME,
            helo=NAME,
            mail_from="someone@client.example",
            rcpts=["user@example.com"],
            message_bytes=head.encode() + b"\r\nbody\r\n",
            timeout=30,
        )
        queue_id = result.queue_id
        assert queue_id is not None, result
        delivered = self.sink.wait_for_message(
            lambda m: m.message["Subject"] == subject, f"message {subject!r} at the sink"
        )
        status = str(delivered.message["X-Spam-Status"])
        hits = re.search(r"hits=(\S*)", status)
        assert hits is not None, status
        return hits[1], self.spamgate.wait_for_decision(queue=queue_id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FactStack]:
    workdir: Path = tmp_path_factory.mktemp("facts")
    with Rbldnsd(workdir, ZONES) as dns, SmtpSink(workdir) as sink:
        port = free_port()
        with SpamgateDaemon(workdir, POLICY.format(port=port, dns=dns.port), port) as spamgate:
            listeners = {"smtp": Listener(milters=spamgate.postfix_address)}
            main_cf = {"local_header_rewrite_clients": ""}
            with PostfixInstance(
                workdir, relay_port=sink.port, listeners=listeners, main_cf=main_cf
            ) as postfix:
                yield FactStack(postfix, sink, spamgate)


def test_shouting_subject_and_foreign_message_id_fire_their_fact_rules(
    stack: FactStack,
) -> None:
    hits, decision = stack.send("CHEAP WATCHES FOR EVERYONE", "<1.2@bulk-mailer.test>")
    assert set(hits.split(",")) == {"SUBJECT_SHOUTS", "MSGID_FOREIGN"}
    assert decision["hits"] == "SUBJECT_SHOUTS:1,MSGID_FOREIGN:0.5"
    assert decision["score"] == "1.5"


def test_a_clean_message_fires_no_fact_rule(stack: FactStack) -> None:
    hits, decision = stack.send("Minutes of Tuesday's meeting", "<3.4@mail.client.example>")
    assert hits == "none"
    assert decision["score"] == "0.0"


def test_behind_our_relay_the_external_hop_is_the_one_it_received_from(stack: FactStack) -> None:
    # The client (192.0.2.60) is our relay; its field, the topmost (milters never see the one
    # Postfix writes), names the bot it received the message from.
    received = (
        "from bot.example (dsl-7.isp.example [203.0.113.9]) by mail.client.example "
        f"(Postfix) with ESMTP id 4XyZ; {format_datetime(datetime.now(UTC))}"
    )
    hits, decision = stack.send("Our backup MX passed this on", "<5.6@client.example>", received)
    assert set(hits.split(",")) == {"EXTERNAL_TESTNET", "VIA_RELAY"}
    assert decision["hits"] == "EXTERNAL_TESTNET:0.25,VIA_RELAY:0.125"
