"""Every kind of rule, list and policy setting, end to end through a real Postfix.

One spamgate runs a policy with a rule of each kind; each test sends mail built to trip one
(or a known few) and checks what an SMTP client and the recipient see: reply codes and texts,
the X-Spam-Status header at the sink, the hold queue, and the decision log.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port
from tests.harness.sink import SinkMessage, SmtpSink
from tests.harness.smtp import SendResult, send

pytestmark = pytest.mark.e2e

ZONES = [
    Zone(
        "zen.test",
        "ip4set",
        "127.0.0.2\n192.0.2.2 :127.0.0.2:\n192.0.2.10 :127.0.0.10:\n192.0.2.30 :127.0.0.2:\n",
    ),
    Zone(
        "dbl.test",
        "dnset",
        "test :127.0.1.2:\nspam.example :127.0.1.2:\n.phish.example :127.0.1.4:\n",
    ),
    Zone(
        "client.example",
        "generic",
        "@ MX 10 mail.client.example\nmail A 192.0.2.50\nnullmx MX 0 .\n",
    ),
]

POLICY = r"""
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: ""}}
thresholds: {{tag: 3, greylist: null, quarantine: 8, tempfail: null, reject: 10}}
replies:
  reject: "Go away: {{reasons}} [{{id}}]"
ip_lists:
  - name: ZEN
    zone: zen.test
    hits:
      - {{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the test SBL}}
      - {{name: ZEN_PBL, codes: [127.0.0.10], score: 7, description: listed in the test PBL}}
domain_lists:
  - name: DBL
    display: Test DBL
    zone: dbl.test
    hits:
      - {{name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}}
      - {{name: DBL_PHISH, codes: [127.0.1.4], score: 10, description: a phishing domain}}
rules:
  - {{name: HELO_BARE_IP, score: 1, description: bare IP HELO, helo: bare_ip}}
  - {{name: HELO_NOT_FQDN, score: 1, description: HELO not FQDN, helo: not_fqdn}}
  - {{name: HELO_OURS, score: 1, description: HELO claims to be us, helo: ours}}
  - {{name: HELO_UNRESOLVABLE, score: 1, description: HELO does not resolve,
      helo: unresolvable}}
  - {{name: HELO_NOT_PTR, score: 1, description: HELO not the PTR domain,
      helo: not_ptr_domain}}
  - {{name: HELO_FRIEND, score: 1, description: HELO says friend, helo_matches: '(?i)^friend'}}
  - {{name: RDNS_MISSING, score: 1, description: no reverse DNS, rdns: missing}}
  - {{name: RDNS_UNCONFIRMED, score: 1, description: reverse DNS unconfirmed,
      rdns: unconfirmed}}
  - {{name: RDNS_DYNAMIC, score: 1, description: dynamic address, rdns: dynamic}}
  - {{name: RDNS_BAD, score: 1, description: bad network, rdns_matches: '\.bad\.example$'}}
  - {{name: NULL_SENDER, score: 1, description: null sender, sender: empty}}
  - {{name: SENDER_UNRESOLVABLE, score: 1, description: sender domain cannot receive mail,
      sender: unresolvable}}
  - {{name: SENDER_BULK, score: 1, description: bulk sender, sender_matches: '^bulk-'}}
  - {{name: SPAMTRAP, score: 10, description: mail to a spam trap,
      recipient_matches: '^trap@'}}
  - {{name: MANY_RCPTS, score: 1, description: many recipients, recipients_over: 3}}
  - {{name: SUBJECT_PHARMA, score: 1, description: pharmacy spam,
      header: {{name: Subject, matches: '(?i)\bviagra\b'}}}}
  - {{name: RAW_FF, score: 1, description: a raw 0xff byte,
      header: {{name: X-Raw, matches_raw: '\xff'}}}}
  - {{name: EVIL_PATTERN, score: 1, description: catastrophic pattern,
      header: {{name: X-Evil, matches: '^(a+)+$'}}}}
  - {{name: NO_DATE, score: 1, description: no Date, header: {{name: Date, missing: true}}}}
  - {{name: MANY_RECEIVED, score: 1, description: many Received,
      header: {{name: Received, count_over: 2}}}}
  - {{name: BAD_DATE, score: 1, description: bad Date, header: {{name: Date, malformed: true}}}}
  - {{name: FUTURE_DATE, score: 1, description: dated in the future, date_ahead_hours: 24}}
  - {{name: OLD_DATE, score: 1, description: dated long ago, date_behind_days: 30}}
  - {{name: FROM_MISMATCH, score: 1, description: From not the sender domain,
      from_domain: not_sender_domain}}
  - {{name: BOT, score: 1, description: bot-like,
      composite: {{all: [HELO_NOT_FQDN, RDNS_MISSING]}}}}
  - {{name: ON_TRIAL, score: 50, description: a rule on trial, mode: observe,
      header: {{name: Subject, matches: '(?i)trial'}}}}
  - {{name: COMBO_WORD, score: 0, description: the word combo,
      header: {{name: Subject, matches: '(?i)combo'}}}}
  - {{name: TRIAL_COMBO, score: 50, description: a combination with a rule on trial,
      composite: {{all: [ON_TRIAL, COMBO_WORD]}}}}
