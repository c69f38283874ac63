"""DKIM verification (RFC 6376) of a message at its end, with dkimpy, and the DNS lookups of
DMARC (RFC 7489) policy records; the DMARC decisions themselves are core/dmarc.py's.

dkimpy does what is easy to get subtly wrong: signature parsing, canonicalization, the header
hash and RSA. This module does the rest, because dkimpy's own `verify()` answers only
True/False (a missing key, a DNS timeout and a forged signature all look alike) and asks DNS
itself, with its own resolver and a 5 s timeout:
- It reads each DKIM-Signature with dkimpy (`verify_headerprep`), checks the body hash
  itself (so a body that was not read whole is told apart from a changed one), fetches the
  key through spamgate's resolver, judges the key record with dkimpy's `evaluate_pk`, and
  only then lets dkimpy's `verify_sig` check the header signature, handing it the key record
  already fetched.
- Every key lookup starts before the first is waited for, and each is waited for only until
  a deadline counted from the check's start: a silent DNS server costs one deadline per
  message, not one per signature. Past it, that signature is TEMPERROR.
- Every exception dkimpy can raise, named or not, becomes a defined result for that
  signature; nothing escapes and no input makes the work unbounded (limits below).

The result words are RFC 8601's for dkim= (Authentication-Results), plus BODY_NOT_READ:
- PASS: the signature verified with a key of at least `min_key_bits` and rsa-sha256.
- FAIL: the body hash or the header signature did not match (the message was changed, or
  the signature forged).
- NEUTRAL: the DKIM-Signature field could not be used: a syntax error, a missing tag, an
  expired or future signature, an unsupported algorithm (ed25519-sha256: PyNaCl is not a
  dependency) or c=.
- PERMERROR: no key (NXDOMAIN or no TXT at the selector: RFC 6376 6.1.2 "no key for
  signature"), a revoked key (empty p=), a key record that does not parse, several key
  records (3.6.2.2: "results are undefined"), an oversized one, an unreadable DNS answer
  (a CNAME loop), or a signature whose h= leaves out From (RFC 6376 6.1.1).
- TEMPERROR: the key lookup timed out, failed (SERVFAIL, network) or passed the deadline.
- POLICY: the signature verified but we do not accept it: an RSA key under `min_key_bits`
  (RFC 8301: 1024), or rsa-sha1 (RFC 8301 3.1: verifiers must not consider it valid).
- BODY_NOT_READ: only part of the body was read (the caller's byte bound) and the signature
  covers more than that part (no l=, or l= beyond it): the body hash cannot be checked, which
  is neither a pass nor evidence of a change. The key is then not looked up.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import dkim  # dkimpy, untyped: used only through this module's functions
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS

from spamgate.core import dmarc, domains
from spamgate.core.dkim import DkimReport, DkimStatus, SignatureResult
from spamgate.dns.answers import AnswerKind, DnsAnswer, Lookups, Promise

# Signatures verified per message, topmost first; the rest are counted, not verified. Each
# costs a DNS lookup and an RSA operation, and a sender can add hundreds.
MAX_SIGNATURES = 5
# RFC 8301 3.2: verifiers must not accept keys under 1024 bits.
MIN_KEY_BITS = 1024
# A DKIM-Signature field this long is not read: real ones are under 1 KB (2 KB with a
# 4096-bit b=), and dkimpy's b= regex (RE_BTAG) backtracks on long runs of folding white space.
MAX_SIGNATURE_FIELD = 8192
# Header names in h=: dkimpy looks each up from the bottom of the header (names times
# fields), and a real signature names a few dozen, oversigned ones perhaps sixty.
MAX_SIGNED_FIELDS = 100
# A key record this long is refused (an "oversized TXT answer"): a 4096-bit RSA key is about
# 740 characters, and RSA's cost grows with the key, which the zone's owner chooses.
MAX_KEY_RECORD = 4096
MAX_KEY_BITS = 8192
# Real public exponents are 3 or 65537; a huge one would make each verification slow.
MAX_EXPONENT_BITS = 64
# Characters of a value a sender or a zone chose that go into a reason.
_SHOWN_CHARS = 64

# dkimpy logs what it rejects, with the sender's bytes in the text: to a logger of its own
# that is not attached to logging's tree and drops everything. Our results carry the reasons.
_QUIET = logging.Logger("spamgate.dkimcheck.dkimpy", level=logging.CRITICAL + 1)


def verify_signatures(
    header_block: bytes,
    body: bytes,
    lookups: Lookups,
    deadline: float,
    *,
    body_complete: bool = True,
    clock: Callable[[], float] = time.monotonic,
    max_signatures: int = MAX_SIGNATURES,
    min_key_bits: int = MIN_KEY_BITS,
) -> DkimReport:
    """Verify the message's DKIM signatures, waiting for keys until `deadline` seconds from now.

    `header_block` is the header fields as received, each ending in CRLF (or LF), without the
    empty line that ends the header. `body` is the body as received, or its first bytes when
    `body_complete` is False.
    """
    ends = clock() + deadline
    if not body_complete:
        # Complete lines only: the canonical form of whole lines is a prefix of the whole
        # body's canonical form (a cut inside a line is not: relaxed canonicalization changes
        # trailing white space), so a signature whose l= falls within them can be checked.
        body = body[: body.rfind(b"\n") + 1]
    if header_block and not header_block.endswith(b"\n"):
        header_block += b"\r\n"
    try:
        signer = dkim.DKIM(header_block + b"\r\n" + body, logger=_QUIET, minkey=0)
        fields: list[tuple[bytes, bytes]] = [
            (bytes(name), bytes(value))
            for name, value in signer.headers
            if bytes(name).lower() == b"dkim-signature"
        ]
    except Exception as error:  # dkimpy's parser may raise anything
        return DkimReport(header_problem=_problem("header unreadable", error))

    checks = [
        _Check(signer, index, name_value, body_complete, min_key_bits)
        for index, name_value in enumerate(fields[:max_signatures])
    ]
    for check in checks:
        check.prepare(lookups)
    results = tuple(check.finish(ends, clock) for check in checks)
    return DkimReport(
        signatures=results,
        skipped=max(0, len(fields) - max_signatures),
        body_complete=body_complete,
    )


class _Check:
    """One signature through its steps: read it and check the body hash (prepare), fetch
    its key, then verify the header signature (finish)."""

    def __init__(
        self,
        signer: Any,
        index: int,
        field: tuple[bytes, bytes],
        body_complete: bool,
        min_key_bits: int,
    ) -> None:
        self.signer, self.index, self.field = signer, index, field
        self.body_complete, self.min_key_bits = body_complete, min_key_bits
        value = field[1]
        self.domain = _shown(_tag(value, b"d"))
        self.selector = _shown(_tag(value, b"s"))
        self.identity = _shown(_tag(value, b"i"))
        self.algorithm = _shown(_tag(value, b"a"))
        self.outcome: SignatureResult | None = None
        self.tags: dict[bytes, bytes] = {}
        self.signed: list[bytes] = []
        self.qname = ""
        self.key: Promise[DnsAnswer] | None = None

    def result(self, status: DkimStatus, reason: str, key_bits: int = 0) -> SignatureResult:
        return SignatureResult(
            self.domain,
            self.selector,
            status,
            reason,
            identity=self.identity,
            algorithm=self.algorithm,
            key_bits=key_bits,
        )

    def prepare(self, lookups: Lookups) -> None:
        """Everything up to the key lookup, which it starts; or the final result."""
        self.outcome = self._prepared()
        if self.outcome is None:
            self.key = lookups.lookup(self.qname, "TXT")

    def _prepared(self) -> SignatureResult | None:
        if len(self.field[1]) > MAX_SIGNATURE_FIELD:
            return self.result(DkimStatus.NEUTRAL, f"signature over {MAX_SIGNATURE_FIELD} bytes")
        try:
            prepared = self.signer.verify_headerprep(self.index)
            tags = {bytes(k): bytes(v) for k, v in prepared[0].items()}
            signed = [bytes(name) for name in prepared[1]]
        except Exception as error:  # any dkimpy error is a malformed field
            return self.result(DkimStatus.NEUTRAL, _problem("malformed", error))
        self.tags, self.signed = tags, signed
        algorithm = tags[b"a"]
        if algorithm == b"ed25519-sha256":
            return self.result(DkimStatus.NEUTRAL, "ed25519-sha256 not supported")
        if b"from" not in signed:
            return self.result(DkimStatus.PERMERROR, "From not signed")
        if len(signed) > MAX_SIGNED_FIELDS:
            return self.result(DkimStatus.NEUTRAL, f"h= names over {MAX_SIGNED_FIELDS} fields")
        domain = _domain_name(tags[b"d"])
        selector = _domain_name(tags[b"s"])
        if domain is None or selector is None:
            return self.result(DkimStatus.NEUTRAL, "d= or s= is not a domain name")
        self.domain = domain
        self.qname = f"{selector}._domainkey.{domain}"
        if len(self.qname) > domains.MAX_NAME_LENGTH:
            return self.result(DkimStatus.NEUTRAL, "key name over 253 characters")
        return self._body_checked()

    def _body_checked(self) -> SignatureResult | None:
        """FAIL or BODY_NOT_READ when the body hash decides; None when it matches."""
        tags = self.tags
        try:
            policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
            body = bytes(policy.canonicalize_body(self.signer.body))
            length = int(tags[b"l"]) if b"l" in tags else None
            expected = base64.b64decode(re.sub(rb"\s+", b"", tags[b"bh"]), validate=True)
            hasher = HASH_ALGORITHMS[tags[b"a"]]
        except (ValueError, binascii.Error, KeyError) as error:
            return self.result(DkimStatus.NEUTRAL, _problem("malformed", error))
        except Exception as error:  # dkimpy's c= parser, whatever it raises
            return self.result(DkimStatus.NEUTRAL, _problem("malformed c=", error))
        if not self.body_complete and (length is None or length > len(body)):
            return self.result(DkimStatus.BODY_NOT_READ, "body not read to the signed length")
        covered = body if length is None else body[:length]
        if bytes(hasher(covered).digest()) != expected:
            return self.result(DkimStatus.FAIL, "body hash mismatch")
        return None

    def finish(self, ends: float, clock: Callable[[], float]) -> SignatureResult:
        if self.outcome is not None:
            return self.outcome
        assert self.key is not None  # prepare() started the lookup when there is no outcome
        try:
            answer = self.key.result(timeout=max(0.0, ends - clock()))
        except TimeoutError:
            return self.result(DkimStatus.TEMPERROR, "key lookup past the deadline")
        record = _key_record(answer)
        if isinstance(record, SignatureResult):
            return self.result(record.status, record.reason)
        return self._verified(record)

    def _verified(self, record: bytes) -> SignatureResult:
        if re.search(rb"(?:^|;)\s*p\s*=\s*(?:;|$)", record):
            return self.result(DkimStatus.PERMERROR, "key revoked")
        try:
            key, bits, kind, _ = dkim.evaluate_pk(self.qname.encode(), record)
        except dkim.NaClNotFoundError:
            return self.result(DkimStatus.NEUTRAL, "ed25519 key not supported")
        except Exception as error:  # a zone's junk, parsed by dkimpy
            return self.result(DkimStatus.PERMERROR, _problem("key unusable", error))
        if kind != b"rsa" or not isinstance(key, dict):
            return self.result(DkimStatus.NEUTRAL, "key type not supported")
        exponent = key.get("publicExponent")
        if not isinstance(bits, int) or bits > MAX_KEY_BITS:
            return self.result(DkimStatus.PERMERROR, f"key over {MAX_KEY_BITS} bits")
        if not isinstance(exponent, int) or exponent.bit_length() > MAX_EXPONENT_BITS:
            return self.result(DkimStatus.PERMERROR, "key exponent unreasonable")
        # The body hash was checked in prepare(): dkimpy is handed the tags without bh= so it
        # does not canonicalize and hash the body again (it checks bh= only when present; the
        # header hash covers the DKIM-Signature field as received, bh= included).
        tags = {name: value for name, value in self.tags.items() if name != b"bh"}
        try:
            valid = self.signer.verify_sig(
                tags, list(self.signed), self.field, lambda _name, timeout=0: record
            )
        except Exception as error:  # e.g. a digest too large for the modulus
            return self.result(DkimStatus.PERMERROR, _problem("not verifiable", error), bits)
        if valid is not True:
            return self.result(DkimStatus.FAIL, "signature did not verify", bits)
        if bits < self.min_key_bits:
            return self.result(DkimStatus.POLICY, f"key of {bits} bits", bits)
        if self.tags[b"a"] == b"rsa-sha1":
            return self.result(DkimStatus.POLICY, "rsa-sha1 not accepted (RFC 8301)", bits)
        return self.result(DkimStatus.PASS, f"verified with a {bits}-bit key", bits)


def _key_record(answer: DnsAnswer) -> bytes | SignatureResult:
    """The one key record in a TXT answer, or the result that its absence gives."""

    def error(status: DkimStatus, reason: str) -> SignatureResult:
        return SignatureResult("", "", status, reason)

    kind = answer.kind
    if kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
        return error(DkimStatus.PERMERROR, "no key for signature")
    if kind is AnswerKind.MALFORMED and answer.detail != "truncated":
        return error(DkimStatus.PERMERROR, f"key answer unreadable: {_shown(answer.detail)}")
    if kind is not AnswerKind.RECORDS:
        return error(DkimStatus.TEMPERROR, f"key lookup: {kind.value}")
    if len(answer.records) > 1:
        return error(DkimStatus.PERMERROR, "several key records")
    text = answer.records[0]
    if len(text) > MAX_KEY_RECORD:
        return error(DkimStatus.PERMERROR, f"key record over {MAX_KEY_RECORD} characters")
    return text.encode("utf-8", errors="replace")


def start_key_lookups(signature_values: Sequence[bytes], lookups: Lookups) -> int:
    """Start the key lookups of the first `MAX_SIGNATURES` DKIM-Signature values (as
    received), before the body is read: `verify_signatures` asks the same names later and
    finds them answered or in flight (the resolver caches and merges them). Values it cannot
    read a d= and s= from are passed over; how many lookups started is returned."""
    started = 0
    for value in signature_values[:MAX_SIGNATURES]:
        if len(value) > MAX_SIGNATURE_FIELD:
            continue
        domain, selector = _domain_name(_tag(value, b"d")), _domain_name(_tag(value, b"s"))
        if domain is None or selector is None:
            continue
        qname = f"{selector}._domainkey.{domain}"
        if len(qname) <= domains.MAX_NAME_LENGTH:
            lookups.lookup(qname, "TXT")
            started += 1
    return started


def start_dmarc_lookups(author_domain: str, lookups: Lookups) -> None:
    """Start the lookups `lookup_dmarc_policy` will make, as soon as the From: field is known."""
    first_name, fallback_name = dmarc.policy_names(author_domain)
    lookups.lookup(first_name, "TXT")
    if fallback_name is not None:
        lookups.lookup(fallback_name, "TXT")


# --- DMARC policy records ----------------------------------------------------------------------


def lookup_dmarc_policy(
    author_domain: str,
    lookups: Lookups,
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dmarc.PolicyDiscovery:
    """The DMARC policy for `author_domain` (normalized, as dmarc.author_domain gives it),
    asking `_dmarc.<domain>` and, when needed, `_dmarc.<organizational domain>`.

    Both names are asked at once (one round trip, not two, within the deadline); the second
    answer is read only when the first has no DMARC record, as RFC 7489 6.6.3 says.
    """
    ends = clock() + deadline
    first_name, fallback_name = dmarc.policy_names(author_domain)
    first = lookups.lookup(first_name, "TXT")
    fallback = None if fallback_name is None else lookups.lookup(fallback_name, "TXT")
    at_author = _txt_lookup(first, ends, clock)
    if fallback is None or not dmarc.needs_fallback(at_author):
        return dmarc.discover_policy(author_domain, at_author, None)
    return dmarc.discover_policy(author_domain, at_author, _txt_lookup(fallback, ends, clock))


def _txt_lookup(
    promise: Promise[DnsAnswer], ends: float, clock: Callable[[], float]
) -> dmarc.TxtLookup:
    try:
        answer = promise.result(timeout=max(0.0, ends - clock()))
    except TimeoutError:
        return dmarc.TxtLookup(dmarc.TxtState.TEMPORARY, detail="past the deadline")
    kind = answer.kind
    if kind is AnswerKind.RECORDS:
        return dmarc.TxtLookup(dmarc.TxtState.FOUND, answer.records)
    if kind in (AnswerKind.NXDOMAIN, AnswerKind.NODATA):
        return dmarc.TxtLookup(dmarc.TxtState.NO_RECORD, detail=kind.value)
    if kind is AnswerKind.MALFORMED and answer.detail != "truncated":
        return dmarc.TxtLookup(dmarc.TxtState.PERMANENT, detail=_shown(answer.detail))
    return dmarc.TxtLookup(dmarc.TxtState.TEMPORARY, detail=kind.value)


# --- helpers -----------------------------------------------------------------------------------

_TAG = {
    name: re.compile(rb"(?:^|;)\s*" + name + rb"\s*=\s*([^;]*)")
    for name in (b"d", b"s", b"i", b"a")
}


def _tag(value: bytes, name: bytes) -> bytes:
    """A tag's value as written, for showing even when the field does not parse."""
    found = _TAG[name].search(value[:MAX_SIGNATURE_FIELD])
    return re.sub(rb"\s+", b" ", found.group(1).strip()) if found else b""


def _domain_name(value: bytes) -> str | None:
    """d= or s= as a DNS name in A-labels, or None. UTF-8 U-labels are allowed (RFC 8616 4:
    the lookup uses the A-labels); bytes that are not UTF-8 are not a name."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return domains.normalize_domain(text)


def _shown(value: bytes | str) -> str:
    """Printable ASCII, cut: a sender's or a zone's bytes, fit for a log line or a header."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[: _SHOWN_CHARS + 1])
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + "..."


def _problem(what: str, error: BaseException) -> str:
    return f"{what}: {_shown(str(error)) or type(error).__name__}"
