"""What a DNS lookup came back with, before any list gives it a meaning."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    """The records (as text: dotted quads for A) for one query, or why there are none."""

    kind: AnswerKind
    records: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""
