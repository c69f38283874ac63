"""RuleBook on connection facts: HELO and reverse DNS (helpers: tests/rules_harness.py).

Every case asserts the exact set of rules that fired, so a rule that fires where it should not
is caught as surely as one that stays silent.
"""

from __future__ import annotations

import pytest

from spamgate.core.rules import Stage
from spamgate.dns.rdns import RdnsStatus, ReverseDns
from tests.rules_harness import book, confirmed, connection, fired, rule, unconfirmed

# -- HELO ----------------------------------------------------------------------------------------

HELO_BOOK = book(
    rule("BARE_IP", "helo: bare_ip"),
    rule("NOT_FQDN", "helo: not_fqdn"),
    rule("OURS", "helo: ours"),
    rule("UNRESOLVABLE", "helo: unresolvable"),
    rule("NOT_PTR", "helo: not_ptr_domain"),
)


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        pytest.param("192.0.2.61", {"BARE_IP"}, id="bare-ipv4"),
        pytest.param("[192.0.2.61]", set(), id="bracketed-ipv4-literal-is-fine"),
        pytest.param("2001:db8::61", {"BARE_IP"}, id="bare-ipv6"),
        pytest.param("[IPv6:2001:db8::61]", set(), id="ipv6-literal-is-fine"),
        pytest.param("[2001:db8::61]", set(), id="bracketed-ipv6-without-tag-is-fine"),
        pytest.param(" 192.0.2.61 ", {"BARE_IP"}, id="bare-ipv4-with-spaces"),
        pytest.param("localhost", {"NOT_FQDN"}, id="single-label"),
        pytest.param("host.123", {"NOT_FQDN"}, id="numeric-tld"),
        pytest.param("mail..example", {"NOT_FQDN"}, id="empty-label"),
        pytest.param("192.0.2.61.", {"NOT_FQDN"}, id="address-with-trailing-dot-is-no-address"),
        pytest.param("mail.client.example", set(), id="fqdn"),
        pytest.param("mail.client.example.", set(), id="fqdn-trailing-dot"),
        pytest.param("mx.spamgate.test", {"OURS"}, id="ours-by-name"),
        pytest.param("MX.Spamgate.Test.", {"OURS"}, id="ours-by-name-any-case-trailing-dot"),
        pytest.param("other.spamgate.test", set(), id="sibling-of-our-name-is-not-us"),
        pytest.param("[198.51.100.25]", {"OURS"}, id="ours-by-ipv4-literal"),
        pytest.param("198.51.100.25", {"BARE_IP", "OURS"}, id="ours-by-bare-ipv4"),
        pytest.param("[198.51.100.26]", set(), id="ipv4-literal-outside-our-networks"),
        pytest.param("[IPv6:2001:db8:25::7]", {"OURS"}, id="ours-by-ipv6-literal-in-network"),
        pytest.param("[ipv6:2001:DB8:25::7]", {"OURS"}, id="ours-ipv6-tag-any-case"),
        pytest.param("2001:db8:25::7", {"BARE_IP", "OURS"}, id="ours-by-bare-ipv6"),
        pytest.param("[IPv6:2001:db8:26::7]", set(), id="ipv6-literal-outside-our-networks"),
        pytest.param("", set(), id="empty"),
        pytest.param("   ", set(), id="blank"),
    ],
)
def test_helo_checks(helo: str, expected: set[str]) -> None:
    assert fired(HELO_BOOK, Stage.CONNECTION, connection(helo)) == expected


@pytest.mark.parametrize(
    ("helo", "resolves", "expected"),
    [
        pytest.param("mail.client.example", False, {"UNRESOLVABLE"}, id="does-not-resolve"),
        pytest.param("mail.client.example", True, set(), id="resolves"),
        pytest.param("mail.client.example", None, set(), id="dns-failed-is-no-evidence"),
        pytest.param("", False, set(), id="no-helo"),
    ],
)
def test_helo_unresolvable(helo: str, resolves: bool | None, expected: set[str]) -> None:
    facts = connection(helo, helo_resolves=resolves)
    assert fired(HELO_BOOK, Stage.CONNECTION, facts) == expected


