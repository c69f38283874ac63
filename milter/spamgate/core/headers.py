"""What a header value says: its text, its bytes, its addresses, its date. Pure and total.

Milter header values arrive as str decoded from UTF-8 with errors="surrogateescape" (pymilter
does this), so a byte that is not UTF-8 is a lone surrogate U+DC80..U+DCFF. The sender
chooses every value: folded or not, a megabyte long, with NULs, with encoded-words that do not
decode. Every function here returns a defined result for any str and never raises, in time
linear in the value (or bounded by a cap, where a stdlib parser is not linear).

Two parsers are our own, for reasons measured on Python 3.11.7:
- RFC 2047 words: `email.header.decode_header` raises HeaderParseError on bad base64, and
  its encoded-word regex (`.*?` up to `?=`) rescans the rest of the line from every `=?`:
  56 KB of "=?a?q?x" took it 3.7 s (decoded_text: 2 ms). `make_header` raises LookupError
  on unknown charsets. The
  stdlib also looks up any charset name the sender writes, and `encodings.search_function`
  caches every miss for ever (`_cache[encoding] = None`): a daemon would grow by each new
  random charset name. We resolve only names Python's codec registry knows.
- Addresses: 3.11.7 has no `getaddresses(strict=True)` (the CVE-2023-27043 fix, gh-102988:
  3.13, and 3.12.6 / 3.11.10 in September 2024), and the lenient one misparses crafted
  values. Where strict mode exists it is a heuristic around the same lenient parser
  (balanced parentheses, counting commas), so we do not switch to it by version: the
  answer for a value would then depend on the interpreter's patch level.
  `email.headerregistry` parses RFC 5322 faithfully but leaks IndexError ('user@'),
  AttributeError ('x:y:a@b;;'), ValueError (a bare CR LF) and RecursionError (nested
  comments), and is slow and in places quadratic: 2 KiB of 'x,' took 37 ms, 8 KiB of dots
  260 ms, 100 KB of 'a ' 14 s. Ours tokenises with one regex pass and checks the grammar
  with RE2 (linear in the tokens), about 0.5 us per byte at worst; the tests check that it
  agrees with headerregistry on well-formed values.
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.utils
import encodings
import encodings.aliases
import functools
import pkgutil
import re

import re2

# Lone surrogates: non-UTF-8 bytes after surrogateescape, or any unpaired surrogate.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Surrogates that surrogateescape cannot turn back into a byte (it only maps U+DC80..U+DCFF).
_FOREIGN_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")

# RFC 5322 section 2.2.3: unfolding removes every CRLF that is followed by white space. The
# milter protocol passes folds as they came, so accept a bare LF as the line break too.
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    """RFC 5322 unfolding: a line break followed by white space is not part of the value."""
    return _FOLD.sub("", value) if "\n" in value else value


def _printable(text: str) -> str:
    """Lone surrogates (bytes that were not UTF-8) as U+FFFD, so the text encodes to UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def raw_bytes(value: str) -> bytes:
    """The value's bytes as the client sent them (undoing surrogateescape).

    A surrogate that surrogateescape cannot have produced (outside U+DC80..U+DCFF, so the
    str did not come from pymilter) becomes U+FFFD's UTF-8 encoding, EF BF BD.
    """
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _FOREIGN_SURROGATE.sub("\ufffd", value).encode("utf-8", "surrogateescape")


# --- RFC 2047 encoded-words -----------------------------------------------------------------

# =?charset[*language]?B|Q?text?= (RFC 2047 section 2, RFC 2231 section 5). The charset and
# the text are printable ASCII without "?" (and without "*" in the charset), so each `=?`
# scans at most to the next "?": linear in the value. Words longer than RFC 2047's 75
# characters, and words inside a longer word, are decoded anyway, as mail readers do.
_ENCODED_WORD = re.compile(
    r"=\?(?P<charset>[!-)+->@-~]+)(?:\*[!-)+->@-~]*)?\?(?P<encoding>[BbQq])\?(?P<text>[!->@-~]*)\?="
)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")

# Text codecs Python has that are not character sets of mail: decoding attacker bytes with
# them is not what any mail reader shows (unicode-escape turns "\x41" into "A"), and idna
# and punycode also refuse errors="replace".
_NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})

# Every name Python's codec registry can resolve, normalised as encodings.search_function
# normalises them. Only these are ever looked up (see the module docstring), so the lookups
# and their caches are bounded by this set, not by what senders write.
_KNOWN_CODEC_NAMES = frozenset(
    set(encodings.aliases.aliases)
    | set(encodings.aliases.aliases.values())
    | {module.name for module in pkgutil.iter_modules(encodings.__path__)}
)


