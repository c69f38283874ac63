"""`spamgate explain` shows, under each fired rule's hit, what the rule tested and the value it
fired on (issue 16: so an admin can see why a header rule hit). Run as a subprocess the way an
admin runs it, with --no-dns; attacker text in the message never reaches the terminal raw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spamgate.commands.explain import TracingRuleBook, tracing_engine
from spamgate.core import schema
from spamgate.core.engine import Engine
from spamgate.core.policy import Policy

POLICY = r"""
thresholds: {tag: 3, greylist: null, tempfail: null, reject: 50}
rules:
  - {name: SUBJECT_SHOUTS, score: 1, description: a Subject in capitals,
     fact: {name: subject.caps_ratio, over: 0.9}}
  - {name: MSGID_FOREIGN, score: 0.5, description: Message-ID not of the From domain,
     fact: {name: message_id.from_domain, is: false}}
  - {name: MAILER_BULK, score: 1, description: a bulk mailer,
     fact: {name: mailer, matches: '(?i)mass ?mail'}}
  - {name: TO_UNDISCLOSED, score: 0.5, description: recipients not shown,
     fact: {name: recipients.undisclosed, is: true}}
  - {name: HELO_BARE_IP, score: 2, description: the HELO name is a bare IP address,
     helo: bare_ip}
  - {name: PHARMA, score: 4, description: a pharmacy Subject,
     header: {name: Subject, matches: '(?i)viagra'}}
  - {name: NO_DATE, score: 1, description: no Date header, header: {name: Date, missing: true}}
  - {name: MANY_RCVD, score: 1, description: relayed often,
     header: {name: Received, count_over: 1}}
  - {name: FROM_FOREIGN, score: 1, description: From not of MAIL FROM's domain,
     from_domain: not_sender_domain}
  - {name: PHARMA_UNDATED, score: 1, description: pharmacy and no Date,
     composite: {all: [PHARMA, NO_DATE]}}
  - {name: FROM_PARTNER, score: -5, description: a partner, sender_matches: '@partner\.example$'}
  - {name: JUNK_RAW, score: 0, description: a raw 0xff byte in X-Junk,
     header: {name: X-Junk, matches_raw: '\xff'}}
  - {name: PHARMA_NOT_PARTNER, score: 1, description: undated pharmacy not from a partner,
     composite: {all: [PHARMA_UNDATED], any: [JUNK_RAW, MANY_RCVD], not: [FROM_PARTNER]}}
"""
# ESC sequences (clear the screen, move the cursor) and a bidi override in what a sender wrote.
MESSAGE = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Received: from c by d; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: shop@pharmacy.example\r\n"
    b"Message-ID: <1@bulk.example.net>\r\n"
    b"X-Mailer: MassMail Pro \x1b]0;owned\x07 \xe2\x80\xae5.0\r\n"
    b"Subject: CHEAP VIAGRA NOW \x1b[2J\x1b[H" + b"!" * 100 + b"\r\n"
    b"X-Junk: \xff\xfe\x1b[31m" + b"junk\x07" * 2000 + b"\r\n"
    b"\r\n"
    b"the body\r\n"
)


# The 10,000-character X-Junk field, undecodable bytes and control characters escaped, cut.
JUNK = '"\\xff\\xfe\\x1b[31m' + "junk\\x07" * 8 + '"...'


def why(detail: str) -> str:
    return f"              {detail}"


def hit(score: float, name: str, description: str) -> str:
    return f"    {score:+6.1f}  {name:<28} {description}"


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    workdir = tmp_path_factory.mktemp("explain-facts")
    policy, message = workdir / "policy.yaml", workdir / "message.eml"
    policy.write_text(POLICY, encoding="utf-8")
    message.write_bytes(MESSAGE)
    argv = ["explain", "-c", str(policy), "--no-dns", "--helo", "192.0.2.1"]
    argv += ["--from", "x@spam.example", str(message)]
    return subprocess.run(
        [sys.executable, "-m", "spamgate", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def message_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    start = lines.index("message: tag")
    end = next(i for i, line in enumerate(lines) if line.startswith("  + "))
    return lines[start:end]


def test_each_fired_rule_shows_what_it_tested_and_the_value(
    explained: subprocess.CompletedProcess[str],
) -> None:
    assert (explained.returncode, explained.stderr) == (1, "")
    subject = '"CHEAP VIAGRA NOW \\x1b[2J\\x1b[H' + "!" * 50 + '"...'
    assert message_lines(explained) == [
        "message: tag",
        "  score 14.0 -> tag",
        hit(1, "SUBJECT_SHOUTS", "a Subject in capitals"),
        why("fact subject.caps_ratio = 1 (over 0.9)"),
        hit(0.5, "MSGID_FOREIGN", "Message-ID not of the From domain"),
        why("fact message_id.from_domain = false (is false)"),
        hit(1, "MAILER_BULK", "a bulk mailer"),
        why(
            'fact mailer = "MassMail Pro \\x1b]0;owned\\x07 \\u202e5.0" (matches "(?i)mass ?mail")'
        ),
        hit(0.5, "TO_UNDISCLOSED", "recipients not shown"),
        why("fact recipients.undisclosed = true (is true)"),
        hit(2, "HELO_BARE_IP", "the HELO name is a bare IP address"),
        why('helo = "192.0.2.1" (bare_ip)'),
        hit(4, "PHARMA", "a pharmacy Subject"),
        why(f'header Subject matches "(?i)viagra": {subject}'),
        hit(1, "NO_DATE", "no Date header"),
        why("header Date: none (missing)"),
        hit(1, "MANY_RCVD", "relayed often"),
        why("header Received count = 2 (over 1)"),
        hit(1, "FROM_FOREIGN", "From not of MAIL FROM's domain"),
        why('from_domain = "pharmacy.example", sender domain "spam.example" (not_sender_domain)'),
        hit(1, "PHARMA_UNDATED", "pharmacy and no Date"),
        why("composite: all of PHARMA, NO_DATE"),
        why(f'  all PHARMA fired: header Subject matches "(?i)viagra": {subject}'),
        why("  all NO_DATE fired: header Date: none (missing)"),
        hit(0, "JUNK_RAW", "a raw 0xff byte in X-Junk"),
        why(f'header X-Junk matches_raw "\\\\xff": {JUNK}'),
        hit(1, "PHARMA_NOT_PARTNER", "undated pharmacy not from a partner"),
        why("composite: all of PHARMA_UNDATED; any of JUNK_RAW, MANY_RCVD; none of FROM_PARTNER"),
        why("  all PHARMA_UNDATED fired: composite: all of PHARMA, NO_DATE"),
        why(f'    all PHARMA fired: header Subject matches "(?i)viagra": {subject}'),
        why("    all NO_DATE fired: header Date: none (missing)"),
        why(f'  any JUNK_RAW fired: header X-Junk matches_raw "\\\\xff": {JUNK}'),
        why("  any MANY_RCVD fired: header Received count = 2 (over 1)"),
        # A `not:` part holds because its rule did not fire: the value that did not match.
        why(
            '  not FROM_PARTNER did not fire, as required: sender = "<x@spam.example>"'
            ' (matches "@partner\\\\.example$")'
        ),
    ]


def test_no_control_character_of_the_message_reaches_the_terminal(
    explained: subprocess.CompletedProcess[str],
) -> None:
    printed = explained.stdout.replace("\n", "")
    assert printed.isprintable(), [c for c in printed if not c.isprintable()]


def test_the_recipient_verdict_is_explained_too(
    explained: subprocess.CompletedProcess[str],
) -> None:
    lines = explained.stdout.splitlines()
    start = lines.index("recipient someone@example.com: accept")
    assert lines[start : start + 4] == [
        "recipient someone@example.com: accept",
        "  score 2.0 -> accept",
        hit(2, "HELO_BARE_IP", "the HELO name is a bare IP address"),
        why('helo = "192.0.2.1" (bare_ip)'),
    ]


def test_the_daemon_engine_traces_nothing() -> None:
    """Only explain's engine remembers the facts its rules fired on."""
    policy = schema.load(Policy, POLICY, "t.yaml")
    assert not isinstance(Engine(policy).rulebook, TracingRuleBook)
    assert isinstance(tracing_engine(policy).rulebook, TracingRuleBook)


