"""The policy language: errors in rules, reply templates, composites and recipient policies,
located."""

from __future__ import annotations

from pathlib import Path

import pytest

from spamgate.core.rulespecs import Rule
from tests.config_helpers import LIST_A, RULE_DATE, assert_located, lines, load, load_error

# --- errors in rules, located ------------------------------------------------------------------

BAD_DOCUMENTS = [
    pytest.param(
        lines("rules:", "  - {name: R, score: 1, description: d, sender: empty, action: drop}"),
        (
            2,
            64,
            "rules[0].action",
            "expected one of tag, greylist, quarantine, tempfail, reject, got the string 'drop'",
        ),
        id="rule-action-unknown",
    ),
    pytest.param(
        lines("ip_lists:", LIST_A, "rules:", RULE_DATE.replace("name: R,", "name: A,")),
        (4, 6, "rules[0].name", "name A is already used at ip_lists[0].name"),
        id="rule-named-like-a-list",
    ),
    pytest.param(
        lines("rules:", RULE_DATE, RULE_DATE.replace("Date", "From")),
        (3, 6, "rules[1].name", "name R is already used at rules[0].name"),
        id="duplicate-rule-name",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches: '('",
        ),
        (
            7,
            16,
            "rules[0].header.matches",
            "invalid regex: missing ): (",
        ),
        id="bad-regex",
    ),
    pytest.param(
        lines("rules:", "  - name: R", "    score: 1", "    description: d"),
        (
            2,
            5,
            "rules[0].name",
            "a rule needs exactly one condition (helo, helo_matches, rdns, rdns_matches, sender, "
            "sender_matches, spf, helo_spf, recipient_matches, recipients_over, header, "
            "date_ahead_hours, date_behind_days, from_domain, dkim, dmarc, fact, composite)",
        ),
        id="rule-without-condition",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches: x",
            "      missing: true",
        ),
        (
            7,
            7,
            "rules[0].header.matches",
            "give exactly one of matches, matches_raw, missing: true, count_over, malformed: true",
        ),
        id="header-matches-and-missing",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - {name: R, score: 1, description: d, header: {name: 'A B', missing: true}}",
        ),
        (2, 50, "rules[0].header.name", "'A B' is not a header field name"),
        id="bad-header-name",
    ),
]


@pytest.mark.parametrize(("text", "where"), BAD_DOCUMENTS)
def test_error_is_located(tmp_path: Path, text: str, where: tuple[int, int, str, str]) -> None:
    assert_located(tmp_path, text, where)


# --- errors in the policy language, located ----------------------------------------------------

CONDITIONS_TEXT = ", ".join(Rule.CONDITIONS)

