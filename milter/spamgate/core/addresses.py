"""Client addresses: their type, and the one way spamgate reads an IPv4-mapped one. Pure.

An MTA listening on an IPv6 socket that also accepts IPv4 sees an IPv4 client as
::ffff:192.0.2.1 (RFC 4291 2.5.5.2), and passes that to the milter. It is the IPv4 client
all the same: its DNS list queries, greylisting network, allow and deny entries and
remembered refusals are those of 192.0.2.1, so every module that keys, looks up or matches a
client address reads it through `normalize_address` first.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def normalize_address(address: IPAddress) -> IPAddress:
    """The client as spamgate knows it: an IPv4-mapped IPv6 address as the IPv4 it is, and a
    scoped one (fe80::1%eth0) without its zone."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            # A zone names an interface of this host, not part of the client's address; and
            # Python 3.11's reverse_pointer raises AddressValueError on a scoped address (it
            # parses "1%eth0" as hex), so `explain --ip 2001:db8::1%eth0` crashed at connect.
            return ipaddress.IPv6Address(int(address))
    return address


def normalize_network(network: IPNetwork) -> IPNetwork:
    """A network as clients are matched against it: one inside ::ffff:0:0/96 as the IPv4
    network it maps (::ffff:192.0.2.0/120 is 192.0.2.0/24), since a mapped client is matched
    as IPv4 (normalize_address)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        base = network.network_address.ipv4_mapped
        assert base is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network
