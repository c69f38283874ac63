"""The policy: every key, its type, default, bounds and doc, as frozen dataclasses, and the
build that makes a Policy from the bytes read for it (step 2 of three, see sources.py).

`build_policy` (through config.load_policy) is the only way a Policy comes into being, so
everything downstream can trust it: thresholds are ordered, names are unique, regexes compile,
zones are valid DNS names. Pure: nothing here opens, reads or looks at a file; the files a
policy names are looked up in the Sources it is built from. The daemon's own settings
(listen, log, resolver, health, state) are in settings.py.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import ipaddress
import re
import string
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spamgate.core import schema
from spamgate.core.accesskeys import (
    KEY_LABEL,
    fill_key,
    has_key_label,
    inline_access_key,
    mask_access_key,
    parse_access_key,
)
from spamgate.core.addresses import normalize_network
from spamgate.core.dkim import DkimResult
from spamgate.core.dmarc import DmarcOutcome
from spamgate.core.headerfacts import FACTS, FactType
from spamgate.core.matchlists import AddressPatterns, EntryError, NamePatterns, NetworkSet
from spamgate.core.patterns import Pattern, RawPattern
from spamgate.core.returncodes import ReturnCode
from spamgate.core.schema import FieldError, NamesFiles, setting
from spamgate.core.settings import (
    DAY,
    HealthSettings,
    ListenAddress,
    ListHealthSettings,
    LogSettings,
    MetricsSettings,
    ProbeSettings,
    ResolverSettings,
    SocketMode,
    StateSettings,
)
from spamgate.core.sources import FILE_PREFIX, Sources, building_with, named_files
from spamgate.core.spf import SpfResult

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class Mode(enum.Enum):
    ENFORCE = "enforce"
    OBSERVE = "observe"


class OnError(enum.Enum):
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"


class OnUnusable(enum.Enum):
    """What a list's unusable answer does to mail it could have changed (engine.Engine)."""

    JUDGE = "judge"
    TEMPFAIL = "tempfail"


class AddHeaders(enum.Enum):
    ALWAYS = "always"
    TAGGED = "tagged"


def _parse_network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 10.0.0.0/8, got {value!r}")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"invalid network {value!r}: {error}") from None
    # Clients are matched as normalize_address reads them (an IPv4-mapped client as IPv4), so
    # a mapped network is kept as the IPv4 network it maps, or it would never match.
    return normalize_network(network)


schema.UNION_PARSERS[IPNetwork] = schema.UnionParser("CIDR", _parse_network)


def _check_hit_name(name: str, key: str) -> None:
    if not _NAME_RE.match(name):
        raise FieldError(key, f"{name!r} must be UPPER_CASE letters, digits and _ (max 64)")


DEFAULT_TRUSTED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True)
class Thresholds:
    tag: float | None = setting(
        "Score from which mail is tagged `X-Spam-Status: Yes`; null never tags.", 3.0
    )
    greylist: float | None = setting(
        "Score from which a (client network, sender, recipient) triplet must retry once: its "
        "first attempt gets `451 4.7.1`, a retry after `greylist.min_delay` passes tagged; null "
        "disables greylisting.",
        6.0,
    )
    quarantine: float | None = setting(
        "Score from which mail is accepted into Postfix's hold queue (`postsuper -r` releases "
        "it); null disables quarantine.",
        None,
    )
    tempfail: float | None = setting(
        "Score from which every attempt gets `451 4.7.1`, retry or not, until the sender "
        "gives up; null (the default) disables this band: prefer `greylist`.",
        None,
    )
    reject: float | None = setting(
        "Score from which mail gets `550 5.7.1`; null never rejects.", 10.0
    )

    @property
    def greylists(self) -> bool:
        """Whether some score lands in the greylist band: a more severe threshold at or below
        it (a tie goes to the more severe action) leaves none."""
        greylist = self.greylist
        if greylist is None:
            return False
        severe = (self.quarantine, self.tempfail, self.reject)
        return not any(value is not None and value <= greylist for value in severe)

    def check(self) -> None:
        if self.tag is None:
            return
        for key in ("greylist", "quarantine", "tempfail", "reject"):
            value = getattr(self, key)
            if value is not None and value < self.tag:
                raise FieldError(key, f"must not be below tag ({self.tag:g})")


