"""What a hostile SMTP client (or a confused MTA) sends, as hypothesis strategies: strings,
addresses, headers, macros, client addresses, whole dialogues
(tests/adapter/test_hostile_input.py)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from spamgate.shell.adapter import client_address

# Deterministic and bounded for CI: the same examples on every run, nothing written to a
# hypothesis database in the repository, no deadline (a loaded CI machine is not a bug).
BOUNDED = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strings as an SMTP client can make them ---------------------------------------------------

FRAGMENTS = (
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\r\n\t",
    "\n ",
    "\t",
    " ",
    "\x7f",
    "\x1b[31m",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u202e",
    "\u3002",
    "\uff0e",
    "\u212a",  # KELVIN SIGN: lower-cases to ASCII "k"
    "\U0001f4a9",
    "\udcff",  # a non-UTF-8 byte, as surrogateescape delivers it
    "\udc80",
    "\ud800",  # a lone surrogate no MTA can deliver; the Session must still cope
    "\u00e9",
    "\u00df",
    "=?bogus?Q?caf=E9?=",
    "=?utf-8?B?!!!?=",
    "=?utf-8?Q?=FF=FE=?=",
    "=?utf-7?B?K2Rm?=",
    "=?utf-8?B?dmlhZ3Jh?=",  # "viagra"
    "=?x-unknown?q?_?=",
    "=?idna?q?x?=",
    "=?",
    "?=",
    "%",
    "%%",
    "%s",
    "{id}",
    "{reasons}",
    "{0}",
    "\\",
    '"',
    "'",
    "<",
    ">",
    "@",
    ",",
    ";",
    ":",
    "(",
    ")",
    "(((",
    "[",
    "]",
    "viagra",
    "V1AGRA",
    "bank",
    "xn--",
    "xn--zca",
    "s3cr3tkey.zen.test",
    "example.org",
    "192.0.2.1",
    "[IPv6:::1]",
    "Mon, 1 Jan 2024 00:00:00 +0000",
    "31 Feb 2024 25:61:61 +9999",
    "99999",
    " action=accept",
    "\nNOQUEUE: decision id=forged action=accept",
)


def _surrogateescaped(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def wire(text: str) -> bytes:
    """The bytes a str stands for: surrogateescape undone; other lone surrogates as CESU."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def c_string(text: str) -> str:
    """What pymilter's C layer can hand Python for a HELO, header name or client name: valid
    UTF-8 (anything else fails before Python runs) and cut at a NUL (a C string ends there)."""
    valid = wire(text).decode("utf-8", "replace")
    return valid.split("\x00", 1)[0]


hostile_text = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30).map(_surrogateescaped),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=8).map("".join),
)

ODD_HELOS = (
    "",
    " ",
    "   ",
    "192.0.2.1",
    "[192.0.2.1]",
    "198.51.100.25",
    "[198.51.100.25]",
    "[IPv6:2001:db8::1]",
    "[IPv6:fe80::1%eth0]",
    "[IPv6:::ffff:192.0.2.1]",
    "[ipv6:garbage]",
    "[IPv6:192.0.2.1]",
    "[]",
    "[",
    "2001:db8::1",
    "a" * 300,
    "a." * 150,
    "a" * 64 + ".example",
    "b\u00fccher.example",
    "xn--bcher-kva.example",
    "\u4f8b\u3002\u30c6\u30b9\u30c8",
    "mx.example.net",
    "MX.EXAMPLE.NET.",
    "localhost",
    "user-pc",
    "mail.partner.example",
    "evil.example",
    "host\r\nname.example",
    "host\x00.example",
    "\x01\x02\x7f",
    "ex ample.com",
    "-bad-.example",
    "_srv.example",
    "..",
    ".",
    "x.123",
    "mail.client.example.com",
)
helos = st.one_of(st.sampled_from(ODD_HELOS), hostile_text)

