"""DKIM, DMARC and Authentication-Results through a real Postfix (issue 17 items 2, 3, 6):
messages signed here with a key made for this module, the key and the DMARC records served
by a DNS server on loopback, and what the client, the sink and the decision log see.

What only a real Postfix can show: how it passes folded headers and the body to a milter
(with P_HDR_LEADSPC a value keeps its leading space and its folding as LF, the body comes with
CRLF), so that `simple` header canonicalization, which hashes the bytes as sent, passes; that
a policy without DKIM negotiates the body away; and that header deletions reach the sink.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import dkim
import pytest

from tests.dkim_keys import Key, make_key
from tests.e2e.spamgate_stack import SpamgateDaemon, start_behind_postfix
from tests.fake_dns_server import SILENT, Behaviour, FakeDnsServer
from tests.harness.postfix import PostfixInstance
from tests.harness.sink import SinkMessage, SmtpSink
from tests.harness.smtp import SendResult, send

pytestmark = pytest.mark.e2e

CLIENT = "192.0.2.70"
HELO = "mail.client.example"
AUTHSERV_ID = "mx.spamgate.test"

# What both daemons share: the listener, the resolver and the thresholds.
COMMON_POLICY = """\
listen: inet:{port}@127.0.0.1
log: {{level: debug}}
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{status_dir}/status-{port}.json"}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
"""

POLICY = (
    COMMON_POLICY
    + """\
dkim: {{max_body_bytes: 4096}}
authentication_results: {{add: true, authserv_id: {authserv_id}}}
allow: {{verified_senders: ["@partner.example"]}}
rules:
  - {{name: DKIM_PASS, score: 0, description: a signature verifies, dkim: pass}}
  - {{name: SUBJECT_OFFER, score: 4, description: offer, header: {{name: Subject, matches: offer}}}}
  - {{name: DKIM_FAIL, score: 1, description: a signature does not verify, dkim: fail}}
  - {{name: DMARC_FAIL_REJECT, score: 4, description: From says reject, dmarc: fail_reject}}
  - {{name: DMARC_PASS, score: 0, description: aligned, dmarc: pass}}
"""
)

PLAIN_POLICY = (
    COMMON_POLICY
    + """\
rules:
  - {{name: SUBJECT_X, score: 1, description: x, header: {{name: Subject, matches: xyzzy}}}}
"""
)


@dataclass
class Stack:
    postfix: PostfixInstance
    sink: SmtpSink
    dkim_milter: SpamgateDaemon
    plain_milter: SpamgateDaemon
    dns: FakeDnsServer
    key: Key


def txt(record: str) -> str:
    """A TXT record in presentation form, in strings of at most 255 characters."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("dkim")
    workdir.chmod(0o755)
    key = make_key(1024, seed=41)
    dns = FakeDnsServer(lifetime=600)
    record = Behaviour(records=(txt(f"v=DKIM1; k=rsa; p={key.public_b64}"),))
    dns.script["sel._domainkey.signer.example", "TXT"] = record
    dns.script["_dmarc.signer.example", "TXT"] = Behaviour(records=('"v=DMARC1; p=reject"',))
    dns.script["_dmarc.bank.example", "TXT"] = Behaviour(records=('"v=DMARC1; p=reject"',))
    dns.script["signer.example", "TXT"] = Behaviour(records=('"v=spf1 -all"',))
    # A partner whose mail reaches us through a forwarder: SPF fails, its signature holds.
    dns.script["sel._domainkey.partner.example", "TXT"] = record
    dns.script["partner.example", "TXT"] = Behaviour(records=('"v=spf1 -all"',))
    dns.script["slow.example", "TXT"] = SILENT
    dns.start()
    try:
        with ExitStack() as stack:
            sink = stack.enter_context(SmtpSink(workdir))
            fields = {"dns_port": dns.port, "status_dir": workdir, "authserv_id": AUTHSERV_ID}
            dkim_milter = SpamgateDaemon.from_template(workdir, POLICY, **fields)
            plain_milter = SpamgateDaemon.from_template(workdir, PLAIN_POLICY, **fields)
            postfix = start_behind_postfix(
                stack, workdir, sink, {"dkim": dkim_milter, "plain": plain_milter}
            )
            yield Stack(postfix, sink, dkim_milter, plain_milter, dns, key)
    finally:
        dns.stop()