@dataclass(frozen=True)
class ListHit:
    name: str = setting("Hit name shown in logs and X-Spam-Status, e.g. `SPAMHAUS_SBL`.")
    score: float = setting("Points added when the list answers one of `codes` (negative allows).")
    codes: tuple[ReturnCode, ...] = setting(
        "Answers that mean this hit: `127.0.0.2`, `127.0.0.4-127.0.0.7`, `127.0.0.0/24`, "
        "`127.0.*.3`, or a bit mask `&4`. Empty means any listing.",
        (),
    )
    description: str = setting(
        "Shown in reject texts and logs.", "", shown_default="listed by `display`"
    )

    def check(self) -> None:
        _check_hit_name(self.name, "name")


@dataclass(frozen=True)
class DnsList:
    """What IP lists and domain lists have in common."""

    name: str = setting(
        "List name, e.g. `SPAMHAUS_ZEN`; an unusable answer is logged as `<name>_FAIL`."
    )
    zone: str = setting(
        "DNS zone queried, e.g. `zen.spamhaus.org`. A label `{key}` stands for the access key "
        "in `key_file` (`{key}.zen.dq.spamhaus.net`). Replies, headers and logs never show "
        "the zone; config errors show its key as `****`."
    )
    key_file: str = setting(
        "File holding the list's access key (one line, 8-63 letters, digits, `-`, `_`), put "
        "where `zone` says `{key}`; relative paths start at the policy file's directory. "
        "spamgate warns at load when other users may read it (use 0640, group spamgate).",
        "",
        names_files=NamesFiles.PATH,
    )
    display: str = setting("Name shown to senders in reply texts.", "", shown_default="`name`")
    score: float | None = setting(
        "Shorthand for a list with one hit named `name` for any listing; use `hits` instead "
        "to tell return codes apart.",
        None,
    )
    hits: tuple[ListHit, ...] = setting("Named hits by return code.", ())
    error_codes: tuple[ReturnCode, ...] = setting(
        "Extra answers that mean the list refused to answer (127.255.255.0/24 always does).", ()
    )
    mode: Mode = setting(
        "`observe` logs this list's hits without letting them count (to trial a list).",
        Mode.ENFORCE,
    )
    on_unusable: OnUnusable = setting(
        "When the list's answer cannot be used (timeout, SERVFAIL, an error code, past "
        "`resolver.deadline`, suspended): `judge` the mail without it, or `tempfail` it "
        "(`451 4.7.1`, `replies.unusable`) when its strongest hit could have changed the "
        "action. Only for a list whose silence means overload, such as your own mirror.",
        OnUnusable.JUDGE,
    )
    probe: ProbeSettings = setting("Health probes of this list.", factory=ProbeSettings)
    health: ListHealthSettings = setting(
        "This list's own circuit breaker settings (`breaker`, `max_hit_ratio`, `min_checks`, "
        "`window`); each key left out is the global `health` one.",
        factory=ListHealthSettings,
    )
    # Filled in by __post_init__: the hits to score, whichever form the file used.
    scored_hits: tuple[ListHit, ...] = field(init=False, repr=False, compare=False)
    # The zone that queries go to, key filled in: only query names may contain it (never a
    # repr, which could end up in a log or a test report).
    query_zone: str = field(init=False, repr=False)
    # The access key in `query_zone` ("" if none), from `key_file` or written in `zone`.
    access_key: str = field(init=False, repr=False, compare=False)
    key_path: Path | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hits = self.hits
        if self.score is not None:
            hits = (ListHit(name=self.name, score=self.score),)
        object.__setattr__(self, "scored_hits", hits)
        if not self.display:
            object.__setattr__(self, "display", self.name)
        self._fill_key()

    def _fill_key(self) -> None:
        key_path = None
        if self.key_file:
            if not has_key_label(self.zone):
                raise FieldError("key_file", f"`zone` has no {KEY_LABEL} label for the key")
            key_path = named_files().path_of(self.key_file)
            raw = named_files().contents.get(key_path)
            if raw is None:
                # config.read_sources reads every key file the policy names before the build.
                raise FieldError(
                    "key_file",
                    f"{key_path} was not read with the policy (a bug in spamgate, please "
                    "report it)",
                )
            key = parse_access_key(raw, key_path)
            query_zone = fill_key(self.zone, key)
        elif has_key_label(self.zone):
            raise FieldError("key_file", f"`zone` has {KEY_LABEL}: name the file holding the key")
        else:
            key, query_zone = inline_access_key(self.zone), self.zone
        object.__setattr__(self, "query_zone", query_zone)
        object.__setattr__(self, "access_key", key)
        object.__setattr__(self, "key_path", key_path)

    @property
    def shown_zone(self) -> str:
        """The zone as command output may show it: an access key written as ****."""
        return mask_access_key(self.zone)

    def check(self) -> None:
        _check_hit_name(self.name, "name")
        check_zone(self.query_zone, self)
        if (self.score is None) == (not self.hits):
            raise FieldError("hits", "give either `score` or `hits`, not both or neither")

    def description_of(self, hit: ListHit) -> str:
        return hit.description or f"listed by {self.display}"


