"""The benchmark's rspamd baseline (bench/rspamd.py) through a real Postfix: what an SMTP
client sees from rspamd's proxy in milter mode with the rbl module on the benchmark's lists.

One rbldnsd with the benchmark's zones (a small population), one rspamd, one Postfix whose
listener has rspamd as its milter (but not for the loopback client, as in the benchmark:
XCLIENT reconnects the milter), one smtp-sink. rspamd decides at the end of the message, so
every session sends one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.rspamd import Rspamd, policy_from_spamgate
from bench.stack import no_milter_for_loopback
from bench.workload import (
    LIST_ZONES,
    Client,
    Kind,
    Population,
    Sizes,
    build_population,
    build_zones,
)
from tests.harness.dns import Rbldnsd, Zone
from tests.harness.postfix import Listener, PostfixInstance
from tests.harness.processes import group_members
from tests.harness.sink import SmtpSink
from tests.harness.smtp import SendResult, build_message, send

pytestmark = pytest.mark.e2e

SIZES = Sizes(
    clean=4,
    dynamic=1,
    allowlisted=1,
    listed_reject=10,  # one in ten is IPv6: one IPv6 client listed on the ZEN
    listed_greylist=2,
    listed_tag=2,
    ipv6=2,
    domains=60,  # two of them listed on the DBL
    cold=0,
)
# A listed domain under a real public suffix, besides the benchmark's .test ones.
PSL_DOMAIN = "example.co.uk"


@dataclass
class Stack:
    population: Population
    rspamd: Rspamd
    postfix: PostfixInstance
    sink: SmtpSink


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("rspamd")
    population = build_population(SIZES)
    with ExitStack() as services:
        zones = build_zones(population)
        zones.append(Zone(LIST_ZONES["SPAMHAUS_DBL"], "dnset", f"{PSL_DOMAIN} :127.0.1.2:\n"))
        dns = services.enter_context(Rbldnsd(workdir, zones))
        sink = services.enter_context(SmtpSink(workdir))
        rspamd = services.enter_context(Rspamd(workdir, dns.port, policy_from_spamgate()))
        listener = Listener(milters=rspamd.milter_address, options=no_milter_for_loopback(workdir))
        postfix = services.enter_context(
            PostfixInstance(
                workdir,
                relay_port=sink.port,
                listeners={"rspamd": listener},
                relay_domains=["example.com"],
            )
        )
        yield Stack(population, rspamd, postfix, sink)


def _send(
    stack: Stack,
    client: Client,
    *,
    helo: str | None = None,
    name: str | None = None,
    domain: str | None = None,
) -> SendResult:
    sender = f"news@{domain or client.domain}"
    subject = f"rspamd baseline from {client.address}"
    message = build_message(mail_from=sender, to=["user1@example.com"], subject=subject)
    return send(
        stack.postfix.ports["rspamd"],
        client_addr=client.address,
        client_name=name or client.name,
        helo=helo or client.helo,
        mail_from=sender,
        rcpts=["user1@example.com"],
        message_bytes=message,
        timeout=15,
    )


def _first(stack: Stack, kind: Kind, *, ipv6: bool = False) -> Client:
    return next(
        client
        for client in stack.population.clients[kind]
        if (ipaddress.ip_address(client.address).version == 6) == ipv6
    )


def _x_spam(stack: Stack, client: Client) -> str | None:
    """The X-Spam header of the client's message at the sink (bounded wait for it)."""
    subject = f"rspamd baseline from {client.address}"
    message = stack.sink.wait_for_message(
        lambda m: m.message.get("Subject") == subject, f"the message from {client.address}"
    )
    value = message.message.get("X-Spam")
    return None if value is None else str(value)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_client_listed_on_the_zen_is_refused_at_end_of_data(stack: Stack, ipv6: bool) -> None:
    client = _first(stack, Kind.LISTED_REJECT, ipv6=ipv6)
    result = _send(stack, client)
    assert result.rcpts[0][1].code == 250  # rspamd decides at the end of the message
    assert result.end_of_data is not None
    assert result.end_of_data.code == 554, result
    assert result.end_of_data.text.startswith("5.7.1 Spam message rejected")


def test_clean_client_is_delivered_untagged(stack: Stack) -> None:
    client = _first(stack, Kind.CLEAN)
    result = _send(stack, client)
    assert result.end_of_data is not None
    assert result.end_of_data.code == 250, result
    assert _x_spam(stack, client) is None


def test_client_listed_on_spamcop_gets_a_temporary_failure(stack: Stack) -> None:
    # SpamCop scores 6: the greylist threshold, rspamd's soft reject.
    result = _send(stack, _first(stack, Kind.LISTED_GREYLIST))
    assert result.end_of_data is not None
    assert (result.end_of_data.code, result.end_of_data.text[:5]) == (451, "4.7.1"), result


def test_client_listed_on_psbl_is_delivered_tagged(stack: Stack) -> None:
    # PSBL scores 4: over the tag threshold (3), under greylisting (6).
    client = _first(stack, Kind.LISTED_TAG)
    result = _send(stack, client)
    assert result.end_of_data is not None
    assert result.end_of_data.code == 250, result
    assert _x_spam(stack, client) == "Yes"


@pytest.mark.parametrize(
    ("where", "listed"),
    [
        pytest.param("sender", None, id="sender-domain"),
        pytest.param("helo", None, id="helo-host-in-domain"),
        pytest.param("ptr", None, id="client-name-in-domain"),
        pytest.param("helo", PSL_DOMAIN, id="helo-under-public-suffix"),
    ],
)
def test_listed_domain_counts_by_its_registrable_domain(
    stack: Stack, where: str, listed: str | None
) -> None:
    # DBL_SPAM scores 6: a temporary failure. Hosts under a listed domain count: the query is
    # for the registrable domain, as with spamgate's `query: organizational`.
    listed = listed or stack.population.listed_domains[0]
    client = _first(stack, Kind.CLEAN)
    if where == "sender":
        result = _send(stack, client, domain=listed)
    elif where == "helo":
        result = _send(stack, client, helo=f"mx1.mail.{listed}")
    else:
        result = _send(stack, client, name=f"mx1.mail.{listed}")
    assert result.end_of_data is not None
    assert result.end_of_data.code == 451, result


def test_rspamd_runs_its_proxy_and_hs_helper_only(stack: Stack) -> None:
    # The main process, one proxy worker and the hs_helper that rspamd 3.4 always starts.
    assert len(group_members(stack.rspamd.pid)) == 3
    assert set(stack.rspamd.pids()) == set(group_members(stack.rspamd.pid))
