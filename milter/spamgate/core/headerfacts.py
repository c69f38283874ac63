"""Header facts: typed values computed from a message's header fields, for `fact:` rules. Pure.

Each fact has a name (`subject.caps_ratio`), a type (boolean, number or text), a doc line and
an example rule; `FACTS` is the registry the policy checks names against and the reference
table in docs/rules.md is generated from (commands/reference.py).

A `HeaderView` holds the header fields as the message carried them, bounded: the first
MAX_FIELDS fields, each value cut at MAX_VALUE_CHARS. A fact is computed when a rule first
asks for it and remembered for the message, so a fact no rule uses costs nothing. A fact
whose inputs are missing (no Subject for a subject fact, no Date for the skew) is absent,
None, and a rule on an absent fact does not fire.

Every function here takes any str the sender wrote (non-UTF-8 bytes arrive as lone
surrogates, see headers.py) and returns a value, never an exception, in time linear in
the bounded input.
"""

from __future__ import annotations

import datetime
import enum
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from spamgate.core import domains, headers
from spamgate.core.received import (
    MAX_RECEIVED_CHARS,
    ExternalHop,
    Hop,
    OurHosts,
    external_hop,
    forged_hops,
    parse_received,
    received_time,
    time_reversals,
)

Shared = TypeVar("Shared")

# A message has a few dozen header fields; a sender may send thousands. The first hundred,
# each up to 8 KiB (RFC 5322 lines end at 998 characters, folded fields run to a few lines),
# are what the facts read: at most about 800 KiB a message. Counting facts (received.hops)
# therefore count at most MAX_FIELDS.
MAX_FIELDS = 100
MAX_VALUE_CHARS = 8 * 1024

# Subjects with fewer cased letters than this say nothing by their case ("RE: OK").
MIN_CAPS_LETTERS = 10

FactValue = bool | float | str | None

_MESSAGE_ID = re.compile(r"<([^<>@\s]{1,512})@([^<>@\s]{1,512})>")
# A MIME parameter: name=value or name="quoted value" (RFC 2045 5.1). The alternatives of the
# quoted string start with different characters, so the scan is linear.
_PARAMETER = re.compile(r';\s*([!#-\'*+.0-9A-Za-z^-~-]{1,64})\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_PUNCTUATION = frozenset("!?$")


class FactType(enum.Enum):
    BOOLEAN = "boolean"
    NUMBER = "number"
    TEXT = "text"


@dataclass(frozen=True)
class HeaderView:
    """A message's header fields as received, bounded, the time its end arrived, and our
    hosts (whose Received fields the received.external facts trust)."""

    # (lower-case name, value as received), in order, at most MAX_FIELDS, values cut.
    fields: tuple[tuple[str, str], ...] = ()
    received_at: datetime.datetime | None = None  # aware; the end of the message
    our_hosts: OurHosts = field(default_factory=OurHosts)
    # The hop the message arrived on (the daemon's client); None when read offline.
    arrival: Hop | None = None
    _computed: dict[str, FactValue] = field(default_factory=dict, compare=False, repr=False)
    # What several facts share (the external hop, the From addresses...), computed once. Not
    # functools.cached_property: before Python 3.12 its __get__ takes one lock per property,
    # shared by every instance of the class, so fifty sessions computing their messages'
    # facts at once queued on it behind threads waiting for the GIL (74% of the samples in
    # the profile of bench/RESULTS.md at 1cabf72). A view belongs to one message and one
    # thread: it needs no lock.
    _shared: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        fields: list[tuple[str, str]],
        received_at: datetime.datetime | None = None,
        our_hosts: OurHosts | None = None,
        arrival: Hop | None = None,
    ) -> HeaderView:
        """A view of `fields` ((name, value) pairs in any case), bounded as the module says."""
        kept = tuple((name.lower(), value[:MAX_VALUE_CHARS]) for name, value in fields[:MAX_FIELDS])
        return cls(kept, received_at, our_hosts or OurHosts(), arrival)

    def fact(self, name: str) -> FactValue:
        """The value of the fact `name` (a key of FACTS), computed once."""
        if name not in self._computed:
            self._computed[name] = FACTS[name].compute(self)
        return self._computed[name]

    def _once(self, key: str, compute: Callable[[], Shared]) -> Shared:
        if key not in self._shared:
            self._shared[key] = compute()
        return typing.cast(Shared, self._shared[key])

    def values(self, name: str) -> list[str]:
        return [value for lowered, value in self.fields if lowered == name]

    def first(self, name: str) -> str | None:
        return next((value for lowered, value in self.fields if lowered == name), None)

    @property
    def external_hop(self) -> ExternalHop | None:
        return self._once("external_hop", self._external_hop)

    def _external_hop(self) -> ExternalHop | None:
        return external_hop(self.values("received"), self.our_hosts, self.arrival)

    def has(self, name: str) -> bool:
        return any(lowered == name for lowered, _ in self.fields)

    @property
    def from_addresses(self) -> tuple[str, ...]:
        return self._once("from_addresses", self._from_addresses)

    def _from_addresses(self) -> tuple[str, ...]:
        value = self.first("from")
        found = None if value is None else headers.header_addresses(value, mailbox_required=True)
        return found or ()

    @property
    def from_domains(self) -> tuple[str, ...]:
        return self._once("from_domains", self._from_domains)

    def _from_domains(self) -> tuple[str, ...]:
        return _domains(self.from_addresses)

    @property
    def subject(self) -> str | None:
        return self._once("subject", self._subject)

    def _subject(self) -> str | None:
        value = self.first("subject")
        return None if value is None else headers.decoded_text(value)

    @property
    def content_type(self) -> tuple[str, dict[str, str]] | None:
        return self._once("content_type", self._content_type)

    def _content_type(self) -> tuple[str, dict[str, str]] | None:
        """The type/subtype, lower case, and the parameters (names lower case)."""
        value = self.first("content-type")
        if value is None:
            return None
        text = headers.unfold(value)
        kind, _, _ = text.partition(";")
        parameters: dict[str, str] = {}
        for match in _PARAMETER.finditer(text):
            name, raw = match.group(1).lower(), match.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            parameters.setdefault(name, raw)
        return kind.strip().lower(), parameters


