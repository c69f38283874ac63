"""Hostile input through the real Postfix: every session ends in a reply, never a timeout.

What tests/adapter/test_hostile_input.py proves of the adapter and the session with generated input,
these tests prove of the whole path, with the bytes a client can really put on the wire
(tests/harness/rawsmtp.py sends them unchanged): odd and non-UTF-8 HELOs, 8-bit, NUL, CR and
LF in headers, a 1 MB header, 10,000 headers, encoded-words that do not decode, odd senders,
IPv6 clients, and a Postfix that sends no macros. Postfix itself stops some of them; each
test says which and asserts what the client sees.

Every session must end within SESSION_BUDGET seconds: a milter that stalls the protocol shows
up as a timeout (the client waits longer than that, Postfix's own milter timeouts longer
still). After every test the daemon log is checked: each line is one well-formed log record
(no forged lines, no traceback, nothing pymilter printed) and there is no ERROR.

The list zone holds an access key (`s3cr3tkey`): it must reach neither a reply nor a header.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from spamgate.core.decisionlog import quote
from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port
from tests.harness.rawsmtp import Conversation, converse, xclient
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.e2e

ZONE = "s3cr3tkey.zen.dq.test"
SECRETS = ("s3cr3tkey", "zen.dq.test", "dq.test")
SESSION_BUDGET = 5.0
CLIENT_TIMEOUT = 10.0

ZONES = [
    Zone(ZONE, "ip4set", "127.0.0.2\n192.0.2.2 :127.0.0.2:\n192.0.2.3 :127.0.0.3:\n"),
    Zone(ZONE, "ip6trie", "2001:db8::2 :127.0.0.2:\n"),
]

POLICY = """\
listen: inet:{port}@127.0.0.1
resolver:
  nameservers: ["127.0.0.1:{dns_port}"]
  query_timeout: 0.3
  deadline: 1.0
trusted_networks: [127.0.0.0/8, "::1/128"]
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
thresholds: {{tag: 3, tempfail: 6, reject: 10}}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: {zone}
    hits:
      - {{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}}
      - {{name: ZEN_CSS, codes: [127.0.0.3], score: 3, description: listed in the Example CSS}}
rules:
  - {{name: HELO_SHORT, score: 1, description: the HELO is not a FQDN, helo: not_fqdn}}
  - {{name: HELO_BARE_IP, score: 1, description: "a bare IP HELO (100% forged)", helo: bare_ip}}
  - name: SUBJECT_PHARMA
    score: 10
    description: the Subject advertises pharmacy products
    header: {{name: Subject, matches: '(?i)\\bv[i1]agra\\b'}}
deny:
  helo_names: [denied.example]
  reply: "Refused by local policy for {{client}} (id {{id}})"
"""

# Postfix's listeners, each consulting the one spamgate daemon:
# - smtp: the defaults of a modern Postfix (smtputf8_enable = yes);
# - legacy: smtputf8_enable = no (compatibility_level < 1, or set so): 8-bit commands pass;
# - v2: milter protocol 2 (no "no reply" events: every callback is answered), every
#   milter_*_macros empty, and smtputf8_enable = no.
NO_MACROS = {
    f"milter_{stage}_macros": ""
    for stage in (
        "connect",
        "helo",
        "mail",
        "rcpt",
        "data",
        "end_of_header",
        "end_of_data",
        "unknown_command",
    )
}
LISTENER_OPTIONS = {
    "smtp": {},
    "legacy": {"smtputf8_enable": "no"},
    "v2": {"milter_protocol": "2", "smtputf8_enable": "no", **NO_MACROS},
}

_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) \S")
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass
class HostileStack:
    postfix: PostfixInstance
    spamgate: SpamgateDaemon
    sink: SmtpSink
    metrics_port: int

    def converse(self, commands: list[bytes], listener: str = "smtp") -> Conversation:
        conversation = converse(self.postfix.ports[listener], commands, timeout=CLIENT_TIMEOUT)
        assert conversation.elapsed < SESSION_BUDGET, conversation
        return conversation

    def decision(self, conversation: Conversation) -> dict[str, str]:
        """The decision line of the conversation's transaction (by queue id or decision id)."""
        queued = [_QUEUED.search(e.text) for e in conversation.exchanges]
        queue_ids = [m.group(1) for m in queued if m]
        if queue_ids:
            return self.spamgate.wait_for_decision(queue=queue_ids[-1])
        (refusal, *_) = conversation.milter_replies
        return self.spamgate.wait_for_decision(id=refusal.text.rsplit("(id ", 1)[1].rstrip(")"))

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    with ExitStack() as running:
        dns = running.enter_context(Rbldnsd(workdir, ZONES))
        sink = running.enter_context(SmtpSink(workdir))
        port, metrics_port = free_port(), free_port()
        policy = POLICY.format(port=port, dns_port=dns.port, metrics_port=metrics_port, zone=ZONE)
        spamgate = running.enter_context(SpamgateDaemon(workdir, policy, port))
        listeners = {
            name: Listener(milters=spamgate.postfix_address, options=options)
            for name, options in LISTENER_OPTIONS.items()
        }
        postfix = running.enter_context(
            PostfixInstance(workdir, relay_port=sink.port, listeners=listeners)
        )
        yield HostileStack(postfix, spamgate, sink, metrics_port)


