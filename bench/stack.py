"""The benchmark's real parts on loopback, started and stopped here, by PID.

One Postfix (queue on a tmpfs when there is one) relays every message to one smtp-sink. It
has a listener per configuration under test:

    plain           no milter
    noop            the no-op pymilter milter (bench/noop_milter.py), inet socket
    spamgate        spamgate on the shipped-style policy, inet socket, DNS straight to rbldnsd
    noop-unix       the no-op milter on a unix socket       } for the latency-trap check:
    spamgate-unix   spamgate on a unix socket               } inet and unix side by side
    spamgate-cold   spamgate whose DNS goes through a proxy that delays every answer by 50 ms

and three more spamgate daemons for the cost of greylisting, each with one more rule that
fires on every message (bench/workload.py, GREYLIST_RULE):

    spamgate-nodkim           the shipped policy without its dkim: and dmarc: rules (no body read)
    spamgate-nogreylist       greylisting off; the rule scores 0 and does nothing else
    spamgate-greylist-sqlite  the rule greylists every message; state in an SQLite file
    spamgate-greylist-redis   the same, state in a private redis-server on loopback

and the other filter an admin would weigh against spamgate (bench/rspamd.py):

    rspamd          rspamd's proxy in milter mode, its rbl module on the policy's lists
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from bench.rspamd import Rspamd, policy_from_spamgate
from bench.workload import (
    REPOSITORY,
    SHIPPED_POLICY,
    Greylisting,
    Population,
    bench_policy,
    build_zones,
)
from tests.harness.dns import Rbldnsd
from tests.harness.dnsproxy import DnsProxy, Fault
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import (
    LOOPBACK,
    ManagedProcess,
    Service,
    free_port,
    stop_libmilter,
    tcp_accepts,
    unix_accepts,
    wait_until,
)
from tests.harness.redis import RedisServer
from tests.harness.sink import SmtpSink

NOOP_MILTER = Path(__file__).with_name("noop_milter.py")
COLD_DNS_DELAY = 0.050

# Held sessions for the memory measurement, plus headroom: each is an smtpd process.
PROCESS_LIMIT = 700


class Milter(Service):
    """A milter process on an inet or unix socket (libmilter syntax in `socket_spec`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        socket_spec: str,
        metrics_port: int | None = None,
    ) -> None:
        self.name = name
        self.metrics_port = metrics_port  # spamgate's Prometheus port
        # The server that keeps this milter's greylisting state, whose work is part of the
        # milter's cost: the benchmark measures its CPU time alongside.
        self.state_server: RedisServer | None = None
        self.socket_spec = socket_spec
        self.log_path = log_path
        self.process = ManagedProcess(argv, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def postfix_address(self) -> str:
        """The same socket in Postfix's smtpd_milters syntax."""
        family, _, rest = self.socket_spec.partition(":")
        if family == "unix":
            return self.socket_spec
        port, _, host = rest.partition("@")
        return f"inet:{host}:{port}"

    def _accepts(self) -> bool:
        family, _, rest = self.socket_spec.partition(":")
        if family == "unix":
            return unix_accepts(rest)
        port, _, host = rest.partition("@")
        return tcp_accepts(host, int(port), timeout=0.5)

    def start(self, timeout: float = 20.0) -> None:
        self.process.start_and_wait(self._accepts, timeout=timeout, what=f"{self.name} to listen")

    def stop(self, timeout: float = 10.0) -> None:
        stop_libmilter(self.process, self._accepts, timeout, self.name)

    def restart(self) -> None:
        """Stopped and started again: everything it kept in memory (its cache) is gone."""
        self.stop()
        self.start()

    def times(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        return measure.process_times(self.pid)

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) RSS."""
        return measure.rss_kib(self.pid)

    def reset_peak_rss(self) -> None:
        measure.reset_peak_rss(self.pid)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")


class RspamdMilter(Milter):
    """rspamd (bench/rspamd.py) as the stack's other milters are seen: its CPU and memory are
    those of its whole process group (the main process, the proxy worker, hs_helper)."""

    def __init__(self, name: str, workdir: Path, dns_port: int) -> None:
        self.rspamd = Rspamd(workdir, dns_port, policy_from_spamgate())
        self.name = name
        self.metrics_port = None
        self.state_server = None
        self.socket_spec = f"inet:{self.rspamd.port}@{LOOPBACK}"
        self.log_path = self.rspamd.process.log_path
        self.process = self.rspamd.process

    def start(self, timeout: float = 60.0) -> None:
        self.rspamd.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.rspamd.stop(timeout)

    def times(self) -> tuple[float, float]:
        return measure.group_times(self.pid)

    def rss_kib(self) -> tuple[int, int]:
        return measure.group_rss_kib(self.pid)

    def reset_peak_rss(self) -> None:
        measure.reset_group_peak_rss(self.pid)


def _spamgate(
    workdir: Path,
    name: str,
    socket_spec: str,
    dns_port: int,
    *,
    source: Path | None = None,
    env: Mapping[str, str] | None = None,
    greylisting: Greylisting = Greylisting.SHIPPED,
    state_store: str | None = None,
    dkim: bool = True,
) -> Milter:
    metrics_port = free_port()
    # A revision's daemon runs that revision's shipped policy: its own defaults, and no key
    # it does not know (an older daemon refuses a newer policy, exit 78).
    shipped = SHIPPED_POLICY if source is None else source.parent / "config" / "spamgate.yaml"
    policy = bench_policy(
        listen=socket_spec,
        dns_port=dns_port,
        metrics_port=metrics_port,
        status_file=workdir / f"{name}-status.json",
        greylisting=greylisting,
        state_store=state_store,
        dkim=dkim,
        shipped=shipped,
    )
    if socket_spec.startswith("unix:"):
        # smtpd runs as the postfix user, the benchmark's spamgate as root. As in production
        # (systemd/spamgate.tmpfiles): a setgid directory of group postfix gives the socket
        # that group, and 0660 lets smtpd in (spamgate refuses modes open to other users).
        directory = Path(socket_spec.removeprefix("unix:")).parent
        directory.mkdir(exist_ok=True)
        os.chown(directory, -1, grp.getgrnam("postfix").gr_gid)
        directory.chmod(0o2750)
        policy += "socket_mode: '0660'\n"
    config = workdir / f"{name}.yaml"
    config.write_text(policy)
    argv = [sys.executable, "-m", "spamgate", "run", "-c", str(config)]
    milter = Milter(name, argv, workdir / f"{name}.log", socket_spec, metrics_port)
    if source is not None or env:
        milter.process.env = {**os.environ, **(env or {})}
        if source is not None:
            # Found before the installed (editable) package: sys.path precedes its finder.
            milter.process.env["PYTHONPATH"] = str(source)
    return milter


def export_source(revision: str, workdir: Path) -> Path:
    """spamgate's source root (milter/) as of a git revision, unpacked under `workdir` with
    that revision's config/spamgate.yaml beside it."""
    target = workdir / f"source-{revision}"
    target.mkdir()
    archive = workdir / "source.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", "--format=tar", revision, "milter", "config/spamgate.yaml"],
            cwd=REPOSITORY,
            stdout=out,
            check=True,
            timeout=60,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return target / "milter"


