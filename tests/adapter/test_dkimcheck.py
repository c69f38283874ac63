"""DKIM verification and DMARC record lookups (dns/dkimcheck.py) through the real Resolver,
against a scripted DNS server on 127.0.0.1 that serves keys made in this module.

Keys are generated here in pure Python (the venv has no `cryptography`, and dkimpy's
dknewkey runs the openssl command): a seeded generator, once per module, so a failure is
reproducible and the module's set-up takes well under a second.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import dkim
import dns.message
import dns.rcode
import dns.rrset
import pytest

from spamgate.core import dmarc
from spamgate.dns.dkimcheck import (
    MAX_KEY_RECORD,
    DkimReport,
    DkimStatus,
    lookup_dmarc_policy,
    verify_signatures,
)
from spamgate.dns.resolver import Resolver
from tests.dkim_keys import Key, make_key
from tests.fake_dns_server import NXDOMAIN, SILENT, Behaviour, FakeDnsServer, resolver_pool


@pytest.fixture(scope="module")
def key() -> Key:
    return make_key(1024, seed=17)


@pytest.fixture(scope="module")
def other_key() -> Key:
    return make_key(1024, seed=18)


def txt(record: str) -> str:
    """A TXT record in presentation form, in strings of at most 255 characters."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


def key_record(key: Key) -> str:
    return txt(f"v=DKIM1; k=rsa; p={key.public_b64}")


# --- messages ----------------------------------------------------------------------------------

HEADER = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
)
BODY = b"Hello Bob,\r\n\r\nthe figures are attached.\r\n\r\nAlice\r\n"


def signed(
    key: Key,
    header: bytes = HEADER,
    body: bytes = BODY,
    *,
    domain: bytes = b"example.com",
    selector: bytes = b"sel",
    **options: object,
) -> bytes:
    """The header block with a DKIM-Signature added on top."""
    signature = dkim.sign(header + b"\r\n" + body, selector, domain, key.private_pem, **options)
    return bytes(signature) + header


# --- servers and resolvers, stopped when the test ends -----------------------------------------


@pytest.fixture
def server() -> Iterator[FakeDnsServer]:
    started = FakeDnsServer(NXDOMAIN)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def resolvers() -> Iterator[Callable[..., Resolver]]:
    with resolver_pool() as start:

        def against(server: FakeDnsServer, *, deadline: float = 1.0) -> Resolver:
            return start(server.nameserver, deadline=deadline)

        yield against


@pytest.fixture
def resolver(server: FakeDnsServer, resolvers: Callable[..., Resolver]) -> Resolver:
    return resolvers(server)


KEY_NAME = "sel._domainkey.example.com"


def verify(
    resolver: Resolver,
    header: bytes,
    body: bytes = BODY,
    *,
    body_complete: bool = True,
    max_signatures: int = 5,
) -> DkimReport:
    return verify_signatures(
        header,
        body,
        resolver,
        2.0,
        body_complete=body_complete,
        max_signatures=max_signatures,
    )


def statuses(report: DkimReport) -> list[DkimStatus]:
    return [result.status for result in report.signatures]


# --- the tests ---------------------------------------------------------------------------------


def test_a_valid_signature_passes(server: FakeDnsServer, resolver: Resolver, key: Key) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    report = verify(resolver, signed(key))
    (result,) = report.signatures
    assert (result.status, result.domain, result.selector) == (
        DkimStatus.PASS,
        "example.com",
        "sel",
    )
    assert (result.key_bits, result.algorithm, result.identity) == (
        1024,
        "rsa-sha256",
        "@example.com",
    )
    assert report.identifiers() == (dmarc.Identifier(dmarc.Method.DKIM, "example.com", True),)


def test_a_changed_body_fails_without_a_key_lookup(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    report = verify(resolver, signed(key), BODY.replace(b"attached", b"wired to you"))
    assert [(r.status, r.reason) for r in report.signatures] == [
        (DkimStatus.FAIL, "body hash mismatch")
    ]
    assert server.packets(KEY_NAME, "TXT") == 0


def test_a_changed_header_fails(server: FakeDnsServer, resolver: Resolver, key: Key) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key).replace(b"quarterly figures", b"URGENT wire transfer")
    report = verify(resolver, header)
    assert [(r.status, r.reason) for r in report.signatures] == [
        (DkimStatus.FAIL, "signature did not verify")
    ]
    assert report.identifiers() == (dmarc.Identifier(dmarc.Method.DKIM, "example.com", False),)