@pytest.fixture(autouse=True)
def log_stays_clean(stack: HostileStack) -> Iterator[None]:
    """What the daemon logged during the test: records only, no traceback, no ERROR."""
    before = len(stack.spamgate.log_text().splitlines())
    yield
    for line in stack.spamgate.log_text().splitlines()[before:]:
        assert _LOG_RECORD.match(line), f"not one log record: {line!r}"
        assert "Traceback" not in line and "UnicodeDecodeError" not in line, line


def message(subject: bytes = b"hostile", headers: bytes = b"", body: bytes = b"body\r\n") -> bytes:
    """A message with the end-of-data dot; `headers` go first, raw (CRLF included)."""
    return (
        headers
        + b"From: a@client.example\r\nTo: user@example.com\r\nSubject: "
        + subject
        + b"\r\n\r\n"
        + body
        + b".\r\n"
    )


def session(
    *,
    helo: bytes | None = b"mail.client.example",
    sender: bytes = b"<a@client.example>",
    addr: str = "192.0.2.50",
    content: bytes | None = None,
) -> list[bytes]:
    """EHLO, XCLIENT as `addr`, EHLO `helo` (none if None), MAIL, RCPT, DATA, QUIT."""
    commands = [b"EHLO harness.localhost\r\n", xclient(addr)]
    if helo is not None:
        commands.append(b"EHLO " + helo + b"\r\n")
    commands += [b"MAIL FROM:" + sender + b"\r\n", b"RCPT TO:<user@example.com>\r\n"]
    commands += [b"DATA\r\n", content if content is not None else message()]
    return [*commands, b"QUIT\r\n"]


def answered(conversation: Conversation) -> None:
    """Every command got a reply with a code: nothing was left hanging or cut off."""
    for exchange in conversation.exchanges:
        assert 200 <= exchange.code < 600, (exchange, conversation)


def logged(value: bytes) -> str:
    """How the decision line shows a value the client sent (as pymilter hands it over)."""
    return quote(value.decode("utf-8", "surrogateescape"))


# -- HELO -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helo", "hits"),
    [
        pytest.param(b".".join([b"a" * 60] * 4) + b".example", "", id="long-fqdn"),
        pytest.param(b"h" * 1000, "HELO_SHORT:1", id="overlong"),
        pytest.param(b"[192.0.2.50]", "", id="ipv4-literal"),
        pytest.param(b"[IPv6:2001:db8::50]", "", id="ipv6-literal"),
        pytest.param(b"192.0.2.50", "HELO_BARE_IP:1", id="bare-ipv4"),
        pytest.param(b"[<%s%n%%>\"'`{}]", "HELO_SHORT:1", id="bracketed-junk"),
        pytest.param("bücher.example".encode(), "", id="utf8"),
        pytest.param(b"localhost", "HELO_SHORT:1", id="single-label"),
    ],
)
def test_odd_helo_ends_in_a_reply_and_is_judged_as_sent(
    stack: HostileStack, helo: bytes, hits: str
) -> None:
    conversation = stack.converse(session(helo=helo))
    answered(conversation)
    assert conversation.reply_to(b"EHLO " + helo).code == 250
    assert conversation.end_of_data.code == 250
    decision = stack.decision(conversation)
    assert decision["helo"] == logged(helo)
    assert decision.get("hits", "") == hits


