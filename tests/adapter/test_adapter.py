"""Adapter tests: callbacks driven through pymilter's own test context, with a fake resolver.

Milter.testctx.TestCtx has traps (PYMILTER-FACTS): its class-level default options are mutated
by the first negotiation; it treats NOREPLY as a refusal and closes the session; its chgheader
appends instead of replacing. So each session here gets fresh options that offer no
"no reply" protocol bits (as an MTA without that protocol step would), and header actions are
recorded instead of applied. The no-reply path itself is proven end to end through Postfix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from concurrent import futures
from typing import Any

import Milter
import pytest
from Milter import testctx

from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending
from spamgate.shell.adapter import SpamgateMilter, report_uncaught
from spamgate.shell.session import Runtime
from tests.fakes import NO_REPLY_BITS, ScriptedLookups

LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN, ttl=60)

BASE_POLICY = """
resolver: {deadline: 0.2}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: s3cr3tkey.zen.test
    error_codes: [127.0.0.255]
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 7}
  - name: WL
    zone: wl.test
    hits:
      - {name: WL_HI, codes: ["127.0.*.3"], score: -5}
rules:
  - name: SUBJECT_PHARMA
    score: 4
    description: the Subject advertises pharmacy products
    header: {name: Subject, matches: '(?i)\\bv[i1]agra\\b'}
  - name: NO_DATE
    score: 1
    description: the message has no Date header
    header: {name: Date, missing: true}
