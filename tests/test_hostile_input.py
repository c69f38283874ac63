"""Hostile input, property-based: whatever an SMTP client (or a confused MTA) sends, spamgate
answers with a defined milter action and writes one clean log line.

Two rings are driven with hypothesis, over the same generated SMTP dialogues:
- the Session, with strings as pymilter delivers them (bytes that are not UTF-8 as lone
  surrogates, by surrogateescape) and with lone surrogates no MTA can send, because the
  Session and the modules under it promise to be total over str;
- the adapter, SpamgateMilter, through pymilter's TestCtx, fed bytes through the *_bytes entry
  points that libmilter's callbacks call, and with a getsymval that behaves as pymilter's C
  layer does (a macro value that is not UTF-8 raises UnicodeDecodeError).

The policy has a rule of every kind, an IP list and two domain lists (their zones hold access
keys), allow and deny lists and recipient policies, so the paths hostile input can reach all
run. The resolver answers every question at once, with answers drawn from a hostile set too
(garbage records, codes outside 127/8, blocked codes, failures), so no example waits on a
deadline. `test_the_harness_reaches_every_kind_of_evidence` shows the harness is wired: a
crafted dialogue fires lists, header rules, HELO and reverse DNS rules.

Properties:
- no exception escapes a Session method or an adapter callback, and the adapter never falls
  back on `on_error` (an internal error is a bug even though the guard hides it);
- every answer is defined: no-reply callbacks return CONTINUE, the others CONTINUE, ACCEPT,
  REJECT or TEMPFAIL; a refusal carries a reply whose class matches (5xx with REJECT, 4xx with
  TEMPFAIL), and no other answer sets one; Session decisions carry a known action and a
  finite score;
- reply texts are printable ASCII within libmilter's line limit, carry no lone `%`, start
  with one of the policy's texts (no echo of what the client said) and never name a DNS
  list zone;
- header actions carry values libmilter can send (UTF-8 encodable, no CR, LF or NUL);
- every decision log line is one line of printable ASCII that parses back into known keys,
  one line per decision id.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import math
import socket
import time
import traceback
import zlib
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import Milter
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from Milter import testctx

from spamgate.core import schema
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.adapter import SpamgateMilter, client_address
from spamgate.shell.session import MessageDecision, RcptDecision, RcptResult, Runtime, Session
from tests.fakes import NO_REPLY_BITS, FakeClock
from tests.test_decisionlog import parse_line

# Deterministic and bounded for CI: the same examples on every run, nothing written to a
# hypothesis database in the repository, no deadline (a loaded CI machine is not a bug).
BOUNDED = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)

POLICY = r"""
resolver: {deadline: 0.05}
on_error: tempfail
thresholds: {tag: 2, quarantine: 5, greylist: 6, tempfail: 8, reject: 12}
our_names: [mx.example.net]
our_addresses: [198.51.100.25/32]
replies:
  reject: "Rejected: {reasons} [{id}] {score} {client}"
  tempfail: "Later: {reasons} [{id}] {score} {client}"
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: s3cr3tkey.zen.test
    error_codes: [127.0.0.255]
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10-127.0.0.11], score: 6}
  - name: WL
    zone: wl-k3y.test
    hits:
      - {name: WL_HI, codes: ["127.0.*.3"], score: -3}
domain_lists:
  - name: DBL
    zone: dbl-k3y.test
    hits:
      - {name: DBL_SPAM, codes: [127.0.1.2], score: 7, description: a spam domain}
  - name: EXACT
    zone: exact-k3y.test
    query: exact
    score: 2
rules:
  - {name: SUBJECT_PHARMA, score: 4, description: the Subject advertises pharmacy products,
     header: {name: Subject, matches: '(?i)\bv[i1]agra\b'}}
  - {name: SUBJECT_SHOUTS, score: 1, description: the Subject shouts,
     header: {name: Subject, matches: '^[^a-z]{12,}$'}}
  - {name: SUBJECT_8BIT, score: 0.5, description: raw 8-bit Subject,
     header: {name: Subject, matches_raw: '[\x80-\xff]'}}
  - {name: FROM_BANK, score: 3, description: the From poses as a bank,
     header: {name: From, matches: '(?i)(bank|paypa[l1])'}}
  - {name: FROM_MALFORMED, score: 2, description: malformed From,
     header: {name: From, malformed: true}}
  - {name: TO_MALFORMED, score: 1, description: malformed To, header: {name: To, malformed: true}}
  - {name: DATE_MALFORMED, score: 1, description: malformed Date,
     header: {name: Date, malformed: true}}
  - {name: NO_DATE, score: 1, description: no Date, header: {name: Date, missing: true}}
  - {name: NO_MSGID, score: 1, description: no Message-ID,
     header: {name: Message-ID, missing: true}}
  - {name: MANY_RECEIVED, score: 1, description: many hops,
     header: {name: Received, count_over: 3}}
  - {name: DATE_AHEAD, score: 1, description: dated in the future, date_ahead_hours: 24}
  - {name: DATE_BEHIND, score: 1, description: dated long ago, date_behind_days: 30}
  - {name: FROM_ELSEWHERE, score: 1, description: From is not the sender,
     from_domain: not_sender_domain}
  - {name: HELO_BARE, score: 2, description: bare IP HELO, helo: bare_ip}
  - {name: HELO_SHORT, score: 1, description: HELO is not a FQDN, helo: not_fqdn}
  - {name: HELO_OURS, score: 5, description: HELO claims to be us, helo: ours}
  - {name: HELO_NXDOMAIN, score: 1, description: HELO does not resolve, helo: unresolvable}
  - {name: HELO_NOT_PTR, score: 1, description: HELO is not the PTR domain, helo: not_ptr_domain}
  - {name: HELO_LOCAL, score: 1, description: HELO says localhost,
     helo_matches: '(?i)^(localhost|user)'}
  - {name: RDNS_MISSING, score: 1, description: no reverse DNS, rdns: missing}
  - {name: RDNS_UNCONFIRMED, score: 1, description: unconfirmed reverse DNS, rdns: unconfirmed}
  - {name: RDNS_DYNAMIC, score: 1, description: dynamic reverse DNS, rdns: dynamic}
  - {name: RDNS_ISP, score: 1, description: an ISP pool, rdns_matches: '\.isp\.example$'}
  - {name: SENDER_EMPTY, score: 0.5, description: null sender, sender: empty}
  - {name: SENDER_NXDOMAIN, score: 2, description: sender domain does not resolve,
     sender: unresolvable}
  - {name: SENDER_PROMO, score: 1, description: a promo sender, sender_matches: '^(info|promo)@'}
  - {name: RCPT_TRAP, score: 9, description: a spam trap, recipient_matches: '^trap@'}
  - {name: MANY_RCPTS, score: 1, description: many recipients, recipients_over: 3}
  - {name: PHARMA_FROM_LISTED, score: 2, description: pharmacy spam from a listed host,
     composite: {all: [SUBJECT_PHARMA], any: [ZEN_SBL, ZEN_PBL, RDNS_MISSING], not: [WL_HI]}}
