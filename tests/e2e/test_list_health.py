"""DNS list health through a real Postfix and rbldnsd (issue 14, items 2 and 5).

- The circuit breaker counts distinct clients: one listed client reconnecting, or one listed
  sender domain named in transaction after transaction, cannot switch a list off for every
  client; a flood of listed networks only makes spamgate probe the list, and its probe passes.
- A dual-stack list is probed on IPv4 and IPv6 apart: a list whose IPv6 side lists everyone
  is suspended for IPv6 only, and still refuses listed IPv4 clients; a domain list's probes
  (`test`, `invalid`) suspend a domain list that lists everything.

Three spamgate daemons behind one Postfix, each with its own listener: `breaker` and
`domains` (an IP list, and a domain list, with a small window and min_checks, so that the
breaker before the fix tripped within five sessions) and `families` (lists gone bad on one
side).
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.adapter.test_cli import spamgate
from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import LOOPBACK, wait_until
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

BOT = "198.51.100.77"  # listed on ZEN; reconnects again and again
OTHER_LISTED = "203.0.113.5"  # another listed client
CLEAN_CLIENT = "198.51.100.200"
# The IPv4-mapped nibbles of ::ffff:7f00:1, RFC 5782's IPv6 must-not-list test point.
V6_UNLISTED = "1.0.0.0.0.0.f.7.f.f.f.f" + ".0" * 20

ZONES = [
    # zen.test follows RFC 5782 on both families (rbldnsd answers the IPv4-mapped IPv6 test
    # points from its IPv4 data): it lists 127.0.0.2 and not 127.0.0.1.
    Zone(
        "zen.test",
        "ip4set",
        f"127.0.0.2\n{BOT} :127.0.0.2:\n203.0.113.0/24 :127.0.0.2:\n198.18.0.0/15 :127.0.0.2:\n",
    ),
    # v6broken.test: a well IPv4 side, and an IPv6 side that lists every address and its
    # must-not-list test point (rbldnsd would answer ::ffff:7f00:1 from the IPv4 data, so the
    # generic dataset lists it by name).
    Zone("v6broken.test", "ip4set", "127.0.0.2\n192.0.2.0/24 :127.0.0.2:\n"),
    Zone("v6broken.test", "ip6trie", "::/0 :127.0.0.2:\n"),
    Zone("v6broken.test", "generic", f"{V6_UNLISTED} A 127.0.0.2\n"),
    Zone("dbl.test", "dnset", "test\nspam.example :127.0.1.2:\nother-spam.example :127.0.1.2:\n"),
    # dblbroken.test lists its must-not-list test entry, `invalid`, as a parked domain would.
    Zone("dblbroken.test", "dnset", "test\ninvalid\n"),
]

COMMON = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
log: {{stats_interval: 0}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
state: {{store: "{dir}/state-{port}.sqlite"}}
"""

BREAKER = (
    COMMON
    + """\
# Before the fix, five sessions from one listed client suspended ZEN for everyone.
health: {{status_file: "{dir}/status-{port}.json", window: 60, min_checks: 5,
          max_hit_ratio: 0.5}}
ip_lists:
  - {{name: ZEN, zone: zen.test, score: 10}}
"""
)

# The same breaker settings for a domain list alone: its window holds only the listed domain.
DOMAIN_BREAKER = (
    COMMON
    + """health: {{status_file: "{dir}/status-{port}.json", window: 60, min_checks: 5,
          max_hit_ratio: 0.5}}
domain_lists:
  - {{name: DBL, zone: dbl.test, score: 10, check_names: [sender]}}
"""
)

FAMILIES = (
    COMMON
    + """\
health: {{status_file: "{dir}/status-{port}.json"}}
ip_lists:
  - {{name: V6BROKEN, zone: v6broken.test, score: 10}}
domain_lists:
  - {{name: DBL, zone: dbl.test, score: 10, check_names: [sender]}}
  - {{name: DBLBROKEN, zone: dblbroken.test, score: 10, check_names: [sender]}}
"""
)


