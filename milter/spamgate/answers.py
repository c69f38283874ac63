"""What a DNS lookup came back with, before any list gives it a meaning."""

from __future__ import annotations

import enum
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol


class AnswerKind(enum.Enum):
    RECORDS = "records"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    OTHER_RCODE = "rcode"
    TIMEOUT = "timeout"
    NETWORK = "network"
    MALFORMED = "malformed"

    @property
    def is_definitive(self) -> bool:
        """True when the server gave an answer worth caching (a name exists or does not)."""
        return self in _DEFINITIVE


_DEFINITIVE = frozenset({AnswerKind.RECORDS, AnswerKind.NXDOMAIN, AnswerKind.NODATA})


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The records for one query, as text sorted and without duplicates, or why there are none.

    The text depends on the type asked (see resolver.interpret): A `192.0.2.1`, AAAA
    `2001:db8::1`, PTR `mail.example.com`, MX `10 mx.example.com` (null MX `0 .`), TXT the
    joined strings decoded as UTF-8.
    """

    kind: AnswerKind
    records: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""


class Lookups(Protocol):
    """A resolver as its users see it: thread-safe lookups whose futures always end in an
    answer (failures are answers of a failed kind), never in an exception."""

    def lookup(self, qname: str, rdtype: str = "A") -> futures.Future[DnsAnswer]: ...
