"""DMARC (RFC 7489): the author domain, the policy record, its discovery, alignment and the
result. Pure and total: the DNS answers come in as values (dns/dkimcheck.py asks), and every
input, however hostile, gives a defined result, never an exception.

What is decided here, and why:
- The author domain (RFC 7489 6.6.1) comes from the one From: field. No From: field, several,
  one that does not parse, or one naming addresses in several domains is a PERMERROR with the
  problem named: the RFC leaves such messages out of DMARC's scope and says they "are
  typically rejected", so the policy (not this module) decides what they cost. Several
  addresses all in one domain evaluate that domain, as 6.6.1 allows.
- A record is a TXT string starting with the tag `v=DMARC1` (6.6.3 step 3 discards every
  other string). Tag names and keyword values are case-insensitive and may have whitespace
  around `=` and `;` (the ABNF of 6.4: quoted strings are case-insensitive); the version
  value `DMARC1` is case-sensitive there (%x44 %x4d ...), and so it is here.
- A record whose `p=` is missing or invalid, or whose `sp=` is invalid, counts as `p=none`
  when its `rua=` holds a URI, and as no record otherwise (6.6.3 step 6, last paragraph).
  Invalid `pct=`, `adkim=`, `aspf=` take their defaults and are listed in `ignored` (the RFC
  says nothing of them; failing the whole record on a typo in a reporting knob would turn a
  sender's `p=reject` into nothing).
- Discovery (6.6.3): `_dmarc.<author domain>`; if that name has no DMARC record (NXDOMAIN, no
  TXT, or no string starting `v=DMARC1`), `_dmarc.<organizational domain>`. Several DMARC
  records at the name that is used means no DMARC processing (NONE). A temporary DNS failure
  at either step is TEMPERROR: falling back to the organizational domain after a timeout
  would apply a policy the author domain may override.
- Alignment (3.1): strict, the identifier's domain equals the author domain; relaxed, both
  have one organizational domain (core/domains.py, by the Public Suffix List). Only an SPF
  pass and a verified DKIM signature can align.
- `sp=` applies when the record was found at the organizational domain for a subdomain
  author; a record at the author domain itself applies `p=`.
- `pct=` sampling (6.6.4) is done with an injected sample point, 0..99: the caller draws it
  (at random for production, fixed in tests), so this module stays deterministic. A message
  outside the sample gets the next policy down (reject -> quarantine -> none), as 6.6.4 says.
- A result never refuses anything by itself: FAIL_REJECT is a named result for the policy to
  weigh, like any other hit.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from spamgate.core import domains, headers

# A DMARC record is a short tag list; real ones are under 300 characters. Anything longer
# is not parsed (bounded work on hostile DNS data) and counts as no record.
MAX_RECORD_CHARS = 2048
# Tags looked at per record: a record of thousands of `x=y;` pairs is not read to its end.
MAX_TAGS = 32
# TXT strings considered at one name (a zone with hundreds of TXT records at _dmarc is not
# looked through: the first this many, sorted as the resolver gives them).
MAX_TXT_RECORDS = 16

_VERSION = "DMARC1"
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


class Alignment(enum.Enum):
    RELAXED = "r"
    STRICT = "s"


class Disposition(enum.Enum):
    """What a domain asks receivers to do with mail that fails DMARC (RFC 7489 6.3 p=)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


