"""The policy file: every key, its type, default, bounds and doc, as frozen dataclasses.

`load_policy` is the only way a Policy comes into being, so everything downstream can trust it:
thresholds are ordered, names are unique, regexes compile, zones are valid DNS names.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import os
import re
import string
import typing
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spamgate import schema
from spamgate.accesskeys import (
    KEY_LABEL,
    fill_key,
    has_key_label,
    inline_access_key,
    mask_access_key,
    read_access_key,
)
from spamgate.matchlists import (
    FILE_PREFIX,
    AddressPatterns,
    EntryError,
    NamePatterns,
    NetworkSet,
    UnreadableFileError,
    include_base,
    include_path,
    read_regular_file,
    reading_includes,
)
from spamgate.patterns import Pattern, RawPattern
from spamgate.returncodes import ReturnCode
from spamgate.schema import ConfigError, FieldError, setting

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


class Breaker(enum.Enum):
    """What a list's hit ratio over `health.max_hit_ratio` does (listhealth.ListMonitor)."""

    PROBE = "probe"  # probe the list now: only a failing probe suspends it
    SUSPEND = "suspend"  # suspend it on the ratio alone
    OFF = "off"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# sockaddr_un's sun_path holds 108 bytes on Linux, the last for the NUL (unix(7)).
UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class ListenAddress:
    """Where the milter listens, in libmilter's notation."""

    family: str
    host: str = ""
    port: int = 0
    path: str = ""

    type_name = "socket"

    @classmethod
    def from_config(cls, value: object) -> ListenAddress:
        if not isinstance(value, str):
            raise ValueError(
                f"expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got {value!r}"
            )
        family, _, rest = value.partition(":")
        if family in ("unix", "local"):
            if not rest.startswith("/"):
                raise ValueError(f"unix socket path must be absolute, got {rest!r}")
            size = len(rest.encode("utf-8", "surrogateescape"))
            if size > UNIX_PATH_MAX:
                # sockaddr_un's sun_path (unix(7)): a longer path fails only at bind time.
                raise ValueError(
                    f"a unix socket path is at most {UNIX_PATH_MAX} bytes, this one has {size}"
                )
            return cls("unix", path=rest)
        if family not in ("inet", "inet6"):
            raise ValueError(f"unknown socket family {family!r}: use inet, inet6 or unix")
        port_text, at, host = rest.partition("@")
        if not at or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
            raise ValueError(f"expected {family}:PORT@HOST with a port 1-65535, got {value!r}")
        host = host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"listen host must be an IP address, got {host!r}") from None
        if (family == "inet6") != (address.version == 6):
            raise ValueError(f"{family} needs an IPv{6 if family == 'inet6' else 4} address")
        return cls(family, host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.family == "inet6" else self.host
        return f"{self.family}:{self.port}@{host}"


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to send list queries to."""

    host: str
    port: int = 53

    type_name = "host[:port]"

    @classmethod
    def from_config(cls, value: object) -> Nameserver:
        if not isinstance(value, str):
            raise ValueError(f"expected an address such as 127.0.0.1:53, got {value!r}")
        host, port = value, 53
        if value.startswith("["):
            host, _, tail = value[1:].partition("]")
            if tail:
                if not tail.startswith(":"):
                    raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
                port = _port(tail[1:], value)
        elif value.count(":") == 1:
            host, _, port_text = value.partition(":")
            port = _port(port_text, value)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"nameserver must be an IP address, got {host!r}") from None
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, whole: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


@dataclass(frozen=True)
class SocketMode:
    """File permissions for a unix socket, always read as octal, as chmod(1) reads them."""

    bits: int

    type_name = "octal mode"
    from_text = True  # the schema passes the scalar as written: 660, 0660 and '0660' agree

    @classmethod
    def from_config(cls, value: object) -> SocketMode:
        text = str(value)
        if not re.fullmatch(r"(0o|0)?[0-7]{3}", text):
            raise ValueError(f"expected an octal mode such as 0660, got {text!r}")
        bits = int(text[-3:], 8)
        # Whoever may connect to the milter socket can feed spamgate fake SMTP sessions and
        # read its verdicts; only the MTA should (its group, e.g. postfix, with 0660).
        if bits & 0o007:
            raise ValueError(
                f"{text} gives other users access to the milter socket: the last digit must "
                "be 0 (e.g. 0660, for the MTA's group)"
            )
        return cls(bits)

    def __str__(self) -> str:
        return f"{self.bits:04o}"


def _parse_network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 10.0.0.0/8, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"invalid network {value!r}: {error}") from None


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
class MetricsSettings:
    listen: str = setting(
        "`HOST:PORT` (`[::1]:9464` for IPv6) of the Prometheus endpoint, /metrics; empty: no "
        "endpoint. Keep it on loopback.",
        "",
    )

    def check(self) -> None:
        if self.listen:
            try:
                self.address()
            except ValueError as error:
                raise FieldError("listen", str(error)) from None

    def address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {self.listen!r}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"metrics host must be an IP address, got {host!r}") from None
        return host, int(port)


@dataclass(frozen=True)
class LogSettings:
    target: str = setting("`stderr` (journald picks it up), `syslog`, or a file path.", "stderr")
    level: LogLevel = setting("Least severe level written.", LogLevel.INFO)
    stats_interval: int = setting(
        "Seconds between `stats` lines (per-list answer counts, resolver counters); 0 logs "
        "them only at shutdown.",
        3600,
        minimum=0,
        maximum=86400,
    )


@dataclass(frozen=True)
class ResolverSettings:
    nameservers: tuple[Nameserver, ...] = setting(
        "DNS servers for list queries, as `IP` or `IP:PORT`; empty uses /etc/resolv.conf. Use a "
        "local caching resolver: DNSBLs refuse big public resolvers.",
        (),
    )
    query_timeout: float = setting(
        "Seconds to wait for one server's answer before retrying.", 1.0, minimum=0.01, maximum=30
    )
    deadline: float = setting(
        "Seconds a verdict waits for a lookup at most, counted from when its name became "
        "known (the client address at connect); lists still unanswered then count as "
        "unusable, never as hits.",
        2.0,
        minimum=0.01,
        maximum=60,
    )
    cache_min_ttl: int = setting(
        "Answers are cached at least this many seconds.", 30, minimum=0, maximum=86400
    )
    cache_max_ttl: int = setting(
        "Answers are cached at most this many seconds, whatever their TTL.",
        3600,
        minimum=0,
        maximum=604800,
    )
    cache_entries: int = setting(
        "Most answers kept in the cache; the oldest go first.", 100000, minimum=0, maximum=10**7
    )

    def check(self) -> None:
        if self.cache_min_ttl > self.cache_max_ttl:
            raise FieldError("cache_min_ttl", "must not exceed cache_max_ttl")


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
class ProbeSettings:
    enabled: bool = setting(
        "Probe this list (RFC 5782 test entries; an IP list asked about both families is "
        "probed on IPv4 and IPv6 apart, and only the family that fails is suspended) and "
        "suspend it while it fails; turn off for a list that does not follow the RFC.",
        True,
    )
    listed: str = setting(
        "Test entry the list must list: an address for IP lists (an IPv4 address is asked "
        "on IPv6 too, as `::ffff:a.b.c.d`, the form of RFC 5782's IPv6 test points; an IPv6 "
        "one on IPv6 only), a name for domain lists.",
        "",
        shown_default="127.0.0.2 (on IPv6 ::ffff:7f00:2; `test` for domain lists)",
    )
    unlisted: str = setting(
        "Test entry the list must not list.",
        "",
        shown_default="127.0.0.1 (::ffff:7f00:1, `invalid`)",
    )


# The circuit breaker keeps at most this many distinct clients (client networks, or names for
# a domain list) per list, the least recently seen going first: its memory stays bounded
# however many clients a flood brings (about 200 bytes each, 400 KB a list at most).
BREAKER_MAX_CLIENTS = 2048


@dataclass(frozen=True)
class HealthSettings:
    probe_interval: float = setting(
        "Seconds between probes of a healthy list.", 600, minimum=10, maximum=86400
    )
    retry_min: float = setting(
        "Seconds before a suspended list is probed again; doubles each time it still fails.",
        60,
        minimum=1,
        maximum=86400,
    )
    retry_max: float = setting(
        "Longest wait between probes of a suspended list.", 3600, minimum=1, maximum=86400
    )
    breaker: Breaker = setting(
        "What a hit ratio over `max_hit_ratio` does: `probe` the list at once and suspend it "
        "only if its probes fail (it lists its must-not-list test entry: a flood of listed "
        "clients is not a list gone bad), at most once a `window`; `suspend` it on the ratio "
        "alone (for a list with probes off that you would rather lose than let refuse the "
        "world); `off`: nothing.",
        Breaker.PROBE,
    )
    max_hit_ratio: float = setting(
        "The circuit breaker goes off (see `breaker`) when a list lists more than this share "
        "of the distinct clients it was asked about over `window` (a dead list that lists the "
        "whole internet must not reject the world).",
        0.9,
        minimum=0.01,
        maximum=1,
    )
    window: float = setting(
        "Seconds over which the hit ratio is measured; a client seen again in the window "
        f"counts once, and at most the last {BREAKER_MAX_CLIENTS} distinct clients of a list "
        "are kept.",
        600,
        minimum=10,
        maximum=86400,
    )
    max_failures: int = setting(
        "Suspend a list after this many unusable answers in a row, and stop waiting for it in "
        "sessions already waiting (a silent list must not make every session wait out the DNS "
        "deadline); probed again 10 s later; 0: never.",
        50,
        minimum=0,
        maximum=1000000,
    )
    min_checks: int = setting(
        "Distinct clients needed in the window before the hit ratio is judged: client "
        "networks (a /24 for IPv4, a /64 for IPv6) for IP lists, names asked for domain lists.",
        100,
        minimum=1,
        maximum=BREAKER_MAX_CLIENTS,
    )
    status_file: str = setting(
        "Where the daemon writes list health for `spamgate lists` (every 10 s); empty: nowhere.",
        "/run/spamgate/status.json",
    )

    def check(self) -> None:
        if self.retry_min > self.retry_max:
            raise FieldError("retry_min", "must not exceed retry_max")
        status = self.status_file
        if status and (status.endswith("/") or os.path.isdir(status)):
            # Written every 10 s as a file: a directory fails at run time, every time.
            raise FieldError("status_file", f"{status!r} is a directory, not a file name")


@dataclass(frozen=True)
class ListHealthSettings:
    """One list's own circuit breaker settings; a key left out (null) takes the global one."""

    breaker: Breaker | None = setting(
        "Overrides `health.breaker` for this list.", None, shown_default="`health.breaker`"
    )
    max_hit_ratio: float | None = setting(
        "Overrides `health.max_hit_ratio` for this list.",
        None,
        minimum=0.01,
        maximum=1,
        shown_default="`health.max_hit_ratio`",
    )
    min_checks: int | None = setting(
        "Overrides `health.min_checks` for this list.",
        None,
        minimum=1,
        maximum=BREAKER_MAX_CLIENTS,
        shown_default="`health.min_checks`",
    )
    window: float | None = setting(
        "Overrides `health.window` for this list.",
        None,
        minimum=10,
        maximum=86400,
        shown_default="`health.window`",
    )

    def applied_to(self, health: HealthSettings) -> HealthSettings:
        """The global settings with this list's own in their place."""
        own = {
            key: value
            for key in ("breaker", "max_hit_ratio", "min_checks", "window")
            if (value := getattr(self, key)) is not None
        }
        return dataclasses.replace(health, **own) if own else health


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
            key_path = include_base.get() / self.key_file
            key = read_access_key(key_path)
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
        "recipient_matches",
        "recipients_over",
        "header",
        "date_ahead_hours",
        "date_behind_days",
        "from_domain",
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
class MatchList:
    clients: tuple[str, ...] = setting("Client networks (CIDR).", ())
    client_names: tuple[str, ...] = setting(
        "Client host names (Postfix's verified name, or spamgate's confirmed reverse DNS): "
        "`mail.example.com`, `*.example.com`.",
        (),
    )
    helo_names: tuple[str, ...] = setting("HELO names, same patterns.", ())
    senders: tuple[str, ...] = setting(
        "Envelope senders: `user@example.com`, `@example.com`, `@*.example.com`, `user@`, `<>`.",
        (),
    )
    recipients: tuple[str, ...] = setting("Envelope recipients, same patterns.", ())
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


DAY = 86400
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StateSettings:
    store: str = setting(
        "Where greylist triplets and recently rejected clients are remembered: a file path "
        "(SQLite in WAL mode, made on first use) or `redis://[:PASSWORD@]HOST:PORT/DB` (also "
        "`rediss://`, `unix://`), shared by every MX host of a domain.",
        "/var/lib/spamgate/state.sqlite",
    )
    timeout: float = setting(
        "Seconds one read or one write of the store may take at most (a greylist check makes "
        "one of each at most); a store that is down or slower fails open (mail accepted, "
        "logged, counted).",
        0.5,
        minimum=0.01,
        maximum=5,
    )
    remember_rejects: float = setting(
        "Seconds a client refused at RCPT for its IP list listings alone is remembered, so "
        "its next connections are refused at once, without DNS queries; 0: never.",
        0,
        minimum=0,
        maximum=DAY,
    )

    def check(self) -> None:
        if self.uses_redis:
            try:
                self.redis_url_parts()
            except ValueError as error:
                raise FieldError("store", str(error)) from None
        elif not self.store.startswith("/"):
            raise FieldError(
                "store", f"expected an absolute file path or a redis:// URL, got {self.store!r}"
            )

    @property
    def uses_redis(self) -> bool:
        return self.store.startswith(REDIS_SCHEMES)

    def redis_url_parts(self) -> urllib.parse.SplitResult:
        parts = urllib.parse.urlsplit(self.store)
        if parts.scheme != "unix":
            _ = parts.port  # raises ValueError for a port that is not a number
            if not parts.hostname:
                raise ValueError(f"{self.store_shown!r} names no host")
        elif not parts.path:
            raise ValueError(f"{self.store_shown!r} names no socket path")
        return parts

    @property
    def store_shown(self) -> str:
        """The store's location without a Redis password, for logs and error messages."""
        if not self.uses_redis:
            return self.store
        parts = urllib.parse.urlsplit(self.store)
        if parts.password is None:
            return self.store
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
        "`user@`, or `file:/path`."
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
    ip_lists: tuple[IpList, ...] = setting("DNS block and allow lists keyed by client IP.", ())
    domain_lists: tuple[DomainList, ...] = setting(
        "DNS lists keyed by domain (RHSBL, e.g. Spamhaus DBL).", ()
    )
    rules: tuple[Rule, ...] = setting("Rules on HELO, reverse DNS, envelope and headers.", ())
    allow: MatchList = setting(
        "Clients, names and addresses whose mail is accepted without scoring (still logged).",
        factory=MatchList,
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
    # Set by load_policy: identifies the policy in decision logs.
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


# The policy file is read whole and parsed by PyYAML's pure-Python parser, at about 0.3 MB/s
# with the checks: 1 MiB loads in a few seconds, and is some 70 times the shipped policy. Long
# lists belong in `file:` lists (matchlists.MAX_FILE_BYTES), which are faster to read.
MAX_POLICY_BYTES = 1024 * 1024


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise ConfigError naming file, line and key.

    ConfigError is the only exception: every file is read only if it is a regular file within
    its size limit, and the schema reports whatever else goes wrong at the value it was reading.
    """
    source = str(path)
    try:
        raw = read_regular_file(Path(path), MAX_POLICY_BYTES)
    except UnreadableFileError as problem:
        if problem.too_large:
            message = (
                f"{problem.reason}, the limit for a policy file (put long lists in file: lists)"
            )
        else:
            message = f"cannot read: {problem.reason}"
        raise ConfigError(source, 0, 0, "", message) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        # Where an editor shows it: the line, and the column in characters before the byte.
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = raw.count(b"\n", 0, error.start) + 1
        column = len(raw[line_start : error.start].decode("utf-8", errors="replace")) + 1
        message = f"not UTF-8 (byte {error.start})"
        raise ConfigError(source, line, column, "", message) from None
    digest = hashlib.sha256(raw)
    with reading_includes(Path(path).parent) as included:
        policy = schema.load(Policy, text, source)
        for entry in policy.included_files:
            # The bytes the parser read, not the file as it is now: the digest names what
            # decides.
            content = included.contents.get(include_path(entry), b"")
            # Name and length first: moving a line from one list to another changes it.
            digest.update(f"\0{entry}\0{len(content)}\0".encode())
            digest.update(content)
    for dns_list in policy.dns_lists:
        if dns_list.key_path is not None:
            # A new key is a new policy. 48 bits of a hash over the policy and a 26-letter
            # random key tell nothing about the key.
            digest.update(f"\0{dns_list.key_path}\0{dns_list.access_key}\0".encode())
    object.__setattr__(policy, "digest", digest.hexdigest()[:12])
    return policy
