"""SPF (RFC 7208): whether a domain's policy lets a client address send mail in its name.

Pure code: the evaluation asks for DNS records without doing I/O. `check_host()` returns a
generator (an `SpfEvaluation`) that yields the questions it needs
answered, a batch at a time, and receives the answers in the same order; when it is done it
returns an `SpfVerdict` (StopIteration's value). dns/spfcheck.py drives it with the resolver
under a deadline; the tests drive it with a dict. `evaluate_with()` runs one to the end with
any function that answers questions.

Why our own evaluator rather than pyspf: pyspf sends every query through one module-global
function (a per-call resolver would need global state shared by all sessions' threads), and
it is not a dependency; our resolver already has the cache, the deadline and the metrics.

The RFC's limits are enforced here (section 4.6.4): at most 10 terms that query DNS (include,
a, mx, ptr, exists, redirect) per check, include and redirect nested included; at most 2 of
their lookups void (no such name, or no records); an MX answer of more than 10 names is a
permerror; of a PTR answer only the first 10 names are checked. Recursion is bounded by the
10-term limit, so include and redirect loops end in permerror.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from spamgate.core.addresses import IPAddress
from spamgate.core.domains import is_fqdn, normalize_domain

T = TypeVar("T")

# RFC 7208 4.6.4: terms that cause DNS queries, and lookups with an empty answer, per check.
MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
# RFC 7208 4.6.4: names of an MX answer (more is a permerror) and of a PTR answer (the rest
# are ignored) whose addresses are looked up.
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10
# RFC 7208 5 and 7.3: an expanded name is cut to this length by dropping its leftmost labels.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Longer than any record a DNS answer can carry over UDP or TCP (64 KB) is not a record to
# parse: hostile input is refused before any work.
MAX_RECORD_LENGTH = 65535
# The explanation text given when a failing domain has none (RFC 7208 6.2 leaves the default
# to the implementation); callers may pass their own.
DEFAULT_EXPLANATION = "%{o} does not allow %{i} to send its mail (SPF)"


class SpfResult(enum.Enum):
    """RFC 7208 2.6."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class ReplyKind(enum.Enum):
    """What the evaluation needs to know about a DNS answer."""

    RECORDS = "records"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    # Anything else (SERVFAIL, timeout, an unreadable answer): the name's records are unknown.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """A name and one of the record types A, AAAA, MX, PTR, TXT."""

    qname: str
    rdtype: str


@dataclass(frozen=True, slots=True)
class DnsReply:
    """The records as text in the resolver's forms (answers.DnsAnswer documents them: MX
    `10 mx.example.com`, TXT the record's strings joined), or why there are none."""

    kind: ReplyKind
    records: tuple[str, ...] = ()
    detail: str = ""


NXDOMAIN = DnsReply(ReplyKind.NXDOMAIN)
NODATA = DnsReply(ReplyKind.NODATA)

Questions: TypeAlias = tuple[DnsQuestion, ...]
Replies: TypeAlias = tuple[DnsReply, ...]
# A computation that yields batches of questions, is sent their replies, and returns a T.
Asking: TypeAlias = Generator[Questions, Replies, T]


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    """The result for one identity. `domain` is the domain whose policy was checked (the
    sender's, or the HELO name's), `mechanism` the directive of that domain's record that
    matched as written (`-all`, `include:_spf.example.net`; empty when none did), and
    `explanation` the text for a fail (the domain's `exp=`, or the default). `reason` says why
    for none, permerror and temperror."""

    result: SpfResult
    domain: str
    mechanism: str = ""
    explanation: str = ""
    reason: str = ""


SpfEvaluation: TypeAlias = Asking[SpfVerdict]


@dataclass(frozen=True, slots=True)
class SmtpFacts:
    """What a check knows of the SMTP session, for macros (RFC 7208 7.2)."""

    client: IPAddress
    helo: str
    receiver: str = "unknown"  # %{r}: this MTA's name
    timestamp: int = 0  # %{t}: seconds since the epoch, when the check started


# --- errors that end a check -----------------------------------------------------------------


