"""DNS list access keys: kept in a key file, filled into queries, never shown, and the files
that hold them checked for modes that let other users read them."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from spamgate.config.preflight import exposed_secret_files
from spamgate.core.accesskeys import inline_access_key, mask_access_key
from spamgate.core.schema import ConfigError
from spamgate.dns.listhealth import probe_names
from spamgate.shell.logmasking import KeyMaskingFormatter
from tests.adapter.test_cli import spamgate
from tests.harness.processes import free_port, stop_milter_process, tcp_accepts, wait_until

# Shaped like a Spamhaus DQS key: 26 lower-case letters and digits.
KEY = "abcdefghij0123456789klmnop"

KEYED_LIST = """\
ip_lists:
  - name: SPAMHAUS_ZEN
    zone: "{key}.zen.dq.spamhaus.net"
    key_file: dqs.key
    score: 10
domain_lists:
  - name: SPAMHAUS_DBL
    zone: "{key}.dbl.dq.spamhaus.net"
    key_file: dqs.key
    score: 6
"""


def write_keyed(tmp_path: Path, key_text: str = KEY + "\n", mode: int = 0o640) -> Path:
    key_file = tmp_path / "dqs.key"
    key_file.write_text(key_text)
    key_file.chmod(mode)
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(KEYED_LIST)
    policy.chmod(0o644)
    return policy


def test_key_file_fills_the_query_zone_and_nothing_else(tmp_path: Path) -> None:
    policy = load_policy(write_keyed(tmp_path))
    zen, dbl = policy.ip_lists[0], policy.domain_lists[0]
    assert zen.query_zone == f"{KEY}.zen.dq.spamhaus.net"
    assert dbl.query_zone == f"{KEY}.dbl.dq.spamhaus.net"
    # The key is read relative to the policy file, and only queries carry it.
    assert zen.key_path == tmp_path / "dqs.key"
    assert zen.zone == "{key}.zen.dq.spamhaus.net"
    assert zen.shown_zone == "****.zen.dq.spamhaus.net"
    assert KEY not in repr(zen) and KEY not in repr(policy)
    assert policy.access_keys == (KEY,)
    names = probe_names(zen)
    assert names is not None and names.listed == f"2.0.0.127.{KEY}.zen.dq.spamhaus.net"
    names = probe_names(dbl)
    assert names is not None and names.listed == f"test.{KEY}.dbl.dq.spamhaus.net"


def test_a_new_key_is_a_new_policy_digest(tmp_path: Path) -> None:
    path = write_keyed(tmp_path)
    before = load_policy(path).digest
    (tmp_path / "dqs.key").write_text("zyxwvutsrq9876543210abcdef\n")
    after = load_policy(path)
    assert after.digest != before
    assert after.ip_lists[0].query_zone == "zyxwvutsrq9876543210abcdef.zen.dq.spamhaus.net"


KEY_FILE_ERRORS = [
    pytest.param(
        "dqs.key",
        None,
        'zone: "zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: `zone` has no {key} label for the key",
        id="key-file-without-placeholder",
    ),
    pytest.param(
        "",
        None,
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: `zone` has {key}: name the file holding the key",
        id="placeholder-without-key-file",
    ),
    pytest.param(
        "missing.key",
        None,
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: cannot read {dir}/missing.key: No such file or directory",
        id="key-file-missing",
    ),
    pytest.param(
        "keydir",
        None,
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: cannot read {dir}/keydir: Is a directory",
        id="key-file-is-a-directory",
    ),
    pytest.param(
        "dqs.key",
        "",
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: {dir}/dqs.key must hold one line, the key; it has 0",
        id="key-file-empty",
    ),
    pytest.param(
        "dqs.key",
        f"{KEY}\n{KEY}\n",
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: {dir}/dqs.key must hold one line, the key; it has 2",
        id="key-file-two-lines",
    ),
    pytest.param(
        "dqs.key",
        f"{KEY[:10]}.{KEY[10:]}\n",
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: the key in {dir}/dqs.key is not 8-63 letters, digits, - or _ "
        "(27 characters)",
        id="key-with-a-dot",
    ),
    pytest.param(
        "dqs.key",
        "short\n",
        'zone: "{key}.zen.dq.spamhaus.net"',
        "ip_lists[0].key_file: the key in {dir}/dqs.key is not 8-63 letters, digits, - or _ "
        "(5 characters)",
        id="key-too-short",
    ),
    pytest.param(
        "",
        None,
        f'zone: "{KEY}.zen..dq.spamhaus.net"',
        "ip_lists[0].zone: '****.zen..dq.spamhaus.net' is not a valid DNS zone name",
        id="invalid-zone-with-inline-key-masked",
    ),
    pytest.param(
        "dqs.key",
        None,
        'zone: "{key}.zen.dq.spamhaus.net-"',
        "ip_lists[0].zone: '****.zen.dq.spamhaus.net-' is not a valid DNS zone name",
        id="invalid-zone-with-placeholder-masked",
    ),
    pytest.param(
        "dqs.key",
        None,
        f'zone: "{{key}}.{"a" * 60}.{"b" * 60}.{"c" * 20}.dq.spamhaus.net"',
        f"ip_lists[0].zone: '****.{'a' * 60}.{'b' * 60}.{'c' * 20}.dq.spamhaus.net' is not a "
        "valid DNS zone name",
        id="zone-too-long-once-the-key-is-in",
    ),
]


@pytest.mark.parametrize(("key_file", "key_text", "zone_line", "expected"), KEY_FILE_ERRORS)
def test_key_file_errors_are_located_and_never_quote_the_key(
    tmp_path: Path, key_file: str, key_text: str | None, zone_line: str, expected: str
) -> None:
    (tmp_path / "dqs.key").write_text(KEY + "\n" if key_text is None else key_text)
    (tmp_path / "keydir").mkdir()
    policy = tmp_path / "spamgate.yaml"
    key_line = f"    key_file: {key_file}\n" if key_file else ""
    policy.write_text(f"ip_lists:\n  - name: ZEN\n    {zone_line}\n{key_line}    score: 10\n")
    with pytest.raises(ConfigError) as raised:
        load_policy(policy)
    message = str(raised.value)
    assert message.startswith(f"{policy}:")
    assert message.split(": ", 1)[1] == expected.replace("{dir}", str(tmp_path))
    assert KEY not in message and KEY[:10] not in message


def test_an_unreadable_key_file_fails_check_config(tmp_path: Path) -> None:
    policy = write_keyed(tmp_path)
    (tmp_path / "dqs.key").unlink()
    result = check_config(policy)
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr == (
        f"spamgate: {policy}:4:5: ip_lists[0].key_file: cannot read {tmp_path}/dqs.key: "
        "No such file or directory\n"
    )


INLINE = [
    pytest.param(f"{KEY}.zen.dq.spamhaus.net", KEY, "****.zen.dq.spamhaus.net", id="dqs-zen"),
    pytest.param(f"{KEY}.dbl.dq.spamhaus.net.", KEY, "****.dbl.dq.spamhaus.net", id="final-dot"),
    pytest.param(f"{KEY}.ZEN.DQ.Spamhaus.NET", KEY, "****.ZEN.DQ.Spamhaus.NET", id="any-case"),
    pytest.param(
        f"{KEY}.combined.mail.abusix.zone", KEY, "****.combined.mail.abusix.zone", id="abusix"
    ),
    pytest.param("zen.dq.spamhaus.net", "", "zen.dq.spamhaus.net", id="dqs-without-key"),
    pytest.param("zen.spamhaus.org", "", "zen.spamhaus.org", id="public-zen"),
    pytest.param(
        f"{KEY}.dq.spamhaus.net.evil.test",
        "",
        f"{KEY}.dq.spamhaus.net.evil.test",
        id="not-under-the-service",
    ),
    pytest.param("{key}.zen.dq.spamhaus.net", "", "****.zen.dq.spamhaus.net", id="placeholder"),
]


@pytest.mark.parametrize(("zone", "key", "shown"), INLINE)
def test_keys_written_into_a_zone_are_found_and_masked(zone: str, key: str, shown: str) -> None:
    assert inline_access_key(zone) == key
    assert mask_access_key(zone) == shown


def test_inline_key_is_masked_and_known(tmp_path: Path) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(f"ip_lists: [{{name: ZEN, zone: {KEY}.zen.dq.spamhaus.net, score: 1}}]\n")
    zen = load_policy(policy).ip_lists[0]
    assert (zen.query_zone, zen.access_key, zen.key_path) == (
        f"{KEY}.zen.dq.spamhaus.net",
        KEY,
        None,
    )
    assert zen.shown_zone == "****.zen.dq.spamhaus.net"


# --- files that hold keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        pytest.param(0o600, None, id="0600"),
        pytest.param(0o640, None, id="0640-group-reads"),
        pytest.param(0o400, None, id="0400"),
        pytest.param(0o644, "other users can read it", id="0644"),
        pytest.param(0o604, "other users can read it", id="0604"),
        pytest.param(0o660, "group or other users can write it", id="0660-group-writes"),
        pytest.param(0o602, "group or other users can write it", id="0602-others-write"),
        pytest.param(
            0o666,
            "other users can read it and group or other users can write it",
            id="0666",
        ),
    ],
)
def test_key_file_modes_that_expose_the_key_warn(
    tmp_path: Path, mode: int, problem: str | None
) -> None:
    policy_path = write_keyed(tmp_path, mode=mode)
    warnings = exposed_secret_files(load_policy(policy_path), policy_path)
    if problem is None:
        assert warnings == []
    else:
        # One line for the file, naming both lists that use it.
        assert warnings == [
            f"secret file {tmp_path}/dqs.key has mode {mode:04o}: {problem}, and it holds the "
            "access key of SPAMHAUS_ZEN, SPAMHAUS_DBL (chmod 0640, group spamgate)"
        ]


def test_policy_file_with_a_key_written_in_warns(tmp_path: Path) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(f"ip_lists: [{{name: ZEN, zone: {KEY}.zen.dq.spamhaus.net, score: 1}}]\n")
    policy.chmod(0o644)
    assert exposed_secret_files(load_policy(policy), policy) == [
        f"secret file {policy} has mode 0644: other users can read it, and it holds the access "
        "key of ZEN (chmod 0640, group spamgate, or move the key to a key_file)"
    ]
    policy.chmod(0o640)
    assert exposed_secret_files(load_policy(policy), policy) == []


def test_policy_file_with_a_redis_password_warns(tmp_path: Path) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text(
        "thresholds: {greylist: 6}\nstate: {store: 'redis://:s3cret@10.0.0.5:6379/0'}\n"
    )
    policy.chmod(0o644)
    assert exposed_secret_files(load_policy(policy), policy) == [
        f"secret file {policy} has mode 0644: other users can read it, and it holds the Redis "
        "password of state.store (chmod 0640, group spamgate)"
    ]
    policy.write_text("thresholds: {greylist: 6}\nstate: {store: 'redis://10.0.0.5:6379/0'}\n")
    assert exposed_secret_files(load_policy(policy), policy) == []


def test_policy_file_without_a_key_may_be_world_readable(tmp_path: Path) -> None:
    policy = tmp_path / "spamgate.yaml"
    policy.write_text("ip_lists: [{name: ZEN, zone: zen.dq.spamhaus.net, score: 1}]\n")
    policy.chmod(0o644)
    assert exposed_secret_files(load_policy(policy), policy) == []
    # The policy file's own mode does not matter once the key is in a key file.
    assert (
        exposed_secret_files(load_policy(write_keyed(tmp_path)), tmp_path / "spamgate.yaml") == []
    )


def check_config(policy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return spamgate("check-config", "-c", str(policy), *extra)


def test_check_config_warns_about_an_exposed_key_file_and_passes(tmp_path: Path) -> None:
    policy = write_keyed(tmp_path, mode=0o644)
    result = check_config(policy)
    assert result.returncode == 0
    assert result.stderr == (
        f"spamgate: WARNING: secret file {tmp_path}/dqs.key has mode 0644: other users can "
        "read it, and it holds the access key of SPAMHAUS_ZEN, SPAMHAUS_DBL (chmod 0640, "
        "group spamgate)\n"
    )
    assert result.stdout.startswith(f"{policy}: OK (1 IP lists, 1 domain lists")
    (tmp_path / "dqs.key").chmod(0o640)
    assert check_config(policy).stderr == ""


def test_check_config_probe_never_prints_the_key(tmp_path: Path) -> None:
    """Probes go nowhere (a closed port): both lists fail, and the report names them."""
    policy = write_keyed(tmp_path)
    with policy.open("a") as text:
        text.write("resolver: {nameservers: ['127.0.0.1:9'], query_timeout: 0.1, deadline: 0.3}\n")
    result = check_config(policy, "--probe")
    assert result.returncode == 69
    assert "SPAMHAUS_ZEN: UNHEALTHY" in result.stdout
    assert "SPAMHAUS_DBL: UNHEALTHY" in result.stdout
    assert KEY not in result.stdout + result.stderr


# --- logs ---------------------------------------------------------------------------------


def test_log_lines_mask_keys_whatever_logged_them() -> None:
    formatter = KeyMaskingFormatter("%(levelname)s %(message)s", [KEY, "second-key-0001"])
    try:
        raise RuntimeError(f"no answer for 2.0.0.127.{KEY.upper()}.zen.dq.spamhaus.net")
    except RuntimeError:
        record = logging.LogRecord(
            "spamgate.resolver",
            logging.ERROR,
            __file__,
            1,
            "DNS lookup of %s/%s failed unexpectedly",
            (f"2.0.0.127.{KEY}.zen.dq.spamhaus.net", "A"),
            sys.exc_info(),
        )
    text = formatter.format(record)
    assert text.startswith(
        "ERROR DNS lookup of 2.0.0.127.****.zen.dq.spamhaus.net/A failed unexpectedly\n"
    )
    assert "RuntimeError: no answer for 2.0.0.127.****.zen.dq.spamhaus.net" in text
    assert KEY not in text.lower()
    plain = logging.LogRecord("spamgate", logging.INFO, __file__, 1, "second-key-0001", (), None)
    assert formatter.format(plain) == "INFO ****"
    assert KeyMaskingFormatter("%(message)s").format(plain) == "second-key-0001"


# --- the daemon ---------------------------------------------------------------------------


def test_daemon_warns_at_start_and_reload_and_never_logs_the_key(tmp_path: Path) -> None:
    """Start with a world-readable key file, reload after fixing it, break it again, reload:
    one WARNING each time the file is exposed. The lists' probes go to a server that never
    answers, so both lists are reported (asked again before they are suspended) in lines that
    name them, not their zones."""
    policy = write_keyed(tmp_path, mode=0o644)
    log_file = tmp_path / "spamgate.log"
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, policy.open("a") as text:
        silent.bind(("127.0.0.1", 0))
        text.write(
            f"listen: inet:{port}@127.0.0.1\n"
            f"log: {{target: {log_file}}}\n"
            "health: {status_file: ''}\n"
            f"state: {{store: '{tmp_path}/state.sqlite'}}\n"
            f"resolver: {{nameservers: ['127.0.0.1:{silent.getsockname()[1]}'], "
            "query_timeout: 0.1, deadline: 0.3}\n"
        )
        text.close()
        process = subprocess.Popen(
            [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def logged(fragment: str, count: int = 1) -> bool:
            return log_file.exists() and log_file.read_text().count(fragment) >= count

        try:
            wait_until(lambda: tcp_accepts("127.0.0.1", port), timeout=10, what="spamgate")
            wait_until(lambda: logged("SPAMHAUS_DBL: probe:"), timeout=10, what="probes")
            (tmp_path / "dqs.key").chmod(0o640)
            process.send_signal(signal.SIGUSR1)
            wait_until(lambda: logged("reloaded policy"), timeout=10, what="a reload")
            (tmp_path / "dqs.key").chmod(0o644)
            process.send_signal(signal.SIGUSR1)
            wait_until(lambda: logged("reloaded policy", 2), timeout=10, what="a reload")
        finally:
            _, output = stop_milter_process(
                process, lambda: tcp_accepts("127.0.0.1", port, timeout=0.1)
            )
    assert process.returncode == 0, output
    log = log_file.read_text()
    warning = (
        f"WARNING secret file {tmp_path}/dqs.key has mode 0644: other users can read it, and "
        "it holds the access key of SPAMHAUS_ZEN, SPAMHAUS_DBL (chmod 0640, group spamgate)"
    )
    assert log.count(warning) == 2, log
    assert "INFO list SPAMHAUS_ZEN: probe: its test entry gets an unusable" in log
    root_warning = "WARNING running as root: spamgate needs no privileges"
    assert (root_warning in log) == (os.geteuid() == 0)
    assert KEY not in log.lower() and KEY not in output


def test_commands_mask_keys_in_what_modules_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config --probe and explain use the resolver, which may log a query name."""
    from spamgate.shell.logmasking import mask_keys_in_command_output  # noqa: PLC0415

    logger = logging.getLogger("spamgate")
    saved = logger.handlers[:]
    try:
        mask_keys_in_command_output(load_policy(write_keyed(tmp_path)))
        logging.getLogger("spamgate.resolver").warning(
            "DNS lookup of %s/A failed unexpectedly", f"2.0.0.127.{KEY}.zen.dq.spamhaus.net"
        )
    finally:
        logger.handlers[:] = saved
    assert capsys.readouterr().err == (
        "spamgate: WARNING DNS lookup of 2.0.0.127.****.zen.dq.spamhaus.net/A failed unexpectedly\n"
    )
