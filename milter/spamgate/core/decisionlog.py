"""The decision log line: one per SMTP transaction, key=value, stable tokens to grep for.

    NOQUEUE: decision id=5f3a9c01d2 client=192.0.2.10 client_name=unknown helo=mx.example
    from=<a@example.org> rcpt= refused=<b@example.com> stage=rcpt action=reject
    enforced=reject mode=enforce score=10.0 hits=SPAMHAUS_SBL:10
    lists=SPAMHAUS_ZEN:listed:127.0.0.2:3ms,DNSWL:clean:2ms policy=4e1f0c9a7b21

(one line in the log). Values an SMTP client controls are quoted and escaped, so no HELO,
address or header can forge a line or a field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spamgate.core.engine import DEFAULT_GROUP, Enforcement, Hit, ListsIgnored, Verdict
from spamgate.core.evidence import ListOutcome, ListStatus
from spamgate.core.scoring import Mode

# A value is bare only if printable ASCII without space, quote, backslash or "=". Anything
# else is quoted, and a "=" in it is written \x3d: no text a client sends (a HELO, an
# address) can then hold "key=value" for a grep to find, so a line reads one way only.
_PLAIN = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_UNSAFE = re.compile(r'["\\=]|[^\x20-\x7e]')


@dataclass(frozen=True)
class Decision:
    decision_id: str
    queue_id: str
    client_address: str
    client_name: str
    helo: str
    sender: str
    accepted: tuple[str, ...]
    refused: tuple[str, ...]
    stage: str
    verdict: Verdict
    enforced: Enforcement
    mode: Mode
    lists: tuple[ListOutcome, ...]
    lists_ignored: ListsIgnored | None
    policy_digest: str
    deferred: tuple[str, ...] = ()
    rdns: str = ""
    allowed_by: str = ""
    denied_by: str = ""
    greylist: str = ""  # the outcome of each triplet asked, once each
    spf: str = ""  # MAIL FROM's SPF result, if a rule asked for it: "fail", "temperror"
    helo_spf: str = ""  # the HELO name's, the same way
    dkim: str = ""  # each signature's result and d=, "none", if checked: "pass:example.com"
    dmarc: str = ""  # the DMARC outcome and From: domain, if checked: "fail_reject:example.com"


def quote(value: str) -> str:
    """A log-safe rendering: bare if plain printable ASCII, else double-quoted with escapes."""
    if _PLAIN.match(value) and '"' not in value and "\\" not in value:
        return value
    return '"' + _UNSAFE.sub(_escape, value) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    if char == "=":
        return "\\x3d"
    if char in "\r\n\t":
        return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}[char]
    code = ord(char)
    # Bytes that were not UTF-8 arrive as lone surrogates (surrogateescape): \xNN is a raw
    # byte; \uNNNN and \UNNNNNNNN are characters, as in Python string literals.
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def render_list(outcome: ListOutcome) -> str:
    name = outcome.dns_list.name
    parts = [f"{name}[{outcome.subject}]" if outcome.subject else name, outcome.status.value]
    if outcome.status is ListStatus.UNUSABLE:
        parts.append(outcome.failure)
    if outcome.codes:
        parts.append("+".join(outcome.codes))
    if outcome.latency_ms is not None:
        parts.append(f"{outcome.latency_ms:.0f}ms")
    return ":".join(parts)


def format_decision(decision: Decision) -> str:
    verdict = decision.verdict
    unusable = [o for o in decision.lists if o.status is ListStatus.UNUSABLE]
    fields = [
        ("id", decision.decision_id),
        ("client", decision.client_address),
        ("client_name", decision.client_name),
        ("helo", decision.helo),
        ("from", decision.sender),
        ("rcpt", ",".join(decision.accepted)),
        ("refused", ",".join(decision.refused)),
        ("deferred", ",".join(decision.deferred)),
        ("stage", decision.stage),
        ("action", verdict.action.label),
        ("enforced", decision.enforced.action.label),
        ("waived_by", decision.enforced.waived_by),
        ("tempfail_by", _tempfail_by(verdict)),
        ("greylist", decision.greylist),
        ("allowed_by", decision.allowed_by),
        ("denied_by", decision.denied_by),
        ("mode", decision.mode.value),
        ("policy_group", "" if verdict.group == DEFAULT_GROUP else verdict.group),
        ("score", f"{verdict.score:.1f}"),
        ("hits", ",".join(_render_hit(h) for h in verdict.hits)),
        ("trial_action", _trial(verdict)),
        ("fails", ",".join(dict.fromkeys(o.fail_marker for o in unusable))),
        ("rdns", decision.rdns),
        ("spf", decision.spf),
        ("helo_spf", decision.helo_spf),
        ("dkim", decision.dkim),
        ("dmarc", decision.dmarc),
        ("lists", ",".join(render_list(o) for o in decision.lists)),
        ("lists_ignored", "" if decision.lists_ignored is None else decision.lists_ignored.value),
        ("policy", decision.policy_digest),
    ]
    body = " ".join(
        f"{key}={quote(value) if value else ''}" for key, value in fields if value or key in _ALWAYS
    )
    return f"{_queue_token(decision.queue_id)}: decision {body}"


def _queue_token(queue_id: str) -> str:
    """The line's first token. Postfix and Sendmail queue ids are letters and digits, but the
    `i` macro is the MTA's to send: anything else is quoted like a value, with blanks escaped
    too, so it can neither end the line nor hold the ": decision " that parsers split on."""
    if not queue_id:
        return "NOQUEUE"
    return quote(queue_id).replace(" ", "\\x20")


def _render_hit(hit: Hit) -> str:
    return f"{hit.name}:{hit.score:g}" + ("(observe)" if hit.observe else "")


def _tempfail_by(verdict: Verdict) -> str:
    """The lists with `on_unusable: tempfail` that made the action a tempfail, as
    `unusable:NAME`; `unusable:NAME(observe)` would have, had everything on trial counted."""
    counted = [f"unusable:{name}" for name in verdict.tempfail_by]
    trial = [f"unusable:{name}(observe)" for name in verdict.trial_tempfail_by]
    return ",".join(counted + trial)


def _trial(verdict: Verdict) -> str:
    """With rules or lists on trial: what would have happened had they counted."""
    if verdict.trial_action is None or verdict.trial_score is None:
        return ""
    return f"{verdict.trial_action.label}:{verdict.trial_score:.1f}"


# Keys shown even when empty, so `grep 'refused= '` style searches and parsers stay simple.
_ALWAYS = frozenset({"id", "client", "rcpt", "refused", "stage", "action", "enforced", "score"})