def test_a_signature_by_another_key_fails(
    server: FakeDnsServer, resolver: Resolver, key: Key, other_key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(other_key),))
    assert statuses(verify(resolver, signed(key))) == [DkimStatus.FAIL]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        pytest.param(NXDOMAIN, "no key for signature", id="nxdomain"),
        pytest.param(Behaviour(records=('"v=spf1 -all"',)), "key unusable", id="not-a-key"),
        pytest.param(Behaviour(records=('"v=DKIM1; k=rsa; p="',)), "key revoked", id="revoked"),
        pytest.param(
            Behaviour(records=('"v=DKIM1; k=rsa; p=AAAA!!!!"',)), "key unusable", id="garbage-p"
        ),
        pytest.param(Behaviour(records=('"v=DKIM2; p=AAAA"',)), "key unusable", id="wrong-version"),
        pytest.param(
            Behaviour(records=('"v=DKIM1; k=dsa; p=AAAA"',)), "key unusable", id="unknown-k"
        ),
        pytest.param(
            Behaviour(records=(txt("v=DKIM1; p=" + "A" * (MAX_KEY_RECORD + 10)),)),
            "key record over 4096 characters",
            id="oversized-txt",
        ),
    ],
)
def test_key_problems_are_permanent_errors(
    server: FakeDnsServer, resolver: Resolver, key: Key, behaviour: Behaviour, reason: str
) -> None:
    server.script[KEY_NAME, "TXT"] = behaviour
    (result,) = verify(resolver, signed(key)).signatures
    assert result.status is DkimStatus.PERMERROR
    assert result.reason.startswith(reason)


def test_several_key_records_are_a_permanent_error(
    server: FakeDnsServer, resolver: Resolver, key: Key, other_key: Key
) -> None:
    # RFC 6376 3.6.2.2: several records at a selector give undefined results.
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key), key_record(other_key)))
    (result,) = verify(resolver, signed(key)).signatures
    assert (result.status, result.reason) == (DkimStatus.PERMERROR, "several key records")


