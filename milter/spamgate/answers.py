"""What a DNS lookup came back with, before any list gives it a meaning."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AnswerKind(enum.Enum):
    ADDRESSES = "addresses"
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


_DEFINITIVE = frozenset({AnswerKind.ADDRESSES, AnswerKind.NXDOMAIN, AnswerKind.NODATA})


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The A records (as dotted quads) for one query name, or why there are none."""

    kind: AnswerKind
    addresses: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""
