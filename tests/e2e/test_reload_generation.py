"""A reload is atomic: 50 reloads under load, and every decision made by one policy, whole.

Two policies alternate, differing only in the score of one header rule: under FLIP_REJECTS
a message whose Subject says "flip" is refused at end of data, under the other it is
accepted. While clients send such messages without pause, the policy file is switched and
spamgate reloaded 50 times. Every decision line must name one of the two policies
(`policy=`) and carry that policy's verdict, and what each client was told must be what
that line says. A session that took the engine of one policy and the digest (or the
resolver, or the greylist state) of another would break one of these.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from tests.e2e.spamgate_stack import SpamgateDaemon
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port, wait_until
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

RELOADS = 50
SENDERS = 4
MAX_MESSAGES = 2000  # all senders together: a bound should reloads stall

# No DNS list and no rule that needs DNS: the resolver (on a port nothing answers) is never
# asked, so only the policy decides.
POLICY = """\
listen: inet:{port}@127.0.0.1
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.3, deadline: 0.5}}
trusted_networks: [127.0.0.0/8]
log: {{stats_interval: 0}}
thresholds: {{tag: 3, greylist: null, reject: 10}}
rules:
  - name: FLIP
    score: {score}
    description: the flip rule
    header: {{name: Subject, matches: flip}}
"""
FLIP_REJECTS, FLIP_TAGS = 20, 5

_ID_IN_REPLY = re.compile(r"\(id ([0-9a-f]+)\)")


@dataclass
class Reloads:
    daemon: SpamgateDaemon
    postfix: PostfixInstance
    texts: dict[int, str]  # policy text by FLIP score


@pytest.fixture
def reloads(tmp_path: Path) -> Iterator[Reloads]:
    with SmtpSink(tmp_path) as sink:
        port, dns = free_port(), free_port(udp=True)
        texts = {s: POLICY.format(port=port, dns=dns, score=s) for s in (FLIP_REJECTS, FLIP_TAGS)}
        daemon = SpamgateDaemon(tmp_path, texts[FLIP_REJECTS], port)
        with daemon:
            listeners = {"smtp": Listener(milters=daemon.postfix_address)}
            with PostfixInstance(tmp_path, relay_port=sink.port, listeners=listeners) as postfix:
                yield Reloads(daemon, postfix, texts)


def _send(port: int, number: int) -> SendResult:
    subject = f"flip {number}"
    message = build_message(mail_from="a@client.example", to=["u@example.com"], subject=subject)
    return send(
        port,
        client_addr=f"192.0.2.{number % 200 + 20}",
        helo="mail.client.example",
        mail_from="a@client.example",
        rcpts=["u@example.com"],
        message_bytes=message,
        timeout=30,
    )


def test_each_decision_is_made_by_one_whole_policy_across_50_reloads(reloads: Reloads) -> None:
    daemon = reloads.daemon
    digests = {}
    for score, text in reloads.texts.items():
        daemon.config_path.write_text(text)
        digests[load_policy(str(daemon.config_path)).digest] = score
    assert len(digests) == 2
    started = time.monotonic()
    results = _reload_under_load(reloads)
    elapsed = time.monotonic() - started
    assert "reload failed" not in daemon.log_text()
    # Every message got an answer at end of data: 550 (refused) or 250 (queued).
    answered = {(r.end_of_data.code if r.end_of_data else None) for r in results}
    assert answered <= {250, 550}, answered
    wait_until(
        lambda: len(daemon.decisions()) >= len(results),
        timeout=10,
        what=f"{len(results)} decision lines",
        log_tail=daemon.log_tail,
    )
    lines = daemon.decisions()
    assert len(lines) == len(results)
    seen = {FLIP_REJECTS: 0, FLIP_TAGS: 0}
    for line in lines:
        score = digests.get(line["policy"])
        assert score is not None, line  # exactly one of the two policies, by its digest
        want = ("reject", "reject") if score == FLIP_REJECTS else ("tag", "tag")
        assert (line["action"], line["enforced"], line["hits"]) == (*want, f"FLIP:{score}"), line
        seen[score] += 1
    by_id = {line["id"]: line for line in lines}
    by_queue = {line["queue"]: line for line in lines}
    for result in results:
        assert result.end_of_data is not None
        if result.end_of_data.code == 550:
            found = _ID_IN_REPLY.search(result.end_of_data.text)
            assert found is not None, result.end_of_data
            line = by_id[found.group(1)]
        else:
            line = by_queue[str(result.queue_id)]
        # What the client was told is what the policy named in its line decides.
        refused = digests[line["policy"]] == FLIP_REJECTS
        assert (result.end_of_data.code == 550) is refused, (result.end_of_data, line)
    assert seen[FLIP_REJECTS] and seen[FLIP_TAGS], seen  # both decided, under load
    print(
        f"{RELOADS} reloads, {len(results)} messages in {elapsed:.1f} s: "
        f"{seen[FLIP_REJECTS]} by the rejecting policy, {seen[FLIP_TAGS]} by the tagging one"
    )
    assert elapsed < 45


def _reload_under_load(reloads: Reloads) -> list[SendResult]:
    """Switch the policy and reload RELOADS times while SENDERS clients send without pause;
    what each client got."""
    daemon = reloads.daemon
    results: list[SendResult] = []
    stop = threading.Event()
    numbers = iter(range(MAX_MESSAGES))
    lock = threading.Lock()

    def keep_sending() -> None:
        while not stop.is_set():
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            result = _send(reloads.postfix.ports["smtp"], number)
            with lock:
                results.append(result)

    senders = [threading.Thread(target=keep_sending) for _ in range(SENDERS)]
    for thread in senders:
        thread.start()
    try:
        for generation in range(2, RELOADS + 2):
            # Odd generations are FLIP_REJECTS (the first policy), even ones FLIP_TAGS.
            score = FLIP_TAGS if generation % 2 == 0 else FLIP_REJECTS
            daemon.config_path.write_text(reloads.texts[score])
            os.kill(daemon.pid, signal.SIGUSR1)
            wait_until(
                lambda g=generation: f", generation {g}\n" in daemon.log_text(),
                timeout=10,
                what=f"reload to generation {generation}",
                log_tail=daemon.log_tail,
            )
    finally:
        stop.set()
        for thread in senders:
            thread.join(timeout=60)
    return results
