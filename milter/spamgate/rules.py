"""Rules: which fire, given what is known at a stage of the SMTP dialogue. Pure.

Each rule has one condition, and each condition belongs to the stage at which its facts are
complete: HELO and reverse DNS at the connection stage, MAIL FROM and RCPT TO at the envelope
stage (decided at RCPT TO), headers at the message stage (decided at end of message). A
composite belongs to the latest stage of what it names. Header patterns run as each header
arrives (`match_header`), so no header value has to be kept for later.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spamgate import domains, headers
from spamgate.config import (
    DnsList,
    DomainList,
    DomainSource,
    FromCheck,
    HeloCheck,
    Policy,
    RdnsCheck,
    Rule,
    SenderCheck,
)
from spamgate.rdns import RdnsStatus, ReverseDns

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Stage(enum.IntEnum):
    CONNECTION = 1
    ENVELOPE = 2
    MESSAGE = 3


_STAGE_OF_CONDITION = {
    "helo": Stage.CONNECTION,
    "helo_matches": Stage.CONNECTION,
    "rdns": Stage.CONNECTION,
    "rdns_matches": Stage.CONNECTION,
    "sender": Stage.ENVELOPE,
    "sender_matches": Stage.ENVELOPE,
    "recipient_matches": Stage.ENVELOPE,
    "recipients_over": Stage.ENVELOPE,
    "header": Stage.MESSAGE,
    "date_ahead_hours": Stage.MESSAGE,
    "date_behind_days": Stage.MESSAGE,
    "from_domain": Stage.MESSAGE,
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
    our_names: frozenset[str] = frozenset()
    our_addresses: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class EnvelopeFacts:
    sender: str = ""  # lower case, without <>; "" is the null sender
    sender_domain_resolves: bool | None = None
    recipients: tuple[str, ...] = ()  # lower case, without <>; every RCPT TO so far


@dataclass(frozen=True)
class MessageFacts:
    header_hits: frozenset[str] = frozenset()
    header_counts: Mapping[str, int] = field(default_factory=dict)
    malformed: frozenset[str] = frozenset()
    date_skew: datetime.timedelta | None = None
    from_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    connection: ConnectionFacts = field(default_factory=ConnectionFacts)
    envelope: EnvelopeFacts = field(default_factory=EnvelopeFacts)
    message: MessageFacts = field(default_factory=MessageFacts)


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
        # The condition of each rule, found once: `Rule.condition` searches for it.
        self._conditions = {rule.name: rule.condition for rule in self.rules}
        conditions = [(rule.condition, getattr(rule, rule.condition)) for rule in self.rules]
        self.needs_rdns = any(
            kind in ("rdns", "rdns_matches") or value is HeloCheck.NOT_PTR_DOMAIN
            for kind, value in conditions
        )
        self.needs_helo_resolution = ("helo", HeloCheck.UNRESOLVABLE) in conditions
        self.needs_sender_resolution = ("sender", SenderCheck.UNRESOLVABLE) in conditions

    def _rule_stage(self, rule: Rule) -> Stage:
        if rule.composite is not None:
            return max(self._stage[name] for name in rule.composite.names)
        return _STAGE_OF_CONDITION[rule.condition]

    def stage_of(self, name: str) -> Stage:
        return self._stage[name]

    def match_header(self, lowered_name: str, value: str) -> list[Rule]:
        """The pattern rules that fire on one header as it arrives (name lower-cased)."""
        fired = []
        text_rules = self._text_rules.get(lowered_name)
        if text_rules:
            text = headers.decoded_text(value)
            fired += [
                r
                for r in text_rules
                if r.header and r.header.matches and r.header.matches.search(text)
            ]
        raw_rules = self._raw_rules.get(lowered_name)
        if raw_rules:
            data = headers.raw_bytes(value)
            fired += [
                r
                for r in raw_rules
                if r.header and r.header.matches_raw and r.header.matches_raw.search(data)
            ]
        return fired

    def fire(self, stage: Stage, facts: Facts, list_hits: Iterable[str]) -> tuple[Rule, ...]:
        """Every rule of `stage` or earlier that fires, in policy order: a composite sees the
        list hits and the rules defined before it (the config checks it names no later one)."""
        fired_names = set(list_hits)
        fired: list[Rule] = []
        for rule in self.rules:
            if self._stage[rule.name] > stage:
                continue
            if rule.composite is not None:
                composite = rule.composite
                hit = (
                    all(name in fired_names for name in composite.all)
                    and (not composite.any or any(n in fired_names for n in composite.any))
                    and not any(name in fired_names for name in composite.not_)
                )
            else:
                hit = self._condition_holds(rule, facts)
            if hit:
                fired.append(rule)
                fired_names.add(rule.name)
        return tuple(fired)

    def _condition_holds(self, rule: Rule, facts: Facts) -> bool:
        connection, envelope, message = facts.connection, facts.envelope, facts.message
        condition = self._conditions[rule.name]
        if condition == "helo":
            return rule.helo is not None and _helo_check(rule.helo, connection)
        if condition == "helo_matches":
            return bool(connection.helo) and _search(rule.helo_matches, connection.helo)
        if condition == "rdns":
            return rule.rdns is not None and self._rdns_check(rule.rdns, connection.rdns)
        if condition == "rdns_matches":
            name = connection.rdns.name
            return bool(name) and _search(rule.rdns_matches, name)
        if condition == "sender":
            if rule.sender is SenderCheck.EMPTY:
                return envelope.sender == ""
            return envelope.sender_domain_resolves is False
        if condition == "sender_matches":
            return bool(envelope.sender) and _search(rule.sender_matches, envelope.sender)
        if condition == "recipient_matches":
            return any(_search(rule.recipient_matches, r) for r in envelope.recipients)
        if condition == "recipients_over":
            return rule.recipients_over is not None and len(envelope.recipients) > (
                rule.recipients_over
            )
        if condition == "header":
            return _header_check(rule, message)
        if condition in ("date_ahead_hours", "date_behind_days"):
            return _date_check(rule, message.date_skew)
        if condition == "from_domain":
            return rule.from_domain is FromCheck.NOT_SENDER_DOMAIN and _from_not_sender(
                envelope.sender, message.from_domains
            )
        raise AssertionError(f"unhandled condition {condition}")

    def _rdns_check(self, check: RdnsCheck, rdns: ReverseDns) -> bool:
        if check is RdnsCheck.MISSING:
            return rdns.status is RdnsStatus.MISSING
        if check is RdnsCheck.UNCONFIRMED:
            return rdns.status is RdnsStatus.UNCONFIRMED
        name = rdns.name
        return bool(name) and any(pattern.search(name) for pattern in self._dynamic)


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
            claimed = ipaddress.ip_address(literal)
        except ValueError:
            return False
        return any(claimed in network for network in connection.our_addresses)
    normalized = domains.normalize_domain(helo)
    return normalized is not None and normalized in connection.our_names


def _header_check(rule: Rule, message: MessageFacts) -> bool:
    condition = rule.header
    if condition is None:
        return False
    lowered = condition.name.lower()
    if condition.matches is not None or condition.matches_raw is not None:
        return rule.name in message.header_hits
    if condition.missing:
        return message.header_counts.get(lowered, 0) == 0
    if condition.count_over is not None:
        return message.header_counts.get(lowered, 0) > condition.count_over
    return lowered in message.malformed


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
