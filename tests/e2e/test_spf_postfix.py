"""SPF through a real Postfix (issue 17 item 1): what a client sees and what the log says for
each result, with the SPF records served by a DNS server on loopback.

The client's address comes from XCLIENT; spamgate's resolver asks the test's DNS server for
the sender domains' TXT records. A domain whose server never answers gives temperror within
the deadline, and a verdict without SPF.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.spamgate_stack import SpamgateDaemon, start_behind_postfix
from tests.fake_dns_server import SILENT, Behaviour, FakeDnsServer
from tests.harness.postfix import PostfixInstance
from tests.harness.processes import LOOPBACK
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

CLIENT = "192.0.2.60"
ALLOWED_CLIENT = "192.0.2.99"
HELO = "mail.client.example"
DEADLINE = 1.0

# TXT records in presentation form (one quoted string each).
RECORDS = {
    "pass.example": f'"v=spf1 ip4:{CLIENT} -all"',
    "fail.example": '"v=spf1 -all"',
    "soft.example": '"v=spf1 ~all"',
    "broken.example": '"v=spf1 ip4:192.0.2.300 -all"',
    "helo-fail.example": '"v=spf1 -all"',
    "partner.example": f'"v=spf1 ip4:{CLIENT} -all"',
}

POLICY = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: {deadline}}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{status_dir}/status-{port}.json"}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
allow:
  clients: [{allowed}/32]
  verified_senders: ["@partner.example"]
  senders: ["@plain-partner.example"]
rules:
  - {{name: SPF_FAIL, score: 10, description: the sender domain forbids this client, spf: fail}}
  - {{name: SPF_SOFTFAIL, score: 3, description: a doubtful client, spf: softfail}}
  - {{name: SPF_PERMERROR, score: 0.5, description: a broken SPF record, spf: permerror}}
  - {{name: SPF_PASS, score: 0, description: the sender domain allows this client, spf: pass}}
  - {{name: HELO_SPF_FAIL, score: 3, description: the HELO forbids it, helo_spf: fail}}
"""


