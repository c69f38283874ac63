"""One SMTP connection as spamgate sees it, independent of libmilter.

The milter adapter feeds a Session the events Postfix reports; `spamgate explain` feeds one
the same events from the command line and a message file. A Session gathers facts, starts
DNS lookups as soon as the name to look up is known, asks `decide` for a ruling at RCPT TO
and at end of message, and applies it: the reply, the headers, one decision line per
transaction, the counters. What the ruling is, it never decides itself. It raises on bugs;
the adapter turns that into the `on_error` answer.

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

from spamgate.core import authresults, decision, dmarc, domains, headerfacts, headers, spf
from spamgate.core.addresses import normalize_network
from spamgate.core.decision import (
    Client,
    Disposition,
    Envelope,
    Facts,
    Judgement,
    Listed,
    Need,
    Retry,
    Ruling,
    decide,
)
from spamgate.core.decisionlog import Decision, format_decision
from spamgate.core.dkim import DkimReport
from spamgate.core.engine import OUR_HEADERS, Action, Engine, Group, Verdict
from spamgate.core.policy import DomainList, DomainQuery, DomainSource, Policy
from spamgate.core.received import Hop, OurHosts
from spamgate.core.replies import Reply
from spamgate.core.rules import MessageFacts, Stage
from spamgate.dns import dkimcheck
from spamgate.dns.answers import Lookups
from spamgate.dns.dnslists import IPAddress, ListLookups, ListOutcome
from spamgate.dns.listhealth import ListMonitor
from spamgate.dns.nameprobes import PendingResolution
from spamgate.dns.rdns import PendingReverse, ReverseDns, from_mta_macros
from spamgate.dns.spfcheck import PendingSpf
from spamgate.shell.metrics import Metrics
from spamgate.state.greylist import Greylister, GreylistOutcome, GreylistTiming, GreylistVerdict
from spamgate.state.recentrejects import RecentRejects
from spamgate.state.store import FailureReport, MemoryStore

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_PARSED_PER_HEADER = 3
_MOST_ROUNDS = len(Need) + 1  # `decide` asks for each need once at most, then answers


# Decision ids only need to be unique enough to find one log line: a seeded generator (seeded
# from os.urandom) gives them without a system call per message, as secrets would make.
_DECISION_IDS = random.Random()
# DMARC's pct= sampling (RFC 7489 6.6.4) needs a uniform draw per message, not a secret one.
_DMARC_SAMPLES = random.Random()
# From: fields kept for DMARC's author domain: two say "several", which is all it asks.
_MOST_FROM_VALUES = 2
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
        # DMARC's pct= sample point, 0..99 (tests fix it).
        dmarc_sample: Callable[[], int] = lambda: _DMARC_SAMPLES.randrange(100),
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
        self.dmarc_sample = dmarc_sample
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


_RESULTS = {
    Disposition.ACCEPTED: RcptResult.CONTINUE,
    Disposition.UNREFUSABLE: RcptResult.CONTINUE,
    Disposition.ALLOWED: RcptResult.ACCEPT_ALL,
    Disposition.REFUSED: RcptResult.REFUSE,
    Disposition.DEFERRED: RcptResult.REFUSE,
}


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
    # Added on top of the header, above every field the message came with: a trace field
    # such as Authentication-Results (RFC 8601 5: prepended, so readers find ours first).
    prepend_headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Transaction:
    decision_id: str
    sender: str  # as in MAIL FROM, for the log
    bare_sender: str  # lower case, no <>; "" for the null sender
    authenticated: bool
    allowed_by: str = ""  # by sender at MAIL FROM; what allowed the transaction at RCPT TO
    denied_by: str = ""  # by sender
    allowed_if_verified: str = ""  # an allow.verified_senders entry, if SPF passes
    recipients_allowed_by: list[str] = field(default_factory=list)
    recipients_denied_by: list[str] = field(default_factory=list)
    sender_resolution: PendingResolution | None = None
    spf: PendingSpf | None = None  # MAIL FROM's SPF check (the HELO name's for <>)
    recipients: list[str] = field(default_factory=list)  # bare, every RCPT TO not split off
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    # Accepted recipients that must not be refused (postmaster@, abuse@, allow.recipients):
    # they are in `accepted` too.
    unrefusable: list[str] = field(default_factory=list)
    groups: dict[str, Group] = field(default_factory=dict)  # of the accepted, the first first
    last: Judgement | None = None
    header_hits: set[str] = field(default_factory=set)
    header_counts: dict[str, int] = field(default_factory=dict)
    malformed: set[str] = field(default_factory=set)
    date_skew: datetime.timedelta | None = None
    from_domains: list[str] = field(default_factory=list)
    our_headers: dict[str, int] = field(default_factory=dict)
    parsed_counts: dict[str, int] = field(default_factory=dict)
    # Every header field, bounded, when a `fact:` rule reads them (Engine.needs_header_view).
    header_fields: list[tuple[str, str]] = field(default_factory=list)
    greylist: dict[str, GreylistVerdict] = field(default_factory=dict)  # by recipient
    retries: dict[str, Retry] = field(default_factory=dict)  # the same, as `decide` reads it
    logged: bool = False
    # The sender's and the header domains' list lookups, with the connection's: made at MAIL
    # FROM, gone with the transaction (ListLookups).
    lookups: ListLookups | None = None
    # DKIM and DMARC: checked at end of message when the policy needs them and the client's
    # lists count (`Session._authentication_checked`); then the header block as received
    # and the body are kept, each within its bound.
    checks_authentication: bool = False
    # When each domain's DMARC records were asked (at MAIL FROM, at end of headers): their
    # deadline counts from then, as every lookup's does (docs/decisions.md, Deadline).
    dmarc_asked_at: dict[str, float] = field(default_factory=dict)
    raw_header: bytearray = field(default_factory=bytearray)
    raw_header_complete: bool = True
    body: bytearray = field(default_factory=bytearray)
    body_complete: bool = True
    signature_values: list[bytes] = field(default_factory=list)  # DKIM-Signature, bounded
    from_values: list[str] = field(default_factory=list)  # for DMARC's author domain
    dkim_report: DkimReport | None = None
    dmarc_result: dmarc.DmarcResult | None = None
    # Incoming Authentication-Results fields: how many, and the (1-based) indexes of those
    # that claim our authserv-id, deleted at end of message.
    results_headers: int = 0
    forged_results: list[int] = field(default_factory=list)


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
        self._rejection_noted = False
        self.address: IPAddress | None = None
        self.address_text = "unknown"
        self.client_name = ""
        self.helo_name = ""
        self.client = Client(greylist_state=self.greylister is not None)
        # Whose Received fields the received.external facts trust: the names and addresses
        # that are ours and the policy's relays (set at connect).
        self.our_hosts = OurHosts()
        self.lookups = ListLookups(self.resolver, runtime.clock, _Recorders(runtime))
        self.closed = False
        runtime.session_started()
        self.reverse: PendingReverse | ReverseDns | None = None
        self.helo_resolution: PendingResolution | None = None
        self.helo_spf: PendingSpf | None = None
        self._helo_spf_counted = False
        self.receiver = "unknown"  # this MTA's name ({j}), SPF's %{r}
        # The Authentication-Results header's authserv-id (set at connect), "" when none is
        # added: then incoming ones are left alone too.
        self.authserv_id = ""
        self.transaction: Transaction | None = None
        self._rdns: ReverseDns | None = None
        self.connected_at = runtime.clock()

    # -- connection -------------------------------------------------------------------------

    def connect(
        self, client_name: str, address: IPAddress | None, macros: Mapping[str, str | None]
    ) -> None:
        policy = self.policy
        self.connected_at = self.runtime.clock()
        self.address = address
        self.address_text = str(address) if address else "unknown"
        self.client_name = client_name
        self.receiver = macros.get("j") or "unknown"
        settings = policy.authentication_results
        if settings.add:
            self.authserv_id = settings.authserv_id or self.receiver
        names = (macros.get("j") or "", *policy.our_names)
        listed = decision.listed_client(policy, address, client_name)
        ignored = decision.ignored_at_connect(policy, address, listed, dns=self.runtime.dns)
        remembered: tuple[str, ...] = ()
        if ignored is None and address is not None:
            remembered = self._recall_rejection(address)
            ignored = decision.ignored_at_connect(policy, address, listed, remembered=remembered)
        self.client = Client(
            address=address,
            shown=self.address_text,
            our_names=frozenset(n for n in map(domains.normalize_domain, names) if n),
            our_addresses=policy.our_addresses + _networks(macros.get("{daemon_addr}")),
            listed=listed,
            ignored=ignored,
            remembered=remembered,
            greylist_state=self.greylister is not None,
        )
        self.our_hosts = OurHosts.of(
            (*self.client.our_names, *policy.relays.names),
            (*self.client.our_addresses, *policy.relays.addresses),
        )
        if ignored is not None or address is None:
            return
        # Start now, so the lookups overlap HELO, MAIL and the rest of the dialogue.
        self.lookups.start_ip_lists(address, policy.ip_lists)
        if self.engine.needs_rdns:
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

    def _recall_rejection(self, address: IPAddress) -> tuple[str, ...]:
        """The hits the client was refused for lately, if it was: then they are replayed from
        memory, and nothing is looked up (no lists, no reverse DNS, no HELO checks)."""
        memory = self.recent_rejects
        if memory is None:
            return ()
        try:
            return memory.recall(address)
        except Exception as error:  # the store failed: ask the lists as if it had said nothing
            self._note_state_failure(f"{type(error).__name__}: {error}")
            return ()

    def _remember_rejection(self, names: tuple[str, ...]) -> None:
        memory = self.recent_rejects
        if memory is None or self._rejection_noted or self.address is None:
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

    def helo(self, name: str) -> None:
        self.helo_name = name
        client = self.client = decision.greeted(self.policy, self.client, name)
        self.helo_spf = None
        self._helo_spf_counted = False
        if client.ignored is not None:
            return
        if self.engine.needs_helo_spf and self.address is not None:
            # An address literal or a bare word gets `none` from the check, without a lookup.
            self.helo_spf = self._start_spf(spf.helo_identity(name.strip()), name)
        if not domains.is_fqdn(name):
            return
        if self.engine.needs_helo_resolution:
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
            self._rdns = reverse or decision.UNKNOWN_RDNS
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
        listed = decision.listed_sender(self.policy, bare)
        transaction.allowed_by, transaction.denied_by = listed.allowed_by, listed.denied_by
        transaction.allowed_if_verified = listed.allowed_if_verified
        self.transaction = transaction
        if self._lists_ignored(transaction):
            return
        transaction.checks_authentication = self._authentication_checked(transaction)
        wants_spf = self.engine.needs_spf or transaction.allowed_if_verified
        if wants_spf and self.address is not None:
            helo = self.helo_name.strip()
            transaction.spf = self._start_spf(spf.mail_from_identity(sender, helo), helo)
        domain = domains.domain_of_address(bare) if bare else None
        if domain is None:
            return
        if transaction.checks_authentication and self.engine.needs_dmarc:
            # The From: domain is most often MAIL FROM's: ask its DMARC record now, with the
            # lists, so that the end of the message finds it cached instead of waiting one
            # more round trip (a cold cache paid two: bench/RESULTS.md, `cold`).
            dkimcheck.start_dmarc_lookups(domain, self.resolver)
            transaction.dmarc_asked_at.setdefault(domain, self.runtime.clock())
        if self.engine.needs_sender_resolution:
            transaction.sender_resolution = PendingResolution(
                self.resolver,
                domain,
                mail_domain=True,
                clock=self.runtime.clock,
            )
        self._start_domain_lists(DomainSource.SENDER, domain)

    def _start_spf(self, identity: spf.SpfIdentity, helo: str) -> PendingSpf:
        """An SPF check of `identity` for this client, started now; collected (within the
        deadline from now) when a verdict needs it."""
        assert self.address is not None
        facts = spf.smtp_facts(
            self.address, helo, receiver=self.receiver, timestamp=int(time.time())
        )
        return PendingSpf(self.resolver, facts, identity, clock=self.runtime.clock)

    def _authentication_checked(self, transaction: Transaction) -> bool:
        """Whether DKIM and DMARC are checked at the end of this transaction's message: the
        policy needs them, and (as for SPF) the client is not trusted, allowlisted or
        authenticated, nor the sender allowlisted, and DNS is on."""
        return (
            self.engine.needs_dkim
            and self.runtime.dns
            and self.address is not None
            and not transaction.allowed_by
        )

    def _lists_ignored(self, transaction: Transaction) -> bool:
        """Whether this transaction's lists do not count: then none is asked."""
        ignored = decision.lists_ignored(
            self.policy, self.client, authenticated=transaction.authenticated
        )
        return ignored is not None

    def rcpt(self, recipient: str) -> RcptDecision:
        transaction = self._transaction()
        bare = domains.bare_address(recipient)
        ruling = self._decide(transaction, recipient=bare)
        disposition = ruling.disposition
        if ruling.judged is not None:
            transaction.last = ruling.judged
        if ruling.denied_by and ruling.denied_by not in transaction.recipients_denied_by:
            transaction.recipients_denied_by.append(ruling.denied_by)
        if disposition is Disposition.DEFERRED:
            transaction.deferred.append(bare)
        else:
            transaction.recipients.append(bare)
        if disposition is Disposition.REFUSED:
            transaction.refused.append(bare)
        elif disposition is not Disposition.DEFERRED:
            transaction.accepted.append(bare)
        if disposition is Disposition.ALLOWED:
            # Logged when the transaction ends, with every recipient (end_of_message).
            transaction.allowed_by = ruling.allowed_by
        elif disposition is Disposition.UNREFUSABLE:
            transaction.unrefusable.append(bare)
            if ruling.allowed_by:
                transaction.recipients_allowed_by.append(ruling.allowed_by)
        if ruling.group is not None:
            transaction.groups.setdefault(ruling.group.name, ruling.group)
        if ruling.remember:
            self._remember_rejection(ruling.remember)
        return RcptDecision(
            _RESULTS[disposition], ruling.reply, ruling.verdict, ruling.action, ruling.why
        )

    def header(self, name: str, value: str, raw: str | None = None) -> None:
        """One header field: `value` unfolded-as-sent without its leading white space;
        `raw`, when the MTA was asked for it, as received (leading space, folding) for DKIM."""
        transaction = self.transaction
        if transaction is None:
            return
        lowered = name.lower()
        engine = self.engine
        if lowered in OUR_HEADERS:
            transaction.our_headers[name] = transaction.our_headers.get(name, 0) + 1
        if lowered == "authentication-results" and self.authserv_id:
            transaction.results_headers += 1
            if authresults.claims(value, self.authserv_id):
                transaction.forged_results.append(transaction.results_headers)
        if transaction.allowed_by:
            return  # accepted without scoring: only forged verdict headers go
        if transaction.checks_authentication:
            self._keep_for_dkim(transaction, name, lowered, value, raw)
        if lowered in engine.counted_headers:
            transaction.header_counts[lowered] = transaction.header_counts.get(lowered, 0) + 1
        transaction.header_hits.update(engine.match_header(lowered, value))
        if engine.needs_header_view and len(transaction.header_fields) < headerfacts.MAX_FIELDS:
            transaction.header_fields.append((lowered, value[: headerfacts.MAX_VALUE_CHARS]))
        # Parsing costs CPU per byte and a sender may repeat a header at will: the first few
        # occurrences say all a rule needs (RFC 5322 allows one From, Sender, Reply-To, Date).
        seen = transaction.parsed_counts.get(lowered, 0)
        if lowered in engine.parsed_headers and seen < MAX_PARSED_PER_HEADER:
            transaction.parsed_counts[lowered] = seen + 1
            if lowered == "date":
                self._note_date(transaction, value)
            else:
                self._note_addresses(transaction, lowered, value)

    def _keep_for_dkim(
        self, transaction: Transaction, name: str, lowered: str, value: str, raw: str | None
    ) -> None:
        """Rebuild the field as it was received, `Name:value` CRLF, into the header block.

        Postfix hands a milter each field without its line ends, folded lines joined by a bare
        LF (milter8.c); DKIM's simple canonicalization hashes the CRLFs of the message as sent,
        so each LF becomes CRLF again. Without `raw` (the MTA did not offer to keep the space
        after the colon) the usual single space is assumed: relaxed signatures pass either way.
        """
        text = f"{name}:{raw}" if raw is not None else f"{name}: {value}"
        line = text.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
        line = line.replace(b"\n", b"\r\n") + b"\r\n"
        block = transaction.raw_header
        if len(block) + len(line) > self.policy.dkim.max_header_bytes:
            transaction.raw_header_complete = False
            return
        block += line
        if lowered == "dkim-signature" and len(transaction.signature_values) < 16:
            transaction.signature_values.append(line.split(b":", 1)[1])
        elif lowered == "from" and len(transaction.from_values) < _MOST_FROM_VALUES:
            transaction.from_values.append(value)

    def end_of_headers(self) -> None:
        """Start the DKIM key and DMARC record lookups now, while the body travels."""
        transaction = self.transaction
        if transaction is None or not transaction.checks_authentication:
            return
        dkimcheck.start_key_lookups(transaction.signature_values, self.resolver)
        author = dmarc.author_domain(transaction.from_values)
        if self.engine.needs_dmarc and isinstance(author, dmarc.AuthorDomain):
            dkimcheck.start_dmarc_lookups(author.domain, self.resolver)
            transaction.dmarc_asked_at.setdefault(author.domain, self.runtime.clock())

    @property
    def wants_body(self) -> bool:
        """Whether this transaction's body is read (for DKIM)."""
        transaction = self.transaction
        return transaction is not None and transaction.checks_authentication

    def body(self, chunk: bytes) -> bool:
        """A piece of the body; False once `dkim.max_body_bytes` is reached (read no more)."""
        transaction = self.transaction
        if transaction is None or not transaction.checks_authentication:
            return False
        room = self.policy.dkim.max_body_bytes - len(transaction.body)
        if len(chunk) > room:
            transaction.body += chunk[: max(0, room)]
            transaction.body_complete = False
            return False
        transaction.body += chunk
        return True

    def _check_authentication(self, transaction: Transaction) -> None:
        """DKIM, then DMARC with the SPF result and the DKIM passes, within one deadline
        counted from now (the lookups started at end of headers are found in the cache)."""
        clock, deadline = self.runtime.clock, self.policy.resolver.deadline
        started = clock()
        if not transaction.raw_header_complete:
            report = DkimReport(
                header_problem=f"header over {self.policy.dkim.max_header_bytes} bytes"
            )
        else:
            report = dkimcheck.verify_signatures(
                bytes(transaction.raw_header),
                bytes(transaction.body),
                self.resolver,
                deadline,
                body_complete=transaction.body_complete,
                clock=clock,
            )
        transaction.dkim_report = report
        if not self.engine.needs_dmarc:
            return
        author = dmarc.author_domain(transaction.from_values)
        discovery = None
        if isinstance(author, dmarc.AuthorDomain):
            # From when the records were asked (MAIL FROM's domain at MAIL FROM): a DNS
            # server that did not answer the lists at RCPT TO costs no second deadline here.
            asked = transaction.dmarc_asked_at.get(author.domain, started)
            left = max(0.0, min(started, asked) + deadline - clock())
            discovery = dkimcheck.lookup_dmarc_policy(
                author.domain, self.resolver, left, clock=clock
            )
        identifiers = list(report.identifiers())
        check = transaction.spf
        verdict = check.collect(deadline) if check is not None else None
        if verdict is not None:
            passed = verdict.result is spf.SpfResult.PASS
            identifiers.insert(0, dmarc.Identifier(dmarc.Method.SPF, verdict.domain, passed))
        transaction.dmarc_result = dmarc.evaluate(
            author, discovery, identifiers, self.runtime.dmarc_sample()
        )

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
        if source is not None and not self._lists_ignored(transaction):
            for domain in found[:4]:  # a header with a hundred addresses gets no hundred lookups
                self._start_domain_lists(source, domain)

    def _arrival(self) -> Hop:
        """The hop Postfix records in the Received field it writes (and milters never see):
        the client's HELO, its verified name, its address."""
        name = self.client_name.rstrip(".").lower()
        # Postfix gives "unknown" for a name that did not verify; Sendmail "[ADDR]".
        verified = "" if name in ("", "unknown") or name.startswith("[") else name
        return Hop(self.helo_name, self.helo_name, verified, self.address)

    def end_of_message(self, queue_id: str) -> MessageDecision:
        transaction = self._transaction()
        if transaction.checks_authentication and not transaction.allowed_by:
            self._check_authentication(transaction)
        message = MessageFacts(
            header_hits=frozenset(transaction.header_hits),
            header_counts=dict(transaction.header_counts),
            malformed=frozenset(transaction.malformed),
            date_skew=transaction.date_skew,
            from_domains=tuple(transaction.from_domains),
            header_view=(
                headerfacts.HeaderView.of(
                    transaction.header_fields, self.runtime.now(), self.our_hosts, self._arrival()
                )
                if self.engine.needs_header_view
                else None
            ),
            dkim=transaction.dkim_report,
            dmarc=transaction.dmarc_result,
        )
        ruling = self._decide(transaction, message=message)
        if ruling.allowed_by:  # a verified sender, by its DKIM signature
            transaction.allowed_by = ruling.allowed_by
        judged = ruling.judged or transaction.last  # allowlisted: the verdict of RCPT TO
        assert judged is not None
        transaction.last = judged
        self._log(transaction, judged, queue_id)
        delete_headers = ruling.delete_headers
        prepend_headers: tuple[tuple[str, str], ...] = ()
        if ruling.reply is None and self.authserv_id:
            # Highest index first, as for X-Spam-*: the lower indexes stay valid.
            delete_headers += tuple(
                (authresults.HEADER, index) for index in reversed(transaction.forged_results)
            )
            prepend_headers = ((authresults.HEADER, self._results_header(transaction)),)
        return MessageDecision(
            ruling.action,
            judged.verdict,
            ruling.reply,
            delete_headers,
            ruling.add_headers,
            ruling.quarantine_reason,
            prepend_headers,
        )

    def _results_header(self, transaction: Transaction) -> str:
        """Our Authentication-Results value: each check made for this message."""
        check = transaction.spf
        results = authresults.method_results(
            sender=transaction.bare_sender,
            spf=None if check is None else check.collect(self.policy.resolver.deadline),
            helo=self.helo_name.strip(),
            helo_spf=None if self.helo_spf is None else self.helo_spf.verdict,
            dkim=transaction.dkim_report,
            dmarc=transaction.dmarc_result,
        )
        return authresults.header_value(self.authserv_id, results)

    # -- gathering what `decide` needs ------------------------------------------------------

    def _decide(
        self, transaction: Transaction, *, recipient: str = "", message: MessageFacts | None = None
    ) -> Ruling:
        """The ruling for `recipient` at RCPT TO, or for the message at end of message: ask
        `decide`, gather what it needs, and ask again (each need once)."""
        stage = Stage.ENVELOPE if message is None else Stage.MESSAGE
        deadline = self.policy.resolver.deadline
        envelope = Envelope(
            decision_id=transaction.decision_id,
            sender=transaction.bare_sender,
            authenticated=transaction.authenticated,
            listed=Listed(
                transaction.allowed_by, transaction.denied_by, transaction.allowed_if_verified
            ),
            recipient=recipient,
            recipients=tuple(transaction.recipients),
            accepted=tuple(transaction.accepted),
            unrefusable=len(transaction.unrefusable),
            groups=tuple(transaction.groups.values()),
            judged=transaction.last is not None,
        )
        lists: tuple[ListOutcome, ...] | None = None
        sender_resolves: bool | None = None
        spf_verdict: spf.SpfVerdict | None = None
        started: float | None = None
        for _ in range(_MOST_ROUNDS):
            facts = Facts(
                self.client,
                envelope,
                message,
                transaction.our_headers,
                lists,
                sender_resolves,
                transaction.retries,
                spf_verdict,
            )
            ruling = decide(self.engine, facts)
            needs = ruling.needs
            if started is not None:
                self._record_latency(stage, started)
                started = None
            if not needs:
                return ruling
            if Need.EVIDENCE in needs:
                started = self.runtime.clock()
                lists = (transaction.lookups or self.lookups).collect(deadline, stage)
                resolution = transaction.sender_resolution
                sender_resolves = resolution.collect(deadline) if resolution else None
                spf_check = transaction.spf
                spf_verdict = spf_check.collect(deadline) if spf_check else None
            if needs is not Need.EVIDENCE:
                self._gather_client(needs, deadline)
            for asked in ruling.ask:
                self._check_triplet(transaction, asked)
        raise AssertionError(f"decide still needs {ruling.needs} after it was given all")

    def _gather_client(self, needs: Need, deadline: float) -> None:
        """The connection's waits `needs` names, once per connection."""
        client = self.client
        rdns, helo_resolves, helo_spf = client.rdns, client.helo_resolves, client.helo_spf
        if Need.CLIENT_NAME in needs:
            rdns = self.rdns() if self.reverse is not None else decision.UNKNOWN_RDNS
        if Need.HELO_NAME in needs:
            if self.helo_resolution is not None:
                helo_resolves = self.helo_resolution.collect(deadline)
            if self.helo_spf is not None:
                helo_spf = self.helo_spf.collect(deadline)
        known = client.known | (needs & decision.CLIENT_WAITS)
        if known != client.known:
            self.client = dataclasses.replace(
                client, known=known, rdns=rdns, helo_resolves=helo_resolves, helo_spf=helo_spf
            )

    def _record_latency(self, stage: Stage, started: float) -> None:
        metrics = self.runtime.metrics
        if metrics is not None:
            label = "eom" if stage is Stage.MESSAGE else "rcpt"
            metrics.record_decision_latency(label, self.runtime.clock() - started)

    def _check_triplet(self, transaction: Transaction, recipient: str) -> None:
        assert self.greylister is not None and self.address is not None
        verdict = self.greylister.check(self.address, transaction.bare_sender, recipient)
        transaction.greylist[recipient] = verdict
        outcome = verdict.outcome
        transaction.retries[recipient] = Retry(
            verdict.retry_after if outcome.tempfails else None,
            verdict.delayed if outcome is GreylistOutcome.PASSED else None,
        )
        if outcome is GreylistOutcome.FAILED_OPEN:
            self._note_state_failure(verdict.error or "unknown error")
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.record_greylist(outcome.value)

    # -- endings ----------------------------------------------------------------------------

    def finish_transaction(self) -> None:
        """Log a transaction that ended before end of message, if anything was decided."""
        transaction, self.transaction = self.transaction, None
        if transaction is None or transaction.logged or transaction.last is None:
            return
        self._log(transaction, transaction.last, "")

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

    def _log(self, transaction: Transaction, judged: Judgement, queue_id: str) -> None:
        transaction.logged = True
        evidence, verdict = judged.evidence, judged.verdict
        stage = "eom" if judged.stage is Stage.MESSAGE else "rcpt"
        line = Decision(
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
            rdns=_render_rdns(self._rdns),
            allowed_by=_joined(transaction.allowed_by, transaction.recipients_allowed_by),
            denied_by=_joined(transaction.denied_by, transaction.recipients_denied_by),
            policy_digest=self.policy.digest,
            greylist=",".join(
                dict.fromkeys(v.outcome.value for v in transaction.greylist.values())
            ),
            spf=_spf_shown(transaction.spf),
            helo_spf=_spf_shown(self.helo_spf),
            dkim="" if transaction.dkim_report is None else transaction.dkim_report.shown,
            dmarc=_dmarc_shown(transaction.dmarc_result),
        )
        self.runtime.log(format_decision(line))
        metrics = self.runtime.metrics
        if metrics is not None:
            if line.spf:
                metrics.record_spf("mail_from", line.spf)
            if transaction.dkim_report is not None:
                metrics.record_dkim(r.value for r in transaction.dkim_report.results)
            if transaction.dmarc_result is not None:
                metrics.record_dmarc(transaction.dmarc_result.outcome.value)
            if line.helo_spf and not self._helo_spf_counted:
                self._helo_spf_counted = True  # one check per HELO, however many messages
                metrics.record_spf("helo", line.helo_spf)
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


def _joined(first: str, more: Iterable[str]) -> str:
    """Allow or deny entries for the log: each once, in order."""
    return ",".join(dict.fromkeys(filter(None, [first, *more])))


def _render_rdns(rdns: ReverseDns | None) -> str:
    if rdns is None:
        return ""
    return f"{rdns.status.value}:{rdns.name}" if rdns.name else rdns.status.value


@functools.lru_cache(maxsize=64)  # the MTA's own addresses: a handful, asked every connect
def _networks(text: str | None) -> tuple[IPNetwork, ...]:
    try:
        return (normalize_network(ipaddress.ip_network(text.strip("[]"))),) if text else ()
    except ValueError:
        return ()


def _spf_shown(check: PendingSpf | None) -> str:
    """An SPF check's result for the decision line; "" when none was made or none is known
    yet (a verdict decided without it)."""
    verdict = check.verdict if check is not None else None
    return "" if verdict is None else verdict.result.value


def _dmarc_shown(result: dmarc.DmarcResult | None) -> str:
    """`fail_reject:example.com`, `none:example.com`, `permerror` (no author domain)."""
    if result is None:
        return ""
    domain = result.author_domain
    return f"{result.outcome.value}:{domain}" if domain else result.outcome.value