allow:
  clients: [192.0.2.200/32]
  helo_names: ["*.partner.example"]
  senders: ["@partner.example"]
  recipients: [vip@example.com]
deny:
  clients: [203.0.113.66/32]
  client_names: ["*.bad.example"]
  helo_names: [evil.example]
  senders: ["@bad.example"]
  recipients: [closed@example.com]
  reply: "Refused by local policy ({client}, id {id})"
recipient_policies:
  - {name: strict, recipients: ["@strict.example"], thresholds: {tag: 1, tempfail: 3, reject: 5}}
  - {name: trial, recipients: ["@trial.example"], mode: observe}
"""

ENGINE = Engine(schema.load(Policy, POLICY, "hostile.yaml"))
# What a reply must never show: the zones (and the access keys in them) of every DNS list.
SECRETS = ("k3y", "s3cr3t", "zen.test", ".test")
# Every reply starts with one of the policy's own texts: nothing the client said comes first.
REPLY_OPENINGS = (
    "Rejected: ",
    "Later: ",
    "Refused by local policy (",
    "Too many recipients: ",
    "Temporary local problem",
    "Greylisted: ",
)
# The keys format_decision writes (spelt out: a new key should be a deliberate change here).
_KEYS = (
    "id client client_name helo from rcpt refused deferred stage action enforced waived_by "
    "greylist allowed_by denied_by mode policy_group score hits trial_action fails rdns lists "
    "lists_ignored policy"
)
DECISION_KEYS = frozenset(_KEYS.split())
# libmilter drops a reply line over 980 characters (smfi_setreply(3)).
MAX_REPLY_LINE = 980


# --- the resolver: every question answered at once, answers drawn from a hostile set ----------


def _records(*texts: str) -> DnsAnswer:
    return DnsAnswer(AnswerKind.RECORDS, texts, ttl=60)


_FAILURES = (
    DnsAnswer(AnswerKind.NXDOMAIN, ttl=60),
    DnsAnswer(AnswerKind.NODATA, ttl=60),
    DnsAnswer(AnswerKind.SERVFAIL, detail="servfail"),
    DnsAnswer(AnswerKind.TIMEOUT, detail="timeout"),
    DnsAnswer(AnswerKind.MALFORMED, detail="\r\nbad\x00"),
)
ANSWERS: Mapping[str, tuple[DnsAnswer, ...]] = {
    "A": (
        *_FAILURES,
        _records("127.0.0.2"),
        _records("127.0.0.10", "127.0.0.11"),
        _records("127.0.1.2"),
        _records("127.0.15.3"),
        _records("127.0.0.255"),
        _records("127.255.255.254"),
        _records("10.0.0.1"),
        _records("192.0.2.1"),
        _records("not-an-address"),
        _records(""),
        _records("::1"),
        _records("127.0.0.2\x00"),
    ),
    "AAAA": (*_FAILURES, _records("2001:db8::25"), _records("garbage"), _records("::ffff:1.2.3.4")),
    "PTR": (
        *_FAILURES,
        _records("mail.client.example.com"),
        _records("x.bad.example"),
        _records("dsl-198-51-100-7.isp.example"),
        _records("mx.partner.example"),
        _records("192.0.2.1", "..", "", "a" * 300),
        _records("b\u00fccher.example", "xn--bcher-kva.example"),
        _records("evil\r\n.example", "nul\x00.example", "\udcff.example"),
    ),
    "MX": (*_FAILURES, _records("10 mx.example.com"), _records("0 ."), _records("garbage")),
}


class InstantLookups:
    """Answers every question at once: from `table` if there, else one of the answers for
    its type, chosen by a hash of the name and a seed."""

    def __init__(
        self,
        answers: Mapping[str, tuple[DnsAnswer, ...]],
        seed: int,
        table: Mapping[tuple[str, str], DnsAnswer] | None = None,
    ) -> None:
        self.answers = answers
        self.seed = seed
        self.table = dict(table or {})
        self.asked: list[tuple[str, str]] = []

    def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]:
        self.asked.append((qname, rdtype))
        future: futures.Future[DnsAnswer] = futures.Future()
        if (qname, rdtype) in self.table:
            future.set_result(self.table[qname, rdtype])
            return future
        options = self.answers.get(rdtype) or _FAILURES
        key = zlib.crc32(qname.encode("utf-8", "surrogatepass")) ^ self.seed
        future.set_result(options[key % len(options)])
        return future


@st.composite
def dns_worlds(draw: st.DrawFn) -> InstantLookups:
    answers = {
        rdtype: tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3)))
        for rdtype, pool in ANSWERS.items()
    }
    return InstantLookups(answers, draw(st.integers(0, 2**32 - 1)))


def make_runtime(resolver: InstantLookups, log: Callable[[str], None]) -> Runtime:
    ids = (f"id{n:04d}" for n in itertools.count(1))
    return Runtime(
        ENGINE, resolver, clock=FakeClock(), now=lambda: NOW, new_id=lambda: next(ids), log=log
    )


# --- strings as an SMTP client can make them -------------------------------------------------

FRAGMENTS = (
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\r\n\t",
    "\n ",
    "\t",
    " ",
    "\x7f",
    "\x1b[31m",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u202e",
    "\u3002",
    "\uff0e",
    "\u212a",  # KELVIN SIGN: lower-cases to ASCII "k"
    "\U0001f4a9",
    "\udcff",  # a non-UTF-8 byte, as surrogateescape delivers it
    "\udc80",
    "\ud800",  # a lone surrogate no MTA can deliver; the Session must still cope
    "\u00e9",
    "\u00df",
    "=?bogus?Q?caf=E9?=",
    "=?utf-8?B?!!!?=",
    "=?utf-8?Q?=FF=FE=?=",
    "=?utf-7?B?K2Rm?=",
    "=?utf-8?B?dmlhZ3Jh?=",  # "viagra"
    "=?x-unknown?q?_?=",
    "=?idna?q?x?=",
    "=?",
    "?=",
    "%",
    "%%",
    "%s",
    "{id}",
    "{reasons}",
    "{0}",
    "\\",
    '"',
    "'",
    "<",
    ">",
    "@",
    ",",
    ";",
    ":",
    "(",
    ")",
    "(((",
    "[",
    "]",
    "viagra",
    "V1AGRA",
    "bank",
    "xn--",
    "xn--zca",
    "s3cr3tkey.zen.test",
    "example.org",
    "192.0.2.1",
    "[IPv6:::1]",
    "Mon, 1 Jan 2024 00:00:00 +0000",
    "31 Feb 2024 25:61:61 +9999",
    "99999",
    " action=accept",
    "\nNOQUEUE: decision id=forged action=accept",
)


def _surrogateescaped(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def wire(text: str) -> bytes:
    """The bytes a str stands for: surrogateescape undone; other lone surrogates as CESU."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def c_string(text: str) -> str:
    """What pymilter's C layer can hand Python for a HELO, header name or client name: valid
    UTF-8 (anything else fails before Python runs) and cut at a NUL (a C string ends there)."""
    valid = wire(text).decode("utf-8", "replace")
    return valid.split("\x00", 1)[0]