LANGUAGE_ERRORS = [
    pytest.param(
        lines("replies:", "  reject: 'No: {reason} (id {id})'"),
        (2, 3, "replies.reject", "unknown field {reason}: use client, id, reasons, score"),
        id="reject-template-unknown-field",
    ),
    pytest.param(
        lines("replies:", "  tempfail: 'Later {score} {ip}'"),
        (2, 3, "replies.tempfail", "unknown field {ip}: use client, id, reasons, score"),
        id="tempfail-template-unknown-field",
    ),
    pytest.param(
        lines("replies:", "  reject: 'No {'"),
        (2, 3, "replies.reject", "bad template: Single '{' encountered in format string"),
        id="reject-template-unbalanced",
    ),
    pytest.param(
        lines("replies:", "  reject: 'No {reasons.__class__}'"),
        (
            2,
            3,
            "replies.reject",
            "unknown field {reasons.__class__}: use client, id, reasons, score",
        ),
        id="reject-template-attribute",
    ),
    pytest.param(
        lines("deny:", "  senders: ['@bad.example']", "  reply: 'No: {reasons}'"),
        (3, 3, "deny.reply", "unknown field {reasons}: use client, id"),
        id="deny-reply-unknown-field",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [NOPE]}",
        ),
        (5, 16, "rules[0].composite", "NOPE is not a list hit or a rule defined before this one"),
        id="composite-unknown-name",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {any: [LATER]}",
            "  - {name: LATER, score: 1, description: d, helo: bare_ip}",
        ),
        (5, 16, "rules[0].composite", "LATER is not a list hit or a rule defined before this one"),
        id="composite-later-rule",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [C]}",
        ),
        (5, 16, "rules[0].composite", "C is not a list hit or a rule defined before this one"),
        id="composite-naming-itself",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - {name: R, score: 1, description: d, helo: bare_ip}",
            "recipient_policies:",
            "  - name: sales",
            "    recipients: ['@sales.example']",
            "    scores: {R: 2, NOPE: 1}",
        ),
        (6, 20, "recipient_policies[0].scores.NOPE", "no hit is named NOPE"),
        id="recipient-policy-scores-unknown-hit",
    ),
    pytest.param(
        lines(
            "recipient_policies:",
            "  - {name: sales, recipients: ['@a.example']}",
            "  - {name: sales, recipients: ['@b.example']}",
        ),
        (3, 6, "recipient_policies[1].name", "'sales' is taken"),
        id="recipient-policy-duplicate-name",
    ),
    pytest.param(
        lines("recipient_policies:", "  - name: default", "    recipients: ['@a.example']"),
        (2, 5, "recipient_policies[0].name", "'default' is taken"),
        id="recipient-policy-named-default",
    ),
    pytest.param(
        lines("recipient_policies:", "  - name: sales", "    recipients: []"),
        (3, 17, "recipient_policies[0].recipients", "name at least one recipient pattern"),
        id="recipient-policy-without-recipients",
    ),
    pytest.param(
        lines(
            "recipient_policies:",
            "  - name: sales",
            "    recipients: ['@a.example']",
            "    thresholds: {tag: 5, quarantine: 4}",
        ),
        (4, 26, "recipient_policies[0].thresholds.quarantine", "must not be below tag (5)"),
        id="recipient-policy-quarantine-below-tag",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    helo: bare_ip",
            "    sender: empty",
        ),
        (6, 5, "rules[0].sender", f"a rule needs exactly one condition ({CONDITIONS_TEXT})"),
        id="rule-with-two-conditions-at-the-second",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header: {name: Subject, malformed: true}",
        ),
        (
            5,
            29,
            "rules[0].header.malformed",
            "spamgate cannot parse Subject: only Date, From, Sender, Reply-To, To and Cc",
        ),
        id="malformed-on-an-unparsed-header",
    ),
    pytest.param(
        lines(
            "rules:",
            "  - name: R",
            "    score: 1",
            "    description: d",
            "    header:",
            "      name: Subject",
            "      matches_raw: 'caf\u00e9'",
        ),
        (
            7,
            20,
            "rules[0].header.matches_raw",
            "a bytes regex must be ASCII: write 'é' as the bytes it should match, "
            "e.g. \\xC3\\xA9 for its UTF-8 encoding",
        ),
        id="matches-raw-non-ascii",
    ),
    pytest.param(
        lines("thresholds:", "  tag: 5", "  quarantine: 4"),
        (3, 3, "thresholds.quarantine", "must not be below tag (5)"),
        id="quarantine-below-tag",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 1",
            "    check_names: []",
        ),
        (
            5,
            18,
            "domain_lists[0].check_names",
            "name at least one of helo, ptr, sender, from, reply_to",
        ),
        id="domain-list-without-check-names",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 1",
            "    check_names: [helo, body]",
        ),
        (
            5,
            25,
            "domain_lists[0].check_names[1]",
            "expected one of helo, ptr, sender, from, reply_to, got the string 'body'",
        ),
        id="domain-list-unknown-check-name",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: BL, zone: bl.example, score: 2, on_unusable: defer}"),
        (
            2,
            57,
            "ip_lists[0].on_unusable",
            "expected one of judge, tempfail, got the string 'defer'",
        ),
        id="on-unusable-unknown-value",
    ),
    pytest.param(
        lines(
            "domain_lists:",
            "  - name: DBL",
            "    zone: dbl.example",
            "    score: 6",
            "    on_unusable: true",
        ),
        (
            5,
            18,
            "domain_lists[0].on_unusable",
            "expected one of judge, tempfail, got the boolean true",
        ),
        id="on-unusable-boolean",
    ),
    pytest.param(
        lines("replies:", "  unusable: 'Later: {reasons} (id {id})'"),
        (2, 3, "replies.unusable", "unknown field {reasons}: use client, id, lists"),
        id="unusable-template-unknown-field",
    ),
]


@pytest.mark.parametrize(("text", "where"), LANGUAGE_ERRORS)
def test_policy_language_error_is_located(
    tmp_path: Path, text: str, where: tuple[int, int, str, str]
) -> None:
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    file = str(tmp_path / "spamgate.yaml")
    assert str(error) == f"{file}:{line}:{column}: {key_path}: {message}"
    assert (error.line, error.column, error.path, error.message) == where


def test_a_composite_may_name_list_hits_and_earlier_rules(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        lines(
            "ip_lists:",
            "  - {name: BL, zone: bl.example, score: 1}",
            "rules:",
            "  - {name: R, score: 1, description: d, helo: bare_ip}",
            "  - name: C",
            "    score: 1",
            "    description: d",
            "    composite: {all: [BL], any: [R], not: [R]}",
        ),
    )
    composite = policy.rules[1].composite
    assert composite is not None
    assert (composite.all, composite.any, composite.not_) == (("BL",), ("R",), ("R",))
