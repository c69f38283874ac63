"""The example policies in config/ load, and the tour of every rule kind really has every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spamgate.config.files import load_policy
from spamgate.core.policy import Policy
from spamgate.core.rulespecs import Rule

CONFIG = Path(__file__).resolve().parents[2] / "config"
EVERY_KIND = CONFIG / "examples" / "every-rule-kind.yaml"


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name) for p in sorted(CONFIG.rglob("*.yaml"))]
)
def test_example_policy_loads(path: Path) -> None:
    assert isinstance(load_policy(path), Policy)


def test_tour_uses_every_rule_condition() -> None:
    policy = load_policy(EVERY_KIND)
    used = {rule.condition for rule in policy.rules}
    assert used == set(Rule.CONDITIONS)
    helo = {rule.helo for rule in policy.rules if rule.helo is not None}
    rdns = {rule.rdns for rule in policy.rules if rule.rdns is not None}
    sender = {rule.sender for rule in policy.rules if rule.sender is not None}
    assert {h.value for h in helo} == {
        "bare_ip",
        "not_fqdn",
        "ours",
        "unresolvable",
        "not_ptr_domain",
    }
    assert {r.value for r in rdns} == {"missing", "unconfirmed", "dynamic"}
    assert {s.value for s in sender} == {"empty", "unresolvable"}
    header_tests = {
        test
        for rule in policy.rules
        if rule.header is not None
        for test in ("matches", "matches_raw", "missing", "count_over", "malformed")
        if getattr(rule.header, test) not in (None, False)
    }
    assert header_tests == {"matches", "matches_raw", "missing", "count_over", "malformed"}


def test_tour_sets_every_top_level_key() -> None:
    written = set(yaml.safe_load(EVERY_KIND.read_text()))
    # Left at their defaults there, and shown in ../spamgate.yaml instead.
    elsewhere = {
        "socket_mode",
        "on_error",
        "log",
        "resolver",
        "scheduling",
        "trusted_networks",
        "skip_authenticated",
        "add_headers",
        "exempt_recipients",
        "shutdown_grace",
        "health",
        "metrics",
    }
    assert written | elsewhere == set(Policy.__dataclass_fields__) - {"digest"}


def test_tour_reads_its_sender_list_relative_to_itself() -> None:
    policy = load_policy(EVERY_KIND)
    verified = policy.allow.verified_sender_set
    assert verified.match("<anyone@partner.example>") == "@partner.example"
    assert verified.match("billing@supplier.example") == "billing@supplier.example"
    # The plain, forgeable form holds only what it names inline.
    assert policy.allow.sender_set.match("anyone@partner.example") == ""
    assert policy.allow.sender_set.match("newsletter@vendor.example") != ""