hostile_text = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30).map(_surrogateescaped),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=8).map("".join),
)

ODD_HELOS = (
    "",
    " ",
    "   ",
    "192.0.2.1",
    "[192.0.2.1]",
    "198.51.100.25",
    "[198.51.100.25]",
    "[IPv6:2001:db8::1]",
    "[IPv6:fe80::1%eth0]",
    "[IPv6:::ffff:192.0.2.1]",
    "[ipv6:garbage]",
    "[IPv6:192.0.2.1]",
    "[]",
    "[",
    "2001:db8::1",
    "a" * 300,
    "a." * 150,
    "a" * 64 + ".example",
    "b\u00fccher.example",
    "xn--bcher-kva.example",
    "\u4f8b\u3002\u30c6\u30b9\u30c8",
    "mx.example.net",
    "MX.EXAMPLE.NET.",
    "localhost",
    "user-pc",
    "mail.partner.example",
    "evil.example",
    "host\r\nname.example",
    "host\x00.example",
    "\x01\x02\x7f",
    "ex ample.com",
    "-bad-.example",
    "_srv.example",
    "..",
    ".",
    "x.123",
    "mail.client.example.com",
)
helos = st.one_of(st.sampled_from(ODD_HELOS), hostile_text)

LOCAL_PARTS = (
    "a",
    "info",
    "promo",
    "trap",
    "postmaster",
    "Postmaster",
    "abuse",
    "vip",
    "closed",
    '"quoted@local"',
    '"a\\"b"',
    '"unterminated',
    '""',
    "a" * 1000,
    "a..b",
    ".a",
    "\u00e9l\u00e8ve",
    "x\x00y",
    "a b",
)
DOMAINS = (
    "example.org",
    "example.com",
    "Example.COM",
    "example.com.",
    "b\u00fccher.example",
    "xn--bcher-kva.example",
    "strict.example",
    "trial.example",
    "partner.example",
    "bad.example",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "localhost",
    "b" * 1000 + ".example",
    "",
    ".",
    "-x-.example",
    "exa\x00mple.org",
    "exa\r\nmple.org",
)
ADDRESSES = (
    "<>",
    "<a@example.org>",
    "a@example.org",
    "<a@example.org",
    "a@example.org>",
    "<<a@example.org>>",
    "<@a.example,@b.example:u@c.example>",
    "<@relay.example:user@example.com>",
    "<@:u@c.example>",
    "<@relay.example>",
    "<postmaster>",
    "<Postmaster@Example.COM>",
    "<vip@example.com>",
    "<closed@example.com>",
    "<trap@example.com>",
    "<x@partner.example>",
    "<x@bad.example>",
    "",
    " ",
    "<",
    ">",
    "@",
    "a@",
    "@b",
    "a@@b",
    "<a@example.org> SIZE=1000",
    "<" + "a" * 1000 + "@example.org>",
    "<a@" + "b" * 1000 + ">",
)
envelope_addresses = st.one_of(
    st.sampled_from(ADDRESSES),
    st.builds(
        lambda local, domain, brackets: f"<{local}@{domain}>" if brackets else f"{local}@{domain}",
        st.one_of(st.sampled_from(LOCAL_PARTS), hostile_text),
        st.one_of(st.sampled_from(DOMAINS), hostile_text),
        st.booleans(),
    ),
    hostile_text,
)
ESMTP_PARAMS = (
    "SIZE=1000",
    "SIZE=99999999999999999999",
    "BODY=8BITMIME",
    "SMTPUTF8",
    "AUTH=<>",
    "RET=HDRS",
    "ENVID=x%2Bz",
    "NOTIFY=SUCCESS,FAILURE",
    "ORCPT=rfc822;a@example.org",
    "=",
    "",
)
esmtp_params = st.lists(st.one_of(st.sampled_from(ESMTP_PARAMS), hostile_text), max_size=3)

