"""`spamgate mass-check` on fixture mail written here: sources, hostile files, the report.

Most runs call the command's entry point in this process (each costs milliseconds); one
runs it as a process, the way an admin does, for the exit status and streams.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from spamgate.commands.cli import main

POLICY = r"""
thresholds: {tag: 3, greylist: 5, reject: 10}
our_names: [store.example.com]
rules:
  - {name: HELO_BARE, score: 2, description: the HELO is a bare IP address, helo: bare_ip}
  - {name: SUBJECT_SPAM, score: 10, description: the Subject says spam,
     header: {name: Subject, matches: '(?i)\bspam\b'}}
  - {name: SUBJECT_CHEAP, score: 5, description: the Subject says cheap,
     header: {name: Subject, matches: '(?i)cheap'}}
  - {name: OLD, score: 1, description: dated long before it came, date_behind_days: 30}
"""

DATE = "Thu, 22 Aug 2002 07:36:16 -0400"
OURS = f"by mx.example.com (Postfix) with ESMTP id 1; {DATE}"
FRIEND = f"Received: from friend (friend.example.net [198.51.100.7]) {OURS}\n"
BARE = f"Received: from 203.0.113.5 (unknown [203.0.113.5]) {OURS}\n"
# Below ours, a forged-looking hop the sender wrote: never read for the client.
FORGED = f"Received: from 203.0.113.9 (unknown [203.0.113.9]) by mx.example.com; {DATE}\n"


def message(subject: str, received: str = FRIEND, date: str = DATE) -> bytes:
    head = f"{received}From: a@example.org\nTo: b@example.com\nDate: {date}\nSubject: {subject}\n"
    return (head + "\nthe body\nFrom here on, a line an mbox would escape\n").encode()


# Hostile files: each is read as a message (or as none) and never stops the run.
HOSTILE = {
    "empty.eml": b"",
    "nul.eml": b"Subject: a\x00b spam\nFrom: \x00@\x00\n\n\x00",
    "latin1.eml": b"Subject: \xe9t\xe9 cheap\nFrom: \xff@example.org\n\nbody \xff",
    "no-separator.eml": b"Subject: spam\nFrom: a@example.org\nno colon here, so not a header",
    "huge-header.eml": b"Subject: cheap\nX-Big: " + b"x" * 2_000_000 + b"\n\nbody",
    "binary.bin": bytes(range(256)) * 64,
    "received-garbage.eml": b"Received: from ((((([by by by; ;;\nReceived: \xff\x00\n\nb",
    "crlf-only.eml": b"\r\n\r\n\r\n",
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    ham = tmp_path / "ham"
    ham.mkdir()
    (ham / "1.eml").write_bytes(message("lunch?"))
    (ham / "2.eml").write_bytes(message("cheap flights, as you asked"))
    (ham / "3.eml").write_bytes(message("minutes", received=FRIEND + FORGED))
    (ham / ".hidden").write_bytes(message("spam"))  # editors' and sync tools' files: skipped
    (ham / "sub").mkdir()  # a folder inside a message folder: skipped
    mbox = tmp_path / "spam.mbox"
    separator = "From a@example.org Thu Aug 22 07:36:16 2002\n"
    mbox.write_bytes(
        b"".join(
            separator.encode() + m + b"\n"
            for m in (message("spam spam"), message("hi", received=BARE), message("cheap"))
        )
    )
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1:2,S").write_bytes(message("cheap pills"))
    (maildir / "new" / "2").write_bytes(message("old", date="Mon, 1 Jan 2001 00:00:00 +0000"))
    (maildir / "tmp" / "3").write_bytes(message("spam"))  # being delivered: not a message yet
    return tmp_path


def check(mail: Path, *more: str) -> list[str]:
    return [
        "mass-check", "-c", str(mail / "policy.yaml"), "--ham", str(mail / "ham"),
        "--spam", str(mail / "spam.mbox"), str(mail / "Maildir"), *more,
    ]  # fmt: skip


def test_report_counts_rules_outcomes_and_scores(
    mail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(check(mail, "--our-hosts", "mx.example.com"), capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "3 ham, 5 spam, 0 unreadable; client from our Received field: 3 ham, 5 spam"
    table = lines[lines.index(next(x for x in lines if x.lstrip().startswith("SPAM"))) + 1 :]
    rows = [row.split() for row in table[: table.index("")]]
    # Spam-only rules first (then by spam hits), a rule that fires in ham last.
    assert rows == [
        ["1", "20.00%", "0", "0.00%", "1.000", "+2.0", "HELO_BARE"],
        ["1", "20.00%", "0", "0.00%", "1.000", "+1.0", "OLD"],
        ["1", "20.00%", "0", "0.00%", "1.000", "+10.0", "SUBJECT_SPAM"],
        ["2", "40.00%", "1", "33.33%", "0.545", "+5.0", "SUBJECT_CHEAP"],
    ]
    outcomes = lines.index(next(x for x in lines if x.split()[:2] == ["accept", "tag"]))
    assert lines[outcomes + 1].split() == ["ham", "2", "0", "1", "0", "0", "0"]
    assert lines[outcomes + 2].split() == ["spam", "2", "0", "2", "0", "0", "1"]
    assert "score of ham:" in lines and "score of spam:" in lines
    histogram = lines[lines.index("score of ham:") + 1 : lines.index("score of spam:")]
    # Whole-point bins from the lowest score to the highest, shared by both labels.
    assert [row.split()[:4] for row in histogram[:2]] == [
        ["0", "..", "1", "2"],
        ["1", "..", "2", "0"],
    ]
    assert [int(row.split()[3]) for row in histogram] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert histogram[0].endswith("#" * 50)  # the largest bin of a label is 50 wide


def test_json_is_the_same_report(mail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(check(mail, "--our-hosts", "mx.example.com", "--json"), capsys)
    assert code == 0
    report = json.loads(out)
    assert report["messages"] == {"ham": 3, "spam": 5}
    assert report["unreadable"] == []
    cheap = next(r for r in report["rules"] if r["name"] == "SUBJECT_CHEAP")
    assert cheap == {
        "name": "SUBJECT_CHEAP", "score": 5.0, "ham": 1, "spam": 2,
        "ham_share": pytest.approx(1 / 3), "spam_share": pytest.approx(0.4),
        "s_o": pytest.approx(0.4 / (0.4 + 1 / 3)),
    }  # fmt: skip
    assert report["outcomes"]["spam"] == {
        "accept": 2, "tag": 0, "greylist": 2, "quarantine": 0, "tempfail": 0, "reject": 1,
    }  # fmt: skip
    assert sum(b["ham"] for b in report["scores"]) == 3
    assert sum(b["spam"] for b in report["scores"]) == 5


def test_the_client_is_read_from_our_received_field_only(
    mail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bare-IP HELO is in our field of one spam message; the forged field below ours in
    a ham message is never read. Without --our-hosts, every client is neutral."""
    _, out, _ = run(check(mail, "--our-hosts", "mx.example.com", "--json"), capsys)
    rules = {r["name"]: (r["ham"], r["spam"]) for r in json.loads(out)["rules"]}
    assert rules["HELO_BARE"] == (0, 1)
    _, out, _ = run(check(mail, "--json"), capsys)
    report = json.loads(out)
    assert "HELO_BARE" not in {r["name"] for r in report["rules"]}
    assert report["client_from_received"] == {"ham": 0, "spam": 0}


