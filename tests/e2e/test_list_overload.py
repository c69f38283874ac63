"""A DNS list that cannot answer, through a real Postfix: `on_unusable: tempfail` against the
default `judge`.

rbldnsd serves the lists behind two fault-injecting DNS proxies: one answers SERVFAIL for the
test ZEN (and passes the rest through), the other never answers for the test DBL. Three
spamgate daemons, each behind its own Postfix listener:

- tempfail: ZEN with `on_unusable: tempfail`, behind the SERVFAIL proxy;
- judge: the same policy with the default `on_unusable`, behind the same proxy;
- header: ZEN (default) and a DBL on From: domains with `on_unusable: tempfail`, behind the
  silent proxy, so the deferral comes at end of data.

Every client here is clean in the test zones: only a lost answer can refuse it. The health
monitor may suspend a failing list at start (its probe fails too); a suspended list is as
unusable as one that answers SERVFAIL, so the tests accept either word in the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import (
    ZEN_LIST,
    ZEN_ZONE,
    ZONES,
    Samples,
    SpamgateDaemon,
    scrape_metrics,
    send_as_client,
    start_behind_postfix,
)
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.dnsproxy import DnsProxy, Fault
from tests.harness.postfix import PostfixInstance
from tests.harness.processes import free_port
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult

pytestmark = pytest.mark.e2e

DBL_ZONE = "dbl.test"
CLEAN_CLIENT = "192.0.2.50"  # in no test zone
ZEN_DEFERRED = (
    "4.7.1 Cannot check your address against Example ZEN right now, please try again later (id "
)
DBL_DEFERRED = (
    "4.7.1 Cannot check your address against Example DBL right now, please try again later (id "
)

HEAD = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{status_dir}/status-{port}.json"}}
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
thresholds: {{tag: 3, greylist: null, tempfail: null, reject: 10}}
ip_lists:
"""
IP_POLICY = HEAD + ZEN_LIST + "\n    on_unusable: {on_unusable}\n"
HEADER_POLICY = (
    HEAD
    + ZEN_LIST
    + """
domain_lists:
  - name: DBL
    display: Example DBL
    zone: dbl.test
    check_names: [from]
    on_unusable: tempfail
    hits: [{{name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}}]
"""
)


@dataclass
class Overload:
    postfix: PostfixInstance
    sink: SmtpSink
    milters: dict[str, SpamgateDaemon]
    metrics_ports: dict[str, int]

    def send(
        self,
        listener: str,
        rcpts: tuple[str, ...] = ("user@example.com",),
        *,
        subject: str,
        header_from: str = "sender@client.example",
    ) -> SendResult:
        return send_as_client(
            self.postfix.ports[listener],
            CLEAN_CLIENT,
            rcpts=rcpts,
            subject=subject,
            header_from=header_from,
        )

    def scrape(self, listener: str) -> Samples:
        return scrape_metrics(self.metrics_ports[listener])


@pytest.fixture(scope="module")
def overload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overload]:
    workdir: Path = tmp_path_factory.mktemp("overload")
    zones = [*ZONES, Zone(DBL_ZONE, "dnset", "test\n.spam.example :127.0.1.2:\n")]
    with ExitStack() as stack:
        dns = stack.enter_context(Rbldnsd(workdir, zones))
        servfail = stack.enter_context(
            DnsProxy(workdir, dns.port, fault=Fault(servfail=True, only_zones=(ZEN_ZONE,)))
        )
        silent = stack.enter_context(
            DnsProxy(workdir, dns.port, fault=Fault(silent=True, only_zones=(DBL_ZONE,)))
        )
        sink = stack.enter_context(SmtpSink(workdir))
        ports = {name: free_port() for name in ("tempfail", "judge", "header")}

        def daemon(name: str, template: str, dns_port: int, on_unusable: str) -> SpamgateDaemon:
            return SpamgateDaemon.from_template(
                workdir,
                template,
                dns_port=dns_port,
                status_dir=workdir,
                metrics_port=ports[name],
                zen_zone=ZEN_ZONE,
                on_unusable=on_unusable,
            )

        milters = {
            "tempfail": daemon("tempfail", IP_POLICY, servfail.port, "tempfail"),
            "judge": daemon("judge", IP_POLICY, servfail.port, "judge"),
            "header": daemon("header", HEADER_POLICY, silent.port, "judge"),
        }
        postfix = start_behind_postfix(stack, workdir, sink, milters)
        yield Overload(postfix, sink, milters, ports)