@functools.cache  # keyed by members of _KNOWN_CODEC_NAMES only, so bounded
def _codec_name(key: str) -> str | None:
    try:
        name = codecs.lookup(key).name
    except LookupError:  # in the package but not a codec here (mbcs, oem, aliases)
        return None
    return None if name in _NOT_CHARSETS else name


def _decode_charset(data: bytes, charset: str) -> str:
    """Bytes in a declared charset as text; an unknown charset is read as UTF-8."""
    key = encodings.normalize_encoding(charset.lower())
    name = _codec_name(key) if key in _KNOWN_CODEC_NAMES else None
    if name is not None:
        try:
            # UTF-7 can yield lone surrogates even with "replace".
            return _printable(data.decode(name, "replace"))
        except (LookupError, UnicodeError):  # a binary codec (base64, zlib...): not text
            pass
    # Unknown charsets (x-unknown, unknown-8bit) are mostly mislabelled UTF-8 or ASCII.
    return data.decode("utf-8", "replace")


def _payload(encoding: str, text: str) -> bytes:
    data = text.encode("ascii")  # _ENCODED_WORD admits ASCII only
    if encoding in "Qq":
        # header=True: "_" is a space. Malformed "=XY" escapes are kept as written.
        return binascii.a2b_qp(data, header=True)
    # Lenient base64, as mail readers are: drop what is not base64 (padding included), drop
    # a lone trailing character (it holds no whole byte), and pad what remains.
    data = _NOT_BASE64.sub(b"", data)
    extra = len(data) % 4
    if extra == 1:
        data = data[:-1]
    elif extra:
        data += b"=" * (4 - extra)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:  # unreachable after the clean-up above; documented, so caught
        return b""


def decoded_text(value: str) -> str:
    """The value as a reader sees it: unfolded, RFC 2047 encoded-words decoded.

    Bytes that were not UTF-8 become U+FFFD; an unknown charset is read as UTF-8 and a
    malformed encoded-word is decoded leniently (see _payload), so the result never holds a
    lone surrogate. White space between two encoded-words is dropped (RFC 2047 section 6.2),
    and adjacent words in one charset are joined before decoding, so a character split
    across two words survives. NULs and other controls are kept.
    """
    text = _printable(unfold(value))
    if "=?" not in text:
        return text
    pieces: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    position = 0
    for word in _ENCODED_WORD.finditer(text):
        between = text[position : word.start()]
        if pending_charset is None or between.strip(" \t"):
            if pending_charset is not None:
                pieces.append(_decode_charset(bytes(pending), pending_charset))
                pending.clear()
                pending_charset = None
            pieces.append(between)
        charset = word["charset"].lower()
        if pending_charset is not None and charset != pending_charset:
            pieces.append(_decode_charset(bytes(pending), pending_charset))
            pending.clear()
        pending_charset = charset
        pending += _payload(word["encoding"], word["text"])
        position = word.end()
    if pending_charset is not None:
        pieces.append(_decode_charset(bytes(pending), pending_charset))
    pieces.append(text[position:])
    return "".join(pieces)


def has_undecodable_word(value: str) -> bool:
    """Whether an RFC 2047 encoded-word in the value does not decode: its charset is one
    Python does not know, its base64 is not base64 (a character outside the alphabet, a
    length no padding can mend), or its bytes are not text in the charset it names.

    `decoded_text` reads all of these leniently, as mail readers do; this says that it had
    to. Linear in the value, never raises.
    """
    text = unfold(value)
    if "=?" not in text:
        return False
    for word in _ENCODED_WORD.finditer(text):
        key = encodings.normalize_encoding(word["charset"].lower())
        name = _codec_name(key) if key in _KNOWN_CODEC_NAMES else None
        if name is None:
            return True
        payload = word["text"]
        if word["encoding"] in "Bb":
            data = payload.encode("ascii")
            if _NOT_BASE64.search(data.rstrip(b"=")) or len(data) % 4 == 1:
                return True
        try:
            _payload(word["encoding"], payload).decode(name)
        except (LookupError, UnicodeError):
            return True
    return False


# --- Addresses (RFC 5322 section 3.4, with the obsolete forms of section 4.4) ---------------

# Longer address headers are not parsed (header_addresses returns None). A To: with 1,000
# recipients is about 35 KB and parses in about 4 ms; 64 KiB of the worst input we found
# takes about 25 ms (tests/pure/test_headers.py bounds it).
MAX_ADDRESS_CHARS = 64 * 1024