class SpfPermError(Exception):
    """The policy is broken (syntax, limits): the check ends in permerror."""


class SpfTempError(Exception):
    """A lookup failed: the check ends in temperror."""


# --- records -----------------------------------------------------------------------------------


class Qualifier(enum.Enum):
    PASS = "+"
    FAIL = "-"
    SOFTFAIL = "~"
    NEUTRAL = "?"

    @property
    def result(self) -> SpfResult:
        return _QUALIFIER_RESULTS[self]


_QUALIFIER_RESULTS = {
    Qualifier.PASS: SpfResult.PASS,
    Qualifier.FAIL: SpfResult.FAIL,
    Qualifier.SOFTFAIL: SpfResult.SOFTFAIL,
    Qualifier.NEUTRAL: SpfResult.NEUTRAL,
}


class Mechanism(enum.Enum):
    ALL = "all"
    INCLUDE = "include"
    A = "a"
    MX = "mx"
    PTR = "ptr"
    IP4 = "ip4"
    IP6 = "ip6"
    EXISTS = "exists"


_QUERYING = frozenset({Mechanism.INCLUDE, Mechanism.A, Mechanism.MX, Mechanism.PTR})
_QUERYING |= {Mechanism.EXISTS}


@dataclass(frozen=True, slots=True)
class Directive:
    """One mechanism with its qualifier. `domain_spec` is the macro string to expand (None:
    the current domain), `network` the ip4/ip6 network, `cidr4`/`cidr6` the prefix lengths
    the a and mx mechanisms compare with."""

    qualifier: Qualifier
    mechanism: Mechanism
    text: str
    domain_spec: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class SpfRecord:
    directives: tuple[Directive, ...]
    redirect: str | None = None
    explanation: str | None = None


_VERSION = "v=spf1"
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_DIRECTIVE = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)", re.DOTALL)
# A macro-expand (RFC 7208 7.1): %{letter digits [r] delimiters}, %%, %_ or %-.
_MACRO = re.compile(r"%(?:\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|(.))", re.DOTALL)
# The macro letters a domain-spec may use; an explanation may also use c, r, t (RFC 7208 7.1).
DOMAIN_MACROS = frozenset("slodiphv")
EXPLANATION_MACROS = DOMAIN_MACROS | frozenset("crt")
# domain-end's toplabel (RFC 7208 7.1): not all digits, and no "-" at either end.
_DOMAIN_END = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z"
)
_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_NO_LEADING_ZERO = re.compile(r"0|[1-9][0-9]*")


def is_spf_record(text: str) -> bool:
    """RFC 7208 4.5: a TXT record is an SPF record if it starts with `v=spf1` (any case)
    followed by a space or nothing."""
    return text[:6].lower() == _VERSION and (len(text) == 6 or text[6] == " ")


def parse_record(text: str) -> SpfRecord:
    """The terms of an SPF record; SpfPermError for any syntax error anywhere in it (RFC
    7208 4.6: the whole record is refused, not its bad terms only)."""
    if len(text) > MAX_RECORD_LENGTH:
        raise SpfPermError("record too long")
    if not text.isascii() or not text.isprintable():
        # RFC 7208 3.1: records are 7-bit ASCII (the resolver decodes other bytes as U+FFFD).
        raise SpfPermError("record is not printable ASCII")
    if not is_spf_record(text):
        raise SpfPermError("not an SPF record")
    directives: list[Directive] = []
    modifiers: dict[str, str] = {}
    for term in text[6:].split(" "):
        if not term:
            continue  # terms are separated by one or more spaces
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None:
            _add_modifier(modifiers, modifier.group(1).lower(), modifier.group(2))
        else:
            directives.append(parse_directive(term))
    return SpfRecord(tuple(directives), modifiers.get("redirect"), modifiers.get("exp"))


def _add_modifier(modifiers: dict[str, str], name: str, value: str) -> None:
    if name in ("redirect", "exp"):
        if name in modifiers:
            raise SpfPermError(f"{name}= given twice")  # RFC 7208 6
        check_domain_spec(value)
        modifiers[name] = value
    else:
        # RFC 7208 6: unknown modifiers are ignored, but must be valid macro strings.
        check_macro_string(value, DOMAIN_MACROS)


