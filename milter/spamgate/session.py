"""One SMTP connection as spamgate sees it, independent of libmilter.

The milter adapter feeds a Session the events Postfix reports; `spamgate explain` feeds one
the same events from the command line and a message file. A Session gathers facts, starts
DNS lookups as soon as the name to look up is known, asks the engine for verdicts at RCPT TO
and at end of message, and logs one decision line per transaction. It raises on bugs; the
adapter turns that into the `on_error` answer.

Two lifetimes, as in aiosmtpd: connection facts (client, HELO, reverse DNS, list lookups)
outlive transactions (MAIL FROM .. end of message); a new MAIL FROM or an abort starts over
with the transaction only.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from spamgate import domains, headers
from spamgate.answers import Lookups
from spamgate.config import DomainList, DomainQuery, DomainSource, Mode, Policy
from spamgate.decisionlog import Decision, format_decision
from spamgate.dnslists import IPAddress, ListLookups, ListOutcome, lookup_address
from spamgate.engine import (
    OUR_HEADERS,
    Action,
    Enforcement,
    Engine,
    Evidence,
    Group,
    ListsIgnored,
    Verdict,
)
from spamgate.greylist import Greylister, GreylistOutcome, GreylistTiming, GreylistVerdict
from spamgate.listhealth import ListMonitor
from spamgate.metrics import Metrics
from spamgate.nameprobes import PendingResolution
from spamgate.rdns import PendingReverse, RdnsStatus, ReverseDns, from_mta_macros
from spamgate.recentrejects import RecentRejects
from spamgate.replies import Reply
from spamgate.rules import ConnectionFacts, EnvelopeFacts, Facts, MessageFacts, Stage
from spamgate.state import FailureReport, MemoryStore

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 5321 4.5.3.1.10: 452 4.5.3 is "too many recipients"; clients send the rest in another
# transaction, which is exactly what a recipient with a different policy needs.
SPLIT_REPLY = Reply(
    452, "4.5.3", "Too many recipients: this one has another filter policy, send it separately"
)
_UNKNOWN_RDNS = ReverseDns(RdnsStatus.UNKNOWN)
MAX_PARSED_PER_HEADER = 3


# Decision ids only need to be unique enough to find one log line: a seeded generator (seeded
# from os.urandom) gives them without a system call per message, as secrets would make.
_DECISION_IDS = random.Random()
_DECISION_LOG = logging.getLogger("spamgate.decision")


@dataclass(frozen=True)
class Generation:
    """Everything made from one policy file: the policy and its engine (compiled rules
    included), the resolver its settings made, and its greylisting and reject memory.

    A reload makes a new one and installs it with one assignment (`Runtime.current`); a
    session takes one when it starts and uses only that one, so it never sees the engine of
    one policy with the resolver or greylist settings of another."""

    engine: Engine
    resolver: Lookups
    greylister: Greylister | None = None
    recent_rejects: RecentRejects | None = None
    number: int = 1  # 1 at start, one more at each reload

    @property
    def policy(self) -> Policy:
        return self.engine.policy


class Runtime:
    """What every session shares: the current generation, the clocks, the monitor, metrics
    and log. Only `current` changes with a reload, in one assignment."""

    def __init__(
        self,
        engine: Engine,
        resolver: Lookups,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        new_id: Callable[[], str] = lambda: f"{_DECISION_IDS.getrandbits(40):010x}",
        monitor: ListMonitor | None = None,  # None: one for the engine's lists is made
        # None: when the policy greylists, one that keeps its state in memory (explain, tests).
        greylister: Greylister | None = None,
        recent_rejects: RecentRejects | None = None,  # None: no memory of refused clients
        state_failures: FailureReport | None = None,
        metrics: Metrics | None = None,  # None: nothing counted (explain)
        log: Callable[[str], None] = _DECISION_LOG.info,
        dns: bool = True,  # False (explain --no-dns): no lookups; lists logged as ignored
        generation: int = 1,
    ) -> None:
        policy = engine.policy
        if monitor is None:
            monitor = ListMonitor((*policy.ip_lists, *policy.domain_lists), policy.health, clock)
        if greylister is None and policy.uses_greylist:
            timing = GreylistTiming.from_settings(policy.greylist)
            greylister = Greylister(MemoryStore(), timing, time.time)
        self.current = Generation(engine, resolver, greylister, recent_rejects, generation)
        self.clock = clock
        self.now = now
        self.new_id = new_id
        self.monitor = monitor
        self.state_failures = FailureReport() if state_failures is None else state_failures
        self.metrics = metrics
        self.log = log
        self.dns = dns
        self.draining = False  # stopping: new sessions are turned away
        self._active = 0
        self._active_lock = threading.Lock()
        self.last_session_at = -1e9  # by `clock`: when libmilter last handed us a session

    def session_started(self) -> None:
        with self._active_lock:
            self._active += 1
            self.last_session_at = self.clock()

    def session_ended(self) -> None:
        with self._active_lock:
            self._active -= 1

    def active_sessions(self) -> int:
        return self._active


class RcptResult(enum.Enum):
    CONTINUE = "continue"  # recipient accepted, keep filtering
    REFUSE = "refuse"  # reply carries 4xx/5xx for this recipient
    ACCEPT_ALL = "accept_all"  # allowlisted: accept the message, stop filtering it


@dataclass(frozen=True)
class RcptDecision:
    result: RcptResult
    reply: Reply | None = None
    verdict: Verdict | None = None  # None when no score was needed (exempt, allowed, denied)
    action: Action = Action.ACCEPT
    why: str = ""  # exempt, allowed_by/denied_by, or "split"


@dataclass(frozen=True)
class MessageDecision:
    action: Action
    verdict: Verdict
    reply: Reply | None = None
    delete_headers: tuple[tuple[str, int], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    quarantine_reason: str = ""


@dataclass(frozen=True)
class Judgement:
    """A verdict with what it was based on and what was done with it."""

    evidence: Evidence
    verdict: Verdict
    enforcement: Enforcement


@dataclass
class Transaction:
    decision_id: str
    sender: str  # as in MAIL FROM, for the log
    bare_sender: str  # lower case, no <>; "" for the null sender
    authenticated: bool
    allowed_by: str = ""  # by client, name, HELO or sender: the whole transaction
    denied_by: str = ""
    recipients_allowed_by: list[str] = field(default_factory=list)
    recipients_denied_by: list[str] = field(default_factory=list)
    sender_resolution: PendingResolution | None = None
    recipients: list[str] = field(default_factory=list)  # bare, every RCPT TO
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    # Accepted recipients that must not be refused (postmaster@, abuse@, allow.recipients):
    # they are in `accepted` too. A transaction with any other accepted recipient is judged as
    # usual at end of message, whatever these are (see Session.rcpt).
    unrefusable: list[str] = field(default_factory=list)
    group: Group | None = None
    groups: dict[str, Group] = field(default_factory=dict)
    last: Judgement | None = None
    header_hits: set[str] = field(default_factory=set)
    header_counts: dict[str, int] = field(default_factory=dict)
    malformed: set[str] = field(default_factory=set)
    date_skew: datetime.timedelta | None = None
    from_domains: list[str] = field(default_factory=list)
    our_headers: dict[str, int] = field(default_factory=dict)
    parsed_counts: dict[str, int] = field(default_factory=dict)
    greylist: dict[str, GreylistVerdict] = field(default_factory=dict)  # by recipient
    logged: bool = False
    # The sender's and the header domains' list lookups, with the connection's: made at MAIL
    # FROM, gone with the transaction (ListLookups).
    lookups: ListLookups | None = None


class Session:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Read once: the generation (policy, engine, resolver, state) this connection keeps,
        # whatever a reload installs meanwhile.
        generation = runtime.current
        self.generation = generation
        self.engine = generation.engine
        self.policy: Policy = generation.policy
        self.resolver = generation.resolver
        self.greylister = generation.greylister
        self.recent_rejects = generation.recent_rejects
        self.remembered: tuple[str, ...] = ()  # hits it was refused for lately, if any
        self._rejection_noted = False
        self.address: IPAddress | None = None
        self.address_text = "unknown"
        self.client_name = ""
        self.helo_name = ""
        self.lists_ignored: ListsIgnored | None = None
        self.allowed_by = ""
        self.denied_by = ""
        self.our_names: frozenset[str] = frozenset()
        self.our_addresses: tuple[IPNetwork, ...] = ()
        self.lookups = ListLookups(self.resolver, runtime.clock, _Recorders(runtime))
        self.closed = False
        runtime.session_started()
        self.reverse: PendingReverse | ReverseDns | None = None
        self.helo_resolution: PendingResolution | None = None
        self.transaction: Transaction | None = None
        self._rdns: ReverseDns | None = None
        self.connected_at = runtime.clock()
        # Headers worth parsing: those rules judge, and those whose domains lists look up.
        sources = {s for d in self.policy.domain_lists for s in d.check_names}
        self._parsed_headers = self.engine.rulebook.parsed_headers | {
            name
            for name, source in (("from", DomainSource.FROM), ("reply-to", DomainSource.REPLY_TO))
            if source in sources
        }

    # -- connection -------------------------------------------------------------------------

    def connect(
        self, client_name: str, address: IPAddress | None, macros: Mapping[str, str | None]
    ) -> None:
        policy = self.policy
        self.connected_at = self.runtime.clock()
        self.address = address
        self.address_text = str(address) if address else "unknown"
        self.client_name = client_name
        names = (macros.get("j") or "", *policy.our_names)
        self.our_names = frozenset(n for n in map(domains.normalize_domain, names) if n)
        self.our_addresses = policy.our_addresses + _networks(macros.get("{daemon_addr}"))
        allow, deny = policy.allow, policy.deny
        self.allowed_by = _labelled("client", allow.client_set.match(address)) or _labelled(
            "client_name", allow.client_name_set.match(_verified(client_name))
        )
        self.denied_by = _labelled("client", deny.client_set.match(address)) or _labelled(
            "client_name", deny.client_name_set.match(_verified(client_name))
        )
        if address is None:
            self.lists_ignored = ListsIgnored.NO_ADDRESS
        elif any(lookup_address(address) in net for net in policy.trusted_networks):
            self.lists_ignored = ListsIgnored.TRUSTED
        elif self.allowed_by:
            self.lists_ignored = ListsIgnored.ALLOWED
        elif not self.runtime.dns:
            self.lists_ignored = ListsIgnored.NO_DNS
        if self.lists_ignored is not None or address is None or self._recalls_rejection(address):
            return
        # Start now, so the lookups overlap HELO, MAIL and the rest of the dialogue.
        self.lookups.start_ip_lists(address, policy.ip_lists)
        if self._needs_rdns():
            mta = None
            if policy.reverse_dns.use_mta_macros:
                mta = from_mta_macros(
                    macros.get("{client_resolve}"), macros.get("{client_ptr}"), client_name
                )
            if mta is not None:
                self.reverse = mta
                self._start_ptr_lists(mta)
            else:
                pending = PendingReverse(self.resolver, address, self.runtime.clock)
                self.reverse = pending
                # Runs on the resolver's thread as soon as the name is known.
                pending.add_done_callback(self._start_ptr_lists)

    def _recalls_rejection(self, address: IPAddress) -> bool:
        """Whether the client was refused for its listings lately: then its hits are replayed
        from memory, and nothing is looked up (no lists, no reverse DNS, no HELO checks)."""
        memory = self.recent_rejects
        if memory is None:
            return False
        try:
            self.remembered = memory.recall(address)
        except Exception as error:  # the store failed: ask the lists as if it had said nothing
            self._note_state_failure(f"{type(error).__name__}: {error}")
            return False
        if self.remembered:
            self.lists_ignored = ListsIgnored.REMEMBERED
        return bool(self.remembered)

    def _remember_rejection(self, judged: Judgement, group: Group) -> None:
        memory = self.recent_rejects
        if memory is None or self._rejection_noted or self.address is None:
            return
        names = self.engine.listings_to_remember(judged.verdict, judged.evidence, group)
        if not names:
            return
        self._rejection_noted = True
        try:
            memory.remember(self.address, names)
        except Exception as error:
            self._note_state_failure(f"{type(error).__name__}: {error}")

    def _note_state_failure(self, error: str) -> None:
        self.runtime.state_failures.note(self.policy.state.store_shown, error)

    def _start_ptr_lists(self, rdns: ReverseDns) -> None:
        """Domain lists for the client's name. Their deadline counts from connect, like the
        reverse lookup they follow, so a verdict never waits for the two one after another."""
        if rdns.name:
            self._start_domain_lists(DomainSource.PTR, rdns.name, started_at=self.connected_at)

    def _needs_rdns(self) -> bool:
        policy = self.policy
        return (
            self.engine.rulebook.needs_rdns
            or bool(policy.allow.client_name_set or policy.deny.client_name_set)
            or any(DomainSource.PTR in d.check_names for d in policy.domain_lists)
        )

    def helo(self, name: str) -> None:
        self.helo_name = name
        allow, deny = self.policy.allow, self.policy.deny
        self.allowed_by = self.allowed_by or _labelled("helo", allow.helo_name_set.match(name))
        self.denied_by = self.denied_by or _labelled("helo", deny.helo_name_set.match(name))
        if self.lists_ignored is not None or not domains.is_fqdn(name):
            return
        if self.engine.rulebook.needs_helo_resolution:
            self.helo_resolution = PendingResolution(
                self.resolver,
                name,
                mail_domain=False,
                clock=self.runtime.clock,
            )
        self._start_domain_lists(DomainSource.HELO, name)

    def rdns(self) -> ReverseDns:
        """The client's reverse DNS, waiting for it (within the deadline) the first time."""
        if self._rdns is None:
            reverse = self.reverse
            if isinstance(reverse, PendingReverse):
                reverse = reverse.collect(self.policy.resolver.deadline)
            self._rdns = reverse or _UNKNOWN_RDNS
            confirmed = self._rdns.confirmed_name
            allow, deny = self.policy.allow, self.policy.deny
            if confirmed and not self.allowed_by:
                self.allowed_by = _labelled("client_name", allow.client_name_set.match(confirmed))
            if confirmed and not self.denied_by:
                self.denied_by = _labelled("client_name", deny.client_name_set.match(confirmed))
        return self._rdns

    def _start_domain_lists(
        self, source: DomainSource, name: str, started_at: float | None = None
    ) -> None:
        for dns_list in self.policy.domain_lists:
            if source in dns_list.check_names:
                self._start_domain_list(dns_list, source, name, started_at)

    def _start_domain_list(
        self, dns_list: DomainList, source: DomainSource, name: str, started_at: float | None
    ) -> None:
        domain = domains.normalize_domain(name)
        if domain is None or domains.is_ip_literal(name):
            return
        if dns_list.query is DomainQuery.ORGANIZATIONAL:
            domain = domains.organizational_domain(domain)
        qname = domains.domain_query_name(domain, dns_list.query_zone)
        if qname is None:
            return  # an IP literal, a single label, too long: no valid query exists
        stage = _SOURCE_STAGE[source]
        subject = f"{source.value}:{domain}"
        lookups = self.lookups
        if stage is not Stage.CONNECTION:
            # A transaction's name: its lookup goes with the transaction (ListLookups).
            transaction = self._transaction()
            assert transaction.lookups is not None  # made with the transaction, at MAIL
            lookups = transaction.lookups
        lookups.start(dns_list, qname, subject=subject, stage=stage, started_at=started_at)

    # -- transaction ------------------------------------------------------------------------

    def mail(self, sender: str, authenticated: bool) -> None:
        self.finish_transaction()
        bare = domains.bare_address(sender)
        transaction = Transaction(self.runtime.new_id(), sender, bare, authenticated)
        transaction.lookups = ListLookups(
            self.resolver, self.runtime.clock, self.lookups.recorder, connection=self.lookups
        )
        allow, deny = self.policy.allow, self.policy.deny
        transaction.allowed_by = _labelled("sender", allow.sender_set.match(bare or "<>"))
        transaction.denied_by = _labelled("sender", deny.sender_set.match(bare or "<>"))
        self.transaction = transaction
        domain = domains.domain_of_address(bare) if bare else None
        if domain is None or self.lists_ignored is not None or self._skips(transaction):
            return
        if self.engine.rulebook.needs_sender_resolution:
            transaction.sender_resolution = PendingResolution(
                self.resolver,
                domain,
                mail_domain=True,
                clock=self.runtime.clock,
            )
        self._start_domain_lists(DomainSource.SENDER, domain)

    def _skips(self, transaction: Transaction) -> bool:
        """Whether this transaction's client is spared DNS evidence as authenticated."""
        return transaction.authenticated and self.policy.skip_authenticated

    def rcpt(self, recipient: str) -> RcptDecision:
        transaction = self._transaction()
        engine = self.engine
        bare = domains.bare_address(recipient)
        transaction.recipients.append(bare)
        if engine.is_exempt(recipient):
            return self._accept_unrefusable(transaction, bare)
        if self.reverse is not None:
            self.rdns()  # a confirmed client name may be on the allow or deny list
        allowed_by = self.allowed_by or transaction.allowed_by
        if allowed_by:
            transaction.allowed_by = allowed_by
            transaction.accepted.append(bare)
            # Logged when the transaction ends, with every recipient (end_of_message).
            transaction.last = self._unscored(
                ListsIgnored.ALLOWED, Action.ACCEPT, Enforcement(Action.ACCEPT)
            )
            return RcptDecision(RcptResult.ACCEPT_ALL, why=f"allowed_by={allowed_by}")
        allow_rcpt = _labelled("recipient", self.policy.allow.recipient_set.match(bare))
        if allow_rcpt:
            return self._accept_unrefusable(transaction, bare, allowed_by=allow_rcpt)
        group = engine.group_for(bare)
        denied_by = (
            self.denied_by
            or transaction.denied_by
            or _labelled("recipient", self.policy.deny.recipient_set.match(bare))
        )
        if denied_by:
            return self._deny(transaction, bare, denied_by, group)
        if (
            self.policy.split_recipient_policies
            and transaction.group is not None
            and group.name != transaction.group.name
        ):
            why = f"split: policy {group.name}, transaction {transaction.group.name}"
            return self._split(transaction, bare, why)
        judged = self._verdict_now(transaction, group, Stage.ENVELOPE)
        if judged.enforcement.action is Action.GREYLIST:
            judged = self._greylist(transaction, (bare,), judged)
        transaction.last = judged
        verdict, enforcement = judged.verdict, judged.enforcement
        if enforcement.reply is not None:
            transaction.refused.append(bare)
            if enforcement.action is Action.REJECT:
                self._remember_rejection(judged, group)
            return RcptDecision(RcptResult.REFUSE, enforcement.reply, verdict, enforcement.action)
        if self.policy.split_recipient_policies and transaction.unrefusable:
            # Accepted, it would share a message with recipients that must not be refused,
            # and what the headers say would reach it too (_accept_unrefusable).
            return self._split(transaction, bare, "split: transaction for exempt recipients")
        transaction.group = transaction.group or group
        transaction.groups[group.name] = group
        transaction.accepted.append(bare)
        return RcptDecision(
            RcptResult.CONTINUE, None, verdict, enforcement.action, enforcement.waived_by
        )

    def _deny(
        self, transaction: Transaction, bare: str, denied_by: str, group: Group
    ) -> RcptDecision:
        if denied_by not in transaction.recipients_denied_by:
            transaction.recipients_denied_by.append(denied_by)
        if group.mode is Mode.OBSERVE:
            # Observe mode refuses nothing, deny lists included: log what would have happened.
            enforcement = Enforcement(Action.ACCEPT, waived_by="observe")
            transaction.last = self._unscored(ListsIgnored.DENIED, Action.REJECT, enforcement)
            transaction.accepted.append(bare)
            transaction.group = transaction.group or group
            transaction.groups[group.name] = group
            return RcptDecision(RcptResult.CONTINUE, why=f"denied_by={denied_by}, observe")
        enforcement = self.engine.deny(transaction.decision_id, self.address_text)
        transaction.refused.append(bare)
        transaction.last = self._unscored(ListsIgnored.DENIED, Action.REJECT, enforcement)
        return RcptDecision(
            RcptResult.REFUSE, enforcement.reply, action=Action.REJECT, why=f"denied_by={denied_by}"
        )

    def _unscored(
        self, reason: ListsIgnored, action: Action, enforcement: Enforcement
    ) -> Judgement:
        """For allow and deny list decisions: nothing is scored, nothing waited for."""
        evidence = Evidence((), reason, ())
        verdict = dataclasses.replace(self.engine.evaluate(evidence), action=action)
        return Judgement(evidence, verdict, enforcement)

    def _split(self, transaction: Transaction, bare: str, why: str) -> RcptDecision:
        """452 4.5.3 for this recipient: the client sends it in a transaction of its own."""
        transaction.recipients.pop()
        transaction.deferred.append(bare)
        return RcptDecision(RcptResult.REFUSE, SPLIT_REPLY, action=Action.TEMPFAIL, why=why)

    def _accept_unrefusable(
        self, transaction: Transaction, bare: str, *, allowed_by: str = ""
    ) -> RcptDecision:
        """Accept a recipient that must not be refused (exempt or allowlisted).

        Such a recipient must not shield the others of its message from what the headers say:
        with `split_recipient_policies` (the default) a transaction holds either such
        recipients or others, and a recipient of the other kind gets 452 4.5.3 (sent again
        in a transaction of its own, as for another policy); without splitting, a message
        with any other recipient is judged as usual, these included (end_of_message)."""
        why = f"allowed_by={allowed_by}" if allowed_by else "exempt"
        judged = len(transaction.accepted) - len(transaction.unrefusable)
        if self.policy.split_recipient_policies and judged:
            return self._split(transaction, bare, f"split: {why}, transaction for others")
        if allowed_by:
            transaction.recipients_allowed_by.append(allowed_by)
        transaction.accepted.append(bare)
        transaction.unrefusable.append(bare)
        if transaction.last is None:
            transaction.last = self._verdict_now(
                transaction, transaction.group or self.engine.default_group, Stage.ENVELOPE
            )
        return RcptDecision(RcptResult.CONTINUE, why=why)

    def header(self, name: str, value: str) -> None:
        transaction = self.transaction
        if transaction is None:
            return
        lowered = name.lower()
        rulebook = self.engine.rulebook
        if lowered in OUR_HEADERS:
            transaction.our_headers[name] = transaction.our_headers.get(name, 0) + 1
        if transaction.allowed_by:
            return  # accepted without scoring: only forged verdict headers go
        if lowered in rulebook.counted_headers:
            transaction.header_counts[lowered] = transaction.header_counts.get(lowered, 0) + 1
        transaction.header_hits.update(rulebook.match_header(lowered, value))
        # Parsing costs CPU per byte and a sender may repeat a header at will: the first few
        # occurrences say all a rule needs (RFC 5322 allows one From, Sender, Reply-To, Date).
        seen = transaction.parsed_counts.get(lowered, 0)
        if lowered in self._parsed_headers and seen < MAX_PARSED_PER_HEADER:
            transaction.parsed_counts[lowered] = seen + 1
            if lowered == "date":
                self._note_date(transaction, value)
            else:
                self._note_addresses(transaction, lowered, value)

    def _note_date(self, transaction: Transaction, value: str) -> None:
        skew = headers.date_skew(value, self.runtime.now())
        if skew is None:
            transaction.malformed.add("date")
        elif transaction.date_skew is None:
            transaction.date_skew = skew

    def _note_addresses(self, transaction: Transaction, lowered: str, value: str) -> None:
        # From and Sender must name a mailbox; "To: undisclosed-recipients:;" is fine.
        mailbox = lowered in ("from", "sender")
        addresses = headers.header_addresses(value, mailbox_required=mailbox)
        if addresses is None:
            transaction.malformed.add(lowered)
            return
        found = [d for d in (domains.domain_of_address(a) for a in addresses) if d]
        if lowered == "from":
            transaction.from_domains += found
        source = {"from": DomainSource.FROM, "reply-to": DomainSource.REPLY_TO}.get(lowered)
        if source is not None and self.lists_ignored is None and not self._skips(transaction):
            for domain in found[:4]:  # a header with a hundred addresses gets no hundred lookups
                self._start_domain_lists(source, domain)

    def end_of_message(self, queue_id: str) -> MessageDecision:
        transaction = self._transaction()
        engine = self.engine
        if transaction.allowed_by and transaction.last is not None:
            # Allowlisted at RCPT: nothing is scored or added, but a verdict header that came
            # from outside must not reach the recipient either.
            self._log(transaction, transaction.last, "rcpt", queue_id)
            return MessageDecision(
                Action.ACCEPT,
                transaction.last.verdict,
                delete_headers=self._foreign_headers(transaction),
            )
        groups = list(transaction.groups.values()) or [transaction.group or engine.default_group]
        candidates = [self._verdict_now(transaction, g, Stage.MESSAGE) for g in groups]
        # Without splitting, recipients of several policies share one answer: the mildest,
        # so that nobody loses mail their own policy would accept (README: per-recipient).
        judged = min(candidates, key=lambda j: j.enforcement.action)
        if judged.enforcement.action is Action.GREYLIST:
            # Header rules raised the score into the band: every recipient's triplet must have
            # retried once, or the whole message gets 451 at end of data.
            judged = self._greylist(transaction, tuple(transaction.accepted), judged)
        transaction.last = judged
        self._log(transaction, judged, "eom", queue_id)
        verdict, enforcement = judged.verdict, judged.enforcement
        if enforcement.reply is not None:
            return MessageDecision(enforcement.action, verdict, enforcement.reply)
        return MessageDecision(
            enforcement.action,
            verdict,
            delete_headers=self._foreign_headers(transaction),
            add_headers=engine.spam_headers(verdict, enforcement.action)
            + _greylist_headers(transaction),
            quarantine_reason=enforcement.quarantine_reason,
        )

    def _greylist(
        self, transaction: Transaction, recipients: tuple[str, ...], judged: Judgement
    ) -> Judgement:
        """The verdict says greylist: ask the state whether these triplets retried in time.
        A retry that passed, a triplet or network known to retry, and a store that failed
        all accept the mail, tagged; the rest get `451 4.7.1` saying when to retry."""
        waived_by = self._greylist_waiver(transaction)
        if waived_by:
            return dataclasses.replace(
                judged, enforcement=Enforcement(Action.TAG, waived_by=waived_by)
            )
        verdicts = [
            transaction.greylist.get(r) or self._check_triplet(transaction, r) for r in recipients
        ]
        waiting = [v.retry_after for v in verdicts if v.outcome.tempfails]
        if not waiting:
            return dataclasses.replace(judged, enforcement=Enforcement(Action.TAG))
        reply = self.engine.greylist_reply(
            judged.verdict, transaction.decision_id, self.address_text, max(waiting)
        )
        return dataclasses.replace(judged, enforcement=Enforcement(Action.GREYLIST, reply))

    def _greylist_waiver(self, transaction: Transaction) -> str:
        """Why this client is never greylisted, if it is not: it authenticated, or it is one
        of ours, or there is no address to remember it by."""
        if transaction.authenticated:
            return "authenticated"
        ignored = self.lists_ignored
        if ignored in (ListsIgnored.TRUSTED, ListsIgnored.NO_ADDRESS):
            return str(ignored.value)  # the same token as lists_ignored=
        if self.greylister is None or self.address is None:
            return "no-state"
        return ""

    def _check_triplet(self, transaction: Transaction, recipient: str) -> GreylistVerdict:
        assert self.greylister is not None and self.address is not None
        verdict = self.greylister.check(self.address, transaction.bare_sender, recipient)
        transaction.greylist[recipient] = verdict
        if verdict.outcome is GreylistOutcome.FAILED_OPEN:
            self._note_state_failure(verdict.error or "unknown error")
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.record_greylist(verdict.outcome.value)
        return verdict

    @staticmethod
    def _foreign_headers(transaction: Transaction) -> tuple[tuple[str, int], ...]:
        # Headers named like ours that came from outside would be believed downstream: delete
        # every occurrence (highest index first, so earlier indexes stay valid).
        return tuple(
            (name, index)
            for name, count in transaction.our_headers.items()
            for index in range(count, 0, -1)
        )

    def _verdict_now(self, transaction: Transaction, group: Group, stage: Stage) -> Judgement:
        started = self.runtime.clock()
        judged = self._judge(transaction, group, stage)
        metrics = self.runtime.metrics
        if metrics is not None:
            label = "eom" if stage is Stage.MESSAGE else "rcpt"
            metrics.record_decision_latency(label, self.runtime.clock() - started)
        return judged

    def _judge(self, transaction: Transaction, group: Group, stage: Stage) -> Judgement:
        policy = self.policy
        ignored, remembered = self.lists_ignored, self.remembered
        if (
            ignored in (None, ListsIgnored.REMEMBERED)
            and transaction.authenticated
            and policy.skip_authenticated
        ):
            ignored, remembered = ListsIgnored.AUTHENTICATED, ()
        lookups = transaction.lookups or self.lookups
        outcomes = lookups.collect(policy.resolver.deadline, stage)
        list_hits: list[str] = []
        trial_list_hits: list[str] = []
        for outcome in outcomes if ignored is None else ():
            on_trial = outcome.dns_list.mode is Mode.OBSERVE
            (trial_list_hits if on_trial else list_hits).extend(h.name for h in outcome.hits)
        # Trusted, allowed and authenticated clients are not judged by HELO or reverse DNS.
        facts = self._facts(
            transaction, stage, connection_rules=ignored in (None, ListsIgnored.NO_DNS)
        )
        rules = self.engine.rulebook.fire(stage, facts, list_hits, trial_list_hits)
        evidence = Evidence(outcomes, ignored, rules, remembered)
        verdict = self.engine.evaluate(evidence, group)
        enforcement = self.engine.enforce(
            verdict,
            transaction.decision_id,
            exempt=stage is Stage.MESSAGE and _only_unrefusable(transaction),
            client=self.address_text,
            group=group,
        )
        return Judgement(evidence, verdict, enforcement)

    def _facts(self, transaction: Transaction, stage: Stage, *, connection_rules: bool) -> Facts:
        deadline = self.policy.resolver.deadline
        connection = ConnectionFacts()
        if connection_rules:
            connection = ConnectionFacts(
                address=self.address,
                helo=self.helo_name.strip(),
                rdns=self.rdns() if self.reverse is not None else _UNKNOWN_RDNS,
                helo_resolves=self.helo_resolution.collect(deadline)
                if self.helo_resolution
                else None,
                our_names=self.our_names,
                our_addresses=self.our_addresses,
            )
        resolution = transaction.sender_resolution
        envelope = EnvelopeFacts(
            sender=transaction.bare_sender,
            sender_domain_resolves=resolution.collect(deadline) if resolution else None,
            recipients=tuple(transaction.recipients),
        )
        message = MessageFacts()
        if stage is Stage.MESSAGE:
            message = MessageFacts(
                header_hits=frozenset(transaction.header_hits),
                header_counts=dict(transaction.header_counts),
                malformed=frozenset(transaction.malformed),
                date_skew=transaction.date_skew,
                from_domains=tuple(transaction.from_domains),
            )
        return Facts(connection, envelope, message)

    # -- endings ----------------------------------------------------------------------------

    def finish_transaction(self) -> None:
        """Log a transaction that ended before end of message, if anything was decided."""
        transaction, self.transaction = self.transaction, None
        if transaction is None or transaction.logged or transaction.last is None:
            return
        self._log(transaction, transaction.last, "rcpt", "")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.runtime.session_ended()
        self.finish_transaction()

    def _transaction(self) -> Transaction:
        if self.transaction is None:
            raise RuntimeError("no transaction in progress")
        return self.transaction

    def _log(self, transaction: Transaction, judged: Judgement, stage: str, queue_id: str) -> None:
        transaction.logged = True
        evidence, verdict = judged.evidence, judged.verdict
        rdns = self._rdns
        decision = Decision(
            decision_id=transaction.decision_id,
            queue_id=queue_id,
            client_address=self.address_text,
            client_name=self.client_name,
            helo=self.helo_name,
            sender=transaction.sender,
            accepted=tuple(f"<{r}>" for r in transaction.accepted),
            refused=tuple(f"<{r}>" for r in transaction.refused),
            deferred=tuple(f"<{r}>" for r in transaction.deferred),
            stage=stage,
            verdict=verdict,
            enforced=judged.enforcement,
            mode=self.engine.group_named(verdict.group).mode,
            lists=evidence.lists,
            lists_ignored=evidence.lists_ignored,
            rdns=_render_rdns(rdns),
            allowed_by=",".join(
                dict.fromkeys(
                    filter(None, [transaction.allowed_by, *transaction.recipients_allowed_by])
                )
            ),
            denied_by=",".join(
                dict.fromkeys(
                    filter(None, [transaction.denied_by, *transaction.recipients_denied_by])
                )
            ),
            policy_digest=self.policy.digest,
            greylist=",".join(
                dict.fromkeys(v.outcome.value for v in transaction.greylist.values())
            ),
        )
        self.runtime.log(format_decision(decision))
        metrics = self.runtime.metrics
        if metrics is not None:
            counted = [hit.name for hit in verdict.hits if not hit.observe]
            metrics.record_decision(
                stage,
                verdict.action.label,
                judged.enforcement.action.label,
                counted,
                verdict.tempfail_by,
            )


