"""The shipped policy file: it loads, its lists and return codes, a rule of every kind."""

from __future__ import annotations

import hashlib

import pytest

from spamgate.config.files import load_policy
from spamgate.core.listspecs import IpList
from spamgate.core.policy import Policy
from spamgate.core.rulespecs import Rule
from spamgate.core.scoring import Mode
from spamgate.core.settings import ListenAddress
from tests.config_helpers import SHIPPED

# --- the shipped file --------------------------------------------------------------------------


def by_name(policy: Policy, name: str) -> IpList:
    (found,) = [lst for lst in policy.ip_lists if lst.name == name]
    return found


def hit_codes(dns_list: IpList) -> dict[str, tuple[str, ...]]:
    return {hit.name: tuple(code.text for code in hit.codes) for hit in dns_list.hits}


def test_shipped_config_loads() -> None:
    policy = load_policy(SHIPPED)
    assert policy.mode is Mode.ENFORCE
    assert policy.listen == ListenAddress("inet", host="127.0.0.1", port=8894)
    assert policy.digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()[:12]
    assert [lst.name for lst in policy.ip_lists] == ["SPAMHAUS_ZEN", "SPAMCOP", "PSBL", "DNSWL"]


def test_shipped_config_has_spamhaus_zen_return_codes() -> None:
    zen = by_name(load_policy(SHIPPED), "SPAMHAUS_ZEN")
    assert zen.zone == "zen.spamhaus.org"
    assert hit_codes(zen) == {
        "SPAMHAUS_SBL": ("127.0.0.2",),
        "SPAMHAUS_CSS": ("127.0.0.3",),
        "SPAMHAUS_DROP": ("127.0.0.9",),
        "SPAMHAUS_XBL": ("127.0.0.4-127.0.0.7",),
        "SPAMHAUS_PBL": ("127.0.0.10", "127.0.0.11"),
    }
    assert all(hit.score > 0 for hit in zen.hits)
    assert zen.ipv4 and zen.ipv6


def test_shipped_config_has_an_allowlist_with_negative_scores() -> None:
    dnswl = by_name(load_policy(SHIPPED), "DNSWL")
    assert [code.text for code in dnswl.error_codes] == ["127.0.0.255"]
    assert {hit.name: hit.score for hit in dnswl.hits} == {
        "DNSWL_HIGH": -10,
        "DNSWL_MED": -5,
        "DNSWL_LOW": -2,
        "DNSWL_NONE": 0,
    }
    assert hit_codes(dnswl)["DNSWL_HIGH"] == ("127.0.*.3",)


# --- the shipped policy uses every kind of rule ------------------------------------------------

# docs/rules.md: config/spamgate.yaml "has a rule of every kind but `helo_matches`,
# `rdns_matches`, `sender: empty`, `sender_matches`, `recipient_matches` and `matches_raw`,
# which only make sense with your own patterns".
ABSENT_CONDITIONS = {
    "helo_matches",
    "rdns_matches",
    "sender_matches",
    "recipient_matches",
}
ABSENT_VALUES = {("sender", "empty"), ("header", "matches_raw")}
HEADER_TESTS = ("matches", "matches_raw", "missing", "count_over", "malformed")


def shipped_kinds() -> tuple[set[str], set[tuple[str, str]]]:
    """The shipped policy's rule conditions, and (condition, value) for those with kinds."""
    rules = load_policy(SHIPPED).rules
    conditions = {rule.condition for rule in rules}
    values: set[tuple[str, str]] = set()
    for rule in rules:
        for kind in ("helo", "rdns", "sender", "from_domain"):
            value = getattr(rule, kind)
            if value is not None:
                values.add((kind, value.value))
        if rule.header is not None:
            values |= {
                ("header", test)
                for test in HEADER_TESTS
                if getattr(rule.header, test) not in (None, False)
            }
    return conditions, values


def test_shipped_policy_uses_every_rule_condition_but_the_pattern_ones() -> None:
    conditions, _ = shipped_kinds()
    assert conditions == set(Rule.CONDITIONS) - ABSENT_CONDITIONS


@pytest.mark.parametrize(
    ("kind", "every"),
    [
        pytest.param("rdns", {"missing", "unconfirmed", "dynamic"}, id="rdns"),
        pytest.param("sender", {"empty", "unresolvable"}, id="sender"),
        pytest.param("from_domain", {"not_sender_domain"}, id="from-domain"),
        pytest.param("header", set(HEADER_TESTS), id="header"),
        pytest.param(
            "helo", {"bare_ip", "not_fqdn", "ours", "unresolvable", "not_ptr_domain"}, id="helo"
        ),
    ],
)
def test_shipped_policy_uses_every_kind_of_a_condition(kind: str, every: set[str]) -> None:
    _, values = shipped_kinds()
    expected = {(kind, value) for value in every} - ABSENT_VALUES
    assert {v for v in values if v[0] == kind} == expected
