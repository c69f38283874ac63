"""Rules as the policy declares them: one condition each (on HELO, reverse DNS, the
envelope, SPF, DKIM, DMARC, a header or a header fact, or other hits), a score, and the least
action a hit makes.

Pure, like all of the policy's types. Which rules fire at which stage is rules.py's; what a
fired rule tested, ruletrace.py's.
"""

from __future__ import annotations

import difflib
import enum
import re
from dataclasses import dataclass

from spamgate.core.dkim import DkimResult
from spamgate.core.dmarc import DmarcOutcome
from spamgate.core.headerfacts import FACTS, FactType
from spamgate.core.patterns import Pattern, RawPattern
from spamgate.core.schema import FieldError, setting
from spamgate.core.scoring import Mode, check_hit_name
from spamgate.core.spf import SpfResult

# Header names whose values spamgate can parse, and so can call malformed.
ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc"})
PARSED_HEADERS = ADDRESS_HEADERS | {"date"}


@dataclass(frozen=True)
class HeaderCondition:
    name: str = setting("Header field name, case-insensitive, e.g. `Subject`.")
    matches: Pattern | None = setting(
        "RE2 regular expression searched in the decoded value (RFC 2047 words decoded, "
        "folding removed).",
        None,
    )
    matches_raw: RawPattern | None = setting(
        "RE2 regular expression searched in the raw bytes of the value (`\\xff` is a byte).",
        None,
    )
    missing: bool = setting("Fire when the message has no such header.", False)
    count_over: int | None = setting(
        "Fire when the header appears more than this many times.", None, minimum=0
    )
    malformed: bool = setting(
        "Fire when a `Date` or address header (From, Sender, Reply-To, To, Cc) cannot be parsed.",
        False,
    )

    def check(self) -> None:
        if not re.fullmatch(r"[!-9;-~]+", self.name):
            raise FieldError("name", f"{self.name!r} is not a header field name")
        tests = [
            self.matches is not None,
            self.matches_raw is not None,
            self.missing,
            self.count_over is not None,
            self.malformed,
        ]
        if sum(tests) != 1:
            raise FieldError(
                "matches",
                "give exactly one of matches, matches_raw, missing: true, count_over, "
                "malformed: true",
            )
        if self.malformed and self.name.lower() not in PARSED_HEADERS:
            raise FieldError(
                "malformed",
                f"spamgate cannot parse {self.name}: only Date, From, Sender, Reply-To, To and Cc",
            )


# Each operator of a `fact:` condition, and the type of fact it tests.
_FACT_OPERATORS = {
    "is": FactType.BOOLEAN,
    "over": FactType.NUMBER,
    "under": FactType.NUMBER,
    "matches": FactType.TEXT,
}


