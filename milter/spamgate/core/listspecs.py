"""DNS lists as the policy declares them: lists keyed by client IP (DNSBL) and by domain
(RHSBL), the named hits their answers stand for, and the zones they are queried under.

Pure, like all of the policy's types: an access key named by `key_file` is looked up among
the files read with the policy (sources.py). What an answer means at run time is
dns/dnslists.py's; how a list's health is watched, dns/listhealth.py's.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from spamgate.core.accesskeys import (
    KEY_LABEL,
    fill_key,
    has_key_label,
    inline_access_key,
    mask_access_key,
    parse_access_key,
)
from spamgate.core.returncodes import ReturnCode
from spamgate.core.schema import FieldError, NamesFiles, setting
from spamgate.core.scoring import Mode, check_hit_name
from spamgate.core.settings import ListHealthSettings, ProbeSettings
from spamgate.core.sources import named_files

_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class OnUnusable(enum.Enum):
    """What a list's unusable answer does to mail it could have changed (engine.Engine)."""

    JUDGE = "judge"
    TEMPFAIL = "tempfail"


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
        check_hit_name(self.name, "name")


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
        check_hit_name(self.name, "name")
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