_SOURCE_STAGE = {
    DomainSource.HELO: Stage.CONNECTION,
    DomainSource.PTR: Stage.CONNECTION,
    DomainSource.SENDER: Stage.ENVELOPE,
    DomainSource.FROM: Stage.MESSAGE,
    DomainSource.REPLY_TO: Stage.MESSAGE,
}


class _Recorders:
    """Where list outcomes go: the health monitor, and the metrics if counted."""

    def __init__(self, runtime: Runtime) -> None:
        self._monitor = runtime.monitor
        self._metrics = runtime.metrics

    def record(self, outcomes: Iterable[ListOutcome]) -> None:
        outcomes = list(outcomes)
        self._monitor.record(outcomes)
        if self._metrics is not None:
            self._metrics.record_lists(outcomes)

    def answered(self, outcome: ListOutcome) -> None:
        self._monitor.answered(outcome)

    def add_suspension_waiter(self, wake: threading.Event) -> None:
        self._monitor.add_suspension_waiter(wake)

    def remove_suspension_waiter(self, wake: threading.Event) -> None:
        self._monitor.remove_suspension_waiter(wake)

    def is_suspended(self, name: str) -> bool:
        return self._monitor.is_suspended(name)


def _only_unrefusable(transaction: Transaction) -> bool:
    """Whether every accepted recipient is one that must not be refused: then the message is
    delivered, tagged, whatever the headers say; with any other recipient it is judged."""
    return bool(transaction.unrefusable) and len(transaction.unrefusable) == len(
        transaction.accepted
    )


def _greylist_headers(transaction: Transaction) -> tuple[tuple[str, str], ...]:
    """The delay a greylisted message suffered, as postgrey and milter-greylist report it."""
    delays = [
        v.delayed for v in transaction.greylist.values() if v.outcome is GreylistOutcome.PASSED
    ]
    if not delays:
        return ()
    return (("X-Greylist", f"delayed {max(delays):.0f} seconds by spamgate"),)


def _render_rdns(rdns: ReverseDns | None) -> str:
    if rdns is None:
        return ""
    return f"{rdns.status.value}:{rdns.name}" if rdns.name else rdns.status.value


def _labelled(kind: str, match: str) -> str:
    return f"{kind}:{match}" if match else ""


def _verified(client_name: str) -> str:
    """Postfix reports an unverified client as "unknown" or "[address]": not a name."""
    return "" if client_name in ("", "unknown") or client_name.startswith("[") else client_name


@functools.lru_cache(maxsize=64)  # the MTA's own addresses: a handful, asked every connect
def _networks(text: str | None) -> tuple[IPNetwork, ...]:
    try:
        return (ipaddress.ip_network(text.strip("[]")),) if text else ()
    except ValueError:
        return ()
