"""A private Sendmail on a loopback port, from Debian's packages unpacked into a cache.

Debian's sendmail packages conflict with postfix, so they are never installed: ``apt-get
download`` fetches them (once) into a cache directory, ``dpkg-deb -x`` unpacks them into a
private tree, and each ``Sendmail`` gets its own sendmail.cf generated with m4 from that tree's
cf/ macros, its own queue directory and its own pid file inside the test directory.

Sendmail looks up its own host name with the C library before it reads any configuration,
and when that name has no dot it sleeps 60 seconds ("My unqualified host name (...) unknown;
sleeping for retry"). So the daemon runs in new UTS and mount namespaces (``unshare``): there
it has a fully qualified host name of its own, and private /etc/hosts and /etc/nsswitch.conf
("hosts: files") bind-mounted over the real ones, so that neither its start nor the client
and relay host lookups ever ask DNS. Both mounts vanish with the namespace when sendmail exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .processes import (
    LOOPBACK,
    HarnessError,
    ManagedProcess,
    Service,
    find_program,
    free_port,
    wait_until,
)

CACHE_DIR = Path(os.environ.get("SPAMGATE_TEST_CACHE", "/var/cache/spamgate-test")) / "sendmail"
# sendmail-bin's library dependencies (its Depends: lib*) that are not installed are
# downloaded too and found through LD_LIBRARY_PATH; on Debian 12 that is libwrap0 (and
# liblockfile1, which the sendmail binary itself does not link).
PACKAGES = ("sendmail-bin", "sendmail-cf")
HOSTNAME = "sendmail.spamgate.test"
# The smart host, a name for 127.0.0.1 in the private hosts files. "[127.0.0.1]" does not
# work: it is one of sendmail's own names ($=w), and ruleset MailerToTriple drops a smart
# host that is "us" and sends straight to the recipient domain's MX instead.
RELAY_HOST = "relay.spamgate.test"
_DOWNLOAD_TIMEOUT = 300.0
_LOCK_TIMEOUT = _DOWNLOAD_TIMEOUT + 60.0
_SENDMAIL = Path("usr/libexec/sendmail/sendmail")
_CF_DIR = Path("usr/share/sendmail/cf")
_HELP_FILE = Path("etc/mail/helpfile")
_QUEUE_ID = re.compile(r"^2\.0\.0 (\S+) Message accepted for delivery")
# Runs inside the new namespaces: $1 host name, $2 hosts file, $3 nsswitch.conf, then argv.
_LAUNCH = 'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/nsswitch.conf'
_LAUNCH += ' && shift 3 && exec "$@"'


class SendmailUnavailableError(Exception):
    """Sendmail cannot run here, for a reason outside the project (the tests skip)."""


@dataclass(frozen=True)
class SendmailTree:
    """Debian's sendmail unpacked into ``root`` (plus the libraries and m4 it needed)."""

    root: Path
    version: str  # the sendmail-bin package version
    m4: str  # the system's m4, or the unpacked one

    @property
    def binary(self) -> Path:
        return self.root / _SENDMAIL

    @property
    def cf_dir(self) -> Path:
        return self.root / _CF_DIR

    @property
    def help_file(self) -> Path:
        return self.root / _HELP_FILE

    @property
    def library_path(self) -> str:
        """LD_LIBRARY_PATH for the libraries unpacked next to sendmail."""
        dirs = sorted({str(lib.parent) for lib in self.root.glob("usr/lib/**/lib*.so*")})
        return ":".join(dirs)


