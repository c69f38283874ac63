"""Client addresses and the evidence types: how an IPv4-mapped or scoped client is read, the
same everywhere, and that the pure core's types come without the lookups' I/O."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spamgate
from spamgate.core.addresses import IPAddress, normalize_address, normalize_network
from spamgate.dns import dnslists
from spamgate.state import greylist, recentrejects
from spamgate.state.store import MemoryStore


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("192.0.2.1", "192.0.2.1", id="ipv4"),
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="ipv4-mapped"),
        pytest.param("::ffff:0:0", "0.0.0.0", id="mapped-first"),
        pytest.param("::ffff:ffff:ffff", "255.255.255.255", id="mapped-last"),
        pytest.param("::fffe:c000:201", "::fffe:c000:201", id="just-below-mapped"),
        pytest.param("::192.0.2.1", "::c000:201", id="ipv4-compatible-is-ipv6"),
        pytest.param("64:ff9b::192.0.2.1", "64:ff9b::c000:201", id="nat64-is-ipv6"),
        pytest.param("2001:db8::1", "2001:db8::1", id="ipv6"),
        pytest.param("fe80::1%eth0", "fe80::1", id="scoped-without-zone"),
    ],
)
def test_normalize_address(address: str, expected: str) -> None:
    normal = normalize_address(ipaddress.ip_address(address))
    assert normal == ipaddress.ip_address(expected)
    assert str(normal) == expected


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        pytest.param("::ffff:192.0.2.0/120", "192.0.2.0/24", id="mapped-as-ipv4"),
        pytest.param("::ffff:0:0/96", "0.0.0.0/0", id="all-mapped-is-all-ipv4"),
        pytest.param("::ffff:192.0.2.7/128", "192.0.2.7/32", id="mapped-host"),
        pytest.param("::fffe:0:0/95", "::fffe:0:0/95", id="wider-than-mapped-stays-ipv6"),
        pytest.param("::/0", "::/0", id="all-ipv6-stays-ipv6"),
        pytest.param("192.0.2.0/24", "192.0.2.0/24", id="ipv4"),
        pytest.param("2001:db8::/32", "2001:db8::/32", id="ipv6"),
    ],
)
def test_normalize_network(network: str, expected: str) -> None:
    assert str(normalize_network(ipaddress.ip_network(network))) == expected


def test_mapped_and_scoped_clients_are_one_client_everywhere() -> None:
    """Greylisting, the remembered refusals and the DNS list queries all read a client
    through normalize_address: a client seen once as ::ffff:192.0.2.1 and once as 192.0.2.1
    (an MTA listening on both kinds of socket) is one client."""
    plain: IPAddress = ipaddress.IPv4Address("192.0.2.1")
    mapped: IPAddress = ipaddress.IPv6Address("::ffff:192.0.2.1")
    timing = greylist.GreylistTiming()
    assert greylist.client_network(mapped, timing) == greylist.client_network(plain, timing)
    assert greylist.client_network(mapped, timing) == "192.0.2.0/24"
    scoped = ipaddress.IPv6Address("fe80::1%eth0")
    assert greylist.client_network(scoped, timing) == "fe80::/64"

    memory = recentrejects.RecentRejects(MemoryStore(), 60.0)
    memory.remember(mapped, ["ZEN"])
    assert memory.recall(plain) == ("ZEN",)

    assert dnslists.query_name(normalize_address(mapped), "zen.test") == "1.2.0.192.zen.test"


def test_the_pure_core_types_import_no_io() -> None:
    """evidence and addresses are what the pure core (rules, engine, decision log) imports:
    neither may pull in the resolver, the promises, the state backend or a socket."""
    code = (
        "import sys\n"
        "import spamgate.core.addresses, spamgate.core.evidence\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    # This tree's package, whatever the interpreter has installed.
    source_root = str(Path(spamgate.__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": source_root},
    )
    loaded = set(result.stdout.split())
    assert "spamgate.core.evidence" in loaded
    forbidden = {
        "spamgate.dns.answers",
        "spamgate.dns.dnslists",
        "spamgate.dns.dnswire",
        "spamgate.dns.rdns",
        "spamgate.dns.resolver",
        "spamgate.shell.runtime",
        "spamgate.shell.session",
        "spamgate.shell.transaction",
        "spamgate.state.store",
        "spamgate.shell.adapter",
        # Not "socket": the standard library's email.utils imports it at module level (for
        # make_msgid), and the core parses headers with email.utils since the policy
        # validates `fact:` rules against core/headerfacts.py. tests/pure/test_layers.py
        # checks that no module of the core imports socket itself.
        "sqlite3",
        "redis",
        "dns",
        "Milter",
        "concurrent.futures",
    }
    assert loaded & forbidden == set()
