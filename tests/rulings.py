"""Facts for decision.decide, built from plain values the way a session builds them (the
helpers of decision.py), and a test policy: for tests/test_decision*.py."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from spamgate.core import decision, schema
from spamgate.core.decision import Client, Envelope, Facts, Need, Ruling
from spamgate.core.engine import Engine, ListsIgnored
from spamgate.core.policy import Policy
from spamgate.core.rules import MessageFacts
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import ListOutcome, classify
from spamgate.dns.rdns import RdnsStatus, ReverseDns

THRESHOLDS = "thresholds: {tag: 3, greylist: null, tempfail: 6, reject: 10}\n"
POLICY = """
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: zen.test
    hits:
      - {name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the Example SBL}
      - {name: ZEN_PBL, codes: [127.0.0.10], score: 7, description: listed in the Example PBL}
rules:
  - {name: PHARMA, score: 4, description: pharmacy spam, header: {name: Subject, matches: x}}
  - {name: NO_DATE, score: 1, description: no Date, header: {name: Date, missing: true}}
  - {name: HELO_BARE, score: 5, description: a bare IP HELO, helo: bare_ip}
  - {name: BULK, score: 0, description: bulk, sender_matches: '^bulk@', action: greylist}
"""
SBL, PBL = "127.0.0.2", "127.0.0.10"
GATHERED = Need.CLIENT_NAME | Need.HELO_NAME
SPAM = MessageFacts(header_hits=frozenset({"PHARMA"}))  # PHARMA 4 + NO_DATE 1
CLEAN = MessageFacts(header_counts={"date": 1})
GROUPS = """
recipient_policies:
  - {name: lenient, recipients: ["@example.net"], thresholds: {tag: 3, reject: 100},
     scores: {ZEN_SBL: 4}}
  - {name: trial, recipients: ["@trial.example"], mode: observe}
  - {name: soft, recipients: ["@soft.example"], thresholds: {tag: 3, tempfail: 4, reject: 50}}
"""
ALLOW = 'allow: {clients: [192.0.2.128/25], client_names: ["*.partner.example"], '
ALLOW += 'helo_names: ["*.friend.example"], senders: ["<>", "@partner.example", "news@"], '
ALLOW += "recipients: [vip@example.com]}\n"
DENY = 'deny: {clients: [198.51.100.0/24], client_names: ["*.bad.example"], '
DENY += 'helo_names: ["*.bad.example"], senders: ["@bad.example"], recipients: ["gone@"]}\n'


@functools.cache
def engine(extra: str = "") -> Engine:
    """POLICY with `extra`; THRESHOLDS unless `extra` has top-level thresholds of its own."""
    top = re.search(r"^thresholds:", extra, re.MULTILINE)
    text = POLICY if top else THRESHOLDS + POLICY
    return Engine(schema.load(Policy, text + extra, "t.yaml"))


def zen(eng: Engine, code: str | None) -> tuple[ListOutcome, ...]:
    answer = DnsAnswer(AnswerKind.RECORDS, (code,)) if code else DnsAnswer(AnswerKind.NXDOMAIN)
    return (classify(eng.policy.ip_lists[0], answer),)


def facts(
    eng: Engine,
    *,
    address: str | None = "192.0.2.1",
    name: str = "unknown",
    helo: str = "mx.example.org",
    confirmed: str = "",
    dns: bool = True,
    remembered: tuple[str, ...] = (),
    greylist_state: bool = True,
    sender: str = "a@example.org",
    authenticated: bool = False,
    recipient: str = "user@example.com",
    zen_code: str | None = None,
    message: MessageFacts | None = None,
    known: Need = GATHERED,
    gathered: bool = True,
    **envelope: Any,
) -> Facts:
    """Facts as a session gathers them (decision's helpers); `gathered`: the lists too."""
    policy = eng.policy
    ip = ipaddress.ip_address(address) if address else None
    listed = decision.listed_client(policy, ip, name).then(decision.listed_helo(policy, helo))
    ignored = decision.ignored_at_connect(policy, ip, listed, dns=dns, remembered=remembered)
    rdns = ReverseDns(RdnsStatus.CONFIRMED, (confirmed,), confirmed) if confirmed else None
    client = Client(
        address=ip,
        shown=address or "unknown",
        helo=helo,
        listed=listed,
        ignored=ignored,
        remembered=remembered if ignored is ListsIgnored.REMEMBERED else (),
        greylist_state=greylist_state,
        known=known,
        rdns=rdns or decision.UNKNOWN_RDNS,
    )
    fields: dict[str, Any] = {
        "decision_id": "d1",
        "sender": sender,
        "authenticated": authenticated,
        "listed": decision.listed_sender(policy, sender),
        "recipient": "" if message else recipient,
    }
    fields.update(envelope)
    lists = zen(eng, zen_code) if gathered else None
    return Facts(client, Envelope(**fields), message, lists=lists)


def said(ruling: Ruling) -> str:
    """What a ruling tells the sender, in short: disposition, action, reply code, why."""
    code = str(ruling.reply.code) if ruling.reply else ""
    return " ".join(filter(None, [ruling.disposition.value, ruling.action.label, code, ruling.why]))