@dataclass(frozen=True)
class IpList(DnsList):
    ipv4: bool = setting("Query this list for IPv4 clients.", True)
    ipv6: bool = setting("Query this list for IPv6 clients (nibble format).", True)

    def check(self) -> None:
        super().check()
        if not (self.ipv4 or self.ipv6):
            raise FieldError("ipv6", "a list must be queried for IPv4, IPv6 or both")
        for key in ("listed", "unlisted"):
            entry = getattr(self.probe, key)
            try:
                if entry:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise FieldError(("probe", key), f"{entry!r} is not an IP address") from None


class DomainSource(enum.Enum):
    HELO = "helo"
    PTR = "ptr"
    SENDER = "sender"
    FROM = "from"
    REPLY_TO = "reply_to"


class DomainQuery(enum.Enum):
    ORGANIZATIONAL = "organizational"
    EXACT = "exact"


@dataclass(frozen=True)
class DomainList(DnsList):
    check_names: tuple[DomainSource, ...] = setting(
        "Which names to look up: `helo`, `ptr` (the client's reverse DNS name), `sender` "
        "(MAIL FROM domain), `from` and `reply_to` (header domains).",
        (
            DomainSource.HELO,
            DomainSource.PTR,
            DomainSource.SENDER,
            DomainSource.FROM,
            DomainSource.REPLY_TO,
        ),
    )
    query: DomainQuery = setting(
        "`organizational` looks up the registrable domain (mail.example.co.uk -> "
        "example.co.uk), as Spamhaus DBL and SURBL list them; `exact` the name as found.",
        DomainQuery.ORGANIZATIONAL,
    )

    def check(self) -> None:
        super().check()
        for key in ("listed", "unlisted"):
            entry = getattr(self.probe, key)
            if entry and not all(_LABEL_RE.match(label) for label in entry.split(".")):
                raise FieldError(("probe", key), f"{entry!r} is not a domain name")
        if not self.check_names:
            raise FieldError(
                "check_names", "name at least one of helo, ptr, sender, from, reply_to"
            )


def check_zone(zone: str, dns_list: DnsList | None = None) -> None:
    labels = zone.rstrip(".").split(".")
    # A reversed IPv6 address takes 64 bytes of the 255-byte name limit.
    if len(zone) > 180 or len(labels) < 2 or not all(_LABEL_RE.match(x) for x in labels):
        shown = dns_list.shown_zone if dns_list is not None else zone
        raise FieldError("zone", f"{shown!r} is not a valid DNS zone name")


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
        _check_hit_name(self.name, "name")
        given = [key for key in self.CONDITIONS if getattr(self, key) is not None]
        if len(given) != 1:
            where = given[1] if len(given) > 1 else "name"
            raise FieldError(
                where, f"a rule needs exactly one condition ({', '.join(self.CONDITIONS)})"
            )

    @property
    def condition(self) -> str:
        return next(key for key in self.CONDITIONS if getattr(self, key) is not None)


Parsed = typing.TypeVar("Parsed")


