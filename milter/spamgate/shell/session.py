"""One SMTP connection as spamgate sees it, independent of libmilter.

The milter adapter feeds a Session the events Postfix reports; `spamgate explain` feeds one
the same events from the command line and a message file. A Session gathers facts, starts
DNS lookups as soon as the name to look up is known, asks `decide` for a ruling at RCPT TO
and at end of message, and applies it: the reply, the headers, one decision line per
transaction, the counters. What the ruling is, it never decides itself. It raises on bugs;
the adapter turns that into the `on_error` answer.

Two lifetimes, as in aiosmtpd: connection facts (client, HELO, reverse DNS, list lookups)
are the Session's and outlive transactions (MAIL FROM .. end of message); a transaction's
facts, and the reading of its message, are its Transaction's (shell/transaction.py). A new
MAIL FROM or an abort starts over with the transaction only: nothing learned about one
message may leak into the next. What every session shares is the Runtime
(shell/runtime.py).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spamgate.core import authresults, decision, dmarc, domains, headerfacts, spf
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
from spamgate.core.engine import Action, Verdict
from spamgate.core.listspecs import DomainSource
from spamgate.core.policy import Policy
from spamgate.core.received import Hop, OurHosts
from spamgate.core.replies import Reply
from spamgate.core.rules import MessageFacts, Stage
from spamgate.dns import dkimcheck
from spamgate.dns.dnslists import IPAddress, ListLookups, ListOutcome
from spamgate.dns.nameprobes import PendingResolution
from spamgate.dns.rdns import PendingReverse, ReverseDns, from_mta_macros
from spamgate.dns.spfcheck import PendingSpf
from spamgate.shell.runtime import Runtime
from spamgate.shell.transaction import Transaction, start_domain_lists
from spamgate.state.greylist import GreylistOutcome

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MOST_ROUNDS = len(Need) + 1  # `decide` asks for each need once at most, then answers


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
        self.lookups = ListLookups(self.resolver, runtime.clock, runtime.list_recorder())
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
            start_domain_lists(
                self.lookups, self.policy, DomainSource.PTR, rdns.name, self.connected_at
            )

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
        start_domain_lists(self.lookups, self.policy, DomainSource.HELO, name)

    def rdns(self) -> ReverseDns:
        """The client's reverse DNS, waiting for it (within the deadline) the first time."""
        if self._rdns is None:
            reverse = self.reverse
            if isinstance(reverse, PendingReverse):
                reverse = reverse.collect(self.policy.resolver.deadline)
            self._rdns = reverse or decision.UNKNOWN_RDNS
        return self._rdns

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
        if transaction.lists_ignored(self.policy, self.client):
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
        transaction.start_domain_lists(self.policy, DomainSource.SENDER, domain)

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

    # -- the message: read into the transaction (shell/transaction.py) ----------------------

    def header(self, name: str, value: str, raw: str | None = None) -> None:
        """One header field: `value` unfolded-as-sent without its leading white space;
        `raw`, when the MTA was asked for it, as received (leading space, folding) for DKIM."""
        transaction = self.transaction
        if transaction is not None:
            transaction.read_header(
                name,
                value,
                raw,
                engine=self.engine,
                client=self.client,
                authserv_id=self.authserv_id,
                now=self.runtime.now,
            )

    def end_of_headers(self) -> None:
        """Start the DKIM key and DMARC record lookups now, while the body travels."""
        transaction = self.transaction
        if transaction is not None:
            transaction.start_authentication_lookups(self.engine, self.resolver, self.runtime.clock)

    @property
    def wants_body(self) -> bool:
        """Whether this transaction's body is read (for DKIM)."""
        transaction = self.transaction
        return transaction is not None and transaction.checks_authentication

    def body(self, chunk: bytes) -> bool:
        """A piece of the body; False once `dkim.max_body_bytes` is reached (read no more)."""
        transaction = self.transaction
        if transaction is None:
            return False
        return transaction.read_body(chunk, self.policy.dkim.max_body_bytes)

    def _arrival(self) -> Hop:
        """The hop Postfix records in the Received field it writes (and milters never see):
        the client's HELO, its verified name, its address."""
        name = self.client_name.rstrip(".").lower()
        # Postfix gives "unknown" for a name that did not verify; Sendmail "[ADDR]".
        verified = "" if name in ("", "unknown") or name.startswith("[") else name
        return Hop(self.helo_name, self.helo_name, verified, self.address)

    def end_of_message(self, queue_id: str) -> MessageDecision:
        transaction = self._transaction()
        runtime = self.runtime
        if transaction.checks_authentication and not transaction.allowed_by:
            transaction.check_authentication(
                self.engine, self.resolver, runtime.clock, runtime.dmarc_sample
            )
        header_view = None
        if self.engine.needs_header_view:
            header_view = headerfacts.HeaderView.of(
                transaction.header_fields, runtime.now(), self.our_hosts, self._arrival()
            )
        message = transaction.message_facts(header_view)
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
            helo_spf = None if self.helo_spf is None else self.helo_spf.verdict
            results = transaction.results_header(
                self.authserv_id,
                helo=self.helo_name.strip(),
                helo_spf=helo_spf,
                deadline=self.policy.resolver.deadline,
            )
            prepend_headers = ((authresults.HEADER, results),)
        return MessageDecision(
            ruling.action,
            judged.verdict,
            ruling.reply,
            delete_headers,
            ruling.add_headers,
            ruling.quarantine_reason,
            prepend_headers,
        )

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