"""


def make_policy(extra: str = "") -> Policy:
    return schema.load(Policy, BASE_POLICY + extra, "test.yaml")


def answering(answers: Mapping[str, DnsAnswer | None]) -> ScriptedLookups:
    """A resolver that answers these A questions at once (None: never) and any other clean."""
    return ScriptedLookups(
        {(qname, "A"): answer for qname, answer in answers.items()}, default=CLEAN
    )


class RecordingCtx(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records header actions instead of editing a parsed message."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, int]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        assert self._body is not None, "addheader outside eom"
        self.added.append((field, value))

    def setsymlist(self, stage: int, macros: str) -> None:
        # libmilter's C binding takes str only (pymilter's own Base.setsymlist passes bytes).
        assert isinstance(macros, str), macros
        super().setsymlist(stage, macros)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        assert self._body is not None, "chgheader outside eom"
        assert value == "", "spamgate only deletes headers"
        self.deleted.append((field, idx))


def fresh_options() -> None:
    # TestCtx passes (and negotiation mutates) one class-level list: replace it every time.
    testctx.TestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF & ~NO_REPLY_BITS, 0, 0]


class Session:
    def __init__(self, policy: Policy, lookups: ScriptedLookups) -> None:
        fresh_options()
        self.runtime = Runtime(Engine(policy), lookups)
        Milter.factory = lambda: SpamgateMilter(self.runtime)
        self.ctx = RecordingCtx()

    def connect(self, ip: str = "192.0.2.1", helo: str = "mx.example.org") -> int:
        return int(self.ctx._connect(host="mx.example.org", helo=helo, ip=ip))

    def mail(self, sender: str = "<a@example.org>", auth: str | None = None) -> int:
        self.ctx._setsymval("{auth_authen}", auth)
        return int(self.ctx._envfrom(sender))

    def rcpt(self, recipient: str) -> int:
        self.ctx._reply = None
        return int(self.ctx._envrcpt(recipient))

    def message(self, headers: list[tuple[str, str]], queue_id: str = "4XyZ1") -> int:
        ctx = self.ctx
        ctx._reply = None
        ctx._setsymval("i", queue_id)
        ctx._data()
        for name, value in headers:
            ctx._header(name, value)
        ctx._eoh()
        return int(ctx._eom())

    def close(self) -> None:
        self.ctx._close()

    @property
    def reply(self) -> tuple[Any, ...] | None:
        return self.ctx._reply  # type: ignore[no-any-return]

    @property
    def milter(self) -> SpamgateMilter:
        return self.ctx.getpriv()  # type: ignore[no-any-return]


GOOD_HEADERS = [("From", "a@example.org"), ("Subject", "hello"), ("Date", "today")]


@pytest.fixture
def decision_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    caplog.set_level(logging.INFO, logger="spamgate")
    lines: list[str] = []
    yield lines
    lines.extend(r.getMessage() for r in caplog.records if r.name == "spamgate.decision")


def decisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spamgate.decision"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spamgate")


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


class ExplodingLookups(ScriptedLookups):
    def lookup(self, qname: str, rdtype: str = "A") -> Pending[DnsAnswer]:
        raise RuntimeError("resolver exploded")


@pytest.mark.parametrize(
    ("on_error", "expected", "reply"),
    [
        pytest.param("accept", Milter.ACCEPT, None, id="accept"),
        pytest.param("tempfail", Milter.TEMPFAIL, ("451", "4.3.0"), id="tempfail"),
    ],
)
def test_error_in_a_noreply_callback_follows_on_error_at_the_next_reply(
    caplog: pytest.LogCaptureFixture, on_error: str, expected: int, reply: tuple[str, str] | None
) -> None:
    session = Session(make_policy(f"on_error: {on_error}\n"), ExplodingLookups({}))
    # connect must still answer CONTINUE/NOREPLY: anything else desynchronises the protocol.
    assert session.connect("192.0.2.1") in (Milter.CONTINUE, Milter.NOREPLY)
    session.mail()
    assert session.rcpt("<user@example.com>") == expected
    assert (session.reply[:2] if session.reply else None) == reply
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "internal error in connect" in message and "resolver exploded" in message
    assert f"on_error={on_error}" in message and "traceback=" in message
    assert "\n" not in message


def test_error_in_header_callback_is_answered_with_on_error_at_end_of_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session(make_policy("on_error: tempfail\n"), answering({}))
    session.connect()
    session.mail()
    session.rcpt("<user@example.com>")
    session.milter.session.transaction.our_headers = None  # type: ignore[union-attr]
    session.ctx._reply = None
    # Headers are no-reply events: the error waits for the next answer, end of message.
    assert session.ctx._header("X-Spam-Status", "boom") == Milter.CONTINUE
    assert session.reply is None
    assert session.ctx._eom() == Milter.TEMPFAIL
    assert session.reply is not None and session.reply[:2] == ("451", "4.3.0")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "internal error in header" in errors[0]


@pytest.mark.parametrize(
    ("family", "hostaddr"),
    [
        pytest.param(0, None, id="unknown-family"),
        pytest.param(2, None, id="no-address"),
        pytest.param(2, ("not-an-ip", 25), id="garbage"),
        pytest.param(10, ("fe80::1%eth0", 25, 0, 2), id="scoped-link-local"),
    ],
)
def test_connect_without_a_usable_address_is_scored_without_lists(
    caplog: pytest.LogCaptureFixture, family: int, hostaddr: Any
) -> None:
    lookups = answering({})
    session = Session(make_policy(), lookups)
    fresh_options()
    session.ctx._negotiate()
    milter = session.milter
    assert milter.connect("host", family, hostaddr) in (Milter.CONTINUE, Milter.NOREPLY)
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    session.close()
    assert lookups.calls == []
    (line,) = decisions(caplog)
    if family == 10:
        assert "client=fe80::1" in line and "lists_ignored=trusted" in line
    else:
        assert "client=unknown" in line and "lists_ignored=no-address" in line


# -- pymilter failing before our code runs -------------------------------------------------
# pymilter's C layer decodes a HELO (and a header name) as strict UTF-8 to build the callback's
# arguments; on failure it calls sys.excepthook (PyErr_Print) from the session's own Python
# thread state and answers with its exception policy, CONTINUE. These tests make that call
# as pymilter does, from the thread the session's callbacks ran in.

HELO_RULE = """
  - {name: HELO_SHORT, score: 1, description: the HELO is not a FQDN, helo: not_fqdn}