@pytest.mark.parametrize(
    ("helo", "rdns", "expected"),
    [
        pytest.param("mail.client.example", confirmed("mail.client.example"), set(), id="same"),
        pytest.param("mail.client.example", confirmed("gw.client.example"), set(), id="same-org"),
        pytest.param(
            "MAIL.Client.Example.", confirmed("mx.client.example"), set(), id="same-org-any-case"
        ),
        pytest.param(
            "mail.client.example", confirmed("mail.other.test"), {"NOT_PTR"}, id="other-org"
        ),
        pytest.param(
            "mail.client.example", unconfirmed("gw.other.test"), {"NOT_PTR"}, id="unconfirmed-ptr"
        ),
        pytest.param(
            "mail.example.co.uk", confirmed("mx.example.co.uk"), set(), id="same-org-under-co-uk"
        ),
        pytest.param(
            "example.co.uk", confirmed("smtp.example.co.uk"), set(), id="org-itself-under-co-uk"
        ),
        pytest.param(
            "mail.example.co.uk",
            confirmed("mail.other.co.uk"),
            {"NOT_PTR"},
            id="co-uk-is-a-public-suffix-not-an-org",
        ),
        pytest.param(
            "mail.client.example", ReverseDns(RdnsStatus.MISSING), set(), id="no-ptr-missing"
        ),
        pytest.param(
            "mail.client.example",
            ReverseDns(RdnsStatus.UNKNOWN, detail="timeout"),
            set(),
            id="no-ptr-unknown",
        ),
        pytest.param("[192.0.2.60]", confirmed("x.other.test"), set(), id="literal-is-not-a-name"),
        pytest.param(
            "localhost", confirmed("x.other.test"), {"NOT_FQDN"}, id="single-label-is-not-fqdn"
        ),
    ],
)
def test_helo_not_ptr_domain(helo: str, rdns: ReverseDns, expected: set[str]) -> None:
    assert fired(HELO_BOOK, Stage.CONNECTION, connection(helo, rdns=rdns)) == expected


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        pytest.param("Friend.client.example", {"FRIEND"}, id="matches"),
        pytest.param("client.friend.example", set(), id="anchored"),
        pytest.param("", set(), id="no-helo"),
    ],
)
def test_helo_matches(helo: str, expected: set[str]) -> None:
    rulebook = book(rule("FRIEND", "helo_matches: '(?i)^friend'"))
    assert fired(rulebook, Stage.CONNECTION, connection(helo)) == expected


# -- reverse DNS ---------------------------------------------------------------------------------

RDNS_BOOK = book(
    rule("MISSING", "rdns: missing"),
    rule("UNCONFIRMED", "rdns: unconfirmed"),
    rule("DYNAMIC", "rdns: dynamic"),
)


@pytest.mark.parametrize(
    ("rdns", "expected"),
    [
        pytest.param(ReverseDns(RdnsStatus.MISSING), {"MISSING"}, id="missing"),
        pytest.param(unconfirmed("gw.other.test"), {"UNCONFIRMED"}, id="unconfirmed"),
        pytest.param(confirmed("mail.client.example"), set(), id="confirmed"),
        pytest.param(ReverseDns(RdnsStatus.UNKNOWN), set(), id="unknown-is-no-evidence"),
        pytest.param(
            ReverseDns(RdnsStatus.UNKNOWN, detail="servfail"), set(), id="servfail-is-no-evidence"
        ),
        pytest.param(
            unconfirmed("dsl-198-51-100-7.isp.example"),
            {"UNCONFIRMED", "DYNAMIC"},
            id="unconfirmed-and-dynamic",
        ),
        pytest.param(confirmed("dsl-198-51-100-7.isp.example"), {"DYNAMIC"}, id="dynamic"),
        pytest.param(
            ReverseDns(
                RdnsStatus.CONFIRMED,
                ("dsl-198-51-100-7.isp.example", "mail.client.example"),
                confirmed_name="mail.client.example",
            ),
            set(),
            id="confirmed-name-is-judged-not-first-ptr",
        ),
    ],
)
def test_rdns_checks(rdns: ReverseDns, expected: set[str]) -> None:
    assert fired(RDNS_BOOK, Stage.CONNECTION, connection(rdns=rdns)) == expected


