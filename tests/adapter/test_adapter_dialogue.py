"""Adapter tests of the dialogue: what each callback answers, what it logs and which headers it
adds or deletes, through pymilter's own test context (the harness: tests/adapter_harness.py).
"""

from __future__ import annotations

import Milter
import pytest

from spamgate.core.engine import Engine
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.adapter import SpamgateMilter
from spamgate.shell.runtime import Runtime
from tests.adapter_harness import (
    GOOD_HEADERS,
    LISTED,
    RecordingCtx,
    Session,
    _capture,  # noqa: F401  (a fixture: pytest finds it by name)
    answering,
    decisions,
    make_policy,
)


def test_listed_client_is_refused_at_rcpt_with_list_name_and_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookups = answering({"1.2.0.192.s3cr3tkey.zen.test": LISTED})
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.REJECT
    assert session.reply is not None
    code, status, text = session.reply
    assert (code, status) == ("550", "5.7.1")
    assert "listed in the Example SBL" in text
    assert "s3cr3tkey" not in text and "zen.test" not in text
    session.close()
    (line,) = decisions(caplog)
    decision_id = line.split(" id=")[1].split()[0]
    assert f"(id {decision_id})" in text
    assert "stage=rcpt action=reject enforced=reject" in line
    assert "refused=<user@example.com>" in line
    assert "hits=ZEN_SBL:10" in line


def test_clean_client_gets_headers_and_foreign_spam_headers_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session(make_policy(), answering({}))
    session.connect("192.0.2.7")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    headers = [*GOOD_HEADERS, ("X-Spam-Status", "No, forged"), ("x-spam-status", "again")]
    headers.append(("X-Spam-Score", "-100"))
    assert session.message(headers) == Milter.CONTINUE
    assert session.ctx.added == [
        ("X-Spam-Score", "0.0"),
        ("X-Spam-Status", "No, score=0.0 hits=none"),
    ]
    # Deleted per name as it arrived, highest index first so lower indexes stay valid.
    assert ("X-Spam-Status", 1) in session.ctx.deleted
    assert ("x-spam-status", 1) in session.ctx.deleted
    assert ("X-Spam-Score", 1) in session.ctx.deleted
    (line,) = decisions(caplog)
    assert line.startswith("4XyZ1: decision ")
    assert "stage=eom action=accept enforced=accept" in line


def test_repeated_foreign_header_deleted_from_the_last_index_down() -> None:
    session = Session(make_policy(), answering({}))
    session.connect()
    session.mail()
    session.rcpt("<user@example.com>")
    session.message([*GOOD_HEADERS] + [("X-Spam-Score", str(n)) for n in range(3)])
    assert session.ctx.deleted == [("X-Spam-Score", 3), ("X-Spam-Score", 2), ("X-Spam-Score", 1)]


