"""What a Session looks up and scores: domain lists, trusted and authenticated clients, reverse
DNS (the harness: tests/session_harness.py).
"""

from __future__ import annotations

import time

import pytest

from spamgate.core.engine import Action
from spamgate.core.replies import Reply
from spamgate.shell.session import RcptResult
from tests.session_harness import BASE, CLIENT, PTR_Q, SBL, ZEN_Q, fields, only_line, records, start

# --- domain lists ------------------------------------------------------------------------------

DOMAIN_LISTS = """
resolver: {deadline: 0.5}
domain_lists:
  - name: DBL
    zone: dbl.test
    hits:
      - {name: DBL_SPAM, codes: [127.0.1.2], score: 10, description: a spam domain}
  - name: EXACT
    zone: exact.test
    query: exact
    check_names: [helo, sender]
    score: 1
"""


def test_domain_lists_start_when_their_name_is_known() -> None:
    table = {("phish.example.dbl.test", "A"): records("127.0.1.2")}
    harness = start(DOMAIN_LISTS, table)
    session, asked = harness.session, harness.resolver.calls
    harness.connect()
    assert asked == [PTR_Q]  # `ptr` is checked: the client's name is looked up
    session.helo("mail.example.co.uk")
    assert asked[1:] == [
        ("example.co.uk.dbl.test", "A"),
        ("mail.example.co.uk.exact.test", "A"),
    ]
    session.mail("<a@News.Example.org>", False)
    assert asked[3:] == [("example.org.dbl.test", "A"), ("news.example.org.exact.test", "A")]
    assert session.rcpt("<user@example.com>").result is RcptResult.CONTINUE
    assert len(asked) == 5
    session.header("From", "Bank <alerts@login.phish.example>")
    session.header("Reply-To", "x@reply.example.net")
    assert asked[5:] == [("phish.example.dbl.test", "A"), ("example.net.dbl.test", "A")]
    outcome = session.end_of_message("QID1")
    assert outcome.reply == Reply(550, "5.7.1", "Message refused: a spam domain (id id0001)")
    assert only_line(harness)["lists"] == (
        "DBL[helo:example.co.uk]:clean:0ms,EXACT[helo:mail.example.co.uk]:clean:0ms,"
        "DBL[sender:example.org]:clean:0ms,EXACT[sender:news.example.org]:clean:0ms,"
        "DBL[from:phish.example]:listed:127.0.1.2:0ms,DBL[reply_to:example.net]:clean:0ms"
    )


def test_confirmed_client_name_is_looked_up_in_domain_lists() -> None:
    table = {
        PTR_Q: records("mail.client.example.com"),
        ("mail.client.example.com", "A"): records(CLIENT),
        ("example.com.dbl.test", "A"): records("127.0.1.2"),
    }
    harness = start(DOMAIN_LISTS, table)
    harness.envelope(helo="[192.0.2.1]")
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.reply == Reply(550, "5.7.1", "Message refused: a spam domain (id id0001)")
    harness.session.close()
    line = only_line(harness)
    # The client's name is known at connect (Postfix's macros): its lookup starts first.
    assert line["lists"] == (
        "DBL[ptr:example.com]:listed:127.0.1.2:0ms,"
        "DBL[sender:example.org]:clean:0ms,EXACT[sender:example.org]:clean:0ms"
    )
    assert line["rdns"] == "confirmed:mail.client.example.com"


def test_names_sharing_a_domain_share_one_lookup_logged_with_every_source() -> None:
    table = {
        PTR_Q: records("mail.client.example.com"),
        ("mail.client.example.com", "A"): records(CLIENT),
        ("example.com.dbl.test", "A"): records("127.0.1.2"),
    }
    harness = start(DOMAIN_LISTS, table)
    harness.envelope("<news@example.com>", helo="mx.example.com")
    session = harness.session
    assert session.rcpt("<postmaster@example.com>").result is RcptResult.CONTINUE
    session.header("From", "News <news@mail.example.com>")
    session.end_of_message("QID1")
    # PTR, HELO, sender and From all have the organizational domain example.com: one query,
    # counted once, scored once, named with each source (the From joined after RCPT).
    assert harness.resolver.calls.count(("example.com.dbl.test", "A")) == 1
    line = only_line(harness)
    assert line["lists"].startswith("DBL[ptr,helo,sender,from:example.com]:listed:127.0.1.2:")
    assert line["hits"] == "DBL_SPAM:10"


def test_a_listed_sender_domain_stays_with_its_own_transaction() -> None:
    """The incident of issue 14: after one message from a listed domain, the next ones on the
    same connection (after RSET or not) were refused for it."""
    table = {("spam.example.dbl.test", "A"): records("127.0.1.2")}
    harness = start(DOMAIN_LISTS, table)
    harness.envelope("<news@spam.example>", helo="[192.0.2.1]")
    session = harness.session
    assert session.rcpt("<user@example.com>").result is RcptResult.REFUSE
    session.finish_transaction()  # RSET
    for sender in ("<a@clean.example>", "<b@clean.example>"):  # the second: no RSET before
        session.mail(sender, False)
        decision = session.rcpt("<user@example.com>")
        assert decision.result is RcptResult.CONTINUE, sender
        assert decision.verdict is not None and decision.verdict.score == 0.0
        session.end_of_message("QID")
    lines = [fields(line) for line in harness.log]
    assert [line["action"] for line in lines] == ["reject", "accept", "accept"]
    assert "spam.example" not in lines[1]["lists"] + lines[2]["lists"]


