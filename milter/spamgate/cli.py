"""The `spamgate` command: run the daemon, or check a policy file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spamgate import __version__
from spamgate.config import load_policy
from spamgate.schema import ConfigError

DEFAULT_CONFIG = "/etc/spamgate/spamgate.yaml"

# Exit codes: 0 fine, 1 the policy file is bad, 2 usage error (argparse's own).
EXIT_BAD_CONFIG = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spamgate", description="SMTP-time scoring milter for Postfix and Sendmail."
    )
    parser.add_argument("--version", action="version", version=f"spamgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run the milter daemon in the foreground"),
        ("check-config", "validate a policy file and exit 0 if it is good"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            default=DEFAULT_CONFIG,
            metavar="FILE",
            help=f"policy file (default {DEFAULT_CONFIG})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        policy = load_policy(args.config)
    except ConfigError as error:
        print(f"spamgate: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command == "check-config":
        print(
            f"{args.config}: OK ({len(policy.ip_lists)} DNS lists, {len(policy.rules)} rules, "
            f"policy {policy.digest})"
        )
        return 0
    # Imported here so check-config works without loading libmilter.
    from spamgate.daemon import run  # noqa: PLC0415

    return run(policy, args.config)