def _domains(addresses: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d for d in (domains.domain_of_address(a) for a in addresses) if d)


def _addresses(view: HeaderView, name: str) -> tuple[str, ...] | None:
    """The addresses of the first `name` field; None if there is none or it is malformed."""
    value = view.first(name)
    return None if value is None else headers.header_addresses(value)


# --- the facts -------------------------------------------------------------------------------


def _received_hops(view: HeaderView) -> FactValue:
    return float(len(view.values("received")))


def _received_malformed(view: HeaderView) -> FactValue:
    return float(sum(1 for value in view.values("received") if _is_malformed(value)))


# The usual stamp opens "from NAME" or "by NAME": it names a host as parse_received reads it,
# and the field need not be parsed whole (tens of microseconds for a long one).
_NAMES_A_HOST = re.compile(r"[ \t]*(?:from +(?!by )|by +)[^\s()\[\];]", re.IGNORECASE)


def _is_malformed(value: str) -> bool:
    """No time after the last ";" (every MTA writes one), or neither a `from` nor a `by`
    host, unless the stamp is one comment: qmail writes "(qmail 1234 invoked by uid 500);
    DATE" and other stamps in that shape. A field without a `from` but with a `by` is fine:
    Postfix and Sendmail write one for mail submitted on the host itself ("by host
    (Postfix, from userid 1000)")."""
    if received_time(value) is None:
        return True
    if _NAMES_A_HOST.match(value):
        return False
    hop = parse_received(value)
    if hop.by or hop.from_name:
        return False
    head = headers.unfold(value[:MAX_RECEIVED_CHARS]).rpartition(";")[0].strip()
    return not (head.startswith("(") and head.endswith(")"))


def _external_address(view: HeaderView) -> FactValue:
    external = view.external_hop
    return None if external is None or external.hop.address is None else str(external.hop.address)


def _external_helo(view: HeaderView) -> FactValue:
    external = view.external_hop
    return external.hop.helo if external is not None and external.hop.helo else None


def _external_reverse_name(view: HeaderView) -> FactValue:
    external = view.external_hop
    return external.hop.reverse_name if external is not None and external.hop.reverse_name else None


def _relays_passed(view: HeaderView) -> FactValue:
    external = view.external_hop
    return None if external is None else float(external.relays_passed)


def _forged_hops(view: HeaderView) -> FactValue:
    external = view.external_hop
    if external is None:
        return None
    return float(forged_hops(view.values("received"), view.our_hosts, external))


def _time_reversals(view: HeaderView) -> FactValue:
    return float(time_reversals(view.values("received")))


def _date_skew_hours(view: HeaderView) -> FactValue:
    value = view.first("date")
    date = None if value is None else headers.parse_date(value)
    if date is None:
        return None
    # Only the times are read (a whole Received field costs tens of microseconds to parse).
    times = (received_time(value) for value in view.values("received"))
    reference = next((time for time in times if time is not None), view.received_at)
    if reference is None:
        return None
    return (date - reference).total_seconds() / 3600