def test_a_transaction_adds_its_source_to_a_connection_lookup_for_itself_only() -> None:
    """HELO and sender share example.org: one query, logged with both sources in the first
    transaction; the next transaction, from another domain, sees the HELO's alone."""
    harness = start(DOMAIN_LISTS)
    harness.envelope("<news@example.org>", helo="mx.example.org")
    session = harness.session
    session.rcpt("<user@example.com>")
    session.end_of_message("QID1")
    session.mail("<news@other.example>", False)
    session.rcpt("<user@example.com>")
    session.end_of_message("QID2")
    first, second = (fields(line)["lists"] for line in harness.log)
    assert "DBL[helo,sender:example.org]" in first
    assert "DBL[helo:example.org]" in second and "DBL[sender:other.example]" in second
    assert harness.resolver.calls.count(("example.org.dbl.test", "A")) == 1


def test_many_transactions_on_one_connection_keep_their_lines_short() -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect()
    session = harness.session
    session.helo("mx.example.org")
    for number in range(300):
        session.mail(f"<a@d{number}.example>", False)
        session.rcpt("<user@example.com>")
        session.header("From", f"b@f{number}.example")
        session.end_of_message(f"QID{number}")
    lengths = [len(line) for line in harness.log]
    assert max(lengths[-10:]) <= max(lengths[:10]) + 10, (lengths[:3], lengths[-3:])


def test_each_lookup_is_waited_for_until_its_own_start_plus_the_deadline() -> None:
    harness = start(DOMAIN_LISTS, {("example.org.dbl.test", "A"): None})
    harness.connect()  # at 1000.0; the deadline is 0.5
    harness.session.helo("[192.0.2.1]")
    harness.clock.now = 1000.25
    harness.session.mail("<a@example.org>", False)  # its lookups start now
    harness.clock.now = 1000.5
    started = time.monotonic()
    harness.session.rcpt("<user@example.com>")
    waited = time.monotonic() - started
    assert 0.2 <= waited < 0.25 + 0.2  # until 1000.75, not until connect + deadline
    harness.session.close()
    assert only_line(harness)["lists"] == (
        "DBL[sender:example.org]:unusable:deadline:500ms,EXACT[sender:example.org]:clean:0ms"
    )


def test_a_client_name_from_mta_macros_is_looked_up_in_domain_lists_at_connect() -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect(client_resolve="OK", client_ptr="mail.client.example.com")
    assert harness.resolver.calls == [("example.com.dbl.test", "A")]


@pytest.mark.parametrize(
    "helo",
    [
        pytest.param("[192.0.2.1]", id="ipv4-literal"),
        pytest.param("192.0.2.1", id="bare-ipv4"),
        pytest.param("[IPv6:2001:db8::1]", id="ipv6-literal"),
        pytest.param("localhost", id="single-label"),
        pytest.param("", id="empty"),
    ],
)
def test_no_domain_query_for_address_literals_or_single_labels(helo: str) -> None:
    harness = start(DOMAIN_LISTS)
    harness.connect()
    harness.session.helo(helo)
    harness.session.mail("<a@[192.0.2.7]>", False)
    harness.session.mail("<a@localhost>", False)
    harness.session.mail("<>", False)
    assert harness.resolver.calls == [PTR_Q]


def test_a_header_with_many_addresses_gets_four_lookups_and_a_repeated_domain_none() -> None:
    harness = start(DOMAIN_LISTS)
    harness.envelope("<>", helo="[192.0.2.1]")
    harness.session.rcpt("<user@example.com>")
    names = ", ".join(f"u@d{n}.example" for n in range(6))
    harness.session.header("From", names)
    harness.session.header("Reply-To", "u@d0.example")  # the same query for another source
    harness.session.header("From", "v@d1.example")  # from:d1.example again
    assert harness.resolver.calls[1:] == [(f"d{n}.example.dbl.test", "A") for n in range(4)]
    transaction = harness.session.transaction
    assert transaction is not None and transaction.lookups is not None
    subjects = [o.subject for o in transaction.lookups.collect(1.0) if o.subject]
    assert subjects[:2] == ["from,reply_to:d0.example", "from:d1.example"]


# --- trusted and authenticated clients ---------------------------------------------------------

CONNECTION_RULES = """
  - {name: HELO_BARE, score: 2, description: bare IP HELO, helo: bare_ip}
  - {name: RDNS_MISSING, score: 1, description: no reverse DNS, rdns: missing}
"""

DBL = """
domain_lists:
  - {name: DBL, zone: dbl.test, score: 10}
"""


