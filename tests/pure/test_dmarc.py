"""DMARC (RFC 7489) in core/dmarc.py: records, the author domain, discovery, alignment, the
published policy with sp= and pct=, and hostile records that must give a defined result."""

from __future__ import annotations

import pytest

from spamgate.core.dmarc import (
    MAX_RECORD_CHARS,
    Alignment,
    AuthorDomain,
    AuthorProblem,
    DiscoveryState,
    Disposition,
    DmarcOutcome,
    DmarcRecord,
    Identifier,
    Method,
    PolicyDiscovery,
    RecordRejected,
    TxtLookup,
    TxtState,
    author_domain,
    discover_policy,
    evaluate,
    is_aligned,
    needs_fallback,
    parse_record,
    policy_names,
)

# --- parsing records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("v=DMARC1; p=reject", DmarcRecord(Disposition.REJECT), id="minimal"),
        pytest.param(
            "v=DMARC1;p=quarantine;sp=none;pct=25;adkim=s;aspf=s",
            DmarcRecord(
                Disposition.QUARANTINE,
                Disposition.NONE,
                25,
                Alignment.STRICT,
                Alignment.STRICT,
            ),
            id="every-tag-no-spaces",
        ),
        pytest.param(
            "  v = DMARC1 ;  P = Reject ; SP=Quarantine ; ADKIM = S ;  ",
            DmarcRecord(
                Disposition.REJECT, Disposition.QUARANTINE, dkim_alignment=Alignment.STRICT
            ),
            id="whitespace-and-case-of-names-and-keywords",
        ),
        pytest.param(
            "v=DMARC1; p=none; rua=mailto:d@example.com; fo=1; future=yes",
            DmarcRecord(Disposition.NONE),
            id="unknown-and-reporting-tags-ignored",
        ),
        pytest.param(
            "v=DMARC1; p=reject; p=none",
            DmarcRecord(Disposition.REJECT),
            id="repeated-tag-first-counts",
        ),
        pytest.param(
            "v=DMARC1; p=reject; pct=150; adkim=x; aspf=",
            DmarcRecord(Disposition.REJECT, ignored=("pct", "adkim", "aspf")),
            id="invalid-optional-values-take-defaults",
        ),
        pytest.param(
            "v=DMARC1; p=reject; pct=-5",
            DmarcRecord(Disposition.REJECT, ignored=("pct",)),
            id="negative-pct",
        ),
        pytest.param(
            "v=DMARC1; p=reject; pct=\u0661\u0660",
            DmarcRecord(Disposition.REJECT, ignored=("pct",)),
            id="non-ascii-digits-in-pct",
        ),
        pytest.param(
            "v=DMARC1; p=bogus; rua=mailto:agg@example.com",
            DmarcRecord(Disposition.NONE, invalid_policy=True),
            id="invalid-p-with-rua-is-p-none",
        ),
        pytest.param(
            "v=DMARC1; rua=mailto:agg@example.com",
            DmarcRecord(Disposition.NONE, invalid_policy=True),
            id="missing-p-with-rua-is-p-none",
        ),
        pytest.param(
            "v=DMARC1; p=reject; sp=maybe; rua=mailto:a@example.com",
            DmarcRecord(Disposition.NONE, invalid_policy=True),
            id="invalid-sp-with-rua-is-p-none",
        ),
        pytest.param(
            "v=DMARC1; p=reject; junk; pct=50",
            DmarcRecord(Disposition.REJECT, percent=50),
            id="tag-without-equals-ignored",
        ),
        pytest.param("v=DMARC1; p=bogus", RecordRejected, id="invalid-p-no-rua"),
        pytest.param("v=DMARC1", RecordRejected, id="no-p-no-rua"),
        pytest.param("v=DMARC1; p=reject; sp=x", RecordRejected, id="invalid-sp-no-rua"),
        pytest.param("v=dmarc1; p=reject", RecordRejected, id="version-value-is-case-sensitive"),
        pytest.param("p=reject; v=DMARC1", RecordRejected, id="version-not-first"),
        pytest.param("v=DMARC2; p=reject", RecordRejected, id="other-version"),
        pytest.param("v=spf1 -all", RecordRejected, id="spf-record"),
        pytest.param("", RecordRejected, id="empty"),
        pytest.param(
            "v=DMARC1; p=reject; " + "x" * MAX_RECORD_CHARS, RecordRejected, id="oversized"
        ),
        pytest.param("v=DMARC1; p=\udcff\x00;", RecordRejected, id="surrogate-and-nul"),
        pytest.param(
            "v=DMARC1; p=reject; " + "a=b;" * 10_000,
            RecordRejected,
            id="thousands-of-tags-over-the-length-bound",
        ),
    ],
)
def test_parse_record(text: str, expected: DmarcRecord | type[RecordRejected]) -> None:
    parsed = parse_record(text)
    if isinstance(expected, DmarcRecord):
        assert parsed == expected
    else:
        assert isinstance(parsed, RecordRejected)
        assert parsed.reason