@dataclass
class Stack:
    postfix: PostfixInstance
    sink: SmtpSink
    spamgate: SpamgateDaemon
    dns: FakeDnsServer

    @property
    def port(self) -> int:
        return self.postfix.ports["spamgate"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("spf")
    workdir.chmod(0o755)
    dns = FakeDnsServer(lifetime=600)
    for domain, record in RECORDS.items():
        dns.script[domain, "TXT"] = Behaviour(records=(record,))
    dns.script["silent.example", "TXT"] = SILENT
    dns.start()
    try:
        with ExitStack() as stack:
            sink = stack.enter_context(SmtpSink(workdir))
            daemon = SpamgateDaemon.from_template(
                workdir,
                POLICY,
                dns_port=dns.port,
                deadline=DEADLINE,
                status_dir=workdir,
                allowed=ALLOWED_CLIENT,
            )
            postfix = start_behind_postfix(stack, workdir, sink, {"spamgate": daemon})
            yield Stack(postfix, sink, daemon, dns)
    finally:
        dns.stop()


def _send(
    stack: Stack, sender: str, subject: str, *, client: str = CLIENT, helo: str = HELO
) -> SendResult:
    return send(
        stack.port,
        client_addr=client,
        helo=helo,
        mail_from=sender,
        rcpts=["user@example.com"],
        message_bytes=build_message(
            mail_from=sender or "x@example.com", to=["user@example.com"], subject=subject
        ),
        timeout=30,
    )


def test_a_pass_is_accepted_and_logged(stack: Stack) -> None:
    result = _send(stack, "alice@pass.example", "spf pass")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.spamgate.wait_for_decision(**{"from": "<alice@pass.example>"})
    assert (line["spf"], line["action"]) == ("pass", "accept"), line
    assert "SPF_PASS:0" in line["hits"], line


def test_a_fail_is_refused_at_rcpt_with_the_rules_description(stack: Stack) -> None:
    result = _send(stack, "mallory@fail.example", "spf fail")
    [(_, reply)] = result.rcpts
    assert reply.code == 550, result
    assert "the sender domain forbids this client" in reply.text, reply
    assert result.end_of_data is None
    line = stack.spamgate.wait_for_decision(**{"from": "<mallory@fail.example>"})
    assert (line["spf"], line["stage"], line["action"]) == ("fail", "rcpt", "reject"), line


def test_a_softfail_is_delivered_tagged(stack: Stack) -> None:
    result = _send(stack, "bob@soft.example", "spf softfail")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    delivered = stack.sink.wait_for_message(
        lambda m: m.message["Subject"] == "spf softfail", "the softfail message"
    )
    status = str(delivered.message["X-Spam-Status"])
    assert status.startswith("Yes, score=3.0") and "SPF_SOFTFAIL" in status, status
    line = stack.spamgate.wait_for_decision(**{"from": "<bob@soft.example>"})
    assert (line["spf"], line["action"]) == ("softfail", "tag"), line


def test_a_broken_record_is_a_permerror(stack: Stack) -> None:
    result = _send(stack, "carol@broken.example", "spf permerror")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.spamgate.wait_for_decision(**{"from": "<carol@broken.example>"})
    assert line["spf"] == "permerror" and "SPF_PERMERROR:0.5" in line["hits"], line


def test_a_silent_dns_server_costs_the_deadline_and_counts_for_nothing(stack: Stack) -> None:
    result = _send(stack, "dave@silent.example", "spf temperror")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    # The deadline and a wide margin for a busy machine; without a bound it would hang.
    assert result.elapsed < DEADLINE + 5, result.elapsed
    line = stack.spamgate.wait_for_decision(**{"from": "<dave@silent.example>"})
    assert (line["spf"], line["action"], line["score"]) == ("temperror", "accept", "0.0"), line


def test_the_null_sender_is_checked_as_postmaster_at_the_helo_name(stack: Stack) -> None:
    result = _send(stack, "", "bounce", helo="fail.example")
    [(_, reply)] = result.rcpts
    assert reply.code == 550, result
    line = stack.spamgate.wait_for_decision(**{"from": "<>", "helo": "fail.example"})
    assert line["spf"] == "fail", line


def test_the_helo_name_is_checked_as_an_identity_of_its_own(stack: Stack) -> None:
    result = _send(stack, "erin@pass.example", "helo spf", helo="helo-fail.example")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.spamgate.wait_for_decision(**{"from": "<erin@pass.example>"})
    assert (line["helo_spf"], line["spf"], line["action"]) == ("fail", "pass", "tag"), line
    assert "HELO_SPF_FAIL:3" in line["hits"], line


def test_one_messages_spf_does_not_reach_the_next_on_the_connection(stack: Stack) -> None:
    client = smtplib.SMTP(LOOPBACK, stack.port, timeout=30)
    try:
        client.ehlo("harness.localhost")
        code, text = client.docmd("XCLIENT", f"ADDR={CLIENT} NAME=[UNAVAILABLE] HELO={HELO}")
        assert code == 220, text
        client.ehlo(HELO)
        assert client.mail("frank@fail.example")[0] == 250
        assert client.rcpt("user@example.com")[0] == 550
        client.rset()
        assert client.mail("grace@pass.example")[0] == 250
        assert client.rcpt("user@example.com")[0] == 250
        message = build_message(mail_from="grace@pass.example", to=["user@example.com"])
        assert client.data(message)[0] == 250
    finally:
        client.quit()
    line = stack.spamgate.wait_for_decision(**{"from": "<grace@pass.example>"})
    assert (line["spf"], line["action"]) == ("pass", "accept"), line


def test_an_allowlisted_client_is_not_checked(stack: Stack) -> None:
    result = _send(stack, "heidi@allowed-only.example", "allowed", client=ALLOWED_CLIENT)
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.spamgate.wait_for_decision(**{"from": "<heidi@allowed-only.example>"})
    assert "spf" not in line, line
    assert stack.dns.packets("allowed-only.example", "TXT") == 0


def test_a_verified_sender_is_allowed_only_from_a_client_its_spf_allows(stack: Stack) -> None:
    """allow.verified_senders: the partner's own server is let in unscored; a forger who
    writes the partner's address from elsewhere fails SPF and is judged (here: refused)."""
    real = _send(stack, "ivan@partner.example", "from the partner")
    assert real.end_of_data is not None and real.end_of_data.code == 250, real
    line = stack.spamgate.wait_for_decision(**{"from": "<ivan@partner.example>"})
    assert line["allowed_by"] == "verified_sender:@partner.example(spf)", line
    forged = _send(stack, "judy@partner.example", "forged partner", client="192.0.2.77")
    [(_, reply)] = forged.rcpts
    assert reply.code == 550, forged
    line = stack.spamgate.wait_for_decision(**{"from": "<judy@partner.example>"})
    assert (line["spf"], line.get("allowed_by", "")) == ("fail", ""), line


def test_a_plain_sender_entry_lets_in_whoever_writes_the_address(stack: Stack) -> None:
    """Why the plain form is forgeable: nothing checks that MAIL FROM is true."""
    result = _send(stack, "anyone@plain-partner.example", "plain allow", client="192.0.2.78")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.spamgate.wait_for_decision(**{"from": "<anyone@plain-partner.example>"})
    assert line["allowed_by"] == "sender:@plain-partner.example", line
