"""core/headerfacts.py: header fields -> fact values, for every fact; hostile input never raises."""

from __future__ import annotations

import datetime

import pytest

from spamgate.core import headers
from spamgate.core.headerfacts import (
    _NAMES_A_HOST,
    FACTS,
    MAX_FIELDS,
    MAX_VALUE_CHARS,
    FactType,
    HeaderView,
)
from spamgate.core.received import OurHosts, parse_received, received_time

END = datetime.datetime(2026, 12, 7, 8, 0, tzinfo=datetime.UTC)
RCVD = "from mail.example.org (mail.example.org [192.0.2.1]) by mx.example.net; {date}"
RCVD_8 = RCVD.format(date="Mon, 7 Dec 2026 08:00:00 +0000")
DATE_10 = "Mon, 7 Dec 2026 10:00:00 +0000"

Fields = list[tuple[str, str]]


# The host spamgate serves and a backup MX in front of it (received.external.*).
OURS = OurHosts.parse(["mx.example.net", "10.0.0.0/8"])
AT_10 = "Mon, 7 Dec 2026 10:00:00 +0000"
# Postfix's own field for mail the backup MX passed on, and the backup MX's for the bot.
FROM_BACKUP = f"from mx2 (mx2.example.net [10.0.0.9]) by mx.example.net (Postfix); {AT_10}"
AT_BACKUP = f"from bot (unknown [198.51.100.7]) by mx2; {AT_10}"
CLAIMS_US = f"from mx.example.net (dsl-7.isp.example [198.51.100.7]) by mx.example.net; {AT_10}"
NOT_BY_US = "from a (a [192.0.2.1]) by elsewhere.example; " + AT_10
OE6 = "Microsoft Outlook Express 6.00.2800.1106"
OL10 = "Microsoft Outlook, Build 10.0.2627"
MIMEOLE = "Produced By Microsoft MimeOLE V6.00.2800.1106"


def view(fields: Fields) -> HeaderView:
    return HeaderView.of(fields, END, OURS)


