"""Static allow and deny lists: client networks, host name patterns, address patterns.

Entries come from the policy file or from plain files it names (`file:/path`, one entry per
line, `#` starts a comment; a relative path is relative to the policy file), so a long list
can be kept apart and reloaded with the policy. Such files are read with the policy file
(config.read_sources) and only looked up here, while the policy is built (sources.py).

Name patterns (client names, HELO names) are case-insensitive globs: `mail.example.com`
matches that name only, `*.example.com` any name below example.com, `*` any run of
characters. Address patterns (senders, recipients) are `user@example.com` (that address),
`@example.com` (any address at that domain), `@*.example.com` (any address below it),
`user@` (that local part at any domain), or a glob such as `*-bounces@*`. The null sender
is written `<>`.

The policy's `allow` and `deny` sections (AllowList, DenyList) are declared at the end, and
parse their entries into these sets as they are built.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from spamgate.core.addresses import IPAddress, IPNetwork, normalize_address, normalize_network
from spamgate.core.replies import check_template
from spamgate.core.schema import FieldError, NamesFiles, setting
from spamgate.core.sources import FILE_PREFIX, named_files


class EntryError(ValueError):
    """An entry that cannot be used; `where` names the list file and line when it came from one,
    `entry` the index of the entry among those parsed together (the `file:` entry, for a list
    file's line), so that the policy can point at it."""

    def __init__(self, message: str, where: str = "", entry: int | None = None) -> None:
        self.where = where
        self.entry = entry
        super().__init__(f"{where}: {message}" if where else message)


def expand(entries: Iterable[str]) -> list[tuple[str, str]]:
    """Each entry with where it came from; `file:` entries become the lines of their file."""
    return [(text, where) for text, where, _ in _expand(entries)]


def _expand(entries: Iterable[str]) -> list[tuple[str, str, int]]:
    """`expand`, with the index of the entry each line came from."""
    expanded: list[tuple[str, str, int]] = []
    for index, entry in enumerate(entries):
        if not entry.startswith(FILE_PREFIX):
            expanded.append((entry.strip(), "", index))
            continue
        path = include_path(entry)
        content = named_files().contents.get(path)
        if content is None:
            # config.read_sources reads every file the policy names before the build.
            message = "not read with the policy (a bug in spamgate, please report it)"
            raise EntryError(message, str(path), index)
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise EntryError(f"not UTF-8 (byte {error.start})", str(path), index) from None
        for number, line in enumerate(text.splitlines(), start=1):
            content_text = line.split("#", 1)[0].strip()
            if content_text:
                expanded.append((content_text, f"{path}:{number}", index))
    return expanded


T = TypeVar("T")


def include_path(entry: str) -> Path:
    """The file a `file:` entry names; a relative path is relative to the policy file."""
    return named_files().list_path(entry)


def _parse_each(entries: Iterable[str], parse: Callable[[str], T]) -> list[T]:
    parsed = []
    for text, where, index in _expand(entries):
        try:
            parsed.append(parse(text))
        except EntryError as error:
            if error.entry is None:
                error.entry = index
            raise
        except ValueError as error:
            raise EntryError(str(error), where, index) from None
    return parsed


class _PrefixIndex:
    """The networks of one address family, for a lookup whose cost does not grow with their
    number: per prefix length, a dict from a network's prefix bits (its address shifted right
    past the host bits) to the position of the first entry with that network. An address is
    looked up once per prefix length in use (at most 33 for IPv4, 129 for IPv6; a list of
    host addresses and /24s has two), where a scan would test every entry.

    Overlapping entries all stay; the entry first in the list wins, as it did in a scan. The
    buckets are kept in the order of the first entry each holds, so that a lookup that has
    found a match stops at the first bucket that cannot hold an earlier one."""

    __slots__ = ("buckets",)

    def __init__(self, width: int, networks: Iterable[tuple[int, IPNetwork]]) -> None:
        by_length: dict[int, dict[int, int]] = {}
        for position, network in networks:
            shift = width - network.prefixlen
            bucket = by_length.setdefault(shift, {})
            bucket.setdefault(int(network.network_address) >> shift, position)
        # (first position in the bucket, shift, bucket), earliest first.
        self.buckets: tuple[tuple[int, int, dict[int, int]], ...] = tuple(
            sorted((min(bucket.values()), shift, bucket) for shift, bucket in by_length.items())
        )

    def first(self, value: int) -> int | None:
        """The position of the first entry holding the address `value`, or None."""
        found: int | None = None
        for earliest, shift, bucket in self.buckets:
            if found is not None and earliest > found:
                break
            position = bucket.get(value >> shift)
            if position is not None and (found is None or position < found):
                found = position
        return found


@dataclass(frozen=True)
class NetworkSet:
    """Client networks, IPv4 and IPv6. A client address is matched as normalize_address reads
    it (an IPv4-mapped client as IPv4), and a mapped network entry is read as the IPv4 network
    it maps (normalize_network), so that each matches the other."""

    networks: tuple[IPNetwork, ...] = ()
    _ipv4: _PrefixIndex = field(init=False, repr=False, compare=False)
    _ipv6: _PrefixIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbered = list(enumerate(self.networks))
        ipv4 = _PrefixIndex(32, ((i, n) for i, n in numbered if n.version == 4))
        ipv6 = _PrefixIndex(128, ((i, n) for i, n in numbered if n.version == 6))
        object.__setattr__(self, "_ipv4", ipv4)  # frozen: set once, as dataclasses do
        object.__setattr__(self, "_ipv6", ipv6)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> NetworkSet:
        def network(text: str) -> IPNetwork:
            try:
                parsed = ipaddress.ip_network(text, strict=True)
            except ValueError as error:
                raise ValueError(f"invalid network {text!r}: {error}") from None
            return normalize_network(parsed)

        return cls(tuple(_parse_each(entries, network)))

    def match(self, address: IPAddress | None) -> str:
        """The first matching entry as text, or "" (an IPv4-mapped IPv6 address matches as
        IPv4)."""
        if address is None:
            return ""
        address = normalize_address(address)
        index = self._ipv4 if address.version == 4 else self._ipv6
        position = index.first(int(address))
        return "" if position is None else str(self.networks[position])


def _glob(pattern: str) -> re.Pattern[str]:
    # fnmatch's translation only produces `.*` and literal runs, so matching stays linear
    # enough for names of at most a few hundred characters; no admin regex is involved.
    return re.compile(fnmatch.translate(pattern.lower()), re.DOTALL)


@dataclass(frozen=True)
class NamePatterns:
    """Host name globs; exact names are looked up in a set, the rest tried in order."""

    exact: frozenset[str] = frozenset()
    globs: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> NamePatterns:
        def check(text: str) -> str:
            name = text.lower().rstrip(".")
            if not name or re.search(r"[\s@<>]", name):
                raise ValueError(f"invalid host name pattern {text!r}")
            return name

        names = _parse_each(entries, check)
        exact = frozenset(n for n in names if not _is_glob(n))
        globs = tuple((n, _glob(n)) for n in names if _is_glob(n))
        return cls(exact, globs)

    def match(self, name: str) -> str:
        name = name.lower().rstrip(".")
        if not name:
            return ""
        if name in self.exact:
            return name
        return next((text for text, glob in self.globs if glob.match(name)), "")

    def __bool__(self) -> bool:
        return bool(self.exact or self.globs)


def _normalize(address: str) -> str:
    """Without <> and without a trailing dot on the domain (the same name, RFC 1034 3.1)."""
    return address.removeprefix("<").removesuffix(">").rstrip(".")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True)