def parse_directive(term: str) -> Directive:
    matched = _DIRECTIVE.fullmatch(term)
    if matched is None:
        raise SpfPermError(f"unknown term {term!r}")
    qualifier = Qualifier(matched.group(1) or "+")
    try:
        mechanism = Mechanism(matched.group(2).lower())
    except ValueError:
        raise SpfPermError(f"unknown mechanism {matched.group(2)!r}") from None
    rest = matched.group(3)
    if mechanism is Mechanism.ALL:
        if rest:
            raise SpfPermError(f"bad term {term!r}")
        return Directive(qualifier, mechanism, term)
    if mechanism in (Mechanism.IP4, Mechanism.IP6):
        return Directive(qualifier, mechanism, term, network=_network(mechanism, rest, term))
    if mechanism in (Mechanism.INCLUDE, Mechanism.EXISTS):
        if not rest.startswith(":"):
            raise SpfPermError(f"{mechanism.value} needs a domain: {term!r}")
        check_domain_spec(rest[1:])
        return Directive(qualifier, mechanism, term, domain_spec=rest[1:])
    if mechanism is Mechanism.PTR:
        spec = _optional_domain_spec(rest, term)
        return Directive(qualifier, mechanism, term, domain_spec=spec)
    # a and mx: [":" domain-spec] [dual-cidr-length]
    cidr = _CIDR.fullmatch(rest)
    assert cidr is not None  # every group is optional
    spec = _optional_domain_spec(cidr.group(1), term)
    cidr4 = _prefix_length(cidr.group(2), 32, term)
    cidr6 = _prefix_length(cidr.group(3), 128, term)
    return Directive(qualifier, mechanism, term, spec, cidr4=cidr4, cidr6=cidr6)


def _optional_domain_spec(rest: str, term: str) -> str | None:
    if not rest:
        return None
    if not rest.startswith(":"):
        raise SpfPermError(f"bad term {term!r}")
    check_domain_spec(rest[1:])
    return rest[1:]


def _prefix_length(digits: str | None, maximum: int, term: str) -> int:
    if digits is None:
        return maximum
    if not _NO_LEADING_ZERO.fullmatch(digits) or int(digits) > maximum:
        raise SpfPermError(f"bad prefix length in {term!r}")
    return int(digits)


def _network(
    mechanism: Mechanism, rest: str, term: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not rest.startswith(":"):
        raise SpfPermError(f"{mechanism.value} needs an address: {term!r}")
    address, slash, length = rest[1:].partition("/")
    try:
        if mechanism is Mechanism.IP4:
            parsed: IPAddress = ipaddress.IPv4Address(address)
        else:
            parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise SpfPermError(f"bad address in {term!r}") from None
    maximum = parsed.max_prefixlen
    prefix = _prefix_length(length if slash else None, maximum, term)
    return ipaddress.ip_network(f"{parsed}/{prefix}", strict=False)


def check_domain_spec(spec: str) -> None:
    """RFC 7208 7.1: domain-spec = macro-string domain-end, where domain-end is a macro or a
    dot and a top label that is not all digits (`a:192.0.2.1` is a syntax error)."""
    check_macro_string(spec, DOMAIN_MACROS)
    ends_with_macro = any(m.end() == len(spec) for m in _MACRO.finditer(spec))
    if ends_with_macro:
        return
    end = _DOMAIN_END.search(spec)
    if end is None or "%" in spec[end.start() :]:
        raise SpfPermError(f"bad domain {spec!r}")


def check_macro_string(text: str, letters: frozenset[str]) -> None:
    """SpfPermError unless `text` is a macro-string whose macros use only `letters`."""
    position = 0
    for macro in _MACRO.finditer(text):
        _check_literal(text[position : macro.start()])
        position = macro.end()
        escape = macro.group(5)
        if escape is not None:
            if escape not in "%_-":
                raise SpfPermError(f"bad macro in {text!r}")
            continue
        if macro.group(1).lower() not in letters:
            raise SpfPermError(f"macro %{{{macro.group(1)}}} not allowed here")
        if macro.group(2) and int(macro.group(2)) == 0:
            raise SpfPermError(f"bad macro in {text!r}")  # keep zero labels: meaningless
    _check_literal(text[position:])


def _check_literal(text: str) -> None:
    # macro-literal = %x21-24 / %x26-7E: visible ASCII but "%" (a lone one is no macro).
    if any(not ("!" <= char <= "~") or char == "%" for char in text):
        raise SpfPermError(f"bad character in {text!r}")


# --- macros ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MacroValues:
    """The values of the macros of one check_host() call (RFC 7208 7.2)."""

    facts: SmtpFacts
    sender: str  # %{s}: local-part@domain
    domain: str  # %{d}: the domain whose record is being evaluated

    @property
    def local_part(self) -> str:
        return self.sender.rpartition("@")[0]

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]