def test_mid_score_client_is_tempfailed() -> None:
    lookups = answering(
        {"1.2.0.192.s3cr3tkey.zen.test": DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10",), ttl=60)}
    )
    policy = make_policy("thresholds: {tag: 3, greylist: null, tempfail: 6, reject: 10}\n")
    session = Session(policy, lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.TEMPFAIL
    assert session.reply is not None
    assert session.reply[:2] == ("451", "4.7.1")
    assert "listed by Example ZEN" in session.reply[2]


def test_mid_score_client_is_greylisted_by_default() -> None:
    lookups = answering(
        {"1.2.0.192.s3cr3tkey.zen.test": DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10",), ttl=60)}
    )
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.TEMPFAIL
    assert session.reply is not None
    assert session.reply[:2] == ("451", "4.7.1")
    assert session.reply[2].startswith("Greylisted: please try again in 300 seconds (id ")


def test_postmaster_reachable_from_listed_client_and_tagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookups = answering({"1.2.0.192.s3cr3tkey.zen.test": LISTED})
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.REJECT
    assert session.rcpt("<Postmaster@Example.COM>") == Milter.CONTINUE
    assert session.rcpt("<abuse@example.net>") == Milter.CONTINUE
    assert session.message(GOOD_HEADERS) == Milter.CONTINUE
    assert ("X-Spam-Status", "Yes, score=10.0 hits=ZEN_SBL") in session.ctx.added
    (line,) = decisions(caplog)
    assert "enforced=tag waived_by=exempt" in line
    assert "refused=<user@example.com>" in line


def test_blocked_answer_is_never_a_listing(caplog: pytest.LogCaptureFixture) -> None:
    blocked = DnsAnswer(AnswerKind.RECORDS, ("127.255.255.254",), ttl=60)
    session = Session(make_policy(), answering({"1.2.0.192.s3cr3tkey.zen.test": blocked}))
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.message(GOOD_HEADERS)
    (line,) = decisions(caplog)
    assert "fails=ZEN_FAIL" in line
    assert "ZEN:unusable:error-code:127.255.255.254" in line
    assert "score=0.0" in line


def test_unanswered_list_counts_as_unusable_after_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session(make_policy(), answering({"1.2.0.192.s3cr3tkey.zen.test": None}))
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.message(GOOD_HEADERS)
    (line,) = decisions(caplog)
    assert "ZEN:unusable:deadline" in line and "fails=ZEN_FAIL" in line


def test_observe_mode_accepts_and_logs_the_would_be_action(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookups = answering({"1.2.0.192.s3cr3tkey.zen.test": LISTED})
    session = Session(make_policy("mode: observe\n"), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    assert session.message(GOOD_HEADERS) == Milter.CONTINUE
    assert ("X-Spam-Status", "Yes, score=10.0 hits=ZEN_SBL") in session.ctx.added
    (line,) = decisions(caplog)
    assert "action=reject enforced=tag waived_by=observe mode=observe" in line


@pytest.mark.parametrize(
    ("ip", "expected_queries"),
    [
        pytest.param("127.0.0.1", [], id="loopback"),
        pytest.param("10.1.2.3", [], id="rfc1918"),
        pytest.param("::ffff:192.168.1.1", [], id="mapped-private"),
        pytest.param(
            "::ffff:192.0.2.9", ["9.2.0.192.s3cr3tkey.zen.test", "9.2.0.192.wl.test"], id="mapped"
        ),
        pytest.param(
            "2001:db8::25",
            [
                "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.s3cr3tkey.zen.test",
                "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.wl.test",
            ],
            id="ipv6-nibbles",
        ),
    ],
)
def test_which_clients_are_looked_up(ip: str, expected_queries: list[str]) -> None:
    lookups = answering({})
    session = Session(make_policy(), lookups)
    session.connect(ip)
    assert lookups.calls == [(qname, "A") for qname in expected_queries]


def test_trusted_client_is_logged_as_such(caplog: pytest.LogCaptureFixture) -> None:
    session = Session(make_policy(), answering({}))
    session.connect("127.0.0.1")
    session.mail()
    session.rcpt("<user@example.com>")
    session.message(GOOD_HEADERS)
    (line,) = decisions(caplog)
    assert "lists_ignored=trusted" in line


def test_authenticated_client_lists_do_not_count(caplog: pytest.LogCaptureFixture) -> None:
    lookups = answering({"1.2.0.192.s3cr3tkey.zen.test": LISTED})
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail(auth="alice")
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.message(GOOD_HEADERS)
    (line,) = decisions(caplog)
    assert "lists_ignored=authenticated" in line and "score=0.0" in line


def test_allowlist_offsets_a_listing() -> None:
    lookups = answering(
        {
            "1.2.0.192.s3cr3tkey.zen.test": LISTED,
            "1.2.0.192.wl.test": DnsAnswer(AnswerKind.RECORDS, ("127.0.15.3",), ttl=60),
        }
    )
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.message(GOOD_HEADERS)
    assert ("X-Spam-Status", "Yes, score=5.0 hits=ZEN_SBL,WL_HI") in session.ctx.added


def test_header_rules_add_to_list_score_and_reject_at_end_of_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookups = answering(
        {"1.2.0.192.s3cr3tkey.zen.test": DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10",), 60)}
    )
    thresholds = "thresholds: {tag: 3, greylist: null, reject: 10}\n"
    session = Session(make_policy(thresholds), lookups)
    session.connect("192.0.2.1")
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    result = session.message([("From", "a@example.org"), ("Subject", "cheap VIAGRA now")])
    assert result == Milter.REJECT
    assert session.reply is not None
    code, status, text = session.reply
    assert (code, status) == ("550", "5.7.1")
    assert "listed by Example ZEN; the Subject advertises pharmacy products" in text
    assert session.ctx.added == []
    (line,) = decisions(caplog)
    assert "hits=ZEN_PBL:7,SUBJECT_PHARMA:4,NO_DATE:1" in line
    assert "stage=eom action=reject enforced=reject" in line


def test_folded_header_value_is_unfolded_before_matching() -> None:
    session = Session(make_policy(), answering({}))
    session.connect()
    session.mail()
    session.rcpt("<user@example.com>")
    session.message([*GOOD_HEADERS, ("Subject", "cheap\n\tviagra")])
    assert ("X-Spam-Status", "Yes, score=4.0 hits=SUBJECT_PHARMA") in session.ctx.added


def test_each_transaction_logs_once_with_its_own_id(caplog: pytest.LogCaptureFixture) -> None:
    lookups = answering({"1.2.0.192.s3cr3tkey.zen.test": LISTED})
    session = Session(make_policy(), lookups)
    session.connect("192.0.2.1")
    session.mail("<one@example.org>")
    session.rcpt("<a@example.com>")
    session.rcpt("<b@example.com>")
    session.mail("<two@example.org>")  # a new MAIL ends the first transaction
    session.rcpt("<c@example.com>")
    session.close()
    first, second = decisions(caplog)
    assert "from=<one@example.org>" in first and "refused=<a@example.com>,<b@example.com>" in first
    assert "from=<two@example.org>" in second
    assert first.split(" id=")[1].split()[0] != second.split(" id=")[1].split()[0]
    assert lookups.calls.count(("1.2.0.192.s3cr3tkey.zen.test", "A")) == 1


def test_transaction_with_no_recipient_decision_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session(make_policy(), answering({}))
    session.connect()
    session.mail()
    session.close()
    assert decisions(caplog) == []


def test_negotiation_asks_only_for_header_actions() -> None:
    session = Session(make_policy(), answering({}))
    session.connect()
    assert session.ctx._opts[0] == (
        Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.SETSYMLIST
    )
    # Body and unknown-command callbacks are negotiated away; end of headers is kept, or
    # libmilter ignores the end of a message without headers (see the Sendmail e2e test).
    protocol = session.ctx._opts[1]
    assert protocol & Milter.P_NOBODY and protocol & Milter.P_NOUNKNOWN
    assert not protocol & Milter.P_NOEOH and not protocol & Milter.P_NODATA


def test_negotiation_skips_replies_postfix_can_buffer_and_answers_data() -> None:
    milter = SpamgateMilter(Runtime(Engine(make_policy()), answering({})))
    ctx = RecordingCtx()
    ctx._stage = -1  # negotiation time: TestCtx allows setsymlist only then
    milter._setctx(ctx)
    offered = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    milter.negotiate(offered)
    protocol = offered[1]
    no_replies = (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_MAIL, Milter.P_NR_HDR)
    for no_reply in (*no_replies, Milter.P_NR_EOH):
        assert protocol & no_reply
    assert protocol & Milter.P_NOBODY and not protocol & Milter.P_NOEOH
    # DATA must be answered, or Postfix stalls ~40 ms on Nagle; RCPT carries verdicts.
    for replied in (Milter.P_NODATA, Milter.P_NR_DATA, Milter.P_NR_RCPT):
        assert not protocol & replied
    # The macros spamgate reads are asked for, per stage.
    assert ctx._symlist[Milter.M_CONNECT] == {
        b"j",
        b"{daemon_addr}",
        b"{client_resolve}",
        b"{client_ptr}",
    }
    assert ctx._symlist[Milter.M_ENVFROM] == {b"{auth_authen}"}
    assert ctx._symlist[Milter.M_EOH] == {b"i"}
    assert ctx._symlist[Milter.M_EOM] == {b"i"}
