"""Why a rule fired: what it tested and the value that made it fire. Pure.

Only `spamgate explain` asks (commands/explain.py): the daemon never computes a trace, so the
milter pays nothing for it. A trace reads the same facts the rule read (rules.Facts; a fact
rule's value is the one HeaderView already computed for it) and, for header patterns, the
message's header fields, which the milter does not keep: explain has the message file.

Every value shown is attacker text, and an admin reads it on a terminal: `shown` escapes what
is not printable (control characters such as ESC, bidirectional overrides, the lone
surrogates of undecodable bytes) and cuts it to MAX_SHOWN characters.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping, Sequence

from spamgate.core import domains, headers
from spamgate.core.headerfacts import FactValue, HeaderView
from spamgate.core.patterns import Pattern
from spamgate.core.policy import FactCondition, FromCheck, HeaderCondition, Rule
from spamgate.core.rules import Facts

MAX_SHOWN = 80


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` quoted, safe for a terminal, at most about `limit` characters inside the quotes."""
    out: list[str] = []
    length = 0
    for char in text:
        if char.isprintable() and char not in '"\\':
            piece = char
        elif char in '"\\':
            piece = "\\" + char
        elif "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (headers.py)
            piece = f"\\x{ord(char) - 0xDC00:02x}"
        elif ord(char) < 0x100:
            piece = f"\\x{ord(char):02x}"
        else:
            piece = f"\\u{ord(char):04x}"
        if length + len(piece) > limit:
            return '"' + "".join(out) + '"...'
        out.append(piece)
        length += len(piece)
    return '"' + "".join(out) + '"'


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _fact_value(value: FactValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    return "absent" if value is None else shown(value)


def trace(rule: Rule, facts: Facts, fields: Sequence[tuple[str, str]] = ()) -> str:
    """What `rule` tested and the value that made it fire, given the facts it fired on and the
    message's header fields ((name, value as received) pairs, any case). "" for a rule with no
    one value to show (a composite names its parts instead)."""
    condition = rule.condition
    connection, envelope, message = facts.connection, facts.envelope, facts.message
    if condition == "fact" and rule.fact is not None:
        return _fact_trace(rule.fact, message.header_view)
    if condition == "header" and rule.header is not None:
        return _header_trace(rule.header, message.header_counts, fields)
    if condition in ("helo", "helo_matches"):
        pattern = rule.helo_matches
        how = _how(pattern, rule.helo)
        return f"helo = {shown(connection.helo)} ({how})"
    if condition in ("rdns", "rdns_matches"):
        rdns = connection.rdns
        pattern = rule.rdns_matches
        how = _how(pattern, rule.rdns)
        name = shown(rdns.name) if rdns.name else "none"
        return f"rdns = {name}, {rdns.status.value} ({how})"
    if condition in ("sender", "sender_matches"):
        pattern = rule.sender_matches
        how = _how(pattern, rule.sender)
        return f"sender = {shown('<' + envelope.sender + '>')} ({how})"
    if condition == "recipient_matches" and rule.recipient_matches is not None:
        pattern = rule.recipient_matches
        found = next((r for r in envelope.recipients if pattern.search(r)), "")
        return f"recipient = {shown(found)} (matches {shown(pattern.source)})"
    if condition == "recipients_over":
        return f"recipients = {len(envelope.recipients)} (over {rule.recipients_over})"
    if condition in ("date_ahead_hours", "date_behind_days"):
        return _date_trace(rule, message.date_skew)
    if condition == "from_domain" and rule.from_domain is FromCheck.NOT_SENDER_DOMAIN:
        sender_domain = domains.domain_of_address(envelope.sender) or ""
        from_domains = ", ".join(message.from_domains)
        return (
            f"from_domain = {shown(from_domains)}, sender domain {shown(sender_domain)}"
            " (not_sender_domain)"
        )
    if rule.composite is not None:
        parts = [("all", rule.composite.all), ("any", rule.composite.any)]
        return "composite " + "; ".join(f"{k} {', '.join(v)}" for k, v in parts if v)
    return ""


def _fact_trace(fact: FactCondition, view: HeaderView | None) -> str:
    # The value HeaderView computed when the rule tested it, not computed again.
    value = None if view is None else view.fact(fact.name)
    operator = fact.operator
    operand = fact.operand(operator)
    if isinstance(operand, Pattern):
        wanted = shown(operand.source)
    elif isinstance(operand, bool):
        wanted = _fact_value(operand)
    else:
        wanted = _number(float(operand or 0))
    return f"fact {fact.name} = {_fact_value(value)} ({operator} {wanted})"


def _how(pattern: Pattern | None, check: enum.Enum | None) -> str:
    """A `*_matches` rule's pattern, or the value of a check such as `helo: bare_ip`."""
    if pattern is not None:
        return f"matches {shown(pattern.source)}"
    return "" if check is None else str(check.value)


def _header_trace(
    header: HeaderCondition, counts: Mapping[str, int], fields: Sequence[tuple[str, str]]
) -> str:
    name = header.name
    lowered = name.lower()
    values = [value for field_name, value in fields if field_name.lower() == lowered]
    if header.matches is not None:
        pattern = header.matches
        found = next((t for t in map(headers.decoded_text, values) if pattern.search(t)), None)
        value = "?" if found is None else shown(found)
        return f"header {name} matches {shown(pattern.source)}: {value}"
    if header.matches_raw is not None:
        raw_pattern = header.matches_raw
        found = next((v for v in values if raw_pattern.search(headers.raw_bytes(v))), None)
        value = "?" if found is None else shown(found)
        return f"header {name} matches_raw {shown(raw_pattern.source)}: {value}"
    if header.missing:
        return f"header {name}: none (missing)"
    if header.count_over is not None:
        count = counts.get(lowered, len(values))
        return f"header {name} count = {count} (over {header.count_over})"
    bad = next((v for v in values if _malformed(lowered, v)), None)
    return f"header {name} = {'?' if bad is None else shown(headers.unfold(bad))} (malformed)"


def _malformed(lowered: str, value: str) -> bool:
    if lowered == "date":
        return headers.parse_date(value) is None
    mailbox = lowered in ("from", "sender")
    return headers.header_addresses(value, mailbox_required=mailbox) is None


def _date_trace(rule: Rule, skew: datetime.timedelta | None) -> str:
    hours = 0.0 if skew is None else skew.total_seconds() / 3600
    if rule.date_ahead_hours is not None:
        limit = _number(rule.date_ahead_hours)
        return f"date skew = {hours:+.1f} hours (ahead over {limit} hours)"
    limit = _number(rule.date_behind_days or 0)
    return f"date skew = {hours / 24:+.1f} days (behind over {limit} days)"
