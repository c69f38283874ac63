"""DNS list return codes: which A-record answers mean which listing.

A code specification is one of
  127.0.0.2                 a single address
  127.0.0.4-127.0.0.7       an inclusive range
  127.0.0.0/24              a CIDR block
  127.0.*.3                 octets that may be anything (DNSWL trust levels across categories)
  &0.0.0.4  or  &4          a bit mask: matches when any of the bits is set (SURBL-style lists)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_ALL_BITS = 0xFFFFFFFF
LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class ReturnCode:
    """A parsed code specification; `matches` takes the answer as a 32-bit integer."""

    text: str
    low: int = 0
    high: int = _ALL_BITS
    care: int = 0
    want: int = 0
    bits: int = 0

    type_name = "return code"

    def matches(self, address: int) -> bool:
        if self.bits:
            return address & self.bits != 0
        return self.low <= address <= self.high and address & self.care == self.want

    @classmethod
    def from_config(cls, value: object) -> ReturnCode:
        if not isinstance(value, str):
            raise ValueError(f"expected a return code such as 127.0.0.2, got {value!r}")
        return parse_return_code(value)


def parse_return_code(text: str) -> ReturnCode:
    spec = text.strip()
    if spec.startswith("&"):
        return ReturnCode(spec, bits=_parse_mask(spec[1:], text))
    if "/" in spec:
        try:
            network = ipaddress.IPv4Network(spec, strict=True)
        except ValueError as error:
            raise ValueError(f"invalid return code block {text!r}: {error}") from None
        return ReturnCode(spec, low=int(network.network_address), high=int(network[-1]))
    if "-" in spec:
        first, _, last = spec.partition("-")
        low, high = _parse_address(first, text), _parse_address(last, text)
        if low > high:
            raise ValueError(f"return code range {text!r} runs backwards")
        return ReturnCode(spec, low=low, high=high)
    if "*" in spec:
        return _parse_wildcard(spec, text)
    address = _parse_address(spec, text)
    return ReturnCode(spec, low=address, high=address)


def _parse_address(part: str, text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(part.strip()))
    except ValueError:
        message = f"invalid return code {text!r}: {part.strip()!r} is not an IPv4 address"
        raise ValueError(message) from None


def _parse_mask(part: str, text: str) -> int:
    part = part.strip()
    try:
        mask = int(ipaddress.IPv4Address(part)) if "." in part else int(part, 0)
    except ValueError:
        raise ValueError(f"invalid bit mask {text!r}: write &0.0.0.4 or &4") from None
    if mask == 0:
        raise ValueError(f"bit mask {text!r} must set at least one bit")
    if mask > _ALL_BITS:
        raise ValueError(f"bit mask {text!r} is wider than an IPv4 address (32 bits)")
    return mask


def _parse_wildcard(spec: str, text: str) -> ReturnCode:
    octets = spec.split(".")
    if len(octets) != 4:
        raise ValueError(f"invalid return code {text!r}: expected four octets")
    care = want = 0
    for octet in octets:
        care, want = care << 8, want << 8
        if octet == "*":
            continue
        if not re.fullmatch(r"[0-9]{1,3}", octet) or int(octet) > 255:
            raise ValueError(f"invalid return code {text!r}: bad octet {octet!r}")
        care |= 0xFF
        want |= int(octet)
    return ReturnCode(spec, care=care, want=want)


# RFC 5782 reserves nothing for errors, but DNSBL operators answer 127.255.255.0/24 when they
# refuse to answer (Spamhaus: 127.255.255.252 typo in zone, .254 public resolver, .255 excessive
# queries). Such an answer says nothing about the client and must never count as a listing.
BLOCKED_CODES = parse_return_code("127.255.255.0/24")