def message(
    subject: str,
    *,
    author: str = "alice@signer.example",
    extra: Sequence[bytes] = (),
    body: bytes = b"Hello Bob,\r\n\r\nthe figures are attached.\r\n",
) -> tuple[bytes, bytes]:
    """A header block (a folded Subject and To included) and a body, CRLF throughout."""
    header = (
        f"From: Alice <{author}>\r\n".encode()
        + b"To: bob@example.com,\r\n\tcarol@example.com\r\n"
        + f"Subject: {subject}\r\n  continued on a second line\r\n".encode()
        + b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        + f"Message-ID: <{subject.replace(' ', '.')}@signer.example>\r\n".encode()
        + b"".join(extra)
    )
    return header, body


def signed(
    key: Key, header: bytes, body: bytes, *, canonicalize: tuple[bytes, bytes], **options: object
) -> bytes:
    signature = dkim.sign(
        header + b"\r\n" + body,
        b"sel",
        b"signer.example",
        key.private_pem,
        canonicalize=canonicalize,
        **options,
    )
    return bytes(signature) + header


def _send(stack: Stack, data: bytes, tag: str, *, listener: str = "dkim") -> SendResult:
    """Send `data` from <tag@signer.example>: the tag finds the decision line again."""
    return send(
        stack.postfix.ports[listener],
        client_addr=CLIENT,
        helo=HELO,
        mail_from=f"{tag}@signer.example",
        rcpts=["bob@example.com"],
        message_bytes=data,
        timeout=30,
    )


def _send_from(stack: Stack, data: bytes, sender: str) -> SendResult:
    return send(
        stack.postfix.ports["dkim"],
        client_addr=CLIENT,
        helo=HELO,
        mail_from=sender,
        rcpts=["bob@example.com"],
        message_bytes=data,
        timeout=30,
    )


def _line(milter: SpamgateDaemon, tag: str) -> dict[str, str]:
    return milter.wait_for_decision(**{"from": f"<{tag}@signer.example>"})


def _delivered(stack: Stack, subject: str) -> SinkMessage:
    return stack.sink.wait_for_message(
        lambda m: str(m.message["Subject"] or "").startswith(subject), subject
    )


def _results(delivered: SinkMessage) -> list[str]:
    """Every Authentication-Results at the sink, unfolded."""
    return [
        " ".join(str(v).split()) for v in delivered.message.get_all("Authentication-Results") or []
    ]


@pytest.mark.parametrize(
    "canonicalize",
    [
        pytest.param((b"relaxed", b"relaxed"), id="relaxed"),
        pytest.param((b"simple", b"simple"), id="simple"),
    ],
)
def test_a_valid_signature_over_folded_headers_passes(
    stack: Stack, canonicalize: tuple[bytes, bytes]
) -> None:
    subject = f"valid {canonicalize[0].decode()}"
    header, body = message(subject)
    tag = f"valid-{canonicalize[0].decode()}"
    data = signed(stack.key, header, body, canonicalize=canonicalize) + b"\r\n" + body
    result = _send(stack, data, tag)
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, tag)
    assert (line["dkim"], line["dmarc"]) == ("pass:signer.example", "pass:signer.example"), line
    assert "DKIM_PASS:0" in line["hits"], line
    delivered = _delivered(stack, subject)
    [text] = _results(delivered)
    assert text.startswith(AUTHSERV_ID + ";"), text
    # Asking for headers as received (P_HDR_LEADSPC) makes Postfix write the headers we add
    # as given: the space after the colon is ours to send (it was missing once).
    assert f"\nAuthentication-Results: {AUTHSERV_ID};".encode() in b"\n" + delivered.raw
    assert b"\nX-Spam-Status: No, score=" in delivered.raw, delivered.raw[:600]
    assert "dkim=pass header.d=signer.example header.s=sel" in text, text
    assert "dmarc=pass header.from=signer.example" in text, text
    assert f"spf=fail smtp.mailfrom={tag}@signer.example" in text, text