HEADER_NAMES = (
    "Subject",
    "subject",
    "From",
    "FROM",
    "To",
    "Cc",
    "Reply-To",
    "Sender",
    "Date",
    "Message-ID",
    "Received",
    "X-Spam-Status",
    "x-spam-score",
    "X-Spam-\u212aore",
    "",
    " ",
    "Subject ",
    "Sub\x00ject",
    "X\udcffY",
)
HEADER_VALUES = (
    "",
    " ",
    "cheap viagra now",
    "CHEAP PILLS FOR EVERYONE",
    "=?utf-8?B?Y2hlYXAgdmlhZ3Jh?=",
    "=?bogus?Q?v=69agra?=",
    "=?utf-8?B?!!!?=",
    "=?utf-8?Q?=?=",
    "=?" * 200,
    "caf\udce9",
    "line\r\nInjected: header",
    "folded\r\n\tvalue",
    "nul\x00byte",
    "<>",
    "a@example.org",
    "Bank <alerts@login.phish.example>",
    '"a@b" <c@d.example>',
    "a@b@c",
    "<a@b",
    "undisclosed-recipients:;",
    "(" * 500,
    '"unterminated <a@b.example>',
    "a@xn--bcher-kva.example, b@b\u00fccher.example",
    "M <m@evil.example>\r\nBcc: x@y.example",
    "today",
    "Mon, 1 Jan 2024 00:00:00 +0000",
    "Tue, 1 Jan 2030 00:00:00 EST",
    "Thu, 01 Jan 1970 00:00:00 +0000",
    "31 Feb 2024 25:61:61 +9999",
    "1 Jan 99999 00:00:00 +0000",
    "17 June , 2022",
    "12.34.56.78",
    "Fri, 31 Dec 9999 23:59:60 -2359",
    "Mon, 1 Jan 0001 00:00:00 +2359",
    "<@>",
    "<a@b><c@d>",
    "<" * 100,
    "no-brackets@x",
)
headers = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(HEADER_NAMES), hostile_text),
        st.one_of(st.sampled_from(HEADER_VALUES), hostile_text),
    ),
    max_size=12,
)

# Macro values: absent (None), garbage text, or bytes that are not UTF-8 (pymilter's
# getsymval raises on those).
MACRO_VALUES = (
    "",
    "OK",
    "FORGED",
    "FAIL",
    "TEMP",
    " OK ",
    "ok",
    "unknown",
    "[192.0.2.1]",
    "mail.client.example.com",
    "x.bad.example",
    "mx.example.net",
    "192.0.2.1",
    "198.51.100.25",
    "0.0.0.0/0",
    "192.0.2.1/33",
    "[IPv6:::1]",
    "fe80::1%eth0",
    "not an address",
    "\x00",
    "a\r\nb",
    "4XyZ1",
    "QID\nNOQUEUE: decision id=forged action=accept",
    "Q I D",
    '"',
    "%",
)
macro_values = st.one_of(
    st.none(),
    st.sampled_from(MACRO_VALUES),
    hostile_text,
    st.binary(min_size=1, max_size=12),
)
CONNECT_MACRO_NAMES = ("j", "{daemon_addr}", "{client_resolve}", "{client_ptr}")
connect_macros = st.fixed_dictionaries({name: macro_values for name in CONNECT_MACRO_NAMES})


# --- client addresses as libmilter's connect callback passes them ----------------------------

SPECIAL_IPS = (
    "192.0.2.1",
    "198.51.100.7",
    "192.0.2.200",
    "203.0.113.66",
    "127.0.0.1",
    "10.1.2.3",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:192.0.2.1",
    "::ffff:10.0.0.1",
    "::ffff:203.0.113.66",
    "fe80::1%eth0",
    "2001:db8::25%1",
    "2001:db8::1%eth0",
    "::ffff:198.51.100.7%lo",
    "2001:db8::1%",
)
ODD_HOSTADDRS = (
    None,
    (),
    ("not-an-ip", 25),
    (None, 25),
    (b"192.0.2.1", 25),
    "192.0.2.1",
    ["192.0.2.1", 25],
    (12345,),
    ("", 0),
    ("192.0.2.1\x00", 25),
    ("[192.0.2.1]", 25),
    ("/run/postfix/smtpd.sock",),
    "/run/postfix/smtpd.sock",
    0,
    3.5,
    {"ip": "192.0.2.1"},
)
any_ip = st.one_of(
    st.sampled_from(SPECIAL_IPS),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=6), st.sampled_from(("eth0", "1", "x" * 40, "%"))).map(
        lambda pair: f"{pair[0]}%{pair[1]}"
    ),
)
endpoints = st.one_of(
    any_ip.map(lambda ip: (socket.AF_INET, (ip, 25))),
    any_ip.map(lambda ip: (socket.AF_INET6, (ip, 25, 0, 2))),
    st.tuples(
        st.sampled_from((0, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, 99, -1)),
        st.one_of(st.sampled_from(ODD_HOSTADDRS), hostile_text, st.tuples(hostile_text)),
    ),
)
CLIENT_NAMES = (
    "unknown",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "mail.client.example.com",
    "x.bad.example",
    "",
    "[",
)
client_names = st.one_of(st.sampled_from(CLIENT_NAMES), hostile_text)


