"""The world hostile dialogues are played in (tests/adapter/test_hostile_input.py): a policy with a
rule of every kind, a resolver that answers at once from a hostile set, and what every
answer must look like."""

from __future__ import annotations

import datetime
import itertools
import math
import zlib
from collections.abc import Callable, Mapping
from concurrent import futures

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st

from spamgate.core import schema
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import MessageDecision, RcptDecision, RcptResult
from tests.fakes import FakeClock
from tests.pure.test_decisionlog import parse_line

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


# --- the resolver: every question answered at once, answers drawn from a hostile set -----------


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


# Every name NXDOMAIN: no list fires, but where a test adds answers of its own.
CALM = InstantLookups({rdtype: (DnsAnswer(AnswerKind.NXDOMAIN, ttl=60),) for rdtype in ANSWERS}, 0)


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
