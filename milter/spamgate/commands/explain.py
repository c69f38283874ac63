"""`spamgate explain`: score a connection (and a message file) with the daemon's own engine.

It drives the same Session the milter adapter drives, so its answer is the daemon's answer
for the same facts: an admin can ask why a message was refused, or try a policy change
before reloading it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import EX_NOINPUT, EX_USAGE  # sysexits(3)
from pathlib import Path
from typing import TextIO

from spamgate.core.addresses import IPAddress
from spamgate.core.dkim import DkimReport
from spamgate.core.dmarc import DmarcResult
from spamgate.core.engine import DEFAULT_GROUP, Action, Engine, Evidence, Group, Verdict
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.core.rules import Facts as RuleFacts
from spamgate.core.rules import RuleBook, Stage
from spamgate.core.rulespecs import Rule
from spamgate.core.ruletrace import Seen, Step, as_json, explain, lines, plain, seen_at
from spamgate.dns.answers import AnswerKind, DnsAnswer, Pending
from spamgate.dns.resolver import Resolver
from spamgate.dns.spfcheck import PendingSpf
from spamgate.shell.runtime import Runtime
from spamgate.shell.session import MessageDecision, RcptDecision, RcptResult, Session
from spamgate.shell.transaction import Transaction

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


class TracingEngine(Engine):
    """explain's Engine: it remembers the evidence it last scored (which rules fired, the DNS
    list answers), so that a trace can show what a list answered without asking again."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self.rulebook = self.tracing = TracingRuleBook(policy)
        self.last_evidence: Evidence | None = None

    def evaluate(self, evidence: Evidence, group: Group | None = None) -> Verdict:
        self.last_evidence = evidence
        return super().evaluate(evidence, group)

    def seen(self, fields: Sequence[tuple[str, str]]) -> Seen | None:
        """What the last decision's rules and lists saw; None: no rule was tried."""
        facts, evidence = self.tracing.last, self.last_evidence
        return None if facts is None or evidence is None else seen_at(facts, evidence, fields)


