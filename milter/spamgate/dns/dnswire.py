"""DNS messages on the wire (RFC 1035 4.1): the queries spamgate asks and the answers it reads.

Pure code, no I/O. It does what the resolver's hot path needs and nothing more: build a
query for one question, and reduce a response to a DnsAnswer with the meaning and text that
dnspython's `Message.resolve_chaining()` and its record types give (the tests check the two
agree, message by message).

Why not dnspython itself: building a query and parsing its answer through dnspython's
objects costs about 330 us of interpreter time on this kind of machine (issue 13's profile),
and a flood of new clients needs several thousand lookups a second, all sharing one
interpreter lock with the milter's sessions. The wire format of the five record types asked
here is small and stable; reading it directly costs a few microseconds. Names that are not
plain host names (escapes, non-ASCII labels) still go through dnspython, which is exact.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import dns.exception
import dns.ipv6
import dns.name
import dns.rcode

from spamgate.dns.answers import AnswerKind, DnsAnswer

# Record types by code (RFC 1035 3.2.2, RFC 3596) and back.
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA = 1, 2, 5, 6, 12, 15, 16, 28
RDTYPE_CODES = {"A": A, "AAAA": AAAA, "PTR": PTR, "MX": MX, "TXT": TXT}
CLASS_IN = 1

_HEADER = struct.Struct("!HHHHHH")
_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH of a resource record
_QR, _OPCODE_MASK, _TC, _RD = 0x8000, 0x7800, 0x0200, 0x0100
_RCODE_MASK = 0x000F
_NOERROR, _FORMERR, _SERVFAIL, _NXDOMAIN, _NOTIMP, _REFUSED = 0, 1, 2, 3, 4, 5
# Answers that need not repeat the question (dnspython's Message.is_response does the same).
_QUESTIONLESS_RCODES = frozenset({_FORMERR, _SERVFAIL, _NOTIMP, _REFUSED})
_FAILED = {_SERVFAIL: AnswerKind.SERVFAIL, _REFUSED: AnswerKind.REFUSED}

# dnspython's limits, so that both read the same messages the same way.
MAX_CHAIN = 16  # CNAMEs followed (dns.message.MAX_CHAIN)
NEGATIVE_TTL_WITHOUT_SOA = 300  # dns.message.NEGATIVE_TTL_WITHOUT_SOA

# A host name that needs no escaping or IDNA: the names of DNS lists, reversed addresses and
# almost every HELO and mail domain.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_PLAIN_LABEL = re.compile(rb"[a-z0-9_-]+")


class FormError(Exception):
    """The message breaks the wire format; `str()` is the name dnspython's error would have."""


@dataclass(frozen=True, slots=True)
class Question:
    """One question as it goes on the wire: the name's wire form in lower case, and the type."""

    name: bytes
    rdtype: int


@dataclass(frozen=True, slots=True)
class Response:
    """What a response said: `truncated` (TC set: ask again over TCP), or the answer."""

    answer: DnsAnswer
    truncated: bool = False


def question_for(qname: str, rdtype: str) -> Question | None:
    """The question for `qname` (presentation form) and `rdtype`; None when no valid DNS
    name can be made of it (an empty label, a label over 63 octets, more than 255 in all)."""
    code = RDTYPE_CODES[rdtype]
    if _PLAIN_NAME.fullmatch(qname):
        labels = qname.rstrip(".").lower().encode("ascii").split(b".")
        wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
        return Question(wire, code) if len(wire) <= 255 else None
    try:
        name = dns.name.from_text(qname)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None
    encoded = name.to_wire()
    assert encoded is not None  # an absolute name always has a wire form
    return Question(_lower(encoded), code)


def encode_query(query_id: int, question: Question) -> bytes:
    """A standard query with recursion desired and no EDNS, as dnspython's make_query()."""
    return (
        _HEADER.pack(query_id, _RD, 1, 0, 0, 0)
        + question.name
        + struct.pack("!HH", question.rdtype, CLASS_IN)
    )


def query_id_of(data: bytes) -> int | None:
    return int.from_bytes(data[:2], "big") if len(data) >= 12 else None


