"""Why a hit fired: what its rule tested and the value that made it fire. Pure.

Only `spamgate explain` asks (commands/explain.py): the daemon never computes a trace, so the
milter pays nothing for it. A trace reads the same facts the rule read (rules.Facts; a fact
rule's value is the one HeaderView already computed for it), the DNS list answers the engine
scored (evidence.ListOutcome: no lookup is made again) and, for header patterns, the message's
header fields, which the milter does not keep: explain has the message file.

A composite is traced through its parts, each with whether it fired and the value its own
test saw, nested composites indented under their parent. Parts are rules defined earlier
(the config allows no cycle), but they can share parts, so a trace is bounded in depth, in
parts per composite and in lines (MAX_DEPTH, MAX_PARTS, MAX_LINES) and says what it left out.

Every value shown is attacker text, and an admin reads it on a terminal: `shown` escapes what
is not printable (control characters such as ESC, bidirectional overrides, the lone
surrogates of undecodable bytes) and cuts it to MAX_SHOWN characters, so each value is one
bounded line.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spamgate.core import domains, headers
from spamgate.core.dkim import DkimReport
from spamgate.core.dmarc import DmarcResult
from spamgate.core.engine import Evidence
from spamgate.core.evidence import ListOutcome, ListStatus, RdnsStatus, ReverseDns
from spamgate.core.headerfacts import FactValue, HeaderView
from spamgate.core.patterns import Pattern
from spamgate.core.rules import ConnectionFacts, Facts
from spamgate.core.rulespecs import (
    FactCondition,
    FromCheck,
    HeaderCondition,
    HeloCheck,
    Rule,
    SenderCheck,
)
from spamgate.core.scoring import Mode
from spamgate.core.spf import SpfResult

MAX_SHOWN = 80
# A composite's parts can be composites, and two composites can share parts: without bounds a
# policy of a few dozen composites could print thousands of lines under one hit.
MAX_DEPTH = 4  # composites within a hit's composite shown; deeper ones are named only
MAX_PARTS = 12  # parts shown of one composite
MAX_LINES = 40  # lines of one hit's trace, its parts' included


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


def plain(text: str) -> str:
    """`text` as it is if plain (printable ASCII without blanks, quotes or backslashes, and not
    long), else as `shown`: for the names explain prints bare, a recipient or a HELO name,
    which can be attacker text too (copied from a log)."""
    simple = text.isascii() and text.isprintable() and not any(c in ' "\\' for c in text)
    return text if simple and 0 < len(text) <= MAX_SHOWN else shown(text)


@dataclass(frozen=True)
class Seen:
    """What explain gathered at one decision: all that a trace reads."""

    facts: Facts
    fired: frozenset[str] = frozenset()  # the rules and list hits that fired, on trial too
    on_trial: frozenset[str] = frozenset()  # those of `fired` that fired on trial only
    lists: tuple[ListOutcome, ...] = ()  # the DNS list answers the engine was given
    lists_ignored: str = ""  # why list answers did not count ("no-dns", "trusted", ...)
    remembered: tuple[str, ...] = ()  # IP list hits replayed from a recent refusal
    fields: tuple[tuple[str, str], ...] = ()  # the message's header fields, as received


@dataclass(frozen=True)
class Step:
    """A hit, or a part of a composite: whether it fired, and what its test saw."""

    name: str
    fired: bool
    detail: str  # the test and the value it saw, values escaped and cut; "" nothing known
    role: str = ""  # "all", "any" or "not": its place in the composite above; "" a hit
    on_trial: bool = False  # fired only in observe mode: its score did not count
    parts: tuple[Step, ...] = ()
    left_out: int = 0  # parts not shown, to keep the trace bounded


def explain(name: str, rules: Mapping[str, Rule], seen: Seen) -> Step:
    """Why the hit `name` (a rule of `rules`, or a DNS list's hit) fired, given what was seen
    at the decision it fired at: a composite with its parts, to MAX_DEPTH and MAX_LINES."""
    return _Tracer(rules, seen).step(name, "", 0)


class _Tracer:
    """One hit's trace being built: the lines left for its parts (its own detail line taken)."""

    def __init__(self, rules: Mapping[str, Rule], seen: Seen) -> None:
        self.rules, self.seen = rules, seen
        self.lines_left = MAX_LINES - 1

    def step(self, name: str, role: str, depth: int) -> Step:
        rule, seen = self.rules.get(name), self.seen
        detail = _list_detail(name, seen) if rule is None else trace(rule, seen.facts, seen.fields)
        step = Step(name, name in seen.fired, detail, role, name in seen.on_trial)
        if rule is None or rule.composite is None:
            return step
        composite = rule.composite
        named = [
            *(("all", n) for n in composite.all),
            *(("any", n) for n in composite.any),
            *(("not", n) for n in composite.not_),
        ]
        parts: list[Step] = []
        for part_role, part in named if depth < MAX_DEPTH else ():
            # A line is kept for each composite open here (this one and those above it, depth
            # + 1) and one for the part's own, to say what each left out.
            if len(parts) == MAX_PARTS or self.lines_left < depth + 3:
                break
            self.lines_left -= 1
            parts.append(self.step(part, part_role, depth + 1))
        left_out = len(named) - len(parts)
        self.lines_left -= 1 if left_out else 0
        return dataclasses.replace(step, parts=tuple(parts), left_out=left_out)


def lines(step: Step) -> list[str]:
    """The trace as explain prints it under the hit: the hit's detail, then each part of a
    composite on a line of its own, indented two spaces a level."""
    out = [step.detail] if step.detail else []
    _part_lines(step, 1, out)
    return out


def _part_lines(step: Step, depth: int, out: list[str]) -> None:
    indent = "  " * depth
    for part in step.parts:
        detail = part.detail or "nothing known"
        out.append(f"{indent}{part.role} {part.name} {_outcome(part)}: {detail}")
        _part_lines(part, depth + 1, out)
    if step.left_out:
        out.append(f"{indent}... {step.left_out} more not shown")


def _outcome(part: Step) -> str:
    if part.fired:
        return "fired on trial (observe)" if part.on_trial else "fired"
    # A `not:` part holds because its own test failed: the value below did not match.
    return "did not fire, as required" if part.role == "not" else "did not fire"


def as_json(step: Step) -> dict[str, object]:
    """The trace for `explain --json`: the same values as the lines, as plain JSON types."""
    value: dict[str, object] = {"role": step.role} if step.role else {}
    value |= {"name": step.name, "fired": step.fired, "detail": step.detail}
    if step.on_trial:
        value["on_trial"] = True
    if step.parts or step.left_out:
        value["parts"] = [as_json(part) for part in step.parts]
    if step.left_out:
        value["left_out"] = step.left_out
    return value


MAX_ANSWERS = 4  # a domain list's answers shown for one hit (one per name it looked up)


def _list_detail(name: str, seen: Seen) -> str:
    """What the DNS list that defines the hit `name` answered, from the answers the engine
    scored: its codes for a listing, or why there was no usable answer."""
    if name in seen.remembered:
        return "list hit remembered from a recent refusal of this client (not asked again)"
    answers = [o for o in seen.lists if any(h.name == name for h in o.dns_list.scored_hits)]
    if not answers:
        return f"list answers not used ({seen.lists_ignored})" if seen.lists_ignored else ""
    shown_answers = [_answer(name, outcome) for outcome in answers[:MAX_ANSWERS]]
    more = len(answers) - MAX_ANSWERS
    if more > 0:
        shown_answers.append(f"{more} more")
    ignored = f"; not counted ({seen.lists_ignored})" if seen.lists_ignored else ""
    return "; ".join(shown_answers) + ignored


def _answer(name: str, outcome: ListOutcome) -> str:
    about = ""
    if outcome.subject:
        source, _, looked_up = outcome.subject.partition(":")
        about = f" for {plain(source)} {shown(looked_up)}"
    listed = f"list {outcome.dns_list.name}{about}"
    codes = ", ".join(plain(code) for code in outcome.codes[:MAX_ANSWERS])
    if outcome.status is ListStatus.LISTED:
        mine = any(hit.name == name for hit in outcome.hits)
        return f"{listed} = {codes} (listed{'' if mine else ', not as ' + name})"
    if outcome.status is ListStatus.CLEAN:
        return f"{listed} = {codes or 'no record'} (not listed)"
    why = f": {plain(outcome.failure)}" if outcome.failure else ""
    return f"{listed} = {codes or 'no answer'} (unusable{why})"


def trace(rule: Rule, facts: Facts, fields: Sequence[tuple[str, str]] = ()) -> str:
    """What `rule` tested and the value it saw, given the facts it was tested on and the
    message's header fields ((name, value as received) pairs, any case): the value that made
    it fire, or, for a part of a composite that did not fire, the value that did not match.
    A composite names its parts (`explain` traces each)."""
    condition = rule.condition
    connection, envelope, message = facts.connection, facts.envelope, facts.message
    if condition == "fact" and rule.fact is not None:
        return _fact_trace(rule.fact, message.header_view)
    if condition == "header" and rule.header is not None:
        return _header_trace(rule.header, message.header_counts, fields)
    if condition in ("helo", "helo_matches"):
        return _helo_trace(rule, connection)
    if condition in ("rdns", "rdns_matches"):
        how = _how(rule.rdns_matches, rule.rdns)
        return f"rdns = {_rdns(connection.rdns)} ({how})"
    if condition in ("sender", "sender_matches"):
        how = _how(rule.sender_matches, rule.sender)
        seen = f"sender = {shown('<' + envelope.sender + '>')}"
        if rule.sender is SenderCheck.UNRESOLVABLE:
            seen += ", its domain " + _resolution(envelope.sender_domain_resolves)
        return f"{seen} ({how})"
    if condition in ("spf", "helo_spf", "dkim", "dmarc"):
        return _authentication_trace(rule, facts)
    if condition == "recipient_matches" and rule.recipient_matches is not None:
        return _recipient_trace(rule.recipient_matches, envelope.recipients)
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
        composite = rule.composite
        parts = [("all of", composite.all), ("any of", composite.any), ("none of", composite.not_)]
        return "composite: " + "; ".join(f"{k} {', '.join(v)}" for k, v in parts if v)
    return ""


def _helo_trace(rule: Rule, connection: ConnectionFacts) -> str:
    how = _how(rule.helo_matches, rule.helo)
    seen = f"helo = {shown(connection.helo)}"
    # The DNS evidence the check read, gathered before the rule ran (no lookup here).
    if rule.helo is HeloCheck.UNRESOLVABLE:
        seen += ", " + _resolution(connection.helo_resolves)
    elif rule.helo is HeloCheck.NOT_PTR_DOMAIN:
        seen += f", rdns {_rdns(connection.rdns)}"
    return f"{seen} ({how})"


def _recipient_trace(pattern: Pattern, recipients: Sequence[str]) -> str:
    found = next((r for r in recipients if pattern.search(r)), None)
    if found is not None:
        return f"recipient = {shown(found)} (matches {shown(pattern.source)})"
    # None matched (a composite's part): the first recipient, and how many there were.
    first = shown(recipients[0]) if recipients else "none"
    others = f" and {len(recipients) - 1} more" if len(recipients) > 1 else ""
    return f"recipient = {first}{others} (matches {shown(pattern.source)})"


def _authentication_trace(rule: Rule, facts: Facts) -> str:
    if rule.dkim is not None:
        return f"dkim = {_dkim(facts.message.dkim)} ({rule.dkim.value})"
    if rule.dmarc is not None:
        return f"dmarc = {_dmarc(facts.message.dmarc)} ({rule.dmarc.value})"
    if rule.spf is not None:
        sender = shown("<" + facts.envelope.sender + ">")
        return f"spf = {_spf(facts.envelope.spf)} for {sender} ({rule.spf.value})"
    assert rule.helo_spf is not None
    helo = shown(facts.connection.helo)
    return f"helo_spf = {_spf(facts.connection.helo_spf)} for {helo} ({rule.helo_spf.value})"


def _spf(result: SpfResult | None) -> str:
    # None: not checked (DNS off, a trusted or authenticated client, no client address).
    return "not checked" if result is None else result.value


def _dkim(report: DkimReport | None) -> str:
    """Each signature's result with its d= and s= and why; `not checked` without a check
    (DNS off, a trusted, allowlisted or authenticated client, no client address)."""
    if report is None:
        return "not checked"
    if report.header_problem:
        return f"permerror: {plain(report.header_problem)}"
    if not report.signatures:
        return "none (no signature)"
    parts = [
        f"{r.status.value} d={shown(r.domain)} s={shown(r.selector)}: {plain(r.reason)}"
        for r in report.signatures
    ]
    more = f", {report.skipped} more not verified" if report.skipped else ""
    return "; ".join(parts) + more


def _dmarc(result: DmarcResult | None) -> str:
    """The outcome for the From: domain, the policy that applied and what aligned."""
    if result is None:
        return "not checked"
    seen = result.outcome.value
    if result.author_domain:
        seen += f" for {shown(result.author_domain)}"
    if result.published is not None:
        seen += f", p={result.published.value}"
        if result.sampled_out:
            seen += f" (pct sampled out: {result.applied.value if result.applied else '-'})"
    aligned = [f"{c.method.value} {shown(c.domain)}: {c.reason}" for c in result.checks]
    if aligned:
        seen += "; " + ", ".join(aligned)
    elif result.reason:
        seen += f": {plain(result.reason)}"
    return seen


def _resolution(resolves: bool | None) -> str:
    if resolves is None:
        return "not resolved (no answer)"
    return "resolves" if resolves else "does not resolve"


def _rdns(rdns: ReverseDns) -> str:
    """The client's reverse name and its status, as a reverse DNS rule read them."""
    name = shown(rdns.name) if rdns.name else "none"
    status = rdns.status.value
    if rdns.status is RdnsStatus.UNCONFIRMED and len(rdns.ptr_names) > 1:
        status += f", {len(rdns.ptr_names)} names"
    detail = f": {plain(rdns.detail)}" if rdns.detail else ""
    return f"{name}, {status}{detail}"


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
        texts = [headers.decoded_text(value) for value in values]
        found = next((t for t in texts if pattern.search(t)), None)
        return f"header {name} matches {shown(pattern.source)}: {_field(found, texts)}"
    if header.matches_raw is not None:
        raw_pattern = header.matches_raw
        found = next((v for v in values if raw_pattern.search(headers.raw_bytes(v))), None)
        return f"header {name} matches_raw {shown(raw_pattern.source)}: {_field(found, values)}"
    if header.missing:
        count = counts.get(lowered, len(values))
        return (
            f"header {name}: none (missing)"
            if not count
            else f"header {name} count = {count} (missing)"
        )
    if header.count_over is not None:
        count = counts.get(lowered, len(values))
        return f"header {name} count = {count} (over {header.count_over})"
    bad = next((v for v in values if _malformed(lowered, v)), None)
    unfolded = [headers.unfold(value) for value in values]
    shown_bad = _field(None if bad is None else headers.unfold(bad), unfolded)
    return f"header {name} = {shown_bad} (malformed)"


def _field(found: str | None, values: Sequence[str]) -> str:
    """The field that made a header rule fire; for one that did not, the first of its kind
    (a composite's `not:` part shows what did not match), or none."""
    if found is not None:
        return shown(found)
    if not values:
        return "none"
    return shown(values[0]) + (f" (first of {len(values)})" if len(values) > 1 else "")


def _malformed(lowered: str, value: str) -> bool:
    if lowered == "date":
        return headers.parse_date(value) is None
    mailbox = lowered in ("from", "sender")
    return headers.header_addresses(value, mailbox_required=mailbox) is None


def _date_trace(rule: Rule, skew: datetime.timedelta | None) -> str:
    # No skew (no Date, or none that parsed) only for a composite's part that did not fire.
    hours = None if skew is None else skew.total_seconds() / 3600
    if rule.date_ahead_hours is not None:
        limit = _number(rule.date_ahead_hours)
        value = "none" if hours is None else f"{hours:+.1f} hours"
        return f"date skew = {value} (ahead over {limit} hours)"
    limit = _number(rule.date_behind_days or 0)
    value = "none" if hours is None else f"{hours / 24:+.1f} days"
    return f"date skew = {value} (behind over {limit} days)"


def seen_at(facts: Facts, evidence: Evidence, fields: Sequence[tuple[str, str]] = ()) -> Seen:
    """What a trace reads at one decision: the facts the rules were tested on and the evidence
    the engine scored (which rules fired, the DNS list answers), with the header fields."""
    fired = {rule.name for rule in evidence.rules}
    on_trial = {rule.name for rule in evidence.rules if rule.mode is Mode.OBSERVE}
    if evidence.lists_ignored is None:
        for outcome in evidence.lists:
            names = {hit.name for hit in outcome.hits}
            fired |= names
            if outcome.dns_list.mode is Mode.OBSERVE:
                on_trial |= names
    fired |= set(evidence.remembered)
    ignored = "" if evidence.lists_ignored is None else evidence.lists_ignored.value
    return Seen(
        facts,
        frozenset(fired),
        frozenset(on_trial),
        evidence.lists,
        ignored,
        evidence.remembered,
        tuple(fields),
    )
