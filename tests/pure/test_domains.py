"""Domain helpers: tables of normal and hostile inputs, and totality over arbitrary strings."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from spamgate.core.domains import (
    bare_address,
    domain_of_address,
    domain_query_name,
    is_fqdn,
    is_ip_literal,
    normalize_domain,
    organizational_domain,
    same_organization,
)

LABEL_63 = "a" * 63
# 4 labels of 61 + 3 dots = 247; with ".abcde" 253, the most a name may have.
NAME_253 = ".".join(["b" * 61] * 4) + ".abcde"
NAME_254 = ".".join(["b" * 61] * 4) + ".abcdef"
HOSTILE = "\udcff\udc80"  # bytes that were not UTF-8, as surrogateescape decodes them


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("example.com", "example.com", id="plain"),
        pytest.param("  Mail.Example.COM.  ", "mail.example.com", id="strip-lower-final-dot"),
        pytest.param("example.com..", None, id="two-final-dots"),
        pytest.param(".example.com", None, id="leading-dot"),
        pytest.param("a..example.com", None, id="empty-label"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idn"),
        pytest.param("BÜCHER.Example", "xn--bcher-kva.example", id="idn-upper-case"),
        pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="a-label-kept"),
        pytest.param("XN--BCHER-KVA.example", "xn--bcher-kva.example", id="a-label-lowered"),
        pytest.param("例え.テスト", "xn--r8jz45g.xn--zckzah", id="idn-japanese"),
        pytest.param("пример.рф", "xn--e1afmkfd.xn--p1ai", id="idn-cyrillic"),
        pytest.param("example\u3002com", "example.com", id="ideographic-full-stop"),
        pytest.param("example\uff0ecom\uff0e", "example.com", id="fullwidth-dots"),
        pytest.param(
            "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com",
            "example.com",
            id="fullwidth-letters-mapped",
        ),
        # IDNA 2003 (the standard library's codec) maps sharp s to "ss"; IDNA 2008 would not.
        pytest.param("straße.de", "strasse.de", id="idna2003-sharp-s"),
        pytest.param("_dmarc.example.com", "_dmarc.example.com", id="underscore-as-postfix"),
        pytest.param("a-b.example", "a-b.example", id="inner-hyphen"),
        pytest.param("-ab.example", None, id="leading-hyphen"),
        pytest.param("ab-.example", None, id="trailing-hyphen"),
        pytest.param("192.0.2.1", "192.0.2.1", id="ip-passes-as-a-name"),
        pytest.param("localhost", "localhost", id="single-label"),
        pytest.param(f"{LABEL_63}.example", f"{LABEL_63}.example", id="label-63"),
        pytest.param(f"a{LABEL_63}.example", None, id="label-64"),
        pytest.param(NAME_253, NAME_253, id="name-253"),
        pytest.param(NAME_253 + ".", NAME_253, id="name-253-with-final-dot"),
        pytest.param(NAME_254, None, id="name-254"),
        pytest.param("ü" * 60 + ".example", None, id="idn-label-over-63-once-encoded"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="blank"),
        pytest.param(".", None, id="root"),
        pytest.param("exa mple.com", None, id="space"),
        pytest.param("exa\x00mple.com", None, id="nul"),
        pytest.param("example.com\x00", None, id="trailing-nul"),
        pytest.param("ex@mple.com", None, id="at-sign"),
        pytest.param("[192.0.2.1]", None, id="address-literal"),
        pytest.param("exa*mple.com", None, id="star"),
        pytest.param("*.example.com", None, id="wildcard"),
        pytest.param(f"bad{HOSTILE}.example", None, id="surrogates"),
        pytest.param("xn--bücher.example", None, id="ace-prefix-on-unicode"),
        pytest.param("a\u200bb.example", "ab.example", id="zero-width-space-mapped-out"),
        pytest.param("\u00ad.example", None, id="label-empty-after-nameprep"),
        pytest.param("\u202eevil.example", None, id="bidi-control-prohibited"),
        pytest.param("x" * 10_000, None, id="10k"),
        pytest.param("a." * 5_000 + "com", None, id="10k-of-labels"),
    ],
)
def test_normalize_domain(name: str, expected: str | None) -> None:
    assert normalize_domain(name) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("<User@Example.COM>", "example.com", id="angle-brackets"),
        pytest.param("user@example.com", "example.com", id="bare"),
        pytest.param(" <user@example.com> ", "example.com", id="spaces"),
        pytest.param('"quoted@local"@example.com', "example.com", id="quoted-local-with-at"),
        pytest.param('<"a\\"@b"@c.example>', "c.example", id="quoted-local-escaped-quote"),
        pytest.param('"no domain@x"', None, id="quoted-local-only"),
        pytest.param('"unterminated@example.com', None, id="unterminated-quote"),
        pytest.param("<@relay.example:user@example.com>", "example.com", id="source-route"),
        pytest.param(
            "<@a.example,@b.example:user@example.com>", "example.com", id="source-route-two-hops"
        ),
        pytest.param("<@relay.example>", None, id="route-without-mailbox"),
        pytest.param("user@bücher.example", "xn--bcher-kva.example", id="idn-domain"),
        pytest.param("user@Example.COM.", "example.com", id="final-dot"),
        pytest.param("a@b@example.com", "example.com", id="last-at-separates"),
        pytest.param("<>", None, id="null-sender"),
        pytest.param("", None, id="empty"),
        pytest.param("postmaster", None, id="no-at"),
        pytest.param("user@", None, id="empty-domain"),
        pytest.param("@example.com", None, id="route-like-without-colon"),
        pytest.param("user@[192.0.2.1]", None, id="ipv4-literal"),
        pytest.param("<user@[IPv6:2001:db8::1]>", None, id="ipv6-literal"),
        pytest.param("user@[garbage]", None, id="bracketed-garbage"),
        pytest.param("user@192.0.2.1", None, id="bare-ip-domain"),
        pytest.param("user@exa mple.com", None, id="space-in-domain"),
        pytest.param("user@example.com>", None, id="unbalanced-bracket"),
        pytest.param(f"user@{HOSTILE}.example", None, id="surrogates"),
        pytest.param("user@exa\x00mple.com", None, id="nul"),
        pytest.param("u" * 10_000 + "@example.com", None, id="10k"),
    ],
)
def test_domain_of_address(address: str, expected: str | None) -> None:
    assert domain_of_address(address) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("192.0.2.1", True, id="ipv4"),
        pytest.param("[192.0.2.1]", True, id="ipv4-literal"),
        pytest.param(" [192.0.2.1] ", True, id="ipv4-literal-spaces"),
        pytest.param("2001:db8::1", True, id="ipv6"),
        pytest.param("[IPv6:2001:db8::1]", True, id="ipv6-literal"),
        pytest.param("[ipv6:2001:DB8::1]", True, id="ipv6-tag-any-case"),
        pytest.param("[2001:db8::1]", True, id="ipv6-without-tag-lenient"),
        pytest.param("::ffff:192.0.2.1", True, id="ipv4-mapped"),
        pytest.param("[IPv6:192.0.2.1]", False, id="ipv6-tag-on-ipv4"),
        pytest.param("[ 192.0.2.1]", False, id="space-inside-brackets"),
        pytest.param("192.0.2.1.", False, id="final-dot"),
        pytest.param("192.0.2", False, id="three-octets"),
        pytest.param("192.000.2.1", False, id="leading-zeros"),
        pytest.param("0x7f.0.0.1", False, id="hex"),
        pytest.param("256.0.0.1", False, id="octet-over-255"),
        pytest.param("\uff11\uff19\uff12.0.2.1", False, id="fullwidth-digits"),
        pytest.param("[192.0.2.1", False, id="unclosed"),
        pytest.param("[]", False, id="empty-brackets"),
        pytest.param("example.com", False, id="name"),
        pytest.param("", False, id="empty"),
        pytest.param(HOSTILE, False, id="surrogates"),
        pytest.param("192.0.2.1\x00", False, id="nul"),
        pytest.param("1" * 10_000, False, id="10k"),
    ],
)
def test_is_ip_literal(name: str, expected: bool) -> None:
    assert is_ip_literal(name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("mail.example.com", True, id="fqdn"),
        pytest.param("Mail.Example.COM.", True, id="final-dot-and-case"),
        pytest.param("example.com", True, id="two-labels"),
        pytest.param("bücher.example", True, id="idn"),
        pytest.param("host-1.example.com", True, id="hyphen"),
        pytest.param("123.example.com", True, id="numeric-first-label"),
        pytest.param("localhost", False, id="single-label"),
        pytest.param("localhost.", False, id="single-label-final-dot"),
        pytest.param("host.123", False, id="numeric-tld"),
        pytest.param("192.0.2.1", False, id="ipv4"),
        pytest.param("[192.0.2.1]", False, id="ipv4-literal"),
        pytest.param("[IPv6:2001:db8::1]", False, id="ipv6-literal"),
        pytest.param("1.2.3.4.5", False, id="all-numeric"),
        pytest.param("host_name.example.com", True, id="underscore-as-postfix"),
        pytest.param("-host.example.com", False, id="leading-hyphen"),
        pytest.param("host..example.com", False, id="empty-label"),
        pytest.param("host .example.com", False, id="space"),
        pytest.param("", False, id="empty"),
        pytest.param(HOSTILE + ".com", False, id="surrogates"),
        pytest.param("a\x00.com", False, id="nul"),
        pytest.param(NAME_254, False, id="too-long"),
        pytest.param("x." * 5_000, False, id="10k"),
    ],
)
def test_is_fqdn(name: str, expected: bool) -> None:
    assert is_fqdn(name) is expected


@pytest.mark.parametrize(
    ("domain", "zone", "expected"),
    [
        pytest.param("example.com", "dbl.example.net", "example.com.dbl.example.net", id="plain"),
        pytest.param(
            "Example.COM.", "DBL.example.net.", "example.com.dbl.example.net", id="normalized"
        ),
        pytest.param(
            "bücher.example", "dbl.test", "xn--bcher-kva.example.dbl.test", id="idn-a-labels"
        ),
        pytest.param(
            "sub.example.co.uk", "dbl.test", "sub.example.co.uk.dbl.test", id="subdomain-kept"
        ),
        pytest.param("192.0.2.1", "dbl.test", None, id="ipv4"),
        pytest.param("[192.0.2.1]", "dbl.test", None, id="ipv4-literal"),
        pytest.param("2001:db8::1", "dbl.test", None, id="ipv6"),
        pytest.param("localhost", "dbl.test", None, id="single-label"),
        pytest.param(f"a{LABEL_63}.example", "dbl.test", None, id="label-64"),
        pytest.param(NAME_253, "dbl.test", None, id="query-over-253"),
        pytest.param(
            ".".join(["c" * 60] * 3) + ".example",
            "dbl.test",
            ".".join(["c" * 60] * 3) + ".example.dbl.test",
            id="long-but-fits",
        ),
        pytest.param("exa mple.com", "dbl.test", None, id="space"),
        pytest.param("example.com", "", None, id="empty-zone"),
        pytest.param("example.com", "bad zone", None, id="invalid-zone"),
        pytest.param("", "dbl.test", None, id="empty-domain"),
        pytest.param(HOSTILE + ".com", "dbl.test", None, id="surrogates"),
        pytest.param("x" * 10_000, "dbl.test", None, id="10k"),
    ],
)
def test_domain_query_name(domain: str, zone: str, expected: str | None) -> None:
    assert domain_query_name(domain, zone) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("www.example.com", "example.com", id="com"),
        pytest.param("example.com", "example.com", id="already-registrable"),
        pytest.param("a.b.c.example.com", "example.com", id="deep"),
        pytest.param("mail.example.co.uk", "example.co.uk", id="co-uk"),
        pytest.param("example.co.uk", "example.co.uk", id="co-uk-registrable"),
        pytest.param("co.uk", "co.uk", id="public-suffix-itself"),
        pytest.param("uk", "uk", id="tld"),
        pytest.param("smtp.mail.example.com.au", "example.com.au", id="com-au"),
        pytest.param("foo.bar.example", "bar.example", id="unknown-tld-is-a-suffix"),
        pytest.param("user.github.io", "user.github.io", id="private-section"),
        pytest.param("www.city.kawasaki.jp", "city.kawasaki.jp", id="exception-rule"),
        pytest.param("www.bücher.de", "xn--bcher-kva.de", id="idn-label"),
        pytest.param("www.example.рф", "example.xn--p1ai", id="idn-tld"),
        pytest.param("WWW.Example.COM.", "example.com", id="normalized"),
        pytest.param("192.0.2.1", "192.0.2.1", id="ipv4"),
        pytest.param("[IPv6:2001:DB8::1]", "2001:db8::1", id="ipv6-literal"),
        pytest.param("", "", id="empty"),
        pytest.param("a..b", "", id="invalid"),
        pytest.param(HOSTILE, "", id="surrogates"),
        pytest.param("x" * 10_000, "", id="10k"),
    ],
)
def test_organizational_domain(name: str, expected: str) -> None:
    assert organizational_domain(name) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param("mail.example.com", "example.com", True, id="host-and-domain"),
        pytest.param("mx1.example.co.uk", "WWW.Example.CO.UK.", True, id="co-uk-normalized"),
        pytest.param("example.co.uk", "other.co.uk", False, id="co-uk-different-owners"),
        pytest.param("a.github.io", "b.github.io", False, id="private-suffix-different-owners"),
        pytest.param("mail.bücher.de", "xn--bcher-kva.de", True, id="idn-forms"),
        pytest.param("example.com", "example.net", False, id="different-tld"),
        pytest.param("co.uk", "co.uk", True, id="same-public-suffix"),
        pytest.param("192.0.2.1", "[192.0.2.1]", True, id="same-address"),
        pytest.param("", "", False, id="both-empty"),
        pytest.param("a..b", "a..b", False, id="both-invalid"),
        pytest.param(HOSTILE, HOSTILE, False, id="both-surrogates"),
    ],
)
def test_same_organization(a: str, b: str, expected: bool) -> None:
    assert same_organization(a, b) is expected


# --- totality ----------------------------------------------------------------------------------

FUNCTIONS: list[tuple[str, Callable[[str], object]]] = [
    ("normalize_domain", normalize_domain),
    ("domain_of_address", domain_of_address),
    ("is_ip_literal", is_ip_literal),
    ("is_fqdn", is_fqdn),
    ("organizational_domain", organizational_domain),
    ("domain_query_name", lambda text: domain_query_name(text, "dbl.test")),
    ("same_organization", lambda text: same_organization(text, "example.com")),
]

AWKWARD = [
    "",
    ".",
    "..",
    "@",
    "<>",
    "<",
    ">",
    "[",
    "]",
    "[]",
    "[IPv6:]",
    '"',
    '"@',
    "\\",
    '"\\',
    "@:",
    "\x00",
    "\x00" * 100,
    "\udcff",
    "\ud800",
    "\U0010ffff",
    "xn--",
    "xn--.com",
    "xn--a.com",
    "\u3002",
    "\u00ad" * 64,
    "ü" * 300,
    "a." * 130,
    "a" * 254,
    "%" * 100,
    "\r\n",
    "\t",
    "x" * 10_000,
    "@" * 10_000,
    "[" + "1" * 10_000 + "]",
    "<" + "@a:" * 3_000 + ">",
    '"' + "\\" * 10_000,
    bytes(range(256)).decode("latin-1"),
    bytes(range(128, 256)).decode("utf-8", "surrogateescape"),
]


@pytest.mark.parametrize(
    "text", [pytest.param(t, id=f"awkward-{i}") for i, t in enumerate(AWKWARD)]
)
@pytest.mark.parametrize(("function"), [pytest.param(f, id=name) for name, f in FUNCTIONS])
def test_every_function_is_total_and_fast(function: Callable[[str], object], text: str) -> None:
    started = time.monotonic()
    function(text)  # must not raise
    # Catastrophic backtracking or a quadratic walk over 10,000 characters takes seconds; a
    # busy CI machine can stall one call for 0.1 s (it did, at 0.087 s), so the bound is wide.
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("address", "bare"),
    [
        pytest.param("<User@Example.COM>", "user@example.com", id="brackets-and-case"),
        pytest.param('<"postmaster"@example.com>', "postmaster@example.com", id="quoted-atom"),
        pytest.param('<"Abuse"@example.com>', "abuse@example.com", id="quoted-atom-case"),
        pytest.param('<"a\\b"@example.com>', "ab@example.com", id="quoted-pair"),
        pytest.param('<"john doe"@example.com>', '"john doe"@example.com', id="needs-quotes"),
        pytest.param('<"a..b"@example.com>', '"a..b"@example.com', id="not-a-dot-atom"),
        pytest.param("<>", "", id="null-sender"),
        pytest.param(" postmaster ", "postmaster", id="no-domain"),
    ],
)
def test_bare_address(address: str, bare: str) -> None:
    """Addresses as the MTA resolves them: a quoted local part that needs no quotes is the
    same mailbox unquoted (RFC 5321 4.1.2)."""
    assert bare_address(address) == bare
