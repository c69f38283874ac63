"""A private, unprivileged-port Postfix instance living entirely in a test directory.

The instance runs Postfix's master(8) directly in the foreground rather than through
``postfix start-fg``: that command first runs the slow postfix-script integrity checks
(post-install, postsuper, find over the installation) and then runs master as a *child* of a
shell, so the PID we would hold is the shell's and stopping it would leave master running.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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

_LISTENER_NAME = re.compile(r"[A-Za-z0-9_-]+")
# The readiness probe gets its own milter-less listener so that it never shows up as an
# extra connection at a milter under test.
_PROBE_LISTENER = "harness-probe"

# Queue subdirectories with owner and mode as in Postfix's postfix-files; creating them here
# is much faster than running "post-install create-missing" for every instance.
_QUEUE_DIRS: tuple[tuple[str, bool, int], ...] = (
    # (name, group is setgid_group rather than mail_owner's group, mode)
    ("active", False, 0o700),
    ("bounce", False, 0o700),
    ("corrupt", False, 0o700),
    ("defer", False, 0o700),
    ("deferred", False, 0o700),
    ("flush", False, 0o700),
    ("hold", False, 0o700),
    ("incoming", False, 0o700),
    ("private", False, 0o700),
    ("saved", False, 0o700),
    ("trace", False, 0o700),
    ("maildrop", True, 0o730),
    ("public", True, 0o710),
)

# Services besides the smtpd listeners. Nothing is chrooted (5th column "n"), so no copies
# of /etc files are needed. Left out on purpose: pickup (no sendmail injection), local and
# virtual (no local delivery), scache (connection caching is off), tlsmgr (no TLS), verify,
# flush, showq and proxymap (not used by this configuration).
_MASTER_CF_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
smtp      unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
anvil     unix  -       -       n       -       1       anvil
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass(frozen=True)
class Listener:
    """One smtpd listener on its own free 127.0.0.1 port.

    ``milters`` is the listener's smtpd_milters value in Postfix syntax (e.g.
    "inet:127.0.0.1:8894" or "unix:/path", several separated by spaces; "" for none);
    ``options`` are further per-listener main.cf overrides (e.g. milter_default_action).
    smtpd runs as the postfix user, so a unix: socket must be reachable by that user: not
    inside pytest's tmp_path, whose parents are 0700 root.
    """

    milters: str = ""
    options: Mapping[str, str] = field(default_factory=dict)


class PostfixInstance(Service):
    """Postfix relaying the ``relay_domains`` to 127.0.0.1:``relay_port`` (e.g. an SmtpSink).

    ``listeners`` maps a name to a Listener; ``ports[name]`` is its port, and its smtpd logs
    as "postfix/NAME/smtpd". ``main_cf`` overrides or extends the generated main.cf.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        relay_port: int,
        listeners: Mapping[str, Listener] | None = None,
        relay_domains: Sequence[str] = ("example.com", "example.net"),
        myhostname: str = "mx.spamgate.test",
        milter_default_action: str = "tempfail",
        milter_protocol: int = 6,
        main_cf: Mapping[str, str] | None = None,
    ) -> None:
        self.listeners = dict(listeners) if listeners is not None else {"smtp": Listener()}
        for name in self.listeners:
            if not _LISTENER_NAME.fullmatch(name) or name == _PROBE_LISTENER:
                raise ValueError(f"bad or reserved listener name {name!r}")
        self.ports = {name: free_port() for name in self.listeners}
        self._probe_port = free_port()
        # Named after a port of its own, so that several instances can share one workdir.
        self.base_dir = workdir / f"postfix-{self._probe_port}"
        self.config_dir = self.base_dir / "etc"
        self.queue_dir = self.base_dir / "queue"
        self.maillog_path = self.base_dir / "maillog"
        self.relay_port = relay_port
        self.relay_domains = list(relay_domains)
        self.myhostname = myhostname
        self.main_cf = self._default_main_cf(milter_default_action, milter_protocol)
        self.main_cf.update(main_cf or {})
        self._create_directories()
        self._write_config()
        self.process = ManagedProcess(
            [str(_daemon_directory() / "master"), "-c", str(self.config_dir), "-s"],
            self.base_dir / "master.out",
        )

    def _default_main_cf(self, milter_default_action: str, milter_protocol: int) -> dict[str, str]:
        nexthop = f"smtp:[{LOOPBACK}]:{self.relay_port}"
        return {
            # Debian builds Postfix with compatibility_level 0 (legacy defaults: subnet-style
            # mynetworks, no relay restrictions); pin the modern defaults explicitly.
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            # Relative on purpose: master opens $data_directory/master.lock after switching
            # to the postfix user, and an absolute path would need every parent directory
            # (pytest's tmp dirs are 0700 root) to be searchable by that user. Postfix
            # daemons chdir() to the queue directory as root first, so this resolves to
            # queue/data without crossing those parents.
            "data_directory": "data",
            # Without an explicit name Postfix uses gethostname(), which may be unqualified.
            "myhostname": self.myhostname,
            "mydestination": "",
            "inet_interfaces": LOOPBACK,
            # "all", not "ipv4": with ipv4 only, smtpd refuses "XCLIENT ADDR=IPV6:..." with
            # "501 5.5.4 Bad ADDR syntax". Nothing listens on IPv6 anyway: inet_interfaces
            # and every listener are 127.0.0.1.
            "inet_protocols": "all",
            # The compiled-in default is derived from the host's interfaces (and may include
            # documentation ranges such as 192.0.2.0/24 that tests use as client addresses).
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "relay_domains": " ".join(self.relay_domains),
            "relay_transport": nexthop,
            "default_transport": nexthop,
            # No DNS anywhere: no reverse lookup of clients, no MX/A lookups for next hops.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            # No local delivery, so no alias or passwd lookups (those would need proxymap).
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "fast_flush_domains": "",
            "smtp_connection_cache_on_demand": "no",
            # Deliver at once, and retry deferred mail quickly instead of after minutes.
            "in_flow_delay": "0s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "milter_protocol": str(milter_protocol),
            "milter_default_action": milter_default_action,
            # maillog_file needs the postlog service in master.cf, and postlogd refuses any
            # path that does not start with one of these prefixes (default /var, /dev/stdout).
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.base_dir),
        }

    def _create_directories(self) -> None:
        owner = pwd.getpwnam("postfix")
        setgid_group = grp.getgrnam("postdrop").gr_gid
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.chmod(0o755)
        (self.queue_dir / "pid").mkdir(mode=0o755, exist_ok=True)
        for name, setgid, mode in (*_QUEUE_DIRS, ("data", False, 0o700)):
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(path, owner.pw_uid, setgid_group if setgid else owner.pw_gid)
            path.chmod(mode)

    def _write_config(self) -> None:
        main = "".join(f"{name} = {value}\n" for name, value in self.main_cf.items())
        (self.config_dir / "main.cf").write_text(main)
        listeners = {**self.listeners, _PROBE_LISTENER: Listener()}
        ports = {**self.ports, _PROBE_LISTENER: self._probe_port}
        master = [
            _smtpd_service(name, ports[name], listener) for name, listener in listeners.items()
        ]
        (self.config_dir / "master.cf").write_text("".join(master) + _MASTER_CF_SERVICES)
        # Postfix re-reads a "hot" config file (modified within the last second or so) every
        # 300 ms until it cools down, which would add up to ~2 s to every start: backdate.
        cool = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (cool, cool))

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start master and wait until smtpd answers with a 220 greeting."""
        # master binds every listener before it serves any, so one greeting proves them all.
        self.process.start_and_wait(
            lambda: _greeting(self._probe_port).startswith("220 "),
            timeout=timeout,
            what="postfix to greet",
            log_tail=self.log_tail,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM master's process group and wait until master and all its children exit."""
        self.process.stop(timeout)

    def log_text(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        maillog = self.log_text()
        if not maillog:
            # Errors found while master reads its configuration precede postlogd, so they
            # go to syslog only, which the sandbox may not even have.
            return (
                "(empty maillog: master logs early configuration errors to syslog only;"
                f" check {self.config_dir}/main.cf and master.cf)"
            )
        return "\n".join(maillog.splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """First match of the regex ``pattern`` in the maillog, waiting (bounded) for it.

        postlogd writes asynchronously, so a line may appear a moment after the SMTP reply.
        """
        regex = re.compile(pattern, re.MULTILINE)
        found: list[re.Match[str]] = []

        def logged() -> bool:
            match = regex.search(self.log_text())
            if match is not None:
                found.append(match)
            return match is not None

        wait_until(
            logged,
            timeout=timeout,
            what=f"maillog line matching {pattern!r}",
            log_tail=self.log_tail,
            interval=0.05,
        )
        return found[0]


def _smtpd_service(name: str, port: int, listener: Listener) -> str:
    options = {
        "syslog_name": f"postfix/{name}",
        "smtpd_milters": listener.milters,
        **listener.options,
    }
    # The "{ name = value }" form (Postfix >= 3.0) allows spaces and empty values.
    lines = [f"{LOOPBACK}:{port} inet n - n - - smtpd\n"]
    lines += [f"  -o {{ {key} = {value} }}\n" for key, value in options.items()]
    return "".join(lines)


def _greeting(port: int) -> str:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as conn:
            banner = conn.makefile("rb").readline(512).decode("ascii", "replace")
            conn.sendall(b"QUIT\r\n")
            return banner
    except OSError:
        return ""


@functools.cache
def _daemon_directory() -> Path:
    """Where master(8) is installed, as the installed Postfix itself reports it."""
    result = subprocess.run(
        [find_program("postconf"), "-dh", "daemon_directory"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"postconf failed: {result.stderr.strip()}")
    return Path(result.stdout.strip())