def _parse_entries(
    entries: tuple[str, ...], parse: Callable[[Iterable[str]], Parsed], key: str
) -> Parsed:
    """`parse(entries)`, or a FieldError naming the entry (a `file:` list's, or its line)."""
    try:
        return parse(entries)
    except EntryError as error:
        where = key if error.entry is None else (key, error.entry)
        raise FieldError(where, str(error)) from None


@dataclass(frozen=True)
class Relays:
    names: tuple[str, ...] = setting(
        "Host names of our relays, as they write them after `by` in Received fields.", ()
    )
    addresses: tuple[IPNetwork, ...] = setting("Addresses of our relays (CIDR).", ())


@dataclass(frozen=True)
class MatchList:
    clients: tuple[str, ...] = setting(
        "Client networks (CIDR).", (), names_files=NamesFiles.ENTRIES
    )
    client_names: tuple[str, ...] = setting(
        "Client host names (Postfix's verified name, or spamgate's confirmed reverse DNS): "
        "`mail.example.com`, `*.example.com`.",
        (),
        names_files=NamesFiles.ENTRIES,
    )
    helo_names: tuple[str, ...] = setting(
        "HELO names, same patterns.", (), names_files=NamesFiles.ENTRIES
    )
    senders: tuple[str, ...] = setting(
        "Envelope senders: `user@example.com`, `@example.com`, `@*.example.com`, `user@`, `<>`.",
        (),
        names_files=NamesFiles.ENTRIES,
    )
    recipients: tuple[str, ...] = setting(
        "Envelope recipients, same patterns.", (), names_files=NamesFiles.ENTRIES
    )
    # Parsed by __post_init__ (entries may name files): what the session matches against.
    client_set: NetworkSet = field(init=False, repr=False, compare=False)
    client_name_set: NamePatterns = field(init=False, repr=False, compare=False)
    helo_name_set: NamePatterns = field(init=False, repr=False, compare=False)
    sender_set: AddressPatterns = field(init=False, repr=False, compare=False)
    recipient_set: AddressPatterns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsers = (
            ("clients", "client_set", NetworkSet.parse),
            ("client_names", "client_name_set", NamePatterns.parse),
            ("helo_names", "helo_name_set", NamePatterns.parse),
            ("senders", "sender_set", AddressPatterns.parse),
            ("recipients", "recipient_set", AddressPatterns.parse),
        )
        for key, target, parse in parsers:
            object.__setattr__(self, target, _parse_entries(getattr(self, key), parse, key))

    @property
    def entries(self) -> tuple[str, ...]:
        keys = ("clients", "client_names", "helo_names", "senders", "recipients")
        return tuple(e for key in keys for e in getattr(self, key))


@dataclass(frozen=True)
class AllowList(MatchList):
    verified_senders: tuple[str, ...] = setting(
        "Envelope senders, same patterns as `senders`, allowed only once verified: SPF passes "
        "for MAIL FROM's domain (at RCPT TO), or a DKIM signature of that domain's "
        "organization verifies (at end of message). Anyone can write any MAIL FROM, so a "
        "plain `senders` entry lets in whoever forges it; this one does not.",
        (),
        names_files=NamesFiles.ENTRIES,
    )
    verified_sender_set: AddressPatterns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        verified = _parse_entries(self.verified_senders, AddressPatterns.parse, "verified_senders")
        object.__setattr__(self, "verified_sender_set", verified)

    @property
    def entries(self) -> tuple[str, ...]:
        return (*super().entries, *self.verified_senders)


@dataclass(frozen=True)
class DenyList(MatchList):
    reply: str = setting(
        "Reply text (after `550 5.7.1`); `{id}` is the decision id.",
        "Refused by local policy (id {id})",
    )

    def check(self) -> None:
        _check_template(self.reply, "reply", {"id", "client"})


DEFAULT_DYNAMIC_PATTERNS = (
    # A pool word right before a number: dsl-198-51-100-7.isp.example, pool-12.example.
    r"(?i)(^|[.-])(dyn|dynamic|dynip|pool|dsl|adsl|xdsl|vdsl|cable|dhcp|ppp|pppoe|dialup|"
    r"dial-?in|broadband|cust|customer|client|home|user|res|residential)[.-]?[0-9]",
    # Four numbers in a row, as in 192-0-2-10.isp.example or host.10.2.0.192.example.
    r"(^|[.-])[0-9]{1,3}[.-][0-9]{1,3}[.-][0-9]{1,3}[.-][0-9]{1,3}([.-]|$)",
)


