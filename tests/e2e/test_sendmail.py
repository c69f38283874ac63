"""spamgate behind a real Sendmail: Debian's sendmail, unpacked into a cache, listens on a
loopback port with spamgate as its INPUT_MAIL_FILTER and relays to an smtp-sink.

The client is 127.0.0.1, a trusted network, so no DNS list is asked: the refusals come from
a header rule (at end of message) and the deny list (at RCPT TO).
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.processes import LOOPBACK, free_port, group_members
from tests.harness.rawsmtp import converse
from tests.harness.sendmail import (
    MailFilter,
    Sendmail,
    SendmailUnavailableError,
    queue_id,
    unpacked_sendmail,
)
from tests.harness.sink import SmtpSink
from tests.harness.smtp import Reply, build_message

pytestmark = pytest.mark.e2e

# resolver.nameservers points at a port nothing listens on: nothing may leave the machine;
# no status file either (the default is under /run).
POLICY = """\
listen: inet:{port}@127.0.0.1
resolver:
  nameservers: ["127.0.0.1:{dns_port}"]
  deadline: 0.5
health: {{status_file: ""}}
thresholds: {{greylist: null}}  # greylisting is tests/e2e/test_greylisting.py's
rules:
  - name: SUBJECT_BAD
    score: 20
    description: bad subject
    header: {{name: Subject, matches: '(?i)forbidden'}}
deny:
  senders: ["@denied.example"]
