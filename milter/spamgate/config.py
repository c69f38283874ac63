"""The policy file: every key, its type, default, bounds and doc, as frozen dataclasses.

`load_policy` is the only way a Policy comes into being, so everything downstream can trust it:
thresholds are ordered, names are unique, regexes compile, zones are valid DNS names.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from spamgate import schema
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


class AddHeaders(enum.Enum):
    ALWAYS = "always"
    TAGGED = "tagged"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


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
        return cls(int(text[-3:], 8))

    def __str__(self) -> str:
        return f"{self.bits:04o}"


def _parse_network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 10.0.0.0/8, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"invalid network {value!r}: {error}") from None


_parse_network.type_name = "CIDR"  # type: ignore[attr-defined]  # read by the reference
schema.UNION_PARSERS[IPNetwork] = _parse_network


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
        "Seconds after connect that a verdict waits for list answers at most; lists still "
        "unanswered then count as unusable, never as hits.",
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
    tempfail: float | None = setting(
        "Score from which mail gets `451 4.7.1`; null disables the tempfail band.", 6.0
    )
    reject: float | None = setting(
        "Score from which mail gets `550 5.7.1`; null never rejects.", 10.0
    )

    def check(self) -> None:
        named = (("tag", self.tag), ("tempfail", self.tempfail), ("reject", self.reject))
        ordered = [(key, value) for key, value in named if value is not None]
        for (low_key, low), (high_key, high) in itertools.pairwise(ordered):
            if low > high:
                raise FieldError(high_key, f"must not be below {low_key} ({low:g})")


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
class IpList:
    name: str = setting(
        "List name, e.g. `SPAMHAUS_ZEN`; an unusable answer is logged as `<name>_FAIL`."
    )
    zone: str = setting(
        "DNS zone queried, e.g. `zen.spamhaus.org`. May hold an access key: it never appears "
        "in replies."
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
    ipv4: bool = setting("Query this list for IPv4 clients.", True)
    ipv6: bool = setting("Query this list for IPv6 clients (nibble format).", True)
    # Filled in by __post_init__: the hits to score, whichever form the file used.
    scored_hits: tuple[ListHit, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hits = self.hits
        if self.score is not None:
            hits = (ListHit(name=self.name, score=self.score),)
        object.__setattr__(self, "scored_hits", hits)
        if not self.display:
            object.__setattr__(self, "display", self.name)

    def check(self) -> None:
        _check_hit_name(self.name, "name")
        check_zone(self.zone)
        if (self.score is None) == (not self.hits):
            raise FieldError("hits", "give either `score` or `hits`, not both or neither")
        if not (self.ipv4 or self.ipv6):
            raise FieldError("ipv6", "a list must be queried for IPv4, IPv6 or both")

    def description_of(self, hit: ListHit) -> str:
        return hit.description or f"listed by {self.display}"


def check_zone(zone: str) -> None:
    labels = zone.rstrip(".").split(".")
    # A reversed IPv6 address takes 64 bytes of the 255-byte name limit.
    if len(zone) > 180 or len(labels) < 2 or not all(_LABEL_RE.match(x) for x in labels):
        raise FieldError("zone", f"{zone!r} is not a valid DNS zone name")


@dataclass(frozen=True)
class HeaderCondition:
    name: str = setting("Header field name, case-insensitive, e.g. `Subject`.")
    matches: re.Pattern[str] | None = setting(
        "Python regular expression searched in the header's value.", None
    )
    missing: bool = setting("Fire when the message has no such header.", False)

    def check(self) -> None:
        if not re.fullmatch(r"[!-9;-~]+", self.name):
            raise FieldError("name", f"{self.name!r} is not a header field name")
        if (self.matches is None) == (not self.missing):
            raise FieldError("matches", "give either `matches` or `missing: true`")


@dataclass(frozen=True)
class Rule:
    name: str = setting("Hit name shown in logs and X-Spam-Status, e.g. `SUBJECT_PHARMA`.")
    score: float = setting("Points added when the rule fires (negative allows).")
    description: str = setting("Shown in reject texts and logs.")
    header: HeaderCondition | None = setting("A condition on a message header.", None)

    def check(self) -> None:
        _check_hit_name(self.name, "name")
        if self.header is None:
            raise FieldError("header", "a rule needs a condition")


@dataclass(frozen=True)
class Policy:
    listen: ListenAddress = setting(
        "Milter socket: `inet:PORT@HOST`, `inet6:PORT@HOST` or `unix:/path`.",
        ListenAddress("inet", host="127.0.0.1", port=8894),
        shown_default="`inet:8894@127.0.0.1`",
    )
    socket_mode: SocketMode = setting(
        "Permissions of a unix socket.", SocketMode(0o660), shown_default="`0660`"
    )
    mode: Mode = setting(
        "`observe` scores and logs everything but accepts all mail (headers still added).",
        Mode.ENFORCE,
    )
    on_error: OnError = setting(
        "What an internal error does to the mail at hand: `accept` it or `tempfail` it (451).",
        OnError.ACCEPT,
    )
    log: LogSettings = setting("Logging.", factory=LogSettings)
    resolver: ResolverSettings = setting("DNS for list lookups.", factory=ResolverSettings)
    trusted_networks: tuple[IPNetwork, ...] = setting(
        "Clients in these networks are never looked up in DNS lists.",
        DEFAULT_TRUSTED,
        shown_default="loopback, RFC 1918, CGNAT, link-local, ULA",
    )
    skip_authenticated: bool = setting(
        "Clients that authenticated to Postfix (`{auth_authen}`) are not scored on DNS lists.",
        True,
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
    ip_lists: tuple[IpList, ...] = setting("DNS block and allow lists keyed by client IP.", ())
    rules: tuple[Rule, ...] = setting("Header rules.", ())
    # Set by load_policy: identifies the policy in decision logs.
    digest: str = field(init=False, default="", compare=False)

    def check(self) -> None:
        # Every name that can appear in a log line must mean one thing.
        names: dict[str, tuple[str | int, ...]] = {}
        candidates: list[tuple[str, tuple[str | int, ...]]] = []
        for i, ip_list in enumerate(self.ip_lists):
            candidates.append((ip_list.name, ("ip_lists", i, "name")))
            shared = False  # one hit of a list may carry the list's own name
            for j, hit in enumerate(ip_list.hits):
                if hit.name == ip_list.name and not shared:
                    shared = True
                    continue
                candidates.append((hit.name, ("ip_lists", i, "hits", j, "name")))
        candidates += [(rule.name, ("rules", i, "name")) for i, rule in enumerate(self.rules)]
        for name, where in candidates:
            if name in names:
                first = _render_path(names[name])
                raise FieldError(where, f"name {name} is already used at {first}")
            names[name] = where
        for i, entry in enumerate(self.exempt_recipients):
            if not re.fullmatch(r"[^@\s<>]+(@[^@\s<>]+)?", entry):
                raise FieldError(
                    ("exempt_recipients", i), f"{entry!r} is not a local part or address"
                )


def _render_path(parts: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise ConfigError naming file, line and key."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(source, 0, 0, "", f"cannot read: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(source, 0, 0, "", f"not UTF-8 (byte {error.start})") from None
    policy = schema.load(Policy, text, source)
    object.__setattr__(policy, "digest", hashlib.sha256(raw).hexdigest()[:12])
    return policy
