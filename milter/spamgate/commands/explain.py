"""`spamgate explain`: score a connection (and a message file) with the daemon's own engine.

It drives the same Session the milter adapter drives, so its answer is the daemon's answer
for the same facts: an admin can ask why a message was refused, or try a policy change
before reloading it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import EX_NOINPUT, EX_USAGE  # sysexits(3)
from pathlib import Path
from typing import TextIO

from spamgate.core.addresses import IPAddress
from spamgate.core.engine import DEFAULT_GROUP, Action, Engine, Verdict
from spamgate.core.policy import Policy, Rule
from spamgate.core.rules import Facts as RuleFacts
from spamgate.core.rules import RuleBook, Stage
from spamgate.core.ruletrace import trace
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending
from spamgate.dns.resolver import Resolver
from spamgate.shell.session import MessageDecision, RcptDecision, RcptResult, Runtime, Session

# Exit status: the action, so scripts can branch on it.
EXIT_BY_ACTION = {
    Action.ACCEPT: 0,
    Action.TAG: 1,
    Action.QUARANTINE: 2,
    Action.TEMPFAIL: 3,
    Action.REJECT: 4,
    Action.GREYLIST: 5,  # explain keeps no greylist state: what a first attempt gets
}


class NoDns:
    """--no-dns: every lookup fails at once, which spamgate treats as no evidence at all."""

    def lookup(self, qname: str, rdtype: str = "A") -> Pending[DnsAnswer]:
        return Pending.of(DnsAnswer(AnswerKind.NETWORK, detail="--no-dns"))


class TracingRuleBook(RuleBook):
    """explain's RuleBook: it remembers the facts its rules last fired on, so that explain can
    show what each fired rule tested (core/ruletrace.py). The daemon's RuleBook keeps nothing:
    only explain pays for a trace."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self.last: RuleFacts | None = None

    def fire(
        self,
        stage: Stage,
        facts: RuleFacts,
        list_hits: Iterable[str],
        trial_list_hits: Iterable[str] = (),
    ) -> tuple[Rule, ...]:
        self.last = facts
        return super().fire(stage, facts, list_hits, trial_list_hits)


def tracing_engine(policy: Policy) -> Engine:
    """The daemon's engine, whose rules remember the facts they fired on."""
    engine = Engine(policy)
    engine.rulebook = TracingRuleBook(policy)
    return engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip", default="192.0.2.1", help="client address (default 192.0.2.1)")
    parser.add_argument("--name", default="unknown", help="client name as Postfix reports it")
    parser.add_argument("--helo", default="", help="HELO/EHLO name")
    parser.add_argument("--from", dest="sender", default="", help="MAIL FROM address")
    parser.add_argument("--rcpt", action="append", default=[], help="RCPT TO (repeatable)")
    parser.add_argument("--auth", default="", help="SASL user name: the client authenticated")
    parser.add_argument("--no-dns", action="store_true", help="make no DNS lookups")
    parser.add_argument("message", nargs="?", type=Path, help="message file (RFC 5322) to score")


def read_headers(data: bytes) -> list[tuple[str, str]]:
    """Header fields as a milter receives them: name, and value with folding kept."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    if head.startswith(b"From "):  # an mbox separator line, not a header
        head = head.partition(b"\n")[2]
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line}")
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.lstrip(" \t")))
    return fields


def run(policy: Policy, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        address = ipaddress.ip_address(args.ip)
    except ValueError:
        print(f"spamgate: --ip {args.ip!r} is not an IP address", file=sys.stderr)
        return EX_USAGE
    message_bytes = None
    if args.message is not None:
        try:
            message_bytes = args.message.read_bytes()
        except OSError as error:
            print(f"spamgate: cannot read {args.message}: {error.strerror}", file=sys.stderr)
            return EX_NOINPUT
    log_lines: list[str] = []
    if args.no_dns:
        print("--no-dns: DNS lists, reverse DNS and name lookups are skipped", file=out)
    resolver = None if args.no_dns else Resolver(policy.resolver)
    if resolver is not None:
        resolver.start()
    try:
        runtime = Runtime(
            tracing_engine(policy), resolver or NoDns(), log=log_lines.append, dns=not args.no_dns
        )
        client = Dialogue(
            address,
            name=args.name,
            helo=args.helo,
            sender=args.sender,
            authenticated=bool(args.auth),
            recipients=tuple(args.rcpt) or (DEFAULT_RCPT,),
        )
        talk = converse(runtime, client, message_bytes)
    finally:
        if resolver is not None:
            resolver.stop()
    fields = read_headers(message_bytes) if message_bytes is not None else []
    rules = {rule.name: rule for rule in policy.rules}

    def explainer(facts: RuleFacts | None) -> Callable[[str], str]:
        """What the hit `name` tested and the value it fired on, given the facts it fired on."""
        if facts is None:
            return lambda name: ""
        return lambda name: trace(rules[name], facts, fields) if name in rules else ""

    return report(
        talk.session,
        talk.decisions,
        talk.message,
        log_lines,
        out,
        traces=(
            [explainer(facts) for facts in talk.rcpt_facts],
            explainer(talk.message_facts),
        ),
    )


@dataclass(frozen=True)
class Dialogue:
    """What a client says before its message: who it is, HELO, MAIL FROM and RCPT TO."""

    address: IPAddress
    name: str = "unknown"  # as Postfix reports it: the verified reverse name, or "unknown"
    helo: str = ""  # "": the client said no HELO
    sender: str = ""
    authenticated: bool = False
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    session: Session
    decisions: tuple[tuple[str, RcptDecision], ...]
    message: MessageDecision | None  # None: no recipient got as far as DATA, filtered
    # With a TracingRuleBook: the facts the rules last fired on at each RCPT TO (in the order
    # of `decisions`) and at the end of the message; None: no rule was tried.
    rcpt_facts: tuple[RuleFacts | None, ...] = ()
    message_facts: RuleFacts | None = None

    @property
    def verdict(self) -> Verdict | None:
        """The last verdict given: the message's, or else the last recipient's."""
        if self.message is not None:
            return self.message.verdict
        verdicts = [d.verdict for _, d in self.decisions if d.verdict is not None]
        return verdicts[-1] if verdicts else None

    @property
    def action(self) -> Action:
        """The mail's fate: the message's, or else that of its best-treated recipient."""
        if self.message is not None:
            return self.message.action
        return min(d.action for _, d in self.decisions)


def converse(runtime: Runtime, client: Dialogue, message_bytes: bytes | None) -> Conversation:
    """One connection and transaction through the daemon's own Session, as the adapter would
    drive it: the message's header fields are passed only if a recipient was accepted."""
    session = Session(runtime)
    book = session.engine.rulebook
    tracing = book if isinstance(book, TracingRuleBook) else None
    rcpt_facts: list[RuleFacts | None] = []
    session.connect(client.name, client.address, {})
    if client.helo:
        session.helo(client.helo)
    session.mail(client.sender, client.authenticated)
    decisions = []
    for rcpt in client.recipients or (DEFAULT_RCPT,):
        decisions.append((rcpt, session.rcpt(rcpt)))
        rcpt_facts.append(tracing.last if tracing is not None else None)
        if decisions[-1][1].result is RcptResult.ACCEPT_ALL:
            break  # Postfix stops consulting the milter for this message too
    # The message is judged only if some recipient got as far as DATA, filtered.
    filtered = any(d.result is RcptResult.CONTINUE for _, d in decisions)
    message = None
    if message_bytes is not None and filtered:
        for name, value in read_headers(message_bytes):
            session.header(name, value)
        message = session.end_of_message("")
    session.close()
    message_facts = tracing.last if tracing is not None and message is not None else None
    return Conversation(session, tuple(decisions), message, tuple(rcpt_facts), message_facts)