def test_many_short_tags_are_read_up_to_the_tag_bound() -> None:
    # Under the length bound but over MAX_TAGS: tags past the bound are not looked at.
    text = "v=DMARC1; p=reject; " + "x=1;" * 60 + "pct=10"
    assert parse_record(text) == DmarcRecord(Disposition.REJECT)


# --- the author domain -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["Alice <alice@Example.COM>"], AuthorDomain("example.com"), id="one"),
        pytest.param(
            ["a@sub.example.com, b@SUB.example.com"],
            AuthorDomain("sub.example.com"),
            id="several-addresses-one-domain",
        ),
        pytest.param(["x@b\u00fccher.example"], AuthorDomain("xn--bcher-kva.example"), id="idn"),
        pytest.param([], AuthorProblem.NO_FROM, id="no-from"),
        pytest.param(["a@example.com", "b@example.com"], AuthorProblem.SEVERAL_FROM, id="two"),
        pytest.param(["a@example.com, b@example.net"], AuthorProblem.SEVERAL_DOMAINS, id="two-d"),
        pytest.param(["Alice"], AuthorProblem.MALFORMED_FROM, id="no-address"),
        pytest.param(["<>"], AuthorProblem.MALFORMED_FROM, id="null-address"),
        pytest.param(["undisclosed:;"], AuthorProblem.MALFORMED_FROM, id="empty-group"),
        pytest.param(["a@[192.0.2.1]"], AuthorProblem.MALFORMED_FROM, id="address-literal"),
        pytest.param(["a@example.com\x00"], AuthorProblem.MALFORMED_FROM, id="nul"),
        pytest.param(["a@" + "x" * 300 + ".com"], AuthorProblem.MALFORMED_FROM, id="long-label"),
    ],
)
def test_author_domain(values: list[str], expected: AuthorDomain | AuthorProblem) -> None:
    assert author_domain(values) == expected


# --- discovery ---------------------------------------------------------------------------------

REJECT = TxtLookup(TxtState.FOUND, ("v=DMARC1; p=reject; sp=quarantine",))
NOTHING = TxtLookup(TxtState.NO_RECORD)
TIMEOUT = TxtLookup(TxtState.TEMPORARY, detail="timeout")


def test_policy_names_for_a_subdomain_and_an_organizational_domain() -> None:
    assert policy_names("mail.example.co.uk") == (
        "_dmarc.mail.example.co.uk",
        "_dmarc.example.co.uk",
    )
    assert policy_names("example.com") == ("_dmarc.example.com", None)


@pytest.mark.parametrize(
    ("at_author", "at_org", "state", "policy_domain", "at_organization"),
    [
        pytest.param(REJECT, None, DiscoveryState.FOUND, "sub.example.com", False, id="at-author"),
        pytest.param(NOTHING, REJECT, DiscoveryState.FOUND, "example.com", True, id="fallback"),
        pytest.param(
            TxtLookup(TxtState.FOUND, ("v=spf1 -all", "google-site-verification=x")),
            REJECT,
            DiscoveryState.FOUND,
            "example.com",
            True,
            id="only-other-txt-at-author-falls-back",
        ),
        pytest.param(NOTHING, NOTHING, DiscoveryState.NONE, "", False, id="none-anywhere"),
        pytest.param(NOTHING, None, DiscoveryState.NONE, "", False, id="org-not-asked"),
        pytest.param(TIMEOUT, REJECT, DiscoveryState.TEMPERROR, "", False, id="author-timeout"),
        pytest.param(NOTHING, TIMEOUT, DiscoveryState.TEMPERROR, "", False, id="org-timeout"),
        pytest.param(
            TxtLookup(TxtState.PERMANENT, detail="ChainTooLong"),
            REJECT,
            DiscoveryState.PERMERROR,
            "",
            False,
            id="cname-loop",
        ),
        pytest.param(
            TxtLookup(TxtState.FOUND, ("v=DMARC1; p=reject", "v=DMARC1; p=none")),
            REJECT,
            DiscoveryState.NONE,
            "",
            False,
            id="two-records-end-discovery",
        ),
        pytest.param(
            TxtLookup(TxtState.FOUND, ("v=DMARC1; p=nonsense",)),
            REJECT,
            DiscoveryState.NONE,
            "",
            False,
            id="invalid-record-at-author-is-none-no-fallback",
        ),
    ],
)
def test_discover_policy(
    at_author: TxtLookup,
    at_org: TxtLookup | None,
    state: DiscoveryState,
    policy_domain: str,
    at_organization: bool,
) -> None:
    found = discover_policy("sub.example.com", at_author, at_org)
    assert (found.state, found.policy_domain, found.at_organization) == (
        state,
        policy_domain,
        at_organization,
    )
    assert found.reason or found.state is DiscoveryState.FOUND