def test_no_helo_at_all_is_judged_without_one(stack: HostileStack) -> None:
    conversation = stack.converse(session(helo=None))
    answered(conversation)
    assert conversation.end_of_data.code == 250
    decision = stack.decision(conversation)
    assert "helo" not in decision and decision["client"] == "192.0.2.50"


def test_non_utf8_helo_is_refused_by_a_postfix_with_smtputf8(stack: HostileStack) -> None:
    # smtpd checks every command for valid UTF-8 when smtputf8_enable = yes (smtpd.c: "bad
    # UTF-8 syntax"), so such a HELO never reaches the milter; the session goes on without it.
    conversation = stack.converse(session(helo=b"h\xff\xfe.example"))
    answered(conversation)
    assert conversation.reply_to(b"EHLO h\xff").code == 500
    assert conversation.end_of_data.code == 250
    assert "helo" not in stack.decision(conversation)


@pytest.mark.parametrize("listener", ["legacy", "v2"])
def test_non_utf8_helo_that_postfix_passes_on_is_read_byte_for_byte(
    stack: HostileStack, listener: str
) -> None:
    # With smtputf8_enable = no, Postfix hands the bytes on; pymilter's C layer cannot decode
    # them and never calls our hello(). spamgate reads them from pymilter's exception instead.
    # (A pymilter milter whose HELO callback answers gets "451 4.3.0 pymilter: untrapped
    # exception" at MAIL instead; spamgate's is a no-reply callback on either protocol.)
    before = stack.metric('spamgate_pymilter_failures_total{callback="hello"}')
    helo = b"h\xff\xfe"
    conversation = stack.converse(session(helo=helo), listener=listener)
    answered(conversation)
    assert conversation.reply_to(b"EHLO h\xff").code == 250
    assert conversation.end_of_data.code == 250
    decision = stack.decision(conversation)
    assert decision["helo"] == '"h\\xff\\xfe"'
    assert decision["hits"] == "HELO_SHORT:1"  # judged like any other HELO, not skipped
    assert "is not UTF-8, which pymilter cannot pass on" in stack.spamgate.log_text()
    after = stack.metric('spamgate_pymilter_failures_total{callback="hello"}')
    assert after == before + 1


def test_concurrent_sessions_each_keep_their_own_helo(stack: HostileStack) -> None:
    # The bytes of an undecodable HELO reach spamgate through sys.excepthook, which finds its
    # session by pymilter's per-session thread state: under concurrency, no HELO may land in
    # another session.
    helos = [b"h\xff%d" % i if i % 2 else b"mail%d.client.example" % i for i in range(12)]

    def run(helo: bytes) -> tuple[bytes, Conversation]:
        subject = b"concurrent " + helo.hex().encode()
        return helo, stack.converse(session(helo=helo, content=message(subject)), "legacy")

    with futures.ThreadPoolExecutor(len(helos)) as pool:
        results = list(pool.map(run, helos, timeout=30))
    for helo, conversation in results:
        answered(conversation)
        assert stack.decision(conversation)["helo"] == logged(helo)


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "subject", "final"),
    [
        pytest.param(b"X-Odd: caf\xe9 \xff\xfe \xc3\r\n", b"8-bit value", 250, id="8bit-value"),
        pytest.param(b"X-Nul: a\x00b\r\n", b"nul", 250, id="nul"),
        pytest.param(b"X-Cr: a\rb\r\n", b"bare cr", 250, id="bare-cr"),
        pytest.param(b"X-Lf: a\nX-Second: b\r\n", b"bare lf", 250, id="bare-lf"),
        # Postfix's is_header() takes no 8-bit byte in a name: this line ends the headers
        # and starts the body, so the milter never sees an 8-bit header name.
        pytest.param(b"X-\xff\xfe: v\r\n", b"8-bit name", 250, id="8bit-name"),
        pytest.param(b"", b"=?utf-8?B?!!!?=", 250, id="bad-base64-word"),
        pytest.param(b"", b"=?x-unknown?Q?v=69agra?=", 550, id="unknown-charset-word"),
        pytest.param(b"", b"=?utf-8?q?=FF=FE?= =?utf-8?q?", 250, id="undecodable-word"),
        pytest.param(b"", b"=?utf-8?b?dmlhZ3Jh?=", 550, id="encoded-viagra"),
        pytest.param(b"X-Mixed: \xff viagra\r\n", b"viagra \xff\x00\r", 550, id="8bit-subject"),
    ],
)
def test_odd_headers_end_in_a_reply_and_the_message_is_judged(
    stack: HostileStack, headers: bytes, subject: bytes, final: int
) -> None:
    conversation = stack.converse(session(content=message(subject, headers)))
    answered(conversation)
    assert conversation.end_of_data.code == final
    decision = stack.decision(conversation)
    assert decision["stage"] == "eom"
    assert ("SUBJECT_PHARMA" in decision.get("hits", "")) == (final == 550)


