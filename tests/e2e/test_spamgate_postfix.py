"""spamgate end to end: a real Postfix consults it, rbldnsd serves the lists, smtp-sink receives.

Clients are impersonated with XCLIENT. Addresses are from the documentation ranges; the test
zones list some of them (see spamgate_stack.ZONES).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.spamgate_stack import ZEN_ZONE, Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    with running_stack(workdir) as running:
        yield running


def decision_id(reply_text: str) -> str:
    assert reply_text.endswith(")") and "(id " in reply_text, reply_text
    return reply_text.rsplit("(id ", 1)[1].rstrip(")")


def test_listed_client_gets_550_at_rcpt_with_our_text(stack: Stack) -> None:
    result = stack.send("enforce", "192.0.2.2", subject="listed")
    ((_, reply),) = result.rcpts
    assert reply.code == 550
    assert reply.text.startswith("5.7.1 Message refused: listed in the Example SBL (id ")
    assert ZEN_ZONE not in reply.text and "k3yk3y" not in reply.text
    assert result.data is None  # no recipient left, so no DATA
    decision = stack.milters["enforce"].wait_for_decision(id=decision_id(reply.text))
    assert decision["queue"] == "NOQUEUE"
    assert decision["client"] == "192.0.2.2"
    assert decision["refused"] == "<user@example.com>"
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "rcpt",
        "reject",
        "reject",
    )
    assert decision["hits"] == "ZEN_SBL:10"
    assert decision["lists"].startswith("ZEN:listed:127.0.0.2:")
    # Postfix logs the reject with sender and recipient, as it does for its own restrictions.
    stack.postfix.wait_for_log(r"NOQUEUE: milter-reject: RCPT from .*192\.0\.2\.2\].*5\.7\.1")


def test_clean_client_is_delivered_with_our_headers_and_forged_ones_removed(
    stack: Stack,
) -> None:
    forged = (("X-Spam-Status", "No, score=-100 hits=FORGED"), ("X-Spam-Score", "-100"))
    result = stack.send("enforce", "192.0.2.50", subject="clean", extra_headers=forged)
    assert result.end_of_data is not None and result.end_of_data.code == 250
    message = stack.delivered("clean").message
    assert message.get_all("X-Spam-Status") == ["No, score=0.0 hits=none"]
    assert message.get_all("X-Spam-Score") == ["0.0"]
    decision = stack.milters["enforce"].wait_for_decision(queue=str(result.queue_id))
    assert (decision["stage"], decision["action"], decision["enforced"]) == (
        "eom",
        "accept",
        "accept",
    )
    assert decision["rcpt"] == "<user@example.com>"
    assert decision["lists"].startswith("ZEN:clean:") and ",WL:clean:" in decision["lists"]


def test_mid_score_client_gets_451(stack: Stack) -> None:
    result = stack.send("enforce", "192.0.2.10", subject="mid")
    ((_, reply),) = result.rcpts
    assert reply.code == 451
    assert reply.text.startswith("4.7.1 Try again later: listed in the Example PBL (id ")


def test_postmaster_is_reachable_from_a_listed_client(stack: Stack) -> None:
    rcpts = ("user@example.com", "postmaster@example.com", "abuse@example.net")
    result = stack.send("enforce", "192.0.2.2", rcpts=rcpts, subject="to postmaster")
    assert [(r, reply.code) for r, reply in result.rcpts] == [
        ("user@example.com", 550),
        ("postmaster@example.com", 250),
        ("abuse@example.net", 250),
    ]
    assert result.end_of_data is not None and result.end_of_data.code == 250
    delivered = stack.delivered("to postmaster")
    assert delivered.rcpts == ("postmaster@example.com", "abuse@example.net")
    assert delivered.message["X-Spam-Status"] == "Yes, score=10.0 hits=ZEN_SBL"
    decision = stack.milters["enforce"].wait_for_decision(queue=str(result.queue_id))
    assert (decision["action"], decision["enforced"], decision["waived_by"]) == (
        "reject",
        "tag",
        "exempt",
    )


def test_blocked_answer_does_not_reject(stack: Stack) -> None:
    result = stack.send("enforce", "192.0.2.254", subject="blocked answer")
    assert [reply.code for _, reply in result.rcpts] == [250]
    status = stack.delivered("blocked answer").message["X-Spam-Status"]
    assert status == "No, score=0.0 hits=none"
    decision = stack.milters["enforce"].wait_for_decision(queue=str(result.queue_id))
    assert decision["fails"] == "ZEN_FAIL"
    assert decision["lists"].startswith("ZEN:unusable:error-code:127.255.255.254:")


def test_allowlist_offsets_a_listing(stack: Stack) -> None:
    result = stack.send("enforce", "192.0.2.21", subject="allowlisted")
    assert [reply.code for _, reply in result.rcpts] == [250]
    message = stack.delivered("allowlisted").message
    assert message["X-Spam-Status"] == "Yes, score=5.0 hits=ZEN_SBL,WL_HI"


def test_ipv6_client_is_looked_up_in_nibble_format(stack: Stack) -> None:
    result = stack.send("enforce", "2001:db8::2", subject="ipv6 listed")
    ((_, reply),) = result.rcpts
    assert reply.code == 550
    decision = stack.milters["enforce"].wait_for_decision(id=decision_id(reply.text))
    assert decision["client"] == "2001:db8::2"
    assert decision["hits"] == "ZEN_SBL:10"


def test_header_rule_rejects_at_end_of_data(stack: Stack) -> None:
    result = stack.send("enforce", "192.0.2.51", subject="cheap VIAGRA")
    assert [reply.code for _, reply in result.rcpts] == [250]
    assert result.end_of_data is not None
    assert result.end_of_data.code == 550
    assert result.end_of_data.text.startswith(
        "5.7.1 Message refused: the Subject advertises pharmacy products (id "
    )


def test_observe_mode_delivers_and_logs_the_would_be_action(stack: Stack) -> None:
    result = stack.send("observe", "192.0.2.2", subject="observed")
    assert [reply.code for _, reply in result.rcpts] == [250]
    status = stack.delivered("observed").message["X-Spam-Status"]
    assert status == "Yes, score=10.0 hits=ZEN_SBL"
    decision = stack.milters["observe"].wait_for_decision(queue=str(result.queue_id))
    assert (decision["action"], decision["enforced"], decision["waived_by"]) == (
        "reject",
        "tag",
        "observe",
    )
    assert decision["mode"] == "observe"


def test_mail_is_accepted_with_the_dns_server_stopped(stack: Stack) -> None:
    assert stack.spare_dns.lookup(f"2.2.0.192.{ZEN_ZONE}") == ["127.0.0.2"]
    stack.spare_dns.stop()
    result = stack.send("dns-stopped", "192.0.2.2", subject="dns stopped")
    assert [reply.code for _, reply in result.rcpts] == [250]
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert result.elapsed < 1.0 + 2.0  # the 1 s deadline plus a margin for a loaded machine
    milter = stack.milters["dns-stopped"]
    decision = milter.wait_for_decision(queue=str(result.queue_id))
    assert decision["fails"] == "ZEN_FAIL,WL_FAIL"
    assert decision["score"] == "0.0"
    # Unusable answers are counted: the stats lines at shutdown say how often and why.
    milter.stop()
    log = milter.log_text()
    # ZEN:unusable:network:1ms (refused at once), ...:deadline:1000ms, or ZEN:unusable:suspended
    failure = decision["lists"].split(",")[0].split(":")[2]
    counted = re.search(
        rf"stats list=ZEN state=(\w+) checks=1 listed=0 clean=0 unusable=1 {failure}=1", log
    )
    assert counted is not None, log
    # The start-up probe suspends the list (one WARNING) if it ran after the server stopped;
    # before, it found the list healthy; the mail, refused at once, may even beat it.
    suspended = log.count("WARNING list ZEN suspended: probe: ")
    assert (counted[1], suspended) in {("suspended", 1), ("healthy", 0), ("unprobed", 0)}


def test_silent_dns_server_costs_at_most_the_deadline(stack: Stack) -> None:
    result = stack.send("dns-silent", "192.0.2.2", subject="dns silent")
    assert [reply.code for _, reply in result.rcpts] == [250]
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert result.elapsed < 1.0 + 2.0
    decision = stack.milters["dns-silent"].wait_for_decision(queue=str(result.queue_id))
    assert decision["fails"] == "ZEN_FAIL,WL_FAIL"
    # The verdict's own deadline and the resolver's give-up time are the same second: which
    # one a loaded machine notices first decides the word, not the outcome.
    assert re.search(r"^ZEN:unusable:(deadline|timeout|suspended)\b", decision["lists"])
