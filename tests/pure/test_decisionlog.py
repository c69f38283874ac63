"""The decision log line: one line, stable keys, and no field an SMTP client can forge; and
what a deferral by a list that could not be asked leaves in the log and the metrics."""

from __future__ import annotations

import ipaddress
import itertools
import re

import pytest

from spamgate.core import schema
from spamgate.core.decisionlog import Decision, format_decision, quote, render_list
from spamgate.core.engine import Action, Enforcement, Engine, Hit, ListsIgnored, Verdict
from spamgate.core.listspecs import IpList
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply, rejection
from spamgate.core.scoring import Mode
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import ListOutcome, ListStatus
from spamgate.shell.metrics import Metrics
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import RcptResult, Session
from tests.fakes import FakeClock, ScriptedLookups

_FIELD = re.compile(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]*)')
_ESCAPE = re.compile(r'\\(["\\rnt]|x[0-9a-f]{2}|u[0-9a-f]{4})')


def unescape(value: str) -> str:
    """Read a value back the way a log parser would."""
    if not value.startswith('"'):
        return value

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in ('"', "\\"):
            return code
        if code in "rnt":
            return {"r": "\r", "n": "\n", "t": "\t"}[code]
        return chr(int(code[1:], 16))

    return _ESCAPE.sub(one, value[1:-1])


