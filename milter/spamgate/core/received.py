"""Received header fields (RFC 5321 4.4) as hops: who handed the message to whom, and when.

Pure and total: any str gives a Hop (its fields empty when unread), never an exception, in time
linear in the value (which is capped). Every MTA writes its own form; the common ones:

    Postfix, Sendmail: from HELO (RDNS [ADDR]) by HOST ...; DATE
                       (RDNS is "unknown" when it did not verify; Sendmail may write
                       "user@RDNS" for an ident answer, and "[ADDR]" alone without a name)
    Exim:              from RDNS ([ADDR] helo=HELO) by HOST ...; DATE
                       from [ADDR] (helo=HELO) by HOST ...; DATE
                       from RDNS ([ADDR]) by HOST ...; DATE  (HELO was RDNS)
    qmail:             from RDNS (HELO HELO) (ADDR) by HOST ...; DATE
                       from RDNS (ADDR) by HOST ...; DATE  (HELO was RDNS)

Only the sending hop of a Received field written by a host one trusts says anything: the
sender writes every field below it. `external_hop` picks that field, given our hosts (the
receiving host and our relays in front of it), and counts the relays passed on the way.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spamgate.core import domains
from spamgate.core.addresses import IPAddress, IPNetwork, normalize_address
from spamgate.core.headers import parse_date, unfold

# RFC 5322 lines end at 998 characters; a Received field of a few lines says all it says in
# its first 4,000 (a longer one is read that far: the time after the last ";" is then lost).
MAX_RECEIVED_CHARS = 4000

# Names Postfix and Sendmail write for a client whose reverse name did not verify.
_UNKNOWN = frozenset({"", "unknown", "[unknown]"})

# Each pattern is a character class with a bound, or literal text: no nested repetition.
_BRACKETED = re.compile(r"\[(?:ipv6:)?([0-9a-f.:]{2,45})\]", re.IGNORECASE)
_BARE_ADDRESS = re.compile(r"\(\s*(?:ipv6:)?([0-9a-f.:]{2,45})\s*\)", re.IGNORECASE)
_EXIM_HELO = re.compile(r"helo=([^\s()\[\]]{1,255})", re.IGNORECASE)
_QMAIL_HELO = re.compile(r"\(\s*helo\s+([^\s()\[\]]{1,255})\s*\)", re.IGNORECASE)
_WORD = re.compile(r"[^\s()\[\];]{1,255}")
_LITERAL = re.compile(r"\[[^\s()\[\];]{1,255}\]")


@dataclass(frozen=True)
class Hop:
    """One Received field. Empty strings and None for what it does not say (or says badly)."""

    from_name: str = ""  # the first word after "from": HELO (Postfix) or reverse name (Exim)
    helo: str = ""  # the HELO/EHLO name the client gave
    reverse_name: str = ""  # the client's reverse name as the receiver verified it
    address: IPAddress | None = None
    by: str = ""  # the receiving host, lower case
    time: datetime.datetime | None = None  # after the last ";", aware


def parse_received(value: str) -> Hop:
    """The hop a Received field value describes, as far as it can be read."""
    text = unfold(value[:MAX_RECEIVED_CHARS]).replace("\n", " ").replace("\r", " ")
    head, semicolon, tail = text.rpartition(";")
    when = parse_date(tail) if semicolon else None
    if not semicolon:
        head = text
    from_clause, by = _clauses(head)
    return _from_parts(from_clause, by, when)


def received_time(value: str) -> datetime.datetime | None:
    """The time of a Received field, as parse_received reads it, without the rest: the date
    after the last ";" of its first MAX_RECEIVED_CHARS characters (unfolded)."""
    text = unfold(value[:MAX_RECEIVED_CHARS]).replace("\n", " ").replace("\r", " ")
    _, semicolon, tail = text.rpartition(";")
    return parse_date(tail) if semicolon else None


def _clauses(head: str) -> tuple[str, str]:
    """The text of the from clause (up to " by " outside parentheses) and the by host."""
    depth = 0
    lowered = head.lower()
    from_start = -1
    by_host = ""
    from_end = len(head)
    i = 0
    length = len(head)
    while i < length:
        char = head[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and (i == 0 or head[i - 1] in " \t"):
            if from_start < 0 and lowered.startswith("from ", i):
                from_start = i + 5
            elif lowered.startswith("by ", i):
                from_end = i
                match = _WORD.match(head, i + 3)
                if match is None:
                    match = _WORD.search(head, i + 3)
                by_host = match.group(0).lower() if match else ""
                break
        i += 1
    from_clause = head[from_start:from_end].strip() if from_start >= 0 else ""
    return from_clause, by_host


def _address(text: str) -> IPAddress | None:
    try:
        return normalize_address(ipaddress.ip_address(text))
    except ValueError:
        return None


def _from_parts(clause: str, by: str, when: datetime.datetime | None) -> Hop:
    if not clause:
        return Hop(by=by, time=when)
    # The first word, or an address literal ("from [192.0.2.1] (...)": a bare-IP HELO).
    word = _LITERAL.match(clause) or _WORD.match(clause)
    first = word.group(0) if word else ""
    rest = clause[word.end() :] if word else clause
    address = None
    # The address the receiver recorded is in the comment after the first word; a first word
    # that is a literal is the client's HELO (Postfix: "from [192.0.2.1] (host [ADDR])"),
    # which may name another address. Exim's "from [ADDR] (helo=HELO)" has it only there.
    bracketed = _BRACKETED.search(rest) or _BRACKETED.search(clause)
    if bracketed is not None:
        address = _address(bracketed.group(1))
    if address is None:
        bare = _BARE_ADDRESS.search(rest)
        if bare is not None:
            address = _address(bare.group(1))
    exim = _EXIM_HELO.search(rest)
    qmail = _QMAIL_HELO.search(rest)
    if exim is not None:  # Exim: from RDNS ([ADDR] helo=HELO), from [ADDR] (helo=HELO)
        if first.startswith("["):
            return Hop(first, exim.group(1), "", address, by, when)
        return Hop(first, exim.group(1), _known(first), address, by, when)
    if qmail is not None:  # qmail: from RDNS (HELO HELO) (ADDR)
        return Hop(first, qmail.group(1), _known(first), address, by, when)
    if bracketed is not None and rest.lstrip().startswith("("):
        # Postfix and Sendmail: from HELO (RDNS [ADDR]); "(user@RDNS [ADDR])", "([ADDR])".
        inner = rest.lstrip()[1:]
        name_match = _WORD.match(inner.lstrip())
        name = name_match.group(0) if name_match else ""
        if "@" in name:
            name = name.rpartition("@")[2]
        if name.startswith("[") or name.lower().startswith("ipv6:"):
            name = ""
        return Hop(first, first, _known(name), address, by, when)
    if address is not None and _BARE_ADDRESS.search(rest) is not None:
        # qmail: from RDNS (ADDR), the HELO being RDNS.
        return Hop(first, first, _known(first), address, by, when)
    # Anything else ("from HOST [ADDR]" as fetchmail writes, "(from user@localhost)"):
    # the address if there is one, and the name as given.
    return Hop(first, first, "", address, by, when)


def _known(name: str) -> str:
    return "" if name.lower() in _UNKNOWN else name.rstrip(".").lower()


# At most this many Received fields are read when walking down from our hosts' (the header
# view keeps 100 fields; a command reading a whole message may give more).
MAX_HOPS = 100

# A field more than this much later than the field above it (which the next host wrote after
# it) is a clock gone backwards or a forged field; less is ordinary clock drift.
BACKWARDS_SLACK = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class OurHosts:
    """Our own mail hosts: the host spamgate serves and the relays in front of it (backup MX,
    gateways). Only the Received fields they write cannot have been written by the sender."""

    names: frozenset[str] = frozenset()  # lower case, without a trailing dot
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, names: Iterable[str], networks: Iterable[IPNetwork]) -> OurHosts:
        kept = frozenset(n.rstrip(".").lower() for n in names if n.rstrip("."))
        return cls(kept, tuple(networks))

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OurHosts:
        """Host names and addresses or networks (`mx2.example.com`, `192.0.2.25`,
        `[2001:db8::25]`, `192.0.2.0/28`) as an admin writes them on a command line."""
        names: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.append(entry)
        return cls.of(names, networks)

    def joined(self, other: OurHosts) -> OurHosts:
        return OurHosts(self.names | other.names, self.networks + other.networks)

    def has_name(self, name: str) -> bool:
        return bool(name) and name.rstrip(".").lower() in self.names

    def has_address(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks)

    def wrote(self, hop: Hop) -> bool:
        """Whether one of our hosts wrote the field (its `by`, by name or address literal)."""
        return self.has_name(hop.by) or self.has_address(_literal(hop.by))

    def handed_over(self, hop: Hop) -> bool:
        """Whether the hop's client was one of ours: by the address the receiver recorded,
        else (no address) by the name it gave. A loopback client is the writing host itself
        (a content filter or fetchmail handing mail back to its own MTA)."""
        if hop.address is not None:
            return hop.address.is_loopback or self.has_address(hop.address)
        return self.has_name(hop.from_name) or self.has_name(hop.helo)

    def claimed(self, hop: Hop) -> bool:
        """Whether the hop's client called itself one of ours (HELO or `from` name, or an
        address literal of ours) while the receiver recorded an address that is neither ours
        nor loopback (the writer itself), and no verified name of our names' organizations
        (our relay `webnote.net` may be `mail.webnote.net` in DNS): what a spambot greeting
        a relay with our name leaves."""
        address = hop.address
        if address is None or address.is_loopback or self.has_address(address):
            return False
        if not any(
            self.has_name(name) or self.has_address(_literal(name))
            for name in (hop.from_name, hop.helo)
        ):
            return False
        reverse_name = hop.reverse_name
        return not (
            reverse_name
            and any(domains.same_organization(reverse_name, name) for name in self.names)
        )


@dataclass(frozen=True)
class ExternalHop:
    """Where mail entered our hosts from outside, as their Received fields say."""

    hop: Hop  # the field one of ours wrote for a client not ours
    position: int  # of that field among the Received fields, 0 the topmost; -1: the arrival
    relays_passed: int  # fields above it, from the first one ours wrote, with a client of ours


def external_hop(
    values: Sequence[str], ours: OurHosts, arrival: Hop | None = None
) -> ExternalHop | None:
    """The last hop outside our hosts.

    `arrival` is the hop the host spamgate serves received the message on (the daemon knows
    it from the connection; Postfix does not show milters the Received field it writes, as
    tests/e2e/test_fact_rules.py checks). When its client is not ours, it is the external
    hop (position -1: no field of the message); when it is one of our relays, that relay
    wrote the topmost field, and the walk goes on down from there.

    Without `arrival` (a message read offline), the walk starts at the topmost field one of
    ours wrote (fields above it, such as a fetchmail's, are passed over). A sender connecting
    directly could write such a field, so only the offline commands search for one.

    Down the walk, a field whose client is ours was written by one of ours for one of ours;
    the field below it was then written by that relay, whatever name it gives after `by`, so
    it is trusted too; the first field whose client is not ours is the external hop. None if
    no field of ours is found, or every client down the fields is ours (mail from inside). A
    sender's forged fields lie below the real ones and are never reached."""
    relays_passed = 0
    trusted = arrival is not None
    if arrival is not None:
        if not ours.handed_over(arrival):
            return ExternalHop(arrival, -1, 0)
        relays_passed = 1
    for position, value in enumerate(values[:MAX_HOPS]):
        hop = parse_received(value)
        if not trusted:
            if not ours.wrote(hop):
                continue
            trusted = True
        if not ours.handed_over(hop):
            return ExternalHop(hop, position, relays_passed)
        relays_passed += 1
    return None


def forged_hops(values: Sequence[str], ours: OurHosts, external: ExternalHop) -> int:
    """How many fields, from the external hop down, claim a client of ours that their writer
    did not record as ours (OurHosts.claimed): a spambot greeting a backup MX or an open relay
    with our name. A message that really left one of ours and came back (a mailing list) has
    our address or our verified name recorded and is not counted."""
    below = values[max(external.position, 0) : MAX_HOPS]
    count = sum(1 for value in below if ours.claimed(parse_received(value)))
    return count + (1 if external.position < 0 and ours.claimed(external.hop) else 0)


def time_reversals(values: Sequence[str]) -> int:
    """How many fields carry a time more than BACKWARDS_SLACK later than the field above them,
    which the next host wrote after them. Fields without a readable time are skipped over."""
    count = 0
    later: datetime.datetime | None = None
    for value in values[:MAX_HOPS]:
        when = received_time(value)
        if when is None:
            continue
        if later is not None and when - later > BACKWARDS_SLACK:
            count += 1
        later = when
    return count


def _literal(name: str) -> IPAddress | None:
    """The address of an address literal or bare address (`[192.0.2.1]`, `[IPv6:2001:db8::1]`,
    `192.0.2.1`); None for a host name."""
    text = name.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    return _address(text) if text and len(text) <= 45 else None
