"""Domain names from the envelope, HELO and DNS: normal forms, address literals, organizations.

Everything here is pure and total: any str — empty, 10 KB long, holding NULs or the lone
surrogates that surrogateescape leaves for bytes that were not UTF-8 — gives a defined
answer, never an exception, because every input comes from an SMTP client.

Hostname syntax follows Postfix's valid_hostname() (src/util/valid_hostname.c): letters,
digits, `-` and `_` (Postfix allows the underscore because real hosts use it), labels of 1 to
63 characters that neither start nor end with `-`. Non-ASCII names are IDNA-encoded with the
standard library's codec, which implements IDNA 2003 (nameprep): it maps `ß` to `ss` where
IDNA 2008 / UTS-46 nontransitional processing would keep it as `xn--zca`.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re
import threading

from publicsuffixlist import PublicSuffixList

# RFC 1035 2.3.4: 255 octets on the wire, which is 253 characters of text without the final
# dot (each label adds a length octet, the root adds one more).
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Inputs longer than this cannot become a valid name (nameprep can drop characters, such as
# soft hyphens, but not thousands of them in a real name); refusing them early keeps the cost
# of hostile input bounded.
_MAX_INPUT_LENGTH = 1024

# The label separators UTS-46 and the standard library's codec accept: full stop, ideographic
# full stop, fullwidth full stop, halfwidth ideographic full stop.
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_ALL_DIGITS = re.compile(r"[0-9]+")

# The same few names (HELO, sender domain, PTR name) are asked about many times per message:
# pure functions of a string, cached. Bounded, and inputs over 1024 characters are refused
# before any work, so a flood of distinct names costs at most a few megabytes.
_CACHED_NAMES = 4096


@functools.lru_cache(maxsize=_CACHED_NAMES)
def normalize_domain(name: str) -> str | None:
    """`name` stripped, lower-cased, without one final dot and in A-labels; None if invalid.

    `Bücher.Example.` gives `xn--bcher-kva.example`. Invalid: empty, a character outside
    letters, digits, `-` and `_` once encoded, an empty label, a label over 63 characters or a
    name over 253. IP addresses pass as the names they look like (`192.0.2.1`); callers that
    must tell them apart use is_ip_literal().
    """
    text = name.strip()
    if not text or len(text) > _MAX_INPUT_LENGTH:
        return None
    if _DOTS.fullmatch(text[-1]):
        text = text[:-1]
    labels = []
    for label in _DOTS.split(text):
        ascii_label = _to_ascii(label)
        if ascii_label is None or not _LABEL.fullmatch(ascii_label):
            return None
        labels.append(ascii_label)
    normal = ".".join(labels)
    if len(normal) > MAX_NAME_LENGTH:
        return None
    return normal


def _to_ascii(label: str) -> str | None:
    """One label as an A-label, lower-cased; None when IDNA refuses it."""
    if label.isascii():
        # ToASCII leaves ASCII labels alone except for a length check; lower-casing here keeps
        # `xn--` labels and plain ones alike.
        lowered = label.lower()
        return lowered if 0 < len(lowered) <= MAX_LABEL_LENGTH else None
    try:
        encoded = encodings.idna.ToASCII(label)
    except UnicodeError:
        # Lone surrogates, prohibited code points, bidi violations, empty or long results.
        return None
    return encoded.decode("ascii").lower()


@functools.lru_cache(maxsize=_CACHED_NAMES)
def is_ip_literal(name: str) -> bool:
    """True for an IP address, bare or as an RFC 5321 address literal.

    `192.0.2.1`, `[192.0.2.1]`, `2001:db8::1`, `[IPv6:2001:db8::1]` (the tag in any case) and,
    leniently, `[2001:db8::1]`. An IPv4 address must be a plain dotted quad: `192.0.2.1.`,
    `0x7f.1` and `192.000.2.1` are not addresses (Python's parser refuses the last two).
    """
    return _literal_address(name) is not None


def _literal_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = name.strip()
    if len(text) > _MAX_INPUT_LENGTH:
        return None
    version = None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text, version = text[5:], 6
    # ip_address() would accept surrounding space inside the brackets and non-ASCII digits
    # nowhere, but say so explicitly rather than rely on it.
    if not text or not text.isascii() or text.strip() != text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if version is not None and address.version != version:
        return None
    return address


@functools.lru_cache(maxsize=_CACHED_NAMES)
def is_fqdn(name: str) -> bool:
    """True for a fully qualified host name: two labels or more, valid characters, not an IP
    address, and a top-level label that is not all digits (`host.123` is no domain)."""
    if is_ip_literal(name):
        return False
    normal = normalize_domain(name)
    if normal is None:
        return False
    labels = normal.split(".")
    return len(labels) >= 2 and not _ALL_DIGITS.fullmatch(labels[-1])


# RFC 5322 3.2.3 atext: what a local part may hold without quotes.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def bare_address(address: str) -> str:
    """An envelope address as the MTA resolves it: without `<>`, in lower case, and with a
    quoted local part unquoted when it needs no quotes (`"postmaster"@example.com` is
    postmaster@example.com to Postfix, RFC 5321 4.1.2); "" for the null sender."""
    text = address.strip().removeprefix("<").removesuffix(">").strip().lower()
    if text.startswith('"'):
        local, at, domain = text.rpartition("@")
        if local.endswith('"') and len(local) >= 2:
            inner = re.sub(r"\\(.)", r"\1", local[1:-1])
            if _DOT_ATOM.fullmatch(inner):
                return f"{inner}{at}{domain}"
    return text


def domain_of_address(address: str) -> str | None:
    """The normalized domain of a mail address, or None.

    Takes `<User@Example.COM>`, `user@example.com` and `"quoted@local"@example.com`, and
    drops an RFC 5321 source route (`<@relay.example:user@example.com>`). None for the null
    sender `<>`, an address without a domain, an address literal domain (`user@[192.0.2.1]`)
    and a domain that is not a valid name.
    """
    text = address.strip()
    if len(text) > _MAX_INPUT_LENGTH:
        return None
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text.startswith("@"):
        # RFC 5321 4.1.2 Path = "<" [ A-d-l ":" ] Mailbox ">": the route ends at the first
        # colon; the mailbox after it is the address.
        _, colon, rest = text.partition(":")
        if not colon:
            return None
        text = rest
    at = _domain_separator(text)
    if at < 0:
        return None
    domain = text[at + 1 :]
    if not domain or is_ip_literal(domain) or domain.startswith("["):
        return None
    return normalize_domain(domain)


def _domain_separator(mailbox: str) -> int:
    """Index of the `@` between local part and domain, or -1.

    A quoted local part (RFC 5321 Quoted-string) may hold `@` and escaped quotes: skip it
    whole. Otherwise the last `@` separates, as a local part cannot hold one unquoted.
    """
    if mailbox.startswith('"'):
        index = 1
        while index < len(mailbox):
            char = mailbox[index]
            if char == "\\":
                index += 2
                continue
            if char == '"':
                return index + 1 if mailbox[index + 1 : index + 2] == "@" else -1
            index += 1
        return -1
    return mailbox.rfind("@")


def domain_query_name(domain: str, zone: str) -> str | None:
    """`<normalized domain>.<zone>` for a domain list, or None when no valid query exists.

    None for an IP address or literal, a single-label domain, an invalid domain or zone, and
    a query name over 253 characters (a long domain under a long zone).
    """
    if is_ip_literal(domain):
        return None
    normal = normalize_domain(domain)
    normal_zone = normalize_domain(zone)
    if normal is None or normal_zone is None or "." not in normal:
        return None
    query = f"{normal}.{normal_zone}"
    return query if len(query) <= MAX_NAME_LENGTH else None


_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List, parsed once on first use (parsing takes tens of milliseconds)."""
    global _psl  # noqa: PLW0603 -- one parsed list per process, built lazily
    psl = _psl
    if psl is not None:
        # Every lookup of a new name comes here: no lock once the list is built, or the
        # sessions of a flood queue up on it behind one that waits for the interpreter lock.
        return psl
    with _psl_lock:
        if _psl is None:
            _psl = PublicSuffixList()
        return _psl


@functools.lru_cache(maxsize=_CACHED_NAMES)
def organizational_domain(name: str) -> str:
    """The registrable domain (public suffix + one label) of `name`, normalized.

    `www.example.co.uk` gives `example.co.uk`. A public suffix itself (`co.uk`) gives the
    normalized name, an IP address or literal its address (`[IPv6:2001:DB8::1]` gives
    `2001:db8::1`), and an invalid name "".
    Unknown top-level domains count as public suffixes (`mail.example` gives `mail.example`),
    as the Public Suffix List's own algorithm says ("If no rules match, the prevailing rule
    is `*`").
    """
    address = _literal_address(name)
    if address is not None:
        return str(address)
    normal = normalize_domain(name)
    if normal is None:
        return ""
    registrable = _public_suffixes().privatesuffix(normal)
    return registrable if isinstance(registrable, str) else normal


def same_organization(a: str, b: str) -> bool:
    """True when `a` and `b` have one registrable domain; never for an invalid name."""
    org_a = organizational_domain(a)
    return org_a != "" and org_a == organizational_domain(b)