LOCAL_PARTS = (
    "a",
    "info",
    "promo",
    "trap",
    "postmaster",
    "Postmaster",
    "abuse",
    "vip",
    "closed",
    '"quoted@local"',
    '"a\\"b"',
    '"unterminated',
    '""',
    "a" * 1000,
    "a..b",
    ".a",
    "\u00e9l\u00e8ve",
    "x\x00y",
    "a b",
)
DOMAINS = (
    "example.org",
    "example.com",
    "Example.COM",
    "example.com.",
    "b\u00fccher.example",
    "xn--bcher-kva.example",
    "strict.example",
    "trial.example",
    "partner.example",
    "bad.example",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "localhost",
    "b" * 1000 + ".example",
    "",
    ".",
    "-x-.example",
    "exa\x00mple.org",
    "exa\r\nmple.org",
)
ADDRESSES = (
    "<>",
    "<a@example.org>",
    "a@example.org",
    "<a@example.org",
    "a@example.org>",
    "<<a@example.org>>",
    "<@a.example,@b.example:u@c.example>",
    "<@relay.example:user@example.com>",
    "<@:u@c.example>",
    "<@relay.example>",
    "<postmaster>",
    "<Postmaster@Example.COM>",
    "<vip@example.com>",
    "<closed@example.com>",
    "<trap@example.com>",
    "<x@partner.example>",
    "<x@bad.example>",
    "",
    " ",
    "<",
    ">",
    "@",
    "a@",
    "@b",
    "a@@b",
    "<a@example.org> SIZE=1000",
    "<" + "a" * 1000 + "@example.org>",
    "<a@" + "b" * 1000 + ">",
)
envelope_addresses = st.one_of(
    st.sampled_from(ADDRESSES),
    st.builds(
        lambda local, domain, brackets: f"<{local}@{domain}>" if brackets else f"{local}@{domain}",
        st.one_of(st.sampled_from(LOCAL_PARTS), hostile_text),
        st.one_of(st.sampled_from(DOMAINS), hostile_text),
        st.booleans(),
    ),
    hostile_text,
)
ESMTP_PARAMS = (
    "SIZE=1000",
    "SIZE=99999999999999999999",
    "BODY=8BITMIME",
    "SMTPUTF8",
    "AUTH=<>",
    "RET=HDRS",
    "ENVID=x%2Bz",
    "NOTIFY=SUCCESS,FAILURE",
    "ORCPT=rfc822;a@example.org",
    "=",
    "",
)
esmtp_params = st.lists(st.one_of(st.sampled_from(ESMTP_PARAMS), hostile_text), max_size=3)

HEADER_NAMES = (
    "Subject",
    "subject",
    "From",
    "FROM",
    "To",
    "Cc",
    "Reply-To",
    "Sender",
    "Date",
    "Message-ID",
    "Received",
    "X-Spam-Status",
    "x-spam-score",
    "X-Spam-\u212aore",
    "",
    " ",
    "Subject ",
    "Sub\x00ject",
    "X\udcffY",
)
HEADER_VALUES = (
    "",
    " ",
    "cheap viagra now",
    "CHEAP PILLS FOR EVERYONE",
    "=?utf-8?B?Y2hlYXAgdmlhZ3Jh?=",
    "=?bogus?Q?v=69agra?=",
    "=?utf-8?B?!!!?=",
    "=?utf-8?Q?=?=",
    "=?" * 200,
    "caf\udce9",
    "line\r\nInjected: header",
    "folded\r\n\tvalue",
    "nul\x00byte",
    "<>",
    "a@example.org",
    "Bank <alerts@login.phish.example>",
    '"a@b" <c@d.example>',
    "a@b@c",
    "<a@b",
    "undisclosed-recipients:;",
    "(" * 500,
    '"unterminated <a@b.example>',
    "a@xn--bcher-kva.example, b@b\u00fccher.example",
    "M <m@evil.example>\r\nBcc: x@y.example",
    "today",
    "Mon, 1 Jan 2024 00:00:00 +0000",
    "Tue, 1 Jan 2030 00:00:00 EST",
    "Thu, 01 Jan 1970 00:00:00 +0000",
    "31 Feb 2024 25:61:61 +9999",
    "1 Jan 99999 00:00:00 +0000",
    "17 June , 2022",
    "12.34.56.78",
    "Fri, 31 Dec 9999 23:59:60 -2359",
    "Mon, 1 Jan 0001 00:00:00 +2359",
    "<@>",
    "<a@b><c@d>",
    "<" * 100,
    "no-brackets@x",
)
headers = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(HEADER_NAMES), hostile_text),
        st.one_of(st.sampled_from(HEADER_VALUES), hostile_text),
    ),
    max_size=12,
)