def decision_id(reply_text: str) -> str:
    assert reply_text.endswith(")") and "(id " in reply_text, reply_text
    return reply_text.rsplit("(id ", 1)[1].rstrip(")")


def test_a_list_that_answers_servfail_defers_with_451_naming_it(overload: Overload) -> None:
    before = overload.scrape("tempfail")
    result = overload.send("tempfail", subject="zen servfail")
    ((_, reply),) = result.rcpts
    assert reply.code == 451
    assert reply.text.startswith(ZEN_DEFERRED)
    assert ZEN_ZONE not in reply.text and "k3yk3y" not in reply.text
    assert result.data is None  # no recipient left, so no DATA
    decision = overload.milters["tempfail"].wait_for_decision(id=decision_id(reply.text))
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "rcpt",
        "tempfail",
        "tempfail",
    )
    assert decision["tempfail_by"] == "unusable:ZEN"
    assert decision["fails"] == "ZEN_FAIL"
    assert re.match(r"ZEN:unusable:(servfail|suspended)\b", decision["lists"]), decision
    # Postfix logs the deferral with sender and recipient, as it logs its own.
    overload.postfix.wait_for_log(
        r"NOQUEUE: milter-reject: RCPT from .*192\.0\.2\.50\].*4\.7\.1 Cannot check"
    )
    after = overload.scrape("tempfail")
    key = ("spamgate_unusable_tempfail_total", (("enforced", "tempfail"), ("list", "ZEN")))
    assert after[key] - before.get(key, 0.0) == 1


def test_by_default_the_mail_is_judged_without_the_list(overload: Overload) -> None:
    result = overload.send("judge", subject="zen servfail judged")
    assert [reply.code for _, reply in result.rcpts] == [250]
    assert result.end_of_data is not None and result.end_of_data.code == 250
    message = overload.sink.wait_for_message(
        lambda m: m.message["Subject"] == "zen servfail judged", "the judged message"
    ).message
    assert message["X-Spam-Status"] == "No, score=0.0 hits=none"
    decision = overload.milters["judge"].wait_for_decision(queue=str(result.queue_id))
    assert (decision["action"], decision["enforced"]) == ("accept", "accept")
    assert decision["fails"] == "ZEN_FAIL"
    assert "tempfail_by" not in decision


def test_postmaster_is_still_reachable(overload: Overload) -> None:
    rcpts = ("user@example.com", "postmaster@example.com")
    result = overload.send("tempfail", rcpts, subject="to postmaster, zen servfail")
    assert [(rcpt, reply.code) for rcpt, reply in result.rcpts] == [
        ("user@example.com", 451),
        ("postmaster@example.com", 250),
    ]
    assert result.end_of_data is not None and result.end_of_data.code == 250
    delivered = overload.sink.wait_for_message(
        lambda m: m.message["Subject"] == "to postmaster, zen servfail", "the postmaster copy"
    )
    assert delivered.rcpts == ("postmaster@example.com",)
    decision = overload.milters["tempfail"].wait_for_decision(queue=str(result.queue_id))
    assert (decision["action"], decision["enforced"], decision["waived_by"]) == (
        "tempfail",
        "accept",
        "exempt",
    )
    assert decision["tempfail_by"] == "unusable:ZEN"
    assert decision["refused"] == "<user@example.com>"


def test_a_silent_list_on_the_from_domain_defers_at_end_of_data(overload: Overload) -> None:
    result = overload.send(
        "header", subject="dbl silent", header_from="Someone <news@spam.example>"
    )
    assert [reply.code for _, reply in result.rcpts] == [250]  # ZEN answers: clean
    assert result.end_of_data is not None
    assert result.end_of_data.code == 451
    assert result.end_of_data.text.startswith(DBL_DEFERRED)
    assert DBL_ZONE not in result.end_of_data.text
    decision = overload.milters["header"].wait_for_decision(id=decision_id(result.end_of_data.text))
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "eom",
        "tempfail",
        "tempfail",
    )
    assert decision["tempfail_by"] == "unusable:DBL"
    assert re.search(
        r"(^|,)DBL\[from:spam\.example\]:unusable:(deadline|timeout|suspended)\b",
        decision["lists"],
    ), decision