def test_a_1mb_header_value_is_cut_by_postfix_and_the_headers_after_it_still_count(
    stack: HostileStack,
) -> None:
    # Postfix keeps header_size_limit (102400) bytes of a header and drops the rest.
    folded = b"\r\n ".join([b"x" * 990] * 1060)  # 1,050,000 bytes of value, RFC 5322 lines
    conversation = stack.converse(
        session(content=message(b"viagra after a big one", b"X-Big: " + folded + b"\r\n"))
    )
    answered(conversation)
    assert conversation.end_of_data.code == 550
    assert "SUBJECT_PHARMA" in stack.decision(conversation)["hits"]


def test_ten_thousand_headers_end_in_a_reply_and_the_last_one_counts(
    stack: HostileStack,
) -> None:
    many = b"".join(b"X-Filler-%05d: value %d\r\n" % (i, i) for i in range(10_000))
    conversation = stack.converse(session(content=message(b"viagra at the end", many)))
    answered(conversation)
    assert conversation.end_of_data.code == 550
    assert "SUBJECT_PHARMA" in stack.decision(conversation)["hits"]


# -- senders and clients --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param(b'<"john..doe"@client.example>', id="quoted"),
        pytest.param(b"<user@xn--bcher-kva.example>", id="idn-a-label"),
        pytest.param("<jörg@bücher.example> SMTPUTF8".encode(), id="smtputf8"),
        pytest.param(b"<>", id="null-sender"),
        pytest.param(b"<%s%n%%@client.example>", id="percent"),
    ],
)
def test_odd_senders_end_in_a_reply_and_are_logged_as_sent(
    stack: HostileStack, sender: bytes
) -> None:
    conversation = stack.converse(session(sender=sender))
    answered(conversation)
    assert conversation.reply_to(b"MAIL").code == 250
    assert conversation.end_of_data.code == 250
    address = sender.split(b" ")[0]
    assert stack.decision(conversation)["from"] == logged(address)


def test_non_utf8_sender_is_refused_by_postfix_before_the_milter(stack: HostileStack) -> None:
    for listener, code in (("smtp", 500), ("legacy", 501)):
        conversation = stack.converse(session(sender=b"<a\xff@client.example>"), listener)
        answered(conversation)
        assert conversation.reply_to(b"MAIL").code == code


@pytest.mark.parametrize(
    ("addr", "xclient_code", "rcpt_code", "client"),
    [
        pytest.param("IPV6:2001:db8::2", 220, 550, "2001:db8::2", id="ipv6-listed"),
        pytest.param("IPV6:2001:db8::50", 220, 250, "2001:db8::50", id="ipv6-clean"),
        # Postfix's XCLIENT turns an IPv4-mapped address into the IPv4 address it holds.
        pytest.param("IPV6:::ffff:192.0.2.2", 220, 550, "192.0.2.2", id="ipv4-mapped"),
        # Postfix refuses a scoped address (501); the session stays the proxy's own.
        pytest.param("IPV6:fe80::1%lo", 501, 250, "127.0.0.1", id="scoped"),
    ],
)
def test_ipv6_clients_end_in_a_reply(
    stack: HostileStack, addr: str, xclient_code: int, rcpt_code: int, client: str
) -> None:
    conversation = stack.converse(session(addr=addr))
    answered(conversation)
    assert conversation.reply_to(b"XCLIENT").code == xclient_code
    assert conversation.reply_to(b"RCPT").code == rcpt_code
    assert stack.decision(conversation)["client"] == client


