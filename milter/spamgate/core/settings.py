"""How the daemon runs: where it listens, logs and asks DNS, what it remembers, how it watches
its DNS lists. Frozen dataclasses, part of the policy (policy.Policy holds them); what they
mean for mail is in policy.py.

Pure: nothing here reads a file or the system (preflight.py checks the settings against the
machine).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from spamgate.core.schema import FieldError, setting


class Breaker(enum.Enum):
    """What a list's hit ratio over `health.max_hit_ratio` does (listhealth.ListMonitor)."""

    PROBE = "probe"  # probe the list now: only a failing probe suspends it
    SUSPEND = "suspend"  # suspend it on the ratio alone
    OFF = "off"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# sockaddr_un's sun_path holds 108 bytes on Linux, the last for the NUL (unix(7)).
UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class ListenAddress:
    """Where the milter listens, in libmilter's notation."""

    family: str
    host: str = ""
    port: int = 0
    path: str = ""

    type_name = "socket"

    @classmethod
    def from_config(cls, value: object) -> ListenAddress:
        if not isinstance(value, str):
            raise ValueError(
                f"expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got {value!r}"
            )
        family, _, rest = value.partition(":")
        if family in ("unix", "local"):
            if not rest.startswith("/"):
                raise ValueError(f"unix socket path must be absolute, got {rest!r}")
            size = len(rest.encode("utf-8", "surrogateescape"))
            if size > UNIX_PATH_MAX:
                # sockaddr_un's sun_path (unix(7)): a longer path fails only at bind time.
                raise ValueError(
                    f"a unix socket path is at most {UNIX_PATH_MAX} bytes, this one has {size}"
                )
            return cls("unix", path=rest)
        if family not in ("inet", "inet6"):
            raise ValueError(f"unknown socket family {family!r}: use inet, inet6 or unix")
        host, port = parse_endpoint(
            rest, notation=f"{family}:PORT@HOST", subject="listen host", shown=value, milter=True
        )
        if (family == "inet6") != (ipaddress.ip_address(host).version == 6):
            raise ValueError(f"{family} needs an IPv{6 if family == 'inet6' else 4} address")
        return cls(family, host=host, port=port)

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.family == "inet6" else self.host
        return f"{self.family}:{self.port}@{host}"


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to send list queries to."""

    host: str
    port: int = 53

    type_name = "host[:port]"

    @classmethod
    def from_config(cls, value: object) -> Nameserver:
        if not isinstance(value, str):
            raise ValueError(f"expected an address such as 127.0.0.1:53, got {value!r}")
        host, port = parse_endpoint(
            value, notation="IP, IP:PORT or [IPv6]:PORT", subject="nameserver", default_port=53
        )
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(
    text: str,
    *,
    notation: str,
    subject: str,
    shown: str = "",
    default_port: int | None = None,
    milter: bool = False,
) -> tuple[str, int]:
    """The IP address and port in `text`: the one reading of an endpoint in the policy.

    `HOST:PORT` or `[IPv6]:PORT` (`metrics.listen`; with a `default_port`, also a bare
    address, as `resolver.nameservers` has them), or with `milter` libmilter's `PORT@HOST`
    (`listen: inet:PORT@HOST`). A ValueError says what to write (`notation`) or whose host
    is not an address (`subject`), and quotes `shown` (the whole value) or `text`.
    """
    wrong = ValueError(f"expected {notation} with a port 1-65535, got {shown or text!r}")
    port_text: str | None
    if milter:
        port_text, at, host = text.partition("@")
        if not at:
            raise wrong
        host = host.strip("[]")
    elif text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise wrong
        port_text = tail[1:] if tail else None
    elif default_port is not None and text.count(":") != 1:
        host, port_text = text, None  # an address alone (an IPv6 one has two colons or more)
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise wrong
    if port_text is None and default_port is not None:
        port = default_port
    elif (
        port_text is not None
        and re.fullmatch(r"[0-9]{1,5}", port_text)
        and 0 < int(port_text) < 65536
    ):
        port = int(port_text)
    else:
        raise wrong
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{subject} must be an IP address, got {host!r}") from None
    return host, port


@dataclass(frozen=True)
class SocketMode:
    """File permissions for a unix socket, always read as octal, as chmod(1) reads them."""

    bits: int

    type_name = "octal mode"
    from_text = True  # the schema passes the scalar as written: 660, 0660 and '0660' agree

    @classmethod
    def from_config(cls, value: object) -> SocketMode:
        text = str(value)
        if not re.fullmatch(r"(0o|0)?[0-7]{3}", text):
            raise ValueError(f"expected an octal mode such as 0660, got {text!r}")
        bits = int(text[-3:], 8)
        # Whoever may connect to the milter socket can feed spamgate fake SMTP sessions and
        # read its verdicts; only the MTA should (its group, e.g. postfix, with 0660).
        if bits & 0o007:
            raise ValueError(
                f"{text} gives other users access to the milter socket: the last digit must "
                "be 0 (e.g. 0660, for the MTA's group)"
            )
        return cls(bits)

    def __str__(self) -> str:
        return f"{self.bits:04o}"


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = setting(
        "`HOST:PORT` (`[::1]:9464` for IPv6) of the Prometheus endpoint, /metrics; empty: no "
        "endpoint. Keep it on loopback.",
        "",
    )

    def check(self) -> None:
        if self.listen:
            try:
                self.address()
            except ValueError as error:
                raise FieldError("listen", str(error)) from None

    def address(self) -> tuple[str, int]:
        return parse_endpoint(
            self.listen, notation="HOST:PORT such as 127.0.0.1:9464", subject="metrics host"
        )


@dataclass(frozen=True)
class LogSettings:
    target: str = setting("`stderr` (journald picks it up), `syslog`, or a file path.", "stderr")
    level: LogLevel = setting("Least severe level written.", LogLevel.INFO)
    stats_interval: int = setting(
        "Seconds between `stats` lines (per-list answer counts, resolver counters); 0 logs "
        "them only at shutdown.",
        3600,
        minimum=0,
        maximum=86400,
    )


@dataclass(frozen=True)
class SchedulingSettings:
    nice: int = setting(
        "Nice value of every spamgate thread (set once, at start): below Postfix's 0, so "
        "that under a flood the thread holding Python's interpreter lock is not pushed off "
        "its CPU by Postfix's processes while the other sessions wait for the lock "
        "(docs/performance.md). 0 leaves it as started. Lowering it needs root, "
        "CAP_SYS_NICE or a RLIMIT_NICE that allows it (the shipped systemd unit sets "
        "LimitNICE=-10); without, spamgate logs a warning and runs as started.",
        -10,
        minimum=-20,
        maximum=19,
    )
    batch: bool = setting(
        "Run spamgate's threads under SCHED_BATCH (set once, at start): a thread woken "
        "(by an answer, or to take the interpreter lock) waits for the running one's time "
        "slice instead of preempting it, so fewer are woken only to find the lock taken "
        "(docs/performance.md). CPU shares are as under the normal policy.",
        True,
    )


@dataclass(frozen=True)
class ResolverSettings:
    nameservers: tuple[Nameserver, ...] = setting(
        "DNS servers for list queries, as `IP` or `IP:PORT`; empty uses /etc/resolv.conf. Use a "
        "local caching resolver: DNSBLs refuse big public resolvers.",
        (),
    )
    query_timeout: float = setting(
        "Seconds to wait for one server's answer before retrying.", 1.0, minimum=0.01, maximum=30
    )
    deadline: float = setting(
        "Seconds a verdict waits for a lookup at most, counted from when its name became "
        "known (the client address at connect); lists still unanswered then count as "
        "unusable, never as hits.",
        2.0,
        minimum=0.01,
        maximum=60,
    )
    cache_min_ttl: int = setting(
        "Answers are cached at least this many seconds.", 30, minimum=0, maximum=86400
    )
    cache_max_ttl: int = setting(
        "Answers are cached at most this many seconds, whatever their TTL.",
        3600,
        minimum=0,
        maximum=604800,
    )
    cache_entries: int = setting(
        "Most answers kept in the cache; the oldest go first.", 100000, minimum=0, maximum=10**7
    )
    realtime_receiver: bool = setting(
        "Run the one thread that reads DNS answers at the lowest real-time priority "
        "(SCHED_RR 1), so that under a flood an answer is read as it arrives instead of "
        "waiting its turn among the session threads (docs/performance.md). Needs root, "
        "CAP_SYS_NICE or a RLIMIT_RTPRIO of 1 or more (the shipped systemd unit sets "
        "LimitRTPRIO=1); without it spamgate logs a warning and runs the thread as usual.",
        True,
    )

    def check(self) -> None:
        if self.cache_min_ttl > self.cache_max_ttl:
            raise FieldError("cache_min_ttl", "must not exceed cache_max_ttl")


@dataclass(frozen=True)
class ProbeSettings:
    enabled: bool = setting(
        "Probe this list (RFC 5782 test entries; an IP list asked about both families is "
        "probed on IPv4 and IPv6 apart, and only the family that fails is suspended) and "
        "suspend it while it fails; turn off for a list that does not follow the RFC.",
        True,
    )
    listed: str = setting(
        "Test entry the list must list: an address for IP lists (an IPv4 address is asked "
        "on IPv6 too, as `::ffff:a.b.c.d`, the form of RFC 5782's IPv6 test points; an IPv6 "
        "one on IPv6 only), a name for domain lists.",
        "",
        shown_default="127.0.0.2 (on IPv6 ::ffff:7f00:2; `test` for domain lists)",
    )
    unlisted: str = setting(
        "Test entry the list must not list.",
        "",
        shown_default="127.0.0.1 (::ffff:7f00:1, `invalid`)",
    )


# The circuit breaker keeps at most this many distinct clients (client networks, or names for
# a domain list) per list, the least recently seen going first: its memory stays bounded
# however many clients a flood brings (about 200 bytes each, 400 KB a list at most).
BREAKER_MAX_CLIENTS = 2048


@dataclass(frozen=True)
class HealthSettings:
    probe_interval: float = setting(
        "Seconds between probes of a healthy list.", 600, minimum=10, maximum=86400
    )
    retry_min: float = setting(
        "Seconds before a suspended list is probed again; doubles each time it still fails.",
        60,
        minimum=1,
        maximum=86400,
    )
    retry_max: float = setting(
        "Longest wait between probes of a suspended list.", 3600, minimum=1, maximum=86400
    )
    breaker: Breaker = setting(
        "What a hit ratio over `max_hit_ratio` does: `probe` the list at once and suspend it "
        "only if its probes fail (it lists its must-not-list test entry: a flood of listed "
        "clients is not a list gone bad), at most once a `window`; `suspend` it on the ratio "
        "alone (for a list with probes off that you would rather lose than let refuse the "
        "world); `off`: nothing.",
        Breaker.PROBE,
    )
    max_hit_ratio: float = setting(
        "The circuit breaker goes off (see `breaker`) when a list lists more than this share "
        "of the distinct clients it was asked about over `window` (a dead list that lists the "
        "whole internet must not reject the world).",
        0.9,
        minimum=0.01,
        maximum=1,
    )
    window: float = setting(
        "Seconds over which the hit ratio is measured; a client seen again in the window "
        f"counts once, and at most the last {BREAKER_MAX_CLIENTS} distinct clients of a list "
        "are kept.",
        600,
        minimum=10,
        maximum=86400,
    )
    max_failures: int = setting(
        "Suspend a list after this many unusable answers in a row, and stop waiting for it in "
        "sessions already waiting (a silent list must not make every session wait out the DNS "
        "deadline); probed again 10 s later; 0: never.",
        50,
        minimum=0,
        maximum=1000000,
    )
    min_checks: int = setting(
        "Distinct clients needed in the window before the hit ratio is judged: client "
        "networks (a /24 for IPv4, a /64 for IPv6) for IP lists, names asked for domain lists.",
        100,
        minimum=1,
        maximum=BREAKER_MAX_CLIENTS,
    )
    status_file: str = setting(
        "Where the daemon writes list health for `spamgate lists` (every 10 s); empty: nowhere.",
        "/run/spamgate/status.json",
    )

    def check(self) -> None:
        if self.retry_min > self.retry_max:
            raise FieldError("retry_min", "must not exceed retry_max")
        status = self.status_file
        if status.endswith("/"):
            # Written every 10 s as a file: a directory fails at run time, every time. (One
            # that exists is found by the pre-flight checks, preflight.py.)
            raise FieldError("status_file", f"{status!r} is a directory, not a file name")


@dataclass(frozen=True)
class ListHealthSettings:
    """One list's own circuit breaker settings; a key left out (null) takes the global one."""

    breaker: Breaker | None = setting(
        "Overrides `health.breaker` for this list.", None, shown_default="`health.breaker`"
    )
    max_hit_ratio: float | None = setting(
        "Overrides `health.max_hit_ratio` for this list.",
        None,
        minimum=0.01,
        maximum=1,
        shown_default="`health.max_hit_ratio`",
    )
    min_checks: int | None = setting(
        "Overrides `health.min_checks` for this list.",
        None,
        minimum=1,
        maximum=BREAKER_MAX_CLIENTS,
        shown_default="`health.min_checks`",
    )
    window: float | None = setting(
        "Overrides `health.window` for this list.",
        None,
        minimum=10,
        maximum=86400,
        shown_default="`health.window`",
    )

    def applied_to(self, health: HealthSettings) -> HealthSettings:
        """The global settings with this list's own in their place."""
        own = {
            key: value
            for key in ("breaker", "max_hit_ratio", "min_checks", "window")
            if (value := getattr(self, key)) is not None
        }
        return dataclasses.replace(health, **own) if own else health


