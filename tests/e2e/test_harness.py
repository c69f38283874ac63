"""Self-checks of the e2e harness: every piece against the real rbldnsd, Postfix and smtp-sink."""

from __future__ import annotations

from pathlib import Path

import dns.exception
import pytest

from tests.harness.dns import Rbldnsd, Zone, dnsbl_name
from tests.harness.milters import MilterProcess
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import free_port, group_members, process_exists
from tests.harness.sink import SinkMessage, SmtpSink
from tests.harness.smtp import Reply, SendResult, build_message, send

pytestmark = pytest.mark.e2e

BL4 = """\
127.0.0.2
192.0.2.99 :127.255.255.254:Listed with a custom value: $
"""
BL6 = """\
2001:db8::25
2001:db8:bad::/48 :127.0.0.3:
"""
DBL = """\
.spam.example
"""
RCPT = "rcpt@example.com"


def _codes(result: SendResult) -> list[int | None]:
    """Reply codes of the session steps, None for steps that were not reached."""
    steps: list[Reply | None] = [
        result.greeting,
        result.xclient,
        result.ehlo,
        result.mail,
        result.data,
        result.end_of_data,
        result.quit,
    ]
    return [None if reply is None else reply.code for reply in steps]


def _send(port: int, client_addr: str, subject: str, helo: str = "helo.example") -> SendResult:
    message = build_message(mail_from="sender@client.example", to=[RCPT], subject=subject)
    return send(
        port,
        client_addr=client_addr,
        helo=helo,
        mail_from="sender@client.example",
        rcpts=[RCPT],
        message_bytes=message,
    )


def _by_subject(messages: list[SinkMessage]) -> dict[str, SinkMessage]:
    return {str(m.message["Subject"]): m for m in messages}


def test_rbldnsd_answers_and_restarts_on_the_same_port(tmp_path: Path) -> None:
    zones = [
        Zone("bl.test", "ip4set", BL4),
        Zone("bl6.test", "ip6trie", BL6),
        Zone("dbl.test", "dnset", DBL),
    ]
    with Rbldnsd(tmp_path, zones) as server:
        assert server.lookup("2.0.0.127.bl.test") == ["127.0.0.2"]
        assert server.lookup(dnsbl_name("192.0.2.99", "bl.test")) == ["127.255.255.254"]
        assert server.lookup("99.2.0.192.bl.test", "TXT") == [
            '"Listed with a custom value: 192.0.2.99"'
        ]
        assert server.lookup("3.0.0.127.bl.test") is None
        v6_name = dnsbl_name("2001:db8::25", "bl6.test")
        assert v6_name == "5.2.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.bl6.test"
        assert server.lookup(v6_name) == ["127.0.0.2"]
        assert server.lookup(dnsbl_name("2001:db8:bad::1", "bl6.test")) == ["127.0.0.3"]
        assert server.lookup(dnsbl_name("2001:db8::26", "bl6.test")) is None
        assert server.lookup("www.spam.example.dbl.test") == ["127.0.0.2"]
        assert server.lookup("ham.example.dbl.test") is None
        answer = server.resolver().resolve("2.0.0.127.bl.test", "A")
        assert [rr.to_text() for rr in answer] == ["127.0.0.2"]

        first_pid, port = server.pid, server.port
        server.stop()
        assert not process_exists(first_pid)
        with pytest.raises(dns.exception.Timeout):
            server.query("2.0.0.127.bl.test", timeout=0.3)

        server.start()
        assert server.port == port
        assert server.pid != first_pid
        assert server.lookup("2.0.0.127.bl.test") == ["127.0.0.2"]
    assert not process_exists(server.pid)