def session_address(
    family: int, hostaddr: object
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address a Session gets: as the adapter reads it, but keeping a zone
    (fe80::1%eth0), which `spamgate explain --ip` passes straight through."""
    if isinstance(hostaddr, tuple) and hostaddr and isinstance(hostaddr[0], str):
        try:
            return ipaddress.ip_address(hostaddr[0])
        except ValueError:
            pass
    return client_address(family, hostaddr)


# --- dialogues ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    sender: str
    params: tuple[str, ...]
    auth: str | bytes | None
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    ending: str  # "eom", "abort" or "next" (a new MAIL FROM ends it)
    queue_id: str | bytes | None


@dataclass(frozen=True)
class Dialogue:
    client_name: str
    endpoint: tuple[int, Any]  # connect()'s family and hostaddr
    macros: Mapping[str, str | bytes | None]
    helos: tuple[str, ...]
    transactions: tuple[Transaction, ...]


transactions = st.builds(
    Transaction,
    sender=envelope_addresses,
    params=esmtp_params.map(tuple),
    auth=macro_values,
    recipients=st.lists(envelope_addresses, max_size=5).map(tuple),
    headers=headers.map(tuple),
    ending=st.sampled_from(("eom", "eom", "abort", "next")),
    queue_id=macro_values,
)
dialogues = st.builds(
    Dialogue,
    client_name=client_names,
    endpoint=endpoints,
    macros=connect_macros,
    helos=st.lists(helos, max_size=2).map(tuple),
    transactions=st.lists(transactions, min_size=1, max_size=3).map(tuple),
)


def text_macro(value: str | bytes | None) -> str | None:
    """A macro as the Session sees it: bytes decoded as pymilter decodes envelope values."""
    return _surrogateescaped(value) if isinstance(value, bytes) else value


# --- what every answer must look like ----------------------------------------------------------


def check_reply_text(text: str) -> None:
    assert all(" " <= char <= "~" for char in text), f"unprintable reply {text!r}"
    assert len(text) <= MAX_REPLY_LINE, len(text)
    assert text.startswith(REPLY_OPENINGS), f"reply does not start with policy text: {text!r}"
    lowered = text.lower()
    for secret in SECRETS:
        assert secret not in lowered, f"reply shows a DNS list zone: {text!r}"


# Actions that come with a reply: greylisting's only on a triplet's first attempts.
REFUSING = (Action.GREYLIST, Action.TEMPFAIL, Action.REJECT)


def check_reply(reply: Reply, action: Action) -> None:
    assert reply.code // 100 == (5 if action is Action.REJECT else 4), (reply, action)
    assert reply.status[0] == str(reply.code)[0], reply
    check_reply_text(reply.text)


def note(value: str) -> None:
    """Count an outcome for --hypothesis-show-statistics (which paths the examples reach)."""
    if currently_in_test_context():
        event(value)


def check_rcpt(decision: RcptDecision) -> None:
    assert isinstance(decision.result, RcptResult)
    assert isinstance(decision.action, Action)
    note(f"rcpt: {decision.result.value} {decision.action.label}")
    if decision.result is RcptResult.REFUSE:
        assert decision.reply is not None, decision
        assert decision.action in REFUSING, decision
        check_reply(decision.reply, decision.action)
    else:
        assert decision.reply is None, decision
    if decision.verdict is not None:
        assert math.isfinite(decision.verdict.score), decision.verdict
        assert isinstance(decision.verdict.action, Action)


def check_header_action(name: str, value: str) -> None:
    for part in (name, value):
        part.encode("utf-8")  # libmilter sends UTF-8: a lone surrogate would raise here
        assert not set(part) & {"\r", "\n", "\x00"}, repr(part)


def check_message(decision: MessageDecision) -> None:
    assert isinstance(decision.action, Action)
    note(f"eom: {decision.action.label}")
    assert math.isfinite(decision.verdict.score), decision.verdict
    if decision.reply is not None:
        assert decision.action in REFUSING, decision
        check_reply(decision.reply, decision.action)
        assert not decision.add_headers and not decision.delete_headers, decision
        return
    assert not decision.action.refuses, decision
    for name, value in decision.add_headers:
        check_header_action(name, value)
    for name, index in decision.delete_headers:
        check_header_action(name, "")
        assert index >= 1
    if decision.quarantine_reason:
        assert decision.action is Action.QUARANTINE
        check_header_action("", decision.quarantine_reason)
        assert decision.quarantine_reason.isascii()
        assert decision.quarantine_reason.isprintable()


def check_log(lines: list[str]) -> None:
    ids = []
    for line in lines:
        assert line.isascii() and line.isprintable(), f"log line not printable ASCII: {line!r}"
        prefix, fields = parse_line(line)
        assert prefix and " " not in prefix, f"queue id is not one token: {line!r}"
        keys = [key for key, _ in fields]
        assert len(keys) == len(set(keys)) and set(keys) <= DECISION_KEYS, line
        ids.append(dict(fields)["id"])
    assert len(ids) == len(set(ids)), f"a transaction logged twice: {lines}"


# --- ring 1: the Session -----------------------------------------------------------------------


def run_session(dialogue: Dialogue, resolver: InstantLookups) -> list[str]:
    """Play a dialogue into a Session, checking every decision; the decision log lines."""
    log: list[str] = []
    session = Session(make_runtime(resolver, log.append))
    macros = {name: text_macro(value) for name, value in dialogue.macros.items()}
    session.connect(dialogue.client_name, session_address(*dialogue.endpoint), macros)
    for helo in dialogue.helos:
        session.helo(helo)
    for transaction in dialogue.transactions:
        session.mail(transaction.sender, bool(text_macro(transaction.auth)))
        results = []
        for recipient in transaction.recipients:
            decision = session.rcpt(recipient)
            check_rcpt(decision)
            results.append(decision.result)
            if decision.result is RcptResult.ACCEPT_ALL:
                break  # the MTA consults the milter no more about this message
        if RcptResult.ACCEPT_ALL in results:
            continue
        # Events in the order an MTA sends them: DATA only with a recipient left.
        if RcptResult.CONTINUE in results and transaction.ending == "eom":
            for name, value in transaction.headers:
                session.header(name, value)
            check_message(session.end_of_message(text_macro(transaction.queue_id) or ""))
        elif transaction.ending == "abort":
            session.finish_transaction()
    session.close()
    session.close()  # a second close is harmless (negotiate may close a session itself)
    check_log(log)
    return log


@BOUNDED
@given(dialogue=dialogues, resolver=dns_worlds())
def test_session_decides_every_hostile_dialogue(
    dialogue: Dialogue, resolver: InstantLookups
) -> None:
    run_session(dialogue, resolver)


# --- ring 2: the adapter, through pymilter's TestCtx -------------------------------------------

ANSWER_NAMES = {
    Milter.CONTINUE: "CONTINUE",
    Milter.ACCEPT: "ACCEPT",
    Milter.REJECT: "REJECT",
    Milter.TEMPFAIL: "TEMPFAIL",
}
DEFINED = frozenset(ANSWER_NAMES)


class HostileCtx(testctx.TestCtx):  # type: ignore[misc]  # pymilter is untyped
    """TestCtx as pymilter's C layer behaves where it matters here: a macro value that is not
    UTF-8 raises UnicodeDecodeError (Py_BuildValue("s", ...)); setreply refuses what
    libmilter would drop; header actions are recorded (TestCtx's need a parsed message)."""

    def __init__(self, macros: Mapping[str, str | bytes | None]) -> None:
        super().__init__()
        self._macros = dict(macros)
        self.added: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, int]] = []
        self.quarantined: list[str] = []

    def getsymval(self, name: str) -> str | None:
        value = super().getsymval(name)
        if isinstance(value, bytes):
            return value.decode("utf-8")  # strict, as the C layer: may raise
        return value  # type: ignore[no-any-return]

    def setreply(self, rcode: str, xcode: str, *lines: str) -> None:
        for text in (rcode, xcode, *lines):
            text.encode("utf-8")
            if set(text) & {"\r", "\n", "\x00"} or len(text) > MAX_REPLY_LINE:
                raise ValueError(f"libmilter would drop this reply: {text!r}")
        super().setreply(rcode, xcode, *lines)

    def addheader(self, field: str, value: str, idx: int) -> None:
        check_header_action(field, value)
        self.added.append((field, value))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        check_header_action(field, value)
        self.deleted.append((field, idx))

    def quarantine(self, reason: str) -> None:
        check_header_action("", reason)
        self.quarantined.append(reason)


