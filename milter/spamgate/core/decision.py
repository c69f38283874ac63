"""The decision: what spamgate answers at RCPT TO and at end of message. Pure.

`decide(engine, facts)` takes what is known (the connection's facts, the transaction's, the
message's, and the DNS evidence the session gathered) and gives a `Ruling`: what the sender
is told, what becomes of the recipient, the headers to write, and the verdict with its trace
for the log line. Exempt recipients, allow and deny lists, splitting a transaction with
452 4.5.3, observe mode and trials, greylisting: each is decided here, once, and nowhere
else. No sockets, no clock, no logging, no metrics: the session gathers the facts and
applies the ruling (the reply, the headers, the log line, the counters).

Some facts cost a wait (the client's reverse DNS, DNS list answers) or I/O (the greylist
state). `decide` asks for one only when its answer depends on it: a ruling with `needs`
decides nothing else, and the session gathers what it names and asks again with it. So an
allowed, denied or split recipient never waits for DNS it does not use, and the decision
stays a function of its arguments (the sans-I/O way: h11 answers "need data" the same way).

Greylisting is one of those needs, rather than a fact passed in up front: asking the state
about a triplet records that attempt, so it may only be asked once the verdict is known to
be in the greylist band. The session asks it for the recipients the ruling names
(`Ruling.ask`), and its answers come back as `Facts.greylist`.

The facts a session gathers as the dialogue goes (which allow and deny entries the client,
its HELO name and its sender match; why its lists do not count) are found by the helpers at
the end of this module, so that what a match means is decided here too.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spamgate.core import domains
from spamgate.core.addresses import IPAddress, IPNetwork, normalize_address
from spamgate.core.dkim import DkimStatus
from spamgate.core.dmarc import Alignment, is_aligned
from spamgate.core.engine import (
    DEFAULT_GROUP,
    Action,
    Enforcement,
    Engine,
    Evidence,
    Group,
    ListsIgnored,
    Verdict,
)
from spamgate.core.evidence import ListOutcome, RdnsStatus, ReverseDns
from spamgate.core.matchlists import AddressPatterns, NamePatterns
from spamgate.core.policy import Policy
from spamgate.core.replies import Reply
from spamgate.core.rules import ConnectionFacts, EnvelopeFacts, MessageFacts, Stage
from spamgate.core.rules import Facts as RuleFacts
from spamgate.core.scoring import Mode
from spamgate.core.spf import SpfResult, SpfVerdict

# RFC 5321 4.5.3.1.10: 452 4.5.3 is "too many recipients"; clients send the rest in another
# transaction, which is exactly what a recipient with a different policy needs.
SPLIT_REPLY = Reply(
    452, "4.5.3", "Too many recipients: this one has another filter policy, send it separately"
)
UNKNOWN_RDNS = ReverseDns(RdnsStatus.UNKNOWN)
_NO_CONNECTION_FACTS = ConnectionFacts()  # trusted, allowed, authenticated: no rule sees them
_NO_MESSAGE_FACTS = MessageFacts()  # at RCPT TO


class Need(enum.Flag):
    """Facts that cost a wait or I/O, which `decide` asks for when it needs them."""

    NOTHING = 0
    CLIENT_NAME = enum.auto()  # the client's reverse DNS, waited for (Client.rdns)
    # Whether the HELO name resolves and its SPF result, waited for (Client.helo_resolves,
    # Client.helo_spf).
    HELO_NAME = enum.auto()
    # The stage's list outcomes, whether the sender's domain resolves and MAIL FROM's SPF
    # result (Facts.lists, .sender_domain_resolves, .spf).
    EVIDENCE = enum.auto()
    GREYLIST = enum.auto()  # the greylist state's answer for the triplets of `Ruling.ask`


# The connection's waits. Flag arithmetic costs microseconds in Python, and `decide` runs a
# few times per recipient: the common cases are compared with these, not computed.
CLIENT_WAITS = Need.CLIENT_NAME | Need.HELO_NAME
_EVIDENCE_AND_CLIENT_WAITS = Need.EVIDENCE | CLIENT_WAITS


@dataclass(frozen=True)
class Listed:
    """The first allow and deny list entries matched, as `kind:entry`; "" for none."""

    allowed_by: str = ""
    denied_by: str = ""
    # An allow.verified_senders entry the sender matched, as `verified_sender:entry`: it
    # allows only once SPF passes for MAIL FROM (Facts.spf).
    allowed_if_verified: str = ""

    def then(self, later: Listed) -> Listed:
        """These matches, with `later`'s where there was none: the first match wins."""
        return Listed(
            self.allowed_by or later.allowed_by,
            self.denied_by or later.denied_by,
            self.allowed_if_verified or later.allowed_if_verified,
        )