@dataclass
class Health:
    postfix_ports: dict[str, int]
    daemons: dict[str, SpamgateDaemon]

    def send(
        self, listener: str, client: str, subject: str, sender: str = "a@client.example"
    ) -> SendResult:
        message = build_message(mail_from=sender, to=["user@example.com"], subject=subject)
        return send(
            self.postfix_ports[listener],
            client_addr=client,
            helo="mail.client.example",
            mail_from=sender,
            rcpts=["user@example.com"],
            message_bytes=message,
            timeout=30,
        )

    def connection(self, listener: str, client: str) -> smtplib.SMTP:
        """An SMTP session as `client` (XCLIENT), ready for MAIL FROM."""
        session = smtplib.SMTP(LOOPBACK, self.postfix_ports[listener], timeout=30)
        session.ehlo("harness.localhost")
        code, text = session.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE]")
        assert code == 220, text
        session.ehlo("mail.client.example")
        return session

    def log(self, listener: str) -> str:
        return self.daemons[listener].log_text()

    def lists(self, listener: str) -> dict[str, list[str]]:
        """`spamgate lists` for a daemon: its rows by list name (columns split on spaces)."""
        shown = spamgate("lists", "-c", str(self.daemons[listener].config_path))
        assert shown.returncode == 0, shown.stderr
        return {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:]}

    def status(self, listener: str) -> dict[str, dict[str, object]]:
        """The daemon's status file: each list's entry by name ({} until it is written)."""
        path = self.daemons[listener].config_path.parent / (
            f"status-{self.daemons[listener].port}.json"
        )
        try:
            entries = json.loads(path.read_text())["lists"]
        except (OSError, ValueError, KeyError):
            return {}
        return {entry["name"]: entry for entry in entries}


@pytest.fixture(scope="module")
def health(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Health]:
    workdir = tmp_path_factory.mktemp("list-health")
    workdir.chmod(0o755)
    with ExitStack() as stack:
        dns = stack.enter_context(Rbldnsd(workdir, ZONES))
        sink = stack.enter_context(SmtpSink(workdir))
        daemons = {
            name: SpamgateDaemon.from_template(workdir, template, dns_port=dns.port, dir=workdir)
            for name, template in (
                ("breaker", BREAKER),
                ("domains", DOMAIN_BREAKER),
                ("families", FAMILIES),
            )
        }
        for daemon in daemons.values():
            stack.enter_context(daemon)
        listeners = {name: Listener(milters=d.postfix_address) for name, d in daemons.items()}
        postfix = stack.enter_context(
            PostfixInstance(
                workdir,
                relay_port=sink.port,
                listeners=listeners,
                # Ten refused transactions on one connection must not make smtpd sleep a
                # second on each reply (smtpd_soft_error_limit, 10 by default).
                main_cf={"smtpd_soft_error_limit": "1000", "smtpd_hard_error_limit": "1000"},
            )
        )
        yield Health(dict(postfix.ports), daemons)


def _rcpt_code(result: SendResult) -> int:
    assert result.rcpts, result
    return result.rcpts[0][1].code


def _wait_for_status(health: Health, listener: str, name: str, checks: int) -> None:
    """Until the status file (written every 10 s) has counted `checks` answers of `name`."""
    wait_until(
        lambda: int(str(health.status(listener).get(name, {}).get("checks", 0))) >= checks,
        timeout=20,
        what=f"the status file to count {checks} answers of {name}",
    )


# -- item 2: the circuit breaker --------------------------------------------------------------


def test_one_listed_client_reconnecting_leaves_the_list_active(health: Health) -> None:
    """The incident: 150 sessions from one ZEN-listed address suspended ZEN for every client
    at a quiet MX, and the next listed client got 250."""
    codes = [_rcpt_code(health.send("breaker", BOT, f"bot {n}")) for n in range(150)]
    assert codes == [550] * 150
    assert _rcpt_code(health.send("breaker", OTHER_LISTED, "another listed client")) == 550
    assert "suspended" not in health.log("breaker")
    _wait_for_status(health, "breaker", "ZEN", 151)
    rows = health.lists("breaker")
    assert rows["ZEN"][1] == "healthy", rows["ZEN"]