def explain(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spamgate", "explain", *argv],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # a raw byte that reached stdout fails the test, not the run
        timeout=60,
        check=False,
    )


def test_hostile_names_print_escaped_and_bounded_one_line_each(tmp_path: Path) -> None:
    """A HELO, client name or recipient copied from a log can hold escape sequences, bytes
    that are not UTF-8 and thousands of characters: explain's own lines show them escaped
    and cut, as the trace shows a header, and the exit status is still the action's."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    helo = "h" * 10_000
    # argv bytes that are not UTF-8 reach Python as lone surrogates (PEP 383).
    rcpt = "trap\x1b[2J\udcff\u202e@example.com"
    result = explain(
        "-c", str(policy), "--no-dns", "--helo", helo, "--name", "n\x07m", "--rcpt", rcpt
    )
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[1:3] == [
        f'client 192.0.2.1 name="n\\x07m" helo="{"h" * 80}"...',
        'recipient "trap\\x1b[2J\\xff\\u202e@example.com": accept',
    ]
    assert result.stdout.replace("\n", "").isprintable()
    assert max(len(line) for line in lines[:-1]) < 200  # the log line quotes, and does not cut


def test_json_has_each_hit_with_its_parts_and_values(tmp_path: Path) -> None:
    policy, message = tmp_path / "policy.yaml", tmp_path / "message.eml"
    policy.write_text(POLICY, encoding="utf-8")
    message.write_bytes(MESSAGE)
    result = explain(
        "-c", str(policy), "--no-dns", "--json", "--helo", "192.0.2.1",
        "--from", "x@spam.example", str(message),
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (1, "")  # tag, as without --json
    assert result.stdout.isascii()  # attacker text leaves as JSON escapes
    document = json.loads(result.stdout)
    assert document["client"] == {"address": "192.0.2.1", "name": "unknown", "helo": "192.0.2.1"}
    assert [r["action"] for r in document["recipients"]] == ["accept"]
    verdict = document["message"]["verdict"]
    assert (verdict["score"], verdict["action"], document["exit_status"]) == (14.0, "tag", 1)
    hits = {h["name"]: h for h in verdict["hits"]}
    assert hits["HELO_BARE_IP"]["trace"] == {
        "name": "HELO_BARE_IP",
        "fired": True,
        "detail": 'helo = "192.0.2.1" (bare_ip)',
    }
    composite = hits["PHARMA_NOT_PARTNER"]["trace"]
    assert [(p["role"], p["name"], p["fired"]) for p in composite["parts"]] == [
        ("all", "PHARMA_UNDATED", True),
        ("any", "JUNK_RAW", True),
        ("any", "MANY_RCVD", True),
        ("not", "FROM_PARTNER", False),
    ]
    nested = composite["parts"][0]["parts"]
    assert [p["detail"] for p in nested][1] == "header Date: none (missing)"
    assert composite["parts"][3]["detail"] == (
        'sender = "<x@spam.example>" (matches "@partner\\\\.example$")'
    )