CASES = [
    # received.hops / received.malformed
    pytest.param([], "received.hops", 0.0, id="hops-none"),
    pytest.param([("Received", RCVD_8)] * 3, "received.hops", 3.0, id="hops-three"),
    pytest.param([("Received", RCVD_8)], "received.malformed", 0.0, id="rcvd-wellformed"),
    pytest.param(
        [("Received", "by mx.example.net (Postfix, from userid 1000); " + DATE_10)],
        "received.malformed",
        0.0,
        id="rcvd-local-submission-no-from-is-fine",
    ),
    pytest.param([("Received", "garbage")], "received.malformed", 1.0, id="rcvd-garbage"),
    pytest.param(
        [("Received", "garbage; " + DATE_10)], "received.malformed", 1.0, id="rcvd-no-from-no-by"
    ),
    pytest.param(
        [("Received", "(qmail 7 invoked by uid 500); " + DATE_10)],
        "received.malformed",
        0.0,
        id="rcvd-qmail-comment-stamp-is-fine",
    ),
    pytest.param(
        [("Received", "from a (b [192.0.2.1]) by mx.example.net")],
        "received.malformed",
        1.0,
        id="rcvd-no-time",
    ),
    # received.external.* / received.relays_passed / received.forged_hops
    pytest.param(
        [("Received", RCVD_8)], "received.external.address", "192.0.2.1", id="ext-address-direct"
    ),
    pytest.param(
        [("Received", FROM_BACKUP), ("Received", AT_BACKUP)],
        "received.external.address",
        "198.51.100.7",
        id="ext-address-behind-backup-mx",
    ),
    pytest.param(
        [("Received", NOT_BY_US)], "received.external.address", None, id="ext-address-not-by-us"
    ),
    pytest.param(
        [("Received", FROM_BACKUP), ("Received", AT_BACKUP)],
        "received.external.helo",
        "bot",
        id="ext-helo",
    ),
    pytest.param([], "received.external.helo", None, id="ext-helo-absent"),
    pytest.param(
        [("Received", RCVD_8)],
        "received.external.reverse_name",
        "mail.example.org",
        id="ext-rdns",
    ),
    pytest.param(
        [("Received", FROM_BACKUP), ("Received", AT_BACKUP)],
        "received.external.reverse_name",
        None,
        id="ext-rdns-unknown-absent",
    ),
    pytest.param([("Received", RCVD_8)], "received.relays_passed", 0.0, id="relays-none"),
    pytest.param(
        [("Received", FROM_BACKUP), ("Received", AT_BACKUP)],
        "received.relays_passed",
        1.0,
        id="relays-backup-mx",
    ),
    pytest.param(
        [("Received", FROM_BACKUP)], "received.relays_passed", None, id="relays-all-ours-absent"
    ),
    pytest.param([("Received", RCVD_8)], "received.forged_hops", 0.0, id="forged-none"),
    pytest.param(
        [("Received", CLAIMS_US), ("Received", RCVD_8)],
        "received.forged_hops",
        1.0,
        id="forged-claims-our-name",
    ),
    pytest.param([("Received", NOT_BY_US)], "received.forged_hops", None, id="forged-absent"),
    # received.time_reversals
    pytest.param(
        [("Received", RCVD.format(date=DATE_10)), ("Received", RCVD_8)],
        "received.time_reversals",
        0.0,
        id="times-in-order",
    ),
    pytest.param(
        [("Received", RCVD_8), ("Received", RCVD.format(date=DATE_10))],
        "received.time_reversals",
        1.0,
        id="times-backwards",
    ),
    # date.skew_hours
    pytest.param([("Date", DATE_10)], "date.skew_hours", 2.0, id="skew-against-end-of-message"),
    pytest.param(
        [("Received", RCVD.format(date="Mon, 7 Dec 2026 11:00:00 +0000")), ("Date", DATE_10)],
        "date.skew_hours",
        -1.0,
        id="skew-against-topmost-received",
    ),
    pytest.param(
        [("Received", "garbage"), ("Received", RCVD_8), ("Date", DATE_10)],
        "date.skew_hours",
        2.0,
        id="skew-topmost-received-with-a-time",
    ),
    pytest.param([], "date.skew_hours", None, id="skew-no-date-absent"),
    pytest.param([("Date", "yesterday")], "date.skew_hours", None, id="skew-bad-date-absent"),
    # message_id.*
    pytest.param([], "message_id.missing", True, id="msgid-missing"),
    pytest.param([("Message-ID", "<a@b>")], "message_id.missing", False, id="msgid-present"),
    pytest.param([], "message_id.malformed", None, id="msgid-malformed-absent"),
    pytest.param([("Message-ID", " <a.1@x.org>")], "message_id.malformed", False, id="msgid-ok"),
    pytest.param([("Message-ID", "a@x.org")], "message_id.malformed", True, id="msgid-no-angle"),
    pytest.param([("Message-ID", "<ax.org>")], "message_id.malformed", True, id="msgid-no-at"),
    pytest.param(
        [("From", "A <a@mail.example.com>"), ("Message-ID", "<1@smtp.example.com>")],
        "message_id.from_domain",
        True,
        id="msgid-same-organization",
    ),
    pytest.param(
        [("From", "a@example.com"), ("Message-ID", "<1@bulk.example.net>")],
        "message_id.from_domain",
        False,
        id="msgid-foreign",
    ),
    pytest.param(
        [("Message-ID", "<1@example.com>")], "message_id.from_domain", None, id="msgid-no-from"
    ),
    # mailer
    pytest.param([("User-Agent", "Mutt/2.2")], "mailer", "Mutt/2.2", id="mailer-user-agent"),
    pytest.param(
        [("User-Agent", "Mutt"), ("X-Mailer", "=?utf-8?q?Outl=C3=B6ok?=")],
        "mailer",
        "Outlöok",
        id="mailer-x-mailer-first-decoded",
    ),
    pytest.param([], "mailer", None, id="mailer-absent"),
    # subject.*
    pytest.param([("Subject", "FREE MONEY FOR YOU")], "subject.caps_ratio", 1.0, id="caps-all"),
    pytest.param(
        [("Subject", "Meeting notes tomorrow")], "subject.caps_ratio", 1 / 20, id="caps-one"
    ),
    pytest.param([("Subject", "RE: OK!!")], "subject.caps_ratio", None, id="caps-too-short"),
    pytest.param([], "subject.caps_ratio", None, id="caps-no-subject"),
    pytest.param([("Subject", "Win $$$ now!!! ?")], "subject.punctuation", 7.0, id="punct"),
    pytest.param([("Subject", "")], "subject.punctuation", 0.0, id="punct-empty"),
    pytest.param([], "subject.punctuation", None, id="punct-absent"),
    pytest.param([("Subject", "=?utf-8?b?aGk=?=")], "subject.undecodable", False, id="enc-ok"),
    pytest.param(
        [("Subject", "=?x-nonsense?q?hi?=")], "subject.undecodable", True, id="enc-unknown-charset"
    ),
    pytest.param([("Subject", "=?utf-8?b?a*b=?=")], "subject.undecodable", True, id="enc-bad-b64"),
    pytest.param(
        [("Subject", "=?utf-8?q?=FF=FE?=")], "subject.undecodable", True, id="enc-not-utf8"
    ),
    pytest.param([], "subject.undecodable", None, id="enc-absent"),
    # recipients.*
    pytest.param(
        [("To", "a@x.org, B <b@y.org>"), ("Cc", "c@z.org")],
        "recipients.count",
        3.0,
        id="count-to-and-cc",
    ),
    pytest.param([("To", "not an address")], "recipients.count", 0.0, id="count-malformed"),
    pytest.param([], "recipients.undisclosed", True, id="undisclosed-no-to"),
    pytest.param(
        [("To", "undisclosed-recipients:;")], "recipients.undisclosed", True, id="undisclosed-group"
    ),
    pytest.param([("To", "a@x.org")], "recipients.undisclosed", False, id="disclosed"),
    pytest.param(
        [("From", "A <a@X.org>"), ("To", "a@x.org")], "recipients.to_is_from", True, id="to-is-from"
    ),
    pytest.param(
        [("From", "a@x.org"), ("To", "a@x.org, b@x.org")],
        "recipients.to_is_from",
        False,
        id="to-is-not-from",
    ),
    pytest.param([("To", "a@x.org")], "recipients.to_is_from", None, id="to-is-from-absent"),
    # reply_to.from_domain
    pytest.param(
        [("From", "a@example.com"), ("Reply-To", "b@lists.example.com")],
        "reply_to.from_domain",
        True,
        id="replyto-same",
    ),
    pytest.param(
        [("From", "a@example.com"), ("Reply-To", "b@example.net")],
        "reply_to.from_domain",
        False,
        id="replyto-foreign",
    ),
    pytest.param([("From", "a@example.com")], "reply_to.from_domain", None, id="replyto-absent"),
    # mailer.inconsistent
    pytest.param([("X-Mailer", OE6)], "mailer.inconsistent", True, id="oe-without-mimeole"),
    pytest.param(
        [("X-Mailer", OE6), ("X-MimeOLE", MIMEOLE)], "mailer.inconsistent", False, id="oe"
    ),
    pytest.param(
        [("X-Mailer", "Microsoft Outlook Express Macintosh Edition - 5.01 (1630)")],
        "mailer.inconsistent",
        None,
        id="oe-mac-writes-no-mimeole",
    ),
    pytest.param([("X-Mailer", OL10)], "mailer.inconsistent", True, id="outlook-bare"),
    pytest.param(
        [("X-Mailer", OL10), ("X-MimeOLE", MIMEOLE)], "mailer.inconsistent", False, id="ol-2002"
    ),
    pytest.param(
        [("X-Mailer", "Microsoft Outlook 16.0"), ("Thread-Index", "AdkXyZ")],
        "mailer.inconsistent",
        False,
        id="outlook-2016",
    ),
    pytest.param(
        [("X-Mailer", "Microsoft Office Outlook 12.0")],
        "mailer.inconsistent",
        True,
        id="outlook-2007-bare",
    ),
    pytest.param(
        [("User-Agent", "Microsoft Outlook 16.0")],
        "mailer.inconsistent",
        None,
        id="outlook-never-writes-user-agent-not-judged",
    ),
    pytest.param([("X-Mailer", "Mutt/1.5")], "mailer.inconsistent", None, id="other-mailer"),
    pytest.param([], "mailer.inconsistent", None, id="no-mailer"),
    # mime.* and content_type
    pytest.param(
        [("Content-Type", 'multipart/alternative; boundary="=_x"')],
        "mime.multipart_without_boundary",
        False,
        id="multipart-boundary",
    ),
    pytest.param(
        [("Content-Type", "Multipart/Mixed; charset=us-ascii")],
        "mime.multipart_without_boundary",
        True,
        id="multipart-no-boundary",
    ),
    pytest.param(
        [("Content-Type", 'multipart/mixed; boundary=""')],
        "mime.multipart_without_boundary",
        True,
        id="multipart-empty-boundary",
    ),
    pytest.param(
        [("Content-Type", "text/plain")],
        "mime.multipart_without_boundary",
        False,
        id="not-multipart",
    ),
    pytest.param([], "mime.multipart_without_boundary", None, id="multipart-absent"),
    pytest.param(
        [("Content-Type", 'text/plain; format=flowed; CHARSET="KOI8-R"')],
        "mime.charset",
        "koi8-r",
        id="charset-quoted",
    ),
    pytest.param([("Content-Type", "text/plain")], "mime.charset", None, id="charset-absent"),
    pytest.param(
        [("Content-Type", " Text/HTML ; charset=utf-8")], "content_type", "text/html", id="ctype"
    ),
    pytest.param([], "content_type", None, id="ctype-absent"),
]