DEFAULT_RCPT = "someone@example.com"


def report(
    session: Session,
    decisions: Sequence[tuple[str, RcptDecision]],
    message: MessageDecision | None,
    log_lines: Sequence[str],
    out: TextIO,
    *,
    traces: tuple[Sequence[Traced], Traced] | None = None,
) -> int:
    """Print what was found and decided; return the exit status for the message's fate.
    `traces`: for each recipient and for the message, what a hit's rule tested and the value
    it fired on, printed under the hit."""
    rcpt_traces, message_trace = traces if traces is not None else ((), _no_trace)
    print(
        f"client {session.address_text} name={session.client_name} helo={session.helo_name!r}",
        file=out,
    )
    for index, (rcpt, decision) in enumerate(decisions):
        label = decision.action.label + (f" ({decision.why})" if decision.why else "")
        print(f"recipient {rcpt}: {label}", file=out)
        if decision.verdict is not None:
            explained = rcpt_traces[index] if index < len(rcpt_traces) else _no_trace
            _print_verdict(decision.verdict, out, explained)
        if decision.reply is not None:
            reply = decision.reply
            print(f"  -> {reply.code} {reply.status} {reply.text}", file=out)
    if message is not None:
        print(f"message: {message.action.label}", file=out)
        _print_verdict(message.verdict, out, message_trace)
        if message.reply is not None:
            reply = message.reply
            print(f"  -> {reply.code} {reply.status} {reply.text}", file=out)
        for name, value in message.add_headers:
            print(f"  + {name}: {value}", file=out)
        if message.quarantine_reason:
            print(f"  quarantined: {message.quarantine_reason}", file=out)
    for line in log_lines:
        print(f"log: {line}", file=out)
    if message is not None:
        return EXIT_BY_ACTION[message.action]
    # No message: the mail's fate is that of its best-treated recipient.
    return EXIT_BY_ACTION[min(d.action for _, d in decisions)]


# What a hit's rule tested and the value it fired on, by hit name; "": nothing to show.
Traced = Callable[[str], str]


def _no_trace(name: str) -> str:
    return ""


def _print_verdict(verdict: Verdict, out: TextIO, explained: Traced = _no_trace) -> None:
    group = f", policy {verdict.group}" if verdict.group != DEFAULT_GROUP else ""
    print(f"  score {verdict.score:.1f} -> {verdict.action.label}{group}", file=out)
    for hit in verdict.hits:
        trial = " (observe: not counted)" if hit.observe else ""
        print(f"    {hit.score:+6.1f}  {hit.name:<28} {hit.description}{trial}", file=out)
        detail = explained(hit.name)
        if detail:
            print(f"{'':14}{detail}", file=out)
    # Lists with `on_unusable: tempfail` whose answer could have changed the verdict.
    changed = "the action (on_unusable: tempfail)"
    for name in verdict.tempfail_by:
        print(f"  tempfail: {name} could not be asked, and could have changed {changed}", file=out)
    if verdict.trial_action is not None and verdict.trial_score is not None:
        trial = f"{verdict.trial_score:.1f} -> {verdict.trial_action.label}"
        print(f"  if the observed hits counted: {trial}", file=out)
    for name in verdict.trial_tempfail_by:
        print(f"  on trial: {name} could not be asked, and could have changed {changed}", file=out)