"""


def pymilter_fails(error: BaseException) -> None:
    report_uncaught(type(error), error, error.__traceback__)


def undecodable(raw: bytes) -> UnicodeDecodeError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return error
    raise AssertionError(f"{raw!r} is UTF-8")


def connected(policy: Policy) -> Session:
    session = Session(policy, answering({}))
    fresh_options()
    session.ctx._negotiate()
    assert session.milter.connect("mx.example.org", 2, ("192.0.2.7", 4567)) in (
        Milter.CONTINUE,
        Milter.NOREPLY,
    )
    return session


def test_a_helo_pymilter_cannot_decode_is_read_byte_for_byte_and_judged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected(make_policy(HELO_RULE))
    pymilter_fails(undecodable(b"[h\xff\xfe\nforged=1"))
    session.mail()
    assert session.rcpt("<user@example.com>") == Milter.CONTINUE
    assert session.message(GOOD_HEADERS) == Milter.CONTINUE
    (line,) = decisions(caplog)
    assert 'helo="[h\\xff\\xfe\\nforged\\x3d1"' in line
    assert "hits=HELO_SHORT:1" in line
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "HELO from 192.0.2.7 is not UTF-8" in warning and "\n" not in warning
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_header_name_pymilter_cannot_decode_goes_unseen_and_the_message_is_judged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = connected(make_policy())
    session.mail()
    session.rcpt("<user@example.com>")
    session.ctx._data()
    pymilter_fails(undecodable(b"X-\xff"))
    for name, value in GOOD_HEADERS:
        session.ctx._header(name, value)
    assert session.ctx._eom() == Milter.CONTINUE
    (line,) = decisions(caplog)
    assert "stage=eom action=accept" in line
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a header name from 192.0.2.7 is not UTF-8" in warning
    assert 'name="X-\\xff"' in warning


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        pytest.param("accept", Milter.ACCEPT, id="accept"),
        pytest.param("tempfail", Milter.TEMPFAIL, id="tempfail"),
    ],
)
def test_any_other_pymilter_failure_is_an_internal_error_answered_by_on_error(
    caplog: pytest.LogCaptureFixture, on_error: str, expected: int
) -> None:
    session = connected(make_policy(f"on_error: {on_error}\n"))
    session.mail()
    pymilter_fails(AttributeError("'NoneType' object has no attribute 'envrcpt_bytes'"))
    assert session.rcpt("<user@example.com>") == expected
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "internal error in pymilter-after-envfrom" in error
    assert f"on_error={on_error}" in error
    assert "\n" not in error


def test_an_uncaught_exception_outside_a_session_is_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail_in_a_fresh_thread() -> None:
        try:
            raise ValueError("line one\nline two")
        except ValueError as error:
            pymilter_fails(error)

    with futures.ThreadPoolExecutor(1) as pool:
        pool.submit(fail_in_a_fresh_thread).result(timeout=10)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error.startswith("uncaught exception outside a session: ")
    assert "line one\\nline two" in error and "\n" not in error
    assert "test_adapter.py" in error  # the traceback, folded onto the line


def test_a_client_name_pymilter_cannot_decode_fails_the_connection_by_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No MTA here passes one (Postfix validates the name or says "unknown"), but if one did,
    # connect() never runs: the connection has no facts, so on_error answers for all of it.
    session = Session(make_policy("on_error: tempfail\n"), answering({}))
    fresh_options()
    session.ctx._negotiate()
    pymilter_fails(undecodable(b"host\xff.example"))
    for _ in range(2):  # a new MAIL FROM does not clear a connection-stage failure
        session.mail()
        assert session.rcpt("<user@example.com>") == Milter.TEMPFAIL
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "internal error in connect" in error and "UnicodeDecodeError" in error