# atext (RFC 5322 3.2.3) and, per RFC 6532, any non-ASCII character.
_ATEXT = r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]"
# One findall does most values. Group 1 is a token: quoted-string, domain-literal, atom or
# special. White space and a comment without nested comments match neither group. Group 2
# takes any other single character: "(" opening a nested or unterminated comment (the value
# then goes to _scan_tokens), or something that is malformed outside quotes (")", "]", "\",
# a control character, an unterminated quote or literal). Each alternative stops at a
# character its class excludes, so a failed attempt costs at most the distance to the next
# such character and the scan is linear.
_ADDRESS_TOKENS = re.compile(
    rf"""
      [ \t]+
    | \((?:[^()\\]|\\.)*\)
    | ( "(?:[^"\\]|\\.)*"
      | \[(?:[^\[\]\\]|\\.)*\]
      | {_ATEXT}+
      | [<>:;@,.]
      )
    | (.)
    """,
    re.VERBOSE | re.DOTALL,
)
_COMMENT_DELIMITER = re.compile(r"[()\\]")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_ATOM_START = re.compile(r"[^<>:;@,.\"\[]")
_KIND_OF_START = str.maketrans({'"': "q", "[": "l"})

# The grammar, over one letter per token: a atom, q quoted-string, l domain-literal, and the
# specials < > : ; @ , . as themselves (comments and white space are gone). RE2, so that
# matching is linear in the number of tokens whatever they are.
_WORD = "[aq]"
_DOMAIN = r"(?:a(?:\.a)*|l)"
_ADDR_SPEC = rf"{_WORD}(?:\.{_WORD})*@{_DOMAIN}"
# obs-route, "<@relay.example,@other.example:user@example.com>": every "@" of a route follows
# "<" or ",", never a word, which is how _addr_specs tells it from an addr-spec.
_ROUTE = rf",*@{_DOMAIN}(?:,(?:@{_DOMAIN})?)*:"
_MAILBOX = rf"(?:[aq.]*<(?:{_ROUTE})?{_ADDR_SPEC}>|{_ADDR_SPEC})"  # [display-name] angle-addr
_GROUP = rf"\.*{_WORD}[aq.]*:,*(?:{_MAILBOX}(?:,+{_MAILBOX})*)?,*;"  # empty members allowed
_ADDRESS = rf"(?:{_MAILBOX}|{_GROUP})"
_ADDRESS_LIST_SHAPE = re2.compile(rf",*{_ADDRESS}(?:,+{_ADDRESS})*,*".encode("ascii"))


class _MalformedError(Exception):
    """Raised inside the address tokenizer only; header_addresses turns it into None."""


def _skip_comment(text: str, start: int) -> int:
    """The index after the comment opening at `start`; nested comments count (RFC 5322 3.2.2).

    Iterative, so nesting depth costs no stack (headerregistry recurses, and raises
    RecursionError at about a thousand levels).
    """
    depth = 0
    position = start
    while True:
        delimiter = _COMMENT_DELIMITER.search(text, position)
        if delimiter is None:
            raise _MalformedError("unterminated comment")
        char = delimiter.group()
        position = delimiter.end()
        if char == "\\":
            position += 1  # a quoted-pair: the next character is literal
        elif char == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return position


def _tokens(text: str) -> list[str]:
    pairs = _ADDRESS_TOKENS.findall(text)
    stray = {other for _, other in pairs if other}
    if "(" in stray:  # a nested comment; its ")" may be among the strays too
        return _scan_tokens(text)
    if stray:
        raise _MalformedError(f"unexpected {min(stray)!r}")
    return [token for token, _ in pairs if token]


def _scan_tokens(text: str) -> list[str]:
    """The tokens of a value with nested comments, a token or a comment at a time."""
    tokens: list[str] = []
    position = 0
    end = len(text)
    while position < end:
        if text[position] == "(":
            position = _skip_comment(text, position)
            continue
        match = _ADDRESS_TOKENS.match(text, position)
        if match is None or match.group(2):  # no match is impossible: (.) takes anything
            raise _MalformedError(f"unexpected {text[position]!r}")
        if match.group(1):
            tokens.append(match.group(1))
        position = match.end()
    return tokens


def _addr_specs(tokens: list[str], kinds: str) -> list[str]:
    """Each addr-spec of a well-formed list: an "@" that follows a word."""
    found: list[str] = []
    at = kinds.find("@")
    while at != -1:
        if kinds[at - 1] in "aq":  # at > 0: the shape never starts with "@"
            start = at - 1
            while start >= 2 and kinds[start - 1] == "." and kinds[start - 2] in "aq":
                start -= 2
            end = at + 2
            while kinds.startswith(".a", end):
                end += 2
            local = _local_part(tokens[start:at:2])
            found.append(f"{local}@{''.join(tokens[at + 1 : end]).lower()}")
        at = kinds.find("@", at + 1)
    return found


