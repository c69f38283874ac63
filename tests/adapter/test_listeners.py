"""The daemon listens where the policy says and nowhere else.

spamgate on the shipped policy (free ports, a tmp status file and a silent nameserver
substituted) is looked at from the outside, the way `ss -lpn` would: every socket in
/proc/PID/fd, matched by inode against the kernel's tables in /proc/net. Exactly two may
accept traffic from others: the milter socket and the metrics port, both on loopback. The
resolver's UDP sockets are caught while a query is in flight: they are connected to the
nameserver, so the kernel delivers them nothing from anyone else.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.processes import free_port, stop_milter_process, tcp_accepts, wait_until

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "spamgate.yaml"

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"  # TCP_CLOSE: bound, no peer; receives from anyone
UDP_CONNECTED = "01"  # TCP_ESTABLISHED: the kernel drops datagrams from others
UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags column


@dataclass(frozen=True)
class KernelSocket:
    kind: str  # tcp, udp or unix
    local: str  # "127.0.0.1:8894", "[::1]:8894" or a unix path
    peer: str  # "" when unconnected
    state: str
    receives_from_anyone: bool


def _address(hex_address: str) -> str:
    """/proc/net/tcp's "0100007F:1F90" (host byte order, in 32-bit words) as "127.0.0.1:8080"."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is in the host's (little-endian) byte order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    text = f"[{address}]" if address.version == 6 else str(address)
    return f"{text}:{int(port, 16)}"


def _inet_sockets(kind: str) -> Iterator[tuple[int, KernelSocket]]:
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, peer, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            peer_port = int(peer.split(":")[1], 16)
            if kind == "tcp":
                anyone = state == TCP_LISTEN
            else:
                anyone = state == UDP_UNCONNECTED and peer_port == 0
            shown_peer = _address(peer) if peer_port else ""
            yield inode, KernelSocket(kind, _address(local), shown_peer, state, anyone)


def _unix_sockets() -> Iterator[tuple[int, KernelSocket]]:
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        flags, socket_type, state, inode = int(fields[3], 16), fields[4], fields[5], int(fields[6])
        path = fields[7] if len(fields) > 7 else ""
        # A listening stream socket, or a datagram socket bound to a name and not connected.
        anyone = bool(flags & UNIX_LISTENING) or (
            socket_type == "0002" and state == "01" and bool(path)
        )
        yield inode, KernelSocket("unix", path, "", state, anyone)


def sockets_of(pid: int) -> list[KernelSocket]:
    """Every socket the process holds, as the kernel's tables describe it."""
    inodes = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    tables = dict(_inet_sockets("tcp")) | dict(_inet_sockets("udp")) | dict(_unix_sockets())
    return [tables[inode] for inode in sorted(inodes) if inode in tables]


def shipped_policy(listen: str, metrics: str, nameserver: str, status_file: Path) -> str:
    """The shipped policy with its ports, nameservers and status file replaced; each
    replacement must find its line, so a changed shipped file fails here, loudly."""
    text = SHIPPED.read_text()
    for old, new in (
        ("listen: inet:8894@127.0.0.1\n", f"listen: {listen}\n"),
        ('  listen: ""\n', f'  listen: "{metrics}"\n'),
        ("  nameservers: []\n", f'  nameservers: ["{nameserver}"]\n'),
        ("  status_file: /run/spamgate/status.json\n", f"  status_file: {status_file}\n"),
        (
            "  store: /var/lib/spamgate/state.sqlite\n",
            f"  store: {status_file.with_suffix('.state.sqlite')}\n",
        ),
    ):
        assert text.count(old) == 1, f"the shipped policy no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("family", ["inet", "inet6", "unix"])
def test_only_the_milter_socket_and_metrics_port_listen_on_the_shipped_policy(
    tmp_path: Path, family: str
) -> None:
    host = "::1" if family == "inet6" else "127.0.0.1"
    shown_host = f"[{host}]" if family == "inet6" else host
    milter_port, metrics_port = free_port(), free_port()
    socket_path = tmp_path / "spamgate.sock"
    listen = {
        "inet": f"inet:{milter_port}@127.0.0.1",
        "inet6": f"inet6:{milter_port}@[::1]",
        "unix": f"unix:{socket_path}",
    }[family]
    # A nameserver that never answers: every probe query stays in flight for query_timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nameserver:
        nameserver.bind(("127.0.0.1", 0))
        nameserver.settimeout(10)
        dns = f"127.0.0.1:{nameserver.getsockname()[1]}"
        policy = tmp_path / "spamgate.yaml"
        policy.write_text(
            shipped_policy(listen, f"{shown_host}:{metrics_port}", dns, tmp_path / "status.json")
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "spamgate", "run", "-c", str(policy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def milter_accepts() -> bool:
            if family == "unix":
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(0.5)
                    return client.connect_ex(str(socket_path)) == 0
            return tcp_accepts(host, milter_port, timeout=0.5)

        try:
            wait_until(milter_accepts, timeout=10, what="the milter socket")
            wait_until(lambda: tcp_accepts(host, metrics_port), timeout=10, what="metrics")
            # The start-up probes (about a second after start) are the resolver's traffic.
            nameserver.recvfrom(512)
            seen = sockets_of(process.pid)
        finally:
            _, output = stop_milter_process(process, milter_accepts)
    assert process.returncode == 0, output

    listeners = {(s.kind, s.local) for s in seen if s.receives_from_anyone}
    milter = (
        ("unix", str(socket_path)) if family == "unix" else ("tcp", f"{shown_host}:{milter_port}")
    )
    assert listeners == {milter, ("tcp", f"{shown_host}:{metrics_port}")}, seen
    # The resolver's sockets were open, connected to the nameserver, from a loopback address.
    resolver = [s for s in seen if s.kind == "udp"]
    assert resolver, seen
    for udp in resolver:
        assert (udp.state, udp.peer) == (UDP_CONNECTED, dns), udp
        assert udp.local.startswith("127.0.0.1:"), udp
    # No socket of any kind, connected or not, has a non-loopback address.
    for inet in (s for s in seen if s.kind != "unix"):
        local = ipaddress.ip_address(inet.local.rsplit(":", 1)[0].strip("[]"))
        assert local.is_loopback, inet