def test_postfix_relays_xclient_ipv4_and_ipv6_clients_to_the_sink(tmp_path: Path) -> None:
    with SmtpSink(tmp_path) as sink, PostfixInstance(tmp_path, relay_port=sink.port) as postfix:
        port = postfix.ports["smtp"]
        v4 = send(
            port,
            client_addr="192.0.2.10",
            client_name="mail.client.example",
            helo="helo4.client.example",
            mail_from="alice@client.example",
            rcpts=["bob@example.com", "carol@example.net", "dave@example.org"],
            message_bytes=build_message(
                mail_from="alice@client.example",
                to=["bob@example.com", "carol@example.net"],
                subject="via IPv4",
                body=".this line needs dot-stuffing\n",
            ),
        )
        assert _codes(v4) == [220, 220, 250, 250, 354, 250, 221]
        # example.org is not a relay domain: refused, and the others still get the message.
        assert [(rcpt, reply.code) for rcpt, reply in v4.rcpts] == [
            ("bob@example.com", 250),
            ("carol@example.net", 250),
            ("dave@example.org", 454),
        ]
        assert v4.accepted_rcpts == ["bob@example.com", "carol@example.net"]
        assert v4.queue_id is not None

        v6 = send(
            port,
            client_addr="2001:db8::25",
            helo="helo6.client.example",
            mail_from="",
            rcpts=[RCPT],
            message_bytes=build_message(
                mail_from="mailer-daemon@client.example", to=[RCPT], subject="via IPv6"
            ),
        )
        assert _codes(v6) == [220, 220, 250, 250, 354, 250, 221]
        postfix.wait_for_log(rf"{v6.queue_id}: client=unknown\[2001:db8::25\]")

        got = _by_subject(sink.wait_for_messages(2))
        assert sorted(got) == ["via IPv4", "via IPv6"]
        got4, got6 = got["via IPv4"], got["via IPv6"]

        assert (got4.mail_from, got4.rcpts) == (
            "alice@client.example",
            ("bob@example.com", "carol@example.net"),
        )
        # The sink's client is Postfix; the claimed client shows in Postfix's Received header.
        assert got4.client_addr == "127.0.0.1"
        assert got4.message["Received"].startswith(
            "from helo4.client.example (mail.client.example [192.0.2.10])"
        )
        assert f" id {v4.queue_id}" in got4.message["Received"]
        assert got4.message.get_content() == ".this line needs dot-stuffing\n"

        assert (got6.mail_from, got6.rcpts) == ("", (RCPT,))
        assert got6.message["Received"].startswith(
            "from helo6.client.example (unknown [IPv6:2001:db8::25])"
        )


def test_listeners_with_and_without_milter_on_one_instance(tmp_path: Path) -> None:
    dead_milter = f"inet:127.0.0.1:{free_port()}"  # nothing ever listens here
    with SmtpSink(tmp_path) as sink, MilterProcess.noop(tmp_path) as milter:
        listeners = {
            "plain": Listener(),
            "milter": Listener(milters=milter.postfix_address),
            "down": Listener(milters=dead_milter),  # default milter_default_action: tempfail
            "down-accept": Listener(
                milters=dead_milter, options={"milter_default_action": "accept"}
            ),
        }
        with PostfixInstance(tmp_path, relay_port=sink.port, listeners=listeners) as postfix:
            assert len(set(postfix.ports.values())) == 4
            plain = _send(postfix.ports["plain"], "192.0.2.20", "plain")
            miltered = _send(postfix.ports["milter"], "2001:db8::26", "milter", helo="h6.example")
            down = _send(postfix.ports["down"], "192.0.2.21", "down")
            down_accept = _send(postfix.ports["down-accept"], "192.0.2.22", "down-accept")

            assert _codes(plain) == [220, 220, 250, 250, 354, 250, 221]
            assert _codes(miltered) == [220, 220, 250, 250, 354, 250, 221]
            assert _codes(down) == [220, 220, 250, 451, None, None, 221]
            assert down.mail is not None and "try again later" in down.mail.text
            assert _codes(down_accept) == [220, 220, 250, 250, 354, 250, 221]

            got = _by_subject(sink.wait_for_messages(3))
            assert sorted(got) == ["down-accept", "milter", "plain"]
            # The milter saw the XCLIENT-claimed address and the EHLO sent after XCLIENT.
            assert (
                got["milter"].message["X-Harness-Milter"] == "client=2001:db8::26 helo=h6.example"
            )
            assert got["plain"].message["X-Harness-Milter"] is None
            assert got["down-accept"].message["X-Harness-Milter"] is None
            postfix.wait_for_log(r"postfix/down/smtpd\[\d+\]: warning: connect to Milter service")

            pids = [sink.pid, milter.pid, postfix.pid]
            assert len(group_members(postfix.pid)) > 1  # master and its daemons
    for pid in pids:
        assert not process_exists(pid)
    assert group_members(postfix.pid) == []