class WatchedMilter(SpamgateMilter):
    """SpamgateMilter that remembers each internal error the guards turn into `on_error`."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.errors: list[str] = []

    def note_internal_error(self, callback: str) -> None:
        self.errors.append(f"{callback}: {traceback.format_exc()}")
        super().note_internal_error(callback)


@dataclass
class Connection:
    """One milter connection: callbacks called as libmilter's C layer calls them."""

    milter: WatchedMilter
    ctx: HostileCtx
    answers: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def open(cls, runtime: Runtime, macros: Mapping[str, str | bytes | None]) -> Connection:
        milter = WatchedMilter(runtime)
        ctx = HostileCtx(macros)
        milter._setctx(ctx)
        ctx._stage = -1  # negotiation: TestCtx allows setsymlist only then
        # An MTA offering every action and protocol step but the no-reply ones (TestCtx
        # treats NOREPLY as a refusal): fresh lists, as negotiation mutates them.
        offered = [Milter.CURR_ACTS, 0x1FFFFF & ~NO_REPLY_BITS, 0, 0]
        assert milter.negotiate(offered) == Milter.CONTINUE
        ctx._opts = offered
        ctx._protocol = offered[1]
        return cls(milter, ctx)

    def call(self, stage: int, name: str, *args: Any) -> int:
        """Call one callback at `stage`; check the answer and the reply it set."""
        ctx = self.ctx
        ctx._stage = stage
        ctx._reply = None
        try:
            answer = int(getattr(self.milter, name)(*args))
        finally:
            ctx._stage = None
        self.answers.append((name, answer))
        assert answer in DEFINED, (name, answer)
        if name in ("envrcpt_bytes", "eom"):
            note(f"{name}: {ANSWER_NAMES[answer]}")
        if name in ("connect", "hello", "envfrom_bytes"):
            # No-reply callbacks: anything but CONTINUE would desynchronise the protocol.
            assert answer == Milter.CONTINUE, (name, answer)
        reply = ctx._reply
        if answer in (Milter.REJECT, Milter.TEMPFAIL):
            assert reply is not None, f"{name} refused without a reply"
            code, status, text = reply
            assert code[0] == ("5" if answer == Milter.REJECT else "4"), (name, answer, reply)
            assert len(code) == 3 and code.isdigit() and status[0] == code[0], reply
            # libmilter drops a reply with a lone %; the client sees one % for each %%.
            assert "%" not in text.replace("%%", ""), text
            check_reply_text(text.replace("%%", "%"))
        else:
            assert reply is None, f"{name} answered {answer} with a reply {reply}"
        return answer


