"""DNS lists in the policy: names, zones, hits and return codes, and a list's own circuit
breaker settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from spamgate.core.settings import Breaker
from tests.config_helpers import LIST_A, assert_located, lines, load_error, write

# --- errors in DNS lists, located --------------------------------------------------------------

BAD_DOCUMENTS = [
    pytest.param(
        lines("ip_lists:", LIST_A, "  - {name: A, zone: b.test, score: 1}"),
        (3, 6, "ip_lists[1].name", "name A is already used at ip_lists[0].name"),
        id="duplicate-list-name",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - {name: X, score: 1}",
            "  - name: B",
            "    zone: b.test",
            "    hits:",
            "      - {name: Y, score: 1}",
            "      - {name: X, score: 2}",
        ),
        (10, 10, "ip_lists[1].hits[1].name", "name X is already used at ip_lists[0].hits[0].name"),
        id="duplicate-hit-name-across-lists",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - {name: X, score: 1}",
            "      - {name: X, score: 2}",
        ),
        (6, 10, "ip_lists[0].hits[1].name", "name X is already used at ip_lists[0].hits[0].name"),
        id="duplicate-hit-name-in-one-list",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    score: 1",
            "    hits:",
            "      - {name: X, score: 1}",
        ),
        (6, 7, "ip_lists[0].hits", "give either `score` or `hits`, not both or neither"),
        id="list-with-score-and-hits",
    ),
    pytest.param(
        lines("ip_lists:", "  - name: A", "    zone: a.test"),
        (2, 5, "ip_lists[0].hits", "give either `score` or `hits`, not both or neither"),
        id="list-with-neither-score-nor-hits",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: lower, zone: a.test, score: 1}"),
        (2, 6, "ip_lists[0].name", "'lower' must be UPPER_CASE letters, digits and _ (max 64)"),
        id="lowercase-list-name",
    ),
    pytest.param(
        lines("ip_lists:", "  - name: A", "    zone: bad..zone", "    score: 1"),
        (3, 5, "ip_lists[0].zone", "'bad..zone' is not a valid DNS zone name"),
        id="zone-empty-label",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: localhost, score: 1}"),
        (2, 15, "ip_lists[0].zone", "'localhost' is not a valid DNS zone name"),
        id="zone-single-label",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: -bad.example, score: 1}"),
        (2, 15, "ip_lists[0].zone", "'-bad.example' is not a valid DNS zone name"),
        id="zone-label-leading-hyphen",
    ),
    pytest.param(
        lines("ip_lists:", "  - {name: A, zone: a.test, score: 1, ipv4: false, ipv6: false}"),
        (2, 52, "ip_lists[0].ipv6", "a list must be queried for IPv4, IPv6 or both"),
        id="list-for-no-family",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    hits:",
            "      - name: X",
            "        score: 1",
            "        codes: [127.0.0.2, 127.0.0.300]",
        ),
        (
            7,
            28,
            "ip_lists[0].hits[0].codes[1]",
            "invalid return code '127.0.0.300': '127.0.0.300' is not an IPv4 address",
        ),
        id="bad-return-code",
    ),
    pytest.param(
        lines(
            "ip_lists:",
            "  - name: A",
            "    zone: a.test",
            "    error_codes: ['&0']",
            "    score: 1",
        ),
        (4, 19, "ip_lists[0].error_codes[0]", "bit mask '&0' must set at least one bit"),
        id="bad-error-code",
    ),
]


@pytest.mark.parametrize(("text", "where"), BAD_DOCUMENTS)
def test_error_is_located(tmp_path: Path, text: str, where: tuple[int, int, str, str]) -> None:
    assert_located(tmp_path, text, where)


# --- a list's own circuit breaker settings (issue 14, item 2) ----------------------------------


def test_a_list_may_override_the_breaker_settings(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            lines(
                "health: {max_hit_ratio: 0.8, min_checks: 50, window: 300}",
                "ip_lists:",
                "  - name: ZEN",
                "    zone: zen.test",
                "    score: 10",
                "    health: {min_checks: 500, breaker: probe}",
                "  - {name: DNSWL, zone: wl.test, score: -5, health: {breaker: 'off'}}",
                "domain_lists:",
                "  - {name: DBL, zone: dbl.test, score: 5, health: {max_hit_ratio: 0.99}}",
            ),
        )
    )
    zen, dnswl = policy.ip_lists
    (dbl,) = policy.domain_lists
    own = zen.health.applied_to(policy.health)
    assert (own.breaker, own.max_hit_ratio, own.min_checks, own.window) == (
        Breaker.PROBE,
        0.8,
        500,
        300.0,
    )
    assert dnswl.health.applied_to(policy.health).breaker is Breaker.OFF
    assert dbl.health.applied_to(policy.health).max_hit_ratio == 0.99
    assert policy.health.breaker is Breaker.PROBE  # the default


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {max_hit_ratio: 2}}"),
            (2, 63, "ip_lists[0].health.max_hit_ratio", "must be at most 1, got 2.0"),
            id="ratio-over-one",
        ),
        pytest.param(
            lines(
                "domain_lists:",
                "  - name: DBL",
                "    zone: dbl.test",
                "    score: 1",
                "    health:",
                "      breaker: sometimes",
            ),
            (
                6,
                16,
                "domain_lists[0].health.breaker",
                "expected one of probe, suspend, off, got the string 'sometimes'",
            ),
            id="breaker-not-a-choice",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {min_checks: 5000}}"),
            (2, 60, "ip_lists[0].health.min_checks", "must be at most 2048, got 5000"),
            id="min-checks-past-the-bound",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {window: 5}}"),
            (2, 56, "ip_lists[0].health.window", "must be at least 10, got 5.0"),
            id="window-too-short",
        ),
        pytest.param(
            lines("ip_lists:", "  - {name: Z, zone: z.test, score: 1, health: {max_failure: 5}}"),
            (2, 48, "ip_lists[0].health.max_failure", "unknown key"),
            id="no-per-list-max-failures",
        ),
        pytest.param(
            lines("health:", "  min_checks: 3000"),
            (2, 15, "health.min_checks", "must be at most 2048, got 3000"),
            id="global-min-checks-past-the-bound",
        ),
    ],
)
def test_a_bad_breaker_setting_is_located(
    tmp_path: Path, text: str, where: tuple[int, int, str, str]
) -> None:
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    assert (error.line, error.column, error.path) == (line, column, key_path)
    assert error.message.startswith(message)
