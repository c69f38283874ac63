"""docs/rules.md's table of the shipped rule set (commands/reference.py): it lists exactly the
rules of config/spamgate.yaml, in order, with their current scores. Its hit counts come from
a mass-check of the development corpus, which CI does not have: regenerate it with
    python -m spamgate.commands.reference docs/rules.md --corpus ../shared/corpus/dev \
        --our-hosts dogma.slashnull.org webnote.net
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spamgate.commands import masscheck, reference
from spamgate.config.files import load_policy
from spamgate.core import schema
from spamgate.core.engine import Action
from spamgate.core.policy import Policy
from spamgate.core.scoring import Mode
from tests.config_helpers import SHIPPED

RULES_DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \| `([^`]+)` \| (\d+) \| (\d+) \| ([^|]+) \|$")


def documented() -> list[tuple[str, ...]]:
    text = RULES_DOC.read_text()
    table = text.partition(reference.RULES_BEGIN)[2].partition(reference.RULES_END)[0]
    return [m.group(1, 2, 3) for m in map(ROW.match, table.splitlines()) if m]


def test_generator_reads_the_policy_the_tests_call_shipped() -> None:
    assert reference.SHIPPED == SHIPPED


def test_table_lists_every_shipped_rule_with_its_current_score() -> None:
    policy = load_policy(SHIPPED)
    expected = [
        (rule.name, f"{rule.score:g}" + (" (observe)" if rule.mode is Mode.OBSERVE else ""),
         reference.condition_of(rule))
        for rule in policy.rules
    ]  # fmt: skip
    assert [(n, s.strip(), c) for n, s, c in documented()] == expected, (
        "docs/rules.md's shipped rule set is stale: regenerate it with the mass-check "
        "(python -m spamgate.commands.reference docs/rules.md --corpus DIR --our-hosts ...)"
    )


POLICY = """
rules:
  - {name: SUBJECT_SHOUTS, score: 1.5, description: caps, fact: {name: subject.caps_ratio, over: 1}}
  - {name: NO_DATE, score: 1, description: no Date, header: {name: Date, missing: true}}
  - {name: BARE, score: 2, description: bare, mode: observe, helo: bare_ip}
  - {name: FUTURE, score: 2, description: ahead, date_ahead_hours: 24}
  - {name: BOTH, score: 1, description: both, composite: {all: [SUBJECT_SHOUTS, NO_DATE]}}
"""


def test_render_rules_gives_hits_s_o_and_outcomes() -> None:
    policy = schema.load(Policy, POLICY, "test.yaml")
    tally = masscheck.Tally()
    for _ in range(3):
        tally.add("ham", Action.ACCEPT, 0.0, {})
    tally.add("ham", Action.TAG, 3.0, {"NO_DATE": 1.0})
    tally.add("spam", Action.TAG, 2.5, {"SUBJECT_SHOUTS": 1.5, "NO_DATE": 1.0})
    rows = reference.render_rules(policy, tally).splitlines()
    assert rows[0] == "Development corpus: 1 spam, 4 ham, headers only, the shipped thresholds."
    assert "| `SUBJECT_SHOUTS` | 1.5 | `fact: subject.caps_ratio` | 1 | 0 | 1.000 |" in rows
    assert "| `NO_DATE` | 1 | `header: Date` | 1 | 1 | 0.800 |" in rows
    assert "| `BARE` | 2 (observe) | `helo: bare_ip` | 0 | 0 | - |" in rows
    assert "| `FUTURE` | 2 | `date_ahead_hours: 24` | 0 | 0 | - |" in rows
    assert "| `BOTH` | 1 | `composite` | 0 | 0 | - |" in rows
    assert rows[-2:] == ["| ham | 3 | 1 | 0 | 0 | 0 | 0 |", "| spam | 0 | 1 | 0 | 0 | 0 | 0 |"]


@pytest.mark.parametrize("text", ["", f"{reference.RULES_BEGIN}\nx\n"], ids=["none", "no-end"])
def test_facts_and_config_tables_do_not_need_the_rules_markers(text: str) -> None:
    # splice_all (CI's check that the tables are current) never needs the corpus.
    facts = f"{reference.FACTS_BEGIN}\nSTALE\n{reference.FACTS_END}"
    assert "STALE" not in reference.splice_all(text + facts)
