"""The policy engine: evidence in, verdict out. No sockets, no clock, no logging.

Detection, weight and action are separate (as in rspamd): lists and rules produce named hits,
the policy gives each a score, and the thresholds turn the total into an action. Whether that
action reaches the sender is a second step (`enforce`), because observe mode and exempt
recipients change what is sent without changing what was decided. Recipients may belong to
policy groups (`recipient_policies`) with their own thresholds, mode and scores: a verdict is
always for one group.

A list with `on_unusable: tempfail` that could not be asked turns the action into TEMPFAIL
when its answer could have changed the action (`_defers`); the verdict names it in
`tempfail_by`, and the reply names the list, never its zone.

`decision.decide` is what asks the engine, once per decision point; what to make of allow and
deny lists, exempt recipients and recipients of several groups is decided there.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spamgate.core import domains, replies
from spamgate.core.evidence import ListOutcome, ListStatus
from spamgate.core.listspecs import DnsList, DomainSource, IpList, OnUnusable
from spamgate.core.policy import AddHeaders, Policy
from spamgate.core.replies import Reply
from spamgate.core.rules import RuleBook
from spamgate.core.rulespecs import Rule, RuleAction
from spamgate.core.scoring import Mode, Thresholds

SCORE_HEADER = "X-Spam-Score"
STATUS_HEADER = "X-Spam-Status"
# Headers that spamgate writes, or that filters and mail clients downstream read as a spam
# verdict (SpamAssassin's family, rspamd's X-Spam, spamgate's X-Greylist): a copy that comes
# from outside would be believed, so every one is deleted from mail as it passes (issue 14).
OUR_HEADERS = frozenset(
    {
        SCORE_HEADER.lower(),
        STATUS_HEADER.lower(),
        "x-spam-flag",
        "x-spam-level",
        "x-spam",
        "x-spam-report",
        "x-spam-checker-version",
        "x-greylist",
    }
)
DEFAULT_GROUP = "default"


class Action(enum.IntEnum):
    """In order of severity: a threshold tie goes to the more severe action. GREYLIST only asks
    for a retry, once per triplet, so it is milder than holding or refusing the mail."""

    ACCEPT = 0
    TAG = 1
    GREYLIST = 2
    QUARANTINE = 3
    TEMPFAIL = 4
    REJECT = 5

    @property
    def refuses(self) -> bool:
        return self in (Action.TEMPFAIL, Action.REJECT)

    @property
    def label(self) -> str:
        return self.name.lower()


# Actions an allowlist hit (a negative score) could have lowered, and so an unusable allowlist
# with `on_unusable: tempfail` defers: a refusal, or a greylist that asks for a retry anyway. A
# quarantine is not among them: the mail is accepted, and an admin can release it.
_LOWERABLE = frozenset({Action.GREYLIST, Action.REJECT})


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    score: float
    description: str
    observe: bool = False  # logged, but its score does not count


class ListsIgnored(enum.Enum):
    """Why a client's DNS list results do not count (the log's `lists_ignored`)."""

    NO_ADDRESS = "no-address"  # the MTA gave no IP address: nothing to look up
    TRUSTED = "trusted"  # in trusted_networks
    ALLOWED = "allowed"  # an allow list accepted it
    DENIED = "denied"  # a deny list refused it, unscored
    NO_DNS = "no-dns"  # `spamgate explain --no-dns`
    REMEMBERED = "remembered"  # refused lately: its hits are replayed, nothing is asked
    AUTHENTICATED = "authenticated"  # SASL, with skip_authenticated


@dataclass(frozen=True)
class Evidence:
    """What is known at a decision point. `lists_ignored` says why list results do not count."""

    lists: tuple[ListOutcome, ...] = ()
    lists_ignored: ListsIgnored | None = None
    rules: tuple[Rule, ...] = ()
    # IP list hits the client was refused for lately (recentrejects), replayed by name.
    remembered: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """The policy one recipient is judged by: the default, or a `recipient_policies` entry."""

    name: str
    mode: Mode
    thresholds: Thresholds
    scores: Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    score: float
    hits: tuple[Hit, ...]
    action: Action
    group: str = DEFAULT_GROUP
    # With rules or lists in observe mode: what would happen if their hits counted too.
    trial_score: float | None = None
    trial_action: Action | None = None
    # Lists with `on_unusable: tempfail` that could not be asked and whose answer could have
    # changed the action: the action is TEMPFAIL for them. By name, in policy order.
    tempfail_by: tuple[str, ...] = ()
    # The same for the trial only (lists in observe mode, or observed hits counted).
    trial_tempfail_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Enforcement:
    """What is actually done with a verdict, and why it differs from the verdict if it does."""

    action: Action
    reply: Reply | None = None
    waived_by: str = ""
    quarantine_reason: str = ""


class Engine:
    """A policy made ready for evaluation; immutable and shared by every session using it."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rulebook = rulebook = RuleBook(policy)
        # What a session must gather for this policy, worked out once (not per connection).
        checked = {source for d in policy.domain_lists for source in d.check_names}
        self.needs_rdns = (
            rulebook.needs_rdns
            or bool(policy.allow.client_name_set or policy.deny.client_name_set)
            or DomainSource.PTR in checked
        )
        self.needs_helo_resolution = rulebook.needs_helo_resolution
        self.needs_sender_resolution = rulebook.needs_sender_resolution
        # Authentication-Results reports SPF, DKIM and DMARC: adding it makes all three needed.
        adds_results = policy.authentication_results.add
        self.needs_spf = rulebook.needs_spf or adds_results
        self.needs_helo_spf = rulebook.needs_helo_spf
        # A verified sender SPF did not verify at RCPT TO can still be by a DKIM signature.
        self.needs_dkim = rulebook.needs_dkim or adds_results or bool(policy.allow.verified_senders)
        self.needs_dmarc = rulebook.needs_dmarc or adds_results
        # Postfix sends the body only to a milter that asks for it (adapter.negotiate): only
        # DKIM reads it, so a policy without DKIM costs no body bytes at all.
        self.needs_body = self.needs_dkim
        self.counted_headers = rulebook.counted_headers
        self.needs_header_view = rulebook.needs_header_view
        # Headers worth parsing: those rules judge, and those whose domains lists look up.
        self.parsed_headers = rulebook.parsed_headers | {
            name
            for name, source in (("from", DomainSource.FROM), ("reply-to", DomainSource.REPLY_TO))
            if source in checked
        }
        allow, deny = policy.allow, policy.deny
        # Whether any allow or deny list names recipients or client names: most name neither,
        # and a decision then need not try each recipient against empty lists.
        self.lists_recipients = bool(allow.recipient_set or deny.recipient_set)
        self.lists_client_names = bool(allow.client_name_set or deny.client_name_set)
        self._exempt_locals = {e.lower() for e in policy.exempt_recipients if "@" not in e}
        self._exempt_addresses = {e.lower() for e in policy.exempt_recipients if "@" in e}
        self.default_group = Group(DEFAULT_GROUP, policy.mode, policy.thresholds, {})
        self._ip_list_hits = {
            hit.name: Hit(hit.name, hit.score, dns_list.description_of(hit))
            for dns_list in policy.ip_lists
            if dns_list.mode is Mode.ENFORCE
            for hit in dns_list.scored_hits
        }
        self._displays = {dns_list.name: dns_list.display for dns_list in policy.dns_lists}
        self._tempfails_on_silence = any(
            dns_list.on_unusable is OnUnusable.TEMPFAIL for dns_list in policy.dns_lists
        )
        self._groups = [
            (
                entry.recipient_set,
                Group(
                    entry.name,
                    entry.mode or policy.mode,
                    entry.thresholds or policy.thresholds,
                    dict(entry.scores),
                ),
            )
            for entry in policy.recipient_policies
        ]

    def match_header(self, lowered_name: str, value: str) -> list[str]:
        """The pattern rules that fire on one header as it arrives (rules.RuleBook)."""
        return self.rulebook.match_header(lowered_name, value)

    def group_named(self, name: str) -> Group:
        return next((g for _, g in self._groups if g.name == name), self.default_group)

    def group_for(self, recipient: str) -> Group:
        for patterns, group in self._groups:
            if patterns.match(recipient):
                return group
        return self.default_group

    def evaluate(self, evidence: Evidence, group: Group | None = None) -> Verdict:
        group = group or self.default_group
        hits: dict[str, Hit] = {}
        remembered = [self._ip_list_hits[n] for n in evidence.remembered if n in self._ip_list_hits]
        for hit in [*self._list_hits(evidence), *remembered, *self._rule_hits(evidence)]:
            score = group.scores.get(hit.name, hit.score)
            # One name scores once, however many names or headers a list or rule matched.
            hits.setdefault(hit.name, Hit(hit.name, score, hit.description, hit.observe))
        counted = [h.score for h in hits.values() if not h.observe]
        score = float(round(sum(counted), 3))
        # Rules with an `action` set a floor under it; an observed rule's only on trial.
        floors = [(r.mode, _RULE_ACTIONS[r.action]) for r in evidence.rules if r.action]
        counted_floors = [floor for mode, floor in floors if mode is not Mode.OBSERVE]
        action = max([choose_action(score, group.thresholds), *counted_floors])
        silent = self._silent_lists(evidence)
        counted_lists = [x for x in silent if x.mode is not Mode.OBSERVE]
        tempfail_by = self._defers(
            counted_lists, group, hits, score=score, floors=counted_floors, action=action
        )
        if tempfail_by:
            action = Action.TEMPFAIL
        on_trial = len(counted) != len(hits) or len(counted_lists) != len(silent)
        if not on_trial:
            return Verdict(score, tuple(hits.values()), action, group.name, tempfail_by=tempfail_by)
        trial_score = float(round(sum(h.score for h in hits.values()), 3))
        all_floors = [f for _, f in floors]
        trial_action = max([choose_action(trial_score, group.thresholds), *all_floors])
        trial_by = self._defers(
            silent, group, hits, score=trial_score, floors=all_floors, action=trial_action
        )
        if trial_by:
            trial_action = Action.TEMPFAIL
        trial_only = tuple(name for name in trial_by if name not in tempfail_by)
        if len(counted) == len(hits) and not trial_only:
            # Only a list on trial was silent, and it could not have changed anything.
            return Verdict(score, tuple(hits.values()), action, group.name, tempfail_by=tempfail_by)
        return Verdict(
            score,
            tuple(hits.values()),
            action,
            group.name,
            trial_score,
            trial_action,
            tempfail_by,
            trial_only,
        )

    def _silent_lists(self, evidence: Evidence) -> list[DnsList]:
        """The lists with `on_unusable: tempfail` that could not be asked, once each."""
        if not self._tempfails_on_silence or evidence.lists_ignored is not None:
            return []  # not asked, or not counted: trusted, allowed, authenticated, ...
        silent = {
            o.dns_list.name: o.dns_list
            for o in evidence.lists
            if o.status is ListStatus.UNUSABLE and o.dns_list.on_unusable is OnUnusable.TEMPFAIL
        }
        return list(silent.values())

    @staticmethod
    def _defers(
        silent: Iterable[DnsList],
        group: Group,
        hits: Mapping[str, Hit],
        *,
        score: float,
        floors: Iterable[Action],
        action: Action,
    ) -> tuple[str, ...]:
        """The names of the silent lists whose answer could have changed `action`, each judged
        on its own against the verdict reached without it: a positive list when its strongest
        hit (by the group's scores) would have made the action more severe; an allowlist when
        its strongest negative hit could have lowered a refusal or a greylist. A hit that
        already scored (the same list listed another name) adds nothing. An action that is
        already TEMPFAIL stays as it is, with its own reply; REJECT can only be lowered."""
        if action is Action.TEMPFAIL:
            return ()
        floors = list(floors)
        thresholds = group.thresholds
        names = []
        for dns_list in silent:
            scores = [
                group.scores.get(hit.name, hit.score)
                for hit in dns_list.scored_hits
                if hit.name not in hits
            ]
            worst = max((s for s in scores if s > 0), default=0.0)
            best = min((s for s in scores if s < 0), default=0.0)
            raised = (
                worst > 0
                and max([choose_action(round(score + worst, 3), thresholds), *floors]) > action
            )
            lowered = (
                best < 0
                and action in _LOWERABLE
                and max([choose_action(round(score + best, 3), thresholds), *floors]) < action
            )
            if raised or lowered:
                names.append(dns_list.name)
        return tuple(names)

    @staticmethod
    def _list_hits(evidence: Evidence) -> Iterable[Hit]:
        if evidence.lists_ignored is not None:
            return
        for outcome in evidence.lists:
            if outcome.status is ListStatus.LISTED:
                observe = outcome.dns_list.mode is Mode.OBSERVE
                for hit in outcome.hits:
                    description = outcome.dns_list.description_of(hit)
                    yield Hit(hit.name, hit.score, description, observe)

    @staticmethod
    def _rule_hits(evidence: Evidence) -> Iterable[Hit]:
        for rule in evidence.rules:
            yield Hit(rule.name, rule.score, rule.description, rule.mode is Mode.OBSERVE)

    def enforce(
        self,
        verdict: Verdict,
        decision_id: str,
        *,
        exempt: bool = False,
        client: str = "",
        group: Group | None = None,
        denied: bool = False,
    ) -> Enforcement:
        """Turn a verdict into what the sender sees. `exempt`: a recipient must not be refused.
        `denied`: a deny list refused it (the verdict says reject, unscored): `deny.reply`.

        Observe mode and exempt recipients waive a refusal the same way whatever made it, a
        score, a rule's action or a deny list: the mail is accepted, tagged if its score
        reaches `tag`."""
        group = group or self.default_group
        tag = group.thresholds.tag
        tagged = tag is not None and verdict.score >= tag
        if verdict.action <= Action.TAG:
            return Enforcement(verdict.action)
        waived_by = "observe" if group.mode is Mode.OBSERVE else "exempt" if exempt else ""
        if waived_by:
            return Enforcement(Action.TAG if tagged else Action.ACCEPT, waived_by=waived_by)
        if denied:
            text = fill(self.policy.deny.reply, {"id": decision_id, "client": client})
            return Enforcement(Action.REJECT, replies.rejection(text))
        if verdict.action is Action.GREYLIST:
            # Whether the triplets must retry is for the greylist state to say (decision.py).
            return Enforcement(Action.GREYLIST)
        if verdict.tempfail_by:
            displays = ", ".join(dict.fromkeys(self._displays[n] for n in verdict.tempfail_by))
            fields = {"lists": displays, "id": decision_id, "client": client}
            text = fill(self.policy.replies.unusable, fields, cut="lists")
            return Enforcement(Action.TEMPFAIL, replies.temporary_refusal(text))
        fields = self._reply_fields(verdict, decision_id, client)
        if verdict.action is Action.QUARANTINE:
            reason = f"spamgate: score {fields['score']}: {fields['reasons']} (id {decision_id})"
            return Enforcement(Action.QUARANTINE, quarantine_reason=replies.clean_text(reason))
        if verdict.action is Action.REJECT:
            text = fill(self.policy.replies.reject, fields)
            return Enforcement(Action.REJECT, replies.rejection(text))
        text = fill(self.policy.replies.tempfail, fields)
        return Enforcement(Action.TEMPFAIL, replies.temporary_refusal(text))

    def greylist_reply(
        self, verdict: Verdict, decision_id: str, client: str, retry_after: float
    ) -> Reply:
        """`451 4.7.1` for a triplet that must retry, saying when a retry will pass."""
        fields = self._reply_fields(verdict, decision_id, client)
        fields["retry"] = str(max(1, math.ceil(retry_after)))
        return replies.temporary_refusal(fill(self.policy.greylist.reply, fields))

    def _reply_fields(self, verdict: Verdict, decision_id: str, client: str) -> dict[str, str]:
        """What reply templates may name (replies.check_template checks them)."""
        return {
            "reasons": self.reasons(verdict),
            "id": decision_id,
            "score": f"{verdict.score:.1f}",
            "client": client,
        }

    @staticmethod
    def listings_to_remember(verdict: Verdict, evidence: Evidence, group: Group) -> tuple[str, ...]:
        """The client's IP list hits, when they alone reach the reject threshold: a refusal
        worth remembering for the client's address (recentrejects); else ()."""
        reject = group.thresholds.reject
        if (
            reject is None
            or verdict.action is not Action.REJECT
            or evidence.lists_ignored is not None
        ):
            return ()
        names = {
            hit.name
            for outcome in evidence.lists
            if outcome.status is ListStatus.LISTED and isinstance(outcome.dns_list, IpList)
            for hit in outcome.hits
        }
        listed = [h for h in verdict.hits if h.name in names and not h.observe]
        if not listed or sum(h.score for h in listed) < reject:
            return ()
        return tuple(h.name for h in listed)

    @staticmethod
    def reasons(verdict: Verdict) -> str:
        """The descriptions of what scored, worst first, for the reply text."""
        scoring = sorted(
            (h for h in verdict.hits if h.score > 0 and not h.observe), key=lambda h: -h.score
        )
        descriptions = list(dict.fromkeys(h.description for h in scoring))
        return "; ".join(descriptions) or "policy score too high"

    def is_exempt(self, recipient: str) -> bool:
        """postmaster@ and abuse@ (by default) must always be reachable (RFC 5321 4.5.1)."""
        return self.is_exempt_address(domains.bare_address(recipient))

    def is_exempt_address(self, address: str) -> bool:
        """is_exempt for an address already bare (domains.bare_address)."""
        local, at, _ = address.rpartition("@")
        if not at:
            local = address
        return local in self._exempt_locals or address in self._exempt_addresses

    def spam_headers(self, verdict: Verdict, applied: Action) -> tuple[tuple[str, str], ...]:
        """Headers for an accepted message; none when the policy only tags spam."""
        is_spam = applied is not Action.ACCEPT
        if self.policy.add_headers is AddHeaders.TAGGED and not is_spam:
            return ()
        score = f"{verdict.score:.1f}"
        names = ",".join(hit.name for hit in verdict.hits if not hit.observe) or "none"
        status = f"{'Yes' if is_spam else 'No'}, score={score} hits={names}"
        return ((SCORE_HEADER, score), (STATUS_HEADER, status))


def fill(template: str, fields: Mapping[str, str], cut: str = "reasons") -> str:
    """The template with its fields; the field `cut` (the reasons, or the lists' names) is cut
    to what the reply has room for, so the rest of the text (the id at the end, most of all)
    always survives."""
    flat = {key: replies.clean_text(value, replies.MAX_TEXT) for key, value in fields.items()}
    if cut in flat:
        room = replies.MAX_TEXT - len(template.format_map({**flat, cut: ""}))
        flat[cut] = replies.clean_text(flat[cut], max(room, 0))
    return template.format_map(flat)


def choose_action(score: float, thresholds: Thresholds) -> Action:
    """The action of the highest threshold the score reaches (ties: the more severe)."""
    reached = [
        (value, action)
        for value, action in (
            (thresholds.tag, Action.TAG),
            (thresholds.greylist, Action.GREYLIST),
            (thresholds.quarantine, Action.QUARANTINE),
            (thresholds.tempfail, Action.TEMPFAIL),
            (thresholds.reject, Action.REJECT),
        )
        if value is not None and score >= value
    ]
    return max(reached)[1] if reached else Action.ACCEPT


_RULE_ACTIONS = {rule_action: Action[rule_action.name] for rule_action in RuleAction}
