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
sender writes every field below it. `client_hop` picks that field, given the receiving hosts.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    bracketed = _BRACKETED.search(clause)
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


def client_hop(
    values: Iterable[str], our_names: Iterable[str], our_networks: Sequence[IPNetwork]
) -> Hop | None:
    """The hop where one of our hosts received the message from a host not ours: the topmost
    Received field (the last written) whose `by` is ours and whose client is not; None if none
    is. Hops between our own hosts (a relay handing over to the mail store) are passed over."""
    names = frozenset(n.rstrip(".").lower() for n in our_names)

    def ours_by_name(name: str) -> bool:
        return bool(name) and name.rstrip(".").lower() in names

    def ours_by_address(address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in our_networks)

    for value in values:
        hop = parse_received(value)
        by_address = _address(hop.by.strip("[]").removeprefix("ipv6:"))
        if not (ours_by_name(hop.by) or ours_by_address(by_address)):
            continue
        if ours_by_address(hop.address) or (
            hop.address is None and (ours_by_name(hop.from_name) or ours_by_name(hop.helo))
        ):
            continue  # handed over by one of ours
        return hop
    return None
