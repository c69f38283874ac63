"""Reading (step 1) and building (step 2) a policy: every file is read once, before the build,
and the build reads nothing, so the policy and its digest come from the same bytes."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from spamgate.config import files as config
from spamgate.config.files import load_policy, read_sources
from spamgate.core import schema
from spamgate.core.policy import Policy, build_policy
from spamgate.core.schema import ConfigError, FileReference, NamesFiles
from spamgate.core.sources import NamedFiles, Sources

KEY = "abcdefghij0123456789klmnop"


def write_policy(tmp_path: Path) -> Path:
    """A policy that names a list file three times, a key file twice and two more lists."""
    (tmp_path / "nets").write_text("192.0.2.0/24\n")
    (tmp_path / "senders").write_text("@friend.example\n")
    (tmp_path / "rcpts").write_text("@lenient.example\n")
    (tmp_path / "dqs.key").write_text(KEY + "\n")
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(
        "allow:\n"
        "  clients: [file:nets, 10.0.0.0/8]\n"
        "  senders: [file:senders]\n"
        "deny:\n"
        "  clients: ['file: nets ']\n"
        "recipient_policies:\n"
        "  - {name: lenient, recipients: ['@x.example', file:rcpts, file:senders]}\n"
        "ip_lists:\n"
        "  - {name: ZEN, zone: '{key}.zen.dq.spamhaus.net', key_file: dqs.key, score: 10}\n"
        "domain_lists:\n"
        "  - {name: DBL, zone: '{key}.dbl.dq.spamhaus.net', key_file: dqs.key, score: 5}\n"
    )
    return policy


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every file opened, by os.open or open(), while the test runs."""
    paths: list[str] = []
    os_open, builtin_open = os.open, builtins.open

    def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        paths.append(str(path))
        return os_open(path, *args, **kwargs)

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        paths.append(str(path))
        return builtin_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_os_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    yield paths


def test_each_file_is_opened_once_however_often_it_is_named(
    tmp_path: Path, opened: list[str]
) -> None:
    policy = load_policy(write_policy(tmp_path))
    names = ["spamgate.yaml", "nets", "senders", "rcpts", "dqs.key"]
    assert sorted(opened) == sorted(str(tmp_path / name) for name in names)
    assert policy.allow.client_set.match(ipaddress.ip_address("192.0.2.7")) == "192.0.2.0/24"
    assert policy.deny.client_set.match(ipaddress.ip_address("192.0.2.7")) == "192.0.2.0/24"
    assert policy.allow.sender_set.match("a@friend.example") == "@friend.example"
    assert policy.recipient_policies[0].recipient_set.match("b@lenient.example")
    assert [lst.query_zone.split(".")[0] for lst in policy.dns_lists] == [KEY, KEY]


def test_the_sources_say_where_each_file_is_named(tmp_path: Path) -> None:
    sources = read_sources(write_policy(tmp_path))
    assert sources.content == (tmp_path / "spamgate.yaml").read_bytes()
    assert sorted(sources.files.contents) == sorted(
        tmp_path / name for name in ("nets", "senders", "rcpts", "dqs.key")
    )
    assert [(r.path, r.line, r.column) for r in sources.references] == [
        ("allow.clients[0]", 2, 13),
        ("allow.senders[0]", 3, 13),
        ("deny.clients[0]", 5, 13),
        ("recipient_policies[0].recipients[1]", 7, 48),
        ("recipient_policies[0].recipients[2]", 7, 60),
        ("ip_lists[0].key_file", 9, 52),
        ("domain_lists[0].key_file", 11, 52),
    ]
    with pytest.raises(TypeError):
        sources.files.contents[tmp_path / "nets"] = b"10.0.0.0/8\n"  # type: ignore[index]  # read-only


def test_a_file_changed_during_the_load_cannot_split_policy_and_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin edits a list while spamgate loads the policy: whatever the timing, the policy
    judges with the bytes its digest names (here the old ones: the file changes right after
    it was read)."""
    path = write_policy(tmp_path)
    before = load_policy(path)
    read = config.read_regular_file

    def read_then_edit(target: Path, limit: int) -> bytes:
        content = read(target, limit)
        if target.name == "nets":
            target.write_text("198.51.100.0/24\n")
        return content

    monkeypatch.setattr(config, "read_regular_file", read_then_edit)
    raced = load_policy(path)
    monkeypatch.undo()
    after = load_policy(path)
    client = ipaddress.ip_address("192.0.2.7")
    assert raced.allow.client_set.match(client) == "192.0.2.0/24"
    assert raced.deny.client_set.match(client) == "192.0.2.0/24"
    assert raced.digest == before.digest
    assert after.digest != before.digest
    assert after.allow.client_set.match(client) == ""


def test_the_digest_is_over_the_bytes_read(tmp_path: Path) -> None:
    sources = read_sources(write_policy(tmp_path))
    policy = build_policy(sources)
    digest = hashlib.sha256(sources.content)
    files = sources.files
    for entry in policy.included_files:
        content = files.contents[files.list_path(entry)]
        digest.update(f"\0{entry}\0{len(content)}\0".encode() + content)
    for _ in policy.dns_lists:  # two lists, one key file
        digest.update(f"\0{tmp_path / 'dqs.key'}\0{KEY}\0".encode())
    assert policy.digest == digest.hexdigest()[:12]


# --- the build reads nothing ------------------------------------------------------------------


@contextlib.contextmanager
def no_file_access() -> Iterator[None]:
    """Any look at the file system fails the test (pathlib goes through these too)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"file system access during the build: {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("open", "stat", "lstat", "access", "listdir", "scandir", "readlink"):
            patch.setattr(os, name, refuse)
        patch.setattr(builtins, "open", refuse)
        yield


