"""SPF checks through the real resolver on answers of awkward size (issue 17 item 7): a
record too long for a UDP answer is fetched again over TCP and evaluated; one over the
RFC's sanity bound is a permerror, never an exception."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spamgate.core.settings import ResolverSettings
from spamgate.core.spf import SpfResult
from spamgate.dns import spfcheck
from spamgate.dns.resolver import Resolver
from tests.fake_dns_server import Behaviour, FakeDnsServer

CLIENT = "192.0.2.200"


@pytest.fixture
def server() -> Iterator[FakeDnsServer]:
    dns = FakeDnsServer()
    dns.serve_tcp()
    dns.start()
    yield dns
    dns.stop()


def _check(dns: FakeDnsServer, domain: str) -> spfcheck.SpfVerdict:
    resolver = Resolver(
        ResolverSettings(query_timeout=1, deadline=3), nameservers=(dns.nameserver,)
    )
    resolver.start()
    try:
        return spfcheck.check_mail_from(
            resolver, CLIENT, f"someone@{domain}", "mail.example.org", deadline=3
        )
    finally:
        resolver.stop()


def _strings(record: str) -> str:
    """A TXT record in presentation form, as strings of at most 255 octets."""
    chunks = [record[i : i + 250] for i in range(0, len(record), 250)]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def test_a_record_too_long_for_udp_is_read_over_tcp(server: FakeDnsServer) -> None:
    # 60 networks before the client's own: about 1,500 octets, split into strings.
    networks = " ".join(f"ip4:198.51.{i}.0/24" for i in range(60))
    record = f"v=spf1 {networks} ip4:{CLIENT} -all"
    server.script["long.example", "TXT"] = Behaviour(records=(_strings(record),), truncate=True)
    verdict = _check(server, "long.example")
    assert (verdict.result, verdict.mechanism) == (SpfResult.PASS, f"ip4:{CLIENT}")
    assert server.tcp_queries >= 1


def test_a_record_of_garbage_terms_is_a_permerror(server: FakeDnsServer) -> None:
    record = "v=spf1 " + " ".join(f"junk{i}!" for i in range(300))
    server.script["junk.example", "TXT"] = Behaviour(records=(_strings(record),), truncate=True)
    verdict = _check(server, "junk.example")
    assert verdict.result is SpfResult.PERMERROR, verdict


def test_two_spf_records_are_a_permerror(server: FakeDnsServer) -> None:
    server.script["twice.example", "TXT"] = Behaviour(
        records=('"v=spf1 -all"', f'"v=spf1 ip4:{CLIENT} -all"')
    )
    assert _check(server, "twice.example").result is SpfResult.PERMERROR
