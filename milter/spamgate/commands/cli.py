"""The `spamgate` command: run the daemon, or check a policy file."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from spamgate import __version__
from spamgate.commands import explain, listcmd, masscheck
from spamgate.config.preflight import load_checked_policy
from spamgate.core.schema import ConfigError
from spamgate.dns.resolver import system_nameservers
from spamgate.shell.logmasking import mask_keys_in_command_output

DEFAULT_CONFIG = "/etc/spamgate/spamgate.yaml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would exit 2, which `explain` uses for "quarantine".
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spamgate", description="SMTP-time scoring milter for Postfix and Sendmail."
    )
    parser.add_argument("--version", action="version", version=f"spamgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run the milter daemon in the foreground"),
        ("check-config", "validate a policy file and exit 0 if it is good"),
        ("explain", "score a client and optionally a message file; exit status is the action"),
        ("lists", "show the running daemon's view of each DNS list (state, hit and error rate)"),
        ("mass-check", "score sorted ham and spam offline, headers only: hits per rule, outcomes"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        if name == "explain":
            explain.add_arguments(command)
        if name == "mass-check":
            masscheck.add_arguments(command)
        if name == "check-config":
            command.add_argument(
                "--probe",
                action="store_true",
                help="also ask every DNS list its RFC 5782 test entries, and a Redis state "
                "a read; exit 69 if one fails",
            )
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
    # Every command reads, builds and checks the policy the same way: `run` logs the
    # pre-flight warnings, check-config prints them, and an error is exit 78 for all.
    try:
        checked = load_checked_policy(args.config, system_nameservers)
    except ConfigError as error:
        print(f"spamgate: {error}", file=sys.stderr)
        return os.EX_CONFIG
    except Exception as error:
        # Loading raises ConfigError only; anything else is a bug in spamgate. It is still
        # about this policy, and restarting will not help: one line, and 78 (EX_CONFIG),
        # which systemd's RestartPreventExitStatus= keeps from a restart loop.
        print(
            f"spamgate: {args.config}: cannot load the policy ({type(error).__name__}: "
            f"{' '.join(str(error).splitlines())}); this is a bug in spamgate, please report it",
            file=sys.stderr,
        )
        return os.EX_CONFIG
    policy = checked.policy
    if args.command != "run":
        mask_keys_in_command_output(policy)
    if args.command == "check-config":
        for warning in checked.warnings:
            print(f"spamgate: WARNING: {warning}", file=sys.stderr)
        print(
            f"{args.config}: OK ({len(policy.ip_lists)} IP lists, "
            f"{len(policy.domain_lists)} domain lists, {len(policy.rules)} rules, "
            f"policy {policy.digest})"
        )
        return listcmd.probe(policy) if args.probe else 0
    if args.command == "explain":
        return explain.run(policy, args)
    if args.command == "mass-check":
        return masscheck.run(policy, args)
    if args.command == "lists":
        return listcmd.show(policy)
    # Imported here so check-config and explain work without loading libmilter.
    from spamgate.shell.daemon import run  # noqa: PLC0415

    return run(policy, args.config, checked.warnings)
