"""The OpenSPF project's RFC 7208 test suite (release 2014.04), and a DNS server on loopback
that serves one scenario's zone data, for tests/adapter/test_spf_rfc7208.py.

The suite ships in pyspf's source distribution (test/rfc7208-tests.yml, BSD licence in
test/rfc7208-tests.LICENSE). It is fetched at test time with pip, checked against a pinned
SHA-256 and cached outside the repository; no copy is committed. Without the network (and no
cached copy) the fetch fails with a message that says so: the suite is never skipped.

The zone data follows the suite's conventions, as its reference driver (pyspf's
test/testspf.py) reads them:
- a name's `SPF` records are served as TXT too, unless the name has TXT entries of its own
  (the suite was written for RFC 4408, which also had type 99); `NONE` marks an empty RRset;
- `TIMEOUT` makes every type the name has no records of go unanswered (the client times out);
- a name not in the data does not exist (NXDOMAIN);
- a CNAME is followed within the data, as a recursive server would, and a loop is SERVFAIL.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import yaml

from spamgate.core.settings import Nameserver

PYSPF_VERSION = "2.0.14"
PYSPF_SDIST = f"pyspf-{PYSPF_VERSION}.tar.gz"
PYSPF_SHA256 = "57a7ef01bda090173aafb6af0106251686ed73f03db4e911fcd34c57fc347186"
SUITE_MEMBER = f"pyspf-{PYSPF_VERSION}/test/rfc7208-tests.yml"
LICENCE_MEMBER = f"pyspf-{PYSPF_VERSION}/test/rfc7208-tests.LICENSE"
_DOWNLOAD_TIMEOUT = 120.0  # seconds for pip to fetch 70 KB, with a slow index
_SERVER_LIFETIME = 120.0  # seconds: a server a broken test leaves running stops by itself
_MAX_CNAME_CHAIN = 8
_NEGATIVE_TTL = 300
# The suite's record types as the server writes them (type 99 is served as asked: the
# resolver never asks it, RFC 7208 3.1 having dropped it).
_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spamgate-test-data" / f"pyspf-{PYSPF_VERSION}"


def suite_file() -> Path:
    """The suite's YAML file, fetched once into the cache (with its licence beside it).

    RuntimeError, with what to do, when it cannot be fetched."""
    directory = cache_directory()
    suite = directory / "rfc7208-tests.yml"
    if suite.is_file():
        return suite
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--dest",
            download,
            f"pyspf=={PYSPF_VERSION}",
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(_cannot_fetch(f"pip took over {_DOWNLOAD_TIMEOUT:g} s")) from None
        sdist = Path(download) / PYSPF_SDIST
        if done.returncode != 0 or not sdist.is_file():
            raise RuntimeError(_cannot_fetch(done.stderr.strip()[-2000:]))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != PYSPF_SHA256:
            raise RuntimeError(f"{PYSPF_SDIST} has SHA-256 {digest}, expected {PYSPF_SHA256}")
        with tarfile.open(sdist) as archive:
            for member, name in ((LICENCE_MEMBER, "rfc7208-tests.LICENSE"), (SUITE_MEMBER, "")):
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise RuntimeError(f"{PYSPF_SDIST} has no file {member}")
                target = directory / (name or suite.name)
                partial = target.with_suffix(".partial")
                partial.write_bytes(extracted.read())
                partial.replace(target)  # the suite file last: its presence means complete
    return suite


def _cannot_fetch(detail: str) -> str:
    return (
        f"cannot fetch the RFC 7208 test suite (pyspf=={PYSPF_VERSION} from PyPI, with pip) "
        f"into {cache_directory()}: the network or the package index is unreachable? Put "
        f"{SUITE_MEMBER} of {PYSPF_SDIST} there as rfc7208-tests.yml to run offline.\n{detail}"
    )


# --- the suite's data --------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteCase:
    scenario: str  # the scenario's description, which names it in the suite
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]  # acceptable results, the preferred first
    explanation: str | None

    @property
    def case_id(self) -> str:
        return f"{self.scenario}/{self.name}"


@dataclass
class Zone:
    """One scenario's DNS data: records by name and type, and the names that time out."""

    records: dict[tuple[dns.name.Name, str], list[Any]] = field(default_factory=dict)
    names: set[dns.name.Name] = field(default_factory=set)
    timing_out: set[dns.name.Name] = field(default_factory=set)


@dataclass(frozen=True)
class Scenario:
    description: str
    cases: tuple[SuiteCase, ...]
    zone: Zone


def load_scenarios(path: Path) -> list[Scenario]:
    scenarios = []
    with path.open("rb") as stream:
        for document in yaml.safe_load_all(stream):
            description = " ".join(str(document["description"]).split())
            cases = tuple(
                _case(description, name, data) for name, data in document["tests"].items()
            )
            scenarios.append(Scenario(description, cases, _zone(document.get("zonedata") or {})))
    return scenarios


