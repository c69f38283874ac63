"""Addresses in From, Sender, Reply-To, To and Cc on hostile values: well-formed and
malformed, agreeing with the standard library's headerregistry; every result pinned."""

from __future__ import annotations

from email.errors import ObsoleteHeaderDefect
from email.policy import default as default_policy

import pytest

from spamgate.core.headers import MAX_ADDRESS_CHARS, header_addresses, unfold

# --- header_addresses --------------------------------------------------------------------------

WELL_FORMED_ADDRESSES = [
    pytest.param("user@example.com", ("user@example.com",), id="bare"),
    pytest.param("John <John@EXAMPLE.com>", ("John@example.com",), id="domain-lower-cased"),
    pytest.param('"Doe, John" <jd@example.com>', ("jd@example.com",), id="quoted-display-name"),
    pytest.param("=?utf-8?B?Sm9obg==?= <j@x.org>", ("j@x.org",), id="encoded-display-name"),
    pytest.param("a@b.example, d@e.example", ("a@b.example", "d@e.example"), id="two"),
    pytest.param(
        "Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
        ("mary@x.test", "jdoe@example.org", "one@y.test"),
        id="rfc5322-appendix-a-1-2",
    ),
    pytest.param(
        "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
        ("c@a.test", "joe@where.test", "jdoe@one.test"),
        id="group",
    ),
    pytest.param("undisclosed-recipients:;", (), id="empty-group"),
    pytest.param("g1:;, g2: a@b.example;", ("a@b.example",), id="two-groups"),
    pytest.param("user@example.com (comment)", ("user@example.com",), id="comment"),
    pytest.param(
        "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
        ("pete@silly.test",),
        id="rfc5322-appendix-a-5-comments",
    ),
    pytest.param("((((a))))a@b.example", ("a@b.example",), id="nested-comments"),
    pytest.param("a@b.example (x (y) z)", ("a@b.example",), id="comment-nested-after"),
    pytest.param('"john doe"@example.com', ('"john doe"@example.com',), id="quoted-local"),
    pytest.param('"john"@example.com', ("john@example.com",), id="needless-quotes-dropped"),
    pytest.param('"a\\"b"@x.example', ('"a\\"b"@x.example',), id="quoted-pair-in-local"),
    pytest.param("first.last@example.com", ("first.last@example.com",), id="dot-atom"),
    pytest.param("CaseKept@Example.COM", ("CaseKept@example.com",), id="local-case-kept"),
    pytest.param("a . b @ c . example", ("a.b@c.example",), id="obs-white-space-around-dots"),
    pytest.param("J. Smith <j@x.example>", ("j@x.example",), id="obs-phrase-dot"),
    pytest.param(
        "<@relay.example,@other.example:user@b.example>", ("user@b.example",), id="obs-route"
    ),
    pytest.param("a@b.example,,d@e.example", ("a@b.example", "d@e.example"), id="obs-empty"),
    pytest.param(", a@b.example ,", ("a@b.example",), id="obs-empty-ends"),
    pytest.param("user@[192.0.2.1]", ("user@[192.0.2.1]",), id="domain-literal"),
    pytest.param("ü@BÜCHER.example", ("ü@bücher.example",), id="rfc6532-utf8"),
    pytest.param("J\udcff <j@x.example>", ("j@x.example",), id="non-utf8-display-name"),
    pytest.param("John\r\n <a@b.example>", ("a@b.example",), id="folded"),
    pytest.param(
        '"Joe Q. Public" <john.q.public@example.com>',
        ("john.q.public@example.com",),
        id="rfc5322-appendix-a-1-1",
    ),
    pytest.param(
        "!#$%&'*+-/=?^_`{|}~@example.com", ("!#$%&'*+-/=?^_`{|}~@example.com",), id="atext"
    ),
]