# --- alignment and evaluation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "author", "mode", "aligned"),
    [
        ("example.com", "example.com", Alignment.STRICT, True),
        ("EXAMPLE.com.", "example.com", Alignment.STRICT, True),
        ("mail.example.com", "example.com", Alignment.STRICT, False),
        ("mail.example.com", "example.com", Alignment.RELAXED, True),
        ("mail.example.com", "news.example.com", Alignment.RELAXED, True),
        ("example.net", "example.com", Alignment.RELAXED, False),
        ("a.example.co.uk", "b.example.co.uk", Alignment.RELAXED, True),
        ("example.co.uk", "other.co.uk", Alignment.RELAXED, False),
        ("co.uk", "example.co.uk", Alignment.RELAXED, False),
        ("b\u00fccher.example", "xn--bcher-kva.example", Alignment.STRICT, True),
        ("", "example.com", Alignment.RELAXED, False),
        ("exa mple.com", "example.com", Alignment.RELAXED, False),
    ],
)
def test_is_aligned(identifier: str, author: str, mode: Alignment, aligned: bool) -> None:
    assert is_aligned(identifier, author, mode) is aligned


def found(
    record: str, policy_domain: str = "example.com", *, at_org: bool = False
) -> PolicyDiscovery:
    parsed = parse_record(record)
    assert isinstance(parsed, DmarcRecord)
    return PolicyDiscovery(DiscoveryState.FOUND, parsed, policy_domain, at_organization=at_org)


SPF_PASS = Identifier(Method.SPF, "bounce.example.com", passed=True)
SPF_FAIL = Identifier(Method.SPF, "example.com", passed=False)
DKIM_PASS = Identifier(Method.DKIM, "example.com", passed=True)
DKIM_OTHER = Identifier(Method.DKIM, "mailer.example.net", passed=True)
DKIM_FAIL = Identifier(Method.DKIM, "example.com", passed=False)
AUTHOR = AuthorDomain("example.com")
SUB_AUTHOR = AuthorDomain("sub.example.com")


