"""The soak suite's reading of the systemd unit: its supervisor restarts spamgate as systemd
would, so the rule it follows must be the unit file's own."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.soak.stack import RestartRule, restart_rule


def test_the_shipped_unit_restarts_on_failure_after_two_seconds() -> None:
    rule = restart_rule()
    assert rule == RestartRule("on-failure", 2.0, frozenset({78}))


@pytest.mark.parametrize(
    ("status", "restarts"),
    [
        pytest.param(-signal.SIGKILL, True, id="killed"),
        pytest.param(-signal.SIGABRT, True, id="watchdog-abort"),
        pytest.param(1, True, id="error-exit"),
        pytest.param(0, False, id="clean-stop"),
        pytest.param(78, False, id="bad-policy-EX_CONFIG"),
    ],
)
def test_on_failure_restarts_after_unclean_exits_only(status: int, restarts: bool) -> None:
    assert restart_rule().restarts_after(status) is restarts


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("3", 3.0), ("1min", 60.0)],
)
def test_restart_sec_time_spans(tmp_path: Path, text: str, seconds: float) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(f"[Service]\nRestart=always\nRestartSec={text}\n")
    assert restart_rule(unit) == RestartRule("always", seconds, frozenset())


def test_restart_no_never_restarts(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    assert not restart_rule(unit).restarts_after(-signal.SIGKILL)


def test_restart_always_restarts_a_clean_stop_too(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nRestart=always\n")
    assert restart_rule(unit).restarts_after(0)