@dataclass(frozen=True)
class ReverseDnsSettings:
    use_mta_macros: bool = setting(
        "Use Postfix's `{client_resolve}`/`{client_ptr}` when it sends them, instead of "
        "looking up the client's name again.",
        True,
    )
    dynamic_patterns: tuple[Pattern, ...] = setting(
        "RE2 patterns that mark a reverse DNS name as a dynamic/residential pool "
        "(`rdns: dynamic`).",
        factory=lambda: tuple(Pattern.from_config(p) for p in DEFAULT_DYNAMIC_PATTERNS),
        shown_default="dyn, dynamic, pool, dsl, cable, dhcp, ppp, the client's address in the name",
    )


@dataclass(frozen=True)
class DkimSettings:
    # 1 MiB: whole text and HTML mail and small attachments fit, so their signatures can
    # pass; a body beyond it gives body_not_read (neither pass nor fail), never a wrong fail.
    # It bounds memory (50 sessions reading at once hold 50 MiB at most) and the hashing
    # CPU of one message (dkimpy canonicalizes in Python: a few ms per MiB).
    max_body_bytes: int = setting(
        "Body bytes read for DKIM at most; a signature over more gives `body_not_read`.",
        1048576,
        minimum=1024,
        maximum=64 * 1048576,
    )
    max_header_bytes: int = setting(
        "Header bytes kept for DKIM at most (Postfix's header_size_limit is 102400); a "
        "longer header block is not verified (`permerror`).",
        262144,
        minimum=4096,
        maximum=16 * 1048576,
    )


_AUTHSERV_ID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})\Z")


@dataclass(frozen=True)
class AuthenticationResultsSettings:
    add: bool = setting(
        "Add an Authentication-Results header (RFC 8601) with the SPF, DKIM and DMARC results "
        "to every accepted message (the checks are then made for every message), and delete "
        "every incoming one that names our authserv-id.",
        False,
    )
    authserv_id: str = setting(
        "The authserv-id the header names; empty: Postfix's `$myhostname` (the `{j}` macro).",
        "",
    )

    def check(self) -> None:
        if self.authserv_id and not _AUTHSERV_ID_RE.match(self.authserv_id):
            raise FieldError("authserv_id", "expected a host name such as mx.example.com")


@dataclass(frozen=True)
class Replies:
    reject: str = setting(
        "Text after `550 5.7.1`: `{reasons}` (what scored, by description), `{id}`, "
        "`{score}`, `{client}`.",
        "Message refused: {reasons} (id {id})",
    )
    tempfail: str = setting(
        "Text after `451 4.7.1`, same fields.", "Try again later: {reasons} (id {id})"
    )
    unusable: str = setting(
        "Text after `451 4.7.1` for mail deferred by a list with `on_unusable: tempfail`: "
        "`{lists}` (the `display` names of the lists that could not be asked), `{id}`, "
        "`{client}`.",
        "Cannot check your address against {lists} right now, please try again later (id {id})",
    )

    def check(self) -> None:
        for key in ("reject", "tempfail"):
            _check_template(getattr(self, key), key, {"reasons", "id", "score", "client"})
        _check_template(self.unusable, "unusable", {"lists", "id", "client"})


# A reply line may be 980 characters (smfi_setreply); spamgate keeps replies to 400 and the
# template's own text to 300, so the reasons always have room.
MAX_TEMPLATE = 300


def _check_template(template: str, key: str, known: set[str]) -> None:
    if len(template) > MAX_TEMPLATE:
        raise FieldError(key, f"longer than {MAX_TEMPLATE} characters")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise FieldError(key, f"bad template: {error}") from None
    for name in fields:
        if name not in known:
            raise FieldError(key, f"unknown field {{{name}}}: use {', '.join(sorted(known))}")