@dataclass(frozen=True)
class Client:
    """What the connection knows; it outlives the transactions on it."""

    address: IPAddress | None = None
    shown: str = "unknown"  # the address as the reply templates' {client} show it
    helo: str = ""
    our_names: frozenset[str] = frozenset()
    our_addresses: tuple[IPNetwork, ...] = ()
    listed: Listed = Listed()  # by its address, its MTA-verified name, its HELO name
    ignored: ListsIgnored | None = None  # why its lists do not count, in every transaction
    remembered: tuple[str, ...] = ()  # the IP list hits it was refused for lately
    greylist_state: bool = False  # whether there is a greylist state to ask
    known: Need = Need.NOTHING  # which of the waits below are over
    rdns: ReverseDns = UNKNOWN_RDNS  # with Need.CLIENT_NAME
    helo_resolves: bool | None = None  # with Need.HELO_NAME; None: no evidence
    helo_spf: SpfVerdict | None = None  # with Need.HELO_NAME; None: not checked


@dataclass(frozen=True)
class Envelope:
    """What the transaction knows, and what became of its recipients so far."""

    decision_id: str = ""
    sender: str = ""  # lower case, without <>; "" for the null sender
    authenticated: bool = False
    # The sender's matches; `allowed_by` is also what allowed the whole transaction, once one
    # of its recipients was accepted that way.
    listed: Listed = Listed()
    recipient: str = ""  # at RCPT TO: the one to decide, lower case, without <>
    recipients: tuple[str, ...] = ()  # every RCPT TO before it, but those split off
    accepted: tuple[str, ...] = ()
    unrefusable: int = 0  # how many of `accepted` must not be refused
    groups: tuple[Group, ...] = ()  # the accepted recipients' policy groups, the first first
    judged: bool = False  # the transaction has a verdict for its log line already


@dataclass(frozen=True)
class Retry:
    """What the greylist state said of one (client, sender, recipient) triplet."""

    wait: float | None = None  # seconds until a retry would pass; None: it passes now
    delayed: float | None = None  # a retry that passed now: seconds since the first attempt


@dataclass(frozen=True)
class Facts:
    client: Client
    envelope: Envelope
    message: MessageFacts | None = None  # at end of message; None at RCPT TO
    # At end of message: the headers named like ours that came with it, and how often.
    our_headers: Mapping[str, int] = field(default_factory=dict)
    # With Need.EVIDENCE: the stage's list outcomes (None: not gathered yet), and whether the
    # sender's domain resolves (None: no evidence).
    lists: tuple[ListOutcome, ...] | None = None
    sender_domain_resolves: bool | None = None
    # By recipient: what the greylist state said of every triplet asked in the transaction.
    greylist: Mapping[str, Retry] = field(default_factory=dict)
    # With Need.EVIDENCE: MAIL FROM's SPF verdict (None: not checked).
    spf: SpfVerdict | None = None

    @property
    def stage(self) -> Stage:
        return Stage.ENVELOPE if self.message is None else Stage.MESSAGE


@dataclass(frozen=True)
class Judgement:
    """A verdict with what it was based on, what is done with it, and where it was made."""

    evidence: Evidence
    verdict: Verdict
    enforcement: Enforcement
    stage: Stage = Stage.ENVELOPE


class Disposition(enum.Enum):
    """What becomes of a recipient at RCPT TO."""

    ACCEPTED = "accepted"  # accepted, and its message judged at the end
    UNREFUSABLE = "unrefusable"  # accepted, and never refused (exempt, allow.recipients)
    ALLOWED = "allowed"  # accepted unscored, the whole transaction with it (an allow list)
    REFUSED = "refused"  # the reply is 4xx or 5xx
    DEFERRED = "deferred"  # 452 4.5.3: sent again in a transaction of its own


