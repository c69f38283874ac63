"""A DNS list access key reaches the DNS server and nothing else a person or program sees.

Spamhaus DQS-shaped zones (`<key>.zen.dq.spamhaus.net`, `<key>.dbl.dq.spamhaus.net`) are
served by a private rbldnsd; spamgate reads the key from a key file. Mail goes through a
real Postfix: a listed client is refused, a listed sender domain is tagged, a clean message
is delivered. The key must not be in any SMTP reply, any delivered header, the daemon's log,
the metrics, `spamgate lists` or `spamgate check-config --probe`.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port, wait_until
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

KEY = "q7x2k9m4p1w8z3c6v5b0n2h7j4"  # 26 characters, as a DQS key

ZONES = [
    Zone(f"{KEY}.zen.dq.spamhaus.net", "ip4set", "127.0.0.2\n192.0.2.2 :127.0.0.2:\n"),
    Zone(f"{KEY}.dbl.dq.spamhaus.net", "dnset", "test :127.0.1.2:\nspam.example :127.0.1.2:\n"),
]

POLICY = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{status}"}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
log: {{stats_interval: 0}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
ip_lists:
  - name: SPAMHAUS_ZEN
    display: Spamhaus ZEN
    zone: "{{key}}.zen.dq.spamhaus.net"
    key_file: dqs.key
    hits: [{{name: SPAMHAUS_SBL, codes: [127.0.0.2], score: 10}}]
domain_lists:
  - name: SPAMHAUS_DBL
    display: Spamhaus DBL
    zone: "{{key}}.dbl.dq.spamhaus.net"
    key_file: dqs.key
    check_names: [sender]
    hits: [{{name: DBL_SPAM, codes: [127.0.1.2], score: 4}}]
"""


@dataclass
class Keyed:
    workdir: Path
    sink: SmtpSink
    postfix: PostfixInstance
    spamgate: SpamgateDaemon
    metrics_port: int

    def send(self, client: str, sender: str, subject: str) -> SendResult:
        message = build_message(mail_from=sender, to=["u@example.com"], subject=subject)
        return send(
            self.postfix.ports["smtp"],
            client_addr=client,
            helo="mail.client.example",
            mail_from=sender,
            rcpts=["u@example.com"],
            message_bytes=message,
            timeout=30,
        )

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spamgate", *args, "-c", str(self.spamgate.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Keyed]:
    key_file = tmp_path / "dqs.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o640)
    with Rbldnsd(tmp_path, ZONES) as dns, SmtpSink(tmp_path) as sink:
        port, metrics_port = free_port(), free_port()
        text = POLICY.format(
            port=port, dns=dns.port, status=tmp_path / "status.json", metrics=metrics_port
        )
        with SpamgateDaemon(tmp_path, text, port) as daemon:
            listeners = {"smtp": Listener(milters=daemon.postfix_address)}
            with PostfixInstance(tmp_path, relay_port=sink.port, listeners=listeners) as postfix:
                yield Keyed(tmp_path, sink, postfix, daemon, metrics_port)


def replies(result: SendResult) -> str:
    steps = [result.greeting, result.xclient, result.ehlo, result.mail, result.data]
    steps += [result.end_of_data, result.quit, *(reply for _, reply in result.rcpts)]
    return "\n".join(f"{step.code} {step.text}" for step in steps if step is not None)


def test_the_access_key_reaches_dns_and_nothing_else(keyed: Keyed) -> None:
    # The lists answer through the key: the listed client is refused by name of the list.
    refused = keyed.send("192.0.2.2", "a@client.example", "from a listed client")
    ((_, rcpt),) = refused.rcpts
    assert (rcpt.code, "Spamhaus ZEN" in rcpt.text) == (550, True), rcpt
    tagged = keyed.send("192.0.2.77", "a@spam.example", "from a listed domain")
    clean = keyed.send("192.0.2.77", "a@client.example", "clean")
    for result in (tagged, clean):
        assert result.end_of_data is not None and result.end_of_data.code == 250
    spam = keyed.sink.wait_for_message(
        lambda m: m.message["Subject"] == "from a listed domain", "the tagged message"
    )
    assert spam.message["X-Spam-Status"] == "Yes, score=4.0 hits=DBL_SPAM"
    ham = keyed.sink.wait_for_message(lambda m: m.message["Subject"] == "clean", "the clean one")

    status = keyed.workdir / "status.json"
    wait_until(status.exists, timeout=15, what="the status file")
    with urllib.request.urlopen(f"http://127.0.0.1:{keyed.metrics_port}/metrics") as page:
        metrics = page.read().decode()
    lists = keyed.command("lists")
    probe = keyed.command("check-config", "--probe")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.splitlines()[1:] == ["SPAMHAUS_ZEN: ok", "SPAMHAUS_DBL: ok"]
    assert lists.returncode == 0, lists.stderr
    assert 'spamgate_list_state{list="SPAMHAUS_ZEN",state=' in metrics
    keyed.spamgate.stop()
    log = keyed.spamgate.log_text()
    assert "decision" in log and "SPAMHAUS_SBL" in log and "DBL_SPAM" in log

    seen = {
        "SMTP replies": replies(refused) + replies(tagged) + replies(clean),
        "delivered messages": (spam.raw + ham.raw).decode("utf-8", "replace"),
        "the daemon's log": log,
        "metrics": metrics,
        "spamgate lists": lists.stdout + lists.stderr,
        "check-config --probe": probe.stdout + probe.stderr,
        "the status file": status.read_text(),
    }
    for where, text in seen.items():
        assert KEY not in text.lower(), f"the key is in {where}"
