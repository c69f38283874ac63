"""Rule books and facts for tests/pure/test_rules*.py: policies built from YAML as an admin writes
them, facts from the frozen dataclasses the session fills in.
"""

from __future__ import annotations

import datetime
import ipaddress

from spamgate.core import schema
from spamgate.core.policy import Policy
from spamgate.core.rules import ConnectionFacts, EnvelopeFacts, Facts, RuleBook, Stage
from spamgate.dns.rdns import RdnsStatus, ReverseDns


def rule(name: str, condition: str) -> str:
    """One rule as a YAML list item; `condition` is the rest of its flow mapping."""
    return f"  - {{name: {name}, score: 1, description: {name.lower()}, {condition}}}\n"


def load(text: str) -> Policy:
    return schema.load(Policy, text, "t.yaml")


def book(*rules: str, prefix: str = "") -> RuleBook:
    listed = "".join(rules) if rules else "  []\n"
    return RuleBook(load(prefix + "rules:\n" + listed))


def fired(
    rulebook: RuleBook, stage: Stage, facts: Facts, list_hits: tuple[str, ...] = ()
) -> set[str]:
    return {r.name for r in rulebook.fire(stage, facts, list_hits)}


def connection(
    helo: str = "",
    *,
    rdns: ReverseDns | None = None,
    helo_resolves: bool | None = None,
) -> Facts:
    return Facts(
        connection=ConnectionFacts(
            address=ipaddress.ip_address("192.0.2.60"),
            helo=helo,
            rdns=rdns if rdns is not None else ReverseDns(RdnsStatus.UNKNOWN),
            helo_resolves=helo_resolves,
            our_names=OUR_NAMES,
            our_addresses=OUR_ADDRESSES,
        )
    )


def confirmed(name: str) -> ReverseDns:
    return ReverseDns(RdnsStatus.CONFIRMED, (name,), confirmed_name=name)


def unconfirmed(*names: str) -> ReverseDns:
    return ReverseDns(RdnsStatus.UNCONFIRMED, names)


def envelope(
    sender: str = "someone@client.example",
    *,
    resolves: bool | None = None,
    recipients: tuple[str, ...] = ("user@example.com",),
) -> Facts:
    return Facts(envelope=EnvelopeFacts(sender, resolves, recipients))


# Session normalizes our names (normalize_domain) before they reach the facts.
OUR_NAMES = frozenset({"mx.spamgate.test"})
OUR_ADDRESSES = (
    ipaddress.ip_network("198.51.100.25/32"),
    ipaddress.ip_network("2001:db8:25::/64"),
)

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)