def parse_response(data: bytes, query_id: int, question: Question) -> Response | None:
    """The response to (`query_id`, `question`) in `data`; None when `data` is not one (a
    stray or forged datagram: the caller keeps waiting). A message that claims to be the
    response but breaks the format is a MALFORMED answer, its detail named as dnspython
    would name its exception."""
    if len(data) < 12:
        return None
    ident, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(data)
    if ident != query_id or not flags & _QR or flags & _OPCODE_MASK:
        return None
    rcode = flags & _RCODE_MASK
    try:
        offset = 12
        if qdcount == 0 and rcode in _QUESTIONLESS_RCODES:
            pass
        elif qdcount != 1:
            return None
        else:
            name, offset = _read_name(data, offset)
            rdtype, rdclass = struct.unpack_from("!HH", data, offset)
            offset += 4
            if name != question.name or rdtype != question.rdtype or rdclass != CLASS_IN:
                return None
        if flags & _TC:
            return Response(DnsAnswer(AnswerKind.MALFORMED, detail="truncated"), truncated=True)
        if rcode in _FAILED:
            return Response(DnsAnswer(_FAILED[rcode]))
        if rcode not in (_NOERROR, _NXDOMAIN):
            return Response(DnsAnswer(AnswerKind.OTHER_RCODE, detail=_rcode_text(rcode)))
        if qdcount == 0:
            raise FormError("FormError")
        return Response(_read_answer(data, offset, ancount, nscount, question, rcode))
    except FormError as error:
        return Response(DnsAnswer(AnswerKind.MALFORMED, detail=str(error)))
    except (struct.error, IndexError):
        return Response(DnsAnswer(AnswerKind.MALFORMED, detail="FormError"))


