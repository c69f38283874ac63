"""Running spamgate as a service: reload, shutdown, list health, `spamgate lists`, probes.

Each test starts its own spamgate (these tests signal and stop it) behind one Postfix.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from tests.adapter.test_cli import spamgate
from tests.e2e.spamgate_stack import Samples, SpamgateDaemon, scrape_metrics
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port, wait_until
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

ZONES = [
    # zen.test follows RFC 5782: it lists 127.0.0.2 and not 127.0.0.1.
    Zone("zen.test", "ip4set", "127.0.0.2\n192.0.2.0/24 :127.0.0.2:\n"),
    # broken.test lists the whole internet, as an expired list domain's parking service does.
    Zone("broken.test", "ip4set", "0.0.0.0/1 :127.0.0.2:\n128.0.0.0/1 :127.0.0.2:\n"),
    # notest.test does not list its RFC 5782 test entry.
    Zone("notest.test", "ip4set", "192.0.2.0/24 :127.0.0.2:\n"),
]

BASE = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
shutdown_grace: 10
log: {{stats_interval: 0}}
health: {{status_file: "{status}", min_checks: 5, window: 60, max_hit_ratio: 0.5}}
state: {{store: "{status}.state.sqlite"}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
"""


@dataclass
class Ops:
    workdir: Path
    dns: Rbldnsd
    sink: SmtpSink
    postfix: PostfixInstance
    spamgate: SpamgateDaemon
    status: Path
    metrics_port: int

    def send(self, client: str, subject: str) -> SendResult:
        message = build_message(mail_from="a@client.example", to=["u@example.com"], subject=subject)
        return send(
            self.postfix.ports["smtp"],
            client_addr=client,
            helo="mail.client.example",
            mail_from="a@client.example",
            rcpts=["u@example.com"],
            message_bytes=message,
            timeout=30,
        )

    def write_policy(self, extra: str) -> None:
        self.spamgate.config_path.write_text(self.policy_text(extra))

    def policy_text(self, extra: str) -> str:
        base = BASE.format(
            port=self.spamgate.port,
            dns=self.dns.port,
            status=self.status,
            metrics=self.metrics_port,
        )
        return base + extra

    def scrape(self) -> Samples:
        return scrape_metrics(self.metrics_port)

    def reload(self) -> None:
        before = self.spamgate.log_text().count("reload")
        os.kill(self.spamgate.pid, signal.SIGUSR1)
        wait_until(
            lambda: self.spamgate.log_text().count("reload") > before,
            timeout=10,
            what="spamgate to log the reload",
            log_tail=self.spamgate.log_tail,
        )


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    with Rbldnsd(tmp_path, ZONES) as dns, SmtpSink(tmp_path) as sink:
        port, metrics_port = free_port(), free_port()
        status = tmp_path / "status.json"
        first = BASE.format(port=port, dns=dns.port, status=status, metrics=metrics_port)
        daemon = SpamgateDaemon(tmp_path, first, port)
        with daemon:
            listeners = {"smtp": Listener(milters=daemon.postfix_address)}
            with PostfixInstance(tmp_path, relay_port=sink.port, listeners=listeners) as postfix:
                yield Ops(tmp_path, dns, sink, postfix, daemon, status, metrics_port)


REJECT_SUBJECT = """\
rules:
  - name: NO_RELOAD
    score: 20
    description: a test rule
    header: {name: Subject, matches: 'reload me'}
"""


def test_reload_swaps_the_policy_for_new_connections_only(ops: Ops) -> None:
    # A session in progress when the reload comes keeps the policy it started with.
    with smtplib.SMTP("127.0.0.1", ops.postfix.ports["smtp"], timeout=30) as client:
        _reload_during_session(ops, client)
    again = ops.send("198.51.100.8", "reload me")
    assert again.end_of_data is not None and again.end_of_data.code == 550
    digests = _digests(ops)
    assert len(set(digests)) == 2


def _reload_during_session(ops: Ops, client: smtplib.SMTP) -> None:
    client.ehlo("harness.localhost")
    assert client.docmd("XCLIENT", "ADDR=198.51.100.7 NAME=[UNAVAILABLE]")[0] == 220
    client.ehlo("mail.client.example")
    assert client.mail("a@client.example")[0] == 250
    assert client.rcpt("u@example.com")[0] == 250
    ops.write_policy(REJECT_SUBJECT)
    ops.reload()
    assert "reloaded policy" in ops.spamgate.log_text()
    message = build_message(mail_from="a@client.example", to=["u@example.com"], subject="reload me")
    code, _ = client.data(message)
    assert code == 250  # the old policy has no such rule
    client.quit()