def test_a_flood_of_listed_networks_is_probed_and_left_active(health: Health) -> None:
    """Listed clients from many networks (a botnet) pass the ratio: spamgate probes the list
    at once instead of suspending it, and its probe passes."""
    codes = [_rcpt_code(health.send("breaker", f"198.18.{n}.1", f"flood {n}")) for n in range(8)]
    assert codes == [550] * 8
    wait_until(
        lambda: "list ZEN stays active: its probes pass" in health.log("breaker"),
        timeout=10,
        what="the breaker's probe of ZEN",
        log_tail=health.daemons["breaker"].log_tail,
    )
    log = health.log("breaker")
    assert "INFO list ZEN: it listed 100% of " in log
    assert "client networks in 60 s (more than 50%): probing it now" in log
    assert "list ZEN suspended" not in log
    assert _rcpt_code(health.send("breaker", OTHER_LISTED, "still refused")) == 550


def test_one_listed_sender_domain_in_120_transactions_leaves_the_domain_list_active(
    health: Health,
) -> None:
    """The incident: 12 connections of 10 MAIL FROM:<x@listed-domain> each suspended the
    domain list for every sender."""
    codes = []
    for connection in range(12):
        session = health.connection("domains", CLEAN_CLIENT)
        try:
            for n in range(10):
                assert session.mail(f"x{connection}-{n}@spam.example")[0] == 250
                codes.append(session.rcpt("user@example.com")[0])
                session.rset()
        finally:
            session.quit()
    assert codes == [550] * 120
    result = health.send("domains", CLEAN_CLIENT, "another listed domain", "a@other-spam.example")
    assert _rcpt_code(result) == 550
    assert "suspended" not in health.log("domains")
    _wait_for_status(health, "domains", "DBL", 121)
    assert health.lists("domains")["DBL"][1] == "healthy"


# -- item 5: both families, and domain lists' probes -------------------------------------------


def test_a_list_whose_ipv6_side_lists_everyone_is_suspended_for_ipv6_only(health: Health) -> None:
    everything = "it lists its must-not-list test entry: it answers for everything"
    wait_until(
        lambda: (
            f"WARNING list V6BROKEN suspended for ipv6: probe: {everything}"
            in health.log("families")
        ),
        timeout=10,
        what="V6BROKEN suspended for IPv6",
        log_tail=health.daemons["families"].log_tail,
    )
    # Its IPv4 side still refuses listed clients ...
    assert _rcpt_code(health.send("families", "192.0.2.5", "listed on ipv4")) == 550
    assert _rcpt_code(health.send("families", "198.51.100.9", "clean on ipv4")) == 250
    # ... and its IPv6 side, which would list every address, is not asked.
    v6 = health.send("families", "2001:db8::5", "an ipv6 client")
    assert _rcpt_code(v6) == 250
    decision = health.daemons["families"].wait_for_decision(client="2001:db8::5")
    assert "V6BROKEN:unusable:suspended" in decision["lists"]
    log = health.log("families")
    assert "list V6BROKEN suspended: " not in log  # not the whole list

    wait_until(
        lambda: health.status("families").get("V6BROKEN", {}).get("state") == "suspended:ipv6",
        timeout=20,
        what="the status file to show V6BROKEN suspended for IPv6",
    )
    row = health.lists("families")["V6BROKEN"]
    assert row[1] == "suspended:ipv6"
    assert f"ipv6: probe: {everything}" in " ".join(row)

    probed = spamgate("check-config", "--probe", "-c", str(health.daemons["families"].config_path))
    assert probed.returncode == 69
    assert f"V6BROKEN: UNHEALTHY: ipv6: {everything}" in probed.stdout.splitlines()


def test_a_domain_list_that_lists_its_must_not_list_entry_is_suspended(health: Health) -> None:
    wait_until(
        lambda: (
            "WARNING list DBLBROKEN suspended: probe: it lists its must-not-list test entry"
            in health.log("families")
        ),
        timeout=10,
        what="DBLBROKEN suspended by its probe",
        log_tail=health.daemons["families"].log_tail,
    )
    assert "list DBL suspended" not in health.log("families")
    refused = health.send("families", "198.51.100.10", "listed sender", "a@spam.example")
    assert _rcpt_code(refused) == 550
    decision = health.daemons["families"].wait_for_decision(client="198.51.100.10")
    assert "DBL[sender:spam.example]:listed" in decision["lists"]
    assert "DBLBROKEN[sender:spam.example]:unusable:suspended" in decision["lists"]