def run_adapter(dialogue: Dialogue, resolver: InstantLookups) -> Connection:
    log: list[str] = []
    conn = Connection.open(make_runtime(resolver, log.append), dialogue.macros)
    ctx = conn.ctx
    conn.call(Milter.M_CONNECT, "connect", c_string(dialogue.client_name), *dialogue.endpoint)
    for helo in dialogue.helos:
        conn.call(Milter.M_HELO, "hello", c_string(helo))
    for transaction in dialogue.transactions:
        ctx._macros["{auth_authen}"] = transaction.auth
        ctx._macros["i"] = transaction.queue_id
        conn.call(
            Milter.M_ENVFROM,
            "envfrom_bytes",
            wire(transaction.sender),
            *(wire(p) for p in transaction.params),
        )
        accepted = whole_message_accepted = False
        for recipient in transaction.recipients:
            # RCPT parameters (NOTIFY=, ORCPT=) come after the address, as for MAIL.
            rcpt_params = (wire(p) for p in transaction.params[1:])
            answer = conn.call(Milter.M_ENVRCPT, "envrcpt_bytes", wire(recipient), *rcpt_params)
            accepted = accepted or answer == Milter.CONTINUE
            if answer == Milter.ACCEPT:  # the MTA asks this milter nothing more about it
                whole_message_accepted = True
                break
        if whole_message_accepted:
            continue
        if not accepted or transaction.ending == "abort":
            conn.call(Milter.M_EOM, "abort")  # RSET, or no recipient left for DATA
            continue
        if conn.call(Milter.M_DATA, "data") != Milter.CONTINUE:
            continue
        for name, value in transaction.headers:
            answer = conn.call(Milter.M_DATA, "header_bytes", c_string(name), wire(value))
            if answer != Milter.CONTINUE:
                break
        else:
            if conn.call(Milter.M_EOH, "eoh") == Milter.CONTINUE:
                ctx._body = True  # eom: header actions allowed
                conn.call(Milter.M_EOM, "eom")
                ctx._body = None
    assert conn.milter.close() == Milter.CONTINUE
    assert not conn.milter.errors, "\n".join(conn.milter.errors)
    check_log(log)
    return conn


@BOUNDED
@given(dialogue=dialogues, resolver=dns_worlds())
def test_adapter_answers_every_hostile_dialogue(
    dialogue: Dialogue, resolver: InstantLookups
) -> None:
    run_adapter(dialogue, resolver)


@settings(BOUNDED, max_examples=500)
@given(
    family=st.one_of(st.sampled_from((0, 1, 2, 10, 99, -1)), st.integers()),
    hostaddr=st.one_of(
        st.sampled_from(ODD_HOSTADDRS),
        any_ip,
        st.tuples(st.one_of(any_ip, hostile_text, st.none(), st.integers(), st.binary())),
        st.tuples(any_ip, st.integers(), st.integers(), st.integers()),
        st.lists(any_ip),
        hostile_text,
        st.binary(),
    ),
)
def test_client_address_is_an_address_or_none(family: int, hostaddr: object) -> None:
    address = client_address(family, hostaddr)
    assert address is None or isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if address is not None:
        assert address.version in (4, 6)
        assert getattr(address, "scope_id", None) is None  # the zone is not part of the client


# --- sizes: a megabyte header, ten thousand headers ---------------------------------------------

MEGABYTE = 1024 * 1024


def _repeat(piece: str) -> str:
    return (piece * (MEGABYTE // len(piece) + 1))[:MEGABYTE]


BIG_VALUES: Mapping[str, Callable[[], str]] = {
    "letters": lambda: _repeat("a"),
    "words": lambda: _repeat("cheap viagra "),
    "encoded-word-openers": lambda: _repeat("=?a?q?x"),
    "bad-base64-words": lambda: _repeat("=?utf-8?B?!!!?= "),
    "nuls": lambda: _repeat("\x00"),
    "folds": lambda: _repeat("x\r\n\t"),
    "bare-lfs": lambda: _repeat("\n"),
    "not-utf8": lambda: _surrogateescaped(_repeat("\xff").encode("latin-1")),
    "comments": lambda: _repeat("("),
    "addresses": lambda: _repeat("a@b.example, "),
    "percent": lambda: _repeat("%"),
}
BIG_HEADER_NAMES = ("Subject", "From", "To", "Date", "Message-ID", "Reply-To", "X-Spam-Status")


def plain_dialogue(headers: tuple[tuple[str, str], ...], client: str = "192.0.2.1") -> Dialogue:
    transaction = Transaction(
        "<a@example.org>", (), None, ("<user@example.com>",), headers, "eom", "4XyZ1"
    )
    return Dialogue(
        "unknown", (socket.AF_INET, (client, 25)), {}, ("mail.example.org",), (transaction,)
    )


CALM = InstantLookups({rdtype: (DnsAnswer(AnswerKind.NXDOMAIN, ttl=60),) for rdtype in ANSWERS}, 0)


# Few enough to try every one (hypothesis would sample a finite space with repeats).
@pytest.mark.parametrize("name", BIG_HEADER_NAMES)
@pytest.mark.parametrize("kind", sorted(BIG_VALUES))
def test_a_megabyte_header_value_is_decided_on(kind: str, name: str) -> None:
    value = BIG_VALUES[kind]()
    dialogue = plain_dialogue(((name, value), ("Subject", "hello")))
    started = time.perf_counter()
    run_session(dialogue, CALM)
    assert run_adapter(dialogue, CALM).answers[-1][0] == "eom"  # decided, not cut short
    # Generous: the point is "no hang" (each parser is linear or capped), not a benchmark.
    assert time.perf_counter() - started < 10


@settings(BOUNDED, max_examples=8)
@given(
    pattern=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)),
        min_size=1,
        max_size=4,
    )
)
def test_ten_thousand_headers_are_decided_on(pattern: list[tuple[str, str]]) -> None:
    many = tuple(itertools.islice(itertools.cycle(pattern), 10_000))
    dialogue = plain_dialogue(many)
    started = time.perf_counter()
    run_session(dialogue, CALM)
    conn = run_adapter(dialogue, CALM)
    assert time.perf_counter() - started < 20
    # Of a message that is let through, each forged copy of our own headers is deleted.
    ours = sum(1 for name, _ in many if name.lower() in ("x-spam-status", "x-spam-score"))
    passed = conn.answers[-1] == ("eom", Milter.CONTINUE)
    assert len(conn.ctx.deleted) == (ours if passed else 0)


