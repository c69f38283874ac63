"""Pre-flight checks (step 3 of three, see sources.py): a built Policy against the machine it
is to run on.

`spamgate run`, `spamgate check-config` (and the other commands) and every reload run the same
checks, through `load_checked_policy`. An error refuses the policy as a config error does
(exit 78, or a reload that keeps the old policy); warnings are logged by the daemon, at start
and at each reload, and printed by check-config.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spamgate.config.files import read_sources
from spamgate.core.policy import Policy, build_policy
from spamgate.core.settings import Nameserver
from spamgate.core.sources import Sources

# Resolvers that DNS list operators refuse (Spamhaus answers them 127.255.255.254): shared by
# millions, they exceed any free query quota. A local caching resolver is the fix.
PUBLIC_RESOLVERS = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",  # Google
        "1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001",  # Cloudflare
        "9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9",  # Quad9
        "208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53",  # OpenDNS
        "94.140.14.14", "94.140.15.15",  # AdGuard
        "64.6.64.6", "64.6.65.6",  # Verisign
        "4.2.2.1", "4.2.2.2", "4.2.2.3", "4.2.2.4", "4.2.2.5", "4.2.2.6",  # Level 3
        "185.228.168.9", "185.228.169.9",  # CleanBrowsing
        "76.76.2.0", "76.76.10.0",  # Control D
    )
)  # fmt: skip


@dataclass(frozen=True)
class CheckedPolicy:
    """A policy that passed the pre-flight checks, and what they warn about."""

    policy: Policy
    warnings: tuple[str, ...]


def load_checked_policy(
    path: str | Path, system_nameservers: Callable[[], Sequence[Nameserver]]
) -> CheckedPolicy:
    """Read (step 1), build (step 2) and check (step 3) the policy file `path`; ConfigError
    for whatever is wrong with it, located at its line.

    `system_nameservers` gives the servers an empty `resolver.nameservers` means (the
    resolver owns /etc/resolv.conf: resolver.system_nameservers)."""
    sources = read_sources(path)
    policy = build_policy(sources)
    return CheckedPolicy(policy, preflight(policy, sources, system_nameservers))


def preflight(
    policy: Policy, sources: Sources, system_nameservers: Callable[[], Sequence[Nameserver]]
) -> tuple[str, ...]:
    """The warnings about `policy` on this machine, in the order they are shown; raises
    ConfigError, located in `sources`, for what cannot work here."""
    status = policy.health.status_file
    if status and os.path.isdir(status):
        # Written every 10 s as a file: a directory fails at run time, every time.
        raise sources.document.error_at(
            ("health", "status_file"), f"{status!r} is a directory, not a file name"
        )
    # Not here: whether the process runs as root (daemon.py warns at start). That is about
    # the daemon's process, not the policy or the machine: check-config runs as whoever
    # checks (root, under `make install` or sudo), not as the service's user.
    warnings = exposed_secret_files(policy, sources.path)
    warnings += [
        f"{listener} listens beyond loopback: any host that reaches it may use it, and "
        "spamgate authenticates no one (firewall it, or use a loopback address)"
        for listener in beyond_loopback(policy)
    ]
    if policy.dns_lists:
        public = public_resolvers(policy.resolver.nameservers or tuple(system_nameservers()))
        if public:
            warnings.append(
                f"DNS lists are asked through {', '.join(public)}, a public resolver: most list "
                "operators refuse those (Spamhaus answers 127.255.255.254) and the lists will be "
                "unusable; use a local caching resolver (resolver.nameservers)"
            )
    return tuple(warnings)


def public_resolvers(nameservers: Sequence[Nameserver]) -> list[str]:
    return [str(ns) for ns in nameservers if ipaddress.ip_address(ns.host) in PUBLIC_RESOLVERS]


def beyond_loopback(policy: Policy) -> list[str]:
    """The listeners of `policy` that other hosts could reach."""
    found = []
    listen = policy.listen
    if listen.family != "unix" and not ipaddress.ip_address(listen.host).is_loopback:
        found.append(f"the milter socket {listen}")
    if policy.metrics.listen:
        host, _ = policy.metrics.address()
        if not ipaddress.ip_address(host).is_loopback:
            found.append(f"the metrics endpoint {policy.metrics.listen}")
    return found


def exposed_secret_files(policy: Policy, source: str | Path) -> list[str]:
    """A warning for each file holding an access key that other users may read, or that
    the group or other users may write (and so swap the key, or the whole policy, for theirs):
    key files, and the policy file `source` when a zone in it holds a key.

    Group read is fine: the recommended set-up is owner root, group spamgate, mode 0640.
    """
    holders: dict[Path, list[str]] = {}
    for dns_list in policy.dns_lists:
        if dns_list.key_path is not None:
            holders.setdefault(dns_list.key_path, []).append(dns_list.name)
        elif dns_list.access_key:
            holders.setdefault(Path(source), []).append(dns_list.name)
    state_password = policy.uses_state and policy.state.store_shown != policy.state.store
    if state_password:
        holders.setdefault(Path(source), [])
    warnings = []
    for path, names in holders.items():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # read a moment ago; if it has gone, the next load says so
            continue
        problems = []
        if mode & 0o004:
            problems.append("other users can read it")
        if mode & 0o022:
            problems.append("group or other users can write it")
        if not problems:
            continue
        advice = "chmod 0640, group spamgate"
        if path == Path(source) and names:
            advice += ", or move the key to a key_file"
        held = [f"the access key of {', '.join(names)}"] if names else []
        if path == Path(source) and state_password:
            held.append("the Redis password of state.store")
        warnings.append(
            f"secret file {path} has mode {mode:04o}: {' and '.join(problems)}, and it holds "
            f"{' and '.join(held)} ({advice})"
        )
    return warnings
