"""The Authentication-Results header (RFC 8601): the one spamgate adds, and whether one that
came with the message claims to be ours.

A header that names our authserv-id is believed by everything downstream (a mail client
showing a "verified" badge, a Sieve script, a later filter). One that arrived from outside is
a forgery by definition, and is deleted, as forged X-Spam-* headers are; one that names
another host is left alone (RFC 8601 section 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spamgate.core.dkim import DkimReport, DkimStatus
from spamgate.core.dmarc import DmarcOutcome, DmarcResult
from spamgate.core.spf import SpfVerdict

HEADER = "Authentication-Results"

# A hostile header can be long and full of comments: reading the authserv-id looks at this
# much of it at most (an authserv-id is a host name, well under 255 characters).
_MOST_CHARS = 2048
_MOST_COMMENT_DEPTH = 8
# What may not appear in a method, result or property name (RFC 2045 tspecials and white
# space; the dot of `smtp.mailfrom` may).
# What makes a property's value need quotes (an address's @ and dots may stay bare).
_NOT_BARE = frozenset('()<>[]:;\\,"= \t')
_NOT_IN_NAMES = frozenset('()<>[]:;@\\,"=/? \t\r\n')


@dataclass(frozen=True)
class MethodResult:
    """One `method=result` clause: `spf=pass smtp.mailfrom=example.com`.

    `properties` are (ptype.property, value) pairs in the order shown, such as
    ("smtp.mailfrom", "user@example.com") or ("header.d", "example.com"); `reason` is free
    text, shown as a quoted `reason=`.
    """

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def header_value(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """The header's value: our authserv-id, then each result on a folded line of its own
    (`none` when there is no result: RFC 8601 says a header without any is still correct)."""
    if not results:
        return f"{authserv_id}; none"
    clauses = [_clause(result) for result in results]
    return authserv_id + ";\n\t" + ";\n\t".join(clauses)


def _clause(result: MethodResult) -> str:
    parts = [f"{_token(result.method)}={_token(result.result)}"]
    if result.reason:
        parts.append(f"reason={_quoted(result.reason)}")
    parts += [f"{_token(name)}={_pvalue(value)}" for name, value in result.properties]
    return " ".join(parts)


def _token(text: str) -> str:
    """A method, result or property name: ours, so plain; anything else is a bug made visible."""
    cleaned = "".join(c for c in text if c.isascii() and c.isprintable() and c not in _NOT_IN_NAMES)
    return cleaned or "unknown"


def _pvalue(value: str) -> str:
    """A property's value: bare when it is a token or a plain address or domain (what
    RFC 8601's pvalue allows and readers expect), else quoted."""
    if value and all(c.isascii() and c.isprintable() and c not in _NOT_BARE for c in value):
        return value
    return _quoted(value)


def _quoted(text: str) -> str:
    """A quoted-string of printable ASCII, at most 200 characters: the header must stay one
    valid header whatever a sender put in its identities."""
    safe = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:200])
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def claimed_authserv_id(value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with, lower case; None when it
    has none that can be read (then it claims nobody, and is nobody's to delete).

    The id may follow comments, and be a quoted-string; what follows it (a version, `;`) does
    not matter here."""
    text = value[:_MOST_CHARS]
    position = _skip_cfws(text, 0)
    if position is None or position >= len(text):
        return None
    if text[position] == '"':
        end = text.find('"', position + 1)
        if end < 0:
            return None
        found = text[position + 1 : end].strip()
        return found.lower() or None
    end = position
    while end < len(text) and text[end] not in ' \t\r\n;()"':
        end += 1
    found = text[position:end]
    return found.lower() or None


def _skip_cfws(text: str, position: int) -> int | None:
    """The position after white space and (nested) comments; None for a comment that never
    closes or nests deeper than anyone writes."""
    depth = 0
    while position < len(text):
        char = text[position]
        if char == "\\" and depth:
            position += 2
            continue
        if char == "(":
            depth += 1
            if depth > _MOST_COMMENT_DEPTH:
                return None
        elif char == ")" and depth:
            depth -= 1
        elif not depth and char not in " \t\r\n":
            return position
        position += 1
    return None if depth else position


def claims(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value names `authserv_id` (compared without regard
    to case, as host names are)."""
    claimed = claimed_authserv_id(value)
    return claimed is not None and claimed == authserv_id.lower()


def method_results(
    *,
    sender: str,
    spf: SpfVerdict | None,
    helo: str,
    helo_spf: SpfVerdict | None,
    dkim: DkimReport | None,
    dmarc: DmarcResult | None,
) -> tuple[MethodResult, ...]:
    """The clauses of our header for the checks that were made (None: not made, not shown).

    `sender` is MAIL FROM without <> ("" for the null sender, whose SPF identity is the HELO
    name: then the clause says smtp.helo, RFC 8601 2.7.2). DKIM gives one clause per
    signature with its d= and s= (2.7.1), `dkim=none` without any; DMARC names the From:
    domain (RFC 7489 11.2) and, for a fail, the policy that applied as the reason.
    """
    results: list[MethodResult] = []
    if spf is not None:
        identity = ("smtp.mailfrom", sender) if sender else ("smtp.helo", helo)
        results.append(MethodResult("spf", spf.result.value, (identity,)))
    if helo_spf is not None and (sender or spf is None):
        results.append(MethodResult("spf", helo_spf.result.value, (("smtp.helo", helo),)))
    if dkim is not None:
        results += _dkim_results(dkim)
    if dmarc is not None:
        properties = (("header.from", dmarc.author_domain),) if dmarc.author_domain else ()
        reason = dmarc.reason if dmarc.outcome is not DmarcOutcome.PASS else ""
        if dmarc.applied is not None:
            reason = f"p={dmarc.applied.value}" + (
                " (pct sampled out)" if dmarc.sampled_out else ""
            )
        results.append(MethodResult("dmarc", dmarc.outcome.status, properties, reason))
    return tuple(results)


def _dkim_results(report: DkimReport) -> list[MethodResult]:
    if report.header_problem:
        return [MethodResult("dkim", "permerror", reason=report.header_problem)]
    if not report.signatures:
        return [MethodResult("dkim", "none")]
    results = []
    for signature in report.signatures:
        # body_not_read is ours: for readers of the header it is "could not be checked"
        # now, which RFC 8601 calls neutral.
        status = signature.status
        word = "neutral" if status is DkimStatus.BODY_NOT_READ else status.value
        properties = (("header.d", signature.domain), ("header.s", signature.selector))
        reason = "" if status is DkimStatus.PASS else signature.reason
        results.append(MethodResult("dkim", word, properties, reason))
    return results