def parse_line(line: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a decision line into its prefix and (key, value) fields; fail on anything else."""
    prefix, marker, rest = line.partition(": decision")
    assert marker, line
    fields = []
    position = 0
    while position < len(rest):
        match = _FIELD.match(rest, position)
        assert match is not None, f"unparsable at {rest[position:]!r}"
        fields.append((match.group(1), unescape(match.group(2))))
        position = match.end()
    return prefix, fields


def is_one_printable_ascii_line(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


# --- quote -------------------------------------------------------------------------------------

NOT_UTF8 = b"caf\xff".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        pytest.param("mx.example", "mx.example", id="hostname"),
        pytest.param("<a@example.org>", "<a@example.org>", id="address"),
        pytest.param("SPAMHAUS_SBL:10,R:-1.5", "SPAMHAUS_SBL:10,R:-1.5", id="hits"),
        pytest.param("x=y", '"x\\x3dy"', id="equals-is-never-bare"),
        pytest.param("mx action=accept", '"mx action\\x3daccept"', id="a-helo-cannot-fake-a-field"),
        pytest.param("", '""', id="empty"),
        pytest.param("a b", '"a b"', id="space"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="double-quotes"),
        pytest.param('"', '"\\""', id="lone-quote"),
        pytest.param("a\\b", '"a\\\\b"', id="backslash"),
        pytest.param("a\r\nb\tc", '"a\\r\\nb\\tc"', id="cr-lf-tab"),
        pytest.param("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"', id="controls"),
        pytest.param("caf\xe9", '"caf\\u00e9"', id="latin-1"),
        pytest.param("\u20ac", '"\\u20ac"', id="bmp"),
        pytest.param(NOT_UTF8, '"caf\\xff"', id="surrogateescape-byte"),
        pytest.param("\ud800", '"\\ud800"', id="other-lone-surrogate"),
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


HOSTILE = [
    pytest.param("mx client=203.0.113.9", id="fake-field"),
    pytest.param('x" action=accept "', id="break-out-of-quotes"),
    pytest.param('x\\" action=accept', id="escaped-quote-break-out"),
    pytest.param("x\\", id="trailing-backslash"),
    pytest.param("x\nNOQUEUE: decision id=forged action=accept", id="newline-forged-line"),
    pytest.param("x\r action=accept", id="carriage-return"),
    pytest.param("x\x00 action=accept", id="nul"),
    pytest.param("\u2028 action=accept", id="unicode-line-separator"),
    pytest.param(NOT_UTF8 + " action=accept", id="surrogateescape"),
    pytest.param("x\x85 action=accept", id="nel"),
]


@pytest.mark.parametrize("value", HOSTILE)
def test_quoted_value_is_one_printable_field(value: str) -> None:
    text = quote(value)
    assert is_one_printable_ascii_line(text)
    _, fields = parse_line(f"NOQUEUE: decision helo={text}")
    assert [key for key, _ in fields] == ["helo"]


@pytest.mark.parametrize(
    "value",
    [p for p in HOSTILE if "surrogate" not in str(p.id)] + [pytest.param("a b\tc\\", id="mixed")],
)
def test_quoted_value_reads_back(value: str) -> None:
    _, [(_, read)] = parse_line(f"NOQUEUE: decision helo={quote(value)}")
    assert read == value


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(NOT_UTF8, "caf\xff", id="byte-0xff-and-U+00FF-both-render-as-xff"),
        pytest.param("\U0001f600", "\u1f600", id="astral-renders-as-5-hex-digits-like-U+1F60-0"),
    ],
)
def test_distinct_values_quote_distinctly(one: str, other: str) -> None:
    assert quote(one) != quote(other)


# --- format_decision ---------------------------------------------------------------------------

ZEN = IpList(name="SPAMHAUS_ZEN", zone="zen.spamhaus.org", score=10)
DNSWL = IpList(name="DNSWL", zone="list.dnswl.org", score=-5)
SPAMCOP = IpList(name="SPAMCOP", zone="bl.spamcop.net", score=6)

LISTS = (
    ListOutcome(ZEN, ListStatus.LISTED, ("127.0.0.2", "127.0.0.10"), latency_ms=3.4),
    ListOutcome(DNSWL, ListStatus.CLEAN, latency_ms=2.0),
    ListOutcome(SPAMCOP, ListStatus.UNUSABLE, failure="deadline", latency_ms=2000.0),
)


def decision(**changes: object) -> Decision:
    values: dict[str, object] = {
        "decision_id": "5f3a9c01d2",
        "queue_id": "3F2A1B4C5D",
        "client_address": "192.0.2.10",
        "client_name": "unknown",
        "helo": "mx.example",
        "sender": "<a@example.org>",
        "accepted": ("<c@example.com>",),
        "refused": ("<b@example.com>", "<d@example.com>"),
        "stage": "rcpt",
        "verdict": Verdict(
            11.5,
            (Hit("SPAMHAUS_SBL", 10.0, "listed"), Hit("MISSING_DATE", 1.5, "no date")),
            Action.REJECT,
        ),
        "enforced": Enforcement(Action.REJECT, rejection("Message refused: listed")),
        "mode": Mode.ENFORCE,
        "lists": LISTS,
        "lists_ignored": None,
        "policy_digest": "4e1f0c9a7b21",
    }
    values.update(changes)
    return Decision(**values)  # type: ignore[arg-type]  # the test's keyword bag is untyped


def test_full_line() -> None:
    assert format_decision(decision()) == (
        "3F2A1B4C5D: decision id=5f3a9c01d2 client=192.0.2.10 client_name=unknown "
        "helo=mx.example from=<a@example.org> rcpt=<c@example.com> "
        "refused=<b@example.com>,<d@example.com> stage=rcpt action=reject enforced=reject "
        "mode=enforce score=11.5 hits=SPAMHAUS_SBL:10,MISSING_DATE:1.5 fails=SPAMCOP_FAIL "
        "lists=SPAMHAUS_ZEN:listed:127.0.0.2+127.0.0.10:3ms,DNSWL:clean:2ms,"
        "SPAMCOP:unusable:deadline:2000ms policy=4e1f0c9a7b21"
    )


def test_no_queue_id_is_noqueue() -> None:
    assert format_decision(decision(queue_id="")).startswith("NOQUEUE: decision id=5f3a9c01d2 ")


def test_waived_and_ignored_keys_in_order() -> None:
    line = format_decision(
        decision(
            enforced=Enforcement(Action.TAG, waived_by="observe"),
            mode=Mode.OBSERVE,
            lists_ignored=ListsIgnored.AUTHENTICATED,
        )
    )
    _, fields = parse_line(line)
    assert [key for key, _ in fields] == [
        "id",
        "client",
        "client_name",
        "helo",
        "from",
        "rcpt",
        "refused",
        "stage",
        "action",
        "enforced",
        "waived_by",
        "mode",
        "score",
        "hits",
        "fails",
        "lists",
        "lists_ignored",
        "policy",
    ]
    values = dict(fields)
    assert (values["action"], values["enforced"], values["waived_by"]) == (
        "reject",
        "tag",
        "observe",
    )
    assert (values["mode"], values["lists_ignored"]) == ("observe", "authenticated")


def test_empty_optional_keys_are_left_out_and_always_keys_stay() -> None:
    line = format_decision(
        decision(
            queue_id="",
            client_name="",
            helo="",
            sender="",
            accepted=(),
            refused=(),
            stage="connect",
            verdict=Verdict(0.0, (), Action.ACCEPT),
            enforced=Enforcement(Action.ACCEPT),
            lists=(),
            policy_digest="",
        )
    )
    _, fields = parse_line(line)
    assert fields == [
        ("id", "5f3a9c01d2"),
        ("client", "192.0.2.10"),
        ("rcpt", ""),
        ("refused", ""),
        ("stage", "connect"),
        ("action", "accept"),
        ("enforced", "accept"),
        ("mode", "enforce"),
        ("score", "0.0"),
    ]


def test_empty_always_present_value_is_bare() -> None:
    line = format_decision(decision(accepted=(), refused=()))
    assert " rcpt= refused= stage=rcpt " in line


def test_hits_and_scores_render_compactly() -> None:
    hits = (Hit("DNSWL_HIGH", -10.0, "d"), Hit("A", 0.25, "d"), Hit("B", 0.0, "d"))
    line = format_decision(decision(verdict=Verdict(-9.75, hits, Action.ACCEPT)))
    values = dict(parse_line(line)[1])
    assert (values["score"], values["hits"]) == ("-9.8", "DNSWL_HIGH:-10,A:0.25,B:0")


def test_every_unusable_list_is_a_fail_marker() -> None:
    lists = (
        ListOutcome(ZEN, ListStatus.UNUSABLE, ("127.255.255.254",), failure="error-code"),
        ListOutcome(DNSWL, ListStatus.CLEAN),
        ListOutcome(SPAMCOP, ListStatus.UNUSABLE, failure="timeout", latency_ms=1000.0),
    )
    values = dict(parse_line(format_decision(decision(lists=lists)))[1])
    assert values["fails"] == "SPAMHAUS_ZEN_FAIL,SPAMCOP_FAIL"


@pytest.mark.parametrize(
    ("outcome", "rendered"),
    [
        pytest.param(
            ListOutcome(ZEN, ListStatus.LISTED, ("127.0.0.2",), latency_ms=12.6),
            "SPAMHAUS_ZEN:listed:127.0.0.2:13ms",
            id="listed",
        ),
        pytest.param(
            ListOutcome(ZEN, ListStatus.LISTED, ("127.0.0.10", "127.0.0.2"), latency_ms=0.2),
            "SPAMHAUS_ZEN:listed:127.0.0.10+127.0.0.2:0ms",
            id="listed-several-codes",
        ),
        pytest.param(ListOutcome(DNSWL, ListStatus.CLEAN, latency_ms=4.0), "DNSWL:clean:4ms"),
        pytest.param(
            ListOutcome(
                ZEN, ListStatus.UNUSABLE, ("127.255.255.254",), failure="error-code", latency_ms=5
            ),
            "SPAMHAUS_ZEN:unusable:error-code:127.255.255.254:5ms",
            id="unusable-with-codes",
        ),
        pytest.param(
            ListOutcome(ZEN, ListStatus.UNUSABLE, failure="servfail", latency_ms=30.0),
            "SPAMHAUS_ZEN:unusable:servfail:30ms",
            id="unusable-without-codes",
        ),
        pytest.param(
            ListOutcome(ZEN, ListStatus.UNUSABLE, failure="resolver-error"),
            "SPAMHAUS_ZEN:unusable:resolver-error",
            id="no-latency",
        ),
    ],
)
def test_render_list(outcome: ListOutcome, rendered: str) -> None:
    assert render_list(outcome) == rendered


@pytest.mark.parametrize("value", HOSTILE)
def test_client_values_cannot_forge_a_field_or_a_line(value: str) -> None:
    line = format_decision(
        decision(
            client_name=value,
            helo=value,
            sender=value,
            accepted=(value,),
            refused=(value,),
        )
    )
    assert is_one_printable_ascii_line(line)
    prefix, fields = parse_line(line)
    assert prefix == "3F2A1B4C5D"
    assert [key for key, _ in fields] == [
        key for key, _ in parse_line(format_decision(decision()))[1]
    ]
    values = dict(fields)
    assert (values["client"], values["action"]) == ("192.0.2.10", "reject")
    assert values["helo"] == values["rcpt"] == values["from"] == unescape(quote(value))


# --- a list that could not be asked: tempfail_by -----------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "rendered"),
    [
        pytest.param(
            Verdict(0.0, (), Action.TEMPFAIL, tempfail_by=("SPAMHAUS_ZEN",)),
            "unusable:SPAMHAUS_ZEN",
            id="one",
        ),
        pytest.param(
            Verdict(0.0, (), Action.TEMPFAIL, tempfail_by=("SPAMHAUS_ZEN", "DBL")),
            "unusable:SPAMHAUS_ZEN,unusable:DBL",
            id="several",
        ),
        pytest.param(
            Verdict(
                0.0,
                (),
                Action.ACCEPT,
                trial_score=0.0,
                trial_action=Action.TEMPFAIL,
                trial_tempfail_by=("MAILSPIKE",),
            ),
            "unusable:MAILSPIKE(observe)",
            id="list-on-trial",
        ),
    ],
)
def test_tempfail_by_names_each_list(verdict: Verdict, rendered: str) -> None:
    values = dict(parse_line(format_decision(decision(verdict=verdict)))[1])
    assert values["tempfail_by"] == rendered


def test_tempfail_by_follows_what_was_enforced() -> None:
    line = format_decision(
        decision(
            verdict=Verdict(0.0, (), Action.TEMPFAIL, tempfail_by=("SPAMCOP",)),
            enforced=Enforcement(Action.ACCEPT, waived_by="observe"),
        )
    )
    keys = [key for key, _ in parse_line(line)[1]]
    assert keys[keys.index("action") :][:5] == [
        "action",
        "enforced",
        "waived_by",
        "tempfail_by",
        "mode",
    ]
    assert (
        " action=tempfail enforced=accept waived_by=observe tempfail_by=unusable:SPAMCOP " in line
    )


# What a session leaves behind when a list with `on_unusable: tempfail` cannot be asked: the
# reply, the decision line and the metric, on a scripted resolver that answers SERVFAIL.

OVERLOAD = """
thresholds: {tag: 3, greylist: null, tempfail: null, reject: 10}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: zen.test
    on_unusable: tempfail
    hits: [{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the SBL}]
domain_lists:
  - name: DBL
    display: Example DBL
    zone: dbl.test
    check_names: [from]
    on_unusable: tempfail
    hits: [{name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}]
"""
CLIENT_QUERY = ("1.2.0.192.zen.test", "A")
FROM_QUERY = ("spam.example.dbl.test", "A")
SERVFAIL = DnsAnswer(AnswerKind.SERVFAIL)
NXDOMAIN = DnsAnswer(AnswerKind.NXDOMAIN)
_LOGGED = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


class Overloaded:
    """Sessions of one daemon whose lists answer as scripted, with their log and metrics."""

    def __init__(self, script: dict[tuple[str, str], DnsAnswer]) -> None:
        self.log: list[str] = []
        self.metrics = Metrics()
        ids = (f"id{n:04d}" for n in itertools.count(1))
        self.runtime = Runtime(
            Engine(schema.load(Policy, OVERLOAD, "t.yaml")),
            ScriptedLookups(script),
            clock=FakeClock(),
            new_id=lambda: next(ids),
            log=self.log.append,
            metrics=self.metrics,
        )

    def session(self) -> Session:
        session = Session(self.runtime)
        session.connect("unknown", ipaddress.ip_address("192.0.2.1"), {})
        session.helo("mx.example.org")
        session.mail("<a@example.org>", False)
        return session

    def logged(self) -> dict[str, str]:
        (line,) = self.log
        return dict(_LOGGED.findall(line.partition(": decision ")[2]))

    def deferrals(self, name: str, enforced: str) -> float:
        labels = {"list": name, "enforced": enforced}
        value = self.metrics.registry.get_sample_value("spamgate_unusable_tempfail_total", labels)
        return value or 0.0


def test_an_ip_list_that_cannot_be_asked_defers_at_rcpt() -> None:
    daemon = Overloaded({CLIENT_QUERY: SERVFAIL})
    session = daemon.session()
    decision = session.rcpt("<user@example.com>")
    session.close()
    assert decision.result is RcptResult.REFUSE and decision.reply is not None
    assert decision.reply == Reply(
        451,
        "4.7.1",
        "Cannot check your address against Example ZEN right now, please try again later"
        " (id id0001)",
    )
    line = daemon.logged()
    assert (line["stage"], line["action"], line["enforced"]) == ("rcpt", "tempfail", "tempfail")
    assert (line["tempfail_by"], line["fails"]) == ("unusable:ZEN", "ZEN_FAIL")
    assert line["lists"] == "ZEN:unusable:servfail:0ms"
    assert daemon.deferrals("ZEN", "tempfail") == 1


def test_postmaster_is_accepted_and_the_would_be_deferral_counted_as_waived() -> None:
    daemon = Overloaded({CLIENT_QUERY: SERVFAIL})
    session = daemon.session()
    assert session.rcpt("<postmaster@example.com>").result is RcptResult.CONTINUE
    message = session.end_of_message("QID1")
    session.close()
    assert (message.action, message.reply) == (Action.ACCEPT, None)
    line = daemon.logged()
    assert (line["action"], line["enforced"], line["waived_by"]) == ("tempfail", "accept", "exempt")
    assert line["tempfail_by"] == "unusable:ZEN"
    assert (daemon.deferrals("ZEN", "tempfail"), daemon.deferrals("ZEN", "accept")) == (0, 1)


def test_a_from_domain_list_that_cannot_be_asked_defers_at_end_of_message() -> None:
    daemon = Overloaded({CLIENT_QUERY: NXDOMAIN, FROM_QUERY: SERVFAIL})
    session = daemon.session()
    assert session.rcpt("<user@example.com>").result is RcptResult.CONTINUE
    session.header("From", "Someone <a@spam.example>")
    message = session.end_of_message("QID2")
    session.close()
    assert message.action is Action.TEMPFAIL
    assert message.reply is not None
    assert (message.reply.code, message.reply.status) == (451, "4.7.1")
    assert message.reply.text.startswith("Cannot check your address against Example DBL right")
    line = daemon.logged()
    assert (line["stage"], line["action"], line["tempfail_by"]) == (
        "eom",
        "tempfail",
        "unusable:DBL",
    )
    assert daemon.deferrals("DBL", "tempfail") == 1


def test_a_list_that_answers_defers_nothing() -> None:
    daemon = Overloaded({CLIENT_QUERY: NXDOMAIN})
    session = daemon.session()
    assert session.rcpt("<user@example.com>").result is RcptResult.CONTINUE
    session.close()
    assert "tempfail_by" not in daemon.logged()
    assert daemon.deferrals("ZEN", "tempfail") == 0