"""

SENDER = "sender@client.example"
RCPT = "user@example.com"


@dataclass
class SendmailStack:
    sink: SmtpSink
    spamgate: SpamgateDaemon
    sendmail: Sendmail


@dataclass(frozen=True)
class Submission:
    rcpt: Reply
    end_of_data: Reply | None  # None when the recipient was refused


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendmailStack]:
    try:
        tree = unpacked_sendmail()
    except SendmailUnavailableError as exc:
        pytest.skip(f"no Sendmail to test with: {exc}")
    workdir: Path = tmp_path_factory.mktemp("sendmail")
    port = free_port()
    spamgate = SpamgateDaemon(workdir, POLICY.format(port=port, dns_port=free_port()), port)
    milter = MailFilter("spamgate", f"inet:{port}@{LOOPBACK}")
    pids = []
    with ExitStack() as stack:
        sink = stack.enter_context(SmtpSink(workdir))
        stack.enter_context(spamgate)
        try:
            # No macro settings: spamgate asks Sendmail for the macros it reads itself.
            sendmail = Sendmail(workdir, tree, filters=[milter], relay_port=sink.port)
        except SendmailUnavailableError as exc:
            pytest.skip(f"Sendmail cannot run here: {exc}")
        stack.enter_context(sendmail)
        pids = [sink.pid, spamgate.pid, sendmail.pid]
        yield SendmailStack(sink, spamgate, sendmail)
    # Every process, and everything it started, is gone.
    assert [pid for pid in pids if group_members(pid)] == []


def submit(port: int, *, mail_from: str, subject: str) -> Submission:
    """One SMTP session to Sendmail: EHLO, MAIL, one RCPT, DATA if the RCPT was accepted."""
    message = build_message(mail_from=mail_from, to=[RCPT], subject=subject)
    with smtplib.SMTP(LOOPBACK, port, local_hostname="mail.client.example", timeout=30) as smtp:
        assert smtp.ehlo()[0] == 250
        code, text = smtp.mail(mail_from)
        assert code == 250, text
        rcpt = _reply(*smtp.rcpt(RCPT))
        if rcpt.code != 250:
            return Submission(rcpt, None)
        try:
            end_of_data = _reply(*smtp.data(message))
        except smtplib.SMTPDataError as exc:
            end_of_data = _reply(exc.smtp_code, exc.smtp_error)
        return Submission(rcpt, end_of_data)


def _reply(code: int, text: bytes | str) -> Reply:
    return Reply(code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def decision_id(reply_text: str) -> str:
    assert reply_text.endswith(")") and "(id " in reply_text, reply_text
    return reply_text.rsplit("(id ", 1)[1].rstrip(")")


def test_sendmail_runs_with_the_private_configuration(stack: SendmailStack) -> None:
    sendmail = stack.sendmail
    assert sendmail.greeting.startswith("220 sendmail.spamgate.test ESMTP Sendmail 8.")
    cf = sendmail.cf_path.read_text()
    assert f"Xspamgate, S=inet:{stack.spamgate.port}@127.0.0.1, F=T, T=C:10s;S:10s;R:20s;E:1m" in cf
    assert "O InputMailFilters=spamgate" in cf
    assert f"O DaemonPortOptions=Family=inet, Name=MTA, Port={sendmail.port}, Addr=127.0.0.1" in cf


def test_clean_message_is_accepted_and_tagged(stack: SendmailStack) -> None:
    result = submit(stack.sendmail.port, mail_from=SENDER, subject="clean via sendmail")
    assert result.end_of_data is not None
    assert result.end_of_data.code == 250, result.end_of_data
    qid = queue_id(result.end_of_data.text)
    assert qid is not None, result.end_of_data
    delivered = stack.sink.wait_for_message(
        lambda m: m.message["Subject"] == "clean via sendmail",
        "the clean message at the sink",
        timeout=10,
    )
    assert delivered.rcpts == (RCPT,)
    assert delivered.message.get_all("X-Spam-Status") == ["No, score=0.0 hits=none"]
    assert delivered.message.get_all("X-Spam-Score") == ["0.0"]
    # Sendmail's queue id reached spamgate (the `i` macro it asked for at end of message).
    decision = stack.spamgate.wait_for_decision(queue=qid)
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "eom",
        "accept",
        "accept",
    )
    assert decision["client"] == "127.0.0.1"
    assert decision["helo"] == "mail.client.example"
    assert decision["rcpt"] == f"<{RCPT}>"
    assert decision["lists_ignored"] == "trusted"


def test_header_rule_rejects_at_end_of_data(stack: SendmailStack) -> None:
    result = submit(stack.sendmail.port, mail_from=SENDER, subject="a FORBIDDEN offer")
    assert result.rcpt.code == 250
    assert result.end_of_data is not None
    assert result.end_of_data.code == 550, result.end_of_data
    assert result.end_of_data.text.startswith("5.7.1 Message refused: bad subject (id ")
    decision = stack.spamgate.wait_for_decision(id=decision_id(result.end_of_data.text))
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "eom",
        "reject",
        "reject",
    )
    assert decision["hits"] == "SUBJECT_BAD:20"
    # Sendmail's queue id reached spamgate for the refused message too; nothing of it stays
    # in the queue and nothing reaches the sink.
    assert decision["queue"] != "NOQUEUE"
    assert not [p for p in stack.sendmail.queue_files() if p.name.endswith(decision["queue"])]
    assert all(m.message["Subject"] != "a FORBIDDEN offer" for m in stack.sink.messages())


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\r\nno headers at all\r\n", id="no-headers"),
        # Like Postfix, Sendmail takes a line whose name has an 8-bit byte for the body:
        # the milter sees no header at all (so pymilter never has to decode such a name).
        pytest.param(b"X-\xff\xfe: v\r\n\r\nbody\r\n", id="8bit-header-name-only"),
    ],
)
def test_message_without_readable_headers_is_answered_at_once(
    stack: SendmailStack, content: bytes
) -> None:
    # Regression: with end of headers negotiated away, Sendmail sent end of message straight
    # after DATA, which libmilter's state table does not allow: it aborted, never answered,
    # and Sendmail said 451 4.3.2 after its milter read timeout (R:20s here).
    commands = [
        b"EHLO mail.client.example\r\n",
        f"MAIL FROM:<{SENDER}>\r\n".encode(),
        f"RCPT TO:<{RCPT}>\r\n".encode(),
        b"DATA\r\n",
        content + b".\r\n",
        b"QUIT\r\n",
    ]
    conversation = converse(stack.sendmail.port, commands, timeout=30)
    assert conversation.end_of_data.code == 250, conversation
    assert conversation.elapsed < 5
    qid = queue_id(conversation.end_of_data.text)
    assert qid is not None
    decision = stack.spamgate.wait_for_decision(queue=qid)
    assert (decision["stage"], decision["enforced"]) == ("eom", "accept")


def test_denied_sender_is_refused_at_rcpt(stack: SendmailStack) -> None:
    result = submit(stack.sendmail.port, mail_from="bulk@denied.example", subject="denied")
    assert result.rcpt.code == 550, result.rcpt
    # Sendmail puts the recipient before spamgate's text at RCPT TO.
    assert result.rcpt.text.startswith(f"5.7.1 <{RCPT}>... Refused by local policy (id ")
    assert result.end_of_data is None
    decision = stack.spamgate.wait_for_decision(id=decision_id(result.rcpt.text))
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "rcpt",
        "reject",
        "reject",
    )
    assert decision["denied_by"] == "sender:@denied.example"
    assert decision["refused"] == f"<{RCPT}>"


def test_mail_is_tempfailed_while_spamgate_is_down(stack: SendmailStack, tmp_path: Path) -> None:
    # F=T: with no filter listening, Sendmail refuses the transaction for now (the sender retries).
    down = MailFilter("spamgate", f"inet:{free_port()}@{LOOPBACK}")
    sendmail = Sendmail(tmp_path, stack.sendmail.tree, filters=[down], relay_port=stack.sink.port)
    with sendmail, smtplib.SMTP(LOOPBACK, sendmail.port, timeout=30) as smtp:
        assert smtp.ehlo()[0] == 250
        code, text = smtp.mail(SENDER)
    assert (code, text) == (451, b"4.3.2 Please try again later")
