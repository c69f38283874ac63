"""`make bench` keeps working: its quick form runs end to end and writes every section.

The numbers themselves are the benchmark's business (bench/RESULTS.md), not a test's: this
checks that the harness starts everything, loses no message and reports what it measured.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.stack import _spamgate, export_source
from tests.harness.processes import free_port

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_quick_benchmark_runs_loses_nothing_and_reports_every_part(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    finished = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(results)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    text = results.read_text()
    assert "## Targets" in text and "## Memory" in text and "python -m bench.phases" in text
    tables = _tables(text)
    assert set(tables) == {
        "c1",
        "c50",
        "c50-clean",
        "cold",
        "c50-greylist",
        "c50-greylist-first",
        "c50-real",
        "c200-real",
        "c50-dkim",
    }
    assert set(tables["c1"]) == {"plain", "noop", "spamgate", "noop-unix", "spamgate-unix"}
    for workload, rows in tables.items():
        for config, row in rows.items():
            assert (row["failed"], row.get("lost", "0")) == ("0", "0"), (workload, config)
    # The warm workloads hit spamgate's cache only; the realistic mix has listed clients,
    # which spamgate refuses and Postfix alone does not; the cold one asks DNS every time.
    for workload in ("c1", "c50", "c50-clean"):
        assert tables[workload]["spamgate"]["cache hits"] == "100.0%"
        assert tables[workload]["noop"]["refused"] == "0"
    assert int(tables["c50"]["spamgate"]["refused"]) > 0
    # Signed mail: only the policy with DKIM rules asks for keys (and reads the bodies).
    assert list(tables["c50-dkim"]) == ["spamgate-nodkim", "spamgate"]
    assert float(tables["c50-dkim"]["spamgate"]["DNS queries/msg"]) > 0
    assert tables["c50-clean"]["spamgate"]["refused"] == "0"
    assert float(tables["cold"]["spamgate-cold"]["DNS queries/msg"]) >= 4
    # Greylisting: every message retried a first attempt and passed, through SQLite and
    # Redis, and was delivered, like the same messages through spamgate without greylisting.
    # (The run fails otherwise: this checks that the tables say so.)
    greylist = tables["c50-greylist"]
    assert list(greylist) == [
        "spamgate-nogreylist",
        "spamgate-greylist-sqlite",
        "spamgate-greylist-redis",
    ]
    for config, row in greylist.items():
        assert (row["refused"], row["failed open"]) == ("0", "0"), config
    assert int(greylist["spamgate-greylist-sqlite"]["greylist passed + known"]) > 0
    assert float(greylist["spamgate-greylist-redis"]["redis-server CPU ms/msg"]) >= 0
    # Issue 13's comparison: with a realistic cache, every filter next to the no-op; the filters
    # refuse ZEN-listed clients, which the no-op milter accepts, and spamgate says how many of
    # its decisions lost a list to its own deadline.
    for workload in ("c50-real", "c200-real"):
        real = tables[workload]
        assert list(real) == ["plain", "noop", "spamgate", "rspamd"]
        for config in ("spamgate", "rspamd"):
            assert int(real[config]["refused"]) > 0, (workload, config)
            assert real[config]["listed accepted"].startswith("0 of "), (workload, config)
        listed, _, sent = real["noop"]["listed accepted"].partition(" of ")
        assert int(listed) == int(sent) > 0, workload
        assert real["spamgate"]["lost to the deadline"].isdigit(), workload
        slow, _, verdicts = real["spamgate"]["RCPT verdicts over 50 ms"].partition(" of ")
        assert int(verdicts) > 0 and 0 <= int(slow) <= int(verdicts), workload
        assert real["spamgate"]["cache hits"] != "100.0%", workload
        assert float(real["rspamd"]["filter CPU ms/msg (user + sys)"].split()[0]) > 0, workload
    assert "`c200-real`: no decision loses a list to spamgate's own deadline" in text
    first = tables["c50-greylist-first"]
    assert set(first) == {"spamgate-greylist-sqlite", "spamgate-greylist-redis"}
    for config, row in first.items():
        assert (row["accepted"], row["failed open"]) == ("0", "0"), config
        assert int(row["greylist new + early"]) > 0, config


def _tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """{workload: {configuration: {column: cell}}} from the results' per-workload tables."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    workload = ""
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            heading = re.match(r"## .*\(`([\w-]+)`", line)
            workload, header = (heading.group(1) if heading else ""), []
            continue
        if not workload or not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        tables.setdefault(workload, {})[cells[0]] = dict(zip(header, cells, strict=True))
    return tables


# The last commit whose shipped policy has no `scheduling:` key: its daemon refuses one.
BEFORE_SCHEDULING = "da4a210"


def test_a_revision_measured_by_before_runs_with_its_own_shipped_policy(tmp_path: Path) -> None:
    """`--before REV` measures REV's daemon on REV's config/spamgate.yaml: on today's, a key
    added since (scheduling:) made the old daemon exit 78 before the first round."""
    source = export_source(BEFORE_SCHEDULING, tmp_path)
    milter = _spamgate(
        tmp_path, "spamgate-before", f"inet:{free_port()}@127.0.0.1", free_port(), source=source
    )
    with milter:  # started and listening, or a HarnessError with its log
        pass
    policy = (tmp_path / "spamgate-before.yaml").read_text()
    assert "scheduling" not in policy
    assert "realtime_receiver: true" in policy  # da4a210's own shipped resolver settings
