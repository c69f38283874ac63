"""The resolver reading a response (dnswire): answers, NXDOMAIN and NODATA with their TTLs,
failures, and responses that are not the one a question waits for."""

from __future__ import annotations

from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spamgate.dns import dnswire
from spamgate.dns.answers import AnswerKind, DnsAnswer
from tests.fake_dns_server import DOMAIN, QNAME, SOA

# --- reading a response (dnswire) --------------------------------------------------------------


def interpret(
    message: dns.message.Message, qname: str = QNAME, qtype: str = "A"
) -> DnsAnswer | None:
    """What the resolver makes of `message` on the wire, as the response to (qname, qtype)
    with the message's ID; None: it is not that response, and the question keeps waiting."""
    question = dnswire.question_for(qname, qtype)
    assert question is not None
    response = dnswire.parse_response(message.to_wire(), message.id, question)
    return None if response is None else response.answer


def response(
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    answer: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (),
    authority: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (),
    qtype: str = "A",
    qname: str = QNAME,
) -> dns.message.Message:
    """A response to a `qtype` query for `qname`, sent through the wire format as a server's
    would be."""
    query = dns.message.make_query(qname, dns.rdatatype.from_text(qtype))
    message = dns.message.make_response(query)
    message.set_rcode(rcode)
    for section, records in ((message.answer, answer), (message.authority, authority)):
        for owner, ttl, rdtype, rdatas in records:
            name = dns.name.from_text(owner)
            section.append(dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas))
    return dns.message.from_wire(message.to_wire())


def soa(minimum: int, ttl: int = 3600) -> tuple[str, int, str, tuple[str, ...]]:
    return ("zen.test.", ttl, "SOA", (SOA.format(minimum=minimum),))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            response(answer=((QNAME, 600, "A", ("127.0.0.2", "127.0.0.10")),)),
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.10", "127.0.0.2"), ttl=600),
            id="addresses-with-ttl",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, authority=(soa(minimum=150),)),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=150),
            id="nxdomain-ttl-from-soa-minimum",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, authority=(soa(minimum=900, ttl=60),)),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=60),
            id="nxdomain-ttl-from-soa-ttl",
        ),
        pytest.param(
            response(authority=(soa(minimum=120),)),
            DnsAnswer(AnswerKind.NODATA, ttl=120),
            id="nodata",
        ),
        pytest.param(
            response(answer=((QNAME, 600, "TXT", ('"spam"',)),)),
            DnsAnswer(AnswerKind.NODATA, ttl=300),
            id="only-other-types-no-soa",
        ),
        pytest.param(response(dns.rcode.SERVFAIL), DnsAnswer(AnswerKind.SERVFAIL), id="servfail"),
        pytest.param(response(dns.rcode.REFUSED), DnsAnswer(AnswerKind.REFUSED), id="refused"),
        pytest.param(
            response(dns.rcode.NOTIMP),
            DnsAnswer(AnswerKind.OTHER_RCODE, detail="NOTIMP"),
            id="other-rcode",
        ),
        pytest.param(
            response(
                answer=(
                    (QNAME, 600, "CNAME", ("listed.zen.test.",)),
                    ("listed.zen.test.", 120, "A", ("127.0.0.4",)),
                )
            ),
            DnsAnswer(AnswerKind.RECORDS, ("127.0.0.4",), ttl=120),
            id="cname-chain",
        ),
        pytest.param(
            response(answer=((QNAME, 60, "CNAME", ("listed.zen.test.",)),)),
            DnsAnswer(AnswerKind.NODATA, ttl=60),
            id="cname-to-nothing",
        ),
        pytest.param(
            response(dns.rcode.NXDOMAIN, answer=((QNAME, 60, "A", ("127.0.0.2",)),)),
            DnsAnswer(AnswerKind.MALFORMED, detail="AnswerForNXDOMAIN"),
            id="nxdomain-with-answer",
        ),
        pytest.param(dns.message.Message(), None, id="not-a-response-is-ignored"),
    ],
)
def test_interpret(message: dns.message.Message, expected: DnsAnswer | None) -> None:
    assert interpret(message) == expected


def test_a_response_without_the_question_is_ignored() -> None:
    message = dns.message.make_response(dns.message.make_query(QNAME, dns.rdatatype.A))
    message.question = []
    assert interpret(message) is None


def test_a_servfail_need_not_repeat_the_question() -> None:
    """As dnspython's Message.is_response: FORMERR, SERVFAIL, NOTIMP and REFUSED answers
    may come with an empty question section."""
    message = dns.message.make_response(dns.message.make_query(QNAME, dns.rdatatype.A))
    message.question = []
    message.set_rcode(dns.rcode.SERVFAIL)
    assert interpret(message) == DnsAnswer(AnswerKind.SERVFAIL)


@pytest.mark.parametrize(
    ("qname", "qtype", "response_id_delta"),
    [
        pytest.param(QNAME, "A", 1, id="another-id"),
        pytest.param("3.0.0.127.zen.test", "A", 0, id="another-name"),
        pytest.param(QNAME, "TXT", 0, id="another-type"),
    ],
)
def test_a_response_to_another_question_is_ignored(
    qname: str, qtype: str, response_id_delta: int
) -> None:
    """A stray or forged datagram never answers a question: the question keeps waiting."""
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    question = dnswire.question_for(qname, qtype)
    assert question is not None
    wire = message.to_wire()
    assert dnswire.parse_response(wire, message.id + response_id_delta, question) is None


