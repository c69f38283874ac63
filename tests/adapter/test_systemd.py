"""The systemd integration: the unit, its sysusers.d and tmpfiles.d files, and `make install`.

systemd's own tools judge the files (systemd-analyze verify and security, systemd-sysusers and
systemd-tmpfiles under --root), so nothing here needs a running systemd or touches the
machine's users and directories. They come with Debian's `systemd` package; a missing tool
fails the test rather than skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import spamgate
from tests.harness.processes import stop_milter_process, unix_accepts, wait_until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "spamgate.service"
SYSUSERS = REPO / "systemd" / "spamgate.sysusers"
TMPFILES = REPO / "systemd" / "spamgate.tmpfiles"
INSTALLED_SPAMGATE = "/opt/spamgate/bin/spamgate"
SOCKET_DIR = "/var/spool/postfix/spamgate"

# What `systemd-analyze security` still counts against the unit, each on purpose: a milter
# must talk to the MTA and to DNS (sockets, network), runs from the host's file system, and
# ProtectClock= itself adds read access to the RTC device.
ACCEPTED_EXPOSURES = {
    "RootDirectoryOrRootImage",
    "RestrictAddressFamilies_AF_UNIX",
    "RestrictAddressFamilies_AF_INET_INET6",
    "PrivateNetwork",
    "DeviceAllow",
    "IPAddressDeny",  # an allow list of localhost only
    # The DNS receiver thread's real-time priority (resolver.realtime_receiver) and every
    # thread's SCHED_BATCH and nice -10 (scheduling:): two calls of @resources,
    # sched_setscheduler and setpriority, a real-time priority of 1 at most (LimitRTPRIO=1)
    # and a nice value of -10 at least (LimitNICE=-10).
    "RestrictRealtime",
    "SystemCallFilter_resources",
}
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's systemd package")
    return path


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def unit_here(directory: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this venv's spamgate, which verify insists exists."""
    text = UNIT.read_text() if text is None else text
    here = str(Path(sys.executable).parent / "spamgate")
    rewritten, count = re.subn(
        rf"^ExecStart={re.escape(INSTALLED_SPAMGATE)} ", f"ExecStart={here} ", text, flags=re.M
    )
    assert count == 1, "ExecStart no longer starts with " + INSTALLED_SPAMGATE
    path = directory / "spamgate.service"
    path.write_text(rewritten)
    return path


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment, in order; keys may repeat, as in systemd."""
    found = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


# -- the unit -----------------------------------------------------------------------------


def verify_complaints(unit: Path) -> tuple[int, list[str]]:
    result = run(tool("systemd-analyze"), "verify", str(unit))
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if "spamgate" in line]


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    code, complaints = verify_complaints(unit_here(tmp_path))
    assert code == 0
    assert complaints == []


def test_verify_complaints_are_caught(tmp_path: Path) -> None:
    """The check above can fail: verify only warns (exit 0) about a misspelt directive."""
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHomes=yes")
    code, complaints = verify_complaints(unit_here(tmp_path, broken))
    assert code == 0
    assert any("Unknown key" in line and "ProtectHomes" in line for line in complaints)


def security(unit: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run(tool("systemd-analyze"), "security", "--offline=true", *options, str(unit))


def test_exposure_level_is_at_most_2(tmp_path: Path) -> None:
    unit = unit_here(tmp_path)
    result = security(unit, f"--threshold={int(MAX_EXPOSURE * 10)}")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for spamgate\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match[1]) <= MAX_EXPOSURE


def test_only_accepted_exposures_remain(tmp_path: Path) -> None:
    result = security(unit_here(tmp_path), "--json=short")
    assert result.returncode == 0, result.stderr
    exposed = {check["json_field"] for check in json.loads(result.stdout) if check["exposure"]}
    assert exposed <= ACCEPTED_EXPOSURES, f"newly exposed: {exposed - ACCEPTED_EXPOSURES}"


def test_threshold_rejects_an_unhardened_unit(tmp_path: Path) -> None:
    plain = tmp_path / "plain.service"
    plain.write_text(f"[Service]\nExecStart={sys.executable} -V\n")
    assert security(plain, f"--threshold={int(MAX_EXPOSURE * 10)}").returncode != 0


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("Service", "Type", "notify"),
        ("Service", "NotifyAccess", "main"),
        ("Service", "ExecStart", f"{INSTALLED_SPAMGATE} run -c /etc/spamgate/spamgate.yaml"),
        # libmilter owns SIGHUP/SIGTERM/SIGINT (they stop it): reload is SIGUSR1.
        ("Service", "ExecReload", "/bin/kill -USR1 $MAINPID"),
        ("Service", "KillSignal", "SIGTERM"),
        ("Service", "WatchdogSec", "30s"),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartPreventExitStatus", "78"),
        ("Service", "TimeoutStopSec", "30s"),
        ("Service", "User", "spamgate"),
        ("Service", "Group", "spamgate"),
        ("Service", "ConfigurationDirectory", "spamgate"),
        ("Service", "RuntimeDirectory", "spamgate"),
        ("Service", "ReadWritePaths", f"-{SOCKET_DIR}"),
        ("Service", "UMask", "0077"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "PrivateDevices", "yes"),
        ("Service", "PrivateUsers", "yes"),
        ("Service", "DevicePolicy", "closed"),
        ("Service", "ProtectKernelTunables", "yes"),
        ("Service", "ProtectKernelModules", "yes"),
        ("Service", "ProtectKernelLogs", "yes"),
        ("Service", "ProtectControlGroups", "yes"),
        ("Service", "ProtectClock", "yes"),
        ("Service", "ProtectHostname", "yes"),
        ("Service", "ProtectProc", "invisible"),
        ("Service", "ProcSubset", "pid"),
        ("Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("Service", "RestrictNamespaces", "yes"),
        ("Service", "RestrictRealtime", "no"),
        ("Service", "LimitRTPRIO", "1"),
        ("Service", "LimitNICE", "-10"),
        ("Service", "RestrictSUIDSGID", "yes"),
        ("Service", "LockPersonality", "yes"),
        ("Service", "MemoryDenyWriteExecute", "yes"),
        ("Service", "SystemCallFilter", "@system-service"),
        ("Service", "SystemCallFilter", "~@privileged @resources"),
        ("Service", "SystemCallFilter", "sched_setscheduler setpriority"),
        ("Service", "SystemCallArchitectures", "native"),
        ("Service", "CapabilityBoundingSet", ""),
        ("Service", "AmbientCapabilities", ""),
        ("Service", "IPAddressDeny", "any"),
        ("Service", "IPAddressAllow", "localhost"),
        ("Install", "WantedBy", "multi-user.target"),
    ],
)
def test_unit_directive(section: str, key: str, value: str) -> None:
    assert (section, key, value) in directives(UNIT.read_text())


def test_no_supplementary_groups_and_no_extra_writable_paths() -> None:
    found = directives(UNIT.read_text())
    keys = [key for _, key, _ in found]
    assert "SupplementaryGroups" not in keys
    assert [value for _, key, value in found if key == "ReadWritePaths"] == [f"-{SOCKET_DIR}"]


# -- sysusers.d and tmpfiles.d --------------------------------------------------------------


def entries(path: Path) -> dict[str, list[str]]:
    """An /etc/passwd-style file as {name: fields}."""
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def create_users(root: Path) -> dict[str, list[str]]:
    (root / "etc").mkdir(parents=True)
    result = run(tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    return entries(root / "etc/passwd")


def test_sysusers_makes_a_locked_system_user_without_a_shell(tmp_path: Path) -> None:
    users = create_users(tmp_path)
    name, _, uid, gid, _, home, shell = users["spamgate"]
    assert 0 < int(uid) < 1000  # a system uid (Debian's SYS_UID_MAX is 999)
    assert home == "/"
    assert shell.endswith("/nologin")
    assert entries(tmp_path / "etc/group")["spamgate"][2] == gid
    assert entries(tmp_path / "etc/shadow")[name][1].startswith("!")  # no password, no login


def test_tmpfiles_makes_a_setgid_socket_directory_for_postfix(tmp_path: Path) -> None:
    users = create_users(tmp_path)
    with (tmp_path / "etc/group").open("a") as group:
        group.write("postfix:x:4242:\n")
    result = run(tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    info = (tmp_path / SOCKET_DIR.lstrip("/")).stat()
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o2750
    assert info.st_uid == int(users["spamgate"][2])
    assert info.st_gid == 4242


def test_tmpfiles_without_postfix_creates_nothing_and_says_why(tmp_path: Path) -> None:
    create_users(tmp_path)
    result = run(tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES))
    assert result.returncode != 0
    assert "Failed to resolve group 'postfix'" in result.stderr
    assert not (tmp_path / "var").exists()


def test_socket_in_the_setgid_directory_belongs_to_its_group(tmp_path: Path) -> None:
    """What the tmpfiles design relies on: a socket the daemon creates in a setgid directory
    takes the directory's group (Linux, for every file type), and the daemon's chmod to
    socket_mode keeps it. The daemon needs neither membership in that group nor chown."""
    group = 4242  # a group this process is not a member of (it need not even exist)
    assert group not in os.getgroups() and group != os.getegid()
    directory = tmp_path / "spamgate"
    directory.mkdir()
    os.chown(directory, -1, group)
    directory.chmod(0o2750)
    path = directory / "spamgate.sock"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"listen: unix:{path}\nsocket_mode: '0660'\nhealth: {{status_file: ''}}\n"
        f"state: {{store: '{tmp_path}/state.sqlite'}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: unix_accepts(path), timeout=10, what="spamgate to listen")
        info = path.stat()
    finally:
        # SIGTERM, and connections to wake libmilter's accept loop, which polls every 5 s.
        _, output = stop_milter_process(process, lambda: unix_accepts(path))
    assert process.returncode == 0, output
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == group


# -- make install ---------------------------------------------------------------------------

REAL_TARGETS = [
    Path("/usr/local/lib/systemd/system/spamgate.service"),
    Path("/usr/local/lib/sysusers.d/spamgate.conf"),
    Path("/usr/local/lib/tmpfiles.d/spamgate.conf"),
]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return run("make", "-C", str(REPO), *args, timeout=300)


def test_make_install_stages_everything_under_destdir(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    prefix = "/srv/spamgate-test"  # not the default, to see it reach the unit and the venv
    before = {path: path.exists() for path in [*REAL_TARGETS, Path(prefix)]}
    result = make("install", f"DESTDIR={stage}", f"PREFIX={prefix}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {path: path.exists() for path in before} == before, "touched the real system"
    assert "staged in" in result.stdout

    venv = stage / prefix.lstrip("/")
    # The venv works and names its final place, not the staging directory.
    version = run(str(venv / "bin/python"), "-m", "spamgate", "--version")
    assert version.stdout.strip() == f"spamgate {spamgate.__version__}", version.stderr
    assert (venv / "bin/spamgate").read_text().splitlines()[0] == f"#!{prefix}/bin/python"
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            assert str(stage) not in path.read_text(errors="replace"), path
    # Not a pyenv or other interpreter under /root or /home, which ProtectHome= hides.
    home = next(
        line.split("=", 1)[1].strip()
        for line in (venv / "pyvenv.cfg").read_text().splitlines()
        if line.startswith("home")
    )
    assert not home.startswith(("/root", "/home")), home
    # Installed non-editable: the package lives in the venv, not in this checkout.
    located = run(str(venv / "bin/python"), "-c", "import spamgate; print(spamgate.__file__)")
    assert located.stdout.startswith(str(venv)), located.stdout

    unit = (stage / "usr/local/lib/systemd/system/spamgate.service").read_text()
    assert unit == UNIT.read_text().replace("/opt/spamgate/", f"{prefix}/")
    assert f"ExecStart={prefix}/bin/spamgate run -c /etc/spamgate/spamgate.yaml" in unit
    assert (stage / "usr/local/lib/sysusers.d/spamgate.conf").read_text() == SYSUSERS.read_text()
    assert (stage / "usr/local/lib/tmpfiles.d/spamgate.conf").read_text() == TMPFILES.read_text()
    policy = stage / "etc/spamgate/spamgate.yaml"
    assert policy.read_text() == (REPO / "config/spamgate.yaml").read_text()

    # Again, as an upgrade: the admin's policy stays as it is.
    policy.write_text(policy.read_text() + "# the admin's own edit\n")
    edited = policy.read_text()
    again = make("install", f"DESTDIR={stage}", f"PREFIX={prefix}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping" in again.stdout
    assert policy.read_text() == edited

    removed = make("uninstall", f"DESTDIR={stage}", f"PREFIX={prefix}")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not venv.exists()
    assert not (stage / "usr/local/lib/systemd/system/spamgate.service").exists()
    assert not (stage / "usr/local/lib/sysusers.d/spamgate.conf").exists()
    assert not (stage / "usr/local/lib/tmpfiles.d/spamgate.conf").exists()
    assert policy.read_text() == edited
