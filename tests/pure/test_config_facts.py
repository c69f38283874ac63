"""`fact:` rule conditions in a policy file: every fact and operator loads; an unknown fact and
an operator of the wrong type are errors located as FILE:LINE:COL: key.path: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from spamgate.core.headerfacts import FACTS
from spamgate.core.rulespecs import FactCondition
from tests.config_helpers import assert_located, lines, load


def rule(condition: str) -> str:
    return lines("rules:", f"  - {{name: R, score: 1, description: d, fact: {condition}}}")


@pytest.mark.parametrize(
    ("condition", "operator", "operand"),
    [
        pytest.param("{name: subject.caps_ratio, over: 0.9}", "over", 0.9, id="over"),
        pytest.param("{name: received.hops, under: 2}", "under", 2.0, id="under-int-is-float"),
        pytest.param("{name: message_id.from_domain, is: false}", "is", False, id="is-false"),
        pytest.param("{name: recipients.undisclosed, is: true}", "is", True, id="is-true"),
    ],
)
def test_fact_condition_loads(
    tmp_path: Path, condition: str, operator: str, operand: object
) -> None:
    loaded = load(tmp_path, rule(condition)).rules[0].fact
    assert isinstance(loaded, FactCondition)
    assert (loaded.operator, loaded.operand(operator)) == (operator, operand)


def test_text_fact_takes_a_pattern(tmp_path: Path) -> None:
    loaded = load(tmp_path, rule("{name: mailer, matches: '(?i)^the bat'}")).rules[0].fact
    assert loaded is not None and loaded.matches is not None
    assert loaded.matches.search("The Bat! (v1.61)")


BAD = [
    pytest.param(
        "{name: subject.caps, over: 0.9}",
        (
            2,
            48,
            "rules[0].fact.name",
            "unknown fact 'subject.caps' (did you mean 'subject.caps_ratio'?)",
        ),
        id="unknown-fact-suggested",
    ),
    pytest.param(
        "{name: zzz, is: true}",
        (2, 48, "rules[0].fact.name", "unknown fact 'zzz' (known: " + ", ".join(FACTS) + ")"),
        id="unknown-fact-listed",
    ),
    pytest.param(
        "{name: subject.caps_ratio, is: true}",
        (
            2,
            74,
            "rules[0].fact.is",
            "subject.caps_ratio is a number fact: test it with over or under",
        ),
        id="bool-operator-on-number",
    ),
    pytest.param(
        "{name: message_id.missing, over: 0}",
        (2, 74, "rules[0].fact.over", "message_id.missing is a boolean fact: test it with is"),
        id="number-operator-on-bool",
    ),
    pytest.param(
        "{name: mailer, over: 1}",
        (2, 62, "rules[0].fact.over", "mailer is a text fact: test it with matches"),
        id="number-operator-on-text",
    ),
    pytest.param(
        "{name: received.hops}",
        (2, 48, "rules[0].fact.name", "received.hops is a number fact: give one of over, under"),
        id="no-operator",
    ),
    pytest.param(
        "{name: received.hops, over: 1, under: 5}",
        (2, 78, "rules[0].fact.under", "received.hops is a number fact: give one of over, under"),
        id="two-operators",
    ),
    pytest.param(
        "{name: mailer, matches: '(a)\\1'}",
        (
            2,
            71,
            "rules[0].fact.matches",
            "backreferences (\\1) are not supported: spamgate uses "
            "RE2 so that no pattern can stall on hostile input (RE2: invalid escape sequence: \\1)",
        ),
        id="pattern-re2-rejects",
    ),
    pytest.param(
        "{name: received.hops, over: 1, equals: 5}",
        (2, 78, "rules[0].fact.equals", "unknown key (known keys: name, is, over, under, matches)"),
        id="unknown-operator",
    ),
]


@pytest.mark.parametrize(("condition", "where"), BAD)
def test_fact_condition_errors_are_located(
    tmp_path: Path, condition: str, where: tuple[int, int, str, str]
) -> None:
    assert_located(tmp_path, rule(condition), where)


@pytest.mark.parametrize("name", list(FACTS))
def test_every_example_rule_loads(tmp_path: Path, name: str) -> None:
    fact = FACTS[name]
    policy = load(tmp_path, lines("rules:", f"  - {fact.example}"))
    condition = policy.rules[0].fact
    assert condition is not None and condition.name == name