def test_names_compare_without_regard_to_case() -> None:
    message = response(answer=((QNAME.upper(), 600, "A", ("127.0.0.2",)),), qname=QNAME.upper())
    assert interpret(message) == DnsAnswer(AnswerKind.RECORDS, ("127.0.0.2",), ttl=600)


def test_truncated_response_asks_for_tcp() -> None:
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    message.flags |= dns.flags.TC
    question = dnswire.question_for(QNAME, "A")
    assert question is not None
    parsed = dnswire.parse_response(message.to_wire(), message.id, question)
    assert parsed is not None and parsed.truncated


def _answer_owner_points_at_itself(wire: bytes) -> bytes:
    owner = 12 + len(dns.name.from_text(QNAME).to_wire() or b"") + 4
    return wire[:owner] + bytes((0xC0 | owner >> 8, owner & 0xFF)) + wire[owner + 2 :]


def _one_more_answer_than_there_is(wire: bytes) -> bytes:
    return wire[:6] + (int.from_bytes(wire[6:8], "big") + 1).to_bytes(2, "big") + wire[8:]


@pytest.mark.parametrize(
    ("wire_edit", "detail"),
    [
        pytest.param(lambda w: w[:-3], "FormError", id="cut-short"),
        pytest.param(_answer_owner_points_at_itself, "BadPointer", id="pointer-loop"),
        pytest.param(_one_more_answer_than_there_is, "FormError", id="count-beyond-the-data"),
    ],
)
def test_a_broken_response_is_malformed(wire_edit: Callable[[bytes], bytes], detail: str) -> None:
    message = response(answer=((QNAME, 600, "A", ("127.0.0.2",)),))
    question = dnswire.question_for(QNAME, "A")
    assert question is not None
    parsed = dnswire.parse_response(wire_edit(message.to_wire()), message.id, question)
    assert parsed == dnswire.Response(DnsAnswer(AnswerKind.MALFORMED, detail=detail))


PTR_QNAME = "1.2.0.192.in-addr.arpa"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            response(
                answer=(
                    (QNAME, 300, "AAAA", ("2001:DB8:0:0::1", "2001:db8::1", "::FFFF:c000:201")),
                ),
                qtype="AAAA",
            ),
            DnsAnswer(AnswerKind.RECORDS, ("2001:db8::1", "::ffff:192.0.2.1"), ttl=300),
            id="aaaa-compressed-deduplicated",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 3600, "PTR", ("Mail.Example.COM.", "mail.example.com.")),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("mail.example.com",), ttl=3600),
            id="ptr-lower-case-no-final-dot",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 60, "PTR", ("b.example.", "a.example.", "c.example.")),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("a.example", "b.example", "c.example"), ttl=60),
            id="ptr-several-names-sorted",
        ),
        pytest.param(
            response(
                answer=((PTR_QNAME, 60, "PTR", ("evil\\032name\\.x\\255.example.",)),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("evil\\032name\\.x\\255.example",), ttl=60),
            id="ptr-hostile-octets-stay-escaped",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 600, "MX", ("10 MX1.Example.TEST.", "5 mx2.example.test.")),),
                qtype="MX",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("10 mx1.example.test", "5 mx2.example.test"), ttl=600),
            id="mx-preference-and-exchange",
        ),
        pytest.param(
            response(answer=((DOMAIN, 600, "MX", ("0 .",)),), qtype="MX", qname=DOMAIN),
            DnsAnswer(AnswerKind.RECORDS, ("0 .",), ttl=600),
            id="mx-rfc7505-null-mx",
        ),
        pytest.param(
            response(
                answer=(
                    (DOMAIN, 600, "CNAME", ("alias.example.test.",)),
                    ("alias.example.test.", 200, "MX", ("20 mx.example.test.",)),
                ),
                qtype="MX",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("20 mx.example.test",), ttl=200),
            id="mx-through-cname",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"v=spf1 " "ip4:192.0.2.0/24 " "-all"',)),),
                qtype="TXT",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("v=spf1 ip4:192.0.2.0/24 -all",), ttl=300),
            id="txt-strings-joined",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"zeta"', '"alpha"', '"bad\\255utf8"')),),
                qtype="TXT",
                qname=DOMAIN,
            ),
            DnsAnswer(AnswerKind.RECORDS, ("alpha", "bad\ufffdutf8", "zeta"), ttl=300),
            id="txt-several-sorted-invalid-utf8-replaced",
        ),
        pytest.param(
            response(
                answer=((DOMAIN, 300, "TXT", ('"caf\\195\\169"',)),), qtype="TXT", qname=DOMAIN
            ),
            DnsAnswer(AnswerKind.RECORDS, ("caf\u00e9",), ttl=300),
            id="txt-utf8-decoded",
        ),
        pytest.param(
            response(answer=((DOMAIN, 300, "A", ("192.0.2.1",)),), qtype="MX", qname=DOMAIN),
            DnsAnswer(AnswerKind.NODATA, ttl=300),
            id="mx-question-a-answer-is-nodata",
        ),
        pytest.param(
            response(
                dns.rcode.NXDOMAIN,
                authority=(("2.0.192.in-addr.arpa.", 3600, "SOA", (SOA.format(minimum=90),)),),
                qtype="PTR",
                qname=PTR_QNAME,
            ),
            DnsAnswer(AnswerKind.NXDOMAIN, ttl=90),
            id="ptr-nxdomain",
        ),
    ],
)
def test_interpret_other_types(message: dns.message.Message, expected: DnsAnswer) -> None:
    question = message.question[0]
    qname = question.name.to_text(omit_final_dot=True)
    assert interpret(message, qname, dns.rdatatype.to_text(question.rdtype)) == expected