def _noop(workdir: Path, name: str, socket_spec: str) -> Milter:
    argv = [sys.executable, str(NOOP_MILTER), socket_spec]
    return Milter(name, argv, workdir / f"{name}.log", socket_spec)


@dataclass
class Stack:
    workdir: Path
    on_tmpfs: bool
    dns: Rbldnsd
    cold_dns: DnsProxy
    sink: SmtpSink
    redis: RedisServer
    postfix: PostfixInstance
    milters: dict[str, Milter]  # by listener name

    def port(self, listener: str) -> int:
        return self.postfix.ports[listener]

    def helper_pids(self) -> list[int]:
        """Every process of the benchmark besides Postfix and this one: milters, sink, DNS,
        Redis."""
        pids = [milter.pid for milter in self.milters.values()]
        return [*pids, self.sink.pid, self.dns.pid, self.cold_dns.pid, self.redis.pid]

    def clear_sink(self) -> None:
        for path in self.sink.dump_dir.iterdir():
            path.unlink()


def fresh_workdir(prefix: str = "spamgate-bench-") -> tuple[Path, bool]:
    """A fresh directory, on a tmpfs if /dev/shm is one (queue file syncs cost nothing there)."""
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.access(shm, os.W_OK) and _is_tmpfs(shm)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=shm if on_tmpfs else None))
    # Postfix's daemons, smtp-sink and rbldnsd run as other users and must reach their files.
    path.chmod(0o755)
    return path, on_tmpfs


def _is_tmpfs(path: Path) -> bool:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(path):
            return fields[2] == "tmpfs"
    return False


