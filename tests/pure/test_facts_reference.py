"""docs/rules.md's Facts table, generated from the registry (commands/reference.py): current,
one row per fact, and every example rule in it loads as a policy."""

from __future__ import annotations

import re
from pathlib import Path

from spamgate.commands import reference
from spamgate.core import schema
from spamgate.core.headerfacts import FACTS
from spamgate.core.policy import Policy

RULES_DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
REGENERATE = "run .venv/bin/python -m spamgate.commands.reference docs/rules.md"


def table() -> str:
    text = RULES_DOC.read_text()
    return text.partition(reference.FACTS_BEGIN)[2].partition(reference.FACTS_END)[0]


def test_facts_table_is_current() -> None:
    text = RULES_DOC.read_text()
    assert reference.splice_facts(text) == text, (
        f"docs/rules.md's Facts table is stale: {REGENERATE}"
    )


def test_facts_table_has_a_row_for_every_fact() -> None:
    documented = re.findall(r"^\| `([^`]+)` \|", table(), re.MULTILINE)
    assert documented == list(FACTS)


def test_every_example_rule_in_the_table_loads() -> None:
    examples = re.findall(r"\| `- (\{.*\})` \|$", table(), re.MULTILINE)
    assert len(examples) == len(FACTS)
    # The table escapes | for Markdown; the YAML has it bare.
    text = "rules:\n" + "".join(f"  - {e.replace(chr(92) + '|', '|')}\n" for e in examples)
    policy = schema.load(Policy, text, "rules.md")
    assert [rule.fact.name for rule in policy.rules if rule.fact] == list(FACTS)


def test_splice_all_rewrites_each_table_it_finds() -> None:
    config = f"{reference.BEGIN}\nSTALE-CONFIG\n{reference.END}"
    facts = f"{reference.FACTS_BEGIN}\nSTALE-FACTS\n{reference.FACTS_END}"
    spliced = reference.splice_all(f"a\n{config}\nb\n{facts}\n")
    assert reference.render() in spliced and reference.render_facts() in spliced
    assert "STALE" not in spliced
