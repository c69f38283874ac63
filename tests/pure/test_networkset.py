"""NetworkSet: which allow or deny entry a client address matches, and that finding it costs
a bounded number of dict lookups however long the list (a `file:` list of 100,000 networks
is looked up twice a connection)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spamgate.core.addresses import IPAddress, IPNetwork, normalize_address
from spamgate.core.matchlists import NetworkSet


def scan(networks: Sequence[IPNetwork], address: IPAddress) -> str:
    """The reference: the linear scan NetworkSet.match replaced (first entry in order)."""
    address = normalize_address(address)
    return next((str(network) for network in networks if address in network), "")


@pytest.mark.parametrize(
    ("entries", "address", "expected"),
    [
        pytest.param(["192.0.2.0/24"], "192.0.2.0", "192.0.2.0/24", id="network-address"),
        pytest.param(["192.0.2.0/24"], "192.0.2.255", "192.0.2.0/24", id="broadcast-address"),
        pytest.param(["192.0.2.0/24"], "192.0.1.255", "", id="just-below"),
        pytest.param(["192.0.2.0/24"], "192.0.3.0", "", id="just-above"),
        pytest.param(["192.0.2.7"], "192.0.2.7", "192.0.2.7/32", id="ipv4-host"),
        pytest.param(["2001:db8::7"], "2001:db8::7", "2001:db8::7/128", id="ipv6-host"),
        pytest.param(["2001:db8::/32"], "2001:db8:ffff::1", "2001:db8::/32", id="ipv6-network"),
        pytest.param(["2001:db8::/32"], "2001:db9::", "", id="ipv6-outside"),
        pytest.param(["192.0.2.0/24"], "::ffff:192.0.2.9", "192.0.2.0/24", id="mapped-client"),
        pytest.param(
            ["::ffff:192.0.2.0/120"], "192.0.2.9", "192.0.2.0/24", id="mapped-entry-ipv4-client"
        ),
        pytest.param(
            ["::ffff:192.0.2.0/120"], "::ffff:192.0.2.9", "192.0.2.0/24", id="mapped-both"
        ),
        pytest.param(["0.0.0.0/0"], "203.0.113.1", "0.0.0.0/0", id="ipv4-all"),
        pytest.param(["0.0.0.0/0"], "::ffff:203.0.113.1", "0.0.0.0/0", id="ipv4-all-mapped"),
        pytest.param(["0.0.0.0/0"], "2001:db8::1", "", id="ipv4-all-not-ipv6"),
        pytest.param(["::/0"], "2001:db8::1", "::/0", id="ipv6-all"),
        pytest.param(["::/0"], "192.0.2.1", "", id="ipv6-all-not-ipv4"),
        pytest.param(["::/0"], "::ffff:192.0.2.1", "", id="ipv6-all-not-mapped-client"),
        pytest.param(["::ffff:0:0/96"], "192.0.2.1", "0.0.0.0/0", id="all-mapped-is-ipv4-all"),
        pytest.param(["::/96"], "::192.0.2.1", "::/96", id="ipv4-compatible-is-ipv6"),
        pytest.param(["::/96"], "192.0.2.1", "", id="ipv4-compatible-not-ipv4"),
        pytest.param(["fe80::/64"], "fe80::1%eth0", "fe80::/64", id="scoped-client"),
        pytest.param(
            ["10.0.0.0/8", "10.1.0.0/16"], "10.1.2.3", "10.0.0.0/8", id="overlap-wide-first"
        ),
        pytest.param(
            ["10.1.0.0/16", "10.0.0.0/8"], "10.1.2.3", "10.1.0.0/16", id="overlap-narrow-first"
        ),
        pytest.param(
            ["10.1.0.0/16", "10.0.0.0/8"], "10.2.0.1", "10.0.0.0/8", id="overlap-only-wide"
        ),
        pytest.param(
            ["192.0.2.0/24", "0.0.0.0/0", "192.0.2.7"],
            "192.0.2.7",
            "192.0.2.0/24",
            id="all-between-overlaps",
        ),
        pytest.param(
            ["198.51.100.0/24", "0.0.0.0/0", "192.0.2.7"],
            "192.0.2.7",
            "0.0.0.0/0",
            id="all-before-host",
        ),
        pytest.param(
            ["192.0.2.7", "192.0.2.7", "192.0.2.0/24"], "192.0.2.7", "192.0.2.7/32", id="duplicate"
        ),
        pytest.param(
            ["2001:db8::/32", "::ffff:10.0.0.0/104", "10.0.0.0/8"],
            "::ffff:10.9.9.9",
            "10.0.0.0/8",
            id="mapped-entry-and-ipv4-entry-are-one",
        ),
        pytest.param([], "192.0.2.1", "", id="empty"),
    ],
)
def test_match(entries: list[str], address: str, expected: str) -> None:
    networks = NetworkSet.parse(entries)
    assert networks.match(ipaddress.ip_address(address)) == expected
    assert scan(networks.networks, ipaddress.ip_address(address)) == expected


def test_no_address_matches_nothing() -> None:
    assert NetworkSet.parse(["0.0.0.0/0", "::/0"]).match(None) == ""


def test_sets_compare_by_their_entries() -> None:
    """The index is derived: two sets of the same entries are equal, as before it."""
    assert NetworkSet.parse(["192.0.2.0/24"]) == NetworkSet.parse(["192.0.2.0/24"])
    assert NetworkSet.parse(["192.0.2.0/24"]) != NetworkSet.parse(["192.0.3.0/24"])
    assert NetworkSet() == NetworkSet(())


# -- the same answers as the scan, on lists hypothesis makes up ------------------------------

# Few distinct bases make networks that nest and repeat, which is where order matters.
_IPV4_BASES = (0x0A000000, 0x0A010000, 0x0A010200, 0xC0000200, 0xC0000207, 0xFFFFFFFF)
_IPV6_BASES = (0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 64), (0xFE80 << 112) | 1)


def _network(version: int, base: int, prefix: int) -> IPNetwork:
    width = 32 if version == 4 else 128
    masked = base & ~((1 << (width - prefix)) - 1) & ((1 << width) - 1)
    if version == 4:
        return ipaddress.IPv4Network((masked, prefix))
    return ipaddress.IPv6Network((masked, prefix))


@st.composite
def entries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["ipv4", "ipv6", "mapped"]))
    if kind == "ipv4":
        base = draw(st.sampled_from(_IPV4_BASES) | st.integers(0, 2**32 - 1))
        return str(_network(4, base, draw(st.integers(0, 32))))
    if kind == "ipv6":
        base = draw(st.sampled_from(_IPV6_BASES) | st.integers(0, 2**128 - 1))
        return str(_network(6, base, draw(st.integers(0, 128))))
    base = draw(st.sampled_from(_IPV4_BASES) | st.integers(0, 2**32 - 1))
    return str(_network(6, (0xFFFF << 32) | base, draw(st.integers(96, 128))))


@st.composite
def addresses(draw: st.DrawFn, networks: Sequence[IPNetwork]) -> IPAddress:
    """An address in or next to one of the networks, or anywhere; as a client may send it
    (IPv4 sometimes mapped)."""
    near_an_entry = draw(st.booleans())
    if networks and near_an_entry:
        network = draw(st.sampled_from(networks))
        value = int(network.network_address) + draw(st.integers(-1, network.num_addresses))
        version = network.version
    else:
        version = draw(st.sampled_from([4, 6]))
        value = draw(st.sampled_from(_IPV4_BASES if version == 4 else _IPV6_BASES))
        value += draw(st.integers(-300, 300))
    width = 32 if version == 4 else 128
    value %= 1 << width
    if version == 4:
        if draw(st.booleans()):
            return ipaddress.IPv6Address((0xFFFF << 32) | value)
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


@settings(max_examples=100, deadline=None)
@given(st.data(), st.lists(entries(), max_size=40))
def test_match_is_the_scan(data: st.DataObject, texts: list[str]) -> None:
    """100 lists, 20 addresses each: 2,000 addresses matched as the linear scan did."""
    networks = NetworkSet.parse(texts)
    for address in data.draw(st.lists(addresses(networks.networks), min_size=20, max_size=20)):
        assert networks.match(address) == scan(networks.networks, address), address


# -- a long list costs a bounded number of lookups ---------------------------------------------


class CountingDict(dict[int, int]):
    """A bucket that counts how often it is asked."""

    probes = 0

    def get(self, key: int, default: Any = None) -> Any:
        CountingDict.probes += 1
        return super().get(key, default)


def _counting(networks: NetworkSet) -> None:
    """Swap the index's buckets for counting ones (white-box: the index is private)."""
    for index in (networks._ipv4, networks._ipv6):
        index.buckets = tuple((first, shift, CountingDict(b)) for first, shift, b in index.buckets)