def _macro_value(letter: str, identity: MacroValues, validated: str) -> str:
    client = identity.facts.client
    values = {
        "s": identity.sender,
        "l": identity.local_part,
        "o": identity.sender_domain,
        "d": identity.domain,
        "i": _dotted(client),
        "p": validated,
        "h": identity.facts.helo,
        "v": "in-addr" if client.version == 4 else "ip6",
        "c": str(client),
        "r": identity.facts.receiver,
        "t": str(identity.facts.timestamp),
    }
    return values[letter]


def _dotted(client: IPAddress) -> str:
    """%{i}: dotted quad, or for IPv6 the 32 nibbles separated by dots (RFC 7208 7.3)."""
    if client.version == 4:
        return str(client)
    return ".".join(client.exploded.replace(":", ""))


def _transform(value: str, digits: str, reverse: str, delimiters: str) -> str:
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        parts = parts[-int(digits) :]
    return ".".join(parts)


def expand(text: str, identity: MacroValues, letters: frozenset[str]) -> Asking[str]:
    """`text` with its macros expanded; asks DNS only for %{p} (the validated name)."""
    check_macro_string(text, letters)
    validated = ""
    if any(m.group(1) and m.group(1).lower() == "p" for m in _MACRO.finditer(text)):
        validated = yield from _validated_name(identity)
    pieces = []
    position = 0
    for macro in _MACRO.finditer(text):
        pieces.append(text[position : macro.start()])
        position = macro.end()
        escape = macro.group(5)
        if escape is not None:
            pieces.append({"%": "%", "_": " ", "-": "%20"}[escape])
            continue
        letter, digits, reverse, delimiters = macro.groups()[:4]
        value = _transform(
            _macro_value(letter.lower(), identity, validated), digits, reverse, delimiters
        )
        if letter.isupper():
            value = urllib.parse.quote(value, safe="-._~")  # RFC 7208 7.3: URL-escaped
        pieces.append(value)
    pieces.append(text[position:])
    return "".join(pieces)


def expand_domain(spec: str, identity: MacroValues) -> Asking[str]:
    """A domain-spec expanded and cut to 253 characters (RFC 7208 7.3: leftmost labels go)."""
    name = yield from expand(spec, identity, DOMAIN_MACROS)
    name = name.removesuffix(".")
    labels = name.split(".")
    while len(".".join(labels)) > MAX_NAME_LENGTH and len(labels) > 1:
        labels.pop(0)
    return ".".join(labels)


def is_valid_name(name: str) -> bool:
    """A name that can be asked: no empty label, none over 63 octets, 253 in all."""
    labels = name.removesuffix(".").split(".")
    return (
        len(name) <= MAX_NAME_LENGTH + 1
        and all(0 < len(label) <= MAX_LABEL_LENGTH for label in labels)
        and name.isascii()
    )


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class _Budget:
    """What one check has spent of the RFC's limits (mutable, private to one evaluation)."""

    dns_terms: int = 0
    void_lookups: int = 0

    def spend_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise SpfPermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def count_void(self, reply: DnsReply) -> None:
        if reply.kind in (ReplyKind.NXDOMAIN, ReplyKind.NODATA) or (
            reply.kind is ReplyKind.RECORDS and not reply.records
        ):
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise SpfPermError(f"more than {MAX_VOID_LOOKUPS} void lookups")


