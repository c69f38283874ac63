"""Rules: which fire, given what is known at a stage of the SMTP dialogue. Pure.

Each rule has one condition, and each condition belongs to the stage at which its facts are
complete: HELO and reverse DNS at the connection stage, MAIL FROM and RCPT TO at the envelope
stage (decided at RCPT TO), headers at the message stage (decided at end of message). A
composite belongs to the latest stage of what it names. Header patterns run as each header
arrives (`match_header`), so no header value has to be kept for later.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spamgate.core import domains, headers
from spamgate.core.addresses import IPAddress, IPNetwork, normalize_address
from spamgate.core.dkim import DkimReport
from spamgate.core.dmarc import DmarcResult
from spamgate.core.evidence import RdnsStatus, ReverseDns
from spamgate.core.evidence import Stage as Stage  # noqa: PLC0414
from spamgate.core.headerfacts import FactValue, HeaderView
from spamgate.core.listspecs import DnsList, DomainList, DomainSource
from spamgate.core.patterns import Pattern, PatternGroup, RawPattern
from spamgate.core.policy import Policy
from spamgate.core.rulespecs import (
    Composite,
    FactCondition,
    FromCheck,
    HeloCheck,
    RdnsCheck,
    Rule,
    SenderCheck,
)
from spamgate.core.scoring import Mode
from spamgate.core.spf import SpfResult

# Header values up to this long have their rule verdicts remembered, this many at most
# (about 3 MB at worst).
_REMEMBERED_VALUE = 256
_REMEMBERED_HEADERS = 8192


_STAGE_OF_CONDITION = {
    "helo": Stage.CONNECTION,
    "helo_matches": Stage.CONNECTION,
    "rdns": Stage.CONNECTION,
    "rdns_matches": Stage.CONNECTION,
    "sender": Stage.ENVELOPE,
    "sender_matches": Stage.ENVELOPE,
    "spf": Stage.ENVELOPE,
    "helo_spf": Stage.CONNECTION,
    "recipient_matches": Stage.ENVELOPE,
    "recipients_over": Stage.ENVELOPE,
    "header": Stage.MESSAGE,
    "date_ahead_hours": Stage.MESSAGE,
    "date_behind_days": Stage.MESSAGE,
    "from_domain": Stage.MESSAGE,
    "dkim": Stage.MESSAGE,
    "dmarc": Stage.MESSAGE,
    "fact": Stage.MESSAGE,
}

_STAGE_OF_SOURCE = {
    DomainSource.HELO: Stage.CONNECTION,
    DomainSource.PTR: Stage.CONNECTION,
    DomainSource.SENDER: Stage.ENVELOPE,
    DomainSource.FROM: Stage.MESSAGE,
    DomainSource.REPLY_TO: Stage.MESSAGE,
}


def list_stage(dns_list: DnsList) -> Stage:
    """The stage by which a list's hits can be known."""
    if isinstance(dns_list, DomainList):
        return max(_STAGE_OF_SOURCE[source] for source in dns_list.check_names)
    return Stage.CONNECTION


@dataclass(frozen=True)
class ConnectionFacts:
    address: IPAddress | None = None
    helo: str = ""
    rdns: ReverseDns = field(default_factory=lambda: ReverseDns(RdnsStatus.UNKNOWN))
    helo_resolves: bool | None = None
    helo_spf: SpfResult | None = None  # None: not checked (no rule asks, or no HELO yet)
    our_names: frozenset[str] = frozenset()
    our_addresses: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class EnvelopeFacts:
    sender: str = ""  # lower case, without <>; "" is the null sender
    sender_domain_resolves: bool | None = None
    recipients: tuple[str, ...] = ()  # lower case, without <>; every RCPT TO so far
    spf: SpfResult | None = None  # MAIL FROM's (the HELO name's for <>); None: not checked


@dataclass(frozen=True)
class MessageFacts:
    header_hits: frozenset[str] = frozenset()
    header_counts: Mapping[str, int] = field(default_factory=dict)
    malformed: frozenset[str] = frozenset()
    date_skew: datetime.timedelta | None = None
    from_domains: tuple[str, ...] = ()
    # The header fields, kept only when a `fact:` rule needs them (RuleBook.needs_header_view).
    header_view: HeaderView | None = None
    # DKIM and DMARC, checked at end of message when a rule or Authentication-Results needs
    # them; None: not checked (no rule asks, lists do not count, no DNS).
    dkim: DkimReport | None = None
    dmarc: DmarcResult | None = None


@dataclass(frozen=True)
class Facts:
    connection: ConnectionFacts = field(default_factory=ConnectionFacts)
    envelope: EnvelopeFacts = field(default_factory=EnvelopeFacts)
    message: MessageFacts = field(default_factory=MessageFacts)