@pytest.mark.parametrize(("fields", "name", "expected"), CASES)
def test_fact_value(fields: Fields, name: str, expected: object) -> None:
    value = view(fields).fact(name)
    if isinstance(expected, float):
        assert value == pytest.approx(expected)
    else:
        assert value == expected


def test_every_fact_has_a_case() -> None:
    covered = {case.values[1] for case in CASES}
    assert covered == set(FACTS)


def test_values_have_the_declared_type() -> None:
    fields = [name for case in CASES for name in case.values[0]]  # type: ignore[union-attr]
    whole = view(fields)
    kinds = {FactType.BOOLEAN: bool, FactType.NUMBER: float, FactType.TEXT: str}
    for name, fact in FACTS.items():
        value = whole.fact(name)
        assert value is None or type(value) is kinds[fact.type], name


def test_computed_once() -> None:
    calls = []
    one = view([("Subject", "HELLO THERE WORLD")])
    original = FACTS["subject.caps_ratio"].compute
    object.__setattr__(FACTS["subject.caps_ratio"], "compute", lambda v: calls.append(1) or 1.0)
    try:
        assert one.fact("subject.caps_ratio") == 1.0
        assert one.fact("subject.caps_ratio") == 1.0
    finally:
        object.__setattr__(FACTS["subject.caps_ratio"], "compute", original)
    assert calls == [1]


