"""One SMTP transaction's facts, MAIL FROM to end of message, and the reading of its message.

A Session makes a Transaction at MAIL FROM and drops it at the next MAIL FROM, at an abort
and when the connection ends, with everything in it: nothing learned about one message may
leak into the next. What the connection knows (client, HELO, reverse DNS, its list lookups)
stays in the Session; the methods here are handed the little of it they read, with the
engine and resolver of the session's generation and the runtime's clocks, and keep none of
them.

The message is read as it arrives: each header field is counted and matched, the first few of
each name parsed (`read_header`); when DKIM and DMARC are checked, the header block as
received and the body are kept, each within its bound, and checked at end of message
(`check_authentication`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from spamgate.core import authresults, decision, dmarc, domains, headerfacts, headers, spf
from spamgate.core.decision import Client, Judgement, Retry
from spamgate.core.dkim import DkimReport
from spamgate.core.engine import OUR_HEADERS, Engine, Group
from spamgate.core.listspecs import DomainList, DomainQuery, DomainSource
from spamgate.core.policy import Policy
from spamgate.core.rules import MessageFacts, Stage
from spamgate.core.spf import SpfVerdict
from spamgate.dns import dkimcheck
from spamgate.dns.answers import Lookups
from spamgate.dns.dnslists import ListLookups
from spamgate.dns.nameprobes import PendingResolution
from spamgate.dns.spfcheck import PendingSpf
from spamgate.state.greylist import GreylistVerdict

MAX_PARSED_PER_HEADER = 3
# From: fields kept for DMARC's author domain: two say "several", which is all it asks.
_MOST_FROM_VALUES = 2
_MOST_SIGNATURES = 16  # DKIM-Signature fields kept for verification
_MOST_LISTED_PER_HEADER = 4  # a header with a hundred addresses gets no hundred lookups


@dataclass
class Transaction:
    """One transaction's facts, MAIL FROM to end of message: the envelope, what the message
    says, and the checks made for both. Dropped whole when the transaction ends."""

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

    def lists_ignored(self, policy: Policy, client: Client) -> bool:
        """Whether this transaction's lists do not count: then none is asked."""
        ignored = decision.lists_ignored(policy, client, authenticated=self.authenticated)
        return ignored is not None

    def start_domain_lists(self, policy: Policy, source: DomainSource, name: str) -> None:
        """The domain lists for a name of this transaction's (sender, From, Reply-To): their
        lookups go with the transaction."""
        assert self.lookups is not None  # made with the transaction, at MAIL
        start_domain_lists(self.lookups, policy, source, name)

    # -- the message ------------------------------------------------------------------------

    def read_header(
        self,
        name: str,
        value: str,
        raw: str | None,
        *,
        engine: Engine,
        client: Client,
        authserv_id: str,
        now: Callable[[], datetime.datetime],
    ) -> None:
        """One header field: `value` unfolded-as-sent without its leading white space;
        `raw`, when the MTA was asked for it, as received (leading space, folding) for DKIM.
        `authserv_id` is ours, "" when we add no Authentication-Results (then incoming ones
        are left alone)."""
        lowered = name.lower()
        if lowered in OUR_HEADERS:
            self.our_headers[name] = self.our_headers.get(name, 0) + 1
        if lowered == "authentication-results" and authserv_id:
            self.results_headers += 1
            if authresults.claims(value, authserv_id):
                self.forged_results.append(self.results_headers)
        if self.allowed_by:
            return  # accepted without scoring: only forged verdict headers go
        if self.checks_authentication:
            self._keep_for_dkim(name, lowered, value, raw, engine.policy.dkim.max_header_bytes)
        if lowered in engine.counted_headers:
            self.header_counts[lowered] = self.header_counts.get(lowered, 0) + 1
        self.header_hits.update(engine.match_header(lowered, value))
        if engine.needs_header_view and len(self.header_fields) < headerfacts.MAX_FIELDS:
            self.header_fields.append((lowered, value[: headerfacts.MAX_VALUE_CHARS]))
        # Parsing costs CPU per byte and a sender may repeat a header at will: the first few
        # occurrences say all a rule needs (RFC 5322 allows one From, Sender, Reply-To, Date).
        seen = self.parsed_counts.get(lowered, 0)
        if lowered in engine.parsed_headers and seen < MAX_PARSED_PER_HEADER:
            self.parsed_counts[lowered] = seen + 1
            if lowered == "date":
                self._note_date(value, now())
            else:
                self._note_addresses(lowered, value, engine.policy, client)

    def _keep_for_dkim(
        self, name: str, lowered: str, value: str, raw: str | None, max_bytes: int
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
        block = self.raw_header
        if len(block) + len(line) > max_bytes:
            self.raw_header_complete = False
            return
        block += line
        if lowered == "dkim-signature" and len(self.signature_values) < _MOST_SIGNATURES:
            self.signature_values.append(line.split(b":", 1)[1])
        elif lowered == "from" and len(self.from_values) < _MOST_FROM_VALUES:
            self.from_values.append(value)

    def _note_date(self, value: str, now: datetime.datetime) -> None:
        skew = headers.date_skew(value, now)
        if skew is None:
            self.malformed.add("date")
        elif self.date_skew is None:
            self.date_skew = skew

    def _note_addresses(self, lowered: str, value: str, policy: Policy, client: Client) -> None:
        # From and Sender must name a mailbox; "To: undisclosed-recipients:;" is fine.
        mailbox = lowered in ("from", "sender")
        addresses = headers.header_addresses(value, mailbox_required=mailbox)
        if addresses is None:
            self.malformed.add(lowered)
            return
        found = [d for d in (domains.domain_of_address(a) for a in addresses) if d]
        if lowered == "from":
            self.from_domains += found
        source = {"from": DomainSource.FROM, "reply-to": DomainSource.REPLY_TO}.get(lowered)
        if source is not None and not self.lists_ignored(policy, client):
            for domain in found[:_MOST_LISTED_PER_HEADER]:
                self.start_domain_lists(policy, source, domain)

    def start_authentication_lookups(
        self, engine: Engine, resolver: Lookups, clock: Callable[[], float]
    ) -> None:
        """At end of headers: start the DKIM key and DMARC record lookups, while the body
        travels."""
        if not self.checks_authentication:
            return
        dkimcheck.start_key_lookups(self.signature_values, resolver)
        author = dmarc.author_domain(self.from_values)
        if engine.needs_dmarc and isinstance(author, dmarc.AuthorDomain):
            dkimcheck.start_dmarc_lookups(author.domain, resolver)
            self.dmarc_asked_at.setdefault(author.domain, clock())

    def read_body(self, chunk: bytes, max_bytes: int) -> bool:
        """A piece of the body; False once `max_bytes` are kept (read no more), or when the
        body is not checked."""
        if not self.checks_authentication:
            return False
        room = max_bytes - len(self.body)
        if len(chunk) > room:
            self.body += chunk[: max(0, room)]
            self.body_complete = False
            return False
        self.body += chunk
        return True

    def check_authentication(
        self,
        engine: Engine,
        resolver: Lookups,
        clock: Callable[[], float],
        dmarc_sample: Callable[[], int],
    ) -> None:
        """DKIM, then DMARC with the SPF result and the DKIM passes, within one deadline
        counted from now (the lookups started at end of headers are found in the cache)."""
        policy = engine.policy
        deadline = policy.resolver.deadline
        started = clock()
        if not self.raw_header_complete:
            report = DkimReport(header_problem=f"header over {policy.dkim.max_header_bytes} bytes")
        else:
            report = dkimcheck.verify_signatures(
                bytes(self.raw_header),
                bytes(self.body),
                resolver,
                deadline,
                body_complete=self.body_complete,
                clock=clock,
            )
        self.dkim_report = report
        if not engine.needs_dmarc:
            return
        author = dmarc.author_domain(self.from_values)
        discovery = None
        if isinstance(author, dmarc.AuthorDomain):
            # From when the records were asked (MAIL FROM's domain at MAIL FROM): a DNS
            # server that did not answer the lists at RCPT TO costs no second deadline here.
            asked = self.dmarc_asked_at.get(author.domain, started)
            left = max(0.0, min(started, asked) + deadline - clock())
            discovery = dkimcheck.lookup_dmarc_policy(author.domain, resolver, left, clock=clock)
        identifiers = list(report.identifiers())
        check = self.spf
        verdict = check.collect(deadline) if check is not None else None
        if verdict is not None:
            passed = verdict.result is spf.SpfResult.PASS
            identifiers.insert(0, dmarc.Identifier(dmarc.Method.SPF, verdict.domain, passed))
        self.dmarc_result = dmarc.evaluate(author, discovery, identifiers, dmarc_sample())

    def message_facts(self, header_view: headerfacts.HeaderView | None) -> MessageFacts:
        """What the message said, for `decide` at end of message."""
        return MessageFacts(
            header_hits=frozenset(self.header_hits),
            header_counts=dict(self.header_counts),
            malformed=frozenset(self.malformed),
            date_skew=self.date_skew,
            from_domains=tuple(self.from_domains),
            header_view=header_view,
            dkim=self.dkim_report,
            dmarc=self.dmarc_result,
        )

    # SpfVerdict by its own name: in this class's body, `spf` is the field, not the module.
    def results_header(
        self, authserv_id: str, *, helo: str, helo_spf: SpfVerdict | None, deadline: float
    ) -> str:
        """Our Authentication-Results value: each check made for this message (and the HELO
        name's SPF check, the connection's)."""
        check = self.spf
        results = authresults.method_results(
            sender=self.bare_sender,
            spf=None if check is None else check.collect(deadline),
            helo=helo,
            helo_spf=helo_spf,
            dkim=self.dkim_report,
            dmarc=self.dmarc_result,
        )
        return authresults.header_value(authserv_id, results)


_SOURCE_STAGE = {
    DomainSource.HELO: Stage.CONNECTION,
    DomainSource.PTR: Stage.CONNECTION,
    DomainSource.SENDER: Stage.ENVELOPE,
    DomainSource.FROM: Stage.MESSAGE,
    DomainSource.REPLY_TO: Stage.MESSAGE,
}


def start_domain_lists(
    lookups: ListLookups,
    policy: Policy,
    source: DomainSource,
    name: str,
    started_at: float | None = None,
) -> None:
    """Ask the policy's domain lists that check `source`'s names for `name`, with `lookups`:
    the connection's for a HELO or PTR name, the transaction's for the others."""
    for dns_list in policy.domain_lists:
        if source in dns_list.check_names:
            _start_domain_list(lookups, dns_list, source, name, started_at)


def _start_domain_list(
    lookups: ListLookups,
    dns_list: DomainList,
    source: DomainSource,
    name: str,
    started_at: float | None,
) -> None:
    domain = domains.normalize_domain(name)
    if domain is None or domains.is_ip_literal(name):
        return
    if dns_list.query is DomainQuery.ORGANIZATIONAL:
        domain = domains.organizational_domain(domain)
    qname = domains.domain_query_name(domain, dns_list.query_zone)
    if qname is None:
        return  # an IP literal, a single label, too long: no valid query exists
    subject = f"{source.value}:{domain}"
    lookups.start(
        dns_list, qname, subject=subject, stage=_SOURCE_STAGE[source], started_at=started_at
    )
