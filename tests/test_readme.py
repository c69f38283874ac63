"""The README stays true: its set-up commands; docs/configuration.md's reference is current."""

from __future__ import annotations

from pathlib import Path

from spamgate import reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_readme_opens_with_make_run_and_make_test() -> None:
    text = README.read_text()
    first_block = text.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block


def test_configuration_reference_matches_the_schema() -> None:
    text = CONFIGURATION.read_text()
    assert reference.splice(text) == text, (
        "docs/configuration.md's reference is stale: "
        "run .venv/bin/python -m spamgate.reference docs/configuration.md"
    )


def test_reference_covers_nested_keys() -> None:
    table = reference.render()
    for key in ("`resolver.deadline`", "`ip_lists[].hits[].codes`", "`rules[].header.matches`"):
        assert key in table