def test_a_body_changed_after_signing_fails_and_dmarc_reject_scores(stack: Stack) -> None:
    header, body = message("changed body")
    data = signed(stack.key, header, body, canonicalize=(b"relaxed", b"relaxed"))
    result = _send(stack, data + b"\r\n" + body + b"P.S. added on the way\r\n", "changed")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, "changed")
    assert (line["dkim"], line["dmarc"]) == ("fail:signer.example", "fail_reject:signer.example")
    status = " ".join(str(_delivered(stack, "changed body").message["X-Spam-Status"]).split())
    assert status.startswith("Yes, score=5.0") and "DMARC_FAIL_REJECT" in status, status
    assert "DKIM_FAIL" in status, status


def test_a_missing_key_is_permerror(stack: Stack) -> None:
    header, body = message("missing key")
    signature = dkim.sign(
        header + b"\r\n" + body, b"nokey", b"signer.example", stack.key.private_pem
    )
    result = _send(stack, bytes(signature) + header + b"\r\n" + body, "nokey")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, "nokey")
    assert line["dkim"] == "permerror:signer.example", line
    [text] = _results(_delivered(stack, "missing key"))
    assert "dkim=permerror" in text and "header.s=nokey" in text, text


def test_dmarc_reject_without_alignment_is_tagged_by_the_policys_score(stack: Stack) -> None:
    # A valid signature, but of signer.example, on mail From: bank.example (p=reject): no
    # aligned identifier, so the bank's own policy names it a forgery.
    header, body = message("phish", author="security@bank.example")
    data = signed(stack.key, header, body, canonicalize=(b"relaxed", b"relaxed"))
    result = _send(stack, data + b"\r\n" + body, "phish")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, "phish")
    assert (line["dkim"], line["dmarc"]) == ("pass:signer.example", "fail_reject:bank.example")
    status = " ".join(str(_delivered(stack, "phish").message["X-Spam-Status"]).split())
    assert status.startswith("Yes, score=4.0") and "DMARC_FAIL_REJECT" in status, status


def test_forged_results_naming_us_are_deleted_and_others_kept(stack: Stack) -> None:
    forged = [
        f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.example\r\n".encode(),
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n",
        f"Authentication-Results: (comment) {AUTHSERV_ID.upper()};\r\n dmarc=pass\r\n".encode(),
        b"Authentication-Results: ((((((( garbage that never closes\r\n",
    ]
    header, body = message("forged results", extra=forged)
    data = signed(stack.key, header, body, canonicalize=(b"relaxed", b"relaxed"))
    result = _send(stack, data + b"\r\n" + body, "forged")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    texts = _results(_delivered(stack, "forged results"))
    # Ours comes first (added on top), the forged two are gone, the others stay as they were.
    assert len(texts) == 3, texts
    assert (
        texts[0].startswith(AUTHSERV_ID + ";") and "dkim=pass header.d=signer.example" in texts[0]
    )
    assert texts[1] == "other.example; spf=pass smtp.mailfrom=x@other.example", texts
    assert texts[2] == "((((((( garbage that never closes", texts
    assert "bank.example" not in " ".join(texts), texts
    # The signature did not cover Authentication-Results (dkimpy's defaults leave it out),
    # so deleting them does not break it downstream.
    line = _line(stack.dkim_milter, "forged")
    assert line["dkim"] == "pass:signer.example", line


