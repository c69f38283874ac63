"""The README stays true: its set-up commands and its configuration reference."""

from __future__ import annotations

from pathlib import Path

from spamgate import reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_make_run_and_make_test() -> None:
    text = README.read_text()
    first_block = text.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block


def test_configuration_reference_matches_the_schema() -> None:
    text = README.read_text()
    assert reference.splice(text) == text, (
        "README's configuration reference is stale: "
        "run .venv/bin/python -m spamgate.reference README.md"
    )


def test_reference_covers_nested_keys() -> None:
    table = reference.render()
    for key in ("`resolver.deadline`", "`ip_lists[].hits[].codes`", "`rules[].header.matches`"):
        assert key in table
