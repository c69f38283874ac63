"""`spamgate explain` shows each SPF check's result and what it rests on (issue 17 item 5),
against a scripted DNS server; offline (`--no-dns`) it says no check was made."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_dns_server import Behaviour, FakeDnsServer

POLICY = """
resolver: {{nameservers: ["127.0.0.1:{port}"], query_timeout: 0.5, deadline: 2}}
thresholds: {{tag: 3, greylist: null, reject: 10}}
rules:
  - {{name: SPF_FAIL, score: 10, description: the sender domain forbids this client, spf: fail}}
  - {{name: HELO_SPF_PASS, score: 0, description: the HELO name allows it, helo_spf: pass}}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[tuple[Path, FakeDnsServer]]:
    dns = FakeDnsServer()
    dns.script["fail.example", "TXT"] = Behaviour(
        records=('"v=spf1 ip4:198.51.100.0/24 -all exp=why.fail.example"',)
    )
    dns.script["why.fail.example", "TXT"] = Behaviour(records=('"%{i} is not one of ours"',))
    dns.script["mx.good.example", "TXT"] = Behaviour(records=('"v=spf1 +a -all"',))
    dns.script["mx.good.example", "A"] = Behaviour(records=("192.0.2.7",))
    dns.start()
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(port=dns.port), encoding="utf-8")
    yield path, dns
    dns.stop()


def _explain(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["explain", "-c", str(path), "--ip", "192.0.2.7", "--helo", "mx.good.example"]
    return subprocess.run(
        [sys.executable, "-m", "spamgate", *argv, "--from", "x@fail.example", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_check_shows_its_result_mechanism_and_explanation(
    policy: tuple[Path, FakeDnsServer],
) -> None:
    result = _explain(policy[0])
    assert result.returncode == 4, result  # reject
    lines = result.stdout.splitlines()
    assert lines[1:3] == [
        'spf: fail for fail.example; matched -all; explanation "192.0.2.7 is not one of ours"',
        "helo_spf: pass for mx.good.example; matched +a",
    ]
    assert 'spf = fail for "<x@fail.example>" (fail)' in result.stdout


def test_offline_no_check_is_made_and_it_says_so(policy: tuple[Path, FakeDnsServer]) -> None:
    path, dns = policy
    result = _explain(path, "--no-dns")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[2:4] == ["spf: not checked (--no-dns)", "helo_spf: not checked (--no-dns)"]
    assert dns.packets("fail.example", "TXT") == 0


def test_json_carries_the_checks(policy: tuple[Path, FakeDnsServer]) -> None:
    result = _explain(policy[0], "--json")
    document = json.loads(result.stdout)
    assert document["checks"]["spf"].startswith("fail for fail.example")
    assert document["checks"]["helo_spf"].startswith("pass for mx.good.example")
