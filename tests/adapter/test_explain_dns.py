"""`spamgate explain` shows the DNS evidence a hit rests on (issue 16): what a DNS list
answered, the client's reverse name and whether the HELO name resolved, as the engine saw
them, with no second lookup. Run as a subprocess the way an admin runs it, against a scripted
DNS server in the test process (tests/fake_dns_server.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_dns_server import Behaviour, FakeDnsServer

POLICY = r"""
resolver: {{nameservers: ["127.0.0.1:{port}"], query_timeout: 0.5, deadline: 2}}
thresholds: {{tag: 3, greylist: null, reject: 50}}
reverse_dns: {{dynamic_patterns: ['^dyn-']}}
ip_lists:
  - name: ZEN
    zone: zen.test
    hits: [{{name: ZEN_SBL, codes: [127.0.0.2], score: 3, description: listed in the SBL}},
           {{name: ZEN_PBL, codes: [127.0.0.10], score: 1, description: listed in the PBL}}]
rules:
  - {{name: HELO_NXDOMAIN, score: 1, description: the HELO name does not resolve,
     helo: unresolvable}}
  - {{name: RDNS_DYNAMIC, score: 1, description: a dynamic reverse name, rdns: dynamic}}
  - {{name: PARTNER, score: -5, description: a partner, sender_matches: '@partner\.example$'}}
  - {{name: LISTED_DYNAMIC, score: 2, description: a listed dynamic host not a partner,
     composite: {{all: [ZEN_SBL, RDNS_DYNAMIC], any: [HELO_NXDOMAIN, ZEN_PBL], not: [PARTNER]}}}}
"""
SHOWN = [
    "recipient someone@example.com: tag",
    "  score 7.0 -> tag",
    "      +3.0  ZEN_SBL                      listed in the SBL",
    "              list ZEN = 127.0.0.2 (listed)",
    "      +1.0  HELO_NXDOMAIN                the HELO name does not resolve",
    '              helo = "mail.nx.example", does not resolve (unresolvable)',
    "      +1.0  RDNS_DYNAMIC                 a dynamic reverse name",
    '              rdns = "dyn-7.pool.isp.example", confirmed (dynamic)',
    "      +2.0  LISTED_DYNAMIC               a listed dynamic host not a partner",
    "              composite: all of ZEN_SBL, RDNS_DYNAMIC; any of HELO_NXDOMAIN, ZEN_PBL;"
    " none of PARTNER",
    "                all ZEN_SBL fired: list ZEN = 127.0.0.2 (listed)",
    '                all RDNS_DYNAMIC fired: rdns = "dyn-7.pool.isp.example", confirmed (dynamic)',
    '                any HELO_NXDOMAIN fired: helo = "mail.nx.example", does not resolve'
    " (unresolvable)",
    "                any ZEN_PBL did not fire: list ZEN = 127.0.0.2 (listed, not as ZEN_PBL)",
    '                not PARTNER did not fire, as required: sender = "<x@spam.example>"'
    ' (matches "@partner\\\\.example$")',
]


@pytest.fixture
def server() -> Iterator[FakeDnsServer]:
    """192.0.2.7: listed in ZEN's SBL, its reverse name dynamic and confirmed; every other
    name (mail.nx.example, the HELO) does not exist."""
    dns = FakeDnsServer()
    dns.script["7.2.0.192.zen.test", "A"] = Behaviour(records=("127.0.0.2",))
    dns.script["7.2.0.192.in-addr.arpa", "PTR"] = Behaviour(records=("dyn-7.pool.isp.example.",))
    dns.script["dyn-7.pool.isp.example", "A"] = Behaviour(records=("192.0.2.7",))
    dns.start()
    yield dns
    dns.stop()


def test_a_list_hit_shows_the_answer_and_dns_rules_the_evidence_they_read(
    server: FakeDnsServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=server.port), encoding="utf-8")
    argv = ["explain", "-c", str(policy), "--ip", "192.0.2.7", "--helo", "mail.nx.example"]
    result = subprocess.run(
        [sys.executable, "-m", "spamgate", *argv, "--from", "x@spam.example"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (1, "")  # tag
    assert result.stdout.splitlines()[1:-1] == SHOWN
    # Shown from what the engine was given: each name was asked once, by the session.
    assert server.packets("7.2.0.192.zen.test") == 1