@dataclass(frozen=True)
class GreylistSettings:
    min_delay: float = setting(
        "Seconds after a triplet's first attempt before a retry passes; an earlier retry is told "
        "to wait for the rest.",
        300,
        minimum=1,
        maximum=DAY,
    )
    retry_window: float = setting(
        "Seconds after the first attempt within which the retry must come; a later one starts "
        "over.",
        4 * 3600,
        minimum=2,
        maximum=7 * DAY,
    )
    pass_ttl: float = setting(
        "Seconds a triplet that passed is remembered (renewed by each message), so it is never "
        "delayed again.",
        36 * DAY,
        minimum=60,
        maximum=400 * DAY,
    )
    auto_allow_passes: int = setting(
        "Passed retries from one client network that exempt the network from greylisting for "
        "`auto_allow_ttl`; 0 never does.",
        5,
        minimum=0,
        maximum=10000,
    )
    auto_allow_ttl: float = setting(
        "Seconds a client network stays exempt after `auto_allow_passes`.",
        7 * DAY,
        minimum=60,
        maximum=400 * DAY,
    )
    ipv4_prefix: int = setting(
        "IPv4 clients in one network of this prefix length count as one client, so a pool of "
        "outbound servers can retry from another address.",
        24,
        minimum=8,
        maximum=32,
    )
    ipv6_prefix: int = setting("The same for IPv6 clients.", 64, minimum=16, maximum=128)
    reply: str = setting(
        "Text after `451 4.7.1` for a triplet that must retry: `{retry}` (seconds until a retry "
        "passes), `{id}`, `{reasons}`, `{score}`, `{client}`.",
        "Greylisted: please try again in {retry} seconds (id {id})",
    )

    def check(self) -> None:
        if self.retry_window <= self.min_delay:
            raise FieldError("retry_window", "must be longer than min_delay")
        _check_template(self.reply, "reply", {"retry", "reasons", "id", "score", "client"})


@dataclass(frozen=True)
class RecipientPolicy:
    name: str = setting("Shown as `policy_group=` in the decision log.")
    recipients: tuple[str, ...] = setting(
        "Recipients it applies to: `user@example.com`, `@example.com`, `@*.example.com`, "
        "`user@`, or `file:/path`.",
        names_files=NamesFiles.ENTRIES,
    )
    mode: Mode | None = setting("Overrides `mode` for these recipients.", None)
    thresholds: Thresholds | None = setting("Overrides `thresholds` (all of them).", None)
    scores: dict[str, float] = setting(
        "Score overrides by hit name, e.g. `{SPAMHAUS_PBL: 2, HELO_BARE_IP: 0}`.", factory=dict
    )
    recipient_set: AddressPatterns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = _parse_entries(self.recipients, AddressPatterns.parse, "recipients")
        object.__setattr__(self, "recipient_set", parsed)

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise FieldError("name", f"{self.name!r}: use letters, digits, _ . - (max 64)")
        if not self.recipients:
            raise FieldError("recipients", "name at least one recipient pattern")


