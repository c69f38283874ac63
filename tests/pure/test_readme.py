"""The README and docs/ stay true: a short README that opens with the set-up commands and links
every page of docs/, links that resolve, a configuration reference generated from the schema,
and every decision-log key, metric and policy key the manual names, real and documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from spamgate.commands import reference
from spamgate.config.files import Policy, load_policy
from spamgate.core import decisionlog
from spamgate.core.decisionlog import format_decision
from spamgate.core.schema import describe
from spamgate.shell import metrics
from tests.pure.test_decisionlog import decision

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
DOCUMENTS = [README, *PAGES]
CONFIGURATION = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"

# "The README opens with two commands that do all set-up on a fresh Debian machine as root";
# the rest of the manual is in docs/, so that the README reads in ten minutes.
README_MAX_LINES = 300

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The document without its fenced code blocks, where `](` and `#` mean nothing."""
    return _FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.MULTILINE):
        name = slug(heading)
        suffix = 0
        while (f"{name}-{suffix}" if suffix else name) in found:
            suffix += 1
        found.add(f"{name}-{suffix}" if suffix else name)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        link
        for link in _LINK.findall(prose(path))
        if not re.match(r"[a-z]+:", link)  # http:, https:, mailto:
    ]


def table_rows(path: Path, header: str) -> list[str]:
    """The first cells of the table whose header row starts with `header`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    cells = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells.append(line.split("|")[1])
    return cells


# --- the README ---------------------------------------------------------------------------------


def test_readme_opens_with_make_run_and_make_test() -> None:
    lines = README.read_text().splitlines()
    assert lines[0].startswith("# ")
    body = [line for line in lines[1:] if line.strip()]
    assert body[0].startswith("```")
    assert body[1].startswith("make run ")
    assert body[2].startswith("make test ")


def test_readme_reads_in_ten_minutes() -> None:
    count = len(README.read_text().splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines; move detail to a page of docs/ and link it"
    )


def test_readme_links_every_page_of_docs() -> None:
    assert PAGES, "docs/ has no pages"
    linked = {
        (README.parent / link.partition("#")[0]).resolve()
        for link in relative_links(README)
        if link.startswith("docs/") and link.partition("#")[0].endswith(".md")
    }
    assert linked == {page.resolve() for page in PAGES}


@pytest.mark.parametrize("document", [pytest.param(d, id=d.name) for d in DOCUMENTS])
def test_relative_links_and_anchors_resolve(document: Path) -> None:
    broken = []
    for link in relative_links(document):
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        leads_somewhere = path.exists() and (
            not anchor or (path.suffix == ".md" and anchor in anchors(path))
        )
        if not leads_somewhere:
            broken.append(link)
    assert not broken, f"{document.name}: links that lead nowhere: {broken}"


def test_slug_follows_github() -> None:
    assert slug("What pymilter does before spamgate's code runs") == (
        "what-pymilter-does-before-spamgates-code-runs"
    )
    assert slug("The fault and load suite: `make soak`") == "the-fault-and-load-suite-make-soak"


# --- the configuration reference ----------------------------------------------------------------


def test_configuration_reference_matches_the_schema() -> None:
    text = CONFIGURATION.read_text()
    assert reference.splice(text) == text, (
        "docs/configuration.md's reference is stale: "
        "run .venv/bin/python -m spamgate.commands.reference docs/configuration.md"
    )


def test_reference_covers_nested_keys() -> None:
    table = reference.render()
    for key in ("`resolver.deadline`", "`ip_lists[].hits[].codes`", "`rules[].header.matches`"):
        assert key in table


# Sections of the policy whose keys the manual names as `section.key`.
_SECTIONS = {key.path for key in describe(Policy) if key.type_name == "mapping"}
_KEY_PATHS = {key.path for key in describe(Policy)}
_NAMED_KEY = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)(?::[^`]*)?`")


@pytest.mark.parametrize("document", [pytest.param(d, id=d.name) for d in DOCUMENTS])
def test_policy_keys_named_in_the_manual_exist(document: Path) -> None:
    assert {"resolver", "greylist", "state", "health"} <= _SECTIONS
    named = {key for key in _NAMED_KEY.findall(prose(document)) if key.split(".")[0] in _SECTIONS}
    assert not named - _KEY_PATHS, f"{document.name} names keys the schema does not have"


def yaml_examples() -> list[object]:
    params = []
    for document in DOCUMENTS:
        for number, block in enumerate(
            re.findall(r"^```yaml\n(.*?)^```", document.read_text(), re.MULTILINE | re.DOTALL)
        ):
            # A block with "..." elides keys: an excerpt, not a policy.
            if "..." not in block:
                params.append(pytest.param(block, id=f"{document.name}-{number}"))
    return params


@pytest.mark.parametrize("example", yaml_examples())
def test_yaml_examples_are_valid_policies(example: str, tmp_path: Path) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(example)
    assert isinstance(load_policy(policy), Policy)


# --- the decision log and the metrics -----------------------------------------------------------


def test_every_decision_log_key_is_documented() -> None:
    written = set(re.findall(r'\(\s*"([a-z_]+)",', inspect.getsource(decisionlog.format_decision)))
    assert {"id", "action", "enforced", "hits", "lists", "policy"} <= written
    documented = {
        key
        for cell in table_rows(OPERATIONS, "| key | meaning |")
        for key in re.findall(r"`([a-z_]+)`", cell)
    }
    assert written == documented, "docs/operations.md, The decision log: the key table"


def test_every_metric_is_documented() -> None:
    exported = set(re.findall(r'"(spamgate_[a-z_]+)"', inspect.getsource(metrics)))
    assert {"spamgate_decisions", "spamgate_list_state", "spamgate_dns_queries"} <= exported
    documented = {
        name.removesuffix("_total")
        for cell in table_rows(OPERATIONS, "| metric | what it counts |")
        for name in re.findall(r"spamgate_[a-z_]+", cell)
    }
    assert exported == documented, "docs/operations.md, Metrics: the metric table"


def test_the_manuals_parser_reads_a_decision_line_back() -> None:
    (code,) = re.findall(r"^```python\n(.*?)^```", OPERATIONS.read_text(), re.MULTILINE | re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the manual's own example, run as an admin would
    hostile = 'mx action=reject "quoted" back\\slash\r\nINFO forged caf\u00e9'
    line = format_decision(decision(helo=hostile, sender="<a b@example.org>", rdns="caf\udcff"))
    queue, fields = namespace["parse_decision"]("Dec  7 06:00:00 mx spamgate[812]: " + line)
    assert queue == "3F2A1B4C5D"
    assert fields["helo"] == hostile
    assert fields["from"] == "<a b@example.org>"
    assert fields["rdns"] == "caf\xff"  # the byte 0xFF, as the manual says, read as U+00FF
    assert (fields["action"], fields["refused"]) == ("reject", "<b@example.com>,<d@example.com>")
    assert list(fields)[:3] == ["id", "client", "client_name"]