def _message_id_parts(view: HeaderView) -> tuple[str, str] | None:
    value = view.first("message-id")
    if value is None:
        return None
    match = _MESSAGE_ID.fullmatch(headers.unfold(value).strip())
    return None if match is None else (match.group(1), match.group(2))


def _message_id_missing(view: HeaderView) -> FactValue:
    return view.first("message-id") is None


def _message_id_malformed(view: HeaderView) -> FactValue:
    if view.first("message-id") is None:
        return None
    return _message_id_parts(view) is None


def _message_id_from_domain(view: HeaderView) -> FactValue:
    parts = _message_id_parts(view)
    if parts is None or not view.from_domains:
        return None
    return any(domains.same_organization(parts[1], d) for d in view.from_domains)


def _mailer(view: HeaderView) -> FactValue:
    value = view.first("x-mailer")
    if value is None:
        value = view.first("user-agent")
    return None if value is None else headers.decoded_text(value).strip()


# What a mailer always writes, by what it calls itself in X-Mailer. Outlook Express for
# Windows (4 to 6) writes X-MimeOLE ("Produced By Microsoft MimeOLE"); its Macintosh edition
# names itself "Outlook Express Macintosh Edition" and does not, so the version must follow.
# Outlook 98 to 2002 write X-MimeOLE, Outlook 2003 and later Thread-Index; none writes
# neither. Measured on the development corpus: no legitimate message breaks either, and
# 95 of the 500 spam do (docs/rules.md).
_OUTLOOK_EXPRESS = re.compile(r"^Microsoft Outlook Express [0-9]")
_OUTLOOK = re.compile(r"^Microsoft (?:Office )?Outlook(?: [0-9]|,| IMO|$)")


def _mailer_inconsistent(view: HeaderView) -> FactValue:
    value = view.first("x-mailer")
    if value is None:
        return None
    mailer = headers.decoded_text(value).strip()
    if _OUTLOOK_EXPRESS.match(mailer):
        return not view.has("x-mimeole")
    if _OUTLOOK.match(mailer):
        return not (view.has("x-mimeole") or view.has("thread-index"))
    return None


def _subject_caps_ratio(view: HeaderView) -> FactValue:
    subject = view.subject
    if subject is None:
        return None
    upper = lower = 0
    for char in subject:
        if char.isupper():
            upper += 1
        elif char.islower():
            lower += 1
    if upper + lower < MIN_CAPS_LETTERS:
        return None
    return upper / (upper + lower)


def _subject_punctuation(view: HeaderView) -> FactValue:
    subject = view.subject
    return None if subject is None else float(sum(1 for c in subject if c in _PUNCTUATION))


def _subject_undecodable(view: HeaderView) -> FactValue:
    value = view.first("subject")
    return None if value is None else headers.has_undecodable_word(value)


def _recipients_count(view: HeaderView) -> FactValue:
    count = 0
    for name in ("to", "cc"):
        for value in view.values(name):
            count += len(headers.header_addresses(value) or ())
    return float(count)


def _recipients_undisclosed(view: HeaderView) -> FactValue:
    if view.first("to") is None:
        return True
    return _addresses(view, "to") == ()


def _recipients_to_is_from(view: HeaderView) -> FactValue:
    to = _addresses(view, "to")
    if not to or not view.from_addresses:
        return None
    sender = {a.lower() for a in view.from_addresses}
    return all(a.lower() in sender for a in to)


def _reply_to_from_domain(view: HeaderView) -> FactValue:
    reply_to = _addresses(view, "reply-to")
    reply_domains = _domains(reply_to or ())
    if not reply_domains or not view.from_domains:
        return None
    return all(
        any(domains.same_organization(r, d) for d in view.from_domains) for r in reply_domains
    )


def _multipart_without_boundary(view: HeaderView) -> FactValue:
    content_type = view.content_type
    if content_type is None:
        return None
    kind, parameters = content_type
    return kind.startswith("multipart/") and not parameters.get("boundary")


def _charset(view: HeaderView) -> FactValue:
    content_type = view.content_type
    charset = None if content_type is None else content_type[1].get("charset")
    return charset.lower() if charset else None


def _content_type(view: HeaderView) -> FactValue:
    content_type = view.content_type
    return content_type[0] if content_type is not None and content_type[0] else None


@dataclass(frozen=True)
class Fact:
    name: str
    type: FactType
    doc: str
    example: str  # a rule using it, as a line of a policy's `rules:`
    compute: Callable[[HeaderView], FactValue] = field(repr=False, compare=False)


