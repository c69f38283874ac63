"""dnswire reads responses as dnspython does: the same answer, record text and TTL, message by
message, for responses built by dnspython (name compression included) from random sections.

The reference is what the resolver did before dnswire (resolver.interpret up to 5c3d924):
dnspython's Message.resolve_chaining() and its record types' text.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spamgate.dns import dnswire
from spamgate.dns.answers import AnswerKind, DnsAnswer

_FAILED = {dns.rcode.SERVFAIL: AnswerKind.SERVFAIL, dns.rcode.REFUSED: AnswerKind.REFUSED}


def reference(response: dns.message.Message) -> DnsAnswer:
    """The answer as dnspython gives it."""
    rcode = response.rcode()
    if rcode in _FAILED:
        return DnsAnswer(_FAILED[rcode])
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return DnsAnswer(AnswerKind.OTHER_RCODE, detail=dns.rcode.to_text(rcode))
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as error:
        return DnsAnswer(AnswerKind.MALFORMED, detail=type(error).__name__)
    if rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(AnswerKind.NXDOMAIN, ttl=chain.minimum_ttl)
    if chain.answer is None:
        return DnsAnswer(AnswerKind.NODATA, ttl=chain.minimum_ttl)
    return DnsAnswer(
        AnswerKind.RECORDS,
        tuple(sorted({_text(rdata) for rdata in chain.answer})),
        ttl=chain.minimum_ttl,
    )


def _text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(rdata.address)
    if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR):
        return rdata.target.to_text(omit_final_dot=True).lower()
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True).lower()}"
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rdata.strings).decode("utf-8", errors="replace")
    return str(rdata.to_text())


QNAME = "4.3.2.1.zen.test"
# Owners the sections may use: the question, names in its zone, a name elsewhere.
OWNERS = (QNAME + ".", "alias.zen.test.", "Other.ZEN.test.", "zen.test.", "elsewhere.example.")
RDATA = {
    "A": st.sampled_from(["127.0.0.2", "127.0.0.4", "192.0.2.1"]),
    "AAAA": st.sampled_from(["2001:db8::1", "::ffff:192.0.2.1", "2001:DB8:0:0::1"]),
    "CNAME": st.sampled_from(["alias.zen.test.", "Other.ZEN.test.", "elsewhere.example."]),
    "PTR": st.sampled_from(["mail.example.", "Mail.Example.COM.", "evil\\032x\\.y.example."]),
    "MX": st.sampled_from(["10 mx.example.", "0 .", "5 MX2.example."]),
    "TXT": st.sampled_from(['"v=spf1 -all"', '"a" "b"', '"bad\\255"']),
    "SOA": st.sampled_from(["ns.zen.test. h.zen.test. 1 3600 600 86400 120"]),
}
record = st.tuples(
    st.sampled_from(OWNERS),
    st.integers(min_value=0, max_value=100000),
    st.sampled_from(sorted(RDATA)),
).flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.just(t[2]), RDATA[t[2]]))


Record = tuple[str, int, str, str]
cases = st.tuples(
    st.sampled_from(sorted(dnswire.RDTYPE_CODES)),
    st.integers(0, 65535),
    st.sampled_from([dns.rcode.NOERROR] * 4 + [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL]),
    st.lists(record, max_size=6),
    st.lists(record, max_size=6),
)


def build(
    qtype: str, query_id: int, rcode: dns.rcode.Rcode, answer: list[Record], authority: list[Record]
) -> dns.message.Message:
    """A response as a server sends it: built by dnspython, through the wire format."""
    message = dns.message.make_response(dns.message.make_query(QNAME, qtype, id=query_id))
    message.set_rcode(rcode)
    for section, records in ((message.answer, answer), (message.authority, authority)):
        for owner, ttl, rdtype, text in records:
            rrset = dns.rrset.from_text(owner, ttl, "IN", rdtype, text)
            message.find_rrset(
                section, rrset.name, rrset.rdclass, rrset.rdtype, create=True
            ).update(rrset)
    return dns.message.from_wire(message.to_wire())


@settings(max_examples=400, deadline=None)
@given(cases)
def test_dnswire_reads_what_dnspython_reads(
    case: tuple[str, int, dns.rcode.Rcode, list[Record], list[Record]],
) -> None:
    message = build(*case)
    question = dnswire.question_for(QNAME, case[0])
    assert question is not None
    parsed = dnswire.parse_response(message.to_wire(), message.id, question)
    assert parsed is not None and not parsed.truncated
    assert parsed.answer == reference(message)


@pytest.mark.parametrize(
    ("qname", "qtype"),
    [
        pytest.param("2.0.0.127.zen.spamhaus.org", "A", id="dnsbl"),
        pytest.param("Mail.Example.COM.", "MX", id="case-and-final-dot"),
        pytest.param("_spf.example.com", "TXT", id="underscore"),
        pytest.param("xn--bcher-kva.example", "A", id="punycode"),
        pytest.param("bücher.example", "AAAA", id="idna"),
        pytest.param("a\\.b.example", "PTR", id="escaped-dot"),
        pytest.param("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR", id="ip6"),
    ],
)
def test_queries_are_dnspython_queries(qname: str, qtype: str) -> None:
    """The wire form of a query is dnspython's make_query() with the name in lower case."""
    question = dnswire.question_for(qname, qtype)
    assert question is not None
    ours = dns.message.from_wire(dnswire.encode_query(4660, question))
    theirs = dns.message.make_query(qname.lower(), qtype)
    theirs.id = 4660
    assert ours == theirs
    assert ours.flags == dns.flags.RD and ours.edns < 0
