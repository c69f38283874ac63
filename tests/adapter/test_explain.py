"""`spamgate explain`, run as a subprocess the way an admin runs it, with --no-dns.

The policy here scores only rules (no DNS is asked), so every hit, reply and exit status is
known in advance; the random decision id is read from the log line and replaced by `ID`.
Each run is a separate `python -m spamgate` process; they are all started at once by a
module fixture, so the file costs about as much wall time as its slowest few runs.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spamgate.commands.explain import read_headers

# Bands 3 / 8 / 9 / 10, and rules to land in each: BULK 3 (tag), + NO_DATE 5 (quarantine),
# + HELO_BARE 1 (tempfail); SPAMTRAP or SUBJECT_SPAM 10 (reject).
POLICY = r"""
thresholds: {tag: 3, quarantine: 8, tempfail: 9, reject: 10}
rules:
  - {name: SPAMTRAP, score: 10, description: mail to a spam trap, recipient_matches: '^trap@'}
  - {name: BULK, score: 3, description: a bulk sender, sender_matches: '^bulk-'}
  - {name: HELO_BARE, score: 1, description: the HELO name is a bare IP address, helo: bare_ip}
  - {name: HELO_DYNAMIC, score: 0, description: a dynamic HELO, helo_matches: '^dyn-',
     action: greylist}
  - {name: NO_DATE, score: 5, description: the message has no Date header,
     header: {name: Date, missing: true}}
  - {name: SUBJECT_SPAM, score: 10, description: the Subject says spam,
     header: {name: Subject, matches: '(?i)\bspam\b'}}
  - {name: RAW_FF, score: 0.5, description: a raw 0xff byte,
     header: {name: X-Raw, matches_raw: '\xff'}}
  - {name: ON_TRIAL, score: 50, description: a rule on trial, mode: observe,
     header: {name: Subject, matches: '(?i)trial'}}
allow:
  senders: ["@partner.example"]
recipient_policies:
  - name: lenient
    recipients: ["@example.net"]
    thresholds: {tag: 3, greylist: null, tempfail: null, reject: 100}
"""
DIGEST = hashlib.sha256(POLICY.encode()).hexdigest()[:12]
BAD_POLICY = "rules:\n  - {name: R, score: 1, description: d, helo: maybe}\n"
# DNS is asked here, of a nameserver that never answers ({dns}: a socket the fixture holds).
SILENT_LIST = """
resolver: {{nameservers: ["127.0.0.1:{dns}"], query_timeout: 0.1, deadline: 0.3}}
thresholds: {{tag: 3, reject: 10}}
ip_lists:
  - name: ZEN
    display: Example ZEN
    zone: zen.test
    on_unusable: {on_unusable}
    hits: [{{name: ZEN_SBL, codes: [127.0.0.2], score: 10, description: listed in the SBL}}]
