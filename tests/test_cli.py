"""The `spamgate` command line, run as a subprocess the way an admin runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "spamgate.yaml"


def spamgate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spamgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_config_accepts_the_shipped_policy() -> None:
    result = spamgate("check-config", "-c", str(SHIPPED))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{SHIPPED}: OK (4 IP lists, 1 domain lists, 21 rules, policy ")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_policy_is_refused_with_file_line_and_key(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "spamgate.yaml"
    bad.write_text("mode: enforce\nresolver:\n  deadline: high\n")
    result = spamgate(command, "-c", str(bad))
    assert result.returncode == 78  # EX_CONFIG
    assert result.stderr.strip() == (
        f"spamgate: {bad}:3:13: resolver.deadline: expected a number, got the string 'high'"
    )
    assert result.stdout == ""


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = spamgate("check-config", "-c", str(missing))
    assert result.returncode == 78
    assert result.stderr.strip() == f"spamgate: {missing}: cannot read: No such file or directory"


def test_usage_error_exits_64() -> None:
    result = spamgate("frobnicate")
    assert result.returncode == 64  # EX_USAGE; 2 means "quarantine" to `explain`
    assert "invalid choice: 'frobnicate'" in result.stderr