MALFORMED_ADDRESSES = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("(just a comment)", id="only-comment"),
    pytest.param(",", id="only-comma"),
    pytest.param("John Doe", id="display-name-only"),
    pytest.param("user", id="no-domain"),
    pytest.param("user@", id="empty-domain"),
    pytest.param("@example.com", id="empty-local"),
    pytest.param("<>", id="null-angle-addr"),
    pytest.param("John <>", id="named-null-angle-addr"),
    pytest.param("<user@example.com", id="unclosed-angle"),
    pytest.param("user@example.com>", id="stray-close-angle"),
    pytest.param("<<user@example.com>>", id="double-angle"),
    pytest.param('"unbalanced <a@b.example>', id="unclosed-quote"),
    pytest.param("a@b.example (unclosed", id="unclosed-comment"),
    pytest.param("a@b.example ((x)", id="unclosed-nested-comment"),
    pytest.param("a@b.example)", id="stray-close-paren"),
    # CVE-2023-27043: the lenient getaddresses reads this as alice@example.org.
    pytest.param("alice@example.org)<bob@example.org>", id="cve-2023-27043"),
    pytest.param("a@b@c.example", id="two-ats"),
    pytest.param("John <a@b.example> extra", id="junk-after"),
    pytest.param("<a@b.example> <d@e.example>", id="two-without-comma"),
    pytest.param("joe@example.com <joe@example.com>", id="addr-spec-then-angle"),
    pytest.param("a@b.example;", id="stray-semicolon"),
    pytest.param("grp: a@b.example", id="unterminated-group"),
    pytest.param("x: y: a@b.example;;", id="nested-group"),
    pytest.param(".:;", id="group-without-name"),
    pytest.param("user@exa mple.com", id="space-in-domain"),
    pytest.param("us er@example.com", id="space-in-local"),
    pytest.param("a.@b.example", id="trailing-dot-local"),
    pytest.param(".a@b.example", id="leading-dot-local"),
    pytest.param("a..b@c.example", id="double-dot-local"),
    pytest.param("user@example.com.", id="trailing-dot-domain"),
    pytest.param("user@.example.com", id="leading-dot-domain"),
    pytest.param('a"b@c.example', id="quote-inside-atom"),
    pytest.param("a\\b@c.example", id="backslash-outside-quotes"),
    pytest.param("a@[1.2.3.4", id="unclosed-literal"),
    pytest.param("a@b.example]", id="stray-bracket"),
    pytest.param("<@a@b:x@y.example>", id="bad-route"),
    pytest.param("a@b.example\x00", id="nul"),
    pytest.param("a@b.example\r\nc@d.example", id="bare-line-break"),
    pytest.param("a@b.example\x07", id="control-character"),
    pytest.param("j\udcff@x.example", id="non-utf8-in-local"),
    pytest.param("j@x\udcff.example", id="non-utf8-in-domain"),
]


@pytest.mark.parametrize(("value", "expected"), WELL_FORMED_ADDRESSES)
def test_header_addresses(value: str, expected: tuple[str, ...]) -> None:
    assert header_addresses(value) == expected


@pytest.mark.parametrize("value", MALFORMED_ADDRESSES)
def test_malformed_addresses(value: str) -> None:
    assert header_addresses(value) is None
    assert header_addresses(value, mailbox_required=True) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("undisclosed-recipients:;", None, id="empty-group"),
        pytest.param("g1:;, g2:;", None, id="two-empty-groups"),
        pytest.param("g: a@b.example;", ("a@b.example",), id="group-with-member"),
        pytest.param("a@b.example", ("a@b.example",), id="mailbox"),
    ],
)
def test_a_mailbox_can_be_required(value: str, expected: tuple[str, ...] | None) -> None:
    assert header_addresses(value, mailbox_required=True) == expected


# headerregistry calls these defective (NonASCIILocalPartDefect, UndecodableBytesDefect); we
# accept them: RFC 6532 allows UTF-8 addresses, and a stray byte in a display name leaves the
# address itself unambiguous.
_HEADERREGISTRY_DEFECTIVE = {"rfc6532-utf8", "non-utf8-display-name"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [p for p in WELL_FORMED_ADDRESSES if p.id not in _HEADERREGISTRY_DEFECTIVE],
)
def test_addresses_agree_with_headerregistry(value: str, expected: tuple[str, ...]) -> None:
    # On well-formed values both parsers name the same mailboxes (obsolete syntax included);
    # ours also lower-cases the domain.
    header = default_policy.header_factory("To", unfold(value))
    assert all(isinstance(defect, ObsoleteHeaderDefect) for defect in header.defects)
    theirs = tuple(f"{a.addr_spec.rpartition('@')[0]}@{a.domain.lower()}" for a in header.addresses)
    assert header_addresses(value) == theirs == expected


def test_address_headers_over_the_cap_are_not_parsed() -> None:
    one = "User Name <user@example.com>, "
    fits = (one * (MAX_ADDRESS_CHARS // len(one)))[:-2]
    assert len(fits) <= MAX_ADDRESS_CHARS
    assert header_addresses(fits) == ("user@example.com",) * (MAX_ADDRESS_CHARS // len(one))
    assert header_addresses("a@b.example" + " " * MAX_ADDRESS_CHARS) is None


def test_deeply_nested_comments_need_no_stack() -> None:
    depth = 20_000
    assert header_addresses("(" * depth + ")" * depth + "a@b.example") == ("a@b.example",)
    assert header_addresses("(" * depth + "a@b.example") is None