def _local_part(words: list[str]) -> str:
    """The local part's canonical text: unquoted where a dot-atom can say it (RFC 5322 3.4.1)."""
    if not any(word[0] == '"' for word in words):
        return ".".join(words)  # atoms joined by dots: a dot-atom already
    local = ".".join(_QUOTED_PAIR.sub(r"\1", w[1:-1]) if w[0] == '"' else w for w in words)
    if _DOT_ATOM.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def header_addresses(value: str, *, mailbox_required: bool = False) -> tuple[str, ...] | None:
    """The addr-specs of an address header (From, Sender, Reply-To, To, Cc), in order.

    Each is `local@domain` with the domain lower-cased and the local part as written (it is
    case-sensitive), unquoted when it needs no quotes. Display names, comments and obsolete
    routes are dropped; group members are included.

    None when the value is malformed: no address at all ("", "John Doe", "<>"), unbalanced
    quotes, comments or angle brackets, junk between addresses, a missing or trailing-dot
    domain, a NUL or a bare line break, a non-UTF-8 byte inside an address (one in a display
    name is tolerated), or a value over MAX_ADDRESS_CHARS.

    An address list of only empty groups ("undisclosed-recipients:;") is well-formed and
    gives (); with mailbox_required (for From and Sender, which must name a mailbox) it
    gives None.
    """
    if len(value) <= _REMEMBERED_VALUE_CHARS:
        return _remembered_addresses(value, mailbox_required)
    return _header_addresses(value, mailbox_required)


# One message's From is read four times (its domain lists, DMARC's author domain at end of
# headers and of message, the header facts) and To once more: remembering the last values
# parses each once. It also spares three RE2 calls a message, each of which lets go of the
# interpreter lock, a hand-off to another session under load (issue 13). Bounded: 1,024
# values of at most 2 KiB.
_REMEMBERED_VALUE_CHARS = 2048


@functools.lru_cache(maxsize=1024)
def _remembered_addresses(value: str, mailbox_required: bool) -> tuple[str, ...] | None:
    return _header_addresses(value, mailbox_required)


def _header_addresses(value: str, mailbox_required: bool) -> tuple[str, ...] | None:
    text = unfold(value)
    if len(text) > MAX_ADDRESS_CHARS or "\x00" in text or "\r" in text or "\n" in text:
        return None
    try:
        tokens = _tokens(text)
    except _MalformedError:
        return None
    starts = "".join([token[0] for token in tokens])
    kinds = _ATOM_START.sub("a", starts).translate(_KIND_OF_START)
    if _ADDRESS_LIST_SHAPE.fullmatch(kinds.encode("ascii")) is None:
        return None
    found = _addr_specs(tokens, kinds)
    if mailbox_required and not found:
        return None
    if any(_LONE_SURROGATE.search(address) for address in found):
        return None
    return tuple(found)


# --- Dates (RFC 5322 section 3.3, obsolete forms of section 4.3) ----------------------------

# RFC 5322 lines end at 998 characters; a longer Date is not one.
_MAX_DATE_CHARS = 998


def parse_date(value: str) -> datetime.datetime | None:
    """An RFC 5322 date-time as an aware datetime; None when it is not one.

    Parsed by email.utils.parsedate_tz, so as leniently as the stdlib: a missing day name,
    two-digit years (1969-2068), RFC 850 dates, named zones (EST, GMT...) and trailing text
    are accepted. No zone, "-0000" and unknown zone names mean UTC (RFC 5322 4.3: unknown
    zones SHOULD be read as -0000). A leap second (:60) is read as :59. Impossible dates
    (31 Feb, hour 24, year 99999, a zone of a day or more) give None.
    """
    text = unfold(value)
    if len(text) > _MAX_DATE_CHARS:
        return None
    try:
        # Documented to return None for what it cannot parse, but it has leaked exceptions
        # on garbage three times lately: IndexError on blank input (bpo-45001, fixed in
        # 3.10), UnboundLocalError on "12.34.56.78" times (bpo-45239, 3.10.1), IndexError
        # on "17 June , 2022" (gh-95087, 3.11). Fixed in our 3.11, but a Date header is
        # the sender's to choose, so those two are caught should one come back.
        fields = email.utils.parsedate_tz(text)
    except (IndexError, UnboundLocalError):
        return None
    if fields is None:
        return None
    year, month, day, hour, minute, second = fields[:6]
    offset = fields[9]
    if second == 60:
        second = 59
    try:
        zone = (
            datetime.UTC
            if offset is None
            else datetime.timezone(datetime.timedelta(seconds=offset))
        )
        return datetime.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except (ValueError, OverflowError):  # out-of-range fields; overflowing C ints
        return None


def date_skew(value: str, now: datetime.datetime) -> datetime.timedelta | None:
    """How far the Date header is ahead of `now` (negative: in the past); None if malformed.

    `now` must be timezone-aware (ValueError otherwise: that is a bug in the caller, not
    something a sender can cause).
    """
    if now.utcoffset() is None:
        raise ValueError("date_skew needs a timezone-aware now")
    date = parse_date(value)
    return None if date is None else date - now