def _case(scenario: str, name: str, data: dict[str, Any]) -> SuiteCase:
    result = data["result"]
    results = tuple(result) if isinstance(result, list) else (result,)
    return SuiteCase(
        scenario,
        name,
        str(data["host"]),
        str(data["mailfrom"]),
        str(data["helo"]),
        results,
        data.get("explanation"),
    )


def _zone(zonedata: dict[str, list[Any]]) -> Zone:
    zone = Zone()
    for owner, entries in zonedata.items():
        name = dns.name.from_text(owner)
        zone.names.add(name)
        spf_records: list[Any] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                zone.timing_out.add(name)
                continue
            ((rdtype, value),) = entry.items()
            if rdtype not in _TYPES:
                raise ValueError(f"record type {rdtype} at {owner} is not served")
            has_txt = has_txt or rdtype == "TXT"
            stored = zone.records.setdefault((name, rdtype), [])
            if value == "NONE":
                continue  # the type is there, with no records
            stored.append(value)
            if rdtype == "SPF":
                spf_records.append(value)
        if spf_records and not has_txt:
            zone.records.setdefault((name, "TXT"), []).extend(spf_records)
    return zone


# --- a server for one zone -----------------------------------------------------------------


def _character_strings(value: str | list[str]) -> bytes:
    """TXT or SPF record data: each string (UTF-8, as the suite's driver encodes it) as one or
    more character-strings of at most 255 octets; no strings at all gives empty data."""
    strings = [value] if isinstance(value, str) else value
    wire = b""
    for text in strings:
        encoded = text.encode("utf-8")
        chunks = [encoded[i : i + 255] for i in range(0, len(encoded), 255)] or [b""]
        wire += b"".join(bytes((len(chunk),)) + chunk for chunk in chunks)
    return wire


def _rdata(rdtype: str, value: Any) -> dns.rdata.Rdata:
    code = dns.rdatatype.from_text(rdtype)
    if rdtype in ("TXT", "SPF"):
        # Generic data: dnspython itself refuses TXT records of no strings, which the suite
        # serves (null-text), and would re-encode non-ASCII text.
        return dns.rdata.GenericRdata(dns.rdataclass.IN, code, _character_strings(value))
    if rdtype == "MX":
        preference, exchange = value
        text = f"{preference} {_absolute(str(exchange))}"
    elif rdtype in ("PTR", "CNAME"):
        text = _absolute(str(value))
    else:
        text = str(value)
    return dns.rdata.from_text(dns.rdataclass.IN, code, text)


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


class ZoneServer:
    """A UDP DNS server on 127.0.0.1 that answers from one scenario's zone."""

    def __init__(self, zone: Zone) -> None:
        self._zone = zone
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="spf-zone", daemon=True)

    @property
    def nameserver(self) -> Nameserver:
        return Nameserver("127.0.0.1", self.port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()

    def _serve(self) -> None:
        give_up_at = time.monotonic() + _SERVER_LIFETIME
        while not self._stop.is_set() and time.monotonic() < give_up_at:
            try:
                wire, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.reply_to(dns.message.from_wire(wire))
            if reply is not None:
                self._socket.sendto(reply.to_wire(), peer)

    def reply_to(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response, or None to stay silent (a TIMEOUT name)."""
        question = query.question[0]
        rdtype = dns.rdatatype.to_text(question.rdtype)
        reply = dns.message.make_response(query)
        name = question.name
        for _ in range(_MAX_CNAME_CHAIN):
            records = self._zone.records.get((name, rdtype))
            if records:
                rdatas = [_rdata(rdtype, value) for value in records]
                reply.answer.append(dns.rrset.from_rdata_list(name, 300, rdatas))
                return reply
            alias = self._zone.records.get((name, "CNAME"))
            if not alias or rdtype == "CNAME":
                break
            rdatas = [_rdata("CNAME", alias[0])]
            reply.answer.append(dns.rrset.from_rdata_list(name, 300, rdatas))
            name = dns.name.from_text(_absolute(str(alias[0])))
        else:
            reply.answer.clear()
            reply.set_rcode(dns.rcode.SERVFAIL)  # a loop, as a recursive server reports it
            return reply
        if name in self._zone.timing_out:
            return None
        if name not in self._zone.names:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        soa = f"ns.{name} hostmaster.{name} 1 3600 600 86400 {_NEGATIVE_TTL}"
        reply.authority.append(dns.rrset.from_text(name, _NEGATIVE_TTL, "IN", "SOA", soa))
        return reply


def serving(zone: Zone) -> Iterator[ZoneServer]:
    """A started server for `zone`, stopped when the generator is closed (for fixtures)."""
    server = ZoneServer(zone)
    server.start()
    try:
        yield server
    finally:
        server.stop()
