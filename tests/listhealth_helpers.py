"""What the DNS list health tests share: a policy with a list of every health setting, the
monitor's settings, answers, and one list's outcome as ListLookups makes it."""

from __future__ import annotations

from spamgate.core import schema
from spamgate.core.listspecs import DnsList
from spamgate.core.policy import Policy
from spamgate.core.settings import HealthSettings
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import Family, ListOutcome, classify
from spamgate.dns.listhealth import ListMonitor, ProbeFault, ProbeProblem
from tests.fakes import FakeClock

POLICY = """
ip_lists:
  - {name: ZEN, zone: zen.test, score: 10}
  - {name: V6ONLY, zone: v6.test, score: 1, ipv4: false}
  - {name: V4ONLY, zone: v4.test, score: 1, ipv6: false}
  - {name: CUSTOM, zone: custom.test, score: 1, probe: {listed: 127.0.0.4, unlisted: 127.0.0.5}}
  - {name: CUSTOM6, zone: custom6.test, score: 1, probe: {listed: "2001:db8::2"}}
  - {name: NOPROBE, zone: noprobe.test, score: 1, probe: {enabled: false}}
  - name: OWN
    zone: own.test
    score: 1
    health: {min_checks: 2, max_hit_ratio: 0.75, window: 20}
  - {name: SUSPENDING, zone: suspending.test, score: 1, health: {breaker: suspend}}
  - {name: NOBREAKER, zone: nobreaker.test, score: 1, health: {breaker: "off"}}
  - name: NOPROBE_SUSPENDING
    zone: noprobe2.test
    score: 1
    probe: {enabled: false}
    health: {breaker: suspend}
domain_lists:
  - {name: DBL, zone: dbl.test, score: 5}
"""
SETTINGS = HealthSettings(
    probe_interval=600, retry_min=60, retry_max=300, max_hit_ratio=0.5, window=60, min_checks=4
)
LISTED = DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=60)
CLEAN = DnsAnswer(AnswerKind.NXDOMAIN)
LISTS_EVERYTHING = "it lists its must-not-list test entry: it answers for everything"
EVERYTHING = ProbeProblem(ProbeFault.LISTS_EVERYTHING)  # LISTS_EVERYTHING, as a value
NOT_LISTED = ProbeProblem(ProbeFault.NOT_LISTED)
IPV6_NIBBLES = "0." * 20  # ::ffff:7f00:x: twenty zero nibbles above ffff


def lists() -> dict[str, DnsList]:
    policy = schema.load(Policy, POLICY, "t.yaml")
    return {dns_list.name: dns_list for dns_list in (*policy.ip_lists, *policy.domain_lists)}


def monitor(clock: FakeClock, settings: HealthSettings = SETTINGS) -> ListMonitor:
    return ListMonitor(tuple(lists().values()), settings, clock)


def seen(
    dns_list: DnsList, answer: DnsAnswer, key: str, family: Family | None = None
) -> ListOutcome:
    """One list's answer about one client network (or name), as ListLookups makes it."""
    return classify(dns_list, answer, 1.0, key=key, family=family)