@dataclass(frozen=True, slots=True)
class _Outcome:
    """check_host()'s result inside the evaluation; the explanation is made at the top."""

    result: SpfResult
    mechanism: str = ""
    record: SpfRecord | None = None  # whose exp= explains a fail
    identity: MacroValues | None = None
    reason: str = ""


def ask(question: DnsQuestion) -> Asking[DnsReply]:
    """One question, one reply."""
    replies = yield (question,)
    return replies[0]


def ask_all(questions: Questions) -> Asking[Replies]:
    """Several questions at once (the driver may send them together)."""
    if not questions:
        return ()
    replies = yield questions
    return replies


def _address_type(client: IPAddress) -> str:
    return "A" if client.version == 4 else "AAAA"


def _check_host(identity: MacroValues, budget: _Budget) -> Asking[_Outcome]:
    """RFC 7208 4: check_host() for `identity.domain`; raises SpfPermError, SpfTempError."""
    if not is_valid_name(identity.domain) or "." not in identity.domain:
        return _Outcome(SpfResult.NONE, reason=f"{identity.domain!r} is not a domain")
    reply = yield from ask(DnsQuestion(identity.domain, "TXT"))
    if reply.kind is ReplyKind.ERROR:
        raise SpfTempError(f"TXT lookup of {identity.domain} failed: {reply.detail}".rstrip(": "))
    records = [text for text in reply.records if is_spf_record(text)]
    if not records:
        return _Outcome(SpfResult.NONE, reason=f"no SPF record at {identity.domain}")
    if len(records) > 1:
        raise SpfPermError(f"{len(records)} SPF records at {identity.domain}")
    record = parse_record(records[0])
    for directive in record.directives:
        matched = yield from _matches(directive, identity, budget)
        if matched:
            return _Outcome(directive.qualifier.result, directive.text, record, identity)
    if record.redirect is not None:
        budget.spend_term()
        target = yield from expand_domain(record.redirect, identity)
        inner = yield from _check_host(MacroValues(identity.facts, identity.sender, target), budget)
        if inner.result is SpfResult.NONE:
            raise SpfPermError(f"redirect to {target}: {inner.reason}")  # RFC 7208 6.1
        return inner
    return _Outcome(SpfResult.NEUTRAL, record=record, identity=identity)


def _matches(directive: Directive, identity: MacroValues, budget: _Budget) -> Asking[bool]:
    mechanism = directive.mechanism
    client = identity.facts.client
    if mechanism is Mechanism.ALL:
        return True
    if mechanism in (Mechanism.IP4, Mechanism.IP6):
        network = directive.network
        return network is not None and client.version == network.version and client in network
    budget.spend_term()
    target = identity.domain
    if directive.domain_spec is not None:
        target = yield from expand_domain(directive.domain_spec, identity)
    if mechanism is Mechanism.INCLUDE:
        return (yield from _include(target, identity, budget))
    if mechanism is Mechanism.PTR:
        names = yield from _validated_names(identity)
        return any(_is_within(name, target) for name in names)
    if not is_valid_name(target):
        # A name no DNS can hold (an empty label from a macro): nothing there, as NXDOMAIN.
        budget.count_void(NXDOMAIN)
        return False
    if mechanism is Mechanism.EXISTS:
        reply = yield from ask(DnsQuestion(target, "A"))  # RFC 7208 5.7: A, whatever the client
        return bool(_records(reply, target, budget))
    if mechanism is Mechanism.A:
        reply = yield from ask(DnsQuestion(target, _address_type(client)))
        return _contains(_records(reply, target, budget), client, directive)
    return (yield from _mx(target, directive, identity, budget))


def _records(reply: DnsReply, name: str, budget: _Budget) -> tuple[str, ...]:
    """The records of a term's lookup: an error ends the check, an empty answer counts."""
    if reply.kind is ReplyKind.ERROR:
        raise SpfTempError(f"lookup of {name} failed: {reply.detail}".rstrip(": "))
    budget.count_void(reply)
    return reply.records


