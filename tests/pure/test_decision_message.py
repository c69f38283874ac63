"""The decision at end of message as a pure function (decision.decide), greylisting, and
whose lists count: facts in, a ruling out, as in tests/pure/test_decision.py."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from spamgate.core import decision
from spamgate.core.decision import Client, Need, Retry, Ruling, decide
from spamgate.core.engine import Action, ListsIgnored
from spamgate.core.replies import Reply
from tests.rulings import ALLOW, CLEAN, DENY, GATHERED, GROUPS, PBL, SBL, SPAM, engine, facts

# --- end of message --------------------------------------------------------------------------

MILDEST = (
    GROUPS + "thresholds: {tag: 3, greylist: null, reject: 5}\nsplit_recipient_policies: false\n"
)


@pytest.mark.parametrize(
    ("extra", "given", "expected"),
    [
        pytest.param("", {"message": CLEAN}, ("accept", None, ""), id="clean"),
        pytest.param("", {"message": SPAM}, ("tag", None, ""), id="tagged"),
        pytest.param(
            "thresholds: {tag: 3, greylist: null, reject: 5}\n",
            {"message": SPAM},
            ("reject", 550, ""),
            id="header-reject",
        ),
        pytest.param(
            "thresholds: {tag: 3, greylist: null, reject: 5}\n",
            {"message": SPAM, "accepted": ("postmaster@example.com",), "unrefusable": 1},
            ("tag", None, "exempt"),
            id="only-exempt-recipients-get-it-tagged",
        ),
        pytest.param(
            "thresholds: {tag: 3, greylist: null, reject: 5}\n",
            {
                "message": SPAM,
                "accepted": ("a@example.com", "postmaster@example.com"),
                "unrefusable": 1,
            },
            ("reject", 550, ""),
            id="an-exempt-recipient-shields-no-other",
        ),
        pytest.param(
            "thresholds: {tag: 3, greylist: null, quarantine: 5, reject: 10}\n",
            {"message": SPAM},
            ("quarantine", None, ""),
            id="quarantine",
        ),
        pytest.param(
            MILDEST,
            {"message": SPAM, "groups": ("u@example.com", "x@example.net")},
            ("tag", None, ""),
            id="mildest-tag-beats-reject",
        ),
        pytest.param(
            MILDEST,
            {"message": SPAM, "groups": ("u@example.com", "x@soft.example")},
            ("tempfail", 451, ""),
            id="mildest-tempfail-beats-reject",
        ),
        pytest.param(
            MILDEST,
            {"message": SPAM, "groups": ("x@soft.example", "u@example.com", "x@example.net")},
            ("tag", None, ""),
            id="mildest-of-three",
        ),
    ],
)
def test_end_of_message(
    extra: str, given: dict[str, Any], expected: tuple[str, int | None, str]
) -> None:
    eng = engine(extra)
    if "groups" in given:
        given = {**given, "groups": tuple(eng.group_for(r) for r in given["groups"])}
    given.setdefault("accepted", ("u@example.com",))
    ruling = decide(eng, facts(eng, **given))
    assert ruling.judged is not None
    code = ruling.reply.code if ruling.reply else None
    assert (ruling.action.label, code, ruling.judged.enforcement.waived_by) == expected


def test_end_of_message_headers() -> None:
    eng = engine("thresholds: {tag: 3, greylist: null, quarantine: 5, reject: 10}\n")
    given = facts(eng, message=SPAM, accepted=("u@example.com",))
    ruling = decide(eng, replace(given, our_headers={"X-Spam-Status": 2, "X-Spam-Flag": 1}))
    assert ruling.delete_headers == (("X-Spam-Status", 2), ("X-Spam-Status", 1), ("X-Spam-Flag", 1))
    assert ruling.add_headers == (
        ("X-Spam-Score", "5.0"),
        ("X-Spam-Status", "Yes, score=5.0 hits=PHARMA,NO_DATE"),
    )
    assert ruling.quarantine_reason == "spamgate: score 5.0: pharmacy spam; no Date (id d1)"


def test_a_refused_message_deletes_and_adds_nothing() -> None:
    eng = engine("thresholds: {tag: 3, greylist: null, reject: 5}\n")
    given = facts(eng, message=SPAM, accepted=("u@example.com",))
    ruling = decide(eng, replace(given, our_headers={"X-Spam": 1}))
    assert ruling.reply == Reply(550, "5.7.1", "Message refused: pharmacy spam; no Date (id d1)")
    assert (ruling.delete_headers, ruling.add_headers) == ((), ())


def test_an_allowlisted_message_is_not_scored_but_loses_forged_headers() -> None:
    eng = engine(ALLOW)
    given = facts(eng, sender="news@x.example", message=SPAM, judged=True)
    ruling = decide(eng, replace(given, our_headers={"X-Spam-Flag": 1}))
    assert (ruling.judged, ruling.action, ruling.add_headers) == (None, Action.ACCEPT, ())
    assert ruling.delete_headers == (("X-Spam-Flag", 1),)


# --- trusted, authenticated, remembered ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "given", "ignored", "hits"),
    [
        pytest.param("", {"helo": "192.0.2.9"}, None, ["ZEN_SBL", "HELO_BARE"], id="judged"),
        pytest.param(
            "",
            {"address": "127.0.0.1", "helo": "192.0.2.9"},
            ListsIgnored.TRUSTED,
            [],
            id="trusted",
        ),
        pytest.param(
            "",
            {"authenticated": True, "helo": "192.0.2.9"},
            ListsIgnored.AUTHENTICATED,
            [],
            id="authenticated",
        ),
        pytest.param(
            "skip_authenticated: false\n",
            {"authenticated": True, "helo": "192.0.2.9"},
            None,
            ["ZEN_SBL", "HELO_BARE"],
            id="skip-authenticated-off",
        ),
        pytest.param(
            "",
            {"address": None},
            ListsIgnored.NO_ADDRESS,
            [],
            id="no-address",
        ),
        pytest.param(
            "",
            {"dns": False, "helo": "192.0.2.9"},
            ListsIgnored.NO_DNS,
            ["HELO_BARE"],
            id="no-dns-keeps-connection-rules",
        ),
        pytest.param(
            "",
            {"remembered": ("ZEN_SBL",)},
            ListsIgnored.REMEMBERED,
            ["ZEN_SBL"],
            id="remembered-hits-replayed",
        ),
        pytest.param(
            "",
            {"remembered": ("ZEN_SBL",), "authenticated": True},
            ListsIgnored.AUTHENTICATED,
            [],
            id="authenticated-beats-remembered",
        ),
    ],
)
def test_whose_lists_count(
    extra: str, given: dict[str, Any], ignored: ListsIgnored | None, hits: list[str]
) -> None:
    eng = engine(extra)
    ruling = decide(eng, facts(eng, zen_code=SBL, **given))
    assert ruling.judged is not None
    assert ruling.judged.evidence.lists_ignored is ignored
    assert [hit.name for hit in ruling.judged.verdict.hits] == hits


def test_a_reject_for_ip_list_hits_alone_is_remembered() -> None:
    eng = engine("state: {remember_rejects: 600}\n")
    assert decide(eng, facts(eng, zen_code=SBL)).remember == ("ZEN_SBL",)
    assert decide(eng, facts(eng, zen_code=PBL)).remember == ()  # a tempfail


# --- greylisting -----------------------------------------------------------------------------

GREY = "thresholds: {tag: 3, greylist: 5, tempfail: null, reject: 10}\n"


@pytest.mark.parametrize(
    ("given", "answers", "action", "reply", "waived_by"),
    [
        pytest.param(
            {},
            {"user@example.com": Retry(wait=299.5)},
            Action.GREYLIST,
            Reply(451, "4.7.1", "Greylisted: please try again in 300 seconds (id d1)"),
            "",
            id="must-retry",
        ),
        pytest.param(
            {}, {"user@example.com": Retry(delayed=310)}, Action.TAG, None, "", id="passed"
        ),
        pytest.param({}, {"user@example.com": Retry()}, Action.TAG, None, "", id="known"),
        pytest.param(
            {"authenticated": True}, {}, Action.TAG, None, "authenticated", id="authenticated"
        ),
        pytest.param({"address": "127.0.0.1"}, {}, Action.TAG, None, "trusted", id="trusted"),
        pytest.param({"address": None}, {}, Action.TAG, None, "no-address", id="no-address"),
        pytest.param({"greylist_state": False}, {}, Action.TAG, None, "no-state", id="no-state"),
    ],
)
def test_greylisting_at_rcpt(
    given: dict[str, Any],
    answers: dict[str, Retry],
    action: Action,
    reply: Reply | None,
    waived_by: str,
) -> None:
    eng = engine(GREY)
    ruling = decide(eng, replace(facts(eng, sender="bulk@example.org", **given), greylist=answers))
    assert ruling.judged is not None
    assert ruling.judged.verdict.action is Action.GREYLIST  # the rule's floor, whoever the client
    enforced = ruling.judged.enforcement
    assert (ruling.action, ruling.reply, enforced.action, enforced.waived_by) == (
        action,
        reply,
        action,
        waived_by,
    )


def test_greylisting_asks_the_state_only_in_the_band() -> None:
    eng = engine(GREY)
    assert decide(eng, facts(eng, zen_code=PBL)) == Ruling(
        needs=Need.GREYLIST, ask=("user@example.com",)
    )
    assert decide(eng, facts(eng, zen_code=SBL)).needs is Need.NOTHING  # a reject


def test_greylisting_at_end_of_message_asks_for_every_recipient_not_yet_asked() -> None:
    eng = engine(GREY)
    accepted = ("a@example.com", "b@example.com", "a@example.com")
    base = facts(eng, zen_code=PBL, message=CLEAN, accepted=accepted)
    asked = decide(eng, replace(base, greylist={"a@example.com": Retry(delayed=301.4)}))
    assert (asked.needs, asked.ask) == (Need.GREYLIST, ("b@example.com",))
    answers = {"a@example.com": Retry(delayed=301.4), "b@example.com": Retry(delayed=400)}
    ruling = decide(eng, replace(base, greylist=answers))
    assert ruling.action is Action.TAG
    assert ("X-Greylist", "delayed 400 seconds by spamgate") in ruling.add_headers


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param({"address": None}, ListsIgnored.NO_ADDRESS, id="no-address"),
        pytest.param({"address": "10.1.2.3"}, ListsIgnored.TRUSTED, id="trusted-network"),
        pytest.param({"address": "::ffff:127.0.0.1"}, ListsIgnored.TRUSTED, id="mapped-trusted"),
        pytest.param({"listed": "allowed"}, ListsIgnored.ALLOWED, id="allowed"),
        pytest.param({"dns": False}, ListsIgnored.NO_DNS, id="no-dns"),
        pytest.param({"remembered": ("ZEN_SBL",)}, ListsIgnored.REMEMBERED, id="remembered"),
        pytest.param({}, None, id="asked"),
    ],
)
def test_ignored_at_connect(given: dict[str, Any], expected: ListsIgnored | None) -> None:
    address = given.pop("address", "192.0.2.1")
    listed = decision.Listed(given.pop("listed", ""))
    ip = ipaddress.ip_address(address) if address else None
    assert decision.ignored_at_connect(engine().policy, ip, listed, **given) is expected


def test_first_match_wins() -> None:
    first = decision.Listed("client:a", "")
    assert first.then(decision.Listed("helo:b", "helo:c")) == decision.Listed("client:a", "helo:c")


def test_a_second_helo_keeps_the_first_match_and_resolves_again() -> None:
    """Matches stick (a client cannot shed a deny by saying HELO again); whether the new name
    resolves is a new question."""
    policy = engine(DENY).policy
    first = decision.greeted(policy, Client(known=GATHERED, helo_resolves=False), "mx.bad.example")
    again = decision.greeted(policy, first, "mx.good.example")
    assert (again.helo, again.listed.denied_by, again.known, again.helo_resolves) == (
        "mx.good.example",
        "helo:*.bad.example",
        Need.CLIENT_NAME,
        None,
    )


@pytest.mark.parametrize(
    "client",
    [
        pytest.param("203.0.113.9", id="ipv4-client"),
        pytest.param("::ffff:203.0.113.9", id="mapped-client"),
    ],
)
def test_a_mapped_trusted_network_is_the_ipv4_network_it_maps(client: str) -> None:
    """Before issue 15 an entry such as ::ffff:203.0.113.0/120 stayed IPv6 while the client was
    compared as IPv4 (normalize_address), so it trusted no one."""
    policy = engine("trusted_networks: ['::ffff:203.0.113.0/120']\n").policy
    assert policy.trusted_networks == (ipaddress.IPv4Network("203.0.113.0/24"),)
    ip = ipaddress.ip_address(client)
    assert decision.ignored_at_connect(policy, ip, decision.Listed()) is ListsIgnored.TRUSTED