def test_our_hosts_by_address_and_our_names_from_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    relay = f"Received: from mx (mx [10.1.2.3]) by store.example.com; {DATE}\n"
    by_address = f"Received: from 203.0.113.5 (unknown [203.0.113.5]) by [10.1.2.3]; {DATE}\n"
    (tmp_path / "m.eml").write_bytes(message("x", received=relay + by_address))
    argv = ["mass-check", "-c", str(tmp_path / "policy.yaml"), "--spam", str(tmp_path / "m.eml")]
    _, out, _ = run([*argv, "--our-hosts", "10.0.0.0/8", "--json"], capsys)
    assert json.loads(out)["rules"][0]["name"] == "HELO_BARE"


def test_the_date_is_judged_against_our_received_time_not_today(
    mail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mail of 2002 received in 2002 is not old; without a Received time, its Date is now."""
    _, out, _ = run(check(mail, "--json"), capsys)
    old = next(r for r in json.loads(out)["rules"] if r["name"] == "OLD")
    assert (old["ham"], old["spam"]) == (0, 1)  # only the message dated 2001


def test_hostile_files_are_scored_never_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    odd = tmp_path / "odd"
    odd.mkdir()
    for name, data in HOSTILE.items():
        (odd / name).write_bytes(data)
    mbox = tmp_path / "odd.mbox"
    mbox.write_bytes(b"From x\n\n\nFrom y\nSubject: spam\n\n\nFrom \xff\x00\n")
    argv = ["mass-check", "-c", str(tmp_path / "policy.yaml"), "--spam", str(odd), str(mbox)]
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["messages"] == {"ham": 0, "spam": len(HOSTILE) + 3}
    rules = {r["name"]: r["spam"] for r in report["rules"]}
    # The NUL and the no-separator messages say spam; the mbox's second one too.
    assert rules["SUBJECT_SPAM"] == 3
    assert rules["SUBJECT_CHEAP"] == 2  # the Latin-1 and the huge-header messages
    code, out, _ = run(argv, capsys)  # and the text report
    assert code == 0 and "score of spam:" in out


# Python's own odd messages (test_email's data: bad MIME, NULs, folded junk), where installed.
EMAIL_TEST_DATA = Path(sysconfig.get_path("stdlib")) / "test" / "test_email" / "data"


@pytest.mark.skipif(not EMAIL_TEST_DATA.is_dir(), reason="the stdlib's test package is absent")
def test_pythons_email_test_messages_never_crash_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    argv = ["mass-check", "-c", str(tmp_path / "policy.yaml"), "--spam", str(EMAIL_TEST_DATA)]
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, "")
    files = [p for p in EMAIL_TEST_DATA.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert json.loads(out)["messages"]["spam"] == len(files)


def test_unreadable_files_are_named_and_counted(
    mail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mail / "ham" / "dangling.eml").symlink_to(mail / "nowhere")
    code, out, err = run(check(mail, str(mail / "absent.mbox"), "--json"), capsys)
    assert code == 0
    report = json.loads(out)
    assert report["messages"] == {"ham": 3, "spam": 5}
    assert report["unreadable"] == [str(mail / "ham" / "dangling.eml"), str(mail / "absent.mbox")]
    assert err.splitlines() == [
        f"spamgate: mass-check: cannot read {mail}/ham/dangling.eml: No such file or directory",
        f"spamgate: mass-check: cannot read {mail}/absent.mbox: No such file or directory",
    ]
    code, out, _ = run(check(mail, str(mail / "absent.mbox")), capsys)
    assert out.startswith("3 ham, 5 spam, 2 unreadable;")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_file_without_read_permission_is_unreadable(
    mail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mail / "ham" / "1.eml").chmod(0)
    code, _, err = run(check(mail), capsys)
    assert code == 0 and "1.eml: Permission denied" in err


@pytest.mark.parametrize(
    ("sources", "code", "stderr"),
    [
        pytest.param([], os.EX_USAGE, "name some mail: --ham SOURCE, --spam SOURCE", id="none"),
        pytest.param(["--ham", "absent"], os.EX_NOINPUT, "no message could be read", id="absent"),
        pytest.param(["--ham", "empty-dir"], os.EX_NOINPUT, "no message could be read",
                     id="empty-folder"),
        pytest.param(["--spam"], os.EX_USAGE, "expected at least one argument", id="no-source"),
        pytest.param(["--hamm", "x"], os.EX_USAGE, "unrecognized arguments", id="unknown-option"),
    ],
)  # fmt: skip
def test_bad_usage_and_no_mail(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sources: list[str],
    code: int,
    stderr: str,
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "empty-dir").mkdir()
    paths = [s if s.startswith("--") else str(tmp_path / s) for s in sources]
    try:
        got = run(["mass-check", "-c", str(tmp_path / "policy.yaml"), *paths], capsys)
    except SystemExit as exit_:  # argparse's own errors exit
        got = (int(str(exit_.code)), "", capsys.readouterr().err)
    assert got[0] == code
    assert stderr in got[2]


def test_as_a_process(mail: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spamgate", *check(mail, "--json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["messages"] == {"ham": 3, "spam": 5}


def test_a_message_that_makes_spamgate_raise_is_named_counted_and_fails_the_run(
    mail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that one message triggers must neither stop a run over a large mailbox nor be
    hidden: the message is named and counted, the rest is scored, and the exit status is 70."""
    from spamgate.commands import masscheck  # noqa: PLC0415

    real = masscheck.converse

    def converse(runtime: Any, client: Any, data: bytes | None) -> Any:
        if data is not None and b"Subject: lunch?" in data:
            raise KeyError("a bug")
        return real(runtime, client, data)

    monkeypatch.setattr(masscheck, "converse", converse)
    code, out, err = run(check(mail, "--json"), capsys)
    assert code == 70
    report = json.loads(out)
    assert report["failed"] == [str(mail / "ham" / "1.eml")]
    assert report["messages"] == {"ham": 2, "spam": 5}
    assert err.startswith(f"spamgate: mass-check: cannot score {mail}/ham/1.eml: KeyError: 'a bug'")
    code, out, _ = run(check(mail), capsys)
    assert code == 70
    assert out.startswith("2 ham, 5 spam, 0 unreadable, 1 failed;")
