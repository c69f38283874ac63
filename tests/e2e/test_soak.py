"""The fault and load suite in its short form (SPAMGATE_SOAK=full: the `make soak` scale).

One stack for the module; every scenario starts a fresh spamgate on it. A scenario passes when
its ledger balances (every message delivered or refused with a 4xx/5xx reply, none lost, none
failed) and its own checks hold; see tests/soak/scenarios.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.workload import Sizes, build_population
from tests.soak.scenarios import SCENARIOS, scale_from_environment
from tests.soak.stack import SoakStack, running_soak_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def soak_stack() -> Iterator[SoakStack]:
    with running_soak_stack(build_population(Sizes())) as stack:
        yield stack


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_accounts_for_every_message(soak_stack: SoakStack, name: str) -> None:
    result = SCENARIOS[name](soak_stack, scale_from_environment())
    ledger = result.ledger
    assert result.problems == [], (ledger, result.notes)
    assert ledger.balanced, ledger