def _contains(addresses: tuple[str, ...], client: IPAddress, directive: Directive) -> bool:
    prefix = directive.cidr4 if client.version == 4 else directive.cidr6
    for text in addresses:
        try:
            network = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
        except ValueError:
            continue
        if network.version == client.version and client in network:
            return True
    return False


def _include(target: str, identity: MacroValues, budget: _Budget) -> Asking[bool]:
    inner = yield from _check_host(MacroValues(identity.facts, identity.sender, target), budget)
    # RFC 7208 5.2: what an include's result means for the including record.
    if inner.result is SpfResult.PASS:
        return True
    if inner.result is SpfResult.NONE:
        raise SpfPermError(f"include:{target}: {inner.reason}")
    return False  # fail, softfail, neutral (errors were raised, not returned)


def _mx(target: str, directive: Directive, identity: MacroValues, budget: _Budget) -> Asking[bool]:
    reply = yield from ask(DnsQuestion(target, "MX"))
    exchanges = []
    for text in _records(reply, target, budget):
        name = text.partition(" ")[2].removesuffix(".")
        if name and name != ".":  # a null MX (RFC 7505) names no host
            exchanges.append(name)
    if len(exchanges) > MAX_MX_NAMES:
        raise SpfPermError(f"{target} has more than {MAX_MX_NAMES} MX names")
    rdtype = _address_type(identity.facts.client)
    replies = yield from ask_all(tuple(DnsQuestion(name, rdtype) for name in exchanges))
    for name, address_reply in zip(exchanges, replies, strict=True):
        if address_reply.kind is ReplyKind.ERROR:
            raise SpfTempError(f"lookup of {name} failed: {address_reply.detail}".rstrip(": "))
        if _contains(address_reply.records, identity.facts.client, directive):
            return True
    return False


def _reverse_name(client: IPAddress) -> str:
    return client.reverse_pointer


def _validated_names(identity: MacroValues) -> Asking[tuple[str, ...]]:
    """RFC 7208 5.5: the client's PTR names (the first 10) that resolve back to it. A
    failed lookup only leaves a name out: ptr then fails to match, it does not err."""
    client = identity.facts.client
    reply = yield from ask(DnsQuestion(_reverse_name(client), "PTR"))
    if reply.kind is not ReplyKind.RECORDS:
        return ()
    names = [name.removesuffix(".") for name in reply.records if is_valid_name(name)]
    names = names[:MAX_PTR_NAMES]
    rdtype = _address_type(client)
    replies = yield from ask_all(tuple(DnsQuestion(name, rdtype) for name in names))
    validated = []
    for name, address_reply in zip(names, replies, strict=True):
        if address_reply.kind is ReplyKind.RECORDS and any(
            _same_address(text, client) for text in address_reply.records
        ):
            validated.append(name)
    return tuple(validated)


def _validated_name(identity: MacroValues) -> Asking[str]:
    """%{p}: a validated name in the current domain if there is one, else any, else
    "unknown" (RFC 7208 7.3)."""
    names = yield from _validated_names(identity)
    for name in names:
        if _is_within(name, identity.domain):
            return name
    return names[0] if names else "unknown"