@contextlib.contextmanager
def running_stack(
    population: Population,
    *,
    keep: bool = False,
    before: str | None = None,
    variants: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[Stack]:
    """Everything up and ready; `before`: also spamgate as of that git revision; `variants`:
    more spamgate daemons, by name, each with these extra environment variables (for
    experiments)."""
    workdir, on_tmpfs = fresh_workdir()
    try:
        with ExitStack() as stack:
            dns = stack.enter_context(Rbldnsd(workdir, build_zones(population)))
            cold_dns = stack.enter_context(
                DnsProxy(workdir, dns.port, fault=Fault(delay=COLD_DNS_DELAY))
            )
            sink = stack.enter_context(SmtpSink(workdir))
            # Before the milters that use it, so that their first check finds it up.
            redis = stack.enter_context(RedisServer(workdir))
            milters = {
                "noop": _noop(workdir, "noop", f"inet:{free_port()}@{LOOPBACK}"),
                "noop-unix": _noop(workdir, "noop-unix", f"unix:{workdir}/noop.sock"),
                "spamgate": _spamgate(
                    workdir, "spamgate", f"inet:{free_port()}@{LOOPBACK}", dns.port
                ),
                "spamgate-unix": _spamgate(
                    workdir,
                    "spamgate-unix",
                    f"unix:{workdir}/spamgate-socket/spamgate.sock",
                    dns.port,
                ),
                "spamgate-cold": _spamgate(
                    workdir, "spamgate-cold", f"inet:{free_port()}@{LOOPBACK}", cold_dns.port
                ),
                "spamgate-nodkim": _spamgate(
                    workdir,
                    "spamgate-nodkim",
                    f"inet:{free_port()}@{LOOPBACK}",
                    dns.port,
                    dkim=False,
                ),
                "spamgate-nogreylist": _spamgate(
                    workdir,
                    "spamgate-nogreylist",
                    f"inet:{free_port()}@{LOOPBACK}",
                    dns.port,
                    greylisting=Greylisting.OFF,
                ),
                "spamgate-greylist-sqlite": _spamgate(
                    workdir,
                    "spamgate-greylist-sqlite",
                    f"inet:{free_port()}@{LOOPBACK}",
                    dns.port,
                    greylisting=Greylisting.EVERY_MESSAGE,  # in a file in the workdir
                ),
                "spamgate-greylist-redis": _spamgate(
                    workdir,
                    "spamgate-greylist-redis",
                    f"inet:{free_port()}@{LOOPBACK}",
                    dns.port,
                    greylisting=Greylisting.EVERY_MESSAGE,
                    state_store=redis.url,
                ),
            }
            milters["spamgate-greylist-redis"].state_server = redis
            milters["rspamd"] = RspamdMilter("rspamd", workdir, dns.port)
            if before is not None:
                milters["spamgate-before"] = _spamgate(
                    workdir,
                    "spamgate-before",
                    f"inet:{free_port()}@{LOOPBACK}",
                    dns.port,
                    source=export_source(before, workdir),
                )
            for name, env in (variants or {}).items():
                milters[name] = _spamgate(
                    workdir, name, f"inet:{free_port()}@{LOOPBACK}", dns.port, env=env
                )
            for milter in milters.values():
                stack.enter_context(milter)
            maps = no_milter_for_loopback(workdir)
            listeners = {"plain": Listener()}
            listeners |= {
                name: Listener(milters=m.postfix_address, options=maps)
                for name, m in milters.items()
            }
            postfix = stack.enter_context(
                PostfixInstance(
                    workdir,
                    relay_port=sink.port,
                    listeners=listeners,
                    relay_domains=["example.com"],
                    main_cf={
                        "default_process_limit": str(PROCESS_LIMIT),
                        # Deliver as fast as mail comes in, so the queue never backs up.
                        "default_destination_concurrency_limit": "50",
                        "smtp_destination_concurrency_limit": "50",
                    },
                )
            )
            yield Stack(workdir, on_tmpfs, dns, cold_dns, sink, redis, postfix, milters)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def no_milter_for_loopback(workdir: Path) -> dict[str, str]:
    """Listener options that keep the milters away from the loopback client.

    XCLIENT makes Postfix hang up on the milter and connect again as the claimed client, so
    every session would cost a milter two connections, one of them from 127.0.0.1.
    smtpd_milter_maps (Postfix 3.2) turns the milters off for loopback clients only: one
    milter connection per session, as a real client gets.
    """
    no_loopback = workdir / "no-milter-for-loopback.cidr"
    no_loopback.write_text("127.0.0.0/8 DISABLE\n")
    no_loopback.chmod(0o644)
    return {"smtpd_milter_maps": f"cidr:{no_loopback}"}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout=timeout, what=what, interval=0.05)