allow:
  clients: [192.0.2.30/32]
  senders: ["file:{allow_file}"]
deny:
  senders: ["@denied.example"]
  reply: "Not from you (id {{id}})"
recipient_policies:
  - name: lenient
    recipients: ["@example.net"]
    thresholds: {{tag: 3, greylist: null, quarantine: null, tempfail: null, reject: 100}}
"""

CLEAN = "192.0.2.60"
NAME = "mail.client.example"  # forward-confirmed reverse name, through XCLIENT


@dataclass
class PolicyStack:
    postfix: PostfixInstance
    sink: SmtpSink
    spamgate: SpamgateDaemon

    def send(
        self,
        *,
        client: str = CLEAN,
        name: str | None = NAME,
        reverse_name: str | None = NAME,
        helo: str = NAME,
        sender: str = "someone@client.example",
        rcpts: tuple[str, ...] = ("user@example.com",),
        message: bytes | None = None,
        subject: str = "",
    ) -> SendResult:
        if message is None:
            message = build(subject=subject or "hello", sender=sender)
        return send(
            self.postfix.ports["smtp"],
            client_addr=client,
            client_name=name,
            reverse_name=reverse_name,
            helo=helo,
            mail_from=sender,
            rcpts=list(rcpts),
            message_bytes=message,
            timeout=30,
        )

    def delivered(self, subject: str) -> SinkMessage:
        return self.sink.wait_for_message(
            lambda m: m.message["Subject"] == subject, f"message {subject!r} at the sink"
        )

    def hits_of(self, result: SendResult) -> set[str]:
        """The hit names in X-Spam-Status of the message `result` queued (found by queue id)."""
        queue_id = result.queue_id
        assert queue_id is not None, result
        delivered = self.sink.wait_for_message(
            lambda m: f" id {queue_id}" in str(m.message["Received"]),
            f"queue id {queue_id} at the sink",
        )
        status = delivered.message["X-Spam-Status"]
        assert status is not None, f"no X-Spam-Status on {queue_id}"
        names = re.search(r"hits=(\S*)", status)
        assert names is not None
        return set() if names[1] == "none" else set(names[1].split(","))


def build(
    *,
    subject: str,
    sender: str = "someone@client.example",
    headers: tuple[tuple[str, str], ...] | None = None,
    extra: bytes = b"",
) -> bytes:
    """A message with exactly the headers given (defaults: From, To, Subject, Date, ID)."""
    if headers is None:
        headers = (
            ("From", sender or "someone@client.example"),
            ("To", "user@example.com"),
            ("Subject", subject),
            ("Date", format_datetime(datetime.now(UTC))),
            ("Message-ID", f"<{abs(hash(subject))}@client.example>"),
        )
    head = b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
    return head + extra + b"\r\nbody\r\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyStack]:
    workdir: Path = tmp_path_factory.mktemp("policy")
    allow_file = workdir / "allow-senders"
    allow_file.write_text("# partners\n@friend.example\n")
    with Rbldnsd(workdir, ZONES) as dns, SmtpSink(workdir) as sink:
        port = free_port()
        policy = POLICY.format(port=port, dns=dns.port, allow_file=allow_file)
        with SpamgateDaemon(workdir, policy, port) as spamgate:
            listeners = {"smtp": Listener(milters=spamgate.postfix_address)}
            # Postfix adds a missing Date or Message-ID before milters see the message, for
            # clients matching local_header_rewrite_clients; here all clients are "remote".
            main_cf = {"local_header_rewrite_clients": ""}
            with PostfixInstance(
                workdir, relay_port=sink.port, listeners=listeners, main_cf=main_cf
            ) as postfix:
                yield PolicyStack(postfix, sink, spamgate)


# -- HELO and reverse DNS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helo", "name", "reverse", "expected"),
    [
        pytest.param("192.0.2.61", NAME, NAME, {"HELO_BARE_IP"}, id="helo-bare-ip"),
        pytest.param("[192.0.2.62]", NAME, NAME, set(), id="helo-bracketed-literal-is-fine"),
        pytest.param("mx.spamgate.test", NAME, NAME, {"HELO_OURS", "HELO_NOT_PTR"}, id="helo-ours"),
        pytest.param(
            "nope.client.example", NAME, NAME, {"HELO_UNRESOLVABLE"}, id="helo-unresolvable"
        ),
        pytest.param(
            "mail.client.example",
            "mail.other.test",
            "mail.other.test",
            {"HELO_NOT_PTR"},
            id="helo-not-ptr-domain",
        ),
        pytest.param(
            "friend.client.example",
            NAME,
            NAME,
            {"HELO_FRIEND", "HELO_UNRESOLVABLE"},
            id="helo-matches",
        ),
        pytest.param(NAME, None, "[UNAVAILABLE]", {"RDNS_MISSING"}, id="rdns-missing"),
        pytest.param(
            NAME, None, "gw.other.test", {"RDNS_UNCONFIRMED", "HELO_NOT_PTR"}, id="rdns-unconfirmed"
        ),
        pytest.param(
            NAME,
            "dsl-192-0-2-63.pool.isp.test",
            "dsl-192-0-2-63.pool.isp.test",
            {"RDNS_DYNAMIC", "HELO_NOT_PTR"},
            id="rdns-dynamic",
        ),
        pytest.param(
            NAME,
            "mx.bad.example",
            "mx.bad.example",
            {"RDNS_BAD", "HELO_NOT_PTR"},
            id="rdns-matches",
        ),
        pytest.param(
            "localhost",
            None,
            "[UNAVAILABLE]",
            {"HELO_NOT_FQDN", "RDNS_MISSING", "BOT"},
            id="composite",
        ),
    ],
)
def test_connection_rules(
    stack: PolicyStack, helo: str, name: str | None, reverse: str, expected: set[str]
) -> None:
    subject = f"connection {helo} {name} {reverse}"
    result = stack.send(helo=helo, name=name, reverse_name=reverse, subject=subject)
    assert [r.code for _, r in result.rcpts] == [250]
    assert stack.hits_of(result) == expected


# -- envelope ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        pytest.param("", {"NULL_SENDER"}, id="null-sender"),
        pytest.param("a@nope.client.example", {"SENDER_UNRESOLVABLE"}, id="nxdomain"),
        pytest.param("a@nullmx.client.example", {"SENDER_UNRESOLVABLE"}, id="null-mx"),
        pytest.param("a@client.example", set(), id="has-mx"),
        pytest.param("bulk-news@client.example", {"SENDER_BULK"}, id="sender-matches"),
    ],
)
def test_sender_rules(stack: PolicyStack, sender: str, expected: set[str]) -> None:
    subject = f"sender {sender or '<>'}"
    message = build(subject=subject, sender="someone@client.example")
    result = stack.send(sender=sender, message=message)
    assert [r.code for _, r in result.rcpts] == [250]
    assert stack.hits_of(result) == expected


def test_spamtrap_recipient_refuses_the_transaction(stack: PolicyStack) -> None:
    result = stack.send(rcpts=("trap@example.com", "user@example.com"), subject="trap")
    assert [r.code for _, r in result.rcpts] == [550, 550]
    _, reply = result.rcpts[0]
    assert reply.text.startswith("5.7.1 Go away: mail to a spam trap [")  # the reply template


def test_too_many_recipients(stack: PolicyStack) -> None:
    rcpts = tuple(f"u{n}@example.com" for n in range(4))
    result = stack.send(rcpts=rcpts, subject="many")
    assert [r.code for _, r in result.rcpts] == [250] * 4
    assert stack.hits_of(result) == {"MANY_RCPTS"}


# -- headers -----------------------------------------------------------------------------------


def _headers(subject: str, **changes: str | None) -> tuple[tuple[str, str], ...]:
    base = {
        "From": "someone@client.example",
        "To": "user@example.com",
        "Subject": subject,
        "Date": format_datetime(datetime.now(UTC)),
        "Message-ID": f"<{abs(hash(subject))}@client.example>",
    }
    base.update(changes)  # type: ignore[arg-type]
    return tuple((k, v) for k, v in base.items() if v is not None)


@pytest.mark.parametrize(
    ("subject", "changes", "extra", "expected"),
    [
        pytest.param(
            "=?utf-8?B?Y2hlYXAgVklBR1JBIG5vdw==?=",
            {},
            b"",
            {"SUBJECT_PHARMA"},
            id="rfc2047-decoded-match",
        ),
        pytest.param("raw byte", {}, b"X-Raw: caf\xff\r\n", {"RAW_FF"}, id="matches-raw"),
        pytest.param("no date", {"Date": None}, b"", {"NO_DATE"}, id="missing"),
        pytest.param(
            "received",
            {},
            b"Received: from a\r\nReceived: from b\r\nReceived: from c\r\n",
            {"MANY_RECEIVED"},
            id="count-over",
        ),
        pytest.param(
            "bad date", {"Date": "the day after tomorrow"}, b"", {"BAD_DATE"}, id="malformed"
        ),
        pytest.param(
            "future",
            {"Date": format_datetime(datetime.now(UTC) + timedelta(days=3))},
            b"",
            {"FUTURE_DATE"},
            id="date-ahead",
        ),
        pytest.param(
            "old",
            {"Date": format_datetime(datetime.now(UTC) - timedelta(days=90))},
            b"",
            {"OLD_DATE"},
            id="date-behind",
        ),
        pytest.param(
            "from mismatch", {"From": "boss@other.test"}, b"", {"FROM_MISMATCH"}, id="from-domain"
        ),
    ],
)
def test_header_rules(
    stack: PolicyStack,
    subject: str,
    changes: dict[str, str | None],
    extra: bytes,
    expected: set[str],
) -> None:
    message = build(subject=subject, headers=_headers(subject, **changes), extra=extra)
    result = stack.send(message=message)
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert stack.hits_of(result) == expected


def test_catastrophic_pattern_cannot_stall_a_session(stack: PolicyStack) -> None:
    # '^(a+)+$' backtracks exponentially in a backtracking engine on "aaa...ab"; RE2 is linear.
    extra = b"X-Evil: " + b"a" * 20000 + b"b\r\n"
    result = stack.send(message=build(subject="evil", extra=extra))
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert result.elapsed < 5
    assert stack.hits_of(result) == set()


def test_rule_on_trial_is_logged_but_does_not_count(stack: PolicyStack) -> None:
    result = stack.send(subject="a trial run")
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert stack.hits_of(result) == set()  # observed hits stay out of the header
    decision = stack.spamgate.wait_for_decision(queue=str(result.queue_id))
    assert decision["hits"] == "ON_TRIAL:50(observe)"
    assert decision["trial_action"] == "reject:50.0"
    assert (decision["action"], decision["score"]) == ("accept", "0.0")


def test_a_composite_of_a_rule_on_trial_is_on_trial_too(stack: PolicyStack) -> None:
    """It counted in full before issue 14: the trial refused mail through the composite."""
    result = stack.send(subject="a trial combo")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    assert stack.hits_of(result) == {"COMBO_WORD"}
    decision = stack.spamgate.wait_for_decision(queue=str(result.queue_id))
    assert decision["hits"] == "ON_TRIAL:50(observe),COMBO_WORD:0,TRIAL_COMBO:50(observe)"
    assert decision["trial_action"] == "reject:100.0"
    assert decision["action"] == "accept"


# -- domain lists ------------------------------------------------------------------------------


def test_listed_sender_domain_is_refused_at_rcpt(stack: PolicyStack) -> None:
    result = stack.send(sender="news@mail.spam.example", subject="dbl sender")
    ((_, reply),) = result.rcpts
    assert reply.code == 550
    assert "a spam domain" in reply.text and "dbl.test" not in reply.text
    decision = stack.spamgate.wait_for_decision(refused="<user@example.com>", hits="DBL_SPAM:10")
    assert "DBL[sender:spam.example]:listed:127.0.1.2:" in decision["lists"]


def test_listed_from_header_domain_is_refused_at_end_of_data(stack: PolicyStack) -> None:
    headers = _headers("dbl from", From="Bank <alerts@login.phish.example>")
    result = stack.send(message=build(subject="dbl from", headers=headers))
    assert [r.code for _, r in result.rcpts] == [250]
    assert result.end_of_data is not None and result.end_of_data.code == 550
    assert "a phishing domain" in result.end_of_data.text


def test_listed_reverse_dns_domain_counts(stack: PolicyStack) -> None:
    result = stack.send(
        name="host7.spam.example",
        reverse_name="host7.spam.example",
        helo="host7.spam.example",
        subject="dbl ptr",
    )
    ((_, reply),) = result.rcpts
    assert reply.code == 550
    decision = stack.spamgate.wait_for_decision(
        hits="DBL_SPAM:10", rdns="confirmed:host7.spam.example"
    )
    # HELO names the same domain, so the one query carries both sources, in the order
    # the names became known.
    assert re.search(
        r"DBL\[(\w+,)*ptr(,\w+)*:spam\.example\]:listed:127\.0\.1\.2:", decision["lists"]
    )


def test_listed_reply_to_domain_is_refused_at_end_of_data(stack: PolicyStack) -> None:
    headers = (*_headers("dbl reply-to"), ("Reply-To", "Winner <claim@prize.phish.example>"))
    result = stack.send(message=build(subject="dbl reply-to", headers=headers))
    assert result.end_of_data is not None and result.end_of_data.code == 550
    decision = stack.spamgate.wait_for_decision(hits="DBL_PHISH:10")
    assert "DBL[reply_to:phish.example]:listed:127.0.1.4:" in decision["lists"]


def test_listed_helo_domain_counts(stack: PolicyStack) -> None:
    result = stack.send(helo="mx.spam.example", subject="dbl helo")
    ((_, reply),) = result.rcpts
    assert reply.code == 550 and "a spam domain" in reply.text


# -- allow and deny lists ----------------------------------------------------------------------


def test_allowlisted_client_skips_scoring(stack: PolicyStack) -> None:
    result = stack.send(client="192.0.2.30", subject="allowed client")  # listed in zen.test
    assert result.end_of_data is not None and result.end_of_data.code == 250
    message = stack.delivered("allowed client").message
    assert message["X-Spam-Status"] is None  # accepted before any scoring
    decision = stack.spamgate.wait_for_decision(allowed_by="client:192.0.2.30/32")
    assert decision["action"] == "accept" and decision["lists_ignored"] == "allowed"


def test_forged_verdict_headers_never_reach_the_recipient(stack: PolicyStack) -> None:
    """From an allowlisted client (accepted at RCPT, where they went through before issue
    14) and from any other: every header of the X-Spam family is deleted on the way."""
    forged = b"X-Spam-Status: No, forged\r\nX-Spam-Flag: NO\r\nX-Spam-Level: \r\n"
    for client, subject in (("192.0.2.30", "forged allowed"), (CLEAN, "forged scored")):
        message = build(subject=subject, extra=forged)
        result = stack.send(client=client, message=message)
        assert result.end_of_data is not None and result.end_of_data.code == 250, result
        delivered = stack.delivered(subject).message
        assert delivered["X-Spam-Flag"] is None and delivered["X-Spam-Level"] is None, client
        status = delivered.get_all("X-Spam-Status") or []
        assert all("forged" not in value for value in status), (client, status)


def test_allowlisted_sender_from_a_file(stack: PolicyStack) -> None:
    result = stack.send(client="192.0.2.2", sender="ceo@friend.example", subject="from friend")
    assert [r.code for _, r in result.rcpts] == [250]
    stack.delivered("from friend")
    stack.spamgate.wait_for_decision(allowed_by="sender:@friend.example")


def test_denied_sender_gets_the_deny_text_but_postmaster_is_reachable(stack: PolicyStack) -> None:
    result = stack.send(
        sender="x@denied.example",
        rcpts=("user@example.com", "postmaster@example.com"),
        subject="denied",
    )
    (_, refused), (_, exempt) = result.rcpts
    assert refused.code == 550 and refused.text.startswith("5.7.1 Not from you (id ")
    assert exempt.code == 250


def test_a_quoted_postmaster_is_postmaster(stack: PolicyStack) -> None:
    """Postfix delivers <"postmaster"@example.com> to postmaster@: spamgate must let a
    listed client reach it too (it refused it before issue 14)."""
    result = stack.send(
        client="192.0.2.2",  # on zen.test: every other recipient is refused
        rcpts=('"postmaster"@example.com', '"Abuse"@example.com', "user@example.com"),
        subject="quoted postmaster",
    )
    codes = [reply.code for _, reply in result.rcpts]
    assert codes == [250, 250, 550], result.rcpts


# -- recipient policies, quarantine ------------------------------------------------------------


def test_recipients_of_another_policy_are_split_off_with_452(stack: PolicyStack) -> None:
    result = stack.send(rcpts=("user@example.com", "user@example.net"), subject="split")
    (_, first), (_, second) = result.rcpts
    assert first.code == 250
    assert second.code == 452 and second.text.startswith("4.5.3 ")
    assert stack.delivered("split").rcpts == ("user@example.com",)


def test_recipient_policy_has_its_own_thresholds(stack: PolicyStack) -> None:
    strict = stack.send(client="192.0.2.2", rcpts=("user@example.com",), subject="strict")
    assert [r.code for _, r in strict.rcpts] == [550]
    lenient = stack.send(client="192.0.2.2", rcpts=("user@example.net",), subject="lenient")
    assert [r.code for _, r in lenient.rcpts] == [250]
    status = stack.delivered("lenient").message["X-Spam-Status"]
    assert status == "Yes, score=10.0 hits=ZEN_SBL"
    stack.spamgate.wait_for_decision(queue=str(lenient.queue_id), policy_group="lenient")


def test_quarantine_puts_the_message_on_hold(stack: PolicyStack) -> None:
    # 7 (PBL) + 1 (no Date) = 8: the quarantine band.
    headers = _headers("hold me", Date=None)
    result = stack.send(client="192.0.2.10", message=build(subject="hold me", headers=headers))
    assert result.end_of_data is not None and result.end_of_data.code == 250
    queue_id = str(result.queue_id)
    stack.postfix.wait_for_log(rf"{queue_id}: milter-hold: END-OF-MESSAGE from .*\[192\.0\.2\.10\]")
    listing = subprocess.run(
        ["postqueue", "-c", str(stack.postfix.config_dir), "-j"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f'"queue_id": "{queue_id}"' in listing and '"queue_name": "hold"' in listing
    decision = stack.spamgate.wait_for_decision(queue=queue_id)
    assert (decision["action"], decision["enforced"]) == ("quarantine", "quarantine")