@dataclass(frozen=True)
class Ruling:
    """What `decide` says. With `needs`, nothing else: gather those facts and ask again."""

    needs: Need = Need.NOTHING
    ask: tuple[str, ...] = ()  # with Need.GREYLIST: the recipients whose triplets to ask about
    judged: Judgement | None = None  # the transaction's verdict from now on; None: as it was
    verdict: Verdict | None = None  # the scored verdict the answer follows, if one was scored
    action: Action = Action.ACCEPT  # what the sender gets
    reply: Reply | None = None  # 4xx or 5xx
    why: str = ""  # exempt, allowed_by=..., denied_by=..., observe, split: ...
    # At RCPT TO:
    disposition: Disposition = Disposition.ACCEPTED
    group: Group | None = None  # the policy group an accepted recipient brings
    allowed_by: str = ""  # ALLOWED: what allowed the transaction; UNREFUSABLE: the recipient
    denied_by: str = ""
    remember: tuple[str, ...] = ()  # IP list hits worth remembering the client by (a reject)
    # At end of message, when the message is accepted:
    delete_headers: tuple[tuple[str, int], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    quarantine_reason: str = ""


def decide(engine: Engine, facts: Facts) -> Ruling:
    """The answer for the recipient `facts.envelope.recipient` at RCPT TO, or for the message
    at end of message (`facts.message` given), by the policy of `engine`."""
    if facts.message is None:
        return _decide_recipient(engine, facts)
    return _decide_message(engine, facts)


# -- RCPT TO --------------------------------------------------------------------------------


def _decide_recipient(engine: Engine, facts: Facts) -> Ruling:
    """In this order, the first that applies: an exempt recipient, an allowlisted client or
    sender, an allowlisted recipient, a denylisted client, sender or recipient, a recipient
    of another policy group than the transaction's (split), and then the score."""
    policy = engine.policy
    client, envelope = facts.client, facts.envelope
    recipient = envelope.recipient
    if engine.is_exempt_address(recipient):
        return _unrefusable(engine, facts, "")
    known = client.known
    if known is not CLIENT_WAITS and Need.CLIENT_NAME not in known:
        # The client's confirmed name may be on the allow or deny list.
        return _asking(Need.CLIENT_NAME)
    allow, deny = policy.allow, policy.deny
    confirmed = client.rdns.confirmed_name if engine.lists_client_names else ""
    allowed_by = client.listed.allowed_by
    if not allowed_by and confirmed:
        allowed_by = _matched("client_name", allow.client_name_set, confirmed)
    if not allowed_by:
        by_sender = _allowed_sender(facts)
        if isinstance(by_sender, Ruling):
            return by_sender
        allowed_by = by_sender
    if allowed_by:
        judged = _unscored(ListsIgnored.ALLOWED, Action.ACCEPT, Enforcement(Action.ACCEPT))
        return Ruling(
            judged=judged,
            why=f"allowed_by={allowed_by}",
            disposition=Disposition.ALLOWED,
            allowed_by=allowed_by,
        )
    lists_recipients = engine.lists_recipients
    if lists_recipients:
        allow_recipient = _matched("recipient", allow.recipient_set, recipient)
        if allow_recipient:
            return _unrefusable(engine, facts, allow_recipient)
    group = engine.group_for(recipient)
    denied_by = client.listed.denied_by
    if not denied_by and confirmed:
        denied_by = _matched("client_name", deny.client_name_set, confirmed)
    denied_by = denied_by or envelope.listed.denied_by
    if not denied_by and lists_recipients:
        denied_by = _matched("recipient", deny.recipient_set, recipient)
    if denied_by:
        return _deny(engine, facts, group, denied_by)
    groups = envelope.groups
    if policy.split_recipient_policies and groups and group.name != groups[0].name:
        return _split(f"split: policy {group.name}, transaction {groups[0].name}")
    return _score_recipient(engine, facts, group)


def _allowed_sender(facts: Facts) -> str | Ruling:
    """What allows the sender, if anything: an `allow.senders` entry, or an
    `allow.verified_senders` one once SPF passes for MAIL FROM (asking for the evidence,
    which brings the SPF verdict, if it has not come yet)."""
    listed = facts.envelope.listed
    if listed.allowed_by or not listed.allowed_if_verified:
        return listed.allowed_by
    if facts.lists is None:
        return _ASK_EVIDENCE
    verdict = facts.spf
    if verdict is not None and verdict.result is SpfResult.PASS:
        return f"{listed.allowed_if_verified}(spf)"
    return ""


def _verified_by_dkim(facts: Facts) -> str:
    """`verified_sender:ENTRY(dkim:DOMAIN)` when the sender matched an allow.verified_senders
    entry and a DKIM signature of its domain's organization verified; "" otherwise."""
    listed, message = facts.envelope.listed, facts.message
    sender_domain = domains.domain_of_address(facts.envelope.sender)
    if listed.allowed_by or not listed.allowed_if_verified or not sender_domain:
        return ""
    report = message.dkim if message is not None else None
    for signature in report.signatures if report is not None else ():
        if signature.status is DkimStatus.PASS and is_aligned(
            signature.domain, sender_domain, Alignment.RELAXED
        ):
            return f"{listed.allowed_if_verified}(dkim:{signature.domain})"
    return ""


def _score_recipient(engine: Engine, facts: Facts, group: Group) -> Ruling:
    """A recipient no list decided: by the score, greylisting included."""
    judgements = _judge(engine, facts, (group,))
    if isinstance(judgements, Ruling):
        return judgements
    judged = judgements[0]
    if judged.enforcement.action is Action.GREYLIST:
        greylisted = _greylist(engine, facts, judged, (facts.envelope.recipient,))
        if isinstance(greylisted, Ruling):
            return greylisted
        judged = greylisted
    verdict, enforcement = judged.verdict, judged.enforcement
    if enforcement.reply is not None:
        remember: tuple[str, ...] = ()
        if enforcement.action is Action.REJECT:
            remember = engine.listings_to_remember(verdict, judged.evidence, group)
        return Ruling(
            judged=judged,
            verdict=verdict,
            action=enforcement.action,
            reply=enforcement.reply,
            disposition=Disposition.REFUSED,
            remember=remember,
        )
    if engine.policy.split_recipient_policies and facts.envelope.unrefusable:
        # Accepted, it would share a message with recipients that must not be refused, and
        # what the headers say would reach it too (see _unrefusable).
        return dataclasses.replace(
            _split("split: transaction for exempt recipients"), judged=judged
        )
    return Ruling(
        judged=judged,
        verdict=verdict,
        action=enforcement.action,
        why=enforcement.waived_by,
        group=group,
    )


def _unrefusable(engine: Engine, facts: Facts, allowed_by: str) -> Ruling:
    """Accept a recipient that must not be refused (exempt, or allowlisted if `allowed_by`).

    Such a recipient must not shield the others of its message from what the headers say:
    with `split_recipient_policies` (the default) a transaction holds either such recipients
    or others, and a recipient of the other kind gets 452 4.5.3 (sent again in a transaction
    of its own, as for another policy); without splitting, a message with any other
    recipient is judged as usual, these included (end of message)."""
    envelope = facts.envelope
    why = f"allowed_by={allowed_by}" if allowed_by else "exempt"
    judged_recipients = len(envelope.accepted) - envelope.unrefusable
    if engine.policy.split_recipient_policies and judged_recipients:
        return _split(f"split: {why}, transaction for others")
    judged = None
    if not envelope.judged:
        # Nothing to enforce, but the transaction's log line should say what it scored.
        group = envelope.groups[0] if envelope.groups else engine.default_group
        judgements = _judge(engine, facts, (group,))
        if isinstance(judgements, Ruling):
            return judgements
        judged = judgements[0]
    return Ruling(
        judged=judged, why=why, disposition=Disposition.UNREFUSABLE, allowed_by=allowed_by
    )


def _deny(engine: Engine, facts: Facts, group: Group, denied_by: str) -> Ruling:
    """A deny list refuses the recipient, unscored and without waiting for DNS; observe mode
    waives it as it waives any refusal (Engine.enforce)."""
    envelope = facts.envelope
    judged = _unscored(ListsIgnored.DENIED, Action.REJECT, Enforcement(Action.REJECT))
    enforcement = engine.enforce(
        judged.verdict,
        envelope.decision_id,
        client=facts.client.shown,
        group=group,
        denied=True,
    )
    judged = dataclasses.replace(judged, enforcement=enforcement)
    if enforcement.reply is not None:
        return Ruling(
            judged=judged,
            action=enforcement.action,
            reply=enforcement.reply,
            why=f"denied_by={denied_by}",
            disposition=Disposition.REFUSED,
            denied_by=denied_by,
        )
    return Ruling(
        judged=judged,
        action=enforcement.action,
        why=f"denied_by={denied_by}, {enforcement.waived_by}",
        group=group,
        denied_by=denied_by,
    )


def _unscored(reason: ListsIgnored, action: Action, enforcement: Enforcement) -> Judgement:
    """For allow and deny list decisions: nothing is scored, nothing waited for."""
    verdict = Verdict(0.0, (), action, DEFAULT_GROUP)
    return Judgement(Evidence((), reason, ()), verdict, enforcement, Stage.ENVELOPE)


def _split(why: str) -> Ruling:
    """452 4.5.3 for this recipient: the client sends it in a transaction of its own."""
    return Ruling(
        action=Action.TEMPFAIL, reply=SPLIT_REPLY, why=why, disposition=Disposition.DEFERRED
    )


# -- end of message -------------------------------------------------------------------------


def _decide_message(engine: Engine, facts: Facts) -> Ruling:
    envelope = facts.envelope
    if envelope.listed.allowed_by and envelope.judged:
        # Allowlisted at RCPT TO: nothing is scored or added, but a verdict header that came
        # from outside must not reach the recipient either.
        return Ruling(delete_headers=_foreign_headers(facts.our_headers))
    verified_by = _verified_by_dkim(facts)
    if verified_by:
        # An allow.verified_senders sender SPF did not verify at RCPT TO, whose domain signed
        # the message: allowed now, as it would have been at RCPT TO.
        judged = _unscored(ListsIgnored.ALLOWED, Action.ACCEPT, Enforcement(Action.ACCEPT))
        return Ruling(
            judged=dataclasses.replace(judged, stage=Stage.MESSAGE),
            why=f"allowed_by={verified_by}",
            allowed_by=verified_by,
            delete_headers=_foreign_headers(facts.our_headers),
        )
    groups = envelope.groups or (engine.default_group,)
    # Every accepted recipient must not be refused: delivered, tagged, whatever the headers
    # say; with any other recipient the message is judged.
    exempt = 0 < envelope.unrefusable == len(envelope.accepted)
    judgements = _judge(engine, facts, groups, exempt=exempt)
    if isinstance(judgements, Ruling):
        return judgements
    # Without splitting, recipients of several policies share one answer: the mildest, so
    # that nobody loses mail their own policy would accept (docs/decisions.md, per-recipient).
    judged = min(judgements, key=lambda j: j.enforcement.action)
    if judged.enforcement.action is Action.GREYLIST:
        # Header rules raised the score into the band: every recipient's triplet must have
        # retried once, or the whole message gets 451 at end of data.
        greylisted = _greylist(engine, facts, judged, envelope.accepted)
        if isinstance(greylisted, Ruling):
            return greylisted
        judged = greylisted
    verdict, enforcement = judged.verdict, judged.enforcement
    if enforcement.reply is not None:
        return Ruling(
            judged=judged, verdict=verdict, action=enforcement.action, reply=enforcement.reply
        )
    return Ruling(
        judged=judged,
        verdict=verdict,
        action=enforcement.action,
        delete_headers=_foreign_headers(facts.our_headers),
        add_headers=engine.spam_headers(verdict, enforcement.action)
        + _greylist_headers(facts.greylist),
        quarantine_reason=enforcement.quarantine_reason,
    )


def _foreign_headers(our_headers: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """Headers named like ours that came from outside would be believed downstream: delete
    every occurrence (highest index first, so earlier indexes stay valid)."""
    return tuple(
        (name, index) for name, count in our_headers.items() for index in range(count, 0, -1)
    )


# -- the score ------------------------------------------------------------------------------


def _judge(
    engine: Engine, facts: Facts, groups: Sequence[Group], *, exempt: bool = False
) -> list[Judgement] | Ruling:
    """The verdict for each group at this stage, or the facts it still needs."""
    client, envelope = facts.client, facts.envelope
    ignored = lists_ignored(engine.policy, client, authenticated=envelope.authenticated)
    # Trusted, allowed and authenticated clients are not judged by HELO or reverse DNS.
    connection_rules = ignored in (None, ListsIgnored.NO_DNS)
    waits = connection_rules and client.known is not CLIENT_WAITS
    if facts.lists is None:
        if not waits:
            return _ASK_EVIDENCE
        return _asking(_EVIDENCE_AND_CLIENT_WAITS & ~client.known)
    if waits:
        return _asking(CLIENT_WAITS & ~client.known)
    stage = facts.stage
    list_hits: list[str] = []
    trial_list_hits: list[str] = []
    for outcome in facts.lists if ignored is None else ():
        on_trial = outcome.dns_list.mode is Mode.OBSERVE
        (trial_list_hits if on_trial else list_hits).extend(h.name for h in outcome.hits)
    connection = _NO_CONNECTION_FACTS
    if connection_rules:
        connection = ConnectionFacts(
            address=client.address,
            helo=client.helo.strip(),
            rdns=client.rdns,
            helo_resolves=client.helo_resolves,
            helo_spf=None if client.helo_spf is None else client.helo_spf.result,
            our_names=client.our_names,
            our_addresses=client.our_addresses,
        )
    recipients = envelope.recipients
    if envelope.recipient:
        recipients = (*recipients, envelope.recipient)
    rule_facts = RuleFacts(
        connection,
        EnvelopeFacts(
            envelope.sender,
            facts.sender_domain_resolves,
            recipients,
            None if facts.spf is None else facts.spf.result,
        ),
        facts.message or _NO_MESSAGE_FACTS,
    )
    rules = engine.rulebook.fire(stage, rule_facts, list_hits, trial_list_hits)
    remembered = client.remembered if ignored is ListsIgnored.REMEMBERED else ()
    evidence = Evidence(facts.lists, ignored, rules, remembered)
    judgements = []
    for group in groups:
        verdict = engine.evaluate(evidence, group)
        enforcement = engine.enforce(
            verdict, envelope.decision_id, exempt=exempt, client=client.shown, group=group
        )
        judgements.append(Judgement(evidence, verdict, enforcement, stage))
    return judgements


# -- greylisting ----------------------------------------------------------------------------


def _greylist(
    engine: Engine, facts: Facts, judged: Judgement, recipients: Sequence[str]
) -> Judgement | Ruling:
    """The verdict says greylist: have these triplets retried in time? A retry that passed,
    a triplet or network known to retry, and a state that failed all accept the mail, tagged;
    the rest get `451 4.7.1` saying when to retry."""
    waived_by = _greylist_waiver(facts)
    if waived_by:
        return dataclasses.replace(judged, enforcement=Enforcement(Action.TAG, waived_by=waived_by))
    answers = facts.greylist
    missing = tuple(dict.fromkeys(r for r in recipients if r not in answers))
    if missing:
        return Ruling(needs=Need.GREYLIST, ask=missing)
    waiting = [wait for r in recipients if (wait := answers[r].wait) is not None]
    if not waiting:
        return dataclasses.replace(judged, enforcement=Enforcement(Action.TAG))
    reply = engine.greylist_reply(
        judged.verdict, facts.envelope.decision_id, facts.client.shown, max(waiting)
    )
    return dataclasses.replace(judged, enforcement=Enforcement(Action.GREYLIST, reply))


def _greylist_waiver(facts: Facts) -> str:
    """Why this client is never greylisted, if it is not: it authenticated, or it is one of
    ours, or there is no address (or no state) to remember it by."""
    client = facts.client
    ignored = client.ignored
    if facts.envelope.authenticated:
        return "authenticated"
    if ignored in (ListsIgnored.TRUSTED, ListsIgnored.NO_ADDRESS):
        return str(ignored.value)  # the same token as lists_ignored=
    if not client.greylist_state or client.address is None:
        return "no-state"
    return ""


def _greylist_headers(answers: Mapping[str, Retry]) -> tuple[tuple[str, str], ...]:
    """The delay a greylisted message suffered, as postgrey and milter-greylist report it."""
    delays = [retry.delayed for retry in answers.values() if retry.delayed is not None]
    if not delays:
        return ()
    return (("X-Greylist", f"delayed {max(delays):.0f} seconds by spamgate"),)


# -- facts found as the dialogue goes -------------------------------------------------------


def greeted(policy: Policy, client: Client, helo: str) -> Client:
    """`client` after HELO (or EHLO) `helo`: its allow and deny matches join those so far,
    and whether the name resolves is to be found again."""
    return Client(
        client.address,
        client.shown,
        helo,
        client.our_names,
        client.our_addresses,
        client.listed.then(listed_helo(policy, helo)),
        client.ignored,
        client.remembered,
        client.greylist_state,
        client.known & ~Need.HELO_NAME,
        client.rdns,
        None,
        None,
    )


def listed_client(policy: Policy, address: IPAddress | None, name: str) -> Listed:
    """The allow and deny entries the client's address or MTA-verified name matches."""
    verified = _verified(name)
    allow, deny = policy.allow, policy.deny
    return Listed(
        _labelled("client", allow.client_set.match(address))
        or _labelled("client_name", allow.client_name_set.match(verified)),
        _labelled("client", deny.client_set.match(address))
        or _labelled("client_name", deny.client_name_set.match(verified)),
    )


def listed_helo(policy: Policy, name: str) -> Listed:
    return Listed(
        _labelled("helo", policy.allow.helo_name_set.match(name)),
        _labelled("helo", policy.deny.helo_name_set.match(name)),
    )


def listed_sender(policy: Policy, sender: str) -> Listed:
    """`sender` lower case without <>; "" is the null sender, listed as `<>`."""
    shown = sender or "<>"
    return Listed(
        _labelled("sender", policy.allow.sender_set.match(shown)),
        _labelled("sender", policy.deny.sender_set.match(shown)),
        _labelled("verified_sender", policy.allow.verified_sender_set.match(shown)),
    )


def ignored_at_connect(
    policy: Policy,
    address: IPAddress | None,
    listed: Listed,
    *,
    dns: bool = True,
    remembered: tuple[str, ...] = (),
) -> ListsIgnored | None:
    """Why the lists of a client just connected will not count, if they will not: then
    none is asked. `remembered`: the hits it was refused for lately (asked only if None
    came without them)."""
    if address is None:
        return ListsIgnored.NO_ADDRESS
    if any(normalize_address(address) in net for net in policy.trusted_networks):
        return ListsIgnored.TRUSTED
    if listed.allowed_by:
        return ListsIgnored.ALLOWED
    if not dns:
        return ListsIgnored.NO_DNS
    if remembered:
        return ListsIgnored.REMEMBERED
    return None


def lists_ignored(policy: Policy, client: Client, *, authenticated: bool) -> ListsIgnored | None:
    """Why the client's lists do not count in this transaction, if they do not."""
    ignored = client.ignored
    if ignored in (None, ListsIgnored.REMEMBERED) and authenticated and policy.skip_authenticated:
        return ListsIgnored.AUTHENTICATED
    return ignored


@functools.cache
def _asking(needs: Need) -> Ruling:
    """A ruling that only asks for `needs` (one each, made once: they come back all day)."""
    return Ruling(needs=needs)


_ASK_EVIDENCE = _asking(Need.EVIDENCE)  # the one asked most: once per decision


def _matched(kind: str, patterns: NamePatterns | AddressPatterns, value: str) -> str:
    """`kind:entry` for the entry `value` matches; "" if none (an empty list costs nothing)."""
    return _labelled(kind, patterns.match(value)) if patterns and value else ""


def _labelled(kind: str, match: str) -> str:
    return f"{kind}:{match}" if match else ""


def _verified(client_name: str) -> str:
    """Postfix reports an unverified client as "unknown" or "[address]": not a name."""
    return "" if client_name in ("", "unknown") or client_name.startswith("[") else client_name
