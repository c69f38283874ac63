"""DKIM, DMARC and Authentication-Results in a Session (issue 17 items 2, 3): what is read,
what is checked when, what the decision line and the headers say. The keys and DMARC records
come from a table resolver; messages are signed here with keys made in tests/dkim_keys.py."""

from __future__ import annotations

from collections.abc import Mapping

import dkim
import pytest

from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.session import MessageDecision
from tests.dkim_keys import Key, make_key
from tests.session_harness import Harness, fields, start

KEY_NAME = ("sel._domainkey.example.com", "TXT")
DMARC_NAME = ("_dmarc.example.com", "TXT")

RULES = """\
thresholds: {tag: 3, greylist: null, tempfail: null, reject: 10}
resolver: {deadline: 0.5}
dkim: {max_body_bytes: 2048}
authentication_results: {add: true, authserv_id: mx.test}
trusted_networks: [10.0.0.0/8]
allow: {senders: [friend@example.com]}
rules:
  - {name: DKIM_PASS, score: 0, description: signed, dkim: pass}
  - {name: DKIM_FAIL, score: 1, description: broken signature, dkim: fail}
  - {name: DKIM_NONE, score: 0.1, description: unsigned, dkim: none}
  - {name: DKIM_UNREAD, score: 0.2, description: body too long, dkim: body_not_read}
  - {name: DKIM_PERMERROR, score: 0.3, description: no key, dkim: permerror}
  - {name: DMARC_REJECT, score: 4, description: From domain says reject, dmarc: fail_reject}
  - {name: DMARC_QUARANTINE, score: 2, description: quarantine, dmarc: fail_quarantine}
  - {name: DMARC_PASS, score: 0, description: aligned, dmarc: pass}
"""

NO_DKIM = """\
resolver: {deadline: 0.5}
rules:
  - {name: SUBJECT_X, score: 1, description: x, header: {name: Subject, matches: xyz}}
"""

HEADERS = [
    ("From", " Alice <alice@example.com>"),
    ("To", " bob@example.net"),
    ("Subject", " figures\n\tfolded on two lines"),
]
BODY = b"Hello Bob,\r\n\r\nthe figures.\r\n"


@pytest.fixture(scope="module")
def key() -> Key:
    return make_key(1024, seed=31)


def txt(text: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, (text,), ttl=60)


def table(key: Key, dmarc: str | None = "v=DMARC1; p=reject") -> dict[tuple[str, str], DnsAnswer]:
    found = {KEY_NAME: txt(f"v=DKIM1; k=rsa; p={key.public_b64}")}
    if dmarc is not None:
        found[DMARC_NAME] = txt(dmarc)
    return found