def unpacked_sendmail(cache_dir: Path = CACHE_DIR) -> SendmailTree:
    """Debian's sendmail, downloaded and unpacked into ``cache_dir`` unless it already is.

    Raises SendmailUnavailableError when the packages cannot be downloaded, and HarnessError when
    the unpacked binary still lacks a library.
    """
    for tool in ("apt-get", "dpkg-deb", "dpkg-query"):
        if shutil.which(tool) is None:
            raise SendmailUnavailableError(f"{tool} is not available (not a Debian system)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    debs_dir = cache_dir / "debs"
    debs_dir.mkdir(exist_ok=True)
    with _locked(cache_dir / ".lock"):
        debs = [_download(debs_dir, name) for name in PACKAGES]
        extra = _missing_library_packages(debs[0])
        system_m4 = shutil.which("m4")
        if system_m4 is None:
            extra.append("m4")
        debs += [_download(debs_dir, name) for name in extra]
        root = _extract(cache_dir, debs)
    tree = SendmailTree(
        root=root,
        version=_run(["dpkg-deb", "-f", str(debs[0]), "Version"]).strip(),
        m4=system_m4 or str(root / "usr/bin/m4"),
    )
    _check_libraries(tree)
    return tree


@functools.cache
def namespaces_available() -> str | None:
    """None if ``unshare --uts --mount`` works here, else why not."""
    try:
        unshare = find_program("unshare")
    except HarnessError as exc:
        return str(exc)
    result = subprocess.run(
        [unshare, "--uts", "--mount", "--propagation", "private", "--", "true"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return f"unshare --uts --mount failed: {result.stderr.strip()}"
    return None


@dataclass(frozen=True)
class MailFilter:
    """One INPUT_MAIL_FILTER: libmilter's socket spelling, F= flags and T= timeouts."""

    name: str
    socket: str  # "inet:PORT@HOST", as in spamgate's own `listen`
    # While the filter is unavailable: T tempfails the mail, R rejects it, "" lets it through.
    flags: str = "T"
    timeouts: str = "C:10s;S:10s;R:20s;E:1m"

    @property
    def mc_line(self) -> str:
        equates = [f"S={self.socket}"]
        if self.flags:
            equates.append(f"F={self.flags}")
        equates.append(f"T={self.timeouts}")
        return f"INPUT_MAIL_FILTER(`{self.name}', `{', '.join(equates)}')dnl"


class Sendmail(Service):
    """``sendmail -bD`` with a private .cf: listens on 127.0.0.1:``port``, consults
    ``filters`` and relays mail for ``relay_domains`` to 127.0.0.1:``relay_port``.

    ``milter_macros`` sets Sendmail's global macro lists by stage (``{"EOM": "{msg_id}, i"}``
    becomes ``define(`confMILTER_MACROS_EOM', ``{msg_id}, i'')``).
    """

    address = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        tree: SendmailTree,
        *,
        filters: Sequence[MailFilter],
        relay_port: int,
        relay_domains: Sequence[str] = ("example.com",),
        milter_macros: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        reason = namespaces_available()
        if reason is not None:
            raise SendmailUnavailableError(
                "sendmail needs a fully qualified host name at start-up (else it sleeps"
                f" 60 s), which the harness gives it in a private UTS namespace; {reason}"
            )
        self.tree = tree
        self.port = port if port is not None else free_port()
        self.filters = list(filters)
        self.relay_port = relay_port
        self.relay_domains = list(relay_domains)
        # Global macro lists by stage, e.g. {"EOM": "{msg_id}, i"}: confMILTER_MACROS_EOM.
        self.milter_macros = dict(milter_macros or {})
        self.dir = workdir / f"sendmail-{self.port}"
        self.queue_dir = self.dir / "queue"
        self.mc_path = self.dir / "sendmail.mc"
        self.cf_path = self.dir / "sendmail.cf"
        self.pid_file = self.dir / "sendmail.pid"
        # -X: every SMTP line sendmail reads and writes, as server and as client (sendmail
        # logs to syslog, and there is no syslog here).
        self.traffic_log = self.dir / "traffic.log"
        self.greeting = ""
        self._write_files()
        argv = [
            find_program("unshare"),
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _LAUNCH,
            "sendmail-launch",
            HOSTNAME,
            str(self.dir / "etc-hosts"),
            str(self.dir / "nsswitch.conf"),
            str(tree.binary),
            "-bD",
            "-C",
            str(self.cf_path),
            "-X",
            str(self.traffic_log),
        ]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": tree.library_path}
        self.process = ManagedProcess(argv, self.dir / "sendmail.log", env=env)

    def mc_text(self) -> str:
        """The sendmail.mc this instance runs with."""
        d = self.dir
        relay_args = f"TCP $h {self.relay_port}"
        lines = [
            "divert(0)dnl",
            "VERSIONID(`spamgate e2e test')dnl",
            "OSTYPE(`linux')dnl",
            # Identity and files: nothing outside the test directory.
            f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl",
            f"define(`QUEUE_DIR', `{self.queue_dir}')dnl",
            f"define(`confPID_FILE', `{self.pid_file}')dnl",
            f"define(`STATUS_FILE', `{d / 'statistics'}')dnl",
            f"define(`HELP_FILE', `{self.tree.help_file}')dnl",
            "define(`ALIAS_FILE', `')dnl",
            # No DNS: sendmail's own host lookups read a private hosts file only.
            f"define(`confSERVICE_SWITCH_FILE', `{d / 'service.switch'}')dnl",
            f"define(`confHOSTS_FILE', `{d / 'hosts'}')dnl",
            "define(`confDONT_PROBE_INTERFACES', `true')dnl",
            "define(`confTO_IDENT', `0')dnl",
            "FEATURE(`nocanonify')dnl",
            "FEATURE(`accept_unresolvable_domains')dnl",
            # A busy test machine must not make sendmail queue or refuse instead of deliver.
            "define(`confQUEUE_LA', `1000')dnl",
            "define(`confREFUSE_LA', `1000')dnl",
            # One listener, on loopback (no default MSA on port 587).
            "FEATURE(`no_default_msa')dnl",
            f"DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={self.port}, Addr={LOOPBACK}')dnl",
            # Everything goes to the sink; these domains may be relayed to.
            f"define(`SMART_HOST', `[{RELAY_HOST}]')dnl",
            f"define(`RELAY_MAILER_ARGS', `{relay_args}')dnl",
            f"define(`ESMTP_MAILER_ARGS', `{relay_args}')dnl",
            *(f"RELAY_DOMAIN(`{domain}')dnl" for domain in self.relay_domains),
            *(f.mc_line for f in self.filters),
            *(
                f"define(`confMILTER_MACROS_{stage}', ``{names}'')dnl"
                for stage, names in self.milter_macros.items()
            ),
            "MAILER(`smtp')dnl",
        ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True)
        self.queue_dir.mkdir(mode=0o700)
        names = f"{LOOPBACK}\tlocalhost {HOSTNAME} {RELAY_HOST}\n"
        # Bind-mounted over /etc/hosts and /etc/nsswitch.conf inside the namespace.
        (self.dir / "etc-hosts").write_text(names)
        (self.dir / "nsswitch.conf").write_text("hosts: files\n")
        # sendmail's own ServiceSwitchFile and HostsFile.
        (self.dir / "hosts").write_text(names)
        (self.dir / "service.switch").write_text("hosts\tfiles\naliases\tfiles\n")
        self.mc_path.write_text(self.mc_text())
        cf_dir = f"{self.tree.cf_dir}/"
        cf = _run([self.tree.m4, f"-D_CF_DIR_={cf_dir}", f"{cf_dir}m4/cf.m4", str(self.mc_path)])
        self.cf_path.write_text(cf)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start sendmail and wait (bounded) for its 220 greeting."""
        greeting: list[str] = []

        def greeted() -> bool:
            line = read_greeting(self.address, self.port)
            if line is None:
                return False
            greeting.append(line)
            return True

        self.process.start_and_wait(
            greeted, timeout=timeout, what="sendmail's greeting", log_tail=self.log_tail
        )
        self.greeting = greeting[-1]
        if not self.greeting.startswith("220 "):
            self.stop()
            raise HarnessError(f"sendmail greeted with {self.greeting!r}\n{self.log_tail()}")

    def stop(self) -> None:
        self.process.stop()

    def queue_files(self) -> list[Path]:
        """What is waiting in the queue (a message sendmail could not deliver yet)."""
        return sorted(p for p in self.queue_dir.iterdir() if p.is_file())

    def log_tail(self) -> str:
        try:
            traffic = self.traffic_log.read_text(errors="replace").splitlines()[-30:]
        except FileNotFoundError:
            traffic = ["(no traffic log)"]
        queued = ", ".join(p.name for p in self.queue_files()) or "none"
        return "\n".join(
            [self.process.log_tail(), "--- traffic ---", *traffic, f"--- queue: {queued}"]
        )


def read_greeting(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The first line an SMTP server sends (then QUIT), or None if it does not answer now."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            deadline = time.monotonic() + timeout
            while not data.endswith(b"\r\n") and time.monotonic() < deadline:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
    except OSError:
        return None
    return data.decode("utf-8", "replace").strip() or None


def queue_id(end_of_data_text: str) -> str | None:
    """Sendmail's queue id from "2.0.0 5AS8xYz0012345 Message accepted for delivery"."""
    match = _QUEUE_ID.match(end_of_data_text)
    return match.group(1) if match else None


def _run(argv: Sequence[str], timeout: float = 60.0) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr}")
    return result.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (bounded wait), so parallel runs share one download."""
    with path.open("a") as lock:
        wait_until(
            lambda: _try_lock(lock.fileno()),
            timeout=_LOCK_TIMEOUT,
            what=f"the lock {path} (another test run downloading sendmail?)",
            interval=0.2,
        )
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _download(debs_dir: Path, package: str) -> Path:
    """The cached .deb of ``package``, downloaded with apt-get unless already there."""
    cached = sorted(debs_dir.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    result = _apt(["download", "-q", "-o", "APT::Sandbox::User=root", package], debs_dir)
    if result.returncode != 0:
        # A fresh machine may have no package lists yet (make test fetched them only if it
        # had something to install): fetch them once and try again.
        _apt(["update", "-qq"], debs_dir)
        result = _apt(["download", "-q", "-o", "APT::Sandbox::User=root", package], debs_dir)
    cached = sorted(debs_dir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not cached:
        output = (result.stderr or result.stdout).strip()
        raise SendmailUnavailableError(
            f"apt-get download {package} failed (exit {result.returncode}): {output}"
        )
    return cached[-1]


def _apt(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # Downloading as root into a root-owned directory: no _apt sandbox user.
    try:
        return subprocess.run(
            ["apt-get", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_DOWNLOAD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SendmailUnavailableError(
            f"apt-get {' '.join(args)} took over {_DOWNLOAD_TIMEOUT:.0f}s"
        ) from exc


def _missing_library_packages(sendmail_bin: Path) -> list[str]:
    """sendmail-bin's lib* dependencies that are not installed on this system."""
    depends = _run(["dpkg-deb", "-f", str(sendmail_bin), "Depends"])
    names = []
    for alternatives in depends.split(","):
        name = alternatives.split("|")[0].split("(")[0].strip()
        if name.startswith("lib"):
            names.append(name)
    status = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    installed = {
        line.split()[0] for line in status.stdout.splitlines() if line.split()[1:] == ["installed"]
    }
    return [name for name in names if name not in installed]


def _extract(cache_dir: Path, debs: Sequence[Path]) -> Path:
    """The tree with ``debs`` unpacked, re-made only when the set of packages changed."""
    root = cache_dir / "root"
    stamp = cache_dir / "root.packages"
    wanted = "".join(f"{deb.name}\n" for deb in sorted(debs))
    if root.is_dir() and stamp.is_file() and stamp.read_text() == wanted:
        return root
    for stale in cache_dir.glob("staging-*"):  # left behind by an interrupted run
        shutil.rmtree(stale)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=cache_dir))
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(staging)])
    # The binary is setgid smmsp/mail: as a set-id program its loader would ignore
    # LD_LIBRARY_PATH (secure execution), and the private copy needs no extra group.
    binary = staging / _SENDMAIL
    binary.chmod(binary.stat().st_mode & ~(stat.S_ISUID | stat.S_ISGID))
    staging.chmod(0o755)
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    stamp.write_text(wanted)
    return root


def _check_libraries(tree: SendmailTree) -> None:
    env = {**os.environ, "LD_LIBRARY_PATH": tree.library_path}
    result = subprocess.run(
        ["ldd", str(tree.binary)], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    missing = [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]
    if result.returncode != 0 or missing:
        raise HarnessError(
            f"the unpacked sendmail lacks libraries: {', '.join(missing) or result.stderr}"
        )