# Macro values: absent (None), garbage text, or bytes that are not UTF-8 (pymilter's
# getsymval raises on those).
MACRO_VALUES = (
    "",
    "OK",
    "FORGED",
    "FAIL",
    "TEMP",
    " OK ",
    "ok",
    "unknown",
    "[192.0.2.1]",
    "mail.client.example.com",
    "x.bad.example",
    "mx.example.net",
    "192.0.2.1",
    "198.51.100.25",
    "0.0.0.0/0",
    "192.0.2.1/33",
    "[IPv6:::1]",
    "fe80::1%eth0",
    "not an address",
    "\x00",
    "a\r\nb",
    "4XyZ1",
    "QID\nNOQUEUE: decision id=forged action=accept",
    "Q I D",
    '"',
    "%",
)
macro_values = st.one_of(
    st.none(),
    st.sampled_from(MACRO_VALUES),
    hostile_text,
    st.binary(min_size=1, max_size=12),
)
CONNECT_MACRO_NAMES = ("j", "{daemon_addr}", "{client_resolve}", "{client_ptr}")
connect_macros = st.fixed_dictionaries({name: macro_values for name in CONNECT_MACRO_NAMES})


# --- client addresses as libmilter's connect callback passes them ------------------------------

SPECIAL_IPS = (
    "192.0.2.1",
    "198.51.100.7",
    "192.0.2.200",
    "203.0.113.66",
    "127.0.0.1",
    "10.1.2.3",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:192.0.2.1",
    "::ffff:10.0.0.1",
    "::ffff:203.0.113.66",
    "fe80::1%eth0",
    "2001:db8::25%1",
    "2001:db8::1%eth0",
    "::ffff:198.51.100.7%lo",
    "2001:db8::1%",
)
ODD_HOSTADDRS = (
    None,
    (),
    ("not-an-ip", 25),
    (None, 25),
    (b"192.0.2.1", 25),
    "192.0.2.1",
    ["192.0.2.1", 25],
    (12345,),
    ("", 0),
    ("192.0.2.1\x00", 25),
    ("[192.0.2.1]", 25),
    ("/run/postfix/smtpd.sock",),
    "/run/postfix/smtpd.sock",
    0,
    3.5,
    {"ip": "192.0.2.1"},
)
any_ip = st.one_of(
    st.sampled_from(SPECIAL_IPS),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=6), st.sampled_from(("eth0", "1", "x" * 40, "%"))).map(
        lambda pair: f"{pair[0]}%{pair[1]}"
    ),
)
endpoints = st.one_of(
    any_ip.map(lambda ip: (socket.AF_INET, (ip, 25))),
    any_ip.map(lambda ip: (socket.AF_INET6, (ip, 25, 0, 2))),
    st.tuples(
        st.sampled_from((0, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, 99, -1)),
        st.one_of(st.sampled_from(ODD_HOSTADDRS), hostile_text, st.tuples(hostile_text)),
    ),
)
CLIENT_NAMES = (
    "unknown",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "mail.client.example.com",
    "x.bad.example",
    "",
    "[",
)
client_names = st.one_of(st.sampled_from(CLIENT_NAMES), hostile_text)


def session_address(
    family: int, hostaddr: object
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address a Session gets: as the adapter reads it, but keeping a zone
    (fe80::1%eth0), which `spamgate explain --ip` passes straight through."""
    if isinstance(hostaddr, tuple) and hostaddr and isinstance(hostaddr[0], str):
        try:
            return ipaddress.ip_address(hostaddr[0])
        except ValueError:
            pass
    return client_address(family, hostaddr)


# --- dialogues ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    sender: str
    params: tuple[str, ...]
    auth: str | bytes | None
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    ending: str  # "eom", "abort" or "next" (a new MAIL FROM ends it)
    queue_id: str | bytes | None


@dataclass(frozen=True)
class Dialogue:
    client_name: str
    endpoint: tuple[int, Any]  # connect()'s family and hostaddr
    macros: Mapping[str, str | bytes | None]
    helos: tuple[str, ...]
    transactions: tuple[Transaction, ...]


transactions = st.builds(
    Transaction,
    sender=envelope_addresses,
    params=esmtp_params.map(tuple),
    auth=macro_values,
    recipients=st.lists(envelope_addresses, max_size=5).map(tuple),
    headers=headers.map(tuple),
    ending=st.sampled_from(("eom", "eom", "abort", "next")),
    queue_id=macro_values,
)
dialogues = st.builds(
    Dialogue,
    client_name=client_names,
    endpoint=endpoints,
    macros=connect_macros,
    helos=st.lists(helos, max_size=2).map(tuple),
    transactions=st.lists(transactions, min_size=1, max_size=3).map(tuple),
)


def text_macro(value: str | bytes | None) -> str | None:
    """A macro as the Session sees it: bytes decoded as pymilter decodes envelope values."""
    return _surrogateescaped(value) if isinstance(value, bytes) else value
