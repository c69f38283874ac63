"""rspamd as the benchmark's baseline: Debian's rspamd 3.4, its proxy worker in milter mode
scanning by itself, its rbl module on the lists of spamgate's policy and nothing else, on
127.0.0.1, started and stopped here by PID.

    policy = policy_from_spamgate()                     # config/spamgate.yaml, bench zones
    with Rspamd(workdir, dns.port, policy) as rspamd:   # dns: the Rbldnsd serving the lists
        Listener(milters=rspamd.milter_address, options=no_milter_for_loopback(workdir))

The configuration is written whole under the work directory and given to rspamd with `-c`:
none of Debian's files in /etc/rspamd is read (nothing there includes ours, and ours
includes nothing), nothing under /var/lib/rspamd is written. What it holds:

- one `rspamd_proxy` worker, `milter = yes`, whose one upstream has `self_scan = yes`: the
  proxy scans the message itself (rspamd 3.4 reads `self_scan` in an `upstream` block only;
  at the worker level it is silently ignored, and the proxy then has no upstream at all and
  answers every message with a tempfail). No normal or controller worker: nothing else
  listens. rspamd 3.4 always starts an `hs_helper` process too (a mandatory worker that a
  config cannot disable); with no regular expressions it compiles nothing and sleeps.
- DNS to 127.0.0.1:<rbldnsd port> only: `options.dns.nameserver` set means /etc/resolv.conf
  is never read (src/libserver/dns.c), and `hosts = null` keeps /etc/hosts out too.
  `timeout` is spamgate's `resolver.query_timeout` and `retransmits` fits as many attempts
  into spamgate's `resolver.deadline` (1 s and one retransmit for the shipped policy).
- modules: `filters = ""` turns off every C module (Debian's list is chartable, dkim,
  regexp, fuzzy_check), `explicit_modules = []` and no `lua = rspamd.lua` load no rules,
  and `modules.path` names rbl.lua alone, so no other Lua plugin is even read.
- the rbl module: one rule per list, no Received-header, URL, e-mail or DKIM checks.
  IP lists check the client address (`checks = ["from"]`), IPv4 and IPv6 as the policy's
  `ipv4`/`ipv6` say. Return codes become the policy's hits under the same names (and
  `unknown = false`: any other answer, such as a list's error code, is no hit, as in
  spamgate); the scores are the policy's, and every symbol is `one_shot`: it scores once
  however many names hit it, as spamgate counts a hit name once. No rule is a whitelist
  rule: in rspamd an `is_whitelist` rule (Debian's DNSWL) stops the other lists being asked
  about a listed element, where spamgate asks every list and adds the (negative) scores up.
- `local_addrs` = the policy's `trusted_networks`: rspamd's `exclude_local` then skips the
  same clients that spamgate never looks up (Debian's list has 192.168/16, 10/8, 172.16/12,
  fd00::/8 and link-local; rspamd adds loopback, link-local and site-local IPv6 by itself).
  The benchmark's clients are global IPv4 addresses and 2a00::/12, which neither skips.
  `exclude_users` mirrors `skip_authenticated`.
- actions: `reject` at the reject threshold (554 5.7.1), `soft reject` at the greylist
  threshold (or tempfail's, whichever is lower: 451 4.7.1), `add_header` at the tag
  threshold (X-Spam: Yes). rspamd's own `greylist` action is left out: without the greylist
  module (which needs Redis) the milter accepts a message in that band (milter.c).

What spamgate does that this rspamd does not, or differently:

- rspamd's milter decides at the end of the message, spamgate at RCPT TO (DNS list evidence):
  a listed client is refused after DATA, its message already sent.
- spamgate greylists (451 once per triplet, then passes the retry); this rspamd answers 451
  to every attempt in that band.
- No rules besides the lists (HELO, reverse DNS, envelope and header rules), no allow/deny
  lists, no postmaster/abuse exemption, no DNS cache (rspamd asks rbldnsd for every
  message; spamgate answers repeat clients from its cache), no X-Spam-* headers below the
  tag threshold (spamgate's `add_headers: always`).
- Domain lists: rspamd's `helo` and `rdns` checks query the name as given and end the
  rule's checks when the client has no HELO or reverse name. The rule here uses selectors
  instead (the HELO, Postfix's client name, the envelope and From domains) plus the
  Reply-To check, and a process_script reduces every name to its registrable domain the
  way spamgate's `query: organizational` does (the Public Suffix List; an unknown TLD counts
  as a public suffix), and skips IP literals and single labels. Unlike spamgate, it does not
  first require the HELO to be a fully qualified name, and it may ask about one domain
  twice in a message (the module drops repeated names before the script reduces them: a
  HELO host and the sender's domain are two names, one query name). Bit-mask return codes
  (`&4`) are not mirrored (the shipped policy has none).
- rspamd's monitoring of each list (a query for 127.0.0.1, or a random name for a domain
  list, about once a minute) stands in for spamgate's list health probes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import pwd
import re
import socket
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.workload import LIST_ZONES, SHIPPED_POLICY
from tests.harness.processes import (
    LOOPBACK,
    HarnessError,
    ManagedProcess,
    Service,
    find_program,
    free_port,
    group_members,
)

# Debian's package creates this user and runs rspamd's workers as it (rspamd.service: the
# main process stays root and the workers drop to -u/-g). rspamd refuses to run its workers
# as root without --insecure; dropping them is what a real installation does, and it costs
# nothing: the main process reads the configuration and binds the socket while still root.
RSPAMD_USER = "_rspamd"
# Plugins and their libraries: read-only code that the package ships.
PLUGINS_DIR = Path("/usr/share/rspamd/plugins")
TLD_FILE = Path("/usr/share/rspamd/effective_tld_names.dat")
# Compiled hyperscan databases, kept across runs. Compiling the Public Suffix List for the
# first time takes rspamd's main process about 9 s of CPU, and the heap that compilation
# leaves behind is inherited by every worker (about 225 MB RSS each instead of about 40 MB).
# A real installation keeps these in /var/lib/rspamd and compiles them once; so does this.
DEFAULT_CACHE_DIR = Path("/var/tmp/spamgate-rspamd-cache")

# libmilter's wire protocol (Sendmail's libmilter/mfdef.h): 4-byte length, command, data.
_SMFIC_OPTNEG = b"O"
_SMFIC_QUIT = b"Q"
_SMFI_VERSION = 6


@dataclass(frozen=True)
class Hit:
    """A named hit of a DNS list: the answers (spamgate's code syntax) that mean it, and its
    score."""

    name: str
    codes: tuple[str, ...]
    score: float
    description: str = ""


@dataclass(frozen=True)
class DnsList:
    """A DNS list of the policy. `check_names` empty: an IP list, asked about the client
    address; otherwise a domain list, asked about these names (spamgate's `check_names`:
    helo, ptr, sender, from, reply_to)."""

    name: str
    zone: str
    hits: tuple[Hit, ...]
    ipv4: bool = True
    ipv6: bool = True
    check_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Thresholds:
    """spamgate's thresholds; None: that action is off."""

    tag: float | None
    greylist: float | None
    tempfail: float | None
    reject: float | None


@dataclass(frozen=True)
class RspamdPolicy:
    """What of a spamgate policy the rspamd baseline mirrors."""

    lists: tuple[DnsList, ...]
    thresholds: Thresholds
    trusted_networks: tuple[str, ...]
    skip_authenticated: bool
    query_timeout: float  # seconds, per DNS query
    deadline: float  # seconds a verdict may wait for DNS lists


def policy_from_spamgate(
    path: Path = SHIPPED_POLICY, zones: Mapping[str, str] = LIST_ZONES
) -> RspamdPolicy:
    """The lists, thresholds and exemptions of a spamgate policy file, every list's zone
    replaced by `zones[list name]` (by default the benchmark's test zones)."""
    policy = yaml.safe_load(path.read_text())
    lists = []
    for entry in [*policy["ip_lists"], *policy.get("domain_lists", [])]:
        name = entry["name"]
        if name not in zones:
            raise ValueError(f"{path}: no zone given for the list {name}")
        hits = tuple(
            Hit(
                name=hit["name"],
                codes=tuple(str(code) for code in hit["codes"]),
                score=float(hit["score"]),
                description=str(hit.get("description", "")),
            )
            for hit in entry["hits"]
        )
        lists.append(
            DnsList(
                name=name,
                zone=zones[name],
                hits=hits,
                ipv4=bool(entry.get("ipv4", True)),
                ipv6=bool(entry.get("ipv6", True)),
                check_names=tuple(entry.get("check_names", ())),
            )
        )
    thresholds = policy["thresholds"]
    resolver = policy["resolver"]
    return RspamdPolicy(
        lists=tuple(lists),
        thresholds=Thresholds(
            tag=thresholds.get("tag"),
            greylist=thresholds.get("greylist"),
            tempfail=thresholds.get("tempfail"),
            reject=thresholds.get("reject"),
        ),
        trusted_networks=tuple(str(net) for net in policy.get("trusted_networks", ())),
        skip_authenticated=bool(policy.get("skip_authenticated", True)),
        query_timeout=float(resolver["query_timeout"]),
        deadline=float(resolver["deadline"]),
    )


class Rspamd(Service):
    """rspamd in the foreground (-f): one proxy worker in milter mode on 127.0.0.1:`port`,
    scanning with the rbl module alone, DNS only to 127.0.0.1:`dns_port`.

    Postfix attaches it with `milter_address`. `pid` is the main process; `pids()` lists the
    main process and its workers (they are one process group), for CPU and memory readings.
    `cache_dir` keeps rspamd's compiled hyperscan databases between runs (see
    DEFAULT_CACHE_DIR); when rspamd had to compile one, start() starts it again, so that the
    running rspamd has loaded them rather than compiled them, as an installed one has.
    """

    address = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        dns_port: int,
        policy: RspamdPolicy,
        *,
        port: int | None = None,
        workers: int = 1,
        cache_dir: Path = DEFAULT_CACHE_DIR,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.dns_port = dns_port
        self.policy = policy
        self.cache_dir = cache_dir
        # Per-port names, so that several instances can share one workdir.
        self.base_dir = workdir / f"rspamd-{self.port}"
        self.config_path = self.base_dir / "rspamd.conf"
        self.db_dir = self.base_dir / "db"
        self.run_dir = self.base_dir / "run"
        self._prepare_directories()
        self.config_path.write_text(rspamd_config(self, workers=workers))
        argv = [find_program("rspamd"), "-f", "-c", str(self.config_path)]
        # Every path variable the package's own files would use points here, so nothing
        # can reach /etc/rspamd or /var/lib/rspamd even by a default.
        for variable, value in (
            ("CONFDIR", self.base_dir),
            ("LOCAL_CONFDIR", self.base_dir),
            ("DBDIR", self.db_dir),
            ("RUNDIR", self.run_dir),
            ("LOGDIR", self.base_dir),
        ):
            argv += ["--var", f"{variable}={value}"]
        if os.geteuid() == 0:
            argv += ["-u", RSPAMD_USER, "-g", RSPAMD_USER]
        self.process = ManagedProcess(argv, workdir / f"rspamd-{self.port}.log")

    def _prepare_directories(self) -> None:
        for directory in (self.base_dir, self.db_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        _prepare_cache_dir(self.cache_dir)
        if os.geteuid() == 0:
            # The workers write their statistics and temporary files here.
            user = pwd.getpwnam(RSPAMD_USER)
            for directory in (self.db_dir, self.run_dir):
                os.chown(directory, user.pw_uid, user.pw_gid)
                directory.chmod(0o750)

    @property
    def milter_address(self) -> str:
        """The proxy's socket in Postfix's smtpd_milters syntax."""
        return f"inet:{self.address}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The main process and its workers (proxy, hs_helper), as they are now."""
        return sorted(group_members(self.process.pid))

    def start(self, timeout: float = 60.0) -> None:
        """Start rspamd and wait until its proxy answers a milter option negotiation.

        The first start on an empty cache compiles the Public Suffix List (9 s of CPU on an
        idle machine): `timeout` allows for a busy one."""
        cached = set(self.cache_dir.iterdir())
        self._start_once(timeout)
        if set(self.cache_dir.iterdir()) - cached:
            # It compiled something: run the one that loads it instead.
            self.stop()
            self._start_once(timeout)

    def _start_once(self, timeout: float) -> None:
        self.process.start_and_wait(
            lambda: milter_answers(self.address, self.port),
            timeout=timeout,
            what="rspamd's proxy to answer a milter negotiation",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group; the main process stops its workers and exits."""
        self.process.stop(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)


def _prepare_cache_dir(path: Path) -> None:
    """Create the shared cache directory, or check that the one there is safe to load
    compiled databases from: a directory of ours that no other user can write."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755, parents=True)
    info = path.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise HarnessError(
            f"{path}: not a directory of uid {os.geteuid()} closed to other users;"
            " rspamd would load compiled code from it"
        )


def milter_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a milter at host:port answers an option negotiation now (its worker is up,
    not only its listening socket, which rspamd's main process opens before forking)."""
    negotiate = struct.pack(">III", _SMFI_VERSION, 0x1FF, 0x1FFFFF)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(_packet(_SMFIC_OPTNEG, negotiate))
            header = _recv_exactly(conn, 5)
            answered = header[4:5] == _SMFIC_OPTNEG
            conn.sendall(_packet(_SMFIC_QUIT, b""))
            return answered
    except OSError:
        return False


def _packet(command: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(command) + len(data)) + command + data


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the milter closed the connection")
        data += chunk
    return data


# -- the configuration ------------------------------------------------------------------------

# Each name of a domain list becomes its registrable domain under the list's zone, as in
# spamgate's `query: organizational` (milter/spamgate/core/domains.py): rspamd_util.get_tld()
# gives the registrable domain of a name under a known public suffix, and the name itself
# otherwise. Asking it about "x.<name>" tells the two apart: an unknown TLD counts as a public
# suffix (the PSL's "*" rule), so the last two labels remain. IP addresses and literals and
# single labels are not looked up; nil tells the rbl module to send no query.
_ORGANIZATIONAL_QUERY = """\
return function(req, rbl)
  local util = require "rspamd_util"
  local name = tostring(req):lower()
  if name:sub(-1) == '.' then
    name = name:sub(1, -2)
  end
  if name:find('^%[') or name:find(':', 1, true) or not name:find('[^%d.]') then
    return nil
  end
  local labels = {}
  for label in name:gmatch('[^.]+') do
    labels[#labels + 1] = label
  end
  if #labels < 2 then
    return nil
  end
  local probe = 'x.' .. name
  local registrable = util.get_tld(probe)
  if registrable == probe then
    registrable = labels[#labels - 1] .. '.' .. labels[#labels]
  end
  return registrable .. '.' .. rbl
end"""

# spamgate's check_names -> an rspamd selector. reply_to is the rbl module's own `replyto`
# check (it parses the header); Postfix's client name reaches rspamd as the milter connect
# hostname, which the proxy passes on as the Hostname request header (and leaves out when
# Postfix says "unknown").
_NAME_SELECTORS = {
    "helo": "helo",
    "ptr": "request_header('Hostname')",
    "sender": "from('smtp'):domain",
    "from": "from('mime'):domain",
}


def rspamd_config(rspamd: Rspamd, *, workers: int = 1) -> str:
    """The whole rspamd.conf of this instance (UCL)."""
    policy = rspamd.policy
    attempts = max(1, math.floor(policy.deadline / policy.query_timeout + 1e-9))
    for network in policy.trusted_networks:
        ipaddress.ip_network(network)  # a bad entry fails here, not in rspamd's log
    options = {
        "pidfile": str(rspamd.run_dir / "rspamd.pid"),  # rspamd -f writes none, though
        "filters": "",
        "explicit_modules": [],
        "url_tld": str(TLD_FILE),
        "hs_cache_dir": f"{rspamd.cache_dir}/",
        # No `cache_file` (symbols.cache, the symbols' order by statistics): rspamd 3.4 opens
        # symbols.cache.new without O_CREAT (symcache_impl.cxx), so it never writes one.
        "stats_file": str(rspamd.db_dir / "stats.ucl"),
        "history_file": str(rspamd.db_dir / "rspamd.history"),
        "dynamic_conf": str(rspamd.db_dir / "rspamd_dynamic"),
        "tempdir": str(rspamd.run_dir),
        "local_addrs": list(policy.trusted_networks),
        "task_timeout": 8.0,  # seconds, as in Debian's options.inc
        "dns": {
            "nameserver": [f"{LOOPBACK}:{rspamd.dns_port}"],
            "timeout": policy.query_timeout,  # seconds
            "retransmits": attempts - 1,
            "sockets": 16,
            "hosts": None,
        },
    }
    rules = {dns_list.name: _rbl_rule(dns_list, policy) for dns_list in policy.lists}
    symbols = {
        # one_shot: a symbol scores once however many names hit it, as spamgate counts a
        # hit name once. It must be said per symbol: the options' `one_shot = true` lowers
        # the default only after the configuration's symbols were made (cfg_utils.c), so it
        # misses every one of them.
        hit.name: {
            "score": hit.score,
            "description": hit.description or hit.name,
            "one_shot": True,
        }
        for dns_list in policy.lists
        for hit in dns_list.hits
    }
    worker: dict[str, Any] = {
        "bind_socket": f"{LOOPBACK}:{rspamd.port}",
        "milter": True,
        "count": workers,
        "timeout": 120.0,  # seconds, as in Debian's worker-proxy.inc
        "spam_header": "X-Spam",
        "reject_message": "Spam message rejected",
        "discard_on_reject": False,
        "quarantine_on_reject": False,
    }
    # The upstream's `self_scan`: see the module docstring.
    worker['upstream "local"'] = {"default": True, "self_scan": True}
    config = {
        "options": options,
        # Console: the harness collects the output in its log file.
        "logging": {"type": "console", "level": "info", "color": False},
        "modules": {"path": str(PLUGINS_DIR / "rbl.lua")},
        "actions": _actions(policy.thresholds),
        "rbl": {"rbls": rules},
        'group "rbl"': {"symbols": symbols},
        'worker "rspamd_proxy"': worker,
    }
    header = "# Written by bench/rspamd.py for one rspamd instance; it includes no other file.\n"
    return header + "".join(f"\n{_ucl_entry(key, value, 0)}\n" for key, value in config.items())


def _actions(thresholds: Thresholds) -> dict[str, Any]:
    actions: dict[str, Any] = {}
    if thresholds.reject is not None:
        actions["reject"] = thresholds.reject
    temporary = [t for t in (thresholds.greylist, thresholds.tempfail) if t is not None]
    if temporary:
        # The C code knows "soft reject"; rspamd's Lua sanity check of the actions section
        # does not and logs "unknown element in actions section: soft reject" (harmless).
        actions["soft reject"] = min(temporary)
    if thresholds.tag is not None:
        actions["add_header"] = thresholds.tag
    return actions


def _rbl_rule(dns_list: DnsList, policy: RspamdPolicy) -> dict[str, Any]:
    rule: dict[str, Any] = {
        # The rule's own symbol, distinct from the hits (SPAMCOP is both a list and a hit).
        "symbol": f"{dns_list.name}_CHECK",
        "rbl": dns_list.zone,
        # No defaults from the module: every option of the rule is set here.
        "ignore_defaults": True,
        "ignore_whitelist": True,
        "is_whitelist": False,
        "unknown": False,
        "exclude_users": policy.skip_authenticated,
        "exclude_local": True,
        "exclude_private_ips": True,
        "returncodes": {hit.name: _lua_patterns(hit.codes) for hit in dns_list.hits},
    }
    if not dns_list.check_names:
        rule |= {"checks": ["from"], "ipv4": dns_list.ipv4, "ipv6": dns_list.ipv6}
        return rule
    unknown = set(dns_list.check_names) - {*_NAME_SELECTORS, "reply_to"}
    if unknown:
        raise ValueError(f"{dns_list.name}: check_names {sorted(unknown)} are not mirrored")
    # The selectors are named by `selector` alone: listing "selector" in `checks` makes
    # rspamd 3.4 replace the rule's selectors with its own marker table (convert_checks in
    # lualib/plugins/rbl.lua), and the module then fails to load.
    if "reply_to" in dns_list.check_names:
        rule["checks"] = ["replyto"]
    rule |= {
        "selector": {
            name: _NAME_SELECTORS[name] for name in dns_list.check_names if name != "reply_to"
        },
        "emails_domainonly": True,
        "process_script": _ORGANIZATIONAL_QUERY,
        "ipv4": True,
        "ipv6": True,
    }
    return rule


def _lua_patterns(codes: Sequence[str]) -> list[str]:
    """spamgate's return code specifications as the anchored Lua patterns that rspamd's rbl
    module matches answers against."""
    patterns: list[str] = []
    for code in codes:
        spec = code.strip()
        if spec.startswith("&"):
            raise ValueError(f"bit-mask return code {spec!r} is not mirrored")
        if "*" in spec:
            octets = spec.split(".")
            if len(octets) != 4:
                raise ValueError(f"bad return code {spec!r}")
            patterns.append("%.".join("%d+" if o == "*" else str(int(o)) for o in octets))
            continue
        if "/" in spec:
            network = ipaddress.IPv4Network(spec, strict=True)
            first, last = network[0], network[-1]
        else:
            low, _, high = spec.partition("-")
            first = ipaddress.IPv4Address(low.strip())
            last = ipaddress.IPv4Address(high.strip()) if high else first
        if int(last) - int(first) >= 256:
            raise ValueError(f"return code range {spec!r} is too wide to spell out")
        patterns += [
            str(ipaddress.IPv4Address(n)).replace(".", "%.")
            for n in range(int(first), int(last) + 1)
        ]
    return patterns


# A bare key, or a section with a name (`worker "rspamd_proxy"`); other keys are quoted.
_BARE_KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*( "[A-Za-z0-9_ ]+")?')


def _ucl_entry(key: str, value: Any, indent: int) -> str:
    """One `key = value;` line of UCL, or a `key { ... }` block for an object."""
    pad = "  " * indent
    name = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    if isinstance(value, Mapping):
        body = "".join(f"{_ucl_entry(str(k), v, indent + 1)}\n" for k, v in value.items())
        return f"{pad}{name} {{\n{body}{pad}}}"
    return f"{pad}{name} = {_ucl_value(value)};"


def _ucl_value(value: Any) -> str:
    """A UCL scalar or array, in JSON's syntax (UCL reads JSON). A string may not contain
    "$", which UCL would expand as a variable."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        if "$" in value:
            raise ValueError(f"UCL would expand the variable in {value!r}")
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_ucl_value(item) for item in value) + "]"
    raise TypeError(f"no UCL for {value!r}")