def _rcode_text(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return str(rcode)


@dataclass(slots=True)
class _RRset:
    ttl: int
    rdatas: list[tuple[int, int]]  # (offset, length) of each record's data


def _read_answer(  # noqa: PLR0917 -- the header's counts, read once by the caller
    data: bytes, offset: int, ancount: int, nscount: int, question: Question, rcode: int
) -> DnsAnswer:
    # Group the answer section by (owner, type), as dnspython builds RRsets: an RRset's TTL is
    # the lowest of its records'.
    answer: dict[tuple[bytes, int], _RRset] = {}
    offset = _read_section(data, offset, ancount, answer)
    authority: dict[tuple[bytes, int], _RRset] = {}
    _read_section(data, offset, nscount, authority)
    # The additional section is not read (dnspython parses it; no answer here depends on it).

    # Follow the CNAME chain from the question to the RRset of the type asked.
    name, rdtype = question.name, question.rdtype
    min_ttl = 0xFFFFFFFF
    found: _RRset | None = None
    for _ in range(MAX_CHAIN):
        found = answer.get((name, rdtype))
        if found is not None:
            min_ttl = min(min_ttl, found.ttl)
            break
        alias = answer.get((name, CNAME))
        if alias is None:
            break
        min_ttl = min(min_ttl, alias.ttl)
        start, _length = alias.rdatas[0]
        name, _ = _read_name(data, start)
    else:
        raise FormError("ChainTooLong")
    if rcode == _NXDOMAIN and found is not None:
        raise FormError("AnswerForNXDOMAIN")
    if found is None:
        min_ttl = min(min_ttl, _negative_ttl(data, name, authority))
        kind = AnswerKind.NXDOMAIN if rcode == _NXDOMAIN else AnswerKind.NODATA
        return DnsAnswer(kind, ttl=min_ttl)
    texts = {_record_text(data, start, length, rdtype) for start, length in found.rdatas}
    return DnsAnswer(AnswerKind.RECORDS, tuple(sorted(texts)), ttl=min_ttl)


def _read_section(
    data: bytes, offset: int, count: int, into: dict[tuple[bytes, int], _RRset]
) -> int:
    for _ in range(count):
        owner, offset = _read_name(data, offset)
        rdtype, rdclass, ttl, length = _FIXED.unpack_from(data, offset)
        offset += 10
        end = offset + length
        if end > len(data):
            raise FormError("FormError")
        if rdclass == CLASS_IN:
            _check_rdata(data, offset, length, rdtype)
            rrset = into.get((owner, rdtype))
            if rrset is None:
                into[owner, rdtype] = _RRset(ttl, [(offset, length)])
            else:
                rrset.ttl = min(rrset.ttl, ttl)
                rrset.rdatas.append((offset, length))
        offset = end
    return offset


def _check_rdata(data: bytes, offset: int, length: int, rdtype: int) -> None:
    """The record data of the types read here is well formed, as dnspython requires."""
    end = offset + length
    if rdtype == A:
        ok = length == 4
    elif rdtype == AAAA:
        ok = length == 16
    elif rdtype in (CNAME, PTR, NS):
        ok = _read_name(data, offset)[1] == end
    elif rdtype == MX:
        ok = length >= 3 and _read_name(data, offset + 2)[1] == end
    elif rdtype == SOA:
        after = _read_name(data, _read_name(data, offset)[1])[1]
        ok = after + 20 == end
    elif rdtype == TXT:
        position = offset
        while position < end:
            position += 1 + data[position]
        ok = position == end and length > 0
    else:
        ok = True
    if not ok:
        raise FormError("FormError")


def _negative_ttl(data: bytes, name: bytes, authority: dict[tuple[bytes, int], _RRset]) -> int:
    """RFC 2308: from the SOA of the closest enclosing zone in the authority section."""
    owner = name
    while True:
        soa = authority.get((owner, SOA))
        if soa is not None:
            start, _length = soa.rdatas[0]
            after_names = _read_name(data, _read_name(data, start)[1])[1]
            minimum = int.from_bytes(data[after_names + 16 : after_names + 20], "big")
            return min(soa.ttl, minimum)
        if owner == b"\0":
            return NEGATIVE_TTL_WITHOUT_SOA
        owner = owner[owner[0] + 1 :]


def _read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The (decompressed, lower-cased) wire form of the name at `offset`, and where the data
        after it starts. Each compression pointer must point before the previous one (so there
    are no loops), as dnspython requires."""
    labels = []
    total = 0
    end = -1
    position = offset
    lowest = offset  # each pointer must point before the last one: no loops
    while True:
        length = data[position]
        if length == 0:
            position += 1
            break
        if length >= 0xC0:
            target = ((length & 0x3F) << 8) | data[position + 1]
            if end < 0:
                end = position + 2
            if target >= lowest:
                raise FormError("BadPointer")
            lowest = position = target
            continue
        if length > 63:
            raise FormError("BadLabelType")
        label = data[position : position + 1 + length]
        if len(label) != length + 1:
            raise FormError("FormError")
        labels.append(label)
        total += length + 1
        if total > 254:
            raise FormError("NameTooLong")
        position += length + 1
    return _lower(b"".join(labels) + b"\0"), (end if end >= 0 else position)


_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def _lower(wire: bytes) -> bytes:
    """ASCII letters in lower case (DNS names compare case-insensitively, RFC 4343); length
    octets are below 64 and so never letters."""
    return wire.translate(_LOWER)


def _record_text(data: bytes, offset: int, length: int, rdtype: int) -> str:
    """One record as callers read it (resolver.py documents the forms)."""
    if rdtype == A:
        return ".".join(map(str, data[offset : offset + 4]))
    if rdtype == AAAA:
        return dns.ipv6.inet_ntoa(data[offset : offset + 16])
    if rdtype == PTR:
        return _name_text(_read_name(data, offset)[0])
    if rdtype == MX:
        preference = int.from_bytes(data[offset : offset + 2], "big")
        return f"{preference} {_name_text(_read_name(data, offset + 2)[0])}"
    if rdtype == TXT:
        strings = []
        position, end = offset, offset + length
        while position < end:
            size = data[position]
            strings.append(data[position + 1 : position + 1 + size])
            position += 1 + size
        return b"".join(strings).decode("utf-8", errors="replace")
    raise ValueError(f"record type {rdtype} is never asked")


def _name_text(wire: bytes) -> str:
    """A name in presentation form without the final dot; the root stays ".". Anything but
    letters, digits, `-` and `_` is escaped by dnspython (`\\.`, `\\032`), so the text is
    printable ASCII whatever a hostile zone put in the name."""
    labels = []
    position = 0
    while wire[position]:
        size = wire[position]
        labels.append(wire[position + 1 : position + 1 + size])
        position += 1 + size
    if not labels:
        return "."
    if all(_PLAIN_LABEL.fullmatch(label) for label in labels):
        return b".".join(labels).decode("ascii")
    return dns.name.Name([*labels, b""]).to_text(omit_final_dot=True).lower()