def test_a_silent_dns_server_gives_temperror_within_the_deadline(
    server: FakeDnsServer, resolvers: Callable[..., Resolver], key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = SILENT
    server.script["sel2._domainkey.example.com", "TXT"] = SILENT
    # The resolver would wait 5 s; the check's own deadline (0.5 s) ends it first, and the
    # two signatures' lookups share it rather than waiting one after the other.
    resolver = resolvers(server, deadline=5.0)
    header = signed(key, signed(key), selector=b"sel2")
    started = time.monotonic()
    report = verify_signatures(header, BODY, resolver, 0.5)
    elapsed = time.monotonic() - started
    assert statuses(report) == [DkimStatus.TEMPERROR, DkimStatus.TEMPERROR]
    assert report.signatures[0].reason == "key lookup past the deadline"
    assert elapsed < 0.5 + 1.0


def test_a_resolver_timeout_is_a_temperror(
    server: FakeDnsServer, resolvers: Callable[..., Resolver], key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = SILENT
    resolver = resolvers(server, deadline=0.3)
    (result,) = verify_signatures(signed(key), BODY, resolver, 3.0).signatures
    assert (result.status, result.reason) == (DkimStatus.TEMPERROR, "key lookup: timeout")


def test_a_servfail_is_a_temperror(server: FakeDnsServer, resolver: Resolver, key: Key) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(rcode=dns.rcode.SERVFAIL)
    assert statuses(verify(resolver, signed(key))) == [DkimStatus.TEMPERROR]


class LoopingServer(FakeDnsServer):
    """Answers a TXT question for a name in LOOP with a CNAME chain that comes back to it."""

    LOOP = ("sel._domainkey.example.com", "_dmarc.loop.example.com")

    def _reply(self, query: dns.message.Message, behaviour: Behaviour) -> dns.message.Message:
        qname = query.question[0].name.to_text(omit_final_dot=True)
        if qname not in self.LOOP:
            return super()._reply(query, behaviour)
        reply = dns.message.make_response(query)
        other = "alias." + qname
        reply.answer.append(dns.rrset.from_text(qname + ".", 60, "IN", "CNAME", other + "."))
        reply.answer.append(dns.rrset.from_text(other + ".", 60, "IN", "CNAME", qname + "."))
        return reply


def test_a_cname_loop_is_a_permanent_error(resolvers: Callable[..., Resolver], key: Key) -> None:
    looping = LoopingServer(NXDOMAIN)
    looping.start()
    try:
        resolver = resolvers(looping)
        (result,) = verify(resolver, signed(key)).signatures
        discovery = lookup_dmarc_policy("loop.example.com", resolver, 2.0)
    finally:
        looping.stop()
    assert result.status is DkimStatus.PERMERROR
    assert result.reason.startswith("key answer unreadable")
    assert discovery.state is dmarc.DiscoveryState.PERMERROR


# --- malformed signatures ----------------------------------------------------------------------

VALID_TAGS = "v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=sel; h=from:subject; "
BH = "bh=" + base64.b64encode(b"\x00" * 32).decode() + "; b=AAAA"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="no-tags"),
        pytest.param("", id="empty"),
        pytest.param("v=1; a=rsa-sha256; d=example.com; s=sel; h=from; b=AAAA", id="no-bh"),
        pytest.param(VALID_TAGS.replace("v=1", "v=2") + BH, id="version-2"),
        pytest.param(VALID_TAGS.replace("rsa-sha256", "rsa-md5") + BH, id="unknown-algorithm"),
        pytest.param(VALID_TAGS + "d=example.net; " + BH, id="duplicate-tag"),
        pytest.param(VALID_TAGS + "i=@example.net; " + BH, id="i-not-under-d"),
        pytest.param(VALID_TAGS + "i=example.com; " + BH, id="i-same-length-as-d"),
        pytest.param(VALID_TAGS + "l=ten; " + BH, id="l-not-a-number"),
        pytest.param(VALID_TAGS + "l=; " + BH, id="l-empty"),
        pytest.param(VALID_TAGS + "x=1000; " + BH, id="expired"),
        pytest.param(VALID_TAGS + "t=99999999999; " + BH, id="signed-in-the-future"),
        pytest.param(VALID_TAGS.replace("relaxed/simple", "loose") + BH, id="unknown-c"),
        pytest.param(VALID_TAGS + "q=http; " + BH, id="unknown-q"),
        pytest.param(VALID_TAGS + "bh=%%%; b=AAAA", id="bh-not-base64"),
        pytest.param(VALID_TAGS.replace("d=example.com", "d=exa mple.com") + BH, id="bad-d"),
        pytest.param(VALID_TAGS.replace("s=sel", "s=") + BH, id="empty-selector"),
        pytest.param(VALID_TAGS.replace("s=sel", "s=" + "a" * 300) + BH, id="long-selector"),
        pytest.param(VALID_TAGS + "z=" + "\t\r\n " * 3000 + "; " + BH, id="huge-field"),
        pytest.param(
            VALID_TAGS.replace("rsa-sha256", "ed25519-sha256") + BH, id="ed25519-unsupported"
        ),
    ],
)
def test_a_malformed_signature_is_neutral(
    server: FakeDnsServer, resolver: Resolver, key: Key, value: str
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = b"DKIM-Signature: " + value.encode() + b"\r\n" + HEADER
    started = time.monotonic()
    (result,) = verify(resolver, header).signatures
    assert result.status is DkimStatus.NEUTRAL, result.reason
    assert result.reason.isascii() and result.reason.isprintable()
    assert time.monotonic() - started < 1.0


def test_a_signature_that_leaves_out_from_is_a_permanent_error(
    resolver: Resolver,
) -> None:
    value = VALID_TAGS.replace("h=from:subject", "h=subject:date") + BH
    header = b"DKIM-Signature: " + value.encode() + b"\r\n" + HEADER
    (result,) = verify(resolver, header).signatures
    assert (result.status, result.reason) == (DkimStatus.PERMERROR, "From not signed")


def test_an_unreadable_header_block_is_a_defined_problem(resolver: Resolver, key: Key) -> None:
    report = verify(resolver, signed(key) + b"this line has no colon\r\n")
    assert report.signatures == ()
    assert report.header_problem.startswith("header unreadable")


# --- signed fields that are missing ------------------------------------------------------------


def test_a_signature_over_an_absent_field_passes_until_the_field_is_added(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    # Signing a field that is absent (RFC 6376 5.4.2) forbids adding it later.
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key, include_headers=[b"from", b"subject", b"reply-to"])
    assert statuses(verify(resolver, header)) == [DkimStatus.PASS]
    added = header + b"Reply-To: thief@example.org\r\n"
    assert statuses(verify(resolver, added)) == [DkimStatus.FAIL]


def test_a_signed_field_that_was_removed_fails(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key).replace(b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n", b"")
    assert statuses(verify(resolver, header)) == [DkimStatus.FAIL]


# --- non-ASCII identities ----------------------------------------------------------------------


def test_a_utf8_d_is_looked_up_by_its_a_labels(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    # RFC 8616 4: U-labels in d= are allowed; the key is at the A-label name.
    server.script["sel._domainkey.xn--bcher-kva.example", "TXT"] = Behaviour(
        records=(key_record(key),)
    )
    header = signed(key, domain="bücher.example".encode())
    (result,) = verify(resolver, header).signatures
    assert (result.status, result.domain) == (DkimStatus.PASS, "xn--bcher-kva.example")


def test_a_utf8_local_part_in_i_passes(server: FakeDnsServer, resolver: Resolver, key: Key) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key, identity="jürgen@example.com".encode())
    (result,) = verify(resolver, header).signatures
    assert result.status is DkimStatus.PASS
    assert result.identity == "j?rgen@example.com"  # shown as printable ASCII


@pytest.mark.parametrize(
    "replace",
    [
        pytest.param((b"d=example.com", b"d=ex\xffample.com"), id="d-not-utf8"),
        pytest.param((b"i=@example.com", b"i=@ex\xe4mple.com"), id="i-not-utf8"),
        pytest.param((b"d=example.com", b"d=\xe2\x80\xaeexample.com"), id="d-bidi-override"),
    ],
)
def test_a_non_ascii_identity_that_is_no_name_is_neutral(
    resolver: Resolver, key: Key, replace: tuple[bytes, bytes]
) -> None:
    header = signed(key).replace(*replace)
    (result,) = verify(resolver, header).signatures
    assert result.status in (DkimStatus.NEUTRAL, DkimStatus.FAIL, DkimStatus.PERMERROR)
    assert result.domain.isascii() and result.domain.isprintable()


# --- several signatures, short keys, truncated bodies ------------------------------------------


def test_one_good_and_one_bad_signature(
    server: FakeDnsServer, resolver: Resolver, key: Key, other_key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    server.script["list._domainkey.example.org", "TXT"] = Behaviour(
        records=(key_record(key),)  # not the key that signed
    )
    header = signed(other_key, signed(key), domain=b"example.org", selector=b"list")
    report = verify(resolver, header)
    assert [(r.domain, r.status) for r in report.signatures] == [
        ("example.org", DkimStatus.FAIL),
        ("example.com", DkimStatus.PASS),
    ]


def test_signatures_beyond_the_bound_are_counted_not_verified(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key)
    for _ in range(3):
        header = signed(key, header)
    report = verify(resolver, header, max_signatures=2)
    assert (len(report.signatures), report.skipped) == (2, 2)


def test_a_short_key_is_a_policy_result(server: FakeDnsServer, resolver: Resolver) -> None:
    short = make_key(512, seed=5)
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(short),))
    (result,) = verify(resolver, signed(short)).signatures
    assert (result.status, result.reason, result.key_bits) == (
        DkimStatus.POLICY,
        "key of 512 bits",
        512,
    )


def test_rsa_sha1_is_a_policy_result(server: FakeDnsServer, resolver: Resolver, key: Key) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key, signature_algorithm=b"rsa-sha1")
    (result,) = verify(resolver, header).signatures
    assert result.status is DkimStatus.POLICY


