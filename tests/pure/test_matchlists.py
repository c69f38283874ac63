"""Static allow and deny lists: networks, host name globs, envelope address patterns, `file:`
lists, and how a bad entry is reported through the policy file that names it."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from spamgate.config import files as config
from spamgate.config.files import load_policy
from spamgate.core.matchlists import AddressPatterns, EntryError, NamePatterns, NetworkSet, expand
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError
from spamgate.core.sources import NamedFiles, building_with

# -- NetworkSet ----------------------------------------------------------------------------------

NETWORKS = NetworkSet.parse(["192.0.2.0/24", "2001:db8::/32", "198.51.100.7", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("192.0.2.1", "192.0.2.0/24", id="in-ipv4-network"),
        pytest.param("192.0.2.255", "192.0.2.0/24", id="last-of-network"),
        pytest.param("192.0.3.0", "", id="next-network"),
        pytest.param("::ffff:192.0.2.9", "192.0.2.0/24", id="ipv4-mapped-matches-as-ipv4"),
        pytest.param("2001:db8::1", "2001:db8::/32", id="in-ipv6-network"),
        pytest.param("2001:db9::1", "", id="outside-ipv6-network"),
        pytest.param("198.51.100.7", "198.51.100.7/32", id="bare-address-is-a-host-network"),
        pytest.param("198.51.100.8", "", id="neighbour-of-host"),
        pytest.param("::ffff:198.51.100.7", "198.51.100.7/32", id="ipv4-mapped-host"),
        pytest.param("::ffff:203.0.113.1", "", id="ipv4-mapped-outside"),
        pytest.param("10.200.0.1", "10.0.0.0/8", id="rfc1918"),
    ],
)
def test_network_set_match(address: str, expected: str) -> None:
    assert NETWORKS.match(ipaddress.ip_address(address)) == expected


def test_network_set_no_address_matches_nothing() -> None:
    assert NETWORKS.match(None) == ""
    assert NetworkSet().match(ipaddress.ip_address("192.0.2.1")) == ""


def test_network_set_first_entry_in_order_wins() -> None:
    networks = NetworkSet.parse(["10.0.0.0/8", "10.1.0.0/16"])
    assert networks.match(ipaddress.ip_address("10.1.2.3")) == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        pytest.param("192.0.2.1/24", "has host bits set", id="host-bits"),
        pytest.param("192.0.2.0/33", "does not appear to be an IPv4 or IPv6 network", id="prefix"),
        pytest.param("example.com", "does not appear to be an IPv4 or IPv6 network", id="name"),
        pytest.param("300.0.0.1", "does not appear to be an IPv4 or IPv6 network", id="octet"),
        pytest.param("", "does not appear to be an IPv4 or IPv6 network", id="empty"),
    ],
)
def test_network_set_bad_entry(entry: str, detail: str) -> None:
    with pytest.raises(EntryError) as caught:
        NetworkSet.parse(["192.0.2.0/24", entry])
    assert str(caught.value).startswith(f"invalid network {entry!r}: ")
    assert detail in str(caught.value)
    assert caught.value.where == ""


# -- NamePatterns --------------------------------------------------------------------------------

NAMES = NamePatterns.parse(
    ["mail.example.com", "*.example.net", "MX?.Example.Org.", "relay[12].example.com"]
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("mail.example.com", "mail.example.com", id="exact"),
        pytest.param("MAIL.Example.COM.", "mail.example.com", id="exact-any-case-trailing-dot"),
        pytest.param("smtp.example.com", "", id="other-host"),
        pytest.param("xmail.example.com", "", id="exact-is-not-a-suffix"),
        pytest.param("a.example.net", "*.example.net", id="glob-one-label"),
        pytest.param("a.b.example.net", "*.example.net", id="glob-spans-labels"),
        pytest.param("A.Example.NET.", "*.example.net", id="glob-any-case-trailing-dot"),
        pytest.param("example.net", "", id="glob-needs-a-label-below"),
        pytest.param("badexample.net", "", id="glob-is-not-a-suffix"),
        pytest.param("mx1.example.org", "mx?.example.org", id="question-mark"),
        pytest.param("mx12.example.org", "", id="question-mark-is-one-character"),
        pytest.param("relay2.example.com", "relay[12].example.com", id="character-class"),
        pytest.param("relay3.example.com", "", id="outside-character-class"),
        pytest.param("", "", id="empty"),
        pytest.param(".", "", id="root"),
    ],
)
def test_name_patterns_match(name: str, expected: str) -> None:
    assert NAMES.match(name) == expected


def test_name_pattern_star_matches_any_name() -> None:
    assert NamePatterns.parse(["*"]).match("anything.example") == "*"


def test_name_patterns_truth() -> None:
    assert not NamePatterns()
    assert not NamePatterns.parse([])
    assert NamePatterns.parse(["mail.example.com"])
    assert NamePatterns.parse(["*.example.com"])


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="only-a-dot"),
        pytest.param("mail example.com", id="space"),
        pytest.param("user@example.com", id="address"),
        pytest.param("<mail.example.com>", id="angle-brackets"),
    ],
)
def test_name_patterns_bad_entry(entry: str) -> None:
    with pytest.raises(EntryError) as caught:
        NamePatterns.parse([entry])
    assert str(caught.value) == f"invalid host name pattern {entry!r}"


# -- AddressPatterns -----------------------------------------------------------------------------

ADDRESSES = AddressPatterns.parse(
    [
        "user@example.com",
        "Boss@Example.COM",
        "@example.net",
        "@*.example.org",
        "postmaster@",
        "*-bounces@*",
        "<>",
    ]
)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("user@example.com", "user@example.com", id="exact"),
        pytest.param("<User@Example.COM>", "user@example.com", id="exact-any-case-in-brackets"),
        pytest.param("boss@example.com", "boss@example.com", id="entry-lower-cased"),
        pytest.param("other@example.com", "", id="other-local-part"),
        pytest.param("anyone@example.net", "@example.net", id="domain"),
        pytest.param("anyone@sub.example.net", "", id="domain-is-exact"),
        pytest.param("anyone@sub.example.org", "@*.example.org", id="below-domain"),
        pytest.param("anyone@a.b.example.org", "@*.example.org", id="deeper-below-domain"),
        pytest.param("anyone@example.org", "", id="below-is-not-the-domain-itself"),
        pytest.param("anyone@badexample.org", "", id="below-is-not-a-suffix"),
        pytest.param("postmaster@anything.example", "postmaster@", id="local-part"),
        pytest.param("PostMaster@Anything.Example", "postmaster@", id="local-part-any-case"),
        pytest.param("postmaster", "", id="local-part-needs-a-domain"),
        pytest.param("list-bounces@lists.example", "*-bounces@*", id="glob"),
        pytest.param("bounces@lists.example", "", id="glob-needs-its-dash"),
        pytest.param("", "<>", id="null-sender"),
        pytest.param("<>", "<>", id="null-sender-in-brackets"),
        pytest.param(" <> ", "<>", id="null-sender-with-spaces"),
    ],
)
def test_address_patterns_match(address: str, expected: str) -> None:
    assert ADDRESSES.match(address) == expected


def test_null_sender_matches_only_an_explicit_entry() -> None:
    patterns = AddressPatterns.parse(["@example.com", "*@*", "postmaster@"])
    assert patterns.match("") == ""
    assert patterns.match("<>") == ""
    assert patterns.match("a@x.example") == "*@*"


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(["@example.com", "a@example.com"], "a@example.com", id="exact-first"),
        pytest.param(["a@", "@example.com"], "@example.com", id="domain-before-local"),
        pytest.param(["a*@*", "a@"], "a@", id="local-before-glob"),
    ],
)
def test_address_patterns_precedence(entries: list[str], expected: str) -> None:
    assert AddressPatterns.parse(entries).match("a@example.com") == expected


def test_address_patterns_truth() -> None:
    assert not AddressPatterns()
    for entry in ("a@example.com", "@example.com", "a@", "*@*", "<>"):
        assert AddressPatterns.parse([entry]), entry


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("example.com", id="no-at"),
        pytest.param("", id="empty"),
        pytest.param("a b@example.com", id="space"),
        pytest.param("a@b@example.com", id="two-ats"),
    ],
)
def test_address_patterns_bad_entry(entry: str) -> None:
    with pytest.raises(EntryError) as caught:
        AddressPatterns.parse([entry])
    assert str(caught.value) == (
        f"invalid address pattern {entry!r}: write user@example.com, @example.com, user@ or <>"
    )


def test_address_domain_with_trailing_dot_matches_its_domain() -> None:
    assert AddressPatterns.parse(["@denied.example"]).match("x@denied.example.") == (
        "@denied.example"
    )


@pytest.mark.parametrize("entry", ["<a@example.com>", "@example.com."])
def test_address_entry_that_could_never_match_is_refused_or_normalized(entry: str) -> None:
    try:
        patterns = AddressPatterns.parse([entry])
    except EntryError:
        return
    assert patterns.match("<a@example.com>") != ""


# -- file: lists ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_with_policy(*paths: Path) -> contextlib.AbstractContextManager[None]:
    """As while a policy naming `paths` is built: their bytes were read before the build
    (config.read_sources), and the parsers look them up."""
    return building_with(NamedFiles(contents={path: path.read_bytes() for path in paths}))


def test_file_lines_comments_and_blank_lines(tmp_path: Path) -> None:
    listed = write(
        tmp_path / "nets",
        "# partners\n192.0.2.0/24\n\n   198.51.100.0/24   # office\n#203.0.113.0/24\n\t\n",
    )
    with read_with_policy(listed):
        assert expand(["10.0.0.0/8", f"file:{listed}", " 172.16.0.0/12 "]) == [
            ("10.0.0.0/8", ""),
            ("192.0.2.0/24", f"{listed}:2"),
            ("198.51.100.0/24", f"{listed}:4"),
            ("172.16.0.0/12", ""),
        ]
        networks = NetworkSet.parse([f"file:  {listed}  "])  # space around the path is dropped
    assert [str(n) for n in networks.networks] == ["192.0.2.0/24", "198.51.100.0/24"]


def test_empty_file_gives_no_entries(tmp_path: Path) -> None:
    listed = write(tmp_path / "empty", "# nothing yet\n")
    with read_with_policy(listed):
        assert not NamePatterns.parse([f"file:{listed}"])


def test_file_of_address_patterns(tmp_path: Path) -> None:
    listed = write(tmp_path / "senders", "@friend.example\nboss@\r\n<>\n")
    with read_with_policy(listed):
        patterns = AddressPatterns.parse([f"file:{listed}"])
    assert patterns.match("a@friend.example") == "@friend.example"
    assert patterns.match("boss@x.example") == "boss@"
    assert patterns.match("") == "<>"


@pytest.mark.parametrize(
    ("parse", "text", "line", "message"),
    [
        pytest.param(
            NetworkSet.parse,
            "192.0.2.0/24\n# fine so far\nnot-a-network\n",
            3,
            "invalid network 'not-a-network': "
            "'not-a-network' does not appear to be an IPv4 or IPv6 network",
            id="network",
        ),
        pytest.param(
            NamePatterns.parse,
            "mail.example.com\nuser@example.com\n",
            2,
            "invalid host name pattern 'user@example.com'",
            id="name",
        ),
        pytest.param(
            AddressPatterns.parse,
            "\n\nexample.com   # forgot the @\n",
            3,
            "invalid address pattern 'example.com': write user@example.com, @example.com, "
            "user@ or <>",
            id="address",
        ),
    ],
)
def test_bad_line_in_file_names_file_and_line(
    tmp_path: Path, parse: Callable[[list[str]], object], text: str, line: int, message: str
) -> None:
    listed = write(tmp_path / "list", text)
    with read_with_policy(listed), pytest.raises(EntryError) as caught:
        parse([f"file:{listed}"])
    assert caught.value.where == f"{listed}:{line}"
    assert str(caught.value) == f"{listed}:{line}: {message}"


def test_a_file_not_read_with_the_policy_is_an_error_never_a_read(tmp_path: Path) -> None:
    listed = write(tmp_path / "nets", "192.0.2.0/24\n")  # there, but not read before
    with pytest.raises(EntryError) as caught:
        NetworkSet.parse([f"file:{listed}"])
    assert caught.value.where == str(listed)
    assert str(caught.value) == (
        f"{listed}: not read with the policy (a bug in spamgate, please report it)"
    )


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    policy = write(tmp_path / "spamgate.yaml", f"allow: {{clients: ['file:{missing}']}}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == (
        f"{policy}:1:19: allow.clients[0]: {missing}: cannot read: No such file or directory"
    )


def test_directory_is_not_a_list(tmp_path: Path) -> None:
    policy = write(tmp_path / "spamgate.yaml", f"allow: {{clients: ['file:{tmp_path}']}}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value).endswith(f": {tmp_path}: cannot read: Is a directory")


def test_non_utf8_file(tmp_path: Path) -> None:
    listed = tmp_path / "latin1"
    listed.write_bytes(b"# caf\xc3\xa9 is fine\n@caf\xe9.example\n")
    with read_with_policy(listed), pytest.raises(EntryError) as caught:
        AddressPatterns.parse([f"file:{listed}"])
    assert str(caught.value) == f"{listed}: not UTF-8 (byte 20)"


def test_oversize_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 2**20)
    at_limit = tmp_path / "at-limit"
    at_limit.write_bytes(b"#" * (2**20 - 1) + b"\n")
    policy = write(tmp_path / "spamgate.yaml", f"allow: {{clients: ['file:{at_limit}']}}\n")
    assert load_policy(policy).allow.client_set == NetworkSet(())
    over = tmp_path / "over"
    over.write_bytes(b"#" * 2**20 + b"\n")
    policy = write(tmp_path / "spamgate.yaml", f"allow: {{clients: ['file:{over}']}}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == f"{policy}:1:19: allow.clients[0]: {over}: larger than 1 MiB"


# -- through the policy file ---------------------------------------------------------------------


def write_policy(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "spamgate.yaml", text)


def test_bad_inline_entry_in_policy(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "allow:\n  clients: [192.0.2.0/24, bogus]\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == (
        f"{policy}:2:27: allow.clients[1]: invalid network 'bogus': "
        "'bogus' does not appear to be an IPv4 or IPv6 network"
    )


def test_bad_line_in_listed_file_in_policy(tmp_path: Path) -> None:
    listed = write(tmp_path / "nets", "192.0.2.0/24\nbad-net\n")
    policy = write_policy(
        tmp_path, f'allow:\n  clients:\n    - 198.51.100.0/24\n    - "file:{listed}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == (
        f"{policy}:4:7: allow.clients[1]: {listed}:2: invalid network 'bad-net': "
        "'bad-net' does not appear to be an IPv4 or IPv6 network"
    )
    assert (caught.value.line, caught.value.column) == (4, 7)
    assert caught.value.path == "allow.clients[1]"


def test_unreadable_listed_file_in_policy(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    policy = write_policy(tmp_path, f"deny:\n  senders:\n    - file:{missing}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == (
        f"{policy}:3:7: deny.senders[0]: {missing}: cannot read: No such file or directory"
    )


def test_bad_line_in_recipient_policy_file(tmp_path: Path) -> None:
    listed = write(tmp_path / "rcpts", "@example.net\nnobody\n")
    policy = write_policy(
        tmp_path,
        "recipient_policies:\n  - name: lenient\n"
        f"    recipients: ['@x.example', 'file:{listed}']\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    assert str(caught.value) == (
        f"{policy}:3:32: recipient_policies[0].recipients[1]: {listed}:2: "
        "invalid address pattern 'nobody': write user@example.com, @example.com, user@ or <>"
    )


def test_relative_list_file_is_read_beside_the_policy(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "lists").mkdir(parents=True)
    write(etc / "lists" / "nets", "192.0.2.0/24\n")
    policy = load_policy(write_policy(etc, "allow:\n  clients: [file:lists/nets]\n"))
    assert policy.allow.client_set.match(ipaddress.ip_address("192.0.2.9")) == "192.0.2.0/24"
    write(etc / "lists" / "nets", "192.0.2.0/24\nnope\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(etc / "spamgate.yaml")
    assert str(caught.value) == (
        f"{etc / 'spamgate.yaml'}:2:13: allow.clients[0]: {etc / 'lists' / 'nets'}:2: "
        "invalid network 'nope': 'nope' does not appear to be an IPv4 or IPv6 network"
    )


POLICY_WITH_FILES = """
allow:
  clients: [192.0.2.0/24, "file:{a}"]
  senders: ["file:{b}", "@friend.example"]