_ONE_DOWN = {
    Disposition.REJECT: Disposition.QUARANTINE,
    Disposition.QUARANTINE: Disposition.NONE,
    Disposition.NONE: Disposition.NONE,
}


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC record; `subdomain_policy` None when the record has no valid `sp=`.

    `ignored` names the tags whose values were invalid and replaced by their default;
    `invalid_policy` is True when `p=` (or `sp=`) was invalid and the record counts as
    `p=none` because it has a reporting URI (RFC 7489 6.6.3).
    """

    policy: Disposition
    subdomain_policy: Disposition | None = None
    percent: int = 100
    dkim_alignment: Alignment = Alignment.RELAXED
    spf_alignment: Alignment = Alignment.RELAXED
    ignored: tuple[str, ...] = ()
    invalid_policy: bool = False


@dataclass(frozen=True, slots=True)
class RecordRejected:
    """A TXT string that is not a usable DMARC record, and why."""

    reason: str


def is_dmarc_record(text: str) -> bool:
    """True when `text` starts with the tag `v=DMARC1` (RFC 7489 6.6.3 step 3's test)."""
    first, _, _ = text[:MAX_RECORD_CHARS].partition(";")
    name, equals, value = first.partition("=")
    return bool(equals) and name.strip().lower() == "v" and value.strip() == _VERSION


def parse_record(text: str) -> DmarcRecord | RecordRejected:
    """The DMARC record in `text`, or why it is none (which DMARC treats as no record)."""
    if len(text) > MAX_RECORD_CHARS:
        return RecordRejected(f"record over {MAX_RECORD_CHARS} characters")
    if not is_dmarc_record(text):
        return RecordRejected("not a DMARC1 record")
    tags: dict[str, str] = {}
    for count, part in enumerate(text.split(";")):
        if count >= MAX_TAGS:
            break
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            if part.strip():
                # 6.4: a tag without `=` breaks the record's syntax; it is ignored like an
                # unknown tag rather than voiding the whole record.
                tags.setdefault("#junk", part.strip()[:20])
            continue
        # The first of a repeated tag counts (RFC 7489 is silent; RFC 6376 3.2 makes a
        # repeat an error, which here would void a sender's policy over a duplicate).
        tags.setdefault(name, value.strip())
    ignored: list[str] = []

    policy = _disposition(tags.get("p"))
    subdomain_policy = _disposition(tags["sp"]) if "sp" in tags else None
    invalid_policy = policy is None or ("sp" in tags and subdomain_policy is None)
    if invalid_policy:
        if not any(_URI.fullmatch(uri.strip()) for uri in tags.get("rua", "").split(",")):
            return RecordRejected("invalid p= or sp= and no rua= address")
        policy, subdomain_policy = Disposition.NONE, None
    assert policy is not None  # either valid, or set to NONE just above

    percent = 100
    if "pct" in tags:
        value = tags["pct"]
        if value.isascii() and value.isdigit() and len(value) <= 3 and int(value) <= 100:
            percent = int(value)
        else:
            ignored.append("pct")
    dkim_alignment = _alignment(tags, "adkim", ignored)
    spf_alignment = _alignment(tags, "aspf", ignored)
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain_policy,
        percent=percent,
        dkim_alignment=dkim_alignment,
        spf_alignment=spf_alignment,
        ignored=tuple(ignored),
        invalid_policy=invalid_policy,
    )


def _disposition(value: str | None) -> Disposition | None:
    if value is None:
        return None
    try:
        return Disposition(value.lower())
    except ValueError:
        return None


def _alignment(tags: dict[str, str], name: str, ignored: list[str]) -> Alignment:
    value = tags.get(name)
    if value is None:
        return Alignment.RELAXED
    try:
        return Alignment(value.lower())
    except ValueError:
        ignored.append(name)
        return Alignment.RELAXED


# --- the author domain (RFC 7489 6.6.1) -------------------------------------------------------


class AuthorProblem(enum.Enum):
    """Why a message has no single author domain; each is a PERMERROR with this name."""

    NO_FROM = "no_from"
    SEVERAL_FROM = "several_from"
    MALFORMED_FROM = "malformed_from"
    SEVERAL_DOMAINS = "several_domains"


@dataclass(frozen=True, slots=True)
class AuthorDomain:
    """The one domain of the From: field, normalized (A-labels, lower case)."""

    domain: str


def author_domain(from_values: Sequence[str]) -> AuthorDomain | AuthorProblem:
    """The author domain from the values of every From: field of the message, in order."""
    if not from_values:
        return AuthorProblem.NO_FROM
    if len(from_values) > 1:
        return AuthorProblem.SEVERAL_FROM
    addresses = headers.header_addresses(from_values[0], mailbox_required=True)
    if not addresses:
        return AuthorProblem.MALFORMED_FROM
    found = {domains.domain_of_address(address) for address in addresses}
    if None in found:
        return AuthorProblem.MALFORMED_FROM
    if len(found) > 1:
        return AuthorProblem.SEVERAL_DOMAINS
    (domain,) = found
    assert domain is not None  # None was refused above
    return AuthorDomain(domain)


# --- discovery (RFC 7489 6.6.3) ---------------------------------------------------------------


class TxtState(enum.Enum):
    """A TXT lookup as DMARC sees it (dns/dkimcheck.py maps the resolver's answers)."""

    FOUND = "found"  # strings came back
    NO_RECORD = "no_record"  # NXDOMAIN or no TXT at the name: a definite absence
    TEMPORARY = "temporary"  # timeout, SERVFAIL, network: may succeed later
    PERMANENT = "permanent"  # an answer that cannot be read (a CNAME loop, a broken message)


@dataclass(frozen=True, slots=True)
class TxtLookup:
    """What one TXT lookup gave: its state, the strings, and a short detail for logs."""

    state: TxtState
    records: tuple[str, ...] = ()
    detail: str = ""