class AddressPatterns:
    """Envelope address patterns; see the module docstring for the forms."""

    exact: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    locals: frozenset[str] = frozenset()
    globs: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressPatterns:
        def check(text: str) -> str:
            entry = text.strip().lower()
            if entry == "<>":
                return entry
            entry = _normalize(entry)
            if (
                "@" not in entry
                or entry == "@"
                or re.search(r"[\s<>]", entry)
                or entry.count("@") > 1
            ):
                raise ValueError(
                    f"invalid address pattern {text!r}: write user@example.com, "
                    "@example.com, user@ or <>"
                )
            return entry

        exact, domains, locals_, globs = set(), set(), set(), []
        for entry in _parse_each(entries, check):
            if _is_glob(entry):
                # "@*.example.com" means any local part: the glob must say so.
                globs.append((entry, _glob("*" + entry if entry.startswith("@") else entry)))
            elif entry.startswith("@"):
                domains.add(entry[1:])
            elif entry.endswith("@"):
                locals_.add(entry[:-1])
            else:
                exact.add(entry)
        return cls(frozenset(exact), frozenset(domains), frozenset(locals_), tuple(globs))

    def match(self, address: str) -> str:
        """The matching pattern, or "". `address` as in the envelope, with or without <>."""
        bare = _normalize(address.strip().lower())
        if not bare:
            return "<>" if "<>" in self.exact else ""
        local, at, domain = bare.rpartition("@")
        if bare in self.exact:
            return bare
        if at and domain in self.domains:
            return f"@{domain}"
        if at and local in self.locals:
            return f"{local}@"
        return next((text for text, glob in self.globs if glob.match(bare)), "")

    def __bool__(self) -> bool:
        return bool(self.exact or self.domains or self.locals or self.globs)


def parse_entries(entries: tuple[str, ...], parse: Callable[[Iterable[str]], T], key: str) -> T:
    """`parse(entries)` for the setting `key` (of `allow`, `deny`, a recipient policy), or a
    FieldError naming the entry (a `file:` list's, or its line)."""
    try:
        return parse(entries)
    except EntryError as error:
        where = key if error.entry is None else (key, error.entry)
        raise FieldError(where, str(error)) from None


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
            object.__setattr__(self, target, parse_entries(getattr(self, key), parse, key))

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
        verified = parse_entries(self.verified_senders, AddressPatterns.parse, "verified_senders")
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
        check_template(self.reply, "reply", {"id", "client"})
