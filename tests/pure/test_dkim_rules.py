"""`dkim:` and `dmarc:` rules (issue 17 item 2): which result fires which rule, what a check
not made does, what the traces and the Authentication-Results clauses say. Pure."""

from __future__ import annotations

import pytest

from spamgate.core import authresults, dmarc
from spamgate.core.dkim import DkimReport, DkimResult, DkimStatus, SignatureResult
from spamgate.core.dmarc import DmarcOutcome, DmarcResult
from spamgate.core.rules import EnvelopeFacts, Facts, MessageFacts, Stage
from spamgate.core.ruletrace import trace
from spamgate.core.spf import SpfResult, SpfVerdict
from tests.rules_harness import book, fired, rule

OUTCOMES = list(DmarcOutcome)


def _signature(status: DkimStatus, domain: str = "example.com") -> SignatureResult:
    return SignatureResult(domain, "sel", status, f"because {status.value}")


def _message(report: DkimReport | None = None, result: DmarcResult | None = None) -> Facts:
    return Facts(
        envelope=EnvelopeFacts("alice@example.com"), message=MessageFacts(dkim=report, dmarc=result)
    )


@pytest.mark.parametrize("named", list(DkimStatus), ids=[s.value for s in DkimStatus])
def test_a_dkim_rule_fires_when_some_signature_has_its_result(named: DkimStatus) -> None:
    rulebook = book(rule("DKIM_X", f"dkim: {named.value}"))
    for seen in DkimStatus:
        # Another signature that passed does not hide this one's result.
        report = DkimReport((_signature(DkimStatus.PASS, "list.example"), _signature(seen)))
        hits = fired(rulebook, Stage.MESSAGE, _message(report))
        expected = seen is named or named is DkimStatus.PASS
        assert hits == ({"DKIM_X"} if expected else set()), seen


@pytest.mark.parametrize(
    ("report", "fires"),
    [
        pytest.param(DkimReport(), {"DKIM_NONE"}, id="no-signature"),
        pytest.param(DkimReport((_signature(DkimStatus.FAIL),)), {"DKIM_FAIL"}, id="fail"),
        pytest.param(DkimReport(header_problem="unreadable"), {"DKIM_PERMERROR"}, id="header"),
        pytest.param(None, set(), id="not-checked"),
    ],
)
def test_none_is_a_message_without_signatures_and_not_checked_fires_nothing(
    report: DkimReport | None, fires: set[str]
) -> None:
    rulebook = book(
        rule("DKIM_NONE", "dkim: none"),
        rule("DKIM_FAIL", "dkim: fail"),
        rule("DKIM_PERMERROR", "dkim: permerror"),
    )
    assert fired(rulebook, Stage.MESSAGE, _message(report)) == fires


@pytest.mark.parametrize("named", OUTCOMES, ids=[o.value for o in OUTCOMES])
def test_a_dmarc_rule_fires_on_its_own_outcome_only(named: DmarcOutcome) -> None:
    rulebook = book(rule("DMARC_X", f"dmarc: {named.value}"))
    for seen in OUTCOMES:
        hits = fired(rulebook, Stage.MESSAGE, _message(result=DmarcResult(seen, "example.com")))
        assert hits == ({"DMARC_X"} if seen is named else set()), seen
    assert fired(rulebook, Stage.MESSAGE, _message()) == set()


def test_a_policy_asks_for_dkim_and_the_body_only_when_a_rule_reads_it() -> None:
    plain = book(rule("SPF_FAIL", "spf: fail"))
    assert not plain.needs_dkim and not plain.needs_dmarc
    dkim_only = book(rule("DKIM_FAIL", "dkim: fail"))
    assert dkim_only.needs_dkim and not dkim_only.needs_dmarc
    # DMARC reads the DKIM passes and the SPF result.
    with_dmarc = book(rule("DMARC_FAIL", "dmarc: fail_reject"))
    assert with_dmarc.needs_dkim and with_dmarc.needs_dmarc and with_dmarc.needs_spf


def test_an_unknown_result_is_a_config_error_naming_the_values() -> None:
    with pytest.raises(Exception, match=r"pass.*body_not_read"):
        book(rule("DKIM_X", "dkim: passed"))
    with pytest.raises(Exception, match=r"fail_reject"):
        book(rule("DMARC_X", "dmarc: reject"))


def test_the_traces_say_not_checked_or_what_each_signature_gave() -> None:
    [dkim_rule] = book(rule("DKIM_FAIL", "dkim: fail")).rules
    assert trace(dkim_rule, _message()) == "dkim = not checked (fail)"
    report = DkimReport((_signature(DkimStatus.FAIL), _signature(DkimStatus.PASS, "esp.example")))
    assert trace(dkim_rule, _message(report)) == (
        'dkim = fail d="example.com" s="sel": "because fail"; '
        'pass d="esp.example" s="sel": "because pass" (fail)'
    )
    [dmarc_rule] = book(rule("DMARC_REJECT", "dmarc: fail_reject")).rules
    assert trace(dmarc_rule, _message()) == "dmarc = not checked (fail_reject)"
    record = dmarc.parse_record("v=DMARC1; p=reject")
    assert isinstance(record, dmarc.DmarcRecord)
    discovery = dmarc.PolicyDiscovery(dmarc.DiscoveryState.FOUND, record, "bank.example")
    identifiers = [dmarc.Identifier(dmarc.Method.DKIM, "esp.example", True)]
    result = dmarc.evaluate(dmarc.AuthorDomain("bank.example"), discovery, identifiers, 0)
    assert trace(dmarc_rule, _message(result=result)) == (
        'dmarc = fail_reject for "bank.example", p=reject; '
        'dkim "esp.example": other organization (fail_reject)'
    )


def test_the_results_header_has_a_clause_per_check_made() -> None:
    report = DkimReport(
        (_signature(DkimStatus.PASS), _signature(DkimStatus.BODY_NOT_READ, "list.example"))
    )
    results = authresults.method_results(
        sender="alice@example.com",
        spf=SpfVerdict(SpfResult.PASS, "example.com"),
        helo="mx.example.com",
        helo_spf=None,
        dkim=report,
        dmarc=DmarcResult(DmarcOutcome.PASS, "example.com"),
    )
    assert authresults.header_value("mx.test", results) == (
        "mx.test;\n"
        "\tspf=pass smtp.mailfrom=alice@example.com;\n"
        "\tdkim=pass header.d=example.com header.s=sel;\n"
        '\tdkim=neutral reason="because body_not_read" header.d=list.example header.s=sel;\n'
        "\tdmarc=pass header.from=example.com"
    )
    # The null sender's SPF identity is the HELO name; a check not made is not shown.
    null = authresults.method_results(
        sender="",
        spf=SpfVerdict(SpfResult.NONE, "mx.example.com"),
        helo="mx.example.com",
        helo_spf=None,
        dkim=DkimReport(),
        dmarc=None,
    )
    assert [(r.method, r.result, r.properties) for r in null] == [
        ("spf", "none", (("smtp.helo", "mx.example.com"),)),
        ("dkim", "none", ()),
    ]


def test_dkim_results_name_every_value_a_rule_can_use() -> None:
    assert {r.value for r in DkimResult} == {s.value for s in DkimStatus} | {"none"}
