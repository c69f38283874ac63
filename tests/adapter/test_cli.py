"""The `spamgate` command line, run as a subprocess the way an admin runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spamgate.commands import cli

REPO = Path(__file__).resolve().parents[2]
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
    assert result.stdout.startswith(f"{SHIPPED}: OK (4 IP lists, 1 domain lists, 64 rules, policy ")


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


# Issue 14: policies that ended `check-config` (and `run`) with a traceback and exit 1, or never.
BROKEN_POLICIES = [
    pytest.param("mode: !!float x\n", "{p}:1:7: mode: cannot read 'x' as a number", id="float-tag"),
    pytest.param("mode: !foo bar\n", "{p}:1:7: mode: the tag !foo is not allowed", id="local-tag"),
    pytest.param(
        "log: {target: 2024-02-30}\n",
        "{p}:1:15: log.target: cannot read '2024-02-30' as a date",
        id="impossible-date",
    ),
    pytest.param(
        "shutdown_grace: " + "9" * 400 + "\n",
        "{p}:1:17: shutdown_grace: 9999",
        id="integer-too-large-for-a-float",
    ),
    pytest.param(
        "mode: enforce\x00\n", "{p}:1:14: the character U+0000 is not allowed in YAML", id="nul"
    ),
    pytest.param(
        "our_names: " + "[" * 500 + "]" * 500 + "\n",
        "{p}:1:75: YAML syntax: nested deeper than 64 levels",
        id="deep-nesting",
    ),
    pytest.param(
        "allow: {clients: ['file:{fifo}']}\n",
        "{p}:1:19: allow.clients[0]: {fifo}: cannot read: a FIFO, not a regular file",
        id="fifo-list",
    ),
    pytest.param(
        "deny: {senders: ['file:/dev/zero']}\n",
        "{p}:1:18: deny.senders[0]: /dev/zero: cannot read: a character device, not a regular file",
        id="dev-zero-list",
    ),
    pytest.param(
        "ip_lists:\n"
        "  - {name: DQS, zone: '{key}.zen.dq.spamhaus.net', key_file: /dev/zero, score: 5}\n",
        "{p}:2:52: ip_lists[0].key_file: cannot read /dev/zero: a character device, not a "
        "regular file",
        id="dev-zero-key-file",
    ),
    pytest.param(
        "mode: enforce\n" + "#" * 2**20 + "\n",
        "{p}: larger than 1 MiB, the limit for a policy file (put long lists in file: lists)",
        id="oversized-policy",
    ),
    # What used to pass check-config and fail only when the daemon ran.
    pytest.param(
        "listen: unix:/" + "s" * 304 + "\n",
        "{p}:1:9: listen: a unix socket path is at most 107 bytes, this one has 305",
        id="unix-socket-path-too-long",
    ),
    pytest.param(
        "health: {status_file: /}\n",
        "{p}:1:10: health.status_file: '/' is a directory, not a file name",
        id="status-file-is-a-directory",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN_POLICIES)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_broken_policy_is_one_line_and_exit_78(
    tmp_path: Path, text: str, expected: str, command: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bad = tmp_path / "spamgate.yaml"
    bad.write_text(text.replace("{fifo}", str(fifo)))
    result = spamgate(command, "-c", str(bad), timeout=20)
    assert result.returncode == 78, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("spamgate: " + expected.format(p=bad, fifo=fifo))


def test_policy_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "spamgate.yaml"
    os.mkfifo(fifo)
    result = spamgate("check-config", "-c", str(fifo), timeout=20)
    assert result.returncode == 78
    assert result.stderr == f"spamgate: {fifo}: cannot read: a FIFO, not a regular file\n"


def test_a_bug_while_loading_is_still_one_line_and_exit_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: object, system_nameservers: object) -> object:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "load_checked_policy", broken)
    assert cli.main(["check-config", "-c", "/etc/x.yaml"]) == 78
    assert capsys.readouterr().err == (
        "spamgate: /etc/x.yaml: cannot load the policy (RuntimeError: a bug over two lines); "
        "this is a bug in spamgate, please report it\n"
    )