def test_view_is_bounded() -> None:
    many = view([("Received", RCVD_8)] * (MAX_FIELDS + 50) + [("Subject", "x" * 100_000)])
    assert len(many.fields) == MAX_FIELDS
    assert many.fact("received.hops") == float(MAX_FIELDS)
    assert many.fact("subject.caps_ratio") is None  # the Subject came after the cut
    one = view([("Subject", "X" * 100_000)])
    assert len(one.fields[0][1]) == MAX_VALUE_CHARS


NOT_UTF8 = b"\xff\xfe ABC \xc3".decode("utf-8", "surrogateescape")
HOSTILE = [
    pytest.param([(n, NOT_UTF8) for n in ("Subject", "From", "To", "Date")], id="not-utf8"),
    pytest.param(
        [(n, NOT_UTF8) for n in ("Message-ID", "Content-Type", "Received", "X-Mailer")],
        id="not-utf8-more",
    ),
    pytest.param([(n, "=?" * 4000) for n in ("Subject", "Content-Type", "X-Mailer")], id="huge"),
    pytest.param(
        [("Content-Type", 'multipart/x; a="' + "\\" * 8000), ("Message-ID", "<" * 8000)],
        id="unterminated",
    ),
    pytest.param([("From", "a@b.org")] * 60 + [("To", "x@y.org")] * 60, id="repeated"),
    pytest.param([("Received", "(" * 5000 + "from by ;")], id="nested-received"),
    pytest.param(
        [(n, "") for n in ("Subject", "From", "To", "Cc", "Reply-To", "Date")], id="empty"
    ),
    pytest.param([("Subject", "\x00\r\n\t=?utf-7?b?Kw?=")], id="controls"),
    pytest.param(
        [("Received", f"from {NOT_UTF8} ({NOT_UTF8} [{NOT_UTF8}]) by mx.example.net; {AT_10}")] * 3,
        id="received-not-utf8-by-us",
    ),
    pytest.param(
        [("Received", FROM_BACKUP)] * 99 + [("Received", "from [::ffff:10.0.0.1] by x")],
        id="received-all-ours",
    ),
    pytest.param([("X-Mailer", OE6 + "\x00" * 8000)], id="mailer-huge"),
]


