"""Greylisting through a real Postfix: what a sending MTA sees on its first attempt, an early
retry, a valid retry and one after the retry window, with state in SQLite; two spamgate
daemons (two MX hosts) sharing a real redis-server, where a retry at the other MX passes;
and a Redis that stops, or hangs, mid-run: greylisting fails open within its time bound.
The same state remembers a client refused for its listing (`state.remember_rejects`): its next
connection is refused with its DNS server gone.

One Postfix with a listener per spamgate daemon stands in for the MX hosts. The client is
listed in the test PBL (score 7), inside the greylist band (6 up to 10). Every test uses
triplets of its own (its own recipients), so they do not depend on each other's state.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.adapter.test_cli import spamgate
from tests.e2e.spamgate_stack import (
    ZEN_LIST,
    ZEN_ZONE,
    ZONES,
    SpamgateDaemon,
    start_behind_postfix,
)
from tests.harness.dns import Rbldnsd
from tests.harness.postfix import PostfixInstance
from tests.harness.processes import LOOPBACK, wait_until
from tests.harness.redis import RedisServer
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

MIN_DELAY = 2.0
SQLITE_WINDOW = 5.0
GREYLISTED_CLIENT = "192.0.2.10"  # ZEN_PBL, score 7
CLEAN_CLIENT = "192.0.2.99"
SENDER = "news@client.example"

POLICY = (
    """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns_port}"], query_timeout: 0.3, deadline: 1.0}}
trusted_networks: [127.0.0.0/8]
health: {{status_file: "{dir}/status-{port}.json"}}
log: {{stats_interval: 0}}
thresholds: {{tag: 3, greylist: 6, tempfail: null, reject: 10}}
state: {{store: "{state}", timeout: 0.3, remember_rejects: {remember}}}
greylist: {{min_delay: {min_delay}, retry_window: {retry_window}}}
ip_lists:
"""
    + ZEN_LIST
)


@dataclass
class Greylisting:
    postfix: PostfixInstance
    sink: SmtpSink
    redis: RedisServer
    milters: dict[str, SpamgateDaemon]
    memory_dns: Rbldnsd  # the DNS of the "memory" daemon only

    def send(
        self, mx: str, rcpt: str, *, client: str = GREYLISTED_CLIENT, subject: str = ""
    ) -> SendResult:
        message = build_message(mail_from=SENDER, to=[rcpt], subject=subject or f"to {rcpt}")
        return send(
            self.postfix.ports[mx],
            client_addr=client,
            helo="mail.client.example",
            mail_from=SENDER,
            rcpts=[rcpt],
            message_bytes=message,
            timeout=30,
        )

    def outcome(self, mx: str, rcpt: str, count: int) -> list[str]:
        """The greylist= field of each decision line for `rcpt`, in order, once there are
        `count` of them: a transaction refused at RCPT is logged when it ends, which may be
        a moment after the client's QUIT."""
        wanted = f"<{rcpt}>"
        found: list[str] = []

        def logged() -> bool:
            found[:] = [
                d.get("greylist", "")
                for d in self.milters[mx].decisions()
                if wanted in (d["rcpt"], d["refused"])
            ]
            return len(found) >= count

        wait_until(logged, timeout=5, what=f"{count} decision lines for {rcpt} at {mx}")
        return found


def daemon(
    workdir: Path, dns_port: int, state: str, retry_window: float, remember: float = 0
) -> SpamgateDaemon:
    return SpamgateDaemon.from_template(
        workdir,
        POLICY,
        dns_port=dns_port,
        dir=workdir,
        state=state,
        remember=remember,
        min_delay=MIN_DELAY,
        retry_window=retry_window,
        zen_zone=ZEN_ZONE,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greylisting]:
    workdir = tmp_path_factory.mktemp("greylisting")
    with ExitStack() as stack:
        dns = stack.enter_context(Rbldnsd(workdir, ZONES))
        memory_dns = stack.enter_context(Rbldnsd(workdir, ZONES))
        sink = stack.enter_context(SmtpSink(workdir))
        redis = stack.enter_context(RedisServer(workdir))
        # A port that accepts connections and never answers: a hung Redis.
        hung = stack.enter_context(socket.socket())
        hung.bind((LOOPBACK, 0))
        hung.listen(64)
        hung_url = f"redis://{LOOPBACK}:{hung.getsockname()[1]}/0"
        milters = {
            "sqlite": daemon(workdir, dns.port, str(workdir / "greylist.sqlite"), SQLITE_WINDOW),
            "mx1": daemon(workdir, dns.port, redis.url, 600),
            "mx2": daemon(workdir, dns.port, redis.url, 600),
            "hung": daemon(workdir, dns.port, hung_url, 600),
            "memory": daemon(
                workdir, memory_dns.port, str(workdir / "memory.sqlite"), 600, remember=60
            ),
        }
        postfix = start_behind_postfix(stack, workdir, sink, milters)
        yield Greylisting(postfix, sink, redis, milters, memory_dns)