def test_trusted_client_gets_no_lists_and_no_connection_rules_but_header_rules() -> None:
    harness = start(BASE + CONNECTION_RULES + DBL)
    harness.connect("127.0.0.1")
    harness.session.helo("192.0.2.9")
    harness.session.mail("<a@spam.example>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert (decision.result, decision.verdict.hits) == (RcptResult.CONTINUE, ())
    outcome = harness.message([("Subject", "viagra"), ("From", "x@spam.example")])
    assert [hit.name for hit in outcome.verdict.hits] == ["SUBJECT_PHARMA"]
    assert harness.resolver.calls == []
    line = only_line(harness)
    assert (line["lists_ignored"], line["hits"], "lists" in line) == (
        "trusted",
        "SUBJECT_PHARMA:4",
        False,
    )


def test_the_same_client_unauthenticated_is_scored_on_lists_and_connection_rules() -> None:
    # The control for the two tests around it: every rule and list there can fire.
    table = {ZEN_Q: SBL, ("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + CONNECTION_RULES + DBL, table)
    harness.envelope("<a@spam.example>", helo="192.0.2.9")
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert [hit.name for hit in decision.verdict.hits] == [
        "ZEN_SBL",
        "DBL",
        "HELO_BARE",
        "RDNS_MISSING",
    ]
    assert harness.resolver.calls == [ZEN_Q, PTR_Q, ("spam.example.dbl.test", "A")]


def test_authenticated_client_gets_no_list_scores_and_no_connection_rules() -> None:
    table = {ZEN_Q: SBL, ("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + CONNECTION_RULES + DBL, table)
    harness.envelope("<a@spam.example>", helo="192.0.2.9", auth=True)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert (decision.result, decision.verdict.hits) == (RcptResult.CONTINUE, ())
    outcome = harness.message([("Subject", "viagra"), ("From", "x@spam.example")])
    assert (outcome.action, [hit.name for hit in outcome.verdict.hits]) == (
        Action.TAG,
        ["SUBJECT_PHARMA"],
    )
    # The address was looked up at connect, before anyone knew; no name is looked up after.
    assert harness.resolver.calls == [ZEN_Q, PTR_Q]
    line = only_line(harness)
    assert (line["lists_ignored"], line["hits"], line["lists"]) == (
        "authenticated",
        "SUBJECT_PHARMA:4",
        "ZEN:listed:127.0.0.2:0ms",
    )


def test_skip_authenticated_off_scores_authenticated_senders_on_domain_lists() -> None:
    table = {("spam.example.dbl.test", "A"): records("127.0.0.2")}
    harness = start(BASE + DBL + "skip_authenticated: false\n", table)
    harness.envelope("<a@spam.example>", auth=True)
    assert ("spam.example.dbl.test", "A") in harness.resolver.calls
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.reply == Reply(550, "5.7.1", "Message refused: listed by DBL (id id0001)")


def test_skip_authenticated_off_scores_authenticated_clients_on_ip_lists() -> None:
    harness = start(BASE + "skip_authenticated: false\n", {ZEN_Q: SBL})
    harness.envelope(auth=True)
    decision = harness.session.rcpt("<user@example.com>")
    assert (decision.result, decision.action) == (RcptResult.REFUSE, Action.REJECT)


# --- reverse DNS -------------------------------------------------------------------------------

RDNS_RULES = "  - {name: RDNS_UNCONFIRMED, score: 1, description: d, rdns: unconfirmed}\n"


def test_reverse_dns_from_mta_macros_asks_no_ptr() -> None:
    harness = start(BASE + RDNS_RULES)
    harness.connect(client_resolve="FORGED", client_ptr="gw.other.test")
    harness.session.helo("mx.example.org")
    harness.session.mail("<a@example.org>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None
    assert [hit.name for hit in decision.verdict.hits] == ["RDNS_UNCONFIRMED"]
    assert harness.resolver.calls == [ZEN_Q]
    harness.session.close()
    assert only_line(harness)["rdns"] == "unconfirmed:gw.other.test"


def test_reverse_dns_from_our_own_lookup_when_macros_are_not_used() -> None:
    table = {PTR_Q: records("mail.client.example"), ("mail.client.example", "A"): records(CLIENT)}
    policy = BASE + RDNS_RULES + "reverse_dns: {use_mta_macros: false}\n"
    harness = start(policy, table)
    harness.connect(client_resolve="FORGED", client_ptr="gw.other.test")
    harness.session.helo("mx.example.org")
    harness.session.mail("<a@example.org>", False)
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None and decision.verdict.hits == ()
    assert harness.resolver.calls == [ZEN_Q, PTR_Q, ("mail.client.example", "A")]
    harness.session.close()
    assert only_line(harness)["rdns"] == "confirmed:mail.client.example"


def test_reverse_lookup_still_running_at_the_deadline_is_unknown() -> None:
    harness = start(BASE + RDNS_RULES, {PTR_Q: None})
    harness.envelope()
    harness.clock.now += 0.5
    decision = harness.session.rcpt("<user@example.com>")
    assert decision.verdict is not None and decision.verdict.hits == ()
    harness.session.close()
    assert only_line(harness)["rdns"] == "unknown"
