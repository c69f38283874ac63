"""The SPF evaluator (core/spf.py) against a dict of DNS records: parsing, macros, limits."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from spamgate.core.spf import (
    DOMAIN_MACROS,
    EXPLANATION_MACROS,
    DnsQuestion,
    DnsReply,
    MacroValues,
    Mechanism,
    Qualifier,
    ReplyKind,
    SpfPermError,
    SpfResult,
    SpfVerdict,
    check_host,
    evaluate_with,
    expand,
    helo_identity,
    mail_from_identity,
    parse_record,
    smtp_facts,
)


@dataclass
class FakeDns:
    """Records by (name, type); a name with none of any type does not exist (NXDOMAIN), a
    type it lacks is NODATA, `failing` names answer ERROR. Counts the questions asked."""

    records: Mapping[tuple[str, str], tuple[str, ...]]
    failing: frozenset[str] = frozenset()
    asked: Counter[tuple[str, str]] = field(default_factory=Counter)

    def answer(self, question: DnsQuestion) -> DnsReply:
        name = question.qname.lower()
        self.asked[name, question.rdtype] += 1
        if name in self.failing:
            return DnsReply(ReplyKind.ERROR, detail="timeout")
        found = self.records.get((name, question.rdtype))
        if found:
            return DnsReply(ReplyKind.RECORDS, found)
        if any(key[0] == name for key in self.records):
            return DnsReply(ReplyKind.NODATA)
        return DnsReply(ReplyKind.NXDOMAIN)


def spf(
    records: Mapping[tuple[str, str], tuple[str, ...]],
    client: str = "192.0.2.10",
    mail_from: str = "alice@example.com",
    helo: str = "mail.example.com",
    failing: frozenset[str] = frozenset(),
) -> SpfVerdict:
    dns = FakeDns(records, failing)
    facts = smtp_facts(client, helo, receiver="mx.example.net", timestamp=1700000000)
    return evaluate_with(check_host(facts, mail_from_identity(mail_from, helo)), dns.answer)


def txt(record: str, name: str = "example.com") -> dict[tuple[str, str], tuple[str, ...]]:
    return {(name, "TXT"): (record,)}


# --- parsing -------------------------------------------------------------------------------


def test_a_record_parses_into_its_directives_and_modifiers() -> None:
    record = parse_record("v=spf1 ip4:192.0.2.0/24 -a:mail.%{d}/28//64 ~mx ?all exp=why.%{d}")
    assert [(d.qualifier, d.mechanism) for d in record.directives] == [
        (Qualifier.PASS, Mechanism.IP4),
        (Qualifier.FAIL, Mechanism.A),
        (Qualifier.SOFTFAIL, Mechanism.MX),
        (Qualifier.NEUTRAL, Mechanism.ALL),
    ]
    a = record.directives[1]
    assert (a.domain_spec, a.cidr4, a.cidr6) == ("mail.%{d}", 28, 64)
    assert record.directives[0].network == ipaddress.ip_network("192.0.2.0/24")
    assert record.explanation == "why.%{d}"
    assert record.redirect is None


@pytest.mark.parametrize(
    "record",
    [
        pytest.param("v=spf1 ip4:192.0.2.300", id="ip4-out-of-range"),
        pytest.param("v=spf1 ip4:192.0.2.1/33", id="ip4-prefix-too-long"),
        pytest.param("v=spf1 ip4:192.0.2.1/024", id="prefix-leading-zero"),
        pytest.param("v=spf1 ip6:2001:db8::/129", id="ip6-prefix-too-long"),
        pytest.param("v=spf1 a:example.123", id="numeric-top-label"),
        pytest.param("v=spf1 a:example", id="single-label-domain"),
        pytest.param("v=spf1 include", id="include-without-domain"),
        pytest.param("v=spf1 exists:", id="exists-empty"),
        pytest.param("v=spf1 foo:example.com", id="unknown-mechanism"),
        pytest.param("v=spf1 -all/24", id="all-with-argument"),
        pytest.param("v=spf1 redirect=a.example redirect=b.example", id="two-redirects"),
        pytest.param("v=spf1 exp=a.example exp=b.example", id="two-exps"),
        pytest.param("v=spf1 a:%{x}.example.com", id="unknown-macro"),
        pytest.param("v=spf1 a:%{c}.example.com", id="explanation-macro-in-domain"),
        pytest.param("v=spf1 a:%{d0}.example.com", id="zero-labels"),
        pytest.param("v=spf1 a:50%.example.com", id="lone-percent"),
        pytest.param("v=spf1 a:example.com\tmx", id="tab-separated"),
        pytest.param("v=spf1 a:bücher.example", id="non-ascii"),
        pytest.param("v=spf1 -all moo=%{x}", id="unknown-modifier-bad-macro"),
    ],
)
def test_a_syntax_error_anywhere_is_permerror(record: str) -> None:
    with pytest.raises(SpfPermError):
        parse_record(record)
    # ... and the check says so, even though -all would have matched first.
    verdict = spf(txt(record.replace("v=spf1 ", "v=spf1 -all ")))
    assert verdict.result is SpfResult.PERMERROR


def test_unknown_modifiers_are_ignored() -> None:
    assert spf(txt("v=spf1 moo.cow-2=%{d} -all")).result is SpfResult.FAIL


@pytest.mark.parametrize(
    ("records", "result"),
    [
        pytest.param(("V=SPF1 -all",), SpfResult.FAIL, id="version-any-case"),
        pytest.param(("v=spf10 -all",), SpfResult.NONE, id="spf10-is-not-spf1"),
        pytest.param(("v=spf1 -all", "v=spf1 +all"), SpfResult.PERMERROR, id="two-records"),
        pytest.param(("v=spf1 -all", "google-site-verification=x"), SpfResult.FAIL, id="other-txt"),
        pytest.param(("v=spf1",), SpfResult.NEUTRAL, id="no-terms-is-neutral"),
        pytest.param(("v=spf1   -all  ",), SpfResult.FAIL, id="extra-spaces"),
    ],
)
def test_record_selection(records: tuple[str, ...], result: SpfResult) -> None:
    assert spf({("example.com", "TXT"): records}).result is result


# --- macros --------------------------------------------------------------------------------


def macro(text: str, client: str = "192.0.2.3", letters: frozenset[str] = DOMAIN_MACROS) -> str:
    facts = smtp_facts(client, "mx.example.org", receiver="mx.example.net", timestamp=1234)
    values = MacroValues(facts, "strong-bad@email.example.com", "email.example.com")
    return evaluate_with(expand(text, values, letters), FakeDns({}).answer)


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        # RFC 7208 7.4's examples.
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{h}", "mx.example.org"),
        ("%%%_%-", "% %20"),
        ("%{S}", "strong-bad%40email.example.com"),  # upper case: URL-escaped
    ],
)
def test_macro_expansion(text: str, expanded: str) -> None:
    assert macro(text) == expanded


def test_ipv6_macros_are_nibbles() -> None:
    # RFC 7208 7.4's IPv6 example.
    assert macro("%{ir}.%{v}._spf.%{d2}", client="2001:db8::cb01") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_explanation_macros_only_in_explanations() -> None:
    assert macro("%{c}/%{r}/%{t}", client="2001:db8::1", letters=EXPLANATION_MACROS) == (
        "2001:db8::1/mx.example.net/1234"
    )
    with pytest.raises(SpfPermError):
        macro("%{r}")


def test_p_macro_asks_for_the_validated_name() -> None:
    records = {
        ("3.2.0.192.in-addr.arpa", "PTR"): ("mail.email.example.com",),
        ("mail.email.example.com", "A"): ("192.0.2.3",),
    }
    facts = smtp_facts("192.0.2.3", "mx.example.org")
    values = MacroValues(facts, "a@email.example.com", "email.example.com")
    expansion = expand("%{p}", values, DOMAIN_MACROS)
    assert evaluate_with(expansion, FakeDns(records).answer) == "mail.email.example.com"


# --- evaluation ----------------------------------------------------------------------------


MX_RECORDS = {
    ("example.com", "TXT"): ("v=spf1 mx/24 -all",),
    ("example.com", "MX"): ("10 mx1.example.com", "20 mx2.example.com"),
    ("mx1.example.com", "A"): ("198.51.100.1",),
    ("mx2.example.com", "A"): ("203.0.113.5",),
}


@pytest.mark.parametrize(
    ("records", "client", "result", "mechanism"),
    [
        pytest.param(txt("v=spf1 ip4:192.0.2.0/24 -all"), "192.0.2.10", "pass", "ip4:192.0.2.0/24"),
        pytest.param(txt("v=spf1 ip4:192.0.2.0/24 -all"), "192.0.3.10", "fail", "-all"),
        pytest.param(txt("v=spf1 ip4:192.0.2.0/24 ~all"), "192.0.3.10", "softfail", "~all"),
        pytest.param(txt("v=spf1 ip4:192.0.2.0/24"), "192.0.3.10", "neutral", ""),
        pytest.param(
            txt("v=spf1 ip4:192.0.2.0/24 -all"), "::ffff:192.0.2.10", "pass", "ip4:192.0.2.0/24"
        ),
        pytest.param(
            txt("v=spf1 ip6:2001:db8::/32 -all"), "2001:db8:1::1", "pass", "ip6:2001:db8::/32"
        ),
        pytest.param(txt("v=spf1 ip6:::/0 -all"), "192.0.2.10", "fail", "-all"),
        pytest.param(MX_RECORDS, "198.51.100.200", "pass", "mx/24"),
        pytest.param(MX_RECORDS, "203.0.113.77", "pass", "mx/24"),
        pytest.param(MX_RECORDS, "192.0.2.1", "fail", "-all"),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 a//64 -all",),
                ("example.com", "AAAA"): ("2001:db8:5::1",),
            },
            "2001:db8:5::abcd",
            "pass",
            "a//64",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 exists:%{ir}.allow.example.com -all",),
                ("10.2.0.192.allow.example.com", "A"): ("127.0.0.2",),
            },
            "192.0.2.10",
            "pass",
            "exists:%{ir}.allow.example.com",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 ptr -all",),
                ("10.2.0.192.in-addr.arpa", "PTR"): ("evil.example.org", "out.example.com"),
                ("out.example.com", "A"): ("192.0.2.10",),
                ("evil.example.org", "A"): ("192.0.2.10",),
            },
            "192.0.2.10",
            "pass",
            "ptr",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 ptr -all",),
                ("10.2.0.192.in-addr.arpa", "PTR"): ("out.example.com",),
                ("out.example.com", "A"): ("198.51.100.1",),  # does not confirm
            },
            "192.0.2.10",
            "fail",
            "-all",
        ),
    ],
)
def test_mechanisms(
    records: dict[tuple[str, str], tuple[str, ...]], client: str, result: str, mechanism: str
) -> None:
    verdict = spf(records, client=client)
    assert (verdict.result.value, verdict.mechanism) == (result, mechanism)


def test_mx_addresses_are_asked_together() -> None:
    # Driven by hand to see the batches: a driver sends each batch's questions together.
    dns = FakeDns(MX_RECORDS)
    facts = smtp_facts("192.0.2.1", "mail.example.com")
    evaluation = check_host(facts, mail_from_identity("a@example.com", "h"))
    batches: list[tuple[str, ...]] = []
    verdict = None
    batch = next(evaluation)
    try:
        for _ in range(10):
            batches.append(tuple(f"{q.qname}/{q.rdtype}" for q in batch))
            batch = evaluation.send(tuple(dns.answer(q) for q in batch))
    except StopIteration as done:
        verdict = done.value
    assert verdict is not None
    assert verdict.result is SpfResult.FAIL
    assert batches == [
        ("example.com/TXT",),
        ("example.com/MX",),
        ("mx1.example.com/A", "mx2.example.com/A"),
    ]


INCLUDES = {
    ("example.com", "TXT"): ("v=spf1 include:_spf.example.net -all",),
    ("_spf.example.net", "TXT"): ("v=spf1 ip4:198.51.100.0/24 ?all",),
}


@pytest.mark.parametrize(
    ("records", "result", "reason_part"),
    [
        pytest.param(INCLUDES, "fail", "", id="include-neutral-does-not-match"),
        pytest.param(
            txt("v=spf1 include:nowhere.example.net -all"),
            "permerror",
            "include:nowhere.example.net",
            id="include-of-no-record",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 redirect=_spf.example.net",),
                ("_spf.example.net", "TXT"): ("v=spf1 -all",),
            },
            "fail",
            "",
            id="redirect",
        ),
        pytest.param(
            txt("v=spf1 redirect=nowhere.example.net"), "permerror", "redirect", id="redirect-none"
        ),
        pytest.param(
            txt("v=spf1 include:example.com -all"), "permerror", "more than 10", id="include-loop"
        ),
        pytest.param(
            txt("v=spf1 redirect=example.com"), "permerror", "more than 10", id="redirect-loop"
        ),
        pytest.param(
            txt("v=spf1 a:h0.example.com a:h1.example.com -all"), "fail", "", id="two-void-lookups"
        ),
        pytest.param(
            txt("v=spf1 a:h0.example.com a:h1.example.com mx:h2.example.com -all"),
            "permerror",
            "more than 2 void lookups",
            id="three-void-lookups",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): (
                    "v=spf1 " + " ".join(f"a:h{i}.example.com" for i in range(11)) + " -all",
                ),
                **{(f"h{i}.example.com", "A"): ("198.51.100.1",) for i in range(11)},
            },
            "permerror",
            "more than 10 DNS-querying terms",
            id="eleven-terms",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 mx -all",),
                ("example.com", "MX"): tuple(f"10 mx{i}.example.com" for i in range(11)),
            },
            "permerror",
            "more than 10 MX names",
            id="eleven-mx-names",
        ),
    ],
)
def test_include_redirect_and_limits(
    records: dict[tuple[str, str], tuple[str, ...]], result: str, reason_part: str
) -> None:
    verdict = spf(records, client="192.0.2.10")
    assert verdict.result.value == result
    assert reason_part in verdict.reason


def test_ten_terms_are_allowed() -> None:
    record = "v=spf1 " + " ".join(f"a:h{i}.example.com" for i in range(10)) + " -all"
    records = {("example.com", "TXT"): (record,)}
    records |= {(f"h{i}.example.com", "A"): ("198.51.100.1",) for i in range(10)}
    assert spf(records).result is SpfResult.FAIL


def test_only_the_first_ten_ptr_names_are_checked() -> None:
    names = tuple(f"h{i:02}.example.com" for i in range(12))
    records = {
        ("example.com", "TXT"): ("v=spf1 ptr -all",),
        ("10.2.0.192.in-addr.arpa", "PTR"): names,
        ("h11.example.com", "A"): ("192.0.2.10",),  # the twelfth: never looked up
    }
    dns = FakeDns(records)
    facts = smtp_facts("192.0.2.10", "h")
    verdict = evaluate_with(check_host(facts, mail_from_identity("a@example.com", "h")), dns.answer)
    assert verdict.result is SpfResult.FAIL
    assert dns.asked["h09.example.com", "A"] == 1
    assert dns.asked["h10.example.com", "A"] == 0


@pytest.mark.parametrize(
    ("failing", "result"),
    [
        pytest.param(frozenset({"example.com"}), "temperror", id="record-lookup"),
        pytest.param(frozenset({"mx1.example.com"}), "temperror", id="mx-address-lookup"),
    ],
)
def test_a_failed_lookup_is_temperror(failing: frozenset[str], result: str) -> None:
    verdict = spf(MX_RECORDS, client="192.0.2.1", failing=failing)
    assert verdict.result.value == result
    assert "failed" in verdict.reason


@pytest.mark.parametrize(
    ("mail_from", "helo", "domain"),
    [
        pytest.param("", "a1", "a1", id="null-sender-single-label-helo"),
        pytest.param("x@[192.0.2.1]", "h.example.com", "[192.0.2.1]", id="domain-literal"),
        pytest.param("x@a..example.com", "h.example.com", "a..example.com", id="empty-label"),
        pytest.param("x@" + "a" * 64 + ".example.com", "h", "a" * 64 + ".example.com", id="long"),
    ],
)
def test_a_domain_that_cannot_have_a_policy_is_none_without_a_lookup(
    mail_from: str, helo: str, domain: str
) -> None:
    dns = FakeDns({})
    facts = smtp_facts("192.0.2.1", helo)
    verdict = evaluate_with(check_host(facts, mail_from_identity(mail_from, helo)), dns.answer)
    assert (verdict.result, verdict.domain) == (SpfResult.NONE, domain)
    assert not dns.asked


def test_identities() -> None:
    assert mail_from_identity("<alice@example.com>", "h.example.net").domain == "example.com"
    null = mail_from_identity("<>", "h.example.net")
    assert (null.domain, null.sender) == ("h.example.net", "postmaster@h.example.net")
    assert mail_from_identity("@example.com", "h").sender == "postmaster@example.com"
    assert helo_identity("h.example.net").sender == "postmaster@h.example.net"


# --- explanations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "explanation"),
    [
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 -all exp=why.example.com",),
                ("why.example.com", "TXT"): ("%{i} may not send for %{d} (see %{r})",),
            },
            "192.0.2.10 may not send for example.com (see mx.example.net)",
            id="exp",
        ),
        pytest.param(
            txt("v=spf1 -all"),
            "example.com does not allow 192.0.2.10 to send its mail (SPF)",
            id="default",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 -all exp=why.example.com",),
                ("why.example.com", "TXT"): ("one", "two"),
            },
            "example.com does not allow 192.0.2.10 to send its mail (SPF)",
            id="two-records-default",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 -all exp=why.example.com",),
                ("why.example.com", "TXT"): ("bad %{x} macro",),
            },
            "example.com does not allow 192.0.2.10 to send its mail (SPF)",
            id="bad-macro-default",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 include:inc.example.com -all",),
                ("inc.example.com", "TXT"): ("v=spf1 -all exp=why.inc.example.com",),
                ("why.inc.example.com", "TXT"): ("not this one",),
            },
            "example.com does not allow 192.0.2.10 to send its mail (SPF)",
            id="include-exp-ignored",
        ),
        pytest.param(
            {
                ("example.com", "TXT"): ("v=spf1 exp=mine.example.com redirect=r.example.com",),
                ("r.example.com", "TXT"): ("v=spf1 -all exp=why.r.example.com",),
                ("why.r.example.com", "TXT"): ("from %{d}",),
                ("mine.example.com", "TXT"): ("not this one",),
            },
            "from r.example.com",
            id="redirect-target-exp",
        ),
    ],
)
def test_explanations(records: dict[tuple[str, str], tuple[str, ...]], explanation: str) -> None:
    verdict = spf(records)
    assert verdict.result is SpfResult.FAIL
    assert verdict.explanation == explanation


def test_only_a_fail_is_explained() -> None:
    records = {
        ("example.com", "TXT"): ("v=spf1 ~all exp=why.example.com",),
        ("why.example.com", "TXT"): ("no",),
    }
    assert spf(records).explanation == ""