class DiscoveryState(enum.Enum):
    FOUND = "found"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class PolicyDiscovery:
    """The record that applies to an author domain, where it was found, or why there is none."""

    state: DiscoveryState
    record: DmarcRecord | None = None
    policy_domain: str = ""  # the domain whose _dmarc record applies ("" when none)
    at_organization: bool = False  # found by falling back to the organizational domain
    reason: str = ""


def policy_names(domain: str) -> tuple[str, str | None]:
    """The names to ask for the TXT records of `domain`'s policy: `_dmarc.<domain>` and, when
    the organizational domain differs, `_dmarc.<organizational domain>` (else None)."""
    organization = domains.organizational_domain(domain) or domain
    fallback = None if organization == domain else f"_dmarc.{organization}"
    return f"_dmarc.{domain}", fallback


def needs_fallback(at_author: TxtLookup) -> bool:
    """True when the author domain's lookup found no DMARC record, so the organizational
    domain's is asked (RFC 7489 6.6.3 step 4); False on an error or a record, even an
    unusable one."""
    if at_author.state is TxtState.NO_RECORD:
        return True
    return at_author.state is TxtState.FOUND and _records_at(at_author) is None


def discover_policy(
    domain: str, at_author: TxtLookup, at_organization: TxtLookup | None
) -> PolicyDiscovery:
    """The policy for author `domain` from the lookups of the names policy_names() gave.

    `at_organization` is None when the organizational domain is the author domain, or when
    it was not asked (it is used only when `at_author` has no DMARC record).
    """
    first = _records_at(at_author)
    if first is not None:
        return _chosen(first, domain, at_organization=False)
    organization = domains.organizational_domain(domain) or domain
    if organization == domain or at_organization is None:
        return PolicyDiscovery(DiscoveryState.NONE, reason="no DMARC record")
    second = _records_at(at_organization)
    if second is None:
        return PolicyDiscovery(DiscoveryState.NONE, reason="no DMARC record")
    return _chosen(second, organization, at_organization=True)


def _records_at(lookup: TxtLookup) -> PolicyDiscovery | tuple[str, ...] | None:
    """The DMARC strings at one name, an error that ends discovery, or None (none there)."""
    if lookup.state is TxtState.TEMPORARY:
        return PolicyDiscovery(DiscoveryState.TEMPERROR, reason=f"DNS: {lookup.detail}")
    if lookup.state is TxtState.PERMANENT:
        return PolicyDiscovery(DiscoveryState.PERMERROR, reason=f"DNS: {lookup.detail}")
    if lookup.state is TxtState.NO_RECORD:
        return None
    found = tuple(r for r in lookup.records[:MAX_TXT_RECORDS] if is_dmarc_record(r))
    return found or None


def _chosen(
    found: PolicyDiscovery | tuple[str, ...], domain: str, *, at_organization: bool
) -> PolicyDiscovery:
    if isinstance(found, PolicyDiscovery):
        return found
    if len(found) > 1:
        # 6.6.3 step 6: several records end discovery with no DMARC processing.
        return PolicyDiscovery(DiscoveryState.NONE, reason=f"several DMARC records at {domain}")
    parsed = parse_record(found[0])
    if isinstance(parsed, RecordRejected):
        return PolicyDiscovery(DiscoveryState.NONE, reason=f"{parsed.reason} at {domain}")
    return PolicyDiscovery(
        DiscoveryState.FOUND, parsed, policy_domain=domain, at_organization=at_organization
    )


# --- alignment and the result (RFC 7489 3.1, 6.6) ---------------------------------------------


class Method(enum.Enum):
    SPF = "spf"
    DKIM = "dkim"


@dataclass(frozen=True, slots=True)
class Identifier:
    """An authenticated identifier offered for alignment: the MAIL FROM domain (or HELO for
    the null sender) with its SPF result, or a DKIM signature's d= with its result."""

    method: Method
    domain: str
    passed: bool


@dataclass(frozen=True, slots=True)
class AlignmentCheck:
    """One identifier compared with the author domain: whether it aligned, and why not."""

    method: Method
    domain: str
    mode: Alignment
    aligned: bool
    reason: str


class DmarcOutcome(enum.Enum):
    """The named results: a pass, a fail under the policy that applies, or no evaluation."""

    PASS = "pass"
    FAIL_REJECT = "fail_reject"
    FAIL_QUARANTINE = "fail_quarantine"
    FAIL_NONE = "fail_none"
    NONE = "none"  # no DMARC record: nothing is asked of us
    TEMPERROR = "temperror"
    PERMERROR = "permerror"

    @property
    def status(self) -> str:
        """The word for Authentication-Results (RFC 8601 2.7.1 dmarc=)."""
        return "fail" if self.value.startswith("fail") else self.value