def _same_address(text: str, client: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(text) == client
    except ValueError:
        return False


def _is_within(name: str, domain: str) -> bool:
    name, domain = name.lower().removesuffix("."), domain.lower().removesuffix(".")
    return name == domain or name.endswith("." + domain)


def _explain(outcome: _Outcome, default: str) -> Asking[str]:
    """RFC 7208 6.2: the failing domain's exp= text, or `default` when it has none, or its
    lookup fails, or it is not exactly one record, or not a valid explanation string."""
    identity = outcome.identity
    if identity is None:
        return ""
    fallback = yield from _expand_explanation(default, identity)
    record = outcome.record
    if record is None or record.explanation is None:
        return fallback
    try:
        name = yield from expand_domain(record.explanation, identity)
    except SpfPermError:
        return fallback
    if not is_valid_name(name):
        return fallback
    reply = yield from ask(DnsQuestion(name, "TXT"))
    if reply.kind is not ReplyKind.RECORDS or len(reply.records) != 1:
        return fallback
    text = yield from _expand_explanation(reply.records[0], identity)
    return text or fallback


def _expand_explanation(text: str, identity: MacroValues) -> Asking[str]:
    # explain-string = *( macro-string / SP ): spaces are allowed between macro strings.
    if not text.isascii():
        return ""
    try:
        parts = []
        for piece in text.split(" "):
            parts.append((yield from expand(piece, identity, EXPLANATION_MACROS)))
    except SpfPermError:
        return ""
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class SpfIdentity:
    """The identity checked: the domain whose policy applies, and the sender (%{s}) it is
    checked for."""

    domain: str
    sender: str


def mail_from_identity(mail_from: str, helo: str) -> SpfIdentity:
    """The MAIL FROM identity (RFC 7208 2.4): the sender's domain, or with a null sender the
    HELO name's, as `postmaster@helo`. A sender without a local part is postmaster's (4.3)."""
    address = mail_from.strip().removeprefix("<").removesuffix(">")
    if not address:
        address = f"postmaster@{helo}"
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = "", address
    return SpfIdentity(domain, f"{local or 'postmaster'}@{domain}")


def helo_identity(helo: str) -> SpfIdentity:
    """The HELO identity (RFC 7208 2.3), checked on its own: `postmaster@helo`."""
    return SpfIdentity(helo, f"postmaster@{helo}")


def smtp_facts(
    client: IPAddress | str, helo: str, *, receiver: str = "unknown", timestamp: int = 0
) -> SmtpFacts:
    """The session's facts; `client` as an address or its text (ValueError if neither)."""
    address = ipaddress.ip_address(client) if isinstance(client, str) else client
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # RFC 7208 5: an IPv4-mapped IPv6 client is the IPv4 client it maps (ip4, A, %{i}).
        address = address.ipv4_mapped
    return SmtpFacts(address, helo, receiver, timestamp)


def check_host(
    facts: SmtpFacts, identity: SpfIdentity, *, default_explanation: str = DEFAULT_EXPLANATION
) -> SpfEvaluation:
    """RFC 7208 4: check_host(<ip>, <domain>, <sender>) as a computation that asks DNS.
    RFC 7208 4.3: a domain that is no valid multi-label name (an empty label, one over 63
    octets, an address literal) gives none without a lookup."""
    domain = identity.domain
    normalized = normalize_domain(domain)
    if normalized is None or not is_fqdn(domain):
        return SpfVerdict(SpfResult.NONE, domain, reason="not a valid domain")
    # Kept as written (macros such as %{d} show it), but an internationalized name is asked
    # in its A-labels.
    domain = domain.removesuffix(".") if domain.isascii() else normalized
    checked = MacroValues(facts, identity.sender, domain)
    try:
        outcome = yield from _check_host(checked, _Budget())
    except SpfPermError as error:
        return SpfVerdict(SpfResult.PERMERROR, domain, reason=str(error))
    except SpfTempError as error:
        return SpfVerdict(SpfResult.TEMPERROR, domain, reason=str(error))
    explanation = ""
    if outcome.result is SpfResult.FAIL:
        explanation = yield from _explain(outcome, default_explanation)
    return SpfVerdict(outcome.result, domain, outcome.mechanism, explanation, outcome.reason)


def evaluate_with(
    evaluation: Asking[T], answer: Callable[[DnsQuestion], DnsReply], *, max_batches: int = 256
) -> T:
    """Run `evaluation` to its end, answering each question with `answer` (for tests and for
    callers with a synchronous source of answers). The limits bound the questions asked
    (10 terms of at most 11 batches each, the exp lookup); `max_batches` guards the loop."""
    try:
        batch = next(evaluation)
        for _ in range(max_batches):
            batch = evaluation.send(tuple(answer(question) for question in batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # the generator's return value
    raise RuntimeError(f"SPF evaluation asked more than {max_batches} batches")