deny:
  recipients: ["file:{c}"]
recipient_policies:
  - {{name: lenient, recipients: ["@example.net", "file:{d}"]}}
"""


def files_policy(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    files = {
        "a": write(tmp_path / "a", "198.51.100.0/24\n"),
        "b": write(tmp_path / "b", "@partner.example\n"),
        "c": write(tmp_path / "c", "trap@example.com\n"),
        "d": write(tmp_path / "d", "@example.org\n"),
    }
    return write_policy(tmp_path, POLICY_WITH_FILES.format(**files)), files


def test_included_files(tmp_path: Path) -> None:
    policy_path, files = files_policy(tmp_path)
    policy: Policy = load_policy(policy_path)
    assert policy.included_files == tuple(f"file:{files[key]}" for key in "abcd")
    assert (
        load_policy(write_policy(tmp_path, "allow: {clients: [10.0.0.0/8]}\n")).included_files == ()
    )


def test_digest_follows_included_file_contents(tmp_path: Path) -> None:
    policy_path, files = files_policy(tmp_path)
    first = load_policy(policy_path).digest
    assert re.fullmatch("[0-9a-f]{12}", first)
    assert load_policy(policy_path).digest == first  # the same files, the same digest
    for key, path in files.items():
        original = path.read_text()
        path.write_text(original + "# a comment changes the file, and so the digest\n")
        changed = load_policy(policy_path).digest
        assert changed != first, key
        path.write_text(original)
        assert load_policy(policy_path).digest == first, key


def test_digest_tells_apart_lines_moved_between_files(tmp_path: Path) -> None:
    allow, deny = tmp_path / "allow", tmp_path / "deny"
    policy = write_policy(
        tmp_path, f'allow: {{senders: ["file:{allow}"]}}\ndeny: {{senders: ["file:{deny}"]}}\n'
    )
    write(allow, "@x.example\n@y.example\n")
    write(deny, "")
    allowed_y = load_policy(policy)
    write(allow, "@x.example\n")
    write(deny, "@y.example\n")
    denied_y = load_policy(policy)
    assert allowed_y.allow.sender_set.match("a@y.example") == "@y.example"
    assert denied_y.deny.sender_set.match("a@y.example") == "@y.example"
    assert allowed_y.digest != denied_y.digest


def test_ipv4_mapped_network_entry_matches_mapped_and_plain_clients() -> None:
    networks = NetworkSet.parse(["::ffff:192.0.2.0/120"])
    assert networks.networks == (ipaddress.IPv4Network("192.0.2.0/24"),)
    assert networks.match(ipaddress.ip_address("::ffff:192.0.2.7")) == "192.0.2.0/24"
    assert networks.match(ipaddress.ip_address("192.0.2.7")) == "192.0.2.0/24"


def test_bare_at_is_not_an_address_pattern() -> None:
    with pytest.raises(EntryError, match="invalid address pattern '@'"):
        AddressPatterns.parse(["@"])