def _many_networks(count: int, seed: int) -> tuple[IPNetwork, ...]:
    """`count` random networks, most IPv4, of every prefix length, then the whole IPv4 space
    last (so that every IPv4 lookup matches, and a scan would go to the end)."""
    rng = random.Random(seed)
    networks: list[IPNetwork] = []
    for _ in range(count):
        if rng.random() < 0.8:
            networks.append(_network(4, rng.getrandbits(32), rng.randint(8, 32)))
        else:
            networks.append(_network(6, rng.getrandbits(128), rng.randint(16, 128)))
    networks.append(ipaddress.IPv4Network("0.0.0.0/0"))
    return tuple(networks)


def _fast_scan(networks: Sequence[IPNetwork]) -> Callable[[IPAddress], str]:
    """`scan` on integers, which a list this long needs to be checked against in time."""
    table = [
        (n.version, int(n.network_address) >> (n.max_prefixlen - n.prefixlen), n) for n in networks
    ]

    def first(address: IPAddress) -> str:
        value, version, width = int(address), address.version, address.max_prefixlen
        for net_version, bits, network in table:
            if net_version == version and value >> (width - network.prefixlen) == bits:
                return str(network)
        return ""

    return first


def test_a_lookup_in_100000_networks_asks_one_dict_per_prefix_length() -> None:
    """Not a timing: the lookup asks each prefix length's dict once at most, so its cost is
    bounded by the prefix lengths in use (at most 33 for IPv4, 129 for IPv6), where the scan
    it replaced tested up to 100,001 entries. The answers are checked against the scan."""
    networks = _many_networks(100_000, seed=15)
    matcher = NetworkSet(networks)
    assert 25 <= len(matcher._ipv4.buckets) <= 33  # /8 to /32, and /0
    assert len(matcher._ipv6.buckets) <= 129
    _counting(matcher)
    reference = _fast_scan(networks)
    rng = random.Random(1515)
    candidates: list[IPAddress] = []
    for network in rng.sample(networks, 10):
        candidates += [network.network_address, network.broadcast_address]
    candidates += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(10)]
    candidates += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(10)]
    assert reference(candidates[0]) == scan(networks, candidates[0])  # the references agree
    for address in candidates:
        CountingDict.probes = 0
        found = matcher.match(address)
        bound = len(matcher._ipv4.buckets if address.version == 4 else matcher._ipv6.buckets)
        assert CountingDict.probes <= bound, address
        assert found == reference(address), address


def test_overlapping_prefixes_still_give_the_first_entry() -> None:
    """Every prefix length of one address, widest last: the narrowest (first) wins, and a
    lookup that found it need not ask the buckets of later entries."""
    address = ipaddress.IPv4Address("192.0.2.7")
    networks = tuple(_network(4, int(address), prefix) for prefix in range(32, -1, -1))
    matcher = NetworkSet(networks)
    _counting(matcher)
    CountingDict.probes = 0
    assert matcher.match(address) == "192.0.2.7/32"
    assert CountingDict.probes == 1
    CountingDict.probes = 0
    assert matcher.match(ipaddress.IPv4Address("192.0.3.7")) == "192.0.2.0/23"
    assert CountingDict.probes <= 33