_FAIL_UNDER = {
    Disposition.REJECT: DmarcOutcome.FAIL_REJECT,
    Disposition.QUARANTINE: DmarcOutcome.FAIL_QUARANTINE,
    Disposition.NONE: DmarcOutcome.FAIL_NONE,
}


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC evaluation of one message, with everything explain and
    Authentication-Results show: which identifiers aligned, which policy was published, which
    applies, and whether pct= sampling lowered it."""

    outcome: DmarcOutcome
    author_domain: str = ""
    author_problem: AuthorProblem | None = None
    policy_domain: str = ""
    record: DmarcRecord | None = None
    published: Disposition | None = None  # p= (or sp=) as the record says
    applied: Disposition | None = None  # after pct= sampling; None unless FAIL_*
    sampled_out: bool = False
    checks: tuple[AlignmentCheck, ...] = ()
    reason: str = ""


def is_aligned(identifier: str, author: str, mode: Alignment) -> bool:
    """True when `identifier`'s domain aligns with `author`'s under `mode` (RFC 7489 3.1)."""
    left, right = domains.normalize_domain(identifier), domains.normalize_domain(author)
    if left is None or right is None:
        return False
    if mode is Alignment.STRICT:
        return left == right
    return domains.same_organization(left, right)


def check_alignment(
    identifiers: Sequence[Identifier], author: str, record: DmarcRecord
) -> tuple[AlignmentCheck, ...]:
    """Each identifier compared with the author domain under the record's modes."""
    checks = []
    for identifier in identifiers:
        mode = record.spf_alignment if identifier.method is Method.SPF else record.dkim_alignment
        if not identifier.passed:
            checks.append(
                AlignmentCheck(identifier.method, identifier.domain, mode, False, "did not pass")
            )
            continue
        aligned = is_aligned(identifier.domain, author, mode)
        if aligned:
            reason = "same domain" if mode is Alignment.STRICT else "same organizational domain"
        else:
            reason = "other domain" if mode is Alignment.STRICT else "other organization"
        checks.append(AlignmentCheck(identifier.method, identifier.domain, mode, aligned, reason))
    return tuple(checks)


def evaluate(
    author: AuthorDomain | AuthorProblem,
    discovery: PolicyDiscovery | None,
    identifiers: Sequence[Identifier],
    sample_point: int,
) -> DmarcResult:
    """The DMARC result of a message.

    `discovery` is the policy found for the author domain (None when there is no author
    domain, nothing was asked). `sample_point` is 0..99: the policy is applied in full when
    it is below the record's pct= (the caller draws it at random; tests fix it).
    """
    if isinstance(author, AuthorProblem):
        return DmarcResult(
            DmarcOutcome.PERMERROR, author_problem=author, reason=f"author: {author.value}"
        )
    domain = author.domain
    if discovery is None or discovery.state is DiscoveryState.NONE:
        reason = "no DMARC record" if discovery is None else discovery.reason
        return DmarcResult(DmarcOutcome.NONE, author_domain=domain, reason=reason)
    if discovery.state is DiscoveryState.TEMPERROR:
        return DmarcResult(DmarcOutcome.TEMPERROR, author_domain=domain, reason=discovery.reason)
    record = discovery.record
    if discovery.state is DiscoveryState.PERMERROR or record is None:
        return DmarcResult(DmarcOutcome.PERMERROR, author_domain=domain, reason=discovery.reason)

    checks = check_alignment(identifiers, domain, record)
    published = record.policy
    if discovery.at_organization and record.subdomain_policy is not None:
        published = record.subdomain_policy
    aligned = [check for check in checks if check.aligned]
    sampled_out = not aligned and not 0 <= sample_point < record.percent
    applied = None
    if aligned:
        outcome = DmarcOutcome.PASS
        reason = f"{aligned[0].method.value} aligned: {aligned[0].domain}"
    else:
        applied = _ONE_DOWN[published] if sampled_out else published
        outcome = _FAIL_UNDER[applied]
        reason = "no aligned identifier" if checks else "no authenticated identifier"
    return DmarcResult(
        outcome,
        author_domain=domain,
        policy_domain=discovery.policy_domain,
        record=record,
        published=published,
        applied=applied,
        sampled_out=sampled_out,
        checks=checks,
        reason=reason,
    )