def raw_block(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{n}:{v}".replace("\n", "\r\n").encode() + b"\r\n" for n, v in headers)


def signature(key: Key, headers: list[tuple[str, str]], body: bytes, **options: object) -> str:
    """The DKIM-Signature value as Postfix would pass it with P_HDR_LEADSPC."""
    signed = dkim.sign(
        raw_block(headers) + b"\r\n" + body, b"sel", b"example.com", key.private_pem, **options
    )
    name, _, value = bytes(signed).decode().partition(":")
    assert name == "DKIM-Signature"
    return value.removesuffix("\r\n").replace("\r\n", "\n")


def run(
    harness: Harness,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    sender: str = "<alice@example.com>",
) -> tuple[MessageDecision, dict[str, str]]:
    session = harness.session
    harness.envelope(sender)
    assert session.rcpt("<bob@example.net>").reply is None
    for name, raw in headers:
        session.header(name, raw.lstrip(" \t\r\n"), raw)
    session.end_of_headers()
    while body and session.wants_body:  # in chunks, as Postfix sends them
        if not session.body(body[:1000]):
            break
        body = body[1000:]
    decision = session.end_of_message("QID")
    return decision, fields(harness.log[-1])


def signed_message(key: Key, **options: object) -> list[tuple[str, str]]:
    return [("DKIM-Signature", signature(key, HEADERS, BODY, **options)), *HEADERS]


@pytest.mark.parametrize("canonicalization", [b"relaxed/relaxed", b"simple/simple"])
def test_a_valid_signature_passes_and_aligns(key: Key, canonicalization: bytes) -> None:
    harness = start(RULES, table(key))
    decision, line = run(
        harness, signed_message(key, canonicalize=canonicalization.split(b"/")), BODY
    )
    assert (line["dkim"], line["dmarc"]) == ("pass:example.com", "pass:example.com"), line
    assert "DKIM_PASS:0" in line["hits"] and "DMARC_PASS:0" in line["hits"], line
    [(_, value)] = [h for h in decision.prepend_headers if h[0] == "Authentication-Results"]
    assert value.startswith("mx.test;"), value
    assert "dkim=pass header.d=example.com header.s=sel" in value, value
    assert "dmarc=pass header.from=example.com" in value, value
    assert "spf=" in value and "smtp.mailfrom=alice@example.com" in value, value


def test_a_body_changed_after_signing_fails_and_dmarc_rejects(key: Key) -> None:
    harness = start(RULES, table(key))
    _, line = run(harness, signed_message(key), BODY + b"P.S. buy now\r\n")
    assert line["dkim"] == "fail:example.com", line
    assert line["dmarc"] == "fail_reject:example.com", line
    assert "DMARC_REJECT:4" in line["hits"] and line["action"] == "tag", line


def test_pct_sampling_lowers_reject_to_quarantine_outside_the_sample(key: Key) -> None:
    harness = start(RULES, table(key, "v=DMARC1; p=reject; pct=50"), dmarc_sample=70)
    _, line = run(harness, signed_message(key), BODY + b"changed\r\n")
    assert line["dmarc"] == "fail_quarantine:example.com", line
    harness = start(RULES, table(key, "v=DMARC1; p=reject; pct=50"), dmarc_sample=10)
    _, line = run(harness, signed_message(key), BODY + b"changed\r\n")
    assert line["dmarc"] == "fail_reject:example.com", line


def test_a_missing_key_is_permerror(key: Key) -> None:
    harness = start(RULES, {DMARC_NAME: txt("v=DMARC1; p=none")})
    _, line = run(harness, signed_message(key), BODY)
    assert line["dkim"] == "permerror:example.com", line
    assert line["dmarc"] == "fail_none:example.com", line


def test_an_unsigned_message_is_dkim_none(key: Key) -> None:
    harness = start(RULES, table(key, None))
    _, line = run(harness, HEADERS, BODY)
    assert (line["dkim"], line["dmarc"]) == ("none", "none:example.com"), line
    assert "DKIM_NONE:0.1" in line["hits"], line


def test_a_body_beyond_the_bound_is_not_read_not_failed(key: Key) -> None:
    long_body = b"line of text that repeats\r\n" * 400  # about 10 KB, over max_body_bytes
    headers = [("DKIM-Signature", signature(key, HEADERS, long_body)), *HEADERS]
    harness = start(RULES, table(key))
    _, line = run(harness, headers, long_body)
    assert line["dkim"] == "body_not_read:example.com", line
    assert "DKIM_FAIL" not in line["hits"], line
    # The key was not even asked for: nothing could be verified with it.
    assert KEY_NAME in harness.resolver.calls  # asked early, at end of headers


def test_a_signature_over_a_header_that_is_missing(key: Key) -> None:
    extra = [*HEADERS, ("Reply-To", " someone@example.com")]
    value = signature(key, extra, BODY)
    harness = start(RULES, table(key))
    _, line = run(harness, [("DKIM-Signature", value), *HEADERS], BODY)
    assert line["dkim"] == "fail:example.com", line


def test_non_ascii_identities_and_garbage_signatures_have_defined_results(key: Key) -> None:
    headers = [
        ("DKIM-Signature", " v=1; a=rsa-sha256; d=bücher.example; s=sél; h=from; bh=x; b=y"),
        ("DKIM-Signature", " \x00garbage; ;;=;"),
        ("From", " Ünïcode <ü@bücher.example>"),
        ("Authentication-Results", " ((((((((((((( unclosed"),
        ("Authentication-Results", ' "mx.test" ; dkim=pass'),
        ("Subject", " x"),
    ]
    harness = start(RULES, {})
    decision, line = run(harness, headers, BODY)
    assert line["dkim"].startswith("neutral:"), line
    assert line["dmarc"].startswith("none:xn--bcher-kva.example"), line
    # The quoted authserv-id claims us (index 2 of that name); the garbage claims nobody.
    assert ("Authentication-Results", 2) in decision.delete_headers, decision
    assert ("Authentication-Results", 1) not in decision.delete_headers, decision


def test_forged_results_are_deleted_highest_first_and_others_kept(key: Key) -> None:
    headers = [
        *HEADERS,
        ("Authentication-Results", " mx.test; dkim=pass header.d=bank.example"),
        ("Authentication-Results", " other.example; spf=pass"),
        ("Authentication-Results", " MX.TEST (forged); dmarc=pass"),
    ]
    harness = start(RULES, table(key))
    decision, _ = run(harness, headers, BODY)
    deleted = [d for d in decision.delete_headers if d[0] == "Authentication-Results"]
    assert deleted == [("Authentication-Results", 3), ("Authentication-Results", 1)]


def test_an_allowlisted_sender_is_not_checked_but_forgeries_still_go(key: Key) -> None:
    headers = [*signed_message(key), ("Authentication-Results", " mx.test; dkim=pass")]
    harness = start(RULES, table(key))
    decision, line = run(harness, headers, BODY, sender="<friend@example.com>")
    assert "dkim" not in line and "dmarc" not in line, line
    assert KEY_NAME not in harness.resolver.calls
    assert ("Authentication-Results", 1) in decision.delete_headers, decision
    [(_, value)] = [h for h in decision.prepend_headers if h[0] == "Authentication-Results"]
    # Only what was checked is reported: SPF, made at MAIL FROM, and no DKIM or DMARC.
    assert "dkim=" not in value and "dmarc=" not in value, value


def test_a_trusted_or_authenticated_client_is_not_checked(key: Key) -> None:
    harness = start(RULES, table(key))
    harness.connect("10.1.2.3")
    harness.session.helo("mx.example.org")
    harness.session.mail("<alice@example.com>", True)
    assert not harness.session.wants_body
    harness = start(RULES, table(key))
    harness.connect()
    harness.session.helo("mx.example.org")
    harness.session.mail("<alice@example.com>", True)  # authenticated
    assert not harness.session.wants_body


def test_a_policy_without_dkim_reads_no_body_and_logs_no_dkim(key: Key) -> None:
    harness = start(NO_DKIM, table(key))
    assert not harness.session.engine.needs_body
    _, line = run(harness, signed_message(key), BODY)
    assert "dkim" not in line and "dmarc" not in line, line
    assert KEY_NAME not in harness.resolver.calls


def test_a_silent_key_server_costs_the_deadline_and_gives_temperror(key: Key) -> None:
    script: Mapping[tuple[str, str], DnsAnswer | None] = {KEY_NAME: None, DMARC_NAME: None}
    harness = start(RULES, script)
    _, line = run(harness, signed_message(key), BODY)
    assert line["dkim"] == "temperror:example.com", line
    assert line["dmarc"] == "temperror:example.com", line