DAY = 86400
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StateSettings:
    store: str = setting(
        "Where greylist triplets and recently rejected clients are remembered: a file path "
        "(SQLite in WAL mode, made on first use) or `redis://[:PASSWORD@]HOST:PORT/DB` (also "
        "`rediss://`, `unix://`), shared by every MX host of a domain.",
        "/var/lib/spamgate/state.sqlite",
    )
    timeout: float = setting(
        "Seconds one read or one write of the store may take at most (a greylist check makes "
        "one of each at most); a store that is down or slower fails open (mail accepted, "
        "logged, counted).",
        0.5,
        minimum=0.01,
        maximum=5,
    )
    remember_rejects: float = setting(
        "Seconds a client refused at RCPT for its IP list listings alone is remembered, so "
        "its next connections are refused at once, without DNS queries; 0: never.",
        0,
        minimum=0,
        maximum=DAY,
    )

    def check(self) -> None:
        if self.uses_redis:
            try:
                self.redis_url_parts()
            except ValueError as error:
                raise FieldError("store", str(error)) from None
        elif not self.store.startswith("/"):
            raise FieldError(
                "store", f"expected an absolute file path or a redis:// URL, got {self.store!r}"
            )

    @property
    def uses_redis(self) -> bool:
        return self.store.startswith(REDIS_SCHEMES)

    def redis_url_parts(self) -> urllib.parse.SplitResult:
        parts = urllib.parse.urlsplit(self.store)
        if parts.scheme != "unix":
            _ = parts.port  # raises ValueError for a port that is not a number
            if not parts.hostname:
                raise ValueError(f"{self.store_shown!r} names no host")
        elif not parts.path:
            raise ValueError(f"{self.store_shown!r} names no socket path")
        return parts

    @property
    def store_shown(self) -> str:
        """The store's location without a Redis password, for logs and error messages."""
        if not self.uses_redis:
            return self.store
        parts = urllib.parse.urlsplit(self.store)
        if parts.password is None:
            return self.store
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
