"""spamgate as a subprocess, and the whole stack the end-to-end tests send mail through."""

from __future__ import annotations

import re
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.dns import Rbldnsd, Zone
from tests.harness.milters import MilterProcess
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import LOOPBACK, free_port, wait_until
from tests.harness.sink import SinkMessage, SmtpSink
from tests.harness.smtp import SendResult, build_message, send

# The zone carries a fake access key, to prove that zones never reach a reply text.
ZEN_ZONE = "k3yk3y.zen.test"

ZONES = [
    Zone(
        ZEN_ZONE,
        "ip4set",
        "127.0.0.2\n"
        "192.0.2.2 :127.0.0.2:\n"
        "192.0.2.10 :127.0.0.10:\n"
        "192.0.2.21 :127.0.0.2:\n"
        "192.0.2.254 :127.255.255.254:\n",
    ),
    Zone(ZEN_ZONE, "ip6trie", "2001:db8::2 :127.0.0.2:\n"),
    # 127.0.0.2 is every list's RFC 5782 test entry: spamgate probes for it.
    Zone("wl.test", "ip4set", "127.0.0.2\n192.0.2.21 :127.0.10.3:\n"),
]

# The test ZEN as an `ip_lists` entry, for policy templates that fill in {zen_zone}.
ZEN_LIST = """\
  - name: ZEN
    display: Example ZEN
    zone: {zen_zone}
    hits:
      - {{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}}
      - {{name: ZEN_PBL, codes: [127.0.0.10, 127.0.0.11], score: 7,
          description: listed in the Example PBL}}"""

POLICY = (
    """\
listen: inet:{port}@127.0.0.1
mode: {mode}
resolver:
  nameservers: ["127.0.0.1:{dns_port}"]
  query_timeout: 0.3
  deadline: {deadline}
trusted_networks: [127.0.0.0/8, "::1/128"]
health: {{status_file: "{status_file}"}}
thresholds: {{tag: 3, tempfail: 6, reject: 10}}
ip_lists:
"""
    + ZEN_LIST
    + """
  - name: WL
    display: Example WL
    zone: wl.test
    hits:
      - {{name: WL_HI, codes: ["127.0.*.3"], score: -5, description: trusted by Example WL}}
rules:
  - name: SUBJECT_PHARMA
    score: 10
    description: the Subject advertises pharmacy products
    header: {{name: Subject, matches: '(?i)\\bv[i1]agra\\b'}}
"""
)