def in_memory_sources(
    text: str, files: dict[str, bytes], source: str = "/nowhere/p.yaml"
) -> Sources:
    document = schema.parse(text, source)
    named = NamedFiles(Path(source).parent)
    contents = MappingProxyType({named.path_of(name): content for name, content in files.items()})
    return Sources(source, text.encode(), document, NamedFiles(named.base, contents))


IN_MEMORY = (
    "allow: {clients: [file:nets], senders: [file:/lists/senders]}\n"
    "ip_lists: [{name: ZEN, zone: '{key}.zen.dq.spamhaus.net', key_file: dqs.key, score: 10}]\n"
)


def test_the_build_reads_nothing() -> None:
    sources = in_memory_sources(
        IN_MEMORY,
        {"nets": b"192.0.2.0/24\n", "/lists/senders": b"@friend.example\n", "dqs.key": b"k" * 26},
    )
    with no_file_access():
        policy = build_policy(sources)
    assert policy.allow.client_set.match(ipaddress.ip_address("192.0.2.1")) == "192.0.2.0/24"
    assert policy.allow.sender_set.match("x@friend.example") == "@friend.example"
    assert policy.ip_lists[0].query_zone == "k" * 26 + ".zen.dq.spamhaus.net"
    assert policy.ip_lists[0].key_path == Path("/nowhere/dqs.key")
    assert len(policy.digest) == 12


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        pytest.param(
            "nets",
            "/nowhere/p.yaml:1:19: allow.clients[0]: /nowhere/nets: not read with the policy "
            "(a bug in spamgate, please report it)",
            id="list-file",
        ),
        pytest.param(
            "dqs.key",
            "/nowhere/p.yaml:2:59: ip_lists[0].key_file: /nowhere/dqs.key was not read with the "
            "policy (a bug in spamgate, please report it)",
            id="key-file",
        ),
    ],
)
def test_a_file_the_build_needs_and_step_1_did_not_read_is_a_located_error(
    missing: str, expected: str
) -> None:
    files = {"nets": b"", "/lists/senders": b"", "dqs.key": b"k" * 26}
    del files[missing]
    sources = in_memory_sources(IN_MEMORY, files)
    with no_file_access(), pytest.raises(ConfigError) as raised:
        build_policy(sources)
    assert str(raised.value) == expected


# --- which values name files --------------------------------------------------------------


def test_file_references_follow_the_schema_and_pass_over_what_does_not_fit() -> None:
    text = (
        "allow:\n"
        "  clients: [file:a, 10.0.0.0/8, 7]\n"  # every text entry; the reader keeps file: ones
        "  client_names: file:b\n"  # not a list: the build says so, nothing is read
        "  nonsense: [file:c]\n"  # an unknown key names nothing
        "our_names: [file:d]\n"  # a list without `file:` entries
        "ip_lists:\n"
        "  - {name: A, zone: z.test, score: 1, key_file: ''}\n"  # empty: no key file
        "  - {name: B, zone: z.test, score: 1, key_file: k}\n"
        "  - {name: C, zone: z.test, score: 1, key_file: [k]}\n"
    )
    document = schema.parse(text, "p.yaml")
    assert schema.file_references(Policy, document) == (
        FileReference(NamesFiles.ENTRIES, "file:a", 2, 13, "allow.clients[0]"),
        FileReference(NamesFiles.ENTRIES, "10.0.0.0/8", 2, 21, "allow.clients[1]"),
        FileReference(NamesFiles.PATH, "k", 8, 39, "ip_lists[1].key_file"),
    )


def test_a_file_named_as_a_list_and_as_a_key_keeps_the_key_limit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.write_text("# " + "x" * 5000 + "\n" + KEY + "\n")
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(
        "allow: {senders: [file:shared]}\n"
        "ip_lists: [{name: Z, zone: '{key}.zen.dq.spamhaus.net', key_file: shared, score: 1}]\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_policy(policy)
    assert str(raised.value) == (
        f"{policy}:2:57: ip_lists[0].key_file: {shared} is larger than 4 KiB"
    )