def test_empty_macro_lists_do_not_starve_spamgate_of_its_macros(stack: HostileStack) -> None:
    # spamgate asks for the macros it reads when it negotiates (SMFIR_SETSYMLIST), and Postfix
    # honours that whatever milter_*_macros say, on protocol 2 too (milter8.c offers
    # SMFIF_SETSYMLIST always): the queue id still reaches the decision line.
    conversation = stack.converse(session(), listener="v2")
    answered(conversation)
    assert conversation.end_of_data.code == 250
    queue_id = _QUEUED.search(conversation.end_of_data.text)
    assert queue_id is not None
    assert stack.decision(conversation)["queue"] == queue_id.group(1)
    listed = stack.converse(session(addr="192.0.2.2"), listener="v2")
    answered(listed)
    assert listed.reply_to(b"RCPT").code == 550


# -- reply and log hygiene ------------------------------------------------------------------

HOSTILE_HELO = b"%s%n%%-\"quoted\"-'x'-" + "ünï".encode() + b"-" + b"y" * 300
HOSTILE_SENDER = b'<"%s\\"q%%"@client.example>'


def test_attacker_text_never_reaches_a_reply(stack: HostileStack) -> None:
    conversation = stack.converse(
        session(helo=b"192.0.2.2", sender=HOSTILE_SENDER, addr="192.0.2.2")
    )
    answered(conversation)
    rcpt = conversation.reply_to(b"RCPT")
    assert rcpt.code == 550
    # Our % survives libmilter once (doubled for it, shown single); theirs never shows.
    assert rcpt.text.startswith(
        "5.7.1 Message refused: listed in the Example SBL; a bare IP HELO (100% forged) (id "
    )
    hostile = stack.converse(session(helo=HOSTILE_HELO, sender=HOSTILE_SENDER, addr="192.0.2.2"))
    answered(hostile)
    denied = stack.converse(session(helo=b"denied.example", sender=HOSTILE_SENDER))
    answered(denied)
    assert denied.reply_to(b"RCPT").text.startswith(
        "5.7.1 Refused by local policy for 192.0.2.50 (id "
    )
    replies = [*conversation.milter_replies, *hostile.milter_replies, *denied.milter_replies]
    assert len(replies) == 3
    for reply in replies:
        line = b" ".join(reply.lines)
        assert re.fullmatch(rb"[\x20-\x7e]{1,512}", line), line
        for fragment in ("%s", "%n", "quoted", "yyyy", "client.example", *SECRETS):
            assert fragment not in reply.text, (fragment, reply.text)


def test_a_list_zone_never_reaches_a_reply_or_a_header(stack: HostileStack) -> None:
    tagged = stack.converse(session(addr="192.0.2.3", content=message(b"zone check tagged")))
    refused = stack.converse(session(addr="192.0.2.2"))
    answered(tagged)
    answered(refused)
    assert tagged.end_of_data.code == 250
    delivered = stack.sink.wait_for_message(
        lambda m: m.message["Subject"] == "zone check tagged", "the tagged message"
    ).message
    status = delivered["X-Spam-Status"]
    assert status is not None and status.startswith("Yes, ") and "ZEN_CSS" in status
    ours = [f"{k}: {v}" for k, v in delivered.items() if k.lower().startswith("x-spam")]
    shown = [*ours, *(e.text for e in tagged.exchanges), *(e.text for e in refused.exchanges)]
    assert refused.milter_replies
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, (secret, text)


def test_a_newline_or_cr_in_client_text_cannot_forge_a_log_line(stack: HostileStack) -> None:
    forged = b"2026-01-01 00:00:00,000 INFO FORGED: decision id=forged action=accept"
    conversation = stack.converse(
        session(
            helo=b"x\r" + forged,
            content=message(b"forge\r" + forged, b"X-Forge: a\r" + forged + b"\r\n"),
        )
    )
    answered(conversation)
    decision = stack.decision(conversation)
    # smtpd splits a command at blanks, CR included, and joins a HELO's words with a space.
    assert decision["helo"] == logged(b"x " + forged)
    assert decision["id"] != "forged"
    # The autouse check proves every log line is a record; and no record is the forged one.
    assert "FORGED: decision" not in "\n".join(
        line[:60] for line in stack.spamgate.log_text().splitlines()
    )