@dataclass(frozen=True)
class Policy:
    listen: ListenAddress = setting(
        "Milter socket: `inet:PORT@HOST`, `inet6:PORT@HOST` or `unix:/path`.",
        ListenAddress("inet", host="127.0.0.1", port=8894),
        shown_default="`inet:8894@127.0.0.1`",
    )
    socket_mode: SocketMode = setting(
        "Permissions of a unix socket; other users get none (the last digit must be 0).",
        SocketMode(0o660),
        shown_default="`0660`",
    )
    mode: Mode = setting(
        "`observe` scores and logs everything but accepts all mail (headers still added).",
        Mode.ENFORCE,
    )
    on_error: OnError = setting(
        "What an internal error does to the mail at hand: `accept` it or `tempfail` it (451).",
        OnError.ACCEPT,
    )
    shutdown_grace: float = setting(
        "Seconds a stopping daemon lets sessions in progress finish (it accepts no new ones).",
        10,
        minimum=0,
        maximum=600,
    )
    log: LogSettings = setting("Logging.", factory=LogSettings)
    metrics: MetricsSettings = setting("The Prometheus endpoint.", factory=MetricsSettings)
    resolver: ResolverSettings = setting("DNS for list lookups.", factory=ResolverSettings)
    health: HealthSettings = setting(
        "Probes and circuit breaker that suspend a DNS list gone bad.", factory=HealthSettings
    )
    trusted_networks: tuple[IPNetwork, ...] = setting(
        "Clients in these networks are never looked up in DNS lists.",
        DEFAULT_TRUSTED,
        shown_default="loopback, RFC 1918, CGNAT, link-local, ULA",
    )
    skip_authenticated: bool = setting(
        "Clients that authenticated to Postfix (`{auth_authen}`) are not scored on DNS lists.",
        True,
    )
    our_names: tuple[str, ...] = setting(
        "Host names that are ours (for `helo: ours`), besides Postfix's `$myhostname`.", ()
    )
    our_addresses: tuple[IPNetwork, ...] = setting(
        "Addresses that are ours (for `helo: ours`), besides the one the client connected to.",
        (),
    )
    relays: Relays = setting(
        "Our own hosts that pass mail to this one (backup MX, gateway, filtering relay): "
        "their Received fields are trusted, and the `received.external.*` facts describe the "
        "hop before them. DNS lists still look up the connecting client.",
        factory=Relays,
    )
    thresholds: Thresholds = setting("Scores that choose the action.", factory=Thresholds)
    add_headers: AddHeaders = setting(
        "`always` adds X-Spam-Score/X-Spam-Status to all accepted mail; `tagged` only from "
        "the tag threshold.",
        AddHeaders.ALWAYS,
    )
    exempt_recipients: tuple[str, ...] = setting(
        "Recipients never refused (accepted and tagged instead): a local part in any domain, "
        "or a full address.",
        ("postmaster", "abuse"),
    )
    replies: Replies = setting("Reply texts.", factory=Replies)
    greylist: GreylistSettings = setting(
        "Greylisting for `thresholds.greylist` and rules with `action: greylist`.",
        factory=GreylistSettings,
    )
    state: StateSettings = setting(
        "What spamgate remembers between connections (greylisting, recent rejects).",
        factory=StateSettings,
    )
    reverse_dns: ReverseDnsSettings = setting(
        "Reverse DNS of the client.", factory=ReverseDnsSettings
    )
    dkim: DkimSettings = setting(
        "DKIM verification, made at end of message when a `dkim:` or `dmarc:` rule (or "
        "`authentication_results.add`) needs it.",
        factory=DkimSettings,
    )
    authentication_results: AuthenticationResultsSettings = setting(
        "The Authentication-Results header.", factory=AuthenticationResultsSettings
    )
    ip_lists: tuple[IpList, ...] = setting("DNS block and allow lists keyed by client IP.", ())
    domain_lists: tuple[DomainList, ...] = setting(
        "DNS lists keyed by domain (RHSBL, e.g. Spamhaus DBL).", ()
    )
    rules: tuple[Rule, ...] = setting("Rules on HELO, reverse DNS, envelope and headers.", ())
    allow: AllowList = setting(
        "Clients, names and addresses whose mail is accepted without scoring (still logged).",
        factory=AllowList,
    )
    deny: DenyList = setting(
        "Clients, names and addresses whose mail is refused with `deny.reply`.",
        factory=DenyList,
    )
    recipient_policies: tuple[RecipientPolicy, ...] = setting(
        "Thresholds, mode and scores for some recipients; the first whose `recipients` match "
        "applies.",
        (),
    )
    split_recipient_policies: bool = setting(
        "Answer `452 4.5.3` to a recipient whose policy differs from the first recipient's, so "
        "the client sends it in a transaction of its own and each message is judged by one "
        "policy. Off: the mildest policy of a message's recipients decides.",
        True,
    )
    # Set by build_policy: identifies the policy in decision logs.
    digest: str = field(init=False, default="", compare=False)

    def check(self) -> None:
        self._check_unique_names()
        self._check_references()
        for i, entry in enumerate(self.exempt_recipients):
            if not re.fullmatch(r"[^@\s<>]+(@[^@\s<>]+)?", entry):
                raise FieldError(
                    ("exempt_recipients", i), f"{entry!r} is not a local part or address"
                )
        seen: set[str] = set()
        for i, group in enumerate(self.recipient_policies):
            if group.name in seen or group.name == "default":
                raise FieldError(("recipient_policies", i, "name"), f"{group.name!r} is taken")
            seen.add(group.name)

    def _check_unique_names(self) -> None:
        """Every name that can appear in a log line must mean one thing."""
        names: dict[str, tuple[str | int, ...]] = {}
        candidates: list[tuple[str, tuple[str | int, ...]]] = []
        for key in ("ip_lists", "domain_lists"):
            for i, dns_list in enumerate(getattr(self, key)):
                candidates.append((dns_list.name, (key, i, "name")))
                shared = False  # one hit of a list may carry the list's own name
                for j, hit in enumerate(dns_list.hits):
                    if hit.name == dns_list.name and not shared:
                        shared = True
                        continue
                    candidates.append((hit.name, (key, i, "hits", j, "name")))
        candidates += [(rule.name, ("rules", i, "name")) for i, rule in enumerate(self.rules)]
        for name, where in candidates:
            if name in names:
                first = _render_path(names[name])
                raise FieldError(where, f"name {name} is already used at {first}")
            names[name] = where

    def _check_references(self) -> None:
        defined = {
            hit.name
            for dns_list in (*self.ip_lists, *self.domain_lists)
            for hit in dns_list.scored_hits
        }
        for i, rule in enumerate(self.rules):
            if rule.composite is not None:
                for name in rule.composite.names:
                    if name not in defined:
                        raise FieldError(
                            ("rules", i, "composite"),
                            f"{name} is not a list hit or a rule defined before this one",
                        )
            defined.add(rule.name)
        for i, group in enumerate(self.recipient_policies):
            for name in group.scores:
                if name not in defined:
                    raise FieldError(
                        ("recipient_policies", i, "scores", name), f"no hit is named {name}"
                    )

    @property
    def uses_greylist(self) -> bool:
        """Whether any threshold or rule can greylist."""
        thresholds = [self.thresholds, *(g.thresholds for g in self.recipient_policies)]
        return any(t is not None and t.greylists for t in thresholds) or any(
            rule.action is RuleAction.GREYLIST for rule in self.rules
        )

    @property
    def uses_state(self) -> bool:
        """Whether the state store is needed at all."""
        return self.uses_greylist or self.state.remember_rejects > 0

    @property
    def dns_lists(self) -> tuple[DnsList, ...]:
        return (*self.ip_lists, *self.domain_lists)

    @property
    def access_keys(self) -> tuple[str, ...]:
        """Every DNS list access key in the policy, for logs to mask."""
        return tuple(sorted({lst.access_key for lst in self.dns_lists if lst.access_key}))

    @property
    def included_files(self) -> tuple[str, ...]:
        """The `file:` entries, whose files' contents are part of the policy."""
        entries = [*self.allow.entries, *self.deny.entries]
        for group in self.recipient_policies:
            entries += group.recipients
        return tuple(e for e in entries if e.startswith(FILE_PREFIX))


def _render_path(parts: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def build_policy(sources: Sources) -> Policy:
    """The Policy `sources` describe, or ConfigError naming file, line and key (step 2).

    Reads nothing: a `file:` list or key file is looked up among the files read with the
    policy, and one that is not there is a located error.
    """
    with building_with(sources.files):
        policy = schema.build(Policy, sources.document)
    object.__setattr__(policy, "digest", policy_digest(policy, sources))
    return policy


def policy_digest(policy: Policy, sources: Sources) -> str:
    """12 hex digits that name the policy in logs: over the policy file, the `file:` lists
    and the access keys, as they were read for the build."""
    digest = hashlib.sha256(sources.content)
    for entry in policy.included_files:
        content = sources.files.contents.get(sources.files.list_path(entry), b"")
        # Name and length first: moving a line from one list to another changes it.
        digest.update(f"\0{entry}\0{len(content)}\0".encode())
        digest.update(content)
    for dns_list in policy.dns_lists:
        if dns_list.key_path is not None:
            # A new key is a new policy. 48 bits of a hash over the policy and a 26-letter
            # random key tell nothing about the key.
            digest.update(f"\0{dns_list.key_path}\0{dns_list.access_key}\0".encode())
    return digest.hexdigest()[:12]
