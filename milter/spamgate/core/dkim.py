"""DKIM results (RFC 6376) as the policy sees them. Pure: dns/dkimcheck.py verifies the
signatures and fills these in; rules, explain and Authentication-Results read them.

A message may carry several signatures, each with its own result. A `dkim:` rule names one
result and fires when *some* verified signature has it (`dkim: pass` when any signature
passed, `dkim: fail` when any failed, even if another passed): each signature is a separate
claim, and a forwarder's valid signature does not undo a broken one. `dkim: none` fires when
the message has no DKIM-Signature at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spamgate.core import dmarc


class DkimStatus(enum.Enum):
    """One signature's result: RFC 8601's dkim= words, plus body_not_read (see dkimcheck)."""

    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"
    POLICY = "policy"
    BODY_NOT_READ = "body_not_read"


class DkimResult(enum.Enum):
    """What a `dkim:` rule names: a signature's status, or `none` for no signature."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    NEUTRAL = "neutral"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"
    POLICY = "policy"
    BODY_NOT_READ = "body_not_read"


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """One DKIM-Signature's result. `domain` (d=) is in A-labels when it is a valid name,
    otherwise shown as printable ASCII; `selector` (s=), `identity` (i=) and `algorithm` (a=)
    likewise shown. `reason` is short and says why, for logs, explain and A-R comments."""

    domain: str
    selector: str
    status: DkimStatus
    reason: str
    identity: str = ""
    algorithm: str = ""
    key_bits: int = 0


@dataclass(frozen=True, slots=True)
class DkimReport:
    """The DKIM results of one message, topmost signature first.

    `skipped` signatures were beyond MAX_SIGNATURES. `header_problem` is set when the header
    block could not be read at all (then no signature is verified). `body_complete` is what
    the caller said: False when the body was cut at its byte bound.
    """

    signatures: tuple[SignatureResult, ...] = ()
    skipped: int = 0
    header_problem: str = ""
    body_complete: bool = True

    def identifiers(self) -> tuple[dmarc.Identifier, ...]:
        """Each signature's d= as DMARC sees it: passed only on PASS."""
        return tuple(
            dmarc.Identifier(dmarc.Method.DKIM, result.domain, result.status is DkimStatus.PASS)
            for result in self.signatures
        )

    @property
    def results(self) -> frozenset[DkimResult]:
        """The results `dkim:` rules fire on: each signature's status, `none` for a message
        without signatures, `permerror` for a header block dkimpy could not read at all (no
        signature in it can be checked: RFC 8601 2.7.1 calls that a permanent error)."""
        if self.header_problem:
            return frozenset({DkimResult.PERMERROR})
        if not self.signatures:
            return frozenset({DkimResult.NONE})
        return frozenset(DkimResult(result.status.value) for result in self.signatures)

    @property
    def shown(self) -> str:
        """For the decision line: `pass:example.com,fail:example.net`, `none`, `permerror`."""
        if self.header_problem:
            return "permerror"
        if not self.signatures:
            return "none"
        return ",".join(f"{r.status.value}:{_log_safe(r.domain)}" for r in self.signatures)


def _log_safe(domain: str) -> str:
    """A d= as one token of the decision line: a name, or `?` for what a name cannot hold
    (an unusable d= is shown as the sender wrote it, spaces and commas included)."""
    return "".join(c if c.isalnum() or c in ".-_" else "?" for c in domain) or "-"