# --- the harness reaches what it should -------------------------------------------------------


def test_the_harness_reaches_every_kind_of_evidence() -> None:
    """Not a property: proof that the dialogues above can reach lists, header rules, HELO and
    reverse DNS rules, so the properties are not true of a harness that decides nothing."""
    table = {
        ("7.100.51.198.s3cr3tkey.zen.test", "A"): _records("127.0.0.2"),
        ("spam.example.dbl-k3y.test", "A"): _records("127.0.1.2"),
    }
    transaction = Transaction(
        "<promo@spam.example>",
        ("SIZE=1000",),
        None,
        ("<user@example.com>", "<postmaster@example.com>"),
        (("Subject", "=?utf-8?B?Y2hlYXAgdmlhZ3Jh?="), ("From", "Bank <x@phish.example>")),
        "eom",
        "4XyZ1",
    )
    dialogue = Dialogue(
        "unknown", (socket.AF_INET, ("198.51.100.7", 25)), {}, ("192.0.2.9",), (transaction,)
    )
    conn = run_adapter(dialogue, InstantLookups(CALM.answers, 0, table))
    assert conn.answers == [
        ("connect", Milter.CONTINUE),
        ("hello", Milter.CONTINUE),
        ("envfrom_bytes", Milter.CONTINUE),
        ("envrcpt_bytes", Milter.REJECT),
        ("envrcpt_bytes", Milter.CONTINUE),  # postmaster is exempt
        ("data", Milter.CONTINUE),
        ("header_bytes", Milter.CONTINUE),
        ("header_bytes", Milter.CONTINUE),
        ("eoh", Milter.CONTINUE),
        ("eom", Milter.CONTINUE),
    ]
    (status,) = [value for name, value in conn.ctx.added if name == "X-Spam-Status"]
    hits = status.partition("hits=")[2].split(",")
    for expected in (
        "ZEN_SBL",  # IP list
        "DBL_SPAM",  # domain list (sender and From domains)
        "SUBJECT_PHARMA",  # header regex, after RFC 2047 decoding
        "FROM_BANK",
        "HELO_BARE",
        "RDNS_MISSING",
        "SENDER_NXDOMAIN",
        "SENDER_PROMO",
        "PHARMA_FROM_LISTED",
    ):
        assert expected in hits, (expected, status)


# --- regressions: bugs the properties above found ---------------------------------------------


@pytest.mark.parametrize(
    ("queue_id", "prefix"),
    [
        pytest.param("4XyZ1", "4XyZ1", id="postfix-id-stays-bare"),
        pytest.param(
            "QID\nNOQUEUE: decision id=forged action=accept",
            '"QID\\nNOQUEUE:\\x20decision\\x20id\\x3dforged\\x20action\\x3daccept"',
            id="newline-forges-a-line",
        ),
        pytest.param("Q I D", '"Q\\x20I\\x20D"', id="blanks"),
        pytest.param("\x00", '"\\x00"', id="nul"),
        pytest.param('"', '"\\""', id="quote"),
    ],
)
def test_regression_garbage_queue_id_cannot_forge_a_decision_line(
    queue_id: str, prefix: str
) -> None:
    """The queue id (the MTA's `i` macro) began the decision line unescaped: a newline in it
    wrote a second, forged line; a blank made the prefix two tokens."""
    log: list[str] = []
    session = Session(make_runtime(CALM, log.append))
    session.connect("unknown", ipaddress.ip_address("192.0.2.1"), {})
    session.mail("<a@example.org>", False)
    session.rcpt("<user@example.com>")
    session.end_of_message(queue_id)
    check_log(log)
    (line,) = log
    assert line.startswith(f"{prefix}: decision id=id0001 ")
    assert line.count(": decision ") == 1


def test_regression_scoped_ipv6_client_is_looked_up_without_its_zone() -> None:
    """`spamgate explain --ip 2001:db8::25%eth0` crashed in Session.connect: Python 3.11's
    reverse_pointer raises AddressValueError on a scoped address. The zone is the host's,
    not the client's: lists and reverse DNS look up the address without it."""
    resolver = InstantLookups(CALM.answers, 0)
    log: list[str] = []
    session = Session(make_runtime(resolver, log.append))
    session.connect("unknown", ipaddress.ip_address("2001:db8::25%eth0"), {})
    session.mail("<a@example.org>", False)
    check_rcpt(session.rcpt("<user@example.com>"))
    session.close()
    nibbles = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    assert (f"{nibbles}.s3cr3tkey.zen.test", "A") in resolver.asked
    assert (f"{nibbles}.ip6.arpa", "PTR") in resolver.asked
    check_log(log)
    assert " client=2001:db8::25%eth0 " in log[0]


def test_regression_undecodable_macro_is_read_as_absent_not_as_an_internal_error() -> None:
    """A macro value that is not UTF-8 makes pymilter's getsymval raise. In connect that
    failed the whole connection over to `on_error`: with the default `on_error: accept`, a
    listed client's mail then went through unfiltered."""
    listed = {("1.2.0.192.s3cr3tkey.zen.test", "A"): _records("127.0.0.2")}
    macros = dict.fromkeys(CONNECT_MACRO_NAMES, b"\xff\xfe")
    transaction = Transaction(
        "<a@example.org>", (), b"\xc3(", ("<user@example.com>",), (), "eom", b"\x80QID"
    )
    dialogue = Dialogue(
        "unknown", (socket.AF_INET, ("192.0.2.1", 25)), macros, ("mx.example.org",), (transaction,)
    )
    conn = run_adapter(dialogue, InstantLookups(CALM.answers, 0, listed))  # no internal error
    assert ("envrcpt_bytes", Milter.REJECT) in conn.answers
