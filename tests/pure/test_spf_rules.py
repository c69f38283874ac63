"""The policy's SPF conditions (issue 17 item 1): `spf:` and `helo_spf:` fire on the one
result they name, never on a check that was not made, and say what they read."""

from __future__ import annotations

import ipaddress

import pytest

from spamgate.core.rules import ConnectionFacts, EnvelopeFacts, Facts, Stage
from spamgate.core.ruletrace import trace
from spamgate.core.spf import SpfResult
from tests.rules_harness import book, fired, rule

RESULTS = list(SpfResult)


def _envelope(result: SpfResult | None) -> Facts:
    return Facts(envelope=EnvelopeFacts("alice@example.com", spf=result))


def _connection(result: SpfResult | None) -> Facts:
    client = ipaddress.ip_address("192.0.2.60")
    return Facts(connection=ConnectionFacts(address=client, helo="mx.example", helo_spf=result))


@pytest.mark.parametrize("named", RESULTS, ids=[r.value for r in RESULTS])
def test_an_spf_rule_fires_on_its_own_result_only(named: SpfResult) -> None:
    rulebook = book(rule("SPF_X", f"spf: {named.value}"))
    for seen in RESULTS:
        hits = fired(rulebook, Stage.ENVELOPE, _envelope(seen))
        assert hits == ({"SPF_X"} if seen is named else set()), seen


@pytest.mark.parametrize("named", RESULTS, ids=[r.value for r in RESULTS])
def test_a_helo_spf_rule_fires_on_its_own_result_only(named: SpfResult) -> None:
    rulebook = book(rule("HELO_SPF_X", f"helo_spf: {named.value}"))
    for seen in RESULTS:
        hits = fired(rulebook, Stage.CONNECTION, _connection(seen))
        assert hits == ({"HELO_SPF_X"} if seen is named else set()), seen


def test_a_check_not_made_fires_nothing_not_even_none() -> None:
    rulebook = book(rule("SPF_NONE", "spf: none"), rule("HELO_SPF_NONE", "helo_spf: none"))
    assert fired(rulebook, Stage.ENVELOPE, _envelope(None)) == set()
    assert fired(rulebook, Stage.CONNECTION, _connection(None)) == set()


def test_a_policy_asks_for_spf_only_when_a_rule_reads_it() -> None:
    plain = book(rule("SENDER_EMPTY", "sender: empty"))
    assert not plain.needs_spf and not plain.needs_helo_spf
    assert book(rule("SPF_FAIL", "spf: fail")).needs_spf
    assert book(rule("HELO_SPF_FAIL", "helo_spf: fail")).needs_helo_spf


def test_an_unknown_result_is_a_config_error_naming_the_values() -> None:
    with pytest.raises(Exception, match=r"pass.*permerror"):
        book(rule("SPF_X", "spf: failed"))


def test_the_trace_shows_the_result_and_whom_it_was_for() -> None:
    [spf_rule] = book(rule("SPF_FAIL", "spf: fail")).rules
    assert trace(spf_rule, _envelope(SpfResult.FAIL)) == (
        'spf = fail for "<alice@example.com>" (fail)'
    )
    assert trace(spf_rule, _envelope(None)) == (
        'spf = not checked for "<alice@example.com>" (fail)'
    )
    [helo_rule] = book(rule("HELO_SPF_FAIL", "helo_spf: fail")).rules
    assert trace(helo_rule, _connection(SpfResult.FAIL)) == (
        'helo_spf = fail for "mx.example" (fail)'
    )
