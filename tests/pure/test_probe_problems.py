"""A DNS list probe's verdict as a value: what judge_probe finds wrong with one side of a
list, the text the log and the status file show for it, and which problems are silence."""

from __future__ import annotations

import pytest

from spamgate.core import schema
from spamgate.core.evidence import Family
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.listhealth import ProbeFault, ProbeProblem, ProbeVerdict, judge_probe

ZEN = schema.load(
    Policy, "ip_lists: [{name: ZEN, zone: zen.test, score: 10}]\n", "t.yaml"
).ip_lists[0]
LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN)
LISTS_EVERYTHING = "it lists its must-not-list test entry: it answers for everything"
EVERYTHING = ProbeProblem(ProbeFault.LISTS_EVERYTHING)
NOT_LISTED = ProbeProblem(ProbeFault.NOT_LISTED)
TIMEOUT = ProbeProblem(ProbeFault.LISTED_UNUSABLE, "timeout")


@pytest.mark.parametrize(
    ("listed", "unlisted", "problem", "text", "silent"),
    [
        pytest.param(LISTED, CLEAN, None, "", False, id="healthy"),
        pytest.param(LISTED, LISTED, EVERYTHING, LISTS_EVERYTHING, False, id="lists-everything"),
        pytest.param(
            CLEAN, CLEAN, NOT_LISTED, "it does not list its test entry", False, id="no-test-entry"
        ),
        pytest.param(
            DnsAnswer(AnswerKind.RECORDS, ("127.255.255.254",)),
            CLEAN,
            ProbeProblem(ProbeFault.LISTED_UNUSABLE, "error-code", ("127.255.255.254",)),
            "its test entry gets an unusable answer: error-code (127.255.255.254)",
            False,
            id="blocked",
        ),
        pytest.param(
            DnsAnswer(AnswerKind.RECORDS, ("192.0.2.1",)),
            CLEAN,
            ProbeProblem(ProbeFault.LISTED_UNUSABLE, "outside-127/8", ("192.0.2.1",)),
            "its test entry gets an unusable answer: outside-127/8 (192.0.2.1)",
            False,
            id="parked-domain",
        ),
        pytest.param(
            DnsAnswer(AnswerKind.TIMEOUT),
            CLEAN,
            ProbeProblem(ProbeFault.LISTED_UNUSABLE, "timeout"),
            "its test entry gets an unusable answer: timeout",
            True,
            id="timeout",
        ),
        pytest.param(
            LISTED,
            DnsAnswer(AnswerKind.NETWORK),
            ProbeProblem(ProbeFault.UNLISTED_UNUSABLE, "network"),
            "its must-not-list test entry gets an unusable answer: network",
            True,
            id="unlisted-network-error",
        ),
        pytest.param(
            LISTED,
            DnsAnswer(AnswerKind.SERVFAIL),
            ProbeProblem(ProbeFault.UNLISTED_UNUSABLE, "servfail"),
            "its must-not-list test entry gets an unusable answer: servfail",
            False,
            id="servfail",
        ),
    ],
)
def test_judge_probe(
    listed: DnsAnswer, unlisted: DnsAnswer, problem: ProbeProblem | None, text: str, silent: bool
) -> None:
    """A probe's problem is a value; its text is what the log and the status file show, and
    whether it is silence (asked again before suspending) is read from the value, not the
    text."""
    found = judge_probe(ZEN, listed, unlisted)
    assert found == problem
    assert ProbeVerdict(((None, found),)).problem == text
    assert (found is not None and found.silent) is silent


def test_a_probe_that_got_no_answer_is_silence() -> None:
    no_answer = ProbeProblem(ProbeFault.NO_ANSWER)
    assert str(no_answer) == "no answer to its test entries"
    assert no_answer.silent


@pytest.mark.parametrize(
    ("problems", "text"),
    [
        pytest.param(((Family.IPV4, None), (Family.IPV6, None)), "", id="healthy"),
        pytest.param(
            ((Family.IPV4, EVERYTHING), (Family.IPV6, EVERYTHING)),
            LISTS_EVERYTHING,
            id="both-alike-said-once",
        ),
        pytest.param(
            ((Family.IPV4, None), (Family.IPV6, EVERYTHING)),
            f"ipv6: {LISTS_EVERYTHING}",
            id="one-side-named",
        ),
        pytest.param(
            ((Family.IPV4, NOT_LISTED), (Family.IPV6, TIMEOUT)),
            "ipv4: it does not list its test entry; "
            "ipv6: its test entry gets an unusable answer: timeout",
            id="each-side-its-own",
        ),
        pytest.param(((None, NOT_LISTED),), "it does not list its test entry", id="domain-list"),
    ],
)
def test_a_verdict_in_one_line(
    problems: tuple[tuple[Family | None, ProbeProblem | None], ...], text: str
) -> None:
    verdict = ProbeVerdict(problems)
    assert verdict.problem == text
    assert str(verdict) == text