@pytest.mark.parametrize(
    ("author", "record", "identifiers", "sample", "outcome"),
    [
        pytest.param(AUTHOR, found("v=DMARC1; p=reject"), [DKIM_PASS], 0, DmarcOutcome.PASS,
                     id="dkim-aligned"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject"), [SPF_PASS], 0, DmarcOutcome.PASS,
                     id="spf-relaxed-aligned"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject; aspf=s"), [SPF_PASS], 0,
                     DmarcOutcome.FAIL_REJECT, id="spf-strict-not-aligned"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject"), [SPF_FAIL, DKIM_FAIL], 0,
                     DmarcOutcome.FAIL_REJECT, id="aligned-domains-that-did-not-pass"),
        pytest.param(AUTHOR, found("v=DMARC1; p=quarantine"), [DKIM_OTHER], 0,
                     DmarcOutcome.FAIL_QUARANTINE, id="third-party-signature"),
        pytest.param(AUTHOR, found("v=DMARC1; p=none"), [], 0, DmarcOutcome.FAIL_NONE,
                     id="monitoring-policy"),
        pytest.param(SUB_AUTHOR, found("v=DMARC1; p=reject; sp=none", at_org=True), [], 0,
                     DmarcOutcome.FAIL_NONE, id="sp-for-a-subdomain-found-at-the-org"),
        pytest.param(SUB_AUTHOR, found("v=DMARC1; p=reject", at_org=True), [], 0,
                     DmarcOutcome.FAIL_REJECT, id="no-sp-means-p-for-subdomains"),
        pytest.param(SUB_AUTHOR, found("v=DMARC1; p=reject; sp=none", "sub.example.com"), [], 0,
                     DmarcOutcome.FAIL_REJECT, id="own-record-p-not-sp"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject; pct=30"), [], 29,
                     DmarcOutcome.FAIL_REJECT, id="pct-sampled-in"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject; pct=30"), [], 30,
                     DmarcOutcome.FAIL_QUARANTINE, id="pct-sampled-out-one-down"),
        pytest.param(AUTHOR, found("v=DMARC1; p=quarantine; pct=0"), [], 0,
                     DmarcOutcome.FAIL_NONE, id="pct-zero-quarantine-to-none"),
        pytest.param(AUTHOR, found("v=DMARC1; p=reject; pct=0"), [DKIM_PASS], 0,
                     DmarcOutcome.PASS, id="pass-ignores-pct"),
        pytest.param(AUTHOR, PolicyDiscovery(DiscoveryState.NONE, reason="no DMARC record"),
                     [DKIM_PASS], 0, DmarcOutcome.NONE, id="no-record"),
        pytest.param(AUTHOR, None, [], 0, DmarcOutcome.NONE, id="not-asked"),
        pytest.param(AUTHOR, PolicyDiscovery(DiscoveryState.TEMPERROR, reason="DNS: timeout"),
                     [DKIM_PASS], 0, DmarcOutcome.TEMPERROR, id="dns-temperror"),
        pytest.param(AUTHOR, PolicyDiscovery(DiscoveryState.PERMERROR, reason="DNS: loop"),
                     [DKIM_PASS], 0, DmarcOutcome.PERMERROR, id="dns-permerror"),
        pytest.param(AuthorProblem.SEVERAL_FROM, found("v=DMARC1; p=reject"), [DKIM_PASS], 0,
                     DmarcOutcome.PERMERROR, id="several-from-fields"),
    ],
)  # fmt: skip
def test_evaluate(
    author: AuthorDomain | AuthorProblem,
    record: PolicyDiscovery | None,
    identifiers: list[Identifier],
    sample: int,
    outcome: DmarcOutcome,
) -> None:
    result = evaluate(author, record, identifiers, sample)
    assert result.outcome is outcome
    assert result.reason
    assert len(result.checks) == (len(identifiers) if result.record else 0)


def test_a_result_says_what_aligned_and_what_applied() -> None:
    result = evaluate(
        SUB_AUTHOR,
        found("v=DMARC1; p=reject; sp=quarantine; pct=50", at_org=True),
        [SPF_FAIL, DKIM_OTHER],
        sample_point=75,
    )
    assert result.outcome is DmarcOutcome.FAIL_NONE
    assert result.outcome.status == "fail"
    assert (result.published, result.applied, result.sampled_out) == (
        Disposition.QUARANTINE,
        Disposition.NONE,
        True,
    )
    assert (result.author_domain, result.policy_domain) == ("sub.example.com", "example.com")
    assert [(c.method, c.aligned, c.reason) for c in result.checks] == [
        (Method.SPF, False, "did not pass"),
        (Method.DKIM, False, "other organization"),
    ]


def test_a_pass_names_the_identifier_that_aligned() -> None:
    result = evaluate(AUTHOR, found("v=DMARC1; p=reject; adkim=s"), [DKIM_OTHER, DKIM_PASS], 0)
    assert result.outcome.status == "pass"
    assert result.applied is None
    assert result.reason == "dkim aligned: example.com"
    assert [c.aligned for c in result.checks] == [False, True]
    assert result.checks[1].mode is Alignment.STRICT


def test_an_author_problem_is_named() -> None:
    result = evaluate(AuthorProblem.NO_FROM, None, [DKIM_PASS], 0)
    assert (result.outcome, result.author_problem) == (
        DmarcOutcome.PERMERROR,
        AuthorProblem.NO_FROM,
    )
    assert result.outcome.status == "permerror"


@pytest.mark.parametrize(
    ("at_author", "fallback"),
    [
        pytest.param(NOTHING, True, id="no-record"),
        pytest.param(TxtLookup(TxtState.FOUND, ("v=spf1 -all",)), True, id="only-other-txt"),
        pytest.param(REJECT, False, id="a-record"),
        pytest.param(TxtLookup(TxtState.FOUND, ("v=DMARC1; p=x",)), False, id="unusable-record"),
        pytest.param(TIMEOUT, False, id="temporary-error"),
        pytest.param(TxtLookup(TxtState.PERMANENT), False, id="permanent-error"),
    ],
)
def test_the_organizational_domain_is_asked_only_without_a_record(
    at_author: TxtLookup, fallback: bool
) -> None:
    assert needs_fallback(at_author) is fallback