def rcpt_reply(result: SendResult) -> tuple[int, str]:
    ((_, reply),) = result.rcpts
    return reply.code, reply.text


def test_first_attempt_early_retry_valid_retry_and_expired_with_sqlite(
    stack: Greylisting,
) -> None:
    started = time.monotonic()
    code, text = rcpt_reply(stack.send("sqlite", "alice@example.com"))
    assert (code, text.split(" (id ")[0]) == (
        451,
        "4.7.1 Greylisted: please try again in 2 seconds",
    )
    # A second triplet, left to go stale beyond the retry window.
    assert rcpt_reply(stack.send("sqlite", "stale@example.com"))[0] == 451
    early = stack.send("sqlite", "alice@example.com")
    assert rcpt_reply(early)[0] == 451
    assert "please try again in " in rcpt_reply(early)[1]
    time.sleep(max(0.0, started + MIN_DELAY + 0.3 - time.monotonic()))
    valid = stack.send("sqlite", "alice@example.com", subject="alice retried")
    assert rcpt_reply(valid)[0] == 250
    assert valid.end_of_data is not None and valid.end_of_data.code == 250
    delivered = stack.sink.wait_for_message(
        lambda m: m.message["Subject"] == "alice retried", "the retried message at the sink"
    ).message
    assert delivered["X-Greylist"].startswith("delayed ")
    assert delivered["X-Greylist"].endswith(" seconds by spamgate")
    assert delivered["X-Spam-Status"] == "Yes, score=7.0 hits=ZEN_PBL"
    # Remembered: the next message of the triplet is not delayed again.
    assert rcpt_reply(stack.send("sqlite", "alice@example.com"))[0] == 250
    time.sleep(max(0.0, started + SQLITE_WINDOW + 0.5 - time.monotonic()))
    assert rcpt_reply(stack.send("sqlite", "stale@example.com"))[0] == 451
    assert stack.outcome("sqlite", "alice@example.com", 4) == ["new", "early", "passed", "known"]
    assert stack.outcome("sqlite", "stale@example.com", 2) == ["new", "new"]


@pytest.mark.parametrize(
    ("client", "rcpt"),
    [
        pytest.param(GREYLISTED_CLIENT, "postmaster@example.com", id="postmaster"),
        pytest.param(GREYLISTED_CLIENT, "abuse@example.com", id="abuse"),
        pytest.param(CLEAN_CLIENT, "bob@example.com", id="clean-client"),
    ],
)
def test_who_is_not_greylisted(stack: Greylisting, client: str, rcpt: str) -> None:
    result = stack.send("sqlite", rcpt, client=client)
    assert rcpt_reply(result)[0] == 250
    assert result.end_of_data is not None and result.end_of_data.code == 250
    assert stack.outcome("sqlite", rcpt, 1) == [""]


def test_a_retry_at_the_other_mx_passes_with_shared_redis(stack: Greylisting) -> None:
    started = time.monotonic()
    assert rcpt_reply(stack.send("mx1", "carol@example.com"))[0] == 451
    assert rcpt_reply(stack.send("mx2", "carol@example.com"))[0] == 451  # early at mx2 too
    time.sleep(max(0.0, started + MIN_DELAY + 0.3 - time.monotonic()))
    retry = stack.send("mx2", "carol@example.com")
    assert rcpt_reply(retry)[0] == 250
    assert retry.end_of_data is not None and retry.end_of_data.code == 250
    assert rcpt_reply(stack.send("mx1", "carol@example.com"))[0] == 250  # known at mx1
    assert stack.outcome("mx1", "carol@example.com", 2) == ["new", "known"]
    assert stack.outcome("mx2", "carol@example.com", 2) == ["early", "passed"]


