"""Hostile input, property-based: whatever an SMTP client (or a confused MTA) sends, spamgate
answers with a defined milter action and writes one clean log line.

Two rings are driven with hypothesis, over the same generated SMTP dialogues:
- the Session, with strings as pymilter delivers them (bytes that are not UTF-8 as lone
  surrogates, by surrogateescape) and with lone surrogates no MTA can send, because the
  Session and the modules under it promise to be total over str;
- the adapter, SpamgateMilter, through pymilter's TestCtx, fed bytes through the *_bytes entry
  points that libmilter's callbacks call, and with a getsymval that behaves as pymilter's C
  layer does (a macro value that is not UTF-8 raises UnicodeDecodeError).

The policy has a rule of every kind, an IP list and two domain lists (their zones hold access
keys), allow and deny lists and recipient policies, so the paths hostile input can reach all
run. The resolver answers every question at once, with answers drawn from a hostile set too
(garbage records, codes outside 127/8, blocked codes, failures), so no example waits on a
deadline. `test_the_harness_reaches_every_kind_of_evidence` shows the harness is wired: a
crafted dialogue fires lists, header rules, HELO and reverse DNS rules.

Properties:
- no exception escapes a Session method or an adapter callback, and the adapter never falls
  back on `on_error` (an internal error is a bug even though the guard hides it);
- every answer is defined: no-reply callbacks return CONTINUE, the others CONTINUE, ACCEPT,
  REJECT or TEMPFAIL; a refusal carries a reply whose class matches (5xx with REJECT, 4xx with
  TEMPFAIL), and no other answer sets one; Session decisions carry a known action and a
  finite score;
- reply texts are printable ASCII within libmilter's line limit, carry no lone `%`, start
  with one of the policy's texts (no echo of what the client said) and never name a DNS
  list zone;
- header actions carry values libmilter can send (UTF-8 encodable, no CR, LF or NUL);
- every decision log line is one line of printable ASCII that parses back into known keys,
  one line per decision id.

The harness: tests/hostile_world.py (the policy, the resolver, the checks),
tests/hostile_dialogues.py (what a client sends) and tests/hostile_drivers.py (playing a
dialogue into either ring). Sizes are in test_hostile_sizes.py, and the bugs these
properties found in test_hostile_regressions.py.
"""

from __future__ import annotations

import ipaddress
import socket

import Milter
from hypothesis import given, settings
from hypothesis import strategies as st

from spamgate.shell.adapter import client_address
from tests.hostile_dialogues import (
    BOUNDED,
    ODD_HOSTADDRS,
    Dialogue,
    Transaction,
    any_ip,
    dialogues,
    hostile_text,
)
from tests.hostile_drivers import run_adapter, run_session
from tests.hostile_world import CALM, InstantLookups, _records, dns_worlds

# --- ring 1: the Session -----------------------------------------------------------------------


@BOUNDED
@given(dialogue=dialogues, resolver=dns_worlds())
def test_session_decides_every_hostile_dialogue(
    dialogue: Dialogue, resolver: InstantLookups
) -> None:
    run_session(dialogue, resolver)


# --- ring 2: the adapter, through pymilter's TestCtx -------------------------------------------


@BOUNDED
@given(dialogue=dialogues, resolver=dns_worlds())
def test_adapter_answers_every_hostile_dialogue(
    dialogue: Dialogue, resolver: InstantLookups
) -> None:
    run_adapter(dialogue, resolver)


@settings(BOUNDED, max_examples=500)
@given(
    family=st.one_of(st.sampled_from((0, 1, 2, 10, 99, -1)), st.integers()),
    hostaddr=st.one_of(
        st.sampled_from(ODD_HOSTADDRS),
        any_ip,
        st.tuples(st.one_of(any_ip, hostile_text, st.none(), st.integers(), st.binary())),
        st.tuples(any_ip, st.integers(), st.integers(), st.integers()),
        st.lists(any_ip),
        hostile_text,
        st.binary(),
    ),
)
def test_client_address_is_an_address_or_none(family: int, hostaddr: object) -> None:
    address = client_address(family, hostaddr)
    assert address is None or isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if address is not None:
        assert address.version in (4, 6)
        assert getattr(address, "scope_id", None) is None  # the zone is not part of the client


# --- the harness reaches what it should --------------------------------------------------------


def test_the_harness_reaches_every_kind_of_evidence() -> None:
    """Not a property: proof that the dialogues above can reach lists, header rules, HELO and
    reverse DNS rules, so the properties are not true of a harness that decides nothing."""
    table = {
        ("7.100.51.198.s3cr3tkey.zen.test", "A"): _records("127.0.0.2"),
        ("spam.example.dbl-k3y.test", "A"): _records("127.0.1.2"),
    }
    transaction = Transaction(
        "<promo@spam.example>",
        ("SIZE=1000",),
        None,
        ("<user@example.com>", "<postmaster@example.com>"),
        (("Subject", "=?utf-8?B?Y2hlYXAgdmlhZ3Jh?="), ("From", "Bank <x@phish.example>")),
        "eom",
        "4XyZ1",
    )
    dialogue = Dialogue(
        "unknown", (socket.AF_INET, ("198.51.100.7", 25)), {}, ("192.0.2.9",), (transaction,)
    )
    conn = run_adapter(dialogue, InstantLookups(CALM.answers, 0, table))
    assert conn.answers == [
        ("connect", Milter.CONTINUE),
        ("hello", Milter.CONTINUE),
        ("envfrom_bytes", Milter.CONTINUE),
        ("envrcpt_bytes", Milter.REJECT),
        ("envrcpt_bytes", Milter.CONTINUE),  # postmaster is exempt
        ("data", Milter.CONTINUE),
        ("header_bytes", Milter.CONTINUE),
        ("header_bytes", Milter.CONTINUE),
        ("eoh", Milter.CONTINUE),
        ("eom", Milter.CONTINUE),
    ]
    (status,) = [value for name, value in conn.ctx.added if name == "X-Spam-Status"]
    hits = status.partition("hits=")[2].split(",")
    for expected in (
        "ZEN_SBL",  # IP list
        "DBL_SPAM",  # domain list (sender and From domains)
        "SUBJECT_PHARMA",  # header regex, after RFC 2047 decoding
        "FROM_BANK",
        "HELO_BARE",
        "RDNS_MISSING",
        "SENDER_NXDOMAIN",
        "SENDER_PROMO",
        "PHARMA_FROM_LISTED",
    ):
        assert expected in hits, (expected, status)