def test_broken_policy_on_reload_keeps_the_old_one(ops: Ops) -> None:
    ops.write_policy(REJECT_SUBJECT)
    ops.reload()
    ops.spamgate.config_path.write_text(ops.policy_text("rules: [{name: bad, score: x}]\n"))
    ops.reload()
    log = ops.spamgate.log_text()
    assert "ERROR reload failed, still using policy " in log
    assert f"{ops.spamgate.config_path}:9:28: rules[0].score: expected a number" in log
    result = ops.send("198.51.100.9", "reload me")
    assert result.end_of_data is not None and result.end_of_data.code == 550


def test_sigterm_lets_a_session_in_progress_finish(ops: Ops) -> None:
    with smtplib.SMTP("127.0.0.1", ops.postfix.ports["smtp"], timeout=30) as client:
        _stop_during_session(ops, client)
    assert ops.spamgate.process.wait(timeout=15) == 0
    log = ops.spamgate.log_text()
    assert "received SIGTERM: stopping" in log
    assert "stopping: 1 session(s) in progress, waiting up to 10 s" in log
    assert "still in progress" not in log
    assert ops.sink.wait_for_message(lambda m: m.message["Subject"] == "last", "the last message")


def _stop_during_session(ops: Ops, client: smtplib.SMTP) -> None:
    client.ehlo("harness.localhost")
    client.docmd("XCLIENT", "ADDR=198.51.100.10 NAME=[UNAVAILABLE]")
    client.ehlo("mail.client.example")
    client.mail("a@client.example")
    assert client.rcpt("u@example.com")[0] == 250

    os.kill(ops.spamgate.pid, signal.SIGTERM)
    wait_until(
        lambda: "session(s) in progress" in ops.spamgate.log_text(),
        timeout=10,
        what="spamgate to stop listening and wait for the session",
        log_tail=ops.spamgate.log_tail,
    )
    # Meanwhile a new session is turned away: Postfix applies milter_default_action (tempfail
    # in the harness), as it would with spamgate gone.
    newcomer = ops.send("198.51.100.11", "too late")
    assert newcomer.mail is not None and newcomer.mail.code == 451
    message = build_message(mail_from="a@client.example", to=["u@example.com"], subject="last")
    code, _ = client.data(message)
    assert code == 250
    client.quit()


