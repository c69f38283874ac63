"""`make soak`: every scenario at full scale, then a table of the ledgers.

    python -m tests.soak [--short] [--keep] [SCENARIO ...]

Exits 1 if any scenario found a problem (a lost or failed message, an escaped exception,
a wrong decision under a DNS fault, a session over the DNS deadline, ...), after printing
all of them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bench.workload import Sizes, build_population
from tests.soak.scenarios import FULL, SCENARIOS, SHORT, ScenarioResult
from tests.soak.stack import running_soak_stack

COLUMNS = (
    "scenario",
    "sent",
    "delivered",
    "refused",
    "lost",
    "failed",
    "default action",
    "p99 session s",
    "max session s",
    "peak RSS MB",
    "exceptions",
)


def render(results: Sequence[ScenarioResult]) -> str:
    """A Markdown table of the ledgers, then each scenario's notes and problems."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        ledger = result.ledger
        cells = (
            ledger.scenario,
            ledger.sent,
            ledger.delivered,
            ledger.refused,
            ledger.lost,
            ledger.failed,
            ledger.default_action,
            f"{ledger.p99_seconds:.2f}",
            f"{ledger.max_seconds:.2f}",
            f"{ledger.peak_rss_mb:.1f}",
            ledger.exceptions,
        )
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines.append("")
    for result in results:
        for note in result.notes:
            lines.append(f"- {result.ledger.scenario}: {note}")
        for problem in result.problems:
            lines.append(f"- {result.ledger.scenario}: PROBLEM: {problem}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short form (as in make test)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], metavar="SCENARIO")
    args = parser.parse_args(argv)
    scale = SHORT if args.short else FULL
    chosen = args.scenarios or list(SCENARIOS)
    started = time.monotonic()
    results = []
    with running_soak_stack(build_population(Sizes()), keep=args.keep) as stack:
        print(f"soak ({scale.name}): work directory {stack.workdir}", flush=True)
        for name in chosen:
            result = SCENARIOS[name](stack, scale)
            ledger = result.ledger
            print(
                f"[{time.monotonic() - started:6.1f} s] {name}: sent {ledger.sent},"
                f" delivered {ledger.delivered}, refused {ledger.refused}, lost {ledger.lost},"
                f" failed {ledger.failed}, p99 {ledger.p99_seconds:.2f} s,"
                f" {len(result.problems)} problem(s)",
                flush=True,
            )
            results.append(result)
        print(f"\nmilter_default_action = {stack.milter_default_action}")
    print(f"\n{render(results)}\n\n{scale.name} soak: {time.monotonic() - started:.0f} s")
    return 1 if any(result.problems for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