LONG_BODY = b"".join(b"line %d of a long newsletter\r\n" % i for i in range(200))


def test_a_truncated_body_is_not_read_rather_than_failed(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    header = signed(key, body=LONG_BODY)
    report = verify(resolver, header, LONG_BODY[:1000], body_complete=False)
    assert statuses(report) == [DkimStatus.BODY_NOT_READ]
    assert server.packets(KEY_NAME, "TXT") == 0
    # The whole body verifies.
    assert statuses(verify(resolver, header, LONG_BODY)) == [DkimStatus.PASS]


def test_a_truncated_body_verifies_when_l_covers_what_was_read(
    server: FakeDnsServer, resolver: Resolver, key: Key
) -> None:
    server.script[KEY_NAME, "TXT"] = Behaviour(records=(key_record(key),))
    # l= of a signature over the first lines (a list appended the rest); the body is read
    # only up to the middle of a later line.
    short_part = LONG_BODY[: LONG_BODY.index(b"line 10 ")]
    header = signed(key, body=short_part, length=True, canonicalize=(b"relaxed", b"relaxed"))
    report = verify(resolver, header, LONG_BODY[:1001], body_complete=False)
    assert statuses(report) == [DkimStatus.PASS]
    # l= beyond what was read: not read.
    header = signed(key, body=LONG_BODY[:2000], length=True)
    report = verify(resolver, header, LONG_BODY[:1001], body_complete=False)
    assert statuses(report) == [DkimStatus.BODY_NOT_READ]


# --- DMARC records -----------------------------------------------------------------------------


def test_a_dmarc_record_at_the_author_domain(server: FakeDnsServer, resolver: Resolver) -> None:
    server.script["_dmarc.sub.example", "TXT"] = Behaviour(records=('"v=DMARC1; p=reject"',))
    found = lookup_dmarc_policy("sub.example", resolver, 2.0)
    assert (found.state, found.policy_domain, found.at_organization) == (
        dmarc.DiscoveryState.FOUND,
        "sub.example",
        False,
    )
    assert found.record == dmarc.DmarcRecord(dmarc.Disposition.REJECT)


def test_a_dmarc_record_found_at_the_organizational_domain(
    server: FakeDnsServer, resolver: Resolver
) -> None:
    # `example` is not a known suffix, so `sub.example` is mail.sub.example's organization.
    server.script["_dmarc.sub.example", "TXT"] = Behaviour(
        records=('"v=DMARC1; p=reject; sp=quarantine"', '"unrelated=1"')
    )
    found = lookup_dmarc_policy("mail.sub.example", resolver, 2.0)
    assert (found.state, found.policy_domain, found.at_organization) == (
        dmarc.DiscoveryState.FOUND,
        "sub.example",
        True,
    )
    result = dmarc.evaluate(dmarc.AuthorDomain("mail.sub.example"), found, [], 0)
    assert result.outcome is dmarc.DmarcOutcome.FAIL_QUARANTINE
    assert server.packets("_dmarc.mail.sub.example", "TXT") == 1


def test_no_dmarc_record_anywhere(server: FakeDnsServer, resolver: Resolver) -> None:
    found = lookup_dmarc_policy("mail.sub.example", resolver, 2.0)
    assert found.state is dmarc.DiscoveryState.NONE
    assert server.packets("_dmarc.sub.example", "TXT") == 1


def test_an_oversized_dmarc_record_is_no_record(server: FakeDnsServer, resolver: Resolver) -> None:
    record = "v=DMARC1; p=reject; " + "rua=mailto:x@example.com," * 200
    server.script["_dmarc.sub.example", "TXT"] = Behaviour(records=(txt(record),))
    found = lookup_dmarc_policy("sub.example", resolver, 2.0)
    assert found.state is dmarc.DiscoveryState.NONE
    assert "over" in found.reason


def test_a_silent_dmarc_lookup_is_a_temperror_within_the_deadline(
    server: FakeDnsServer, resolvers: Callable[..., Resolver]
) -> None:
    server.script["_dmarc.mail.sub.example", "TXT"] = SILENT
    server.script["_dmarc.sub.example", "TXT"] = SILENT
    resolver = resolvers(server, deadline=5.0)
    started = time.monotonic()
    found = lookup_dmarc_policy("mail.sub.example", resolver, 0.5)
    assert found.state is dmarc.DiscoveryState.TEMPERROR
    assert time.monotonic() - started < 0.5 + 1.0
