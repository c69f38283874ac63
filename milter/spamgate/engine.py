"""The policy engine: evidence in, verdict out. No sockets, no clock, no logging.

Detection, weight and action are separate (as in rspamd): lists and rules produce named hits,
the policy gives each a score, and the thresholds turn the total into an action. Whether that
action reaches the sender is a second step (`enforce`), because observe mode and exempt
recipients change what is sent without changing what was decided.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from spamgate import replies
from spamgate.config import AddHeaders, Mode, Policy, Rule
from spamgate.dnslists import ListOutcome, ListStatus
from spamgate.replies import Reply
from spamgate.rules import RuleBook

SCORE_HEADER = "X-Spam-Score"
STATUS_HEADER = "X-Spam-Status"
OUR_HEADERS = frozenset({SCORE_HEADER.lower(), STATUS_HEADER.lower()})


class Action(enum.Enum):
    ACCEPT = "accept"
    TAG = "tag"
    TEMPFAIL = "tempfail"
    REJECT = "reject"

    @property
    def refuses(self) -> bool:
        return self in (Action.TEMPFAIL, Action.REJECT)


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    score: float
    description: str


@dataclass(frozen=True)
class Evidence:
    """What is known at a decision point. `lists_ignored` says why list results do not count."""

    lists: tuple[ListOutcome, ...] = ()
    lists_ignored: str = ""
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Verdict:
    score: float
    hits: tuple[Hit, ...]
    action: Action


@dataclass(frozen=True)
class Enforcement:
    """What is actually done with a verdict, and why it differs from the verdict if it does."""

    action: Action
    reply: Reply | None = None
    waived_by: str = ""


class Engine:
    """A policy made ready for evaluation; immutable and shared by every session using it."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rulebook = RuleBook(policy.rules)
        self._exempt_locals = {e.lower() for e in policy.exempt_recipients if "@" not in e}
        self._exempt_addresses = {e.lower() for e in policy.exempt_recipients if "@" in e}

    def evaluate(self, evidence: Evidence) -> Verdict:
        hits = list(self._list_hits(evidence)) + [
            Hit(rule.name, rule.score, rule.description) for rule in evidence.rules
        ]
        score = round(sum(hit.score for hit in hits), 3)
        return Verdict(score, tuple(hits), self.choose_action(score))

    def _list_hits(self, evidence: Evidence) -> Iterable[Hit]:
        if evidence.lists_ignored:
            return
        for outcome in evidence.lists:
            if outcome.status is ListStatus.LISTED:
                for hit in outcome.hits:
                    yield Hit(hit.name, hit.score, outcome.dns_list.description_of(hit))

    def choose_action(self, score: float) -> Action:
        thresholds = self.policy.thresholds
        if thresholds.reject is not None and score >= thresholds.reject:
            return Action.REJECT
        if thresholds.tempfail is not None and score >= thresholds.tempfail:
            return Action.TEMPFAIL
        if thresholds.tag is not None and score >= thresholds.tag:
            return Action.TAG
        return Action.ACCEPT

    def enforce(self, verdict: Verdict, decision_id: str, exempt: bool) -> Enforcement:
        """Turn a verdict into what the sender sees. `exempt`: a recipient must not be refused."""
        if not verdict.action.refuses:
            return Enforcement(verdict.action)
        waived_by = "observe" if self.policy.mode is Mode.OBSERVE else "exempt" if exempt else ""
        if waived_by:
            return Enforcement(self._tag_or_accept(verdict.score), waived_by=waived_by)
        reasons = self.reasons(verdict)
        if verdict.action is Action.REJECT:
            return Enforcement(Action.REJECT, replies.rejection(reasons, decision_id))
        return Enforcement(Action.TEMPFAIL, replies.temporary_refusal(reasons, decision_id))

    def _tag_or_accept(self, score: float) -> Action:
        tag = self.policy.thresholds.tag
        return Action.TAG if tag is not None and score >= tag else Action.ACCEPT

    @staticmethod
    def reasons(verdict: Verdict) -> str:
        """The descriptions of what scored, worst first, for the reply text."""
        scoring = sorted((h for h in verdict.hits if h.score > 0), key=lambda h: -h.score)
        descriptions = list(dict.fromkeys(h.description for h in scoring))
        return "; ".join(descriptions) or "policy score too high"

    def is_exempt(self, recipient: str) -> bool:
        """postmaster@ and abuse@ (by default) must always be reachable (RFC 5321 4.5.1)."""
        address = recipient.strip().strip("<>").lower()
        local, at, _ = address.rpartition("@")
        if not at:
            local = address
        return local in self._exempt_locals or address in self._exempt_addresses

    def spam_headers(self, verdict: Verdict, applied: Action) -> tuple[tuple[str, str], ...]:
        """Headers for an accepted message; none when the policy only tags spam."""
        is_spam = applied is Action.TAG
        if self.policy.add_headers is AddHeaders.TAGGED and not is_spam:
            return ()
        score = f"{verdict.score:.1f}"
        names = ",".join(hit.name for hit in verdict.hits) or "none"
        status = f"{'Yes' if is_spam else 'No'}, score={score} hits={names}"
        return ((SCORE_HEADER, score), (STATUS_HEADER, status))