def test_list_gone_bad_is_suspended_by_its_probes(ops: Ops) -> None:
    ops.write_policy(
        "ip_lists:\n"
        "  - {name: ZEN, zone: zen.test, score: 10}\n"
        "  - {name: BROKEN, zone: broken.test, score: 10}\n"
        "  - {name: NOTEST, zone: notest.test, score: 10}\n"
    )
    ops.reload()
    wait_until(
        lambda: ops.spamgate.log_text().count("suspended: probe:") == 2,
        timeout=10,
        what="both broken lists to be suspended",
        log_tail=ops.spamgate.log_tail,
    )
    log = ops.spamgate.log_text()
    assert "WARNING list BROKEN suspended: probe: it lists its must-not-list test entry" in log
    assert "WARNING list NOTEST suspended: probe: it does not list its test entry" in log
    assert "list ZEN suspended" not in log
    # 198.51.100.1 is listed by nobody but BROKEN: suspended, it counts for nothing.
    result = ops.send("198.51.100.1", "broken list")
    assert [r.code for _, r in result.rcpts] == [250]
    decision = ops.spamgate.wait_for_decision(client="198.51.100.1")
    assert "BROKEN:unusable:suspended" in decision["lists"]

    # `spamgate lists` shows the same, from the status file the daemon writes.
    wait_until(
        lambda: _status_lists(ops) == {"ZEN", "BROKEN", "NOTEST"},
        timeout=15,
        what="the status file to show the new lists",
    )
    shown = subprocess.run(
        [sys.executable, "-m", "spamgate", "lists", "-c", str(ops.spamgate.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[2:]}
    assert lines["ZEN"].split()[1] == "healthy"
    assert lines["BROKEN"].split()[1] == "suspended"
    assert "it lists its must-not-list test entry" in lines["BROKEN"]


def test_circuit_breaker_suspends_a_list_that_lists_everyone(ops: Ops) -> None:
    # Probes off: nothing but the ratio can catch this list (it lists 0.0.0.0/0, 127.0.0.1
    # too), and only `breaker: suspend` lets the ratio alone suspend a list (issue 14).
    ops.write_policy(
        "thresholds: {tag: 3, greylist: null, tempfail: null, reject: 10}\n"
        "ip_lists:\n"
        "  - {name: BROKEN, zone: broken.test, score: 10, probe: {enabled: false},\n"
        "     health: {breaker: suspend}}\n"
    )
    ops.reload()
    codes = []
    for n in range(8):
        result = ops.send(f"198.18.{n + 1}.1", f"breaker {n}")  # eight client networks
        codes.append(result.rcpts[0][1].code)
    # min_checks 5, ratio 0.5: five refusals, then the list is suspended and mail flows.
    assert codes[:5] == [550] * 5
    assert codes[5:] == [250] * 3
    log = ops.spamgate.log_text()
    assert log.count("WARNING list BROKEN suspended: it listed 100% of 5 client networks") == 1


def test_circuit_breaker_leaves_a_list_without_probes_active_by_default(ops: Ops) -> None:
    # The same list with the default `breaker: probe`: nothing tells a list gone bad from a
    # flood of listed clients, so it stays active, with a WARNING.
    ops.write_policy(
        "thresholds: {tag: 3, greylist: null, tempfail: null, reject: 10}\n"
        "ip_lists:\n"
        "  - {name: BROKEN, zone: broken.test, score: 10, probe: {enabled: false}}\n"
    )
    ops.reload()
    codes = [ops.send(f"198.18.{n + 1}.1", f"kept {n}").rcpts[0][1].code for n in range(8)]
    assert codes == [550] * 8
    log = ops.spamgate.log_text()
    assert "list BROKEN suspended" not in log
    assert log.count("WARNING list BROKEN: it listed 100% of 5 client networks") == 1
    assert "and its probes are off" in log


def test_check_config_probe_names_each_unhealthy_list(ops: Ops) -> None:
    ops.write_policy(
        "ip_lists:\n"
        "  - {name: ZEN, zone: zen.test, score: 10}\n"
        "  - {name: BROKEN, zone: broken.test, score: 10}\n"
        "  - {name: NOTEST, zone: notest.test, score: 10}\n"
        "  - {name: TRUSTED, zone: notest.test, score: 1, probe: {enabled: false}}\n"
    )
    result = spamgate("check-config", "--probe", "-c", str(ops.spamgate.config_path), timeout=60)
    assert result.returncode == 69
    assert result.stdout.splitlines()[1:] == [
        "ZEN: ok",
        "BROKEN: UNHEALTHY: it lists its must-not-list test entry: it answers for everything",
        "NOTEST: UNHEALTHY: it does not list its test entry",
        "TRUSTED: not probed (probe.enabled: false)",
    ]
    assert result.stderr.strip() == "unhealthy: BROKEN, NOTEST"


def _digests(ops: Ops) -> list[str]:
    return [d["policy"] for d in ops.spamgate.decisions()]


def _status_lists(ops: Ops) -> set[str]:
    try:
        status = json.loads(ops.status.read_text())
    except (OSError, ValueError):
        return set()
    return {entry["name"] for entry in status["lists"]}


def test_metrics_count_what_happened(ops: Ops) -> None:
    ops.write_policy("ip_lists:\n  - {name: ZEN, zone: zen.test, score: 10}\n")
    ops.reload()
    before = ops.scrape()
    refused = ops.send("192.0.2.5", "listed")  # zen.test lists 192.0.2.0/24
    accepted = ops.send("198.51.100.20", "clean")
    assert refused.rcpts[0][1].code == 550
    assert accepted.end_of_data is not None and accepted.end_of_data.code == 250
    ops.spamgate.wait_for_decision(queue=str(accepted.queue_id))
    after = ops.scrape()

    def moved(metric: str, **labels: str) -> float:
        key = (metric, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("spamgate_decisions_total", stage="rcpt", action="reject", enforced="reject") == 1
    assert moved("spamgate_decisions_total", stage="eom", action="accept", enforced="accept") == 1
    assert moved("spamgate_hits_total", name="ZEN") == 1
    assert moved("spamgate_list_answers_total", list="ZEN", status="listed") == 1
    assert moved("spamgate_list_answers_total", list="ZEN", status="clean") == 1
    assert moved("spamgate_list_latency_seconds_count", list="ZEN") == 2
    assert moved("spamgate_decision_seconds_count", stage="rcpt") == 2
    assert moved("spamgate_decision_seconds_count", stage="eom") == 1
    assert moved("spamgate_dns_lookups_total") >= 2
    assert after[("spamgate_policy_generation", ())] == 2  # started at 1, one reload
    # The decision line is written at end of message, the session ends at the client's QUIT
    # (libmilter's close callback) a moment later: the gauge must come back to 0, not be 0 at
    # once (it was read too early about one run in four on a busy machine).
    in_progress = ("spamgate_sessions_in_progress", ())
    wait_until(lambda: ops.scrape().get(in_progress) == 0, timeout=10, what="sessions closed")
    healthy = ("spamgate_list_state", (("list", "ZEN"), ("state", "healthy")))
    wait_until(lambda: ops.scrape().get(healthy) == 1, timeout=10, what="ZEN probed healthy")


# -- a reload with a broken or hostile policy (issue 14) -----------------------------------------


def _break_policy(ops: Ops, kind: str) -> tuple[str, str]:
    """Make the daemon's policy file broken in the way `kind` says (the REJECT_SUBJECT policy
    plus the mistake); what the error names, and the text of the line it points at ("" for a
    problem with the file as a whole)."""
    path = ops.spamgate.config_path
    good = ops.policy_text(REJECT_SUBJECT)
    if kind == "policy-is-a-fifo":
        path.unlink()
        os.mkfifo(path)
        return "cannot read: a FIFO, not a regular file", ""
    if kind == "oversized":
        path.write_text(good + "#" * 2**20 + "\n")
        return "larger than 1 MiB, the limit for a policy file", ""
    fifo = ops.workdir / "allow-clients"
    mistakes = {
        "float-tag": ("mode: !!float x", "mode: cannot read 'x' as a number"),
        "undefined-tag": ("mode: !foo enforce", "mode: the tag !foo is not allowed here"),
        "impossible-date": ("log: {stats_interval: 2024-02-30}", "as a date"),
        "fifo-as-a-list": (
            f"allow: {{clients: ['file:{fifo}']}}",
            f"allow.clients[0]: {fifo}: cannot read: a FIFO, not a regular file",
        ),
        "dev-zero-as-a-list": (
            "deny: {senders: ['file:/dev/zero']}",
            "deny.senders[0]: /dev/zero: cannot read: a character device, not a regular file",
        ),
        "dev-zero-as-a-key-file": (
            "ip_lists: [{name: DQS, zone: '{key}.zen.test', key_file: /dev/zero, score: 5}]",
            "ip_lists[0].key_file: cannot read /dev/zero: a character device, not a regular file",
        ),
    }
    line, named = mistakes[kind]
    if kind == "fifo-as-a-list" and not fifo.exists():
        os.mkfifo(fifo)
    # The log section is BASE's: a second one would be a duplicate key, not this mistake.
    path.write_text(good.replace("log: {stats_interval: 0}\n", "") + line + "\n")
    return named, line


BROKEN_KINDS = [
    "float-tag",
    "undefined-tag",
    "impossible-date",
    "fifo-as-a-list",
    "dev-zero-as-a-list",
    "dev-zero-as-a-key-file",
    "oversized",
    "policy-is-a-fifo",
]


def test_broken_policies_on_reload_are_one_error_each_and_sigterm_still_stops(ops: Ops) -> None:
    """One daemon through every kind of broken file in turn: a reload that blocked (a FIFO)
    or ran out of memory (/dev/zero) would fail every step after it."""
    path = ops.spamgate.config_path
    ops.write_policy(REJECT_SUBJECT)
    ops.reload()
    digest = load_policy(path).digest
    assert f"reloaded policy {path} ({digest}), generation 2" in ops.spamgate.log_text()
    for number, kind in enumerate(BROKEN_KINDS):
        named, line = _break_policy(ops, kind)
        ops.reload()

        # One more ERROR line, naming the policy file (at the mistake's line) and what is wrong.
        errors = [row for row in ops.spamgate.log_text().splitlines() if " ERROR " in row]
        assert len(errors) == number + 1, kind
        where = f"{path}:{_line_of(path, line)}:" if line else f"{path}: "
        assert f"ERROR reload failed, still using policy {digest}: {where}" in errors[-1], kind
        assert named in errors[-1], kind

        # The old policy still judges: its rule refuses this Subject, through Postfix.
        result = ops.send(f"198.51.100.{number + 30}", "reload me")
        assert result.end_of_data is not None and result.end_of_data.code == 550, kind
        assert _digests(ops)[-1] == digest, kind

        # check-config says the same in one line, and exits 78 (EX_CONFIG).
        checked = spamgate("check-config", "-c", str(path), timeout=20)
        assert (checked.returncode, checked.stdout) == (78, ""), kind
        (shown,) = checked.stderr.splitlines()
        assert shown.startswith(f"spamgate: {where}"), kind
        assert named in shown, kind
        if path.is_fifo():
            path.unlink()

    # And SIGTERM stops it as usual: drained, exit 0.
    os.kill(ops.spamgate.pid, signal.SIGTERM)
    assert ops.spamgate.process.wait(timeout=15) == 0
    log = ops.spamgate.log_text()
    assert "INFO received SIGTERM: stopping" in log
    assert log.rstrip().endswith("INFO spamgate stopped")


def _line_of(path: Path, text: str) -> int:
    """The line number of the line of `path` that is `text`."""
    rows = path.read_text().splitlines()
    return rows.index(text) + 1
