"""`spamgate explain` shows each sender-authentication check's result and what it rests on
(issue 17 item 5: SPF, DKIM, DMARC), against a scripted DNS server; offline (`--no-dns`) it
says no check was made."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from tests.dkim_keys import make_key
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


DKIM_POLICY = """
resolver: {{nameservers: ["127.0.0.1:{port}"], query_timeout: 0.5, deadline: 2}}
thresholds: {{tag: 3, greylist: null, reject: 10}}
rules:
  - {{name: DKIM_FAIL, score: 1, description: a signature does not verify, dkim: fail}}
  - {{name: DMARC_FAIL_REJECT, score: 4, description: From says reject, dmarc: fail_reject}}
"""


def test_dkim_and_dmarc_show_each_signature_and_the_alignment(tmp_path: Path) -> None:
    key = make_key(1024, seed=23)
    dns = FakeDnsServer()
    dns.script["sel._domainkey.signer.example", "TXT"] = Behaviour(
        records=(f'"v=DKIM1; k=rsa; p={key.public_b64}"',)
    )
    dns.script["_dmarc.bank.example", "TXT"] = Behaviour(records=('"v=DMARC1; p=reject"',))
    dns.start()
    try:
        header = (
            b"From: Bank <alerts@bank.example>\r\nTo: you@example.com\r\n"
            b"Subject: verify your account\r\n"
        )
        body = b"Click here.\r\n"
        signature = dkim.sign(header + b"\r\n" + body, b"sel", b"signer.example", key.private_pem)
        message = tmp_path / "phish.eml"
        message.write_bytes(bytes(signature) + header + b"\r\n" + body)
        policy = tmp_path / "policy.yaml"
        policy.write_text(DKIM_POLICY.format(port=dns.port), encoding="utf-8")
        argv = ["explain", "-c", str(policy), "--ip", "192.0.2.7", "--helo", "mx.example.net"]
        result = subprocess.run(
            [sys.executable, "-m", "spamgate", *argv, "--from", "x@bank.example", str(message)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        offline = subprocess.run(
            [sys.executable, "-m", "spamgate", *argv, "--no-dns", str(message)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        dns.stop()
    lines = result.stdout.splitlines()
    assert 'dkim: pass for d=signer.example s=sel ("verified with a 1024-bit key")' in lines
    assert (
        "dmarc: fail_reject for bank.example; policy p=reject at _dmarc.bank.example;"
        ' spf bank.example not aligned ("did not pass");'
        ' dkim signer.example not aligned ("other organization"); "no aligned identifier"'
    ) in lines, result.stdout
    assert "DMARC_FAIL_REJECT" in result.stdout
    offline_lines = offline.stdout.splitlines()
    assert "dkim: not checked (--no-dns)" in offline_lines, offline.stdout
    assert "dmarc: not checked (--no-dns)" in offline_lines, offline.stdout