# What the default reverse_dns.dynamic_patterns call dynamic. Changing the patterns changes
# which clients are scored as residential: this table is their contract.
DEFAULT_DYNAMIC = [
    pytest.param("dsl-198-51-100-7.isp.example", True, id="dsl-word-and-address"),
    pytest.param("192-0-2-10.example", True, id="dashed-address"),
    pytest.param("192-0-2-10.isp.example", True, id="dashed-address-subdomain"),
    pytest.param("198.51.100.7.example", True, id="dotted-address"),
    pytest.param("host-203-0-113-9.example.net", True, id="prefixed-dashed-address"),
    pytest.param("c-98-207-45-12.hsd1.ca.comcast.net", True, id="cable-style"),
    pytest.param("cpe-70-112-34-5.austin.res.rr.com", True, id="cpe-style"),
    pytest.param("pool-12.example", True, id="pool-word-number"),
    pytest.param("ppp.42.example.net", True, id="ppp-dot-number"),
    pytest.param("adsl7.example.net", True, id="adsl-number"),
    pytest.param("dynamic-7.example.net", True, id="dynamic-number"),
    pytest.param("mail.client.example", False, id="mail-host"),
    pytest.param("customer.example.com", False, id="customer-without-number"),
    pytest.param("pool.ntp.org", False, id="pool-without-number"),
    pytest.param("dynamic.example.net", False, id="dynamic-without-number"),
    pytest.param("mx1.example.com", False, id="mx1"),
    pytest.param("mail2.example.com", False, id="mail2"),
    pytest.param("smtp-out-1.example.com", False, id="one-number"),
    pytest.param("mx01.dc1.example.com", False, id="numbered-datacenter"),
    pytest.param("a1.b2.c3.d4.example", False, id="digits-inside-labels"),
    pytest.param("mta-1-2.example.com", False, id="two-numbers"),
]


@pytest.mark.parametrize(("name", "dynamic"), DEFAULT_DYNAMIC)
def test_default_dynamic_patterns(name: str, dynamic: bool) -> None:
    expected = {"DYNAMIC"} if dynamic else set()
    assert fired(RDNS_BOOK, Stage.CONNECTION, connection(rdns=confirmed(name))) == expected


def test_default_dynamic_patterns_match_their_documented_example() -> None:
    facts = connection(rdns=confirmed("host.10.2.0.192.example"))
    assert fired(RDNS_BOOK, Stage.CONNECTION, facts) == {"DYNAMIC"}


@pytest.mark.parametrize(
    ("patterns", "name", "dynamic"),
    [
        pytest.param(r"['\.pool\.isp\.example$']", "a7.pool.isp.example", True, id="custom-hit"),
        pytest.param(
            r"['\.pool\.isp\.example$']",
            "dsl-198-51-100-7.isp.example",
            False,
            id="custom-replaces-defaults",
        ),
        pytest.param(
            r"['\.pool\.isp\.example$', '^gw-']", "gw-3.example", True, id="any-of-several"
        ),
        pytest.param("[]", "dsl-198-51-100-7.isp.example", False, id="none-never-fires"),
    ],
)
def test_custom_dynamic_patterns(patterns: str, name: str, dynamic: bool) -> None:
    rulebook = book(
        rule("DYNAMIC", "rdns: dynamic"),
        prefix=f"reverse_dns: {{dynamic_patterns: {patterns}}}\n",
    )
    expected = {"DYNAMIC"} if dynamic else set()
    assert fired(rulebook, Stage.CONNECTION, connection(rdns=confirmed(name))) == expected


@pytest.mark.parametrize(
    ("rdns", "expected"),
    [
        pytest.param(confirmed("mx.bad.example"), {"RDNS_BAD"}, id="matches"),
        pytest.param(confirmed("mx.bad.example.org"), set(), id="anchored"),
        pytest.param(confirmed("mx.good.example"), set(), id="other-name"),
        pytest.param(ReverseDns(RdnsStatus.MISSING), set(), id="no-name"),
    ],
)
def test_rdns_matches(rdns: ReverseDns, expected: set[str]) -> None:
    rulebook = book(rule("RDNS_BAD", r"rdns_matches: '\.bad\.example$'"))
    assert fired(rulebook, Stage.CONNECTION, connection(rdns=rdns)) == expected
