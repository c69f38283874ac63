"""`spamgate mass-check`: score mail an admin has sorted into ham and spam, offline.

Each message goes through the daemon's own Session (explain's `converse`), headers only and
without DNS, as `explain --no-dns` does. The connection's facts come from the message: the
external hop (core/received.py: the topmost Received field one of our hosts wrote for a host
not ours, past our relays) gives the client address, HELO and reverse name, and its time is
"now" for the Date rules (a message checked a year after it came would otherwise look a year
old). No such field: a neutral client (192.0.2.1,
RFC 5737, no HELO, no reverse name).

The report follows SpamAssassin's mass-check and hit-frequencies: per rule, its hits in each
label and S/O, the share of its hits that were spam (1.0: it fired on spam only).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import itertools
import json
import math
import re
import sys
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from os import EX_NOINPUT, EX_SOFTWARE, EX_USAGE  # sysexits(3)
from pathlib import Path
from typing import TextIO

from spamgate.commands.explain import DEFAULT_RCPT, Dialogue, NoDns, converse, read_headers
from spamgate.core import domains, headers
from spamgate.core.engine import Action, Engine
from spamgate.core.policy import Policy, Relays
from spamgate.core.received import OurHosts, external_hop, parse_received
from spamgate.shell.runtime import Runtime

LABELS = ("ham", "spam")
NEUTRAL_CLIENT = ipaddress.ip_address("192.0.2.1")  # RFC 5737 documentation address
HISTOGRAM_WIDTH = 50  # characters of the longest bar
MAX_BINS = 30

# An mbox separator: a line starting "From " after an empty line (or at the start). Lines in
# a body starting "From " are escaped (">From ") by most writers; an unescaped one that
# follows an empty line is taken for a separator, as mutt and mailbox.mbox take it.
_MBOX_SEPARATOR = re.compile(rb"\n\r?\n(?=From )")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ham",
        nargs="+",
        action="extend",
        default=[],
        type=Path,
        metavar="SOURCE",
        help="legitimate mail: mbox files, Maildir folders, directories of message files",
    )
    parser.add_argument(
        "--spam", nargs="+", action="extend", default=[], type=Path, metavar="SOURCE",
        help="spam, in the same forms",
    )  # fmt: skip
    parser.add_argument(
        "--our-hosts",
        nargs="+",
        action="extend",
        default=[],
        metavar="HOST",
        help="our receiving hosts and relays, by name or address (network); their Received "
        "fields say who the client was (the policy's relays, our_names and our_addresses "
        "count too)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document, for scripts")


@dataclass
class Tally:
    """What the mass-check counted: per label, per rule, per outcome, per score."""

    messages: Counter[str] = field(default_factory=Counter)
    hits: dict[str, Counter[str]] = field(default_factory=dict)  # rule -> label -> count
    weights: dict[str, float] = field(default_factory=dict)  # rule -> its score, first seen
    outcomes: dict[str, Counter[Action]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # messages whose scoring raised
    from_received: Counter[str] = field(default_factory=Counter)  # label -> client found

    def add(self, label: str, action: Action, score: float, hits: dict[str, float]) -> None:
        self.messages[label] += 1
        self.outcomes.setdefault(label, Counter())[action] += 1
        self.scores.setdefault(label, []).append(score)
        for name, weight in hits.items():
            self.hits.setdefault(name, Counter())[label] += 1
            self.weights.setdefault(name, weight)


@dataclass(frozen=True)
class Message:
    label: str
    where: str  # path, or "path#n" for the n-th message of an mbox
    data: bytes


def messages(label: str, source: Path, tally: Tally) -> Iterator[Message]:
    """The messages of one source; an unreadable file or folder is named and counted."""
    try:
        if source.is_dir():
            maildir = [source / sub for sub in ("cur", "new") if (source / sub).is_dir()]
            for folder in maildir or [source]:
                for path in sorted(folder.iterdir()):
                    if path.name.startswith(".") or path.is_dir():
                        continue
                    data = _read(path, tally)
                    if data is not None:
                        yield Message(label, str(path), data)
            return
    except OSError as error:
        _unreadable(tally, str(source), error)
        return
    data = _read(source, tally)
    if data is None:
        return
    if not data.startswith(b"From "):
        yield Message(label, str(source), data)
        return
    for number, chunk in enumerate(_MBOX_SEPARATOR.split(data), 1):
        yield Message(label, f"{source}#{number}", chunk.lstrip(b"\r\n"))


def _read(path: Path, tally: Tally) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as error:
        _unreadable(tally, str(path), error)
        return None


def _unreadable(tally: Tally, where: str, error: OSError) -> None:
    tally.unreadable.append(where)
    print(f"spamgate: mass-check: cannot read {where}: {error.strerror}", file=sys.stderr)


class Checker:
    """Scores messages one at a time through one Runtime (headers only, no DNS)."""

    def __init__(self, policy: Policy, our_hosts: Sequence[str]) -> None:
        given = OurHosts.parse(our_hosts)
        if given.names or given.networks:
            # Hosts named on the command line are relays of the policy, so that the
            # received.external facts its rules test trust their fields as the client does.
            relays = Relays(
                (*policy.relays.names, *sorted(given.names)),
                (*policy.relays.addresses, *given.networks),
            )
            policy = dataclasses.replace(policy, relays=relays)
        self.ours = OurHosts.of(
            (*policy.our_names, *policy.relays.names),
            (*policy.our_addresses, *policy.relays.addresses),
        )
        self._now = datetime.datetime.now(datetime.UTC)
        self.runtime = Runtime(
            Engine(policy), NoDns(), now=lambda: self._now, log=lambda line: None, dns=False
        )

    def check(self, message: Message, tally: Tally) -> None:
        fields = read_headers(message.data)
        received = [value for name, value in fields if name.lower() == "received"]
        external = external_hop(received, self.ours)
        hop = external.hop if external is not None else None
        address, name, helo = NEUTRAL_CLIENT, "unknown", ""
        if hop is not None and hop.address is not None:
            tally.from_received[message.label] += 1
            address, name, helo = hop.address, hop.reverse_name or "unknown", hop.helo
        client = Dialogue(
            address,
            name=name,
            helo=helo,
            sender=_first_address(fields, "return-path") or _first_address(fields, "from"),
            recipients=(_first_address(fields, "delivered-to") or DEFAULT_RCPT,),
        )
        self._now = _received_at(hop.time if hop else None, received, fields)
        talk = converse(self.runtime, client, message.data)
        verdict = talk.verdict
        hits = {h.name: h.score for h in verdict.hits} if verdict else {}
        tally.add(message.label, talk.action, verdict.score if verdict else 0.0, hits)


def _first_address(fields: Sequence[tuple[str, str]], wanted: str) -> str:
    for name, value in fields:
        if name.lower() == wanted:
            found = headers.header_addresses(value)
            if found and domains.domain_of_address(found[0]):
                return found[0]
            return ""
    return ""


def _received_at(
    ours: datetime.datetime | None, received: Sequence[str], fields: Sequence[tuple[str, str]]
) -> datetime.datetime:
    """When the message came: our Received field's time, else the topmost one with a time,
    else its Date (no skew), else now."""
    if ours is not None:
        return ours
    for value in received[:8]:
        when = parse_received(value).time
        if when is not None:
            return when
    for name, value in fields:
        if name.lower() == "date":
            date = headers.parse_date(value)
            if date is not None:
                return date
    return datetime.datetime.now(datetime.UTC)


def run(policy: Policy, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out  # looked up now: tests replace sys.stdout
    if not args.ham and not args.spam:
        print("spamgate: mass-check: name some mail: --ham SOURCE, --spam SOURCE", file=sys.stderr)
        return EX_USAGE
    tally = Tally()
    checker = Checker(policy, args.our_hosts)
    for label, sources in (("ham", args.ham), ("spam", args.spam)):
        for source in sources:
            for message in messages(label, source, tally):
                try:
                    checker.check(message, tally)
                except Exception as error:  # a bug, not the mail's fault: see _failed
                    _failed(tally, message.where, error)
    if not sum(tally.messages.values()):
        print("spamgate: mass-check: no message could be read", file=sys.stderr)
        return EX_NOINPUT
    if args.json:
        json.dump(summary(tally), out, indent=1)
        print(file=out)
    else:
        print_report(tally, out)
    return EX_SOFTWARE if tally.failed else 0


def _failed(tally: Tally, where: str, error: Exception) -> None:
    """A message that made spamgate raise is a bug in spamgate, and the daemon would have
    followed `on_error` for it. A run over a large mailbox should not die at one message, nor
    hide it: the message is named with where it failed, counted, left out of the figures, and
    the exit status is 70 (EX_SOFTWARE) at the end."""
    tally.failed.append(where)
    frames = traceback.extract_tb(error.__traceback__)
    at = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
    print(f"spamgate: mass-check: cannot score {where}: {text}{at}", file=sys.stderr)


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleLine:
    name: str
    score: float
    ham: int
    spam: int
    ham_share: float
    spam_share: float
    s_o: float  # spam share of the hits, as shares of each label (1.0: spam only)


def rule_lines(tally: Tally) -> list[RuleLine]:
    """Rules by S/O, most spam-only first, then by hits in spam, then by name."""
    ham_total = tally.messages["ham"]
    spam_total = tally.messages["spam"]
    lines = []
    for name, counts in tally.hits.items():
        ham_share = counts["ham"] / ham_total if ham_total else 0.0
        spam_share = counts["spam"] / spam_total if spam_total else 0.0
        # As SpamAssassin's hit-frequencies: the shares, so that a corpus with more ham
        # than spam does not make every rule look hammy.
        both = ham_share + spam_share
        s_o = spam_share / both if both else 0.0
        lines.append(
            RuleLine(name, tally.weights[name], counts["ham"], counts["spam"], ham_share,
                     spam_share, s_o)
        )  # fmt: skip
    lines.sort(key=lambda r: (-r.s_o, -r.spam, r.ham, r.name))
    return lines


def bins(tally: Tally) -> list[tuple[float, float, dict[str, int]]]:
    """Score bins shared by both labels: whole points, wider if the range is wide."""
    every = [s for label in LABELS for s in tally.scores.get(label, [])]
    low = math.floor(min(every))
    high = math.floor(max(every)) + 1
    width = max(1, math.ceil((high - low) / MAX_BINS))
    edges = list(range(low, high + width, width))
    table = []
    for start, end in itertools.pairwise(edges):
        counts = {
            label: sum(1 for s in tally.scores.get(label, []) if start <= s < end)
            for label in LABELS
        }
        table.append((float(start), float(end), counts))
    return table


def summary(tally: Tally) -> dict[str, object]:
    return {
        "messages": {label: tally.messages[label] for label in LABELS},
        "client_from_received": {label: tally.from_received[label] for label in LABELS},
        "unreadable": tally.unreadable,
        "failed": tally.failed,
        "rules": [vars(line) for line in rule_lines(tally)],
        "outcomes": {
            label: {a.label: tally.outcomes.get(label, Counter())[a] for a in Action}
            for label in LABELS
        },
        "scores": [{"from": start, "to": end, **counts} for start, end, counts in bins(tally)],
    }


def print_report(tally: Tally, out: TextIO) -> None:
    ham, spam = tally.messages["ham"], tally.messages["spam"]
    failed = f", {len(tally.failed)} failed" if tally.failed else ""
    print(
        f"{ham} ham, {spam} spam, {len(tally.unreadable)} unreadable{failed}; client from our "
        f"Received field: {tally.from_received['ham']} ham, {tally.from_received['spam']} spam",
        file=out,
    )
    print(file=out)
    print(
        f"{'SPAM':>6} {'%SPAM':>7} {'HAM':>6} {'%HAM':>7} {'S/O':>5} {'SCORE':>6}  RULE", file=out
    )
    for r in rule_lines(tally):
        print(
            f"{r.spam:6d} {r.spam_share:7.2%} {r.ham:6d} {r.ham_share:7.2%} {r.s_o:5.3f} "
            f"{r.score:+6.1f}  {r.name}",
            file=out,
        )
    if not tally.hits:
        print("(no rule fired)", file=out)
    print(file=out)
    names = [a.label for a in Action]
    print(f"{'':6}" + "".join(f"{n:>11}" for n in names), file=out)
    for label in LABELS:
        outcomes = tally.outcomes.get(label, Counter())
        print(f"{label:6}" + "".join(f"{outcomes[a]:11d}" for a in Action), file=out)
    print(file=out)
    table = bins(tally)
    for label in LABELS:
        # Each label to its own scale: the shape of each distribution is what matters.
        most = max(counts[label] for _, _, counts in table) or 1
        print(f"score of {label}:", file=out)
        for start, end, counts in table:
            bar = "#" * math.ceil(counts[label] * HISTOGRAM_WIDTH / most)
            print(f"  {start:6.0f} .. {end:<6.0f} {counts[label]:6d} {bar}".rstrip(), file=out)
