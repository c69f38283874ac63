"""Pre-flight checks (step 3): a built policy against the machine. `spamgate run` and
`spamgate check-config` run the same checks: the same errors (exit 78, FILE:LINE) and the
same warnings, which run logs and check-config prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spamgate.config.files import read_sources
from spamgate.config.preflight import load_checked_policy, preflight, public_resolvers
from spamgate.core.policy import build_policy
from spamgate.core.schema import ConfigError
from spamgate.core.settings import Nameserver
from tests.adapter.test_cli import spamgate

LOCAL = "resolver: {nameservers: ['127.0.0.1']}\n"
QUIET = "thresholds: {greylist: null}\nhealth: {status_file: ''}\n"  # no state, no status file
BEYOND_LOOPBACK = (
    "listens beyond loopback: any host that reaches it may use it, and spamgate "
    "authenticates no one (firewall it, or use a loopback address)"
)


def no_system_nameservers() -> tuple[Nameserver, ...]:
    raise AssertionError("resolv.conf is asked only when resolver.nameservers is empty")


def warnings_for(tmp_path: Path, text: str, system: tuple[str, ...] = ()) -> tuple[str, ...]:
    path = tmp_path / "spamgate.yaml"
    path.write_text(text)
    path.chmod(0o640)
    sources = read_sources(path)
    servers = tuple(Nameserver.from_config(s) for s in system)
    return preflight(build_policy(sources), sources, lambda: servers)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listen: inet:8894@127.0.0.1\nmetrics: {listen: '[::1]:9464'}\n", [], id="loopback"
        ),
        pytest.param("listen: unix:/run/spamgate/spamgate.sock\n", [], id="unix"),
        pytest.param(
            "listen: inet:8894@0.0.0.0\nmetrics: {listen: '192.0.2.1:9464'}\n",
            [
                f"the milter socket inet:8894@0.0.0.0 {BEYOND_LOOPBACK}",
                f"the metrics endpoint 192.0.2.1:9464 {BEYOND_LOOPBACK}",
            ],
            id="wildcard-and-public",
        ),
        pytest.param(
            "listen: 'inet6:8894@[::]'\n",
            [f"the milter socket inet6:8894@[::] {BEYOND_LOOPBACK}"],
            id="ipv6-wildcard",
        ),
    ],
)
def test_listeners_beyond_loopback_get_a_warning_each(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert list(warnings_for(tmp_path, text + LOCAL + QUIET)) == expected


def test_public_resolver_gets_a_warning(tmp_path: Path) -> None:
    text = (
        'resolver: {nameservers: ["8.8.8.8", "127.0.0.1:5353", "[2606:4700:4700::1111]:53"]}\n'
        "ip_lists: [{name: ZEN, zone: zen.test, score: 10}]\n" + QUIET
    )
    (warning,) = warnings_for(tmp_path, text)
    assert warning.startswith(
        "DNS lists are asked through 8.8.8.8:53, [2606:4700:4700::1111]:53, a public resolver"
    )
    # Without lists, no resolver is asked anything.
    assert warnings_for(tmp_path, text.replace("ip_lists", "rules: []\n#")) == ()


def test_public_resolver_of_resolv_conf_gets_the_same_warning(tmp_path: Path) -> None:
    text = "ip_lists: [{name: ZEN, zone: zen.test, score: 10}]\n" + QUIET
    (warning,) = warnings_for(tmp_path, text, system=("1.1.1.1", "127.0.0.53"))
    assert warning.startswith("DNS lists are asked through 1.1.1.1:53, a public resolver")
    assert warnings_for(tmp_path, text, system=("127.0.0.53",)) == ()


def test_public_resolvers_by_address() -> None:
    servers = [Nameserver("8.8.4.4"), Nameserver("127.0.0.1", 5353), Nameserver("2620:fe::fe")]
    assert public_resolvers(servers) == ["8.8.4.4:53", "[2620:fe::fe]:53"]


def test_a_status_file_that_is_a_directory_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "spamgate.yaml"
    path.write_text(LOCAL + f"health:\n  status_file: {tmp_path}\n")
    with pytest.raises(ConfigError) as raised:
        load_checked_policy(path, no_system_nameservers)
    assert str(raised.value) == (
        f"{path}:3:3: health.status_file: '{tmp_path}' is a directory, not a file name"
    )


# --- the same checks through both commands -------------------------------------------------

KEY = "abcdefghij0123456789klmnop"


def exposed_policy(tmp_path: Path) -> Path:
    """A policy with something for every pre-flight warning: a key file other users can read,
    listeners beyond loopback, a public resolver. Its metrics address is no address of this
    machine, so `run` stops right after its start-up lines (exit 1), having listened nowhere
    and sent nothing."""
    key = tmp_path / "dqs.key"
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(
        "listen: inet:8894@0.0.0.0\n"
        "metrics: {listen: '192.0.2.1:9464'}\n"
        "resolver: {nameservers: ['9.9.9.9']}\n"
        f"log: {{target: {tmp_path}/spamgate.log}}\n"
        "ip_lists:\n"
        "  - {name: ZEN, zone: '{key}.zen.dq.spamhaus.net', key_file: dqs.key, score: 10}\n" + QUIET
    )
    policy.chmod(0o640)
    return policy


def test_check_config_prints_the_warnings_run_logs(tmp_path: Path) -> None:
    policy = exposed_policy(tmp_path)
    checked = spamgate("check-config", "-c", str(policy))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{policy}: OK (1 IP lists")
    printed = [line.removeprefix("spamgate: WARNING: ") for line in checked.stderr.splitlines()]
    assert printed == [
        f"secret file {tmp_path}/dqs.key has mode 0644: other users can read it, and it holds "
        "the access key of ZEN (chmod 0640, group spamgate)",
        f"the milter socket inet:8894@0.0.0.0 {BEYOND_LOOPBACK}",
        f"the metrics endpoint 192.0.2.1:9464 {BEYOND_LOOPBACK}",
        "DNS lists are asked through 9.9.9.9:53, a public resolver: most list operators refuse "
        "those (Spamhaus answers 127.255.255.254) and the lists will be unusable; use a local "
        "caching resolver (resolver.nameservers)",
    ]
    assert all(line.startswith("spamgate: WARNING: ") for line in checked.stderr.splitlines())

    ran = subprocess.run(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ran.returncode == 1, ran.stderr  # cannot serve metrics on 192.0.2.1
    log = (tmp_path / "spamgate.log").read_text()
    logged = [line.split(" WARNING ", 1)[1] for line in log.splitlines() if " WARNING " in line]
    # run also says when it runs as root: about its process, which check-config is not.
    root = [w for w in logged if w.startswith("running as root:")]
    assert [w for w in logged if w not in root] == printed
    assert "ERROR cannot serve metrics on 192.0.2.1:9464" in log
    assert KEY not in log + checked.stdout + checked.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_pre_flight_error_is_exit_78_with_file_and_line(tmp_path: Path, command: str) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(LOCAL + f"health: {{status_file: {tmp_path}}}\n")
    result = spamgate(command, "-c", str(policy))
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr == (
        f"spamgate: {policy}:2:10: health.status_file: '{tmp_path}' is a directory, not a "
        "file name\n"
    )