# A rule's test: whether its one condition holds, given what is known.
Check = Callable[[Facts], bool]


class RuleBook:
    """A policy's rules, indexed once; shared read-only by every session."""

    def __init__(self, policy: Policy) -> None:
        self._dynamic = policy.reverse_dns.dynamic_patterns
        self.rules = policy.rules
        self._stage: dict[str, Stage] = {}
        for dns_list in (*policy.ip_lists, *policy.domain_lists):
            for hit in dns_list.scored_hits:
                self._stage[hit.name] = list_stage(dns_list)
        self._text_rules: dict[str, list[Rule]] = {}
        self._raw_rules: dict[str, list[Rule]] = {}
        counted: set[str] = set()
        parsed: set[str] = set()
        for rule in self.rules:
            self._stage[rule.name] = self._rule_stage(rule)
            condition = rule.header
            if condition is not None:
                lowered = condition.name.lower()
                if condition.matches is not None:
                    self._text_rules.setdefault(lowered, []).append(rule)
                elif condition.matches_raw is not None:
                    self._raw_rules.setdefault(lowered, []).append(rule)
                elif condition.malformed:
                    parsed.add(lowered)
                else:
                    counted.add(lowered)
            elif rule.date_ahead_hours is not None or rule.date_behind_days is not None:
                parsed.add("date")
            elif rule.from_domain is not None:
                parsed.add("from")
        self.counted_headers = frozenset(counted)
        self.parsed_headers = frozenset(parsed)
        # Each rule's test, built once: `fire` runs twice for every transaction.
        self._checks: list[tuple[Rule, Stage, Check | None]] = [
            (rule, self._stage[rule.name], None if rule.composite else self._compile(rule))
            for rule in self.rules
        ]
        # Each composite as it fires when it holds only with hits on trial: on trial itself.
        self._on_trial = {
            rule.name: dataclasses.replace(rule, mode=Mode.OBSERVE)
            for rule in self.rules
            if rule.composite is not None
        }
        # One combined search per header (patterns.PatternGroup), naming the rules that fire.
        self._text_groups = {
            name: _pattern_group(rules, raw=False) for name, rules in self._text_rules.items()
        }
        self._raw_groups = {
            name: _pattern_group(rules, raw=True) for name, rules in self._raw_rules.items()
        }
        # Header values come back all day (Content-Type, X-Mailer, To, a campaign's Subject):
        # their verdicts are remembered, sparing a search that also hands the GIL to another
        # thread, the costliest thing a header does under load (bench/RESULTS.md, profile).
        self._remembered_matches = functools.lru_cache(maxsize=_REMEMBERED_HEADERS)(
            lambda name, value: tuple(self._matches(name, value))
        )
        # A client's name is judged dynamic or not once, whichever rules and stages ask; the
        # same names come back all day (bounded: a flood of names costs a few megabytes).
        self._is_dynamic = functools.lru_cache(maxsize=4096)(
            PatternGroup(self._dynamic).matches_any
        )
        conditions = [(rule.condition, getattr(rule, rule.condition)) for rule in self.rules]
        self.needs_rdns = any(
            kind in ("rdns", "rdns_matches") or value is HeloCheck.NOT_PTR_DOMAIN
            for kind, value in conditions
        )
        self.needs_helo_resolution = ("helo", HeloCheck.UNRESOLVABLE) in conditions
        self.needs_sender_resolution = ("sender", SenderCheck.UNRESOLVABLE) in conditions
        # SPF costs lookups (up to 10 terms' worth per check): only when a rule reads it.
        self.needs_spf = any(kind == "spf" for kind, _ in conditions)
        self.needs_helo_spf = any(kind == "helo_spf" for kind, _ in conditions)
        # DMARC reads the DKIM passes and the SPF result: a dmarc: rule needs all three.
        self.needs_dmarc = any(kind == "dmarc" for kind, _ in conditions)
        self.needs_dkim = self.needs_dmarc or any(kind == "dkim" for kind, _ in conditions)
        self.needs_spf = self.needs_spf or self.needs_dmarc
        # Header fields are kept for the end of the message only when a rule reads a fact.
        self.needs_header_view = any(rule.fact is not None for rule in self.rules)

    def _rule_stage(self, rule: Rule) -> Stage:
        if rule.composite is not None:
            return max(self._stage[name] for name in rule.composite.names)
        return _STAGE_OF_CONDITION[rule.condition]

    def stage_of(self, name: str) -> Stage:
        return self._stage[name]

    def match_header(self, lowered_name: str, value: str) -> list[str]:
        """The names of the pattern rules that fire on one header as it arrives (name
        lower-cased)."""
        if lowered_name not in self._text_groups and lowered_name not in self._raw_groups:
            return []
        if len(value) <= _REMEMBERED_VALUE:
            return list(self._remembered_matches(lowered_name, value))
        return self._matches(lowered_name, value)

    def _matches(self, lowered_name: str, value: str) -> list[str]:
        fired: list[str] = []
        text_group = self._text_groups.get(lowered_name)
        if text_group:
            names, group = text_group
            fired += [names[i] for i in group.matching(headers.decoded_text(value))]
        raw_group = self._raw_groups.get(lowered_name)
        if raw_group:
            names, group = raw_group
            fired += [names[i] for i in group.matching(headers.raw_bytes(value))]
        return fired

    def fire(
        self,
        stage: Stage,
        facts: Facts,
        list_hits: Iterable[str],
        trial_list_hits: Iterable[str] = (),
    ) -> tuple[Rule, ...]:
        """Every rule of `stage` or earlier that fires, in policy order: a composite sees the
        list hits and the rules defined before it (the config checks it names no later one).

        Hits on trial (`trial_list_hits`, from lists in observe mode, and rules in observe
        mode) do not make a composite count: one that holds only with them fires on trial,
        as a copy of the rule in observe mode, so a trial stays a dry run however the
        policy combines it. (A composite that holds without them but not with them, through
        `not:`, counts; the trial's would-be score then counts it too.)"""
        counted = set(list_hits)
        everything = counted | set(trial_list_hits)
        fired: list[Rule] = []
        for rule, rule_stage, check in self._checks:
            if rule_stage > stage:
                continue
            if check is not None:
                if check(facts):
                    fired.append(rule)
                    everything.add(rule.name)
                    if rule.mode is not Mode.OBSERVE:
                        counted.add(rule.name)
                continue
            composite = rule.composite
            assert composite is not None
            if rule.mode is not Mode.OBSERVE and _holds(composite, counted):
                fired.append(rule)
                counted.add(rule.name)
                everything.add(rule.name)
            elif _holds(composite, everything):
                fired.append(self._on_trial[rule.name])
                everything.add(rule.name)
        return tuple(fired)

    def _compile(self, rule: Rule) -> Check:
        """The test of a rule's one condition, as a function of the facts."""
        condition = rule.condition
        stage = _STAGE_OF_CONDITION[condition]
        if stage is Stage.ENVELOPE:
            return _compile_envelope(rule)
        if condition == "helo":
            helo = rule.helo
            assert helo is not None
            return lambda facts: _helo_check(helo, facts.connection)
        if condition == "helo_matches":
            pattern = rule.helo_matches
            return lambda facts: (
                bool(facts.connection.helo) and _search(pattern, facts.connection.helo)
            )
        if condition == "rdns":
            rdns = rule.rdns
            assert rdns is not None
            return lambda facts: self._rdns_check(rdns, facts.connection.rdns)
        if condition == "rdns_matches":
            pattern = rule.rdns_matches
            return lambda facts: (
                bool(facts.connection.rdns.name) and _search(pattern, facts.connection.rdns.name)
            )
        if condition == "helo_spf":
            result = rule.helo_spf
            return lambda facts: facts.connection.helo_spf is result
        return _compile_message(rule)

    def _rdns_check(self, check: RdnsCheck, rdns: ReverseDns) -> bool:
        if check is RdnsCheck.MISSING:
            return rdns.status is RdnsStatus.MISSING
        if check is RdnsCheck.UNCONFIRMED:
            return rdns.status is RdnsStatus.UNCONFIRMED
        name = rdns.name
        return bool(name) and self._is_dynamic(name)