def test_a_body_beyond_the_bound_is_not_read_and_delivered_whole(stack: Stack) -> None:
    body = b"".join(b"line %05d of a long body\r\n" % n for n in range(2000))  # ~52 KB
    header, _ = message("long body")
    data = signed(stack.key, header, body, canonicalize=(b"relaxed", b"relaxed"))
    result = _send(stack, data + b"\r\n" + body, "long")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, "long")
    assert line["dkim"] == "body_not_read:signer.example", line
    assert "DKIM_FAIL" not in line["hits"], line
    delivered = _delivered(stack, "long body")
    assert delivered.raw.endswith(b"line 01999 of a long body\n"), delivered.raw[-80:]
    [text] = _results(delivered)
    assert "dkim=neutral" in text and "body not read" in text, text


def test_hostile_signatures_get_defined_results(stack: Stack) -> None:
    # A signature over a header the message does not have, a non-ASCII d= and s=, and a
    # garbage one: each a result, never an error answered for the session.
    header, body = message("hostile")
    over_missing = dkim.sign(
        header + b"Reply-To: someone@signer.example\r\n\r\n" + body,
        b"sel",
        b"signer.example",
        stack.key.private_pem,
        include_headers=[b"from", b"subject", b"reply-to"],
    )
    odd = [
        "DKIM-Signature: v=1; a=rsa-sha256; d=bücher.example; s=sél; h=from; b=y\r\n".encode(),
        b"DKIM-Signature: ;;;==;\xff\xfe\r\n",
    ]
    data = bytes(over_missing) + b"".join(odd) + header + b"\r\n" + body
    result = _send(stack, data, "hostile")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.dkim_milter, "hostile")
    results = line["dkim"].split(",")
    assert results[0] == "fail:signer.example", line
    assert all(r.startswith("neutral:") for r in results[1:]) and len(results) == 3, line
    assert "internal error" not in stack.dkim_milter.log_text()


def test_a_policy_without_dkim_rules_negotiates_no_body(stack: Stack) -> None:
    header, body = message("plain policy")
    data = signed(stack.key, header, body, canonicalize=(b"relaxed", b"relaxed"))
    result = _send(stack, data + b"\r\n" + body, "plain", listener="plain")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = _line(stack.plain_milter, "plain")
    assert "dkim" not in line and "dmarc" not in line, line
    log = stack.plain_milter.log_text()
    assert "negotiated: body=no" in log and "negotiated: body=yes" not in log, log[-2000:]
    assert "negotiated: body=yes leading_space=yes skip=yes" in stack.dkim_milter.log_text()
    assert stack.dns.packets("sel._domainkey.signer.example", "TXT") >= 1
    assert _results(_delivered(stack, "plain policy")) == []


def test_a_verified_sender_is_allowed_by_its_signature_when_spf_fails(stack: Stack) -> None:
    """allow.verified_senders through a forwarder: SPF fails at RCPT TO, the partner's own
    DKIM signature verifies at the end of the message, and the mail is allowed unscored (a
    Subject rule would have tagged it). Unsigned, the same mail from the same place is judged."""
    subject = "partner offer"
    header, body = message(subject, author="sales@partner.example")
    signature = dkim.sign(
        header + b"\r\n" + body, b"sel", b"partner.example", stack.key.private_pem
    )
    result = _send_from(stack, bytes(signature) + header + b"\r\n" + body, "sales@partner.example")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.dkim_milter.wait_for_decision(**{"from": "<sales@partner.example>"})
    assert line["allowed_by"] == "verified_sender:@partner.example(dkim:partner.example)", line
    assert (line["score"], line["action"]) == ("0.0", "accept"), line
    delivered = _delivered(stack, subject)
    assert delivered.message["X-Spam-Status"] is None

    forged_subject = "forged partner offer"
    header, body = message(forged_subject, author="sales@partner.example")
    result = _send_from(stack, header + b"\r\n" + body, "billing@partner.example")
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    line = stack.dkim_milter.wait_for_decision(**{"from": "<billing@partner.example>"})
    assert line.get("allowed_by", "") == "" and line["action"] == "tag", line
    assert "SUBJECT_OFFER:4" in line["hits"], line
