"""The RFC 7208 test suite of the OpenSPF project, through spamgate's resolver.

Each scenario's zone data is served by a DNS server on 127.0.0.1 (tests/spf_suite.py); each
of its cases is checked with dns/spfcheck.py and a real Resolver pointed at that server, and
must give one of the results the suite accepts, and the explanation when the suite names one.
The suite is fetched at test time (see spf_suite.suite_file); without it the module fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import dns.name
import pytest

from spamgate.core.settings import ResolverSettings
from spamgate.core.spf import SpfResult
from spamgate.dns import spfcheck
from spamgate.dns.resolver import Resolver
from tests import spf_suite
from tests.spf_suite import Scenario, SuiteCase, Zone, ZoneServer

# A TIMEOUT name costs the resolver's deadline: short, but with retries every 0.1 s, so that
# one datagram lost or late on a busy machine does not turn a case into temperror.
RESOLVER = ResolverSettings(query_timeout=0.1, deadline=0.4, cache_min_ttl=0)
# The check's own deadline, above the resolver's: a TIMEOUT answer decides, not this.
CHECK_DEADLINE = 3.0
# The suite's driver sets this default explanation; the cases that expect it name it.
DEFAULT_EXPLANATION = "DEFAULT"

SCENARIOS: list[Scenario] = spf_suite.load_scenarios(spf_suite.suite_file())

# Cases that cannot pass, and why (strict: one that starts passing fails the run).
KNOWN_FAILURES: dict[str, str] = {
    "Initial processing/null-text": (
        "the zone holds a TXT record of no strings (RFC 1035 allows none: a TXT record is one "
        "or more strings); spamgate's resolver, like dnspython, reads the whole answer as "
        "malformed, so the TXT lookup fails and the check is temperror, not pass"
    ),
    "Macro expansion rules/v-macro-ip6": (
        "the suite expects the nibbles of %{i} in upper case for an IPv6 client given in upper "
        "case (E.B.A.B.E.F.A.C, as pyspf writes them); spamgate writes lower case, as RFC "
        "7208 7.4's own example does (DNS names compare without case: RFC 4343). The result, "
        "fail, is the suite's; only this explanation text differs"
    ),
}


def _params() -> list[object]:
    params: list[object] = []
    for scenario in SCENARIOS:
        for case in scenario.cases:
            reason = KNOWN_FAILURES.get(case.case_id)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(scenario, case, id=case.case_id, marks=marks))
    return params


class _Stack:
    """A zone's server and a resolver that asks it."""

    def __init__(self, zone: Zone) -> None:
        self.server = ZoneServer(zone)
        self.server.start()
        self.resolver = Resolver(RESOLVER, nameservers=(self.server.nameserver,))
        self.resolver.start()

    def stop(self) -> None:
        self.resolver.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def stacks() -> Iterator[dict[str, _Stack]]:
    """One server and resolver per scenario, started when its first case runs."""
    started: dict[str, _Stack] = {}
    yield started
    for stack in started.values():
        stack.stop()


def test_the_suite_is_complete() -> None:
    # Release 2014.04 of the suite: 16 scenarios, 203 cases (a truncated download has fewer).
    assert len(SCENARIOS) == 16
    assert sum(len(scenario.cases) for scenario in SCENARIOS) == 203


@pytest.mark.parametrize(("scenario", "case"), _params())
def test_rfc7208_suite(scenario: Scenario, case: SuiteCase, stacks: dict[str, _Stack]) -> None:
    stack = stacks.get(scenario.description)
    if stack is None:
        stack = stacks[scenario.description] = _Stack(scenario.zone)
    verdict = spfcheck.check_mail_from(
        stack.resolver,
        case.host,
        case.mailfrom,
        case.helo,
        deadline=CHECK_DEADLINE,
        default_explanation=DEFAULT_EXPLANATION,
    )
    assert verdict.result.value in case.results, verdict
    if case.explanation is not None:
        assert verdict.explanation == case.explanation, verdict


def test_a_silent_server_costs_the_deadline_and_gives_temperror() -> None:
    # The check's deadline, not the resolver's, ends it: nothing answers, and the verdict
    # comes when the check's time is up.
    zone = Zone(timing_out={dns.name.from_text("example.org")})
    server = ZoneServer(zone)
    server.start()
    try:
        slow = Resolver(
            ResolverSettings(query_timeout=5, deadline=10), nameservers=(server.nameserver,)
        )
        slow.start()
        try:
            started = time.monotonic()
            verdict = spfcheck.check_mail_from(
                slow, "192.0.2.1", "someone@example.org", "mail.example.org", deadline=0.3
            )
            elapsed = time.monotonic() - started
        finally:
            slow.stop()
    finally:
        server.stop()
    assert verdict.result is SpfResult.TEMPERROR
    assert verdict.domain == "example.org"
    assert "0.3 s" in verdict.reason
    assert 0.25 <= elapsed < 1.5