def _pattern_group(rules: Sequence[Rule], *, raw: bool) -> tuple[list[str], PatternGroup]:
    """The header rules' patterns as one group, with the rule name of each pattern."""
    names: list[str] = []
    patterns: list[Pattern | RawPattern] = []
    for rule in rules:
        condition = rule.header
        pattern = None if condition is None else condition.matches_raw if raw else condition.matches
        if pattern is not None:
            names.append(rule.name)
            patterns.append(pattern)
    return names, PatternGroup(patterns)


def _search(pattern: object, text: str) -> bool:
    return pattern is not None and bool(pattern.search(text))  # type: ignore[attr-defined]


def _helo_check(check: HeloCheck, connection: ConnectionFacts) -> bool:
    helo = connection.helo.strip()
    if not helo:
        return False
    if check is HeloCheck.BARE_IP:
        # RFC 5321 4.1.3: an address literal must be bracketed; a bare address is a bot's habit.
        return domains.is_ip_literal(helo) and not helo.startswith("[")
    if check is HeloCheck.NOT_FQDN:
        return not domains.is_ip_literal(helo) and not domains.is_fqdn(helo)
    if check is HeloCheck.OURS:
        return _claims_to_be_us(helo, connection)
    if check is HeloCheck.UNRESOLVABLE:
        return connection.helo_resolves is False
    ptr_name = connection.rdns.name
    if not ptr_name or not domains.is_fqdn(helo):
        return False
    return not domains.same_organization(helo, ptr_name)