B, N, T = FactType.BOOLEAN, FactType.NUMBER, FactType.TEXT

_FACTS = (
    Fact(
        "received.hops",
        N,
        "The number of Received fields the message arrived with (not the one Postfix adds).",
        "{name: MANY_HOPS, score: 0.5, description: relayed many times, "
        "fact: {name: received.hops, over: 12}}",
        _received_hops,
    ),
    Fact(
        "received.malformed",
        N,
        "The number of Received fields with no time after the last `;`, or with neither a "
        "`from` nor a `by` (a stamp that is one comment, as qmail writes, is fine).",
        "{name: RCVD_MALFORMED, score: 1, description: a Received field that is not one, "
        "fact: {name: received.malformed, over: 0}}",
        _received_malformed,
    ),
    Fact(
        "received.external.address",
        T,
        "The address of the last hop outside our hosts: the connecting client, or, when it "
        "is one of our `relays`, the client of the first field down from it whose client "
        "is not ours (offline: from the topmost field our hosts wrote). Absent when every "
        "hop is ours, or it records no address.",
        "{name: EXTERNAL_FROM_TESTNET, score: 1, description: entered from a test network, "
        r"fact: {name: received.external.address, matches: '^203\.0\.113\.'}}",
        _external_address,
    ),
    Fact(
        "received.external.helo",
        T,
        "The HELO name the last hop outside our hosts gave, as our host recorded it. Absent "
        "without an external hop or a HELO.",
        "{name: EXTERNAL_HELO_BARE_IP, score: 1, description: the external hop greeted with "
        r"an address, fact: {name: received.external.helo, matches: '^\[?[0-9.]+\]?$'}}",
        _external_helo,
    ),
    Fact(
        "received.external.reverse_name",
        T,
        "The reverse name of the last hop outside our hosts, as our host verified it (lower "
        "case). Absent without an external hop, or when it recorded `unknown`.",
        "{name: EXTERNAL_DYNAMIC, score: 1, description: entered from a dynamic address, "
        "fact: {name: received.external.reverse_name, matches: '(?i)(dsl|dyn|pool)'}}",
        _external_reverse_name,
    ),
    Fact(
        "received.relays_passed",
        N,
        "How many of our relays the message passed before the host spamgate serves: "
        "Received fields, from the topmost one our hosts wrote, whose client is ours. 0 for "
        "mail straight from outside; absent when none of ours wrote a field.",
        "{name: VIA_BACKUP_MX, score: 0.5, description: came in through a backup MX, "
        "fact: {name: received.relays_passed, over: 0}}",
        _relays_passed,
    ),
    Fact(
        "received.forged_hops",
        N,
        "How many Received fields, from the external hop down, have a client calling itself "
        "one of our hosts (HELO or `from` name, or an address literal of ours) whose writer "
        "recorded neither an address nor a verified name of ours. Absent without an external "
        "hop.",
        "{name: RCVD_CLAIMS_US, score: 2, description: a hop claims to be one of our hosts, "
        "fact: {name: received.forged_hops, over: 0}}",
        _forged_hops,
    ),
    Fact(
        "received.time_reversals",
        N,
        "How many Received fields carry a time more than an hour after that of the field "
        "above them (which the next host wrote later): a clock gone backwards, or a forged "
        "field.",
        "{name: RCVD_TIME_REVERSED, score: 0.5, description: hop times run backwards, "
        "fact: {name: received.time_reversals, over: 0}}",
        _time_reversals,
    ),
    Fact(
        "date.skew_hours",
        N,
        "Hours the Date is ahead of the topmost Received time (or of the end of the message "
        "without one); negative in the past. Absent without a readable Date.",
        "{name: DATE_FUTURE, score: 1.5, description: dated in the future, "
        "fact: {name: date.skew_hours, over: 24}}",
        _date_skew_hours,
    ),
    Fact(
        "message_id.missing",
        B,
        "The message has no Message-ID.",
        "{name: MSGID_MISSING, score: 1, description: no Message-ID, "
        "fact: {name: message_id.missing, is: true}}",
        _message_id_missing,
    ),
    Fact(
        "message_id.malformed",
        B,
        "The Message-ID is not `<local@domain>`. Absent without a Message-ID.",
        "{name: MSGID_MALFORMED, score: 1, description: a Message-ID of no known form, "
        "fact: {name: message_id.malformed, is: true}}",
        _message_id_malformed,
    ),
    Fact(
        "message_id.from_domain",
        B,
        "The Message-ID's domain is of the From domain's organization. Absent without a "
        "well-formed Message-ID or a From domain.",
        "{name: MSGID_FOREIGN, score: 0.5, description: Message-ID not of the From domain, "
        "fact: {name: message_id.from_domain, is: false}}",
        _message_id_from_domain,
    ),
    Fact(
        "mailer",
        T,
        "The X-Mailer, else the User-Agent, decoded. Absent without either.",
        "{name: MAILER_BULK, score: 1, description: a bulk mailer, "
        "fact: {name: mailer, matches: '(?i)mass ?mail'}}",
        _mailer,
    ),
    Fact(
        "mailer.inconsistent",
        B,
        "The X-Mailer names a mailer and the header lacks what that mailer always writes: "
        "Outlook Express for Windows without X-MimeOLE; Outlook without both X-MimeOLE "
        "(Outlook 98 to 2002) and Thread-Index (2003 and later). false when it names one of "
        "them and has what it writes; absent for any other mailer, or no X-Mailer.",
        "{name: MAILER_FORGED, score: 1.5, description: the mailer named is not the one "
        "that wrote the header, fact: {name: mailer.inconsistent, is: true}}",
        _mailer_inconsistent,
    ),
    Fact(
        "subject.caps_ratio",
        N,
        "The share (0 to 1) of the Subject's cased letters that are capitals. Absent with "
        f"fewer than {MIN_CAPS_LETTERS} such letters.",
        "{name: SUBJECT_SHOUTS, score: 1, description: a Subject in capitals, "
        "fact: {name: subject.caps_ratio, over: 0.9}}",
        _subject_caps_ratio,
    ),
    Fact(
        "subject.punctuation",
        N,
        "How many `!`, `?` and `$` the decoded Subject has. Absent without a Subject.",
        "{name: SUBJECT_EXCLAIMS, score: 1, description: a Subject full of punctuation, "
        "fact: {name: subject.punctuation, over: 3}}",
        _subject_punctuation,
    ),
    Fact(
        "subject.undecodable",
        B,
        "The Subject has an RFC 2047 encoded-word that does not decode (unknown charset, bad "
        "base64, bytes not of its charset). Absent without a Subject.",
        "{name: SUBJECT_UNDECODABLE, score: 1, description: a Subject that does not decode, "
        "fact: {name: subject.undecodable, is: true}}",
        _subject_undecodable,
    ),
    Fact(
        "recipients.count",
        N,
        "How many addresses the To and Cc fields name.",
        "{name: MANY_RECIPIENTS, score: 1, description: many visible recipients, "
        "fact: {name: recipients.count, over: 20}}",
        _recipients_count,
    ),
    Fact(
        "recipients.undisclosed",
        B,
        "There is no To, or it is a group with no addresses (`undisclosed-recipients:;`).",
        "{name: TO_UNDISCLOSED, score: 0.5, description: recipients not shown, "
        "fact: {name: recipients.undisclosed, is: true}}",
        _recipients_undisclosed,
    ),
    Fact(
        "recipients.to_is_from",
        B,
        "Every To address is the From address. Absent without a readable To or From.",
        "{name: TO_IS_FROM, score: 0.5, description: sent to itself, "
        "fact: {name: recipients.to_is_from, is: true}}",
        _recipients_to_is_from,
    ),
    Fact(
        "reply_to.from_domain",
        B,
        "Every Reply-To domain is of the From domain's organization. Absent without a "
        "readable Reply-To or From domain.",
        "{name: REPLYTO_FOREIGN, score: 0.5, description: replies go elsewhere, "
        "fact: {name: reply_to.from_domain, is: false}}",
        _reply_to_from_domain,
    ),
    Fact(
        "mime.multipart_without_boundary",
        B,
        "The Content-Type is multipart/* with no boundary. Absent without a Content-Type.",
        "{name: MIME_NO_BOUNDARY, score: 1, description: multipart without a boundary, "
        "fact: {name: mime.multipart_without_boundary, is: true}}",
        _multipart_without_boundary,
    ),
    Fact(
        "mime.charset",
        T,
        "The Content-Type's charset parameter, lower case. Absent without one.",
        "{name: CHARSET_CYRILLIC, score: 0.5, description: a Cyrillic charset, "
        "fact: {name: mime.charset, matches: '^(koi8-r|windows-1251)$'}}",
        _charset,
    ),
    Fact(
        "content_type",
        T,
        "The Content-Type's type/subtype, lower case. Absent without a Content-Type.",
        "{name: HTML_ONLY, score: 0.5, description: HTML only, "
        "fact: {name: content_type, matches: '^text/html$'}}",
        _content_type,
    ),
)

FACTS: Mapping[str, Fact] = {fact.name: fact for fact in _FACTS}
