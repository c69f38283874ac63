"""What the benchmark sends: a fixed, seeded population of SMTP clients and sender domains,
the DNS zones that describe them, the messages, and the spamgate policy that judges them.

The mix is meant to look like an MX host's day: most clients are clean servers with proper
reverse DNS and HELO, some are listed (rejected or greylisted at RCPT), some allowlisted,
some IPv6, some dynamic end-user addresses with sloppy HELOs. Everything is derived from one
seed, so every configuration and every round sees the same kinds of traffic.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import yaml

from tests.dkim_keys import Key, make_key
from tests.harness.dns import Zone

REPOSITORY = Path(__file__).resolve().parent.parent
SHIPPED_POLICY = REPOSITORY / "config" / "spamgate.yaml"

# Zones of the shipped lists, renamed to test zones served by the benchmark's rbldnsd.
LIST_ZONES = {
    "SPAMHAUS_ZEN": "zen.dnsbl.bench",
    "SPAMCOP": "spamcop.dnsbl.bench",
    "PSBL": "psbl.dnsbl.bench",
    "DNSWL": "dnswl.dnsbl.bench",
    "SPAMHAUS_DBL": "dbl.dnsbl.bench",
}
# Host names and mail domains live under .test (RFC 2606), answered by rbldnsd's generic
# dataset: A records for HELO names, MX records for sender domains.
NAMES_ZONE = "test"
# A negative answer is cached for its SOA minimum (RFC 2308): an hour, like real lists.
_SOA = "$SOA 3600 ns.dnsbl.bench hostmaster.dnsbl.bench 1 3600 600 86400 3600\n"

RECIPIENT_DOMAIN = "example.com"


class Kind(enum.Enum):
    CLEAN = "clean"  # a server with confirmed reverse DNS, a proper HELO, a resolvable sender
    DYNAMIC = "dynamic"  # end-user address space: dynamic-looking PTR, sloppy HELO
    ALLOWLISTED = "allowlisted"  # on DNSWL (some of them also on PSBL)
    LISTED_REJECT = "listed-reject"  # Spamhaus ZEN: 550 at RCPT (one in ten over IPv6)
    # SpamCop only: a score of 6, which the shipped policy greylists. A client sends for a few
    # hundred (sender, recipient) pairs, so most of its attempts are a first one (451, "new")
    # and the rest repeat a triplet within greylist.min_delay (451, "early"); a repeat more
    # than 5 minutes later would pass, tagged, but that is rare even in a full run.
    LISTED_GREYLIST = "listed-greylist"
    LISTED_TAG = "listed-tag"  # PSBL only: accepted, tagged
    IPV6 = "ipv6"  # clean IPv6 servers


@dataclass(frozen=True)
class Client:
    address: str
    kind: Kind
    helo: str
    name: str | None  # verified reverse name (XCLIENT NAME), None: no PTR
    reverse_name: str | None  # unverified PTR name (XCLIENT REVERSE_NAME)
    domain: str  # the sender domain this client sends for


@dataclass(frozen=True)
class Population:
    clients: dict[Kind, tuple[Client, ...]]
    cold_clients: tuple[Client, ...]  # each used once, for cold-cache rounds
    listed_domains: tuple[str, ...]
    unresolvable_domains: frozenset[str]

    @property
    def all_clients(self) -> Iterator[Client]:
        for group in self.clients.values():
            yield from group
        yield from self.cold_clients


@dataclass(frozen=True)
class Sizes:
    clean: int = 3000
    dynamic: int = 300
    allowlisted: int = 200
    listed_reject: int = 150
    listed_greylist: int = 60
    listed_tag: int = 60
    ipv6: int = 200
    domains: int = 600
    cold: int = 1200


# Share of messages per kind in a realistic mix; CLEAN_ONLY leaves out everything that a
# filter refuses, so every configuration delivers every message (an even comparison).
REALISTIC_MIX = {
    Kind.CLEAN: 0.74,
    Kind.DYNAMIC: 0.05,
    Kind.ALLOWLISTED: 0.07,
    Kind.LISTED_REJECT: 0.05,
    Kind.LISTED_GREYLIST: 0.02,
    Kind.LISTED_TAG: 0.02,
    Kind.IPV6: 0.05,
}
CLEAN_ONLY_MIX = {Kind.CLEAN: 0.86, Kind.ALLOWLISTED: 0.08, Kind.IPV6: 0.06}


def build_population(sizes: Sizes, seed: int = 5) -> Population:
    rng = random.Random(seed)
    used: set[str] = set()
    domains = [f"{rng.choice(_BRANDS)}{i}.test" for i in range(sizes.domains)]
    unresolvable = frozenset(rng.sample(domains, max(1, sizes.domains // 25)))
    listed_domains = tuple(rng.sample(sorted(set(domains) - unresolvable), sizes.domains // 30))

    # Clean servers send for domains that are neither listed nor broken; the others for any.
    good_domains = sorted(set(domains) - unresolvable - set(listed_domains))
    clean_kinds = (Kind.CLEAN, Kind.ALLOWLISTED, Kind.IPV6)

    def server(kind: Kind, address: str) -> Client:
        domain = rng.choice(good_domains if kind in clean_kinds else domains)
        host = f"mx{rng.randrange(1, 9)}.{domain}"
        return Client(address, kind, host, host, host, domain)

    def dynamic(address: str) -> Client:
        dashed = address.replace(".", "-").replace(":", "-")
        ptr = f"dyn-{dashed}.pool.isp{rng.randrange(40)}.test"
        helo = rng.choice(["localhost", f"WIN-{rng.randrange(16**6):06X}", ptr, f"[{address}]"])
        return Client(address, Kind.DYNAMIC, helo, ptr, ptr, rng.choice(domains))

    clients: dict[Kind, tuple[Client, ...]] = {}
    for kind, count in (
        (Kind.CLEAN, sizes.clean),
        (Kind.ALLOWLISTED, sizes.allowlisted),
        (Kind.LISTED_REJECT, sizes.listed_reject),
        (Kind.LISTED_GREYLIST, sizes.listed_greylist),
        (Kind.LISTED_TAG, sizes.listed_tag),
    ):
        clients[kind] = tuple(server(kind, _ipv4(rng, used)) for _ in range(count))
    clients[Kind.DYNAMIC] = tuple(dynamic(_ipv4(rng, used)) for _ in range(sizes.dynamic))
    clients[Kind.IPV6] = tuple(server(Kind.IPV6, _ipv6(rng, used)) for _ in range(sizes.ipv6))
    # One listed client in ten is an IPv6 one.
    listed_ipv6 = tuple(
        server(Kind.LISTED_REJECT, _ipv6(rng, used)) for _ in range(sizes.listed_reject // 10)
    )
    clients[Kind.LISTED_REJECT] += listed_ipv6
    # Cold clients each have a domain of their own, so nothing about them is ever cached.
    cold = []
    for i in range(sizes.cold):
        address = _ipv4(rng, used)
        domain = f"cold{i}.test"
        host = f"mail.{domain}"
        cold.append(Client(address, Kind.CLEAN, host, host, host, domain))
    return Population(clients, tuple(cold), listed_domains, unresolvable)


def _ipv4(rng: random.Random, used: set[str]) -> str:
    for _ in range(1000):
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        text = str(address)
        if address.is_global and not address.is_multicast and text not in used:
            used.add(text)
            return text
    raise RuntimeError("no free IPv4 address found")


def _ipv6(rng: random.Random, used: set[str]) -> str:
    for _ in range(1000):
        # 2a00::/12: RIPE's global unicast space.
        address = ipaddress.IPv6Address((0x2A0 << 116) | rng.getrandbits(116))
        text = address.compressed
        if text not in used:
            used.add(text)
            return text
    raise RuntimeError("no free IPv6 address found")


_BRANDS = ("shop", "news", "bank", "travel", "mail", "club", "store", "media", "cloud", "post")


def build_zones(population: Population) -> list[Zone]:
    """rbldnsd datasets for every list of the shipped policy and for the .test names."""
    rng = random.Random(7)
    clients = population.clients
    zen = ["127.0.0.2 :127.0.0.2:"]  # RFC 5782 test entry, which spamgate's probes ask for
    zen6: list[str] = []
    for client in clients[Kind.LISTED_REJECT]:
        code = rng.choice(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.10"])
        (zen6 if ":" in client.address else zen).append(f"{client.address} :{code}:")
    spamcop = ["127.0.0.2 :127.0.0.2:"] + [
        f"{c.address} :127.0.0.2:" for c in clients[Kind.LISTED_GREYLIST]
    ]
    psbl_clients = list(clients[Kind.LISTED_TAG]) + list(clients[Kind.ALLOWLISTED][::7])
    psbl = ["127.0.0.2 :127.0.0.2:"] + [f"{c.address} :127.0.0.2:" for c in psbl_clients]
    dnswl = ["127.0.0.2 :127.0.10.2:"] + [
        f"{c.address} :127.0.{rng.choice([3, 10, 15])}.{rng.choice([2, 3])}:"
        for c in clients[Kind.ALLOWLISTED]
    ]
    dbl = ["test :127.0.1.2:"] + [f"{d} :127.0.1.2:" for d in population.listed_domains]
    names = []
    seen = set()
    for client in population.all_clients:
        if client.helo.endswith(".test") and not client.helo.startswith("dyn-"):
            relative = client.helo.removesuffix(".test")
            if relative not in seen:
                seen.add(relative)
                names.append(f"{relative} A 192.0.2.{rng.randrange(1, 255)}")
        domain = client.domain
        if domain not in population.unresolvable_domains and domain not in seen:
            seen.add(domain)
            names.append(f"{domain.removesuffix('.test')} MX 10 mx1.{domain}")
            names.append(
                f"{DKIM_SELECTOR}._domainkey.{domain.removesuffix('.test')} TXT {_key_record()}"
            )
    return [
        Zone(LIST_ZONES["SPAMHAUS_ZEN"], "ip4set", _SOA + _lines(zen)),
        Zone(LIST_ZONES["SPAMHAUS_ZEN"], "ip6trie", _SOA + _lines(zen6)),
        Zone(LIST_ZONES["SPAMCOP"], "ip4set", _SOA + _lines(spamcop)),
        Zone(LIST_ZONES["PSBL"], "ip4set", _SOA + _lines(psbl)),
        Zone(LIST_ZONES["DNSWL"], "ip4set", _SOA + _lines(dnswl)),
        # DNSWL is asked about IPv6 clients too: an (empty) IPv6 dataset answers NXDOMAIN.
        Zone(LIST_ZONES["DNSWL"], "ip6trie", _SOA),
        Zone(LIST_ZONES["SPAMHAUS_DBL"], "dnset", _SOA + _lines(dbl)),
        Zone(NAMES_ZONE, "generic", _SOA + _lines(names)),
    ]


# DKIM: every sender domain that resolves publishes one key under this selector, and a signed
# message carries a signature over its From field and body. h=from, because From and the body
# are what every copy of a message shares (the token is in its Message-ID): one signature
# serves every copy, configuration and round. Verifying costs what any signature costs.
DKIM_SELECTOR = "bench"


@functools.cache
def dkim_key() -> Key:
    """The signing domains' key: 1024 bits, so that its record fits one TXT string (rbldnsd's
    generic dataset has no multi-string TXT)."""
    return make_key(1024, seed=29)


def _key_record() -> str:
    return f'"v=DKIM1; k=rsa; p={dkim_key().public_b64}"'


def signed(population: Population, batch: Sequence[Message]) -> list[Message]:
    """`batch` with a DKIM signature on every message whose sender domain publishes a key."""
    signatures: dict[bytes, bytes] = {}
    result = []
    for message in batch:
        domain = message.mail_from.rpartition("@")[2]
        match = _FROM.search(message.data)
        if domain in population.unresolvable_domains or match is None:
            result.append(message)
            continue
        from_field = match.group(0)
        signature = signatures.get(from_field)
        if signature is None:
            signature = signatures[from_field] = bytes(
                dkim.sign(
                    from_field + b"\r\n" + _BODY,
                    DKIM_SELECTOR.encode(),
                    domain.encode(),
                    dkim_key().private_pem,
                    include_headers=[b"from"],
                )
            )
        result.append(
            Message(
                message.token,
                message.client,
                message.mail_from,
                message.rcpt,
                signature + message.data,
            )
        )
    return result


_FROM = re.compile(rb"^From: [^\r\n]*\r\n", re.MULTILINE)


def _lines(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


# Where a message carries its token: the sink finds it there (see _message).
_TOKEN = re.compile(rb"^Message-ID: <bench\.([^@>]+)@", re.MULTILINE)


def message_token(data: bytes) -> str | None:
    """The token of a message as the sink received it, None if it is not one of ours."""
    match = _TOKEN.search(data)
    return match.group(1).decode() if match else None


@dataclass(frozen=True)
class Message:
    token: str  # unique; in the Message-ID, so the sink can prove delivery
    client: Client
    mail_from: str
    rcpt: str
    data: bytes  # CRLF line endings, dot-stuffed, without the final "."


def messages(
    population: Population,
    mix: dict[Kind, float],
    count: int,
    tag: str,
    seed: int,
    *,
    new_triplets: bool = False,
) -> list[Message]:
    """`count` messages drawn from `population` by `mix`; `tag` makes their tokens unique.

    `new_triplets`: each message goes to a recipient of its own, named after its token
    (never postmaster@, whom greylisting leaves alone), so every (client, sender, recipient)
    triplet is one greylisting has never seen. The same draws otherwise: the same clients,
    senders and texts as without it."""
    rng = random.Random(seed)
    kinds = list(mix)
    weights = [mix[kind] for kind in kinds]
    chosen = rng.choices(kinds, weights, k=count)
    tokens = [f"{tag}.{n}" for n in range(count)]
    return [
        _message(
            rng,
            rng.choice(population.clients[kind]),
            token,
            f"{token}@{RECIPIENT_DOMAIN}" if new_triplets else None,
        )
        for token, kind in zip(tokens, chosen, strict=True)
    ]


def one_per_client(population: Population, tag: str) -> list[Message]:
    """A message from every client of the population (not the cold ones), in a fixed order."""
    rng = random.Random(11)
    clients = [client for group in population.clients.values() for client in group]
    return [_message(rng, client, f"{tag}.{n}") for n, client in enumerate(clients)]


def retag(message: Message, token: str) -> Message:
    """The same message under another token (a configuration's copy of a shared batch)."""
    old, new = f"<bench.{message.token}@".encode(), f"<bench.{token}@".encode()
    return Message(
        token, message.client, message.mail_from, message.rcpt, message.data.replace(old, new)
    )


def cold_messages(population: Population, start: int, count: int, tag: str) -> list[Message]:
    """Messages from clients (and domains) never seen before: nothing about them is cached."""
    rng = random.Random(start)
    clients = population.cold_clients[start : start + count]
    if len(clients) < count:
        raise ValueError("not enough cold clients for this many rounds")
    return [_message(rng, client, f"{tag}.{n}") for n, client in enumerate(clients)]


def _message(
    rng: random.Random, client: Client, token: str, recipient: str | None = None
) -> Message:
    domain = client.domain
    sender = f"{rng.choice(['news', 'info', 'billing', 'noreply', 'jane.doe'])}@{domain}"
    rcpt = f"user{rng.randrange(50)}@{RECIPIENT_DOMAIN}"
    if rng.random() < 0.01:
        rcpt = f"postmaster@{RECIPIENT_DOMAIN}"
    # Drawn above all the same, so that the rest of the message is what it would have been.
    rcpt = recipient or rcpt
    subject = rng.choice(_SUBJECTS)
    header = (
        f"Received: from {client.helo} ({client.name or 'unknown'} [{client.address}])\r\n"
        f"\tby relay.{domain} with ESMTPS id {rng.randrange(16**10):010x}\r\n"
        f"\tfor <{rcpt}>; {formatdate(localtime=False)}\r\n"
        f"Received: from app{rng.randrange(9)}.internal ([10.1.{rng.randrange(255)}.7])\r\n"
        f"\tby relay.{domain} with ESMTP; {formatdate(localtime=False)}\r\n"
        f'From: "{domain.split(".")[0].title()} Team" <{sender}>\r\n'
        f"To: <{rcpt}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <bench.{token}@{domain}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        f"X-Mailer: {rng.choice(_MAILERS)}\r\n"
        f"List-Unsubscribe: <mailto:unsubscribe@{domain}>\r\n"
        "\r\n"
    )
    return Message(token, client, sender, rcpt, header.encode() + _BODY)


_SUBJECTS = (
    "Your order has shipped",
    "Weekly newsletter: what's new this week",
    "Invoice 2026-11-0042",
    "Re: meeting notes from Tuesday",
    "Your account statement is ready",
    "Reminder: renew your subscription",
    "Fw: project timeline",
    "Welcome aboard!",
)
_MAILERS = ("Microsoft Outlook 16.0", "Thunderbird 128.3", "PHPMailer 6.9.1", "Apple Mail (2.3776)")
# About 1.5 KB of plain text: with the header above, a message of about 2 KB.
_BODY = (
    "Hello,\r\n\r\n"
    + "".join(
        f"Paragraph {i}: thank you for being a customer. This line is here to give the"
        " message a realistic size and shape.\r\n"
        for i in range(12)
    )
    + "\r\nKind regards,\r\nThe Team\r\n"
).encode()


# A few dozen header rules of the kind admins add: regular expressions on Subject, From,
# Reply-To, X-Mailer and friends. Real mail rarely matches them; they cost on every message.
EXTRA_RULES: tuple[dict[str, Any], ...] = tuple(
    {"name": name, "score": score, "description": f"bench rule {name}", "header": header}
    for name, score, header in (
        ("SUBJ_ALL_CAPS", 1, {"name": "Subject", "matches": "^[^a-z]{20,}$"}),
        (
            "SUBJ_LOTTERY",
            3,
            {"name": "Subject", "matches": r"(?i)\b(lottery|winner|inheritance)\b"},
        ),
        ("SUBJ_PHARMA", 4, {"name": "Subject", "matches": r"(?i)\b(v[i1]agra|c[i1]al[i1]s)\b"}),
        (
            "SUBJ_URGENT",
            1,
            {"name": "Subject", "matches": "(?i)^(urgent|important|attention)[: !]"},
        ),
        ("SUBJ_PUNCTUATION", 1, {"name": "Subject", "matches": "[!?]{3,}"}),
        ("SUBJ_DOLLARS", 1, {"name": "Subject", "matches": r"\$[0-9,]{4,}"}),
        ("SUBJ_FREE_OFFER", 1, {"name": "Subject", "matches": r"(?i)\bfree\b.*\b(offer|gift)\b"}),
        ("SUBJ_CRYPTO", 2, {"name": "Subject", "matches": r"(?i)\b(bitcoin|crypto)\b.*profit"}),
        ("SUBJ_PERCENT_OFF", 1, {"name": "Subject", "matches": r"[0-9]{2}% ?off"}),
        ("SUBJ_GB2312", 1, {"name": "Subject", "matches_raw": r"(?i)=\?gb2312\?"}),
        ("SUBJ_EMPTY", 1, {"name": "Subject", "matches": r"^\s*$"}),
        ("MISSING_SUBJECT", 1, {"name": "Subject", "missing": True}),
        ("FROM_NUMERIC_DOMAIN", 2, {"name": "From", "matches": r"@[0-9.]+>?$"}),
        (
            "FROM_BANK_FREEMAIL",
            3,
            {"name": "From", "matches": r"(?i)(bank|paypal).*@(gmail|yahoo)\."},
        ),
        ("FROM_EXCLAMATION", 1, {"name": "From", "matches": "!"}),
        (
            "REPLYTO_FREEMAIL",
            1,
            {"name": "Reply-To", "matches": r"(?i)@(gmail|yahoo|hotmail)\.com"},
        ),
        ("XMAILER_BULK", 2, {"name": "X-Mailer", "matches": "(?i)(massmailer|sendblaster|atomic)"}),
        ("XMAILER_OE6", 1, {"name": "X-Mailer", "matches": r"Outlook Express 6\.00\.2600"}),
        ("XPRIORITY_HIGH", 1, {"name": "X-Priority", "matches": "^1"}),
        ("MSGID_NO_DOMAIN", 1, {"name": "Message-ID", "matches": "^<[^@]*>$"}),
        ("MSGID_LOCALHOST", 1, {"name": "Message-ID", "matches": "(?i)@localhost"}),
        ("TO_UNDISCLOSED", 1, {"name": "To", "matches": "(?i)undisclosed"}),
        ("MISSING_TO", 1, {"name": "To", "missing": True}),
        ("CT_TEXT_HTML", 0.5, {"name": "Content-Type", "matches": "(?i)^text/html"}),
        ("PHP_SCRIPT", 1, {"name": "X-PHP-Originating-Script", "matches": "."}),
        ("RCVD_LOCALHOST", 1, {"name": "Received", "matches": r"(?i)from localhost \("}),
        ("DATE_ZONELESS", 1, {"name": "Date", "matches": r"[0-9]:[0-9]{2}\s*$"}),
        ("MANY_TO", 1, {"name": "To", "count_over": 3}),
    )
)


class Greylisting(enum.Enum):
    """What a benchmark spamgate greylists."""

    SHIPPED = "shipped"  # what the shipped policy does: scores from thresholds.greylist up
    OFF = "off"  # nothing; GREYLIST_RULE still fires (scoring 0), to cost the same otherwise
    EVERY_MESSAGE = "every-message"  # every message: GREYLIST_RULE has `action: greylist`


# Fires on every message of the benchmark (every sender has an @) and scores nothing: with
# `action: greylist` it sends every message through greylisting, whatever its score.
GREYLIST_RULE: dict[str, Any] = {
    "name": "BENCH_GREYLIST",
    "score": 0,
    "description": "bench rule: every sender",
    "sender_matches": "@",
}
# Seconds before a retry passes, when every message is greylisted: the least spamgate allows,
# so the benchmark's retries need not wait the shipped 5 minutes.
GREYLIST_MIN_DELAY = 1.0


def bench_policy(
    *,
    listen: str,
    dns_port: int,
    metrics_port: int,
    status_file: Path,
    greylisting: Greylisting = Greylisting.SHIPPED,
    state_store: str | None = None,
    dkim: bool = True,
    shipped: Path = SHIPPED_POLICY,
) -> str:
    """The shipped policy (`shipped`: config/spamgate.yaml, of this tree or of the revision
    an A/B measures) pointed at the benchmark's DNS, plus
    EXTRA_RULES: the same lists, reverse DNS and rules an admin starts from. The state
    (greylisting, rejected clients) is kept in `state_store` (a file or a redis:// URL), by
    default in a file next to the status file.

    Unless `greylisting` is SHIPPED, rejected clients are not remembered, so that only
    greylisting uses the store. With `Greylisting.EVERY_MESSAGE` a retry passes after
    GREYLIST_MIN_DELAY and client networks are never allowlisted by their passes, so that
    every retry asks the state.

    `dkim=False` drops the shipped dkim: and dmarc: rules: the same policy without DKIM, so
    that the body is negotiated away (the cost of DKIM is the difference)."""
    policy = yaml.safe_load(shipped.read_text())
    if not dkim:
        policy["rules"] = [r for r in policy["rules"] if "dkim" not in r and "dmarc" not in r]
    policy["listen"] = listen
    policy["resolver"]["nameservers"] = [f"127.0.0.1:{dns_port}"]
    policy["health"]["status_file"] = str(status_file)
    state = policy["state"]
    state["store"] = state_store or str(status_file.with_suffix(".state.sqlite"))
    if greylisting is not Greylisting.SHIPPED:
        # Greylisting alone asks the store: no reads for the memory of rejected clients.
        state["remember_rejects"] = 0
    if greylisting is Greylisting.OFF:
        policy["thresholds"]["greylist"] = None
        policy["rules"].append(GREYLIST_RULE)
    elif greylisting is Greylisting.EVERY_MESSAGE:
        policy["rules"].append({**GREYLIST_RULE, "action": "greylist"})
        policy["greylist"]["min_delay"] = GREYLIST_MIN_DELAY
        policy["greylist"]["auto_allow_passes"] = 0
    policy["metrics"]["listen"] = f"127.0.0.1:{metrics_port}"
    policy["shutdown_grace"] = 2
    for dns_list in [*policy["ip_lists"], *policy["domain_lists"]]:
        if dns_list["name"] not in LIST_ZONES:
            raise RuntimeError(f"bench/workload.py has no test zone for {dns_list['name']}")
        dns_list["zone"] = LIST_ZONES[dns_list["name"]]
    policy["rules"].extend(EXTRA_RULES)
    return str(yaml.safe_dump(policy, sort_keys=False))
