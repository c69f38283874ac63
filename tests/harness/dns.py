"""A private rbldnsd serving test DNSBL zones on a free 127.0.0.1 UDP port."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver

from .processes import LOOPBACK, ManagedProcess, Service, find_program, free_port


@dataclass(frozen=True)
class Zone:
    """One rbldnsd dataset: zone name, dataset type (ip4set, ip4trie, ip6trie, dnset, ...)
    and the dataset file text in rbldnsd syntax (see rbldnsd(8))."""

    name: str
    dataset: str
    data: str


class Rbldnsd(Service):
    """rbldnsd in the foreground (-n) on 127.0.0.1:``port``; restartable on the same port."""

    address = LOOPBACK

    def __init__(self, workdir: Path, zones: Sequence[Zone], *, port: int | None = None) -> None:
        if not zones:
            raise ValueError("rbldnsd needs at least one zone")
        self.zones = list(zones)
        self.port = port if port is not None else free_port(udp=True)
        # Per-port names, so that several servers can share one workdir.
        self.zone_dir = workdir / f"rbldnsd-{self.port}"
        self._write_zone_files()
        # -n: stay in the foreground, so the PID we hold is the daemon's.
        argv = [find_program("rbldnsd"), "-n", "-b", f"{self.address}/{self.port}"]
        argv += ["-w", str(self.zone_dir)]
        if os.geteuid() == 0:
            # rbldnsd refuses to run as root and otherwise drops to its package user
            # "rbldns", which need not exist elsewhere; "nobody" always does.
            argv += ["-u", "nobody"]
        argv += [f"{z.name}:{z.dataset}:{_file_name(i)}" for i, z in enumerate(self.zones)]
        self.process = ManagedProcess(argv, workdir / f"rbldnsd-{self.port}.log")

    def _write_zone_files(self) -> None:
        self.zone_dir.mkdir(parents=True, exist_ok=True)
        # rbldnsd loads the files only after dropping privileges, but it chdir()s to -w while
        # still root and opens the files by relative name, so the unprivileged user needs
        # access to this directory and its files only, not to the (0700) pytest parents.
        self.zone_dir.chmod(0o755)
        for i, zone in enumerate(self.zones):
            path = self.zone_dir / _file_name(i)
            path.write_text(zone.data)
            path.chmod(0o644)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 5.0) -> None:
        """Start rbldnsd and wait until it answers a real DNS query."""

        def answers() -> bool:
            try:
                # Any answer, even NXDOMAIN, shows that the zones are loaded and served.
                self.query(f"probe.{self.zones[0].name}", timeout=0.05)
            except dns.exception.Timeout:
                return False
            return True

        self.process.start_and_wait(answers, timeout=timeout, what="rbldnsd to answer")

    def stop(self) -> None:
        self.process.stop()

    def query(self, name: str, rdtype: str = "A", timeout: float = 1.0) -> dns.message.Message:
        """Send one UDP query straight to this server (no resolver, no cache, no retries)."""
        request = dns.message.make_query(name, rdtype)
        return dns.query.udp(request, self.address, port=self.port, timeout=timeout)

    def lookup(self, name: str, rdtype: str = "A") -> list[str] | None:
        """Answer strings for ``name``, or None on NXDOMAIN (what a DNSBL client sees)."""
        response = self.query(name, rdtype)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return None
        return sorted(rr.to_text() for rrset in response.answer for rr in rrset)

    def resolver(self, timeout: float = 1.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        return resolver_for(self.address, self.port, timeout)

    def log_tail(self) -> str:
        return self.process.log_tail()


def resolver_for(address: str, port: int, timeout: float) -> dns.resolver.Resolver:
    """A dnspython resolver that asks only address:port, within `timeout` in all."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    resolver.lifetime = timeout
    return resolver


def dnsbl_name(address: str, zone: str) -> str:
    """The DNSBL query name of an IPv4 or IPv6 address under ``zone``.

    IPv4 gives reversed octets ("2.0.0.127.bl.test"), IPv6 reversed nibbles (32 labels).
    """
    reverse = ipaddress.ip_address(address).reverse_pointer
    # Drop the two-label suffix, "in-addr.arpa" or "ip6.arpa".
    return f"{reverse.rsplit('.', 2)[0]}.{zone}"


def _file_name(index: int) -> str:
    return f"zone{index}.data"