def tracing_engine(policy: Policy) -> TracingEngine:
    """The daemon's engine, which remembers the facts and evidence it decided on."""
    return TracingEngine(policy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip", default="192.0.2.1", help="client address (default 192.0.2.1)")
    parser.add_argument("--name", default="unknown", help="client name as Postfix reports it")
    parser.add_argument("--helo", default="", help="HELO/EHLO name")
    parser.add_argument("--from", dest="sender", default="", help="MAIL FROM address")
    parser.add_argument("--rcpt", action="append", default=[], help="RCPT TO (repeatable)")
    parser.add_argument("--auth", default="", help="SASL user name: the client authenticated")
    parser.add_argument("--no-dns", action="store_true", help="make no DNS lookups")
    parser.add_argument(
        "--json", action="store_true", help="print the decisions and traces as one JSON object"
    )
    parser.add_argument("message", nargs="?", type=Path, help="message file (RFC 5322) to score")


def read_headers(data: bytes) -> list[tuple[str, str]]:
    """Header fields as a milter receives them: name, and value with folding kept."""
    return [(name, value.lstrip(" \t")) for name, value in read_raw_headers(data)]


def read_raw_headers(data: bytes) -> list[tuple[str, str]]:
    """Header fields as Postfix sends them with P_HDR_LEADSPC: the value keeps the white
    space after the colon (what DKIM's simple canonicalization hashes)."""
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
            fields.append((name.strip(), value))
    return fields


def read_body(data: bytes) -> bytes:
    """The body after the blank line, with CRLF line ends as the MTA passes it on."""
    parts = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)
    return parts[1].replace(b"\n", b"\r\n") if len(parts) > 1 else b""


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
    if args.no_dns and not args.json:
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
    rules = {rule.name: rule for rule in policy.rules}

    def explainer(seen: Seen | None) -> Traced:
        """Why the hit `name` fired, given what was seen at the decision it fired at."""
        if seen is None:
            return _no_trace
        return lambda name: explain(name, rules, seen)

    traces = ([explainer(seen) for seen in talk.rcpt_seen], explainer(talk.message_seen))
    if args.json:
        return report_json(talk, log_lines, out, traces=traces, dns=not args.no_dns)
    return report(
        talk.session,
        talk.decisions,
        talk.message,
        log_lines,
        out,
        traces=traces,
        checks=talk.checks,
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
    # With a TracingEngine: what the rules and lists saw at each RCPT TO (in the order of
    # `decisions`) and at the end of the message; None: no rule was tried.
    rcpt_seen: tuple[Seen | None, ...] = ()
    message_seen: Seen | None = None
    # The sender-authentication checks the session made, as (name, result) lines for the
    # report: "spf" and "helo_spf" (see checks_made).
    checks: tuple[tuple[str, str], ...] = ()

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
    tracing = session.engine if isinstance(session.engine, TracingEngine) else None
    rcpt_seen: list[Seen | None] = []
    session.connect(client.name, client.address, {})
    if client.helo:
        session.helo(client.helo)
    session.mail(client.sender, client.authenticated)
    transaction = session.transaction
    decisions = []
    for rcpt in client.recipients or (DEFAULT_RCPT,):
        decisions.append((rcpt, session.rcpt(rcpt)))
        # No header field is known at RCPT TO, and no rule of this stage reads one.
        rcpt_seen.append(tracing.seen(()) if tracing is not None else None)
        if decisions[-1][1].result is RcptResult.ACCEPT_ALL:
            break  # Postfix stops consulting the milter for this message too
    # The message is judged only if some recipient got as far as DATA, filtered.
    filtered = any(d.result is RcptResult.CONTINUE for _, d in decisions)
    message = None
    fields: list[tuple[str, str]] = []
    if message_bytes is not None and filtered:
        raw_fields = read_raw_headers(message_bytes)
        fields = [(name, raw.lstrip(" \t")) for name, raw in raw_fields]
        for name, raw in raw_fields:
            session.header(name, raw.lstrip(" \t"), raw)
        session.end_of_headers()
        if session.wants_body:
            session.body(read_body(message_bytes))
        message = session.end_of_message("")
    session.close()
    message_seen = tracing.seen(fields) if tracing is not None and message is not None else None
    checks = checks_made(session, transaction)
    return Conversation(session, tuple(decisions), message, tuple(rcpt_seen), message_seen, checks)


def checks_made(session: Session, transaction: Transaction | None) -> tuple[tuple[str, str], ...]:
    """Each sender-authentication check the policy reads (a rule, Authentication-Results, a
    verified-sender entry): its result and what it rests on, or why none was made (DNS off;
    the client's lists do not count; the sender was allowlisted; no message was given)."""
    engine, policy = session.engine, session.policy
    why_not = "not checked (--no-dns)" if not session.runtime.dns else "not checked"
    mail_spf = transaction.spf if transaction is not None else None
    checks = []
    if engine.needs_spf or policy.allow.verified_senders or mail_spf is not None:
        checks.append(("spf", _spf_line(mail_spf, why_not)))
    if engine.needs_helo_spf:
        checks.append(("helo_spf", _spf_line(session.helo_spf, why_not)))
    if engine.needs_dkim:
        report = transaction.dkim_report if transaction is not None else None
        checks.append(("dkim", _dkim_line(report) if report is not None else why_not))
    if engine.needs_dmarc:
        result = transaction.dmarc_result if transaction is not None else None
        checks.append(("dmarc", _dmarc_line(result) if result is not None else why_not))
    return tuple(checks)


def _dkim_line(report: DkimReport) -> str:
    """Each signature: its result, d= and s=, and why (the key's DNS answer behind it)."""
    if report.header_problem:
        return f"permerror; {plain(report.header_problem)}"
    if not report.signatures:
        return "none (no signature)"
    shown = [
        f"{s.status.value} for d={plain(s.domain)} s={plain(s.selector)}"
        + (f" ({plain(s.reason)})" if s.reason else "")
        for s in report.signatures
    ]
    if report.skipped:
        shown.append(f"{report.skipped} more not verified")
    return "; ".join(shown)


def _dmarc_line(result: DmarcResult) -> str:
    """The outcome for the From: domain, the record it came from, and each identifier's
    alignment."""
    parts = [result.outcome.value]
    if result.author_domain:
        parts[0] += f" for {plain(result.author_domain)}"
    if result.record is not None and result.published is not None:
        where = f" at _dmarc.{plain(result.policy_domain)}" if result.policy_domain else ""
        parts.append(f"policy p={result.published.value}{where}")
    if result.sampled_out:
        parts.append("pct= sampled it out")
    parts += [
        f"{check.method.value} {plain(check.domain)} "
        + ("aligned" if check.aligned else f"not aligned ({plain(check.reason)})")
        for check in result.checks
    ]
    if result.reason:
        parts.append(plain(result.reason))
    return "; ".join(parts)


def _spf_line(check: PendingSpf | None, why_not: str) -> str:
    verdict = check.verdict if check is not None else None
    if verdict is None:
        return why_not
    parts = [f"{verdict.result.value} for {plain(verdict.domain)}"]
    if verdict.mechanism:
        parts.append(f"matched {plain(verdict.mechanism)}")
    if verdict.reason:
        parts.append(plain(verdict.reason))
    if verdict.explanation:
        parts.append(f"explanation {plain(verdict.explanation)}")
    return "; ".join(parts)


DEFAULT_RCPT = "someone@example.com"


def report(
    session: Session,
    decisions: Sequence[tuple[str, RcptDecision]],
    message: MessageDecision | None,
    log_lines: Sequence[str],
    out: TextIO,
    *,
    traces: tuple[Sequence[Traced], Traced] | None = None,
    checks: Sequence[tuple[str, str]] = (),
) -> int:
    """Print what was found and decided; return the exit status for the message's fate.
    `traces`: for each recipient and for the message, why a hit fired, printed under it.
    Names an SMTP client chose (HELO, recipients) are printed bare only if plain."""
    rcpt_traces, message_trace = traces if traces is not None else ((), _no_trace)
    name, helo = plain(session.client_name), plain(session.helo_name)
    print(f"client {session.address_text} name={name} helo={helo}", file=out)
    for check, result in checks:
        print(f"{check}: {result}", file=out)
    for index, (rcpt, decision) in enumerate(decisions):
        label = decision.action.label + (f" ({decision.why})" if decision.why else "")
        print(f"recipient {plain(rcpt)}: {label}", file=out)
        if decision.verdict is not None:
            explained = rcpt_traces[index] if index < len(rcpt_traces) else _no_trace
            _print_verdict(decision.verdict, out, explained)
        if decision.reply is not None:
            _print_reply(decision.reply, out)
    if message is not None:
        print(f"message: {message.action.label}", file=out)
        _print_verdict(message.verdict, out, message_trace)
        if message.reply is not None:
            _print_reply(message.reply, out)
        for header, value in (*message.prepend_headers, *message.add_headers):
            print(f"  + {header}: {value}", file=out)
        if message.quarantine_reason:
            print(f"  quarantined: {message.quarantine_reason}", file=out)
    for line in log_lines:
        print(f"log: {line}", file=out)
    return _exit_status(decisions, message)


def _exit_status(
    decisions: Sequence[tuple[str, RcptDecision]], message: MessageDecision | None
) -> int:
    if message is not None:
        return EXIT_BY_ACTION[message.action]
    # No message: the mail's fate is that of its best-treated recipient.
    return EXIT_BY_ACTION[min(d.action for _, d in decisions)]


# Why a hit fired, by hit name; None: nothing to show.
Traced = Callable[[str], Step | None]


def _no_trace(name: str) -> Step | None:
    return None


def _print_reply(reply: Reply, out: TextIO) -> None:
    print(f"  -> {reply.code} {reply.status} {reply.text}", file=out)


def _print_verdict(verdict: Verdict, out: TextIO, explained: Traced = _no_trace) -> None:
    group = f", policy {verdict.group}" if verdict.group != DEFAULT_GROUP else ""
    print(f"  score {verdict.score:.1f} -> {verdict.action.label}{group}", file=out)
    for hit in verdict.hits:
        trial = " (observe: not counted)" if hit.observe else ""
        print(f"    {hit.score:+6.1f}  {hit.name:<28} {hit.description}{trial}", file=out)
        step = explained(hit.name)
        for line in lines(step) if step is not None else ():
            print(f"{'':14}{line}", file=out)
    # Lists with `on_unusable: tempfail` whose answer could have changed the verdict.
    changed = "the action (on_unusable: tempfail)"
    for name in verdict.tempfail_by:
        print(f"  tempfail: {name} could not be asked, and could have changed {changed}", file=out)
    if verdict.trial_action is not None and verdict.trial_score is not None:
        trial = f"{verdict.trial_score:.1f} -> {verdict.trial_action.label}"
        print(f"  if the observed hits counted: {trial}", file=out)
    for name in verdict.trial_tempfail_by:
        print(f"  on trial: {name} could not be asked, and could have changed {changed}", file=out)


def report_json(
    talk: Conversation,
    log_lines: Sequence[str],
    out: TextIO,
    *,
    traces: tuple[Sequence[Traced], Traced],
    dns: bool = True,
) -> int:
    """`--json`: what `report` prints, as one JSON object for scripts; the same exit status.
    Trace details are the strings `report` prints (escaped and cut); the rest is as given."""
    rcpt_traces, message_trace = traces
    session, message = talk.session, talk.message
    recipients = []
    for index, (rcpt, decision) in enumerate(talk.decisions):
        explained = rcpt_traces[index] if index < len(rcpt_traces) else _no_trace
        recipients.append(
            {
                "recipient": rcpt,
                "action": decision.action.label,
                "why": decision.why,
                "verdict": _verdict_json(decision.verdict, explained),
                "reply": _reply_json(decision.reply),
            }
        )
    document: dict[str, object] = {
        "client": {
            "address": session.address_text,
            "name": session.client_name,
            "helo": session.helo_name,
        },
        "dns": dns,
        "checks": dict(talk.checks),
        "recipients": recipients,
        "message": None,
        "log": list(log_lines),
        "exit_status": _exit_status(talk.decisions, message),
    }
    if message is not None:
        document["message"] = {
            "action": message.action.label,
            "verdict": _verdict_json(message.verdict, message_trace),
            "reply": _reply_json(message.reply),
            "add_headers": [
                [header, value]
                for header, value in (*message.prepend_headers, *message.add_headers)
            ],
            "quarantined": message.quarantine_reason,
        }
    # ensure_ascii: control characters and undecodable bytes leave as \u escapes.
    print(json.dumps(document, indent=2, ensure_ascii=True), file=out)
    return _exit_status(talk.decisions, message)


def _verdict_json(verdict: Verdict | None, explained: Traced) -> dict[str, object] | None:
    if verdict is None:
        return None
    hits = []
    for hit in verdict.hits:
        step = explained(hit.name)
        hits.append(
            {
                "name": hit.name,
                "score": hit.score,
                "description": hit.description,
                "observe": hit.observe,
                "trace": None if step is None else as_json(step),
            }
        )
    return {
        "score": verdict.score,
        "action": verdict.action.label,
        "group": verdict.group,
        "hits": hits,
        "tempfail_by": list(verdict.tempfail_by),
        "trial_score": verdict.trial_score,
        "trial_action": None if verdict.trial_action is None else verdict.trial_action.label,
    }


def _reply_json(reply: Reply | None) -> dict[str, object] | None:
    if reply is None:
        return None
    return {"code": reply.code, "status": reply.status, "text": reply.text}