@dataclass(frozen=True)
class FactCondition:
    name: str = setting(
        "A header fact (docs/rules.md, Facts), e.g. `subject.caps_ratio`. A rule on a fact "
        "that is absent for a message (its inputs are missing) does not fire."
    )
    is_: bool | None = setting("Fire when a boolean fact has this value.", None, key="is")
    over: float | None = setting("Fire when a number fact is more than this.", None)
    under: float | None = setting("Fire when a number fact is less than this.", None)
    matches: Pattern | None = setting("Fire when a text fact matches this RE2 pattern.", None)

    def check(self) -> None:
        fact = FACTS.get(self.name)
        if fact is None:
            close = difflib.get_close_matches(self.name, list(FACTS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(FACTS)}"
            raise FieldError("name", f"unknown fact {self.name!r} ({hint})")
        given = [key for key in _FACT_OPERATORS if self.operand(key) is not None]
        wanted = [key for key, kind in _FACT_OPERATORS.items() if kind is fact.type]
        if len(given) != 1:
            where = given[1] if len(given) > 1 else "name"
            raise FieldError(
                where, f"{self.name} is a {fact.type.value} fact: give one of {', '.join(wanted)}"
            )
        if given[0] not in wanted:
            raise FieldError(
                given[0],
                f"{self.name} is a {fact.type.value} fact: test it with {' or '.join(wanted)}",
            )

    def operand(self, key: str) -> bool | float | Pattern | None:
        """The value given for the operator `key` (`is`, `over`, `under`, `matches`)."""
        value: bool | float | Pattern | None = getattr(self, "is_" if key == "is" else key)
        return value

    @property
    def operator(self) -> str:
        return next(key for key in _FACT_OPERATORS if self.operand(key) is not None)


class HeloCheck(enum.Enum):
    BARE_IP = "bare_ip"
    NOT_FQDN = "not_fqdn"
    OURS = "ours"
    UNRESOLVABLE = "unresolvable"
    NOT_PTR_DOMAIN = "not_ptr_domain"


class RdnsCheck(enum.Enum):
    MISSING = "missing"
    UNCONFIRMED = "unconfirmed"
    DYNAMIC = "dynamic"


class SenderCheck(enum.Enum):
    EMPTY = "empty"
    UNRESOLVABLE = "unresolvable"


class FromCheck(enum.Enum):
    NOT_SENDER_DOMAIN = "not_sender_domain"


class RuleAction(enum.Enum):
    """The least a rule's hit makes the action, whatever the score (engine.Action by name)."""

    TAG = "tag"
    GREYLIST = "greylist"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


@dataclass(frozen=True)
class Composite:
    all: tuple[str, ...] = setting("Fires only if every one of these hits fired.", ())
    any: tuple[str, ...] = setting("... and at least one of these (if given).", ())
    not_: tuple[str, ...] = setting("... and none of these.", (), key="not")

    def check(self) -> None:
        if not (self.all or self.any):
            raise FieldError("all", "a composite needs `all` or `any`")

    @property
    def names(self) -> tuple[str, ...]:
        return self.all + self.any + self.not_


@dataclass(frozen=True)
class Rule:
    name: str = setting("Hit name shown in logs and X-Spam-Status, e.g. `SUBJECT_PHARMA`.")
    score: float = setting("Points added when the rule fires (negative allows).")
    description: str = setting("Shown in reject texts and logs.")
    mode: Mode = setting(
        "`observe` logs the rule's hits without letting them count, to trial one rule while "
        "the rest enforce.",
        Mode.ENFORCE,
    )
    action: RuleAction | None = setting(
        "When the rule fires, the action is at least this (`tag`, `greylist`, `quarantine`, "
        "`tempfail`, `reject`), whatever the score; a higher score can still choose a more "
        "severe one.",
        None,
    )
    helo: HeloCheck | None = setting(
        "HELO is `bare_ip`, `not_fqdn`, `ours` (our host name or address), `unresolvable` (no "
        "A/AAAA), or `not_ptr_domain` (another organization than the client's reverse DNS).",
        None,
    )
    helo_matches: Pattern | None = setting("HELO name matches this RE2 pattern.", None)
    rdns: RdnsCheck | None = setting(
        "Client reverse DNS is `missing`, `unconfirmed` (FCrDNS fails) or `dynamic` (matches "
        "`reverse_dns.dynamic_patterns`).",
        None,
    )
    rdns_matches: Pattern | None = setting("Client reverse DNS name matches this pattern.", None)
    sender: SenderCheck | None = setting(
        "MAIL FROM is `empty` (the null sender <>) or its domain is `unresolvable` (no MX, "
        "A or AAAA, or a null MX).",
        None,
    )
    sender_matches: Pattern | None = setting(
        "MAIL FROM address (lower case, without <>) matches this pattern.", None
    )
    spf: SpfResult | None = setting(
        "The SPF result (RFC 7208) for MAIL FROM, or for the HELO name when the sender is <>, "
        "is `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror` (DNS did not answer "
        "within `resolver.deadline`) or `permerror` (a broken record).",
        None,
    )
    helo_spf: SpfResult | None = setting(
        "The SPF result for the HELO name as an identity of its own (RFC 7208 2.3), same "
        "values; `none` also for a HELO that is no domain (an address literal).",
        None,
    )
    dkim: DkimResult | None = setting(
        "Some DKIM signature (RFC 6376) of the message has this result: `pass`, `fail` (the "
        "body or header hash did not match), `neutral` (an unusable signature), `permerror` "
        "(no key, a broken key, From not signed), `temperror` (no key within "
        "`resolver.deadline`), `policy` (verified, but rsa-sha1 or a key under 1024 bits), "
        "`body_not_read` (the body was longer than `dkim.max_body_bytes`); `none`: the message "
        "has no signature. Checked at end of message.",
        None,
    )
    dmarc: DmarcOutcome | None = setting(
        "The DMARC result (RFC 7489) for the From: domain: `pass` (SPF or DKIM passed and "
        "aligned), `fail_reject`, `fail_quarantine` or `fail_none` (no aligned pass, under the "
        "policy the domain publishes, after `pct=`), `none` (no DMARC record), `temperror` or "
        "`permerror` (a missing, repeated or unreadable From: field, a broken record).",
        None,
    )
    recipient_matches: Pattern | None = setting(
        "Some RCPT TO address of the transaction matches this pattern.", None
    )
    recipients_over: int | None = setting(
        "The transaction has more than this many recipients.", None, minimum=1
    )
    header: HeaderCondition | None = setting("A condition on a message header.", None)
    date_ahead_hours: float | None = setting(
        "The Date header is more than this many hours in the future.", None, minimum=0
    )
    date_behind_days: float | None = setting(
        "The Date header is more than this many days in the past.", None, minimum=0
    )
    from_domain: FromCheck | None = setting(
        "The From: header domain is `not_sender_domain`: another organization than MAIL FROM.",
        None,
    )
    fact: FactCondition | None = setting(
        "A condition on a header fact: `{name: FACT, is: true}` (boolean), `over: N` or "
        "`under: N` (number), `matches: RE` (text).",
        None,
    )
    composite: Composite | None = setting(
        "Fires on a combination of other hits (rules or list hits defined before it).", None
    )

    CONDITIONS = (
        "helo",
        "helo_matches",
        "rdns",
        "rdns_matches",
        "sender",
        "sender_matches",
        "spf",
        "helo_spf",
        "recipient_matches",
        "recipients_over",
        "header",
        "date_ahead_hours",
        "date_behind_days",
        "from_domain",
        "dkim",
        "dmarc",
        "fact",
        "composite",
    )

    def check(self) -> None:
        check_hit_name(self.name, "name")
        given = [key for key in self.CONDITIONS if getattr(self, key) is not None]
        if len(given) != 1:
            where = given[1] if len(given) > 1 else "name"
            raise FieldError(
                where, f"a rule needs exactly one condition ({', '.join(self.CONDITIONS)})"
            )

    @property
    def condition(self) -> str:
        return next(key for key in self.CONDITIONS if getattr(self, key) is not None)
