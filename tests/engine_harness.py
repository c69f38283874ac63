"""An engine for tests/pure/test_engine*.py: a small policy (one block list, one allow list, two
rules) in a tempfail band, and evidence built from plain list answers.
"""

from __future__ import annotations

from spamgate.core import schema
from spamgate.core.engine import Engine, Evidence
from spamgate.core.policy import Policy
from spamgate.dns.answers import AnswerKind, DnsAnswer
from spamgate.dns.dnslists import classify

POLICY = """
ip_lists:
  - name: BL
    display: Example BL
    zone: bl.test
    hits:
      - {name: BL_HIGH, codes: [127.0.0.2], score: 10, description: listed for spamming}
      - {name: BL_LOW, codes: [127.0.0.3], score: 2.5}
  - name: WL
    zone: wl.test
    score: -4
rules:
  - {name: R1, score: 1.5, description: rule one, header: {name: Subject, missing: true}}
  - {name: R2, score: -1, description: rule two, header: {name: Date, missing: true}}
"""


# Most tests here score into a tempfail band, which is off by default (greylisting is on).
TEMPFAIL_BAND = "thresholds: {tag: 3, greylist: null, tempfail: 6, reject: 10}\n"


def engine(extra: str = "") -> Engine:
    top_level = extra.startswith("thresholds:") or "\nthresholds:" in extra
    band = "" if top_level else TEMPFAIL_BAND
    return Engine(schema.load(Policy, band + POLICY + extra, "t.yaml"))


def evidence(eng: Engine, bl: tuple[str, ...] = (), wl: bool = False, rules: str = "") -> Evidence:
    bl_list, wl_list = eng.policy.ip_lists
    outcomes = [
        classify(
            bl_list, DnsAnswer(AnswerKind.RECORDS, bl) if bl else DnsAnswer(AnswerKind.NXDOMAIN)
        ),
        classify(
            wl_list,
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",)) if wl else DnsAnswer(AnswerKind.NXDOMAIN),
        ),
    ]
    fired = tuple(r for r in eng.policy.rules if r.name in rules.split(","))
    return Evidence(tuple(outcomes), None, fired)