"""

DATED = b"From: a@example.org\r\nDate: Wed, 01 May 2024 12:00:00 +0000\r\nSubject: hello\r\n"
UNDATED = b"From: a@example.org\r\nSubject: hello\r\n"
SPAM = UNDATED.replace(b"hello", b"spam")
BULK = ("--from", "bulk-x@example.org")
NO_DNS = "--no-dns: DNS lists, reverse DNS and name lookups are skipped"
MISSING = "absent.eml"  # a message file that is never written


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...] = ()
    message: bytes | None = None  # the headers of a message file to score
    policy: str = POLICY
    dns: bool = False  # ask DNS (the policy's nameserver) instead of --no-dns


CASES = {
    "everything": Case(
        (
            "--helo",
            "192.0.2.9",
            *BULK,
            "--rcpt",
            "trap@example.com",
            "--rcpt",
            "postmaster@example.com",
        ),
        UNDATED.replace(b"hello", b"a trial"),
    ),
    "split": Case(("--rcpt", "user@example.com", "--rcpt", "x@example.net")),
    "allowed": Case(("--from", "ceo@partner.example", "--rcpt", "trap@example.com"), SPAM),
    "accept": Case((), DATED + b"X-Raw: caf\xff\r\n"),
    "tag": Case(BULK, DATED),
    "quarantine": Case(BULK, UNDATED),
    "tempfail": Case((*BULK, "--helo", "192.0.2.9"), UNDATED),
    "greylist": Case(("--helo", "dyn-7.example"), DATED),
    "reject-at-eom": Case((), SPAM),
    "reject-at-rcpt": Case(("--rcpt", "trap@example.com"), DATED),
    "trap-poisons-the-transaction": Case(
        ("--rcpt", "trap@example.com", "--rcpt", "user@example.com"), DATED
    ),
    "recipient-policy-thresholds": Case(("--rcpt", "user@example.net", *BULK), SPAM),
    "no-message": Case((*BULK, "--rcpt", "u@example.com", "--rcpt", "trap@example.com")),
    "bad-policy": Case(policy=BAD_POLICY),
    "bad-ip": Case(
        (
            "--ip",
            "192.0.2",
        )
    ),
    "ip-is-a-name": Case(("--ip", "mx.example")),
    "unknown-option": Case(("--helo-name", "x")),
    "missing-message": Case((MISSING,)),
    "list-silent-tempfail": Case(
        ("--rcpt", "user@example.com"),
        policy=SILENT_LIST.replace("{on_unusable}", "tempfail"),
        dns=True,
    ),
    "list-silent-judge": Case(
        ("--rcpt", "user@example.com"),
        policy=SILENT_LIST.replace("{on_unusable}", "judge"),
        dns=True,
    ),
    "list-silent-postmaster": Case(
        ("--rcpt", "postmaster@example.com"),
        policy=SILENT_LIST.replace("{on_unusable}", "tempfail"),
        dns=True,
    ),
}


@dataclass(frozen=True)
class Explained:
    status: int
    lines: list[str]  # stdout, the decision id replaced by ID
    stderr: str
    policy: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Explained]]:
    workdir = tmp_path_factory.mktemp("explain")
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a nameserver that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        for name, case in CASES.items():
            policy = workdir / f"{name}.yaml"
            text = case.policy.format(dns=silent.getsockname()[1]) if case.dns else case.policy
            policy.write_text(text, encoding="utf-8")
            argv = ["explain", "-c", str(policy)] + ([] if case.dns else ["--no-dns"])
            argv += [str(workdir / arg) if arg == MISSING else arg for arg in case.args]
            if case.message is not None:
                message = workdir / f"{name}.eml"
                message.write_bytes(case.message + b"\r\nthe body\r\n")
                argv.append(str(message))
            process = subprocess.Popen(
                [sys.executable, "-m", "spamgate", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started[name] = (process, policy)
        results = {}
        for name, (process, policy) in started.items():
            stdout, stderr = process.communicate(timeout=60)
            ids = set(re.findall(r" id=([0-9a-f]{10}) ", stdout))
            assert len(ids) <= 1, stdout
            for decision_id in ids:
                stdout = stdout.replace(decision_id, "ID")
            results[name] = Explained(process.returncode, stdout.splitlines(), stderr, policy)
        yield results
    finally:
        silent.close()
        for process, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def hit(score: float, name: str, description: str) -> str:
    """A hit line as explain prints it: signed score, name in a 28-wide column, description."""
    return f"    {score:+6.1f}  {name:<28} {description}"


def why(detail: str) -> str:
    """The line under a hit: what its rule tested and the value it fired on."""
    return f"              {detail}"


def has_message(result: Explained) -> bool:
    return any(line.startswith("message:") for line in result.lines)


# --- what is printed ---------------------------------------------------------------------------


def test_each_hit_is_printed_per_recipient_and_for_the_message(
    runs: dict[str, Explained],
) -> None:
    result = runs["everything"]
    assert result.stderr == ""
    assert result.lines == [
        NO_DNS,
        "client 192.0.2.1 name=unknown helo=192.0.2.9",
        "recipient trap@example.com: reject",
        "  score 14.0 -> reject",
        hit(10, "SPAMTRAP", "mail to a spam trap"),
        why('recipient = "trap@example.com" (matches "^trap@")'),
        hit(3, "BULK", "a bulk sender"),
        why('sender = "<bulk-x@example.org>" (matches "^bulk-")'),
        hit(1, "HELO_BARE", "the HELO name is a bare IP address"),
        why('helo = "192.0.2.9" (bare_ip)'),
        "  -> 550 5.7.1 Message refused: mail to a spam trap; a bulk sender;"
        " the HELO name is a bare IP address (id ID)",
        "recipient postmaster@example.com: accept (exempt)",
        "message: tag",
        "  score 19.0 -> reject",
        hit(10, "SPAMTRAP", "mail to a spam trap"),
        why('recipient = "trap@example.com" (matches "^trap@")'),
        hit(3, "BULK", "a bulk sender"),
        why('sender = "<bulk-x@example.org>" (matches "^bulk-")'),
        hit(1, "HELO_BARE", "the HELO name is a bare IP address"),
        why('helo = "192.0.2.9" (bare_ip)'),
        hit(5, "NO_DATE", "the message has no Date header"),
        why("header Date: none (missing)"),
        hit(50, "ON_TRIAL", "a rule on trial") + " (observe: not counted)",
        why('header Subject matches "(?i)trial": "a trial"'),
        "  if the observed hits counted: 69.0 -> reject",
        "  + X-Spam-Score: 19.0",
        "  + X-Spam-Status: Yes, score=19.0 hits=SPAMTRAP,BULK,HELO_BARE,NO_DATE",
        "log: NOQUEUE: decision id=ID client=192.0.2.1 client_name=unknown helo=192.0.2.9"
        " from=bulk-x@example.org rcpt=<postmaster@example.com> refused=<trap@example.com>"
        " stage=eom action=reject enforced=tag waived_by=exempt mode=enforce score=19.0"
        " hits=SPAMTRAP:10,BULK:3,HELO_BARE:1,NO_DATE:5,ON_TRIAL:50(observe)"
        f" trial_action=reject:69.0 lists_ignored=no-dns policy={DIGEST}",
    ]
    assert result.status == 1  # the message was tagged


def test_split_recipient_is_printed_with_its_452(runs: dict[str, Explained]) -> None:
    result = runs["split"]
    assert result.lines[2:] == [
        "recipient user@example.com: accept",
        "  score 0.0 -> accept",
        "recipient x@example.net: tempfail (split: policy lenient, transaction default)",
        "  -> 452 4.5.3 Too many recipients: this one has another filter policy,"
        " send it separately",
        "log: NOQUEUE: decision id=ID client=192.0.2.1 client_name=unknown"
        " rcpt=<user@example.com> refused= deferred=<x@example.net> stage=rcpt action=accept"
        f" enforced=accept mode=enforce score=0.0 lists_ignored=no-dns policy={DIGEST}",
    ]
    assert result.status == 0  # the best-treated recipient was accepted


# --- exit status -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "fate"),
    [
        pytest.param("accept", 0, "message: accept", id="accept"),
        pytest.param("tag", 1, "message: tag", id="tag"),
        pytest.param("quarantine", 2, "message: quarantine", id="quarantine"),
        pytest.param("tempfail", 3, "message: tempfail", id="tempfail"),
        pytest.param("reject-at-eom", 4, "message: reject", id="reject-at-eom"),
        pytest.param(
            "greylist",
            5,
            "  -> 451 4.7.1 Greylisted: please try again in 300 seconds (id ID)",
            id="greylist-first-attempt",
        ),
        pytest.param("recipient-policy-thresholds", 1, "message: tag", id="recipient-policy"),
    ],
)
def test_exit_status_is_the_fate_of_the_message(
    runs: dict[str, Explained], case: str, status: int, fate: str
) -> None:
    result = runs[case]
    assert (result.status, result.stderr) == (status, "")
    assert fate in result.lines


def test_quarantine_and_tempfail_print_their_reason_and_reply(runs: dict[str, Explained]) -> None:
    assert runs["quarantine"].lines[-2] == (
        "  quarantined: spamgate: score 8.0: the message has no Date header; a bulk sender (id ID)"
    )
    assert (
        "  -> 451 4.7.1 Try again later: the message has no Date header; a bulk sender;"
        " the HELO name is a bare IP address (id ID)"
    ) in runs["tempfail"].lines


def test_raw_bytes_of_a_message_header_reach_the_rules(runs: dict[str, Explained]) -> None:
    assert hit(0.5, "RAW_FF", "a raw 0xff byte") in runs["accept"].lines


@pytest.mark.parametrize(
    ("case", "status", "fate"),
    [
        pytest.param("no-message", 1, "recipient u@example.com: tag", id="tag-beats-reject"),
        pytest.param("split", 0, "recipient user@example.com: accept", id="accept-beats-452"),
    ],
)
def test_without_a_message_the_best_treated_recipient_decides(
    runs: dict[str, Explained], case: str, status: int, fate: str
) -> None:
    result = runs[case]
    assert result.status == status
    assert fate in result.lines
    assert not has_message(result)


@pytest.mark.parametrize(
    ("case", "status", "recipient"),
    [
        pytest.param(
            "reject-at-rcpt", 4, "recipient trap@example.com: reject", id="every-recipient-refused"
        ),
        pytest.param(
            "trap-poisons-the-transaction",
            4,
            "recipient user@example.com: reject",
            id="spam-trap-refuses-the-next-recipient-too",
        ),
        pytest.param(
            "allowed",
            0,
            "recipient trap@example.com: accept (allowed_by=sender:@partner.example)",
            id="allowed-is-not-filtered",
        ),
    ],
)
def test_a_message_is_judged_only_if_a_recipient_was_accepted_and_filtered(
    runs: dict[str, Explained], case: str, status: int, recipient: str
) -> None:
    result = runs[case]
    assert (result.status, result.stderr) == (status, "")
    assert recipient in result.lines
    assert not has_message(result)
    assert " stage=rcpt " in result.lines[-1]


# --- errors ------------------------------------------------------------------------------------


def test_bad_policy_exits_78_naming_file_line_and_key(runs: dict[str, Explained]) -> None:
    result = runs["bad-policy"]
    assert (result.status, result.lines) == (78, [])
    assert result.stderr == (
        f"spamgate: {result.policy}:2:47: rules[0].helo: expected one of bare_ip, not_fqdn,"
        " ours, unresolvable, not_ptr_domain, got the string 'maybe'\n"
    )


@pytest.mark.parametrize(
    ("case", "stderr"),
    [
        pytest.param("bad-ip", "spamgate: --ip '192.0.2' is not an IP address\n", id="bad-ip"),
        pytest.param(
            "ip-is-a-name", "spamgate: --ip 'mx.example' is not an IP address\n", id="name"
        ),
    ],
)
def test_bad_ip_exits_64(runs: dict[str, Explained], case: str, stderr: str) -> None:
    result = runs[case]
    assert (result.status, result.stderr, result.lines) == (64, stderr, [])


def test_unknown_option_exits_64_not_2(runs: dict[str, Explained]) -> None:
    result = runs["unknown-option"]
    assert result.status == 64  # argparse's 2 would read as "quarantine"
    assert result.stderr.endswith("spamgate: error: unrecognized arguments: --helo-name\n")


def test_missing_message_file_is_an_error_not_an_action(runs: dict[str, Explained]) -> None:
    result = runs["missing-message"]
    assert result.status not in (0, 1, 2, 3, 4)
    assert "Traceback" not in result.stderr


# --- read_headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "newline", [pytest.param(b"\r\n", id="crlf"), pytest.param(b"\n", id="lf")]
)
def test_read_headers_keeps_folding_and_raw_bytes_and_ignores_the_body(newline: bytes) -> None:
    lines = [
        b"From: Someone <a@example.org>",
        b"Subject:   one",
        b" two",
        b"\tthree",
        b"X-Raw: caf\xff and \xc3\xa9",
        b"X-Empty:",
        b"Not a header line",
        b"Date : Wed, 01 May 2024 12:00:00 +0000",
        b"",
        b"Body-Line: not a header",
        b" nor this",
    ]
    assert read_headers(newline.join(lines)) == [
        ("From", "Someone <a@example.org>"),
        ("Subject", "one\n two\n\tthree"),
        ("X-Raw", "caf\udcff and \u00e9"),
        ("X-Empty", ""),
        ("Date", "Wed, 01 May 2024 12:00:00 +0000"),
    ]


def test_read_headers_of_mixed_line_ends_and_no_body() -> None:
    data = b"A: 1\r\nB: 2\n C\r\nD: 3"
    assert read_headers(data) == [("A", "1"), ("B", "2\n C"), ("D", "3")]


# --- a list that cannot be asked ---------------------------------------------------------------


def test_a_silent_list_with_on_unusable_tempfail_exits_with_the_tempfail_status(
    runs: dict[str, Explained],
) -> None:
    result = runs["list-silent-tempfail"]
    assert (result.status, result.stderr) == (3, "")
    assert result.lines[1:5] == [
        "recipient user@example.com: tempfail",
        "  score 0.0 -> tempfail",
        "  tempfail: ZEN could not be asked, and could have changed the action"
        " (on_unusable: tempfail)",
        "  -> 451 4.7.1 Cannot check your address against Example ZEN right now,"
        " please try again later (id ID)",
    ]
    log = result.lines[-1]
    assert " action=tempfail enforced=tempfail tempfail_by=unusable:ZEN " in log
    assert " fails=ZEN_FAIL lists=ZEN:unusable:" in log
    assert "zen.test" not in "\n".join(result.lines)


def test_a_silent_list_judged_without_it_by_default(runs: dict[str, Explained]) -> None:
    result = runs["list-silent-judge"]
    assert (result.status, result.stderr) == (0, "")
    assert result.lines[1:3] == ["recipient user@example.com: accept", "  score 0.0 -> accept"]
    assert "tempfail_by" not in result.lines[-1]
    assert " fails=ZEN_FAIL " in result.lines[-1]


def test_a_silent_list_never_defers_postmaster(runs: dict[str, Explained]) -> None:
    result = runs["list-silent-postmaster"]
    assert (result.status, result.stderr) == (0, "")
    assert "recipient postmaster@example.com: accept (exempt)" in result.lines