def _claims_to_be_us(helo: str, connection: ConnectionFacts) -> bool:
    if domains.is_ip_literal(helo):
        literal = helo.strip("[]")
        literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
        try:
            claimed = normalize_address(ipaddress.ip_address(literal))
        except ValueError:
            return False
        return any(claimed in network for network in connection.our_addresses)
    normalized = domains.normalize_domain(helo)
    return normalized is not None and normalized in connection.our_names


def _compile_envelope(rule: Rule) -> Check:
    condition = rule.condition
    if condition == "sender":
        if rule.sender is SenderCheck.EMPTY:
            return lambda facts: facts.envelope.sender == ""
        return lambda facts: facts.envelope.sender_domain_resolves is False
    if condition == "sender_matches":
        pattern = rule.sender_matches
        return lambda facts: bool(facts.envelope.sender) and _search(pattern, facts.envelope.sender)
    if condition == "spf":
        result = rule.spf
        return lambda facts: facts.envelope.spf is result
    if condition == "recipient_matches":
        pattern = rule.recipient_matches
        return lambda facts: any(_search(pattern, r) for r in facts.envelope.recipients)
    if condition == "recipients_over":
        limit = rule.recipients_over
        assert limit is not None
        return lambda facts: len(facts.envelope.recipients) > limit
    raise AssertionError(f"unhandled condition {condition}")


def _compile_message(rule: Rule) -> Check:
    condition = rule.condition
    if condition == "header":
        header = rule.header
        assert header is not None
        lowered, name = header.name.lower(), rule.name
        if header.matches is not None or header.matches_raw is not None:
            return lambda facts: name in facts.message.header_hits
        if header.missing:
            return lambda facts: facts.message.header_counts.get(lowered, 0) == 0
        if header.count_over is not None:
            limit = header.count_over
            return lambda facts: facts.message.header_counts.get(lowered, 0) > limit
        return lambda facts: lowered in facts.message.malformed
    if condition in ("date_ahead_hours", "date_behind_days"):
        return lambda facts: _date_check(rule, facts.message.date_skew)
    if condition == "dkim":
        wanted = rule.dkim
        return lambda facts: facts.message.dkim is not None and wanted in facts.message.dkim.results
    if condition == "dmarc":
        outcome = rule.dmarc
        return lambda facts: (
            facts.message.dmarc is not None and facts.message.dmarc.outcome is outcome
        )
    if condition == "fact":
        assert rule.fact is not None
        return _fact_check(rule.fact)
    if condition == "from_domain":
        if rule.from_domain is not FromCheck.NOT_SENDER_DOMAIN:
            return lambda facts: False
        return lambda facts: _from_not_sender(facts.envelope.sender, facts.message.from_domains)
    raise AssertionError(f"unhandled condition {condition}")


def _fact_check(condition: FactCondition) -> Check:
    """A `fact:` condition's test. An absent fact (None: its inputs are missing) never fires,
    whatever the operator: `is: false` does not fire on a message without a Reply-To."""
    name, operator = condition.name, condition.operator
    test: Callable[[FactValue], bool]
    if operator == "is":
        wanted = condition.is_

        def test(value: FactValue) -> bool:
            return value is wanted

    elif operator in ("over", "under"):
        limit = condition.over if operator == "over" else condition.under
        assert limit is not None
        above = operator == "over"

        def test(value: FactValue) -> bool:
            return isinstance(value, float) and (value > limit if above else value < limit)

    else:
        pattern = condition.matches
        assert pattern is not None

        def test(value: FactValue) -> bool:
            return isinstance(value, str) and pattern.search(value)

    def check(facts: Facts) -> bool:
        view = facts.message.header_view
        if view is None:
            return False
        value = view.fact(name)
        return value is not None and test(value)

    return check


def _date_check(rule: Rule, skew: datetime.timedelta | None) -> bool:
    if skew is None:
        return False
    if rule.date_ahead_hours is not None:
        return skew > datetime.timedelta(hours=rule.date_ahead_hours)
    if rule.date_behind_days is not None:
        return -skew > datetime.timedelta(days=rule.date_behind_days)
    return False


def _from_not_sender(sender: str, from_domains: Sequence[str]) -> bool:
    sender_domain = domains.domain_of_address(sender) if sender else None
    if sender_domain is None or not from_domains:
        return False
    return not any(domains.same_organization(sender_domain, d) for d in from_domains)


def _holds(composite: Composite, fired: set[str]) -> bool:
    return (
        all(name in fired for name in composite.all)
        and (not composite.any or any(name in fired for name in composite.any))
        and not any(name in fired for name in composite.not_)
    )
