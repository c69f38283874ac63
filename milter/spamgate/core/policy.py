"""The policy: its top-level keys and small sections, as frozen dataclasses, and the build
that makes a Policy from the bytes read for it (step 2 of three, see sources.py).

`build_policy` (through config.load_policy) is the only way a Policy comes into being, so
everything downstream can trust it: thresholds are ordered, names are unique, regexes compile,
zones are valid DNS names. Pure: nothing here opens, reads or looks at a file; the files a
policy names are looked up in the Sources it is built from. The larger sections have modules
of their own: DNS lists in listspecs.py, rules in rulespecs.py, allow and deny lists in
matchlists.py, hit names, modes and thresholds in scoring.py, and the daemon's own settings
(listen, log, resolver, health, state) in settings.py.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from spamgate.core import schema
from spamgate.core.addresses import normalize_network
from spamgate.core.listspecs import DnsList, DomainList, IpList
from spamgate.core.matchlists import AddressPatterns, AllowList, DenyList, parse_entries
from spamgate.core.patterns import Pattern
from spamgate.core.replies import check_template
from spamgate.core.rulespecs import Rule, RuleAction
from spamgate.core.schema import FieldError, NamesFiles, setting
from spamgate.core.scoring import Mode, Thresholds
from spamgate.core.settings import (
    DAY,
    HealthSettings,
    ListenAddress,
    LogSettings,
    MetricsSettings,
    ResolverSettings,
    SchedulingSettings,
    SocketMode,
    StateSettings,
)
from spamgate.core.sources import FILE_PREFIX, Sources, building_with

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OnError(enum.Enum):
    ACCEPT = "accept"
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
class Relays:
    names: tuple[str, ...] = setting(
        "Host names of our relays, as they write them after `by` in Received fields.", ()
    )
    addresses: tuple[IPNetwork, ...] = setting("Addresses of our relays (CIDR).", ())


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
            check_template(getattr(self, key), key, {"reasons", "id", "score", "client"})
        check_template(self.unusable, "unusable", {"lists", "id", "client"})


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
        check_template(self.reply, "reply", {"retry", "reasons", "id", "score", "client"})


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
        parsed = parse_entries(self.recipients, AddressPatterns.parse, "recipients")
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
    scheduling: SchedulingSettings = setting(
        "How the kernel schedules spamgate's threads; read at start only.",
        factory=SchedulingSettings,
    )
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