@pytest.mark.parametrize("fields", HOSTILE)
def test_hostile_input_never_raises(fields: Fields) -> None:
    hostile = view(fields)
    for name in FACTS:
        hostile.fact(name)


def test_undecodable_word_check_is_total() -> None:
    assert headers.has_undecodable_word("=?base64?b?aGk=?=")  # a binary codec, not a charset
    assert not headers.has_undecodable_word("plain text")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(RCVD_8, id="postfix"),
        pytest.param("(qmail 7 invoked by uid 500); " + DATE_10, id="qmail-comment"),
        pytest.param("a; b; " + DATE_10 + " (CET)", id="last-semicolon"),
        pytest.param("from a by b", id="no-time"),
        pytest.param("x" * 5000 + "; " + DATE_10, id="time-past-the-cap"),
        pytest.param(RCVD_8.replace("; ", ";\r\n\t"), id="folded"),
        pytest.param(NOT_UTF8 + "; " + NOT_UTF8, id="not-utf8"),
    ],
)
def test_received_time_agrees_with_parse_received(value: str) -> None:
    """date.skew_hours reads only the time (received_time), as parse_received would."""
    assert received_time(value) == parse_received(value).time


@pytest.mark.parametrize(
    "value",
    [
        "from a (b [192.0.2.1]) by mx",
        "FROM a by mx",
        "by mx.example.net (Postfix, from userid 1000)",
        "  from byzantium.example by mx",
        "from  by mx",
        "from by mx",
        "from\tx by mx",
        "from (comment) by mx",
        "from [192.0.2.1] by mx",
        "by  mx",
        "by (x)",
        "(qmail 1 invoked by uid 5)",
        "frOm x",
        "bye",
    ],
)
def test_the_fast_path_agrees_with_parse_received(value: str) -> None:
    """received.malformed skips the whole parse when the stamp opens with a host name: it must
    then be one parse_received also reads a from or by host out of."""
    fast = _NAMES_A_HOST.match(value)
    if fast:
        hop = parse_received(value)
        assert hop.from_name or hop.by