_DECISION = re.compile(r"(?P<queue>\S+): decision (?P<fields>.*)")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(port: int) -> Samples:
    """Every sample of a daemon's /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def send_as_client(
    port: int,
    client_addr: str,
    *,
    rcpts: tuple[str, ...] = ("user@example.com",),
    subject: str,
    header_from: str = "sender@client.example",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> SendResult:
    """One message from `client_addr` (through XCLIENT), sender@client.example in MAIL FROM."""
    message = build_message(
        mail_from=header_from, to=list(rcpts), subject=subject, extra_headers=extra_headers
    )
    return send(
        port,
        client_addr=client_addr,
        helo="mail.client.example",
        mail_from="sender@client.example",
        rcpts=list(rcpts),
        message_bytes=message,
        timeout=30,
    )


def parse_decisions(log_text: str) -> list[dict[str, str]]:
    """Every decision line of a spamgate log, as {"queue": ..., key: value, ...}."""
    found = []
    for line in log_text.splitlines():
        match = _DECISION.search(line)
        if match:
            fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', match["fields"]))
            fields["queue"] = match["queue"]
            found.append(fields)
    return found


class SpamgateDaemon(MilterProcess):
    """`python -m spamgate run` on a free port, with a policy file written for it."""

    def __init__(self, workdir: Path, policy_text: str, port: int) -> None:
        self.config_path = workdir / f"spamgate-{port}.yaml"
        self.config_path.write_text(policy_text)
        self.log_path = workdir / f"spamgate-{port}.log"
        argv = [sys.executable, "-m", "spamgate", "run", "-c", str(self.config_path)]
        super().__init__(argv, self.log_path, port)

    @classmethod
    def from_template(cls, workdir: Path, template: str, **fields: object) -> SpamgateDaemon:
        """A daemon on a free port, its policy `template` filled with `fields` and {port}."""
        port = free_port()
        return cls(workdir, template.format(port=port, **fields), port)

    @classmethod
    def for_dns(
        cls, workdir: Path, dns_port: int, *, mode: str = "enforce", deadline: float = 1.0
    ) -> SpamgateDaemon:
        return cls.from_template(
            workdir,
            POLICY.replace("{status_file}", f"{workdir}/status-{{port}}.json"),
            mode=mode,
            dns_port=dns_port,
            deadline=deadline,
            zen_zone=ZEN_ZONE,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def decisions(self) -> list[dict[str, str]]:
        """Every decision line logged so far, as {"queue": ..., key: value, ...}."""
        return parse_decisions(self.log_text())

    def wait_for_decision(self, **expected: str) -> dict[str, str]:
        """The first decision line whose fields include `expected` (bounded wait)."""
        found: list[dict[str, str]] = []

        def logged() -> bool:
            found[:] = [
                d for d in self.decisions() if all(d.get(k) == v for k, v in expected.items())
            ]
            return bool(found)

        wait_until(
            logged,
            timeout=5,
            what=f"a decision line with {expected}",
            log_tail=self.log_tail,
        )
        return found[0]


@dataclass
class Stack:
    dns: Rbldnsd
    sink: SmtpSink
    postfix: PostfixInstance
    milters: dict[str, SpamgateDaemon]
    spare_dns: Rbldnsd

    def send(
        self,
        listener: str,
        client_addr: str,
        *,
        rcpts: tuple[str, ...] = ("user@example.com",),
        subject: str,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> SendResult:
        return send_as_client(
            self.postfix.ports[listener],
            client_addr,
            rcpts=rcpts,
            subject=subject,
            extra_headers=extra_headers,
        )

    def delivered(self, subject: str) -> SinkMessage:
        """The message with this Subject at the sink (bounded wait)."""
        return self.sink.wait_for_message(
            lambda m: m.message["Subject"] == subject, f"message {subject!r} at the sink"
        )


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """rbldnsd + smtp-sink + four spamgate daemons + one Postfix with a listener per daemon.

    - enforce / observe: the test policy in each mode, against the test zones;
    - dns-stopped: its DNS server (`spare_dns`) is stopped by the test that uses it;
    - dns-silent: its nameserver is a UDP socket that never answers.
    """
    with ExitStack() as stack:
        dns = stack.enter_context(Rbldnsd(workdir, ZONES))
        spare_dns = stack.enter_context(Rbldnsd(workdir, ZONES))
        sink = stack.enter_context(SmtpSink(workdir))
        silent = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        silent.bind((LOOPBACK, 0))
        milters = {
            "enforce": SpamgateDaemon.for_dns(workdir, dns.port),
            "observe": SpamgateDaemon.for_dns(workdir, dns.port, mode="observe"),
            "dns-stopped": SpamgateDaemon.for_dns(workdir, spare_dns.port),
            "dns-silent": SpamgateDaemon.for_dns(workdir, silent.getsockname()[1]),
        }
        postfix = start_behind_postfix(stack, workdir, sink, milters)
        yield Stack(dns, sink, postfix, milters, spare_dns)


def start_behind_postfix(
    stack: ExitStack, workdir: Path, sink: SmtpSink, milters: dict[str, SpamgateDaemon]
) -> PostfixInstance:
    """Start each daemon, and one Postfix with a listener of the same name for each."""
    for milter in milters.values():
        stack.enter_context(milter)
    listeners = {name: Listener(milters=m.postfix_address) for name, m in milters.items()}
    return stack.enter_context(PostfixInstance(workdir, relay_port=sink.port, listeners=listeners))