def test_a_hung_redis_costs_at_most_the_state_timeout_and_fails_open(stack: Greylisting) -> None:
    result = stack.send("hung", "dave@example.com")
    assert rcpt_reply(result)[0] == 250
    assert result.end_of_data is not None and result.end_of_data.code == 250
    # The bound (0.3 s) plus Postfix and DNS; a TCP or libmilter timeout would be many seconds.
    assert result.elapsed < 2.0
    assert stack.outcome("hung", "dave@example.com", 1) == ["failed-open"]
    log = stack.milters["hung"].log_text()
    assert "state redis://127.0.0.1:" in log
    assert "fail open (mail accepted): TimeoutError" in log


def test_redis_stopped_mid_run_fails_open_and_recovers(stack: Greylisting) -> None:
    started = time.monotonic()
    assert rcpt_reply(stack.send("mx1", "erin@example.com"))[0] == 451
    stack.redis.stop()
    try:
        time.sleep(max(0.0, started + MIN_DELAY + 0.3 - time.monotonic()))
        down = stack.send("mx2", "erin@example.com")
        assert rcpt_reply(down)[0] == 250
        assert down.end_of_data is not None and down.end_of_data.code == 250
        assert rcpt_reply(stack.send("mx1", "frank@example.com"))[0] == 250
    finally:
        stack.redis.start()
    assert stack.outcome("mx2", "erin@example.com", 1) == ["failed-open"]
    assert stack.outcome("mx1", "frank@example.com", 1) == ["failed-open"]
    assert "fail open (mail accepted): ConnectionError" in (stack.milters["mx2"].log_text())
    # Back (and empty, as it keeps nothing on disk): greylisting works again at once.
    wait_until(
        lambda: rcpt_reply(stack.send("mx1", "grace@example.com"))[0] == 451,
        timeout=10,
        what="greylisting to resume once Redis is back",
    )


def test_a_client_refused_for_its_listing_is_refused_again_without_dns(
    stack: Greylisting,
) -> None:
    listed = "192.0.2.2"  # ZEN_SBL, score 10
    first = rcpt_reply(stack.send("memory", "henry@example.com", client=listed))
    assert first[0] == 550
    stack.memory_dns.stop()  # no DNS any more: only the memory can refuse it now
    again = rcpt_reply(stack.send("memory", "henry@example.com", client=listed))
    assert (again[0], again[1].split(" (id ")[0]) == (
        550,
        "5.7.1 Message refused: listed in the Example SBL",
    )
    remembered = stack.milters["memory"].wait_for_decision(lists_ignored="remembered")
    assert (remembered["hits"], remembered["client"]) == ("ZEN_SBL:10", listed)
    # Another client is judged as usual: with its DNS gone, the list is unusable, not a hit.
    other = stack.send("memory", "henry@example.com", client=CLEAN_CLIENT)
    assert rcpt_reply(other)[0] == 250


@pytest.mark.parametrize(
    ("mx", "status", "state_line"),
    [
        pytest.param("mx1", 0, ": ok", id="redis-up"),
        pytest.param("hung", 69, ": UNHEALTHY: TimeoutError: Timeout ", id="redis-hung"),
        pytest.param("sqlite", 0, "", id="sqlite-not-probed"),
    ],
)
def test_check_config_probe_asks_a_redis_state(
    stack: Greylisting, mx: str, status: int, state_line: str
) -> None:
    result = spamgate("check-config", "--probe", "-c", str(stack.milters[mx].config_path))
    assert result.returncode == status, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("state ")]
    if not state_line:  # a local file: opening it as root would leave it root's
        assert lines == []
    else:
        assert len(lines) == 1 and state_line in lines[0]
    assert ("unhealthy: state" in result.stderr) == (status == 69)
