r"""Admin regexes that match in time linear in their input, whatever the input is.

Header values come from the sender. Python's `re` backtracks: `(a+)+$` takes 70 ms on 20
characters and doubles with each one more, so a single hostile Subject could stall a worker
for ever. RE2 (google-re2) matches with automata in time linear in the text and refuses, when
the pattern is compiled, every construct it cannot run that way (backreferences, lookaround,
atomic groups, possessive quantifiers). An admin finds out at `check-config`, not in
production.

What the admin should know about RE2 syntax (https://github.com/google/re2/wiki/Syntax):
case-insensitivity is the pattern's own `(?i)`; `\d`, `\w`, `\s` and `\b` are ASCII-only (use
`\pL`, `\p{Greek}`, `[[:alpha:]]` for letters in general); `$` without `(?m)` matches only
at the very end (Python's also before a final newline); `\Z` is spelled `\z`; a character by
code point is `\x{E9}`, not `\u00e9`; `(?x)` and `(?#...)` do not exist.

Binding facts, checked in google-re2 1.1.20251105 (python/re2.py and python/_re2.cc in
github.com/google/re2), that this module relies on:
- `Options.log_errors` defaults to True: RE2 then writes every parse error (and "DFA out of
  memory") to stderr through absl logging, pattern included. We set it False; the error text
  still comes back in the exception.
- `re2.error` carries RE2's message as *bytes* in `args[0]`, so `str(error)` reads "b'...'".
- A str text is encoded to UTF-8 with strict errors, so a lone surrogate (what
  surrogateescape makes of a non-UTF-8 byte) raises UnicodeEncodeError. We encode it
  ourselves and hand RE2 bytes, which also skips the binding's str-offset bookkeeping.
- A UTF-8 pattern searched in bytes reads the bytes as UTF-8; with the LATIN1 encoding
  option the pattern must be bytes and every byte is one character, so `\xff` is the byte
  0xFF. In LATIN1 mode `(?i)` folds ASCII letters only (`(?i)\xe9` does not match 0xC9).
- Thread safety: re2.h says an RE2 object "is safe for concurrent use by multiple threads",
  and the binding's Match releases the GIL while matching (py::gil_scoped_release), keeping
  all per-call state local. One compiled pattern is shared by every milter thread.
- `re2.compile` keeps a module-wide LRU cache of 128 compiled objects; harmless here (each
  Pattern holds its own reference), and equal patterns share one RE2 object.

Cost, measured on this machine (x86-64, Python 3.11.7, google-re2 1.1.20251105), from milter/:
    ../.venv/bin/python -m timeit -s 'from spamgate.core.patterns import Pattern' \
      -s 'p = Pattern(r"(?i)\b(v[i1]agra|c[i1]al[i1]s|(free|cheap)\s+(pills|meds))\b")' \
      -s 't = ("Re: Your invoice for order 4471-2231 from Example Shop GmbH is ready - "
               "please review the attachment ok")' 'p.search(t)'
and the same with `-s 'import re; p = re.compile(...)'` for Python's re. On that 102-character
header a miss costs 1.3 us with Pattern and 2.5 us with re; a hit ("cheap meds" in it) 1.8
us and 2.2 us; a value holding a non-UTF-8 byte 2.9 us (the U+FFFD substitution). 64 KiB of
text costs about 0.1 ms, and about 25 ms at worst: on random a/b text `[ab]*a[ab]{20}c`
overflows RE2's DFA cache and RE2 falls back to its slower NFA, still linear.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import re2

# At most this many characters (Pattern) or bytes (RawPattern) of a value are searched. RE2 is
# linear, so this bounds one search at a fixed cost (~0.1 ms typical, ~25 ms worst case as
# measured above) however large the header; Postfix passes a header of up to
# header_size_limit (100 KiB by default) to the milter. Anything a rule should see (a
# Subject, a From, the start of a long To or References) lies far inside 64 KiB; RFC 5322
# lines stop at 998 characters, and a header 64 KiB long is itself noteworthy.
MAX_SUBJECT = 64 * 1024

# Lone surrogates: what surrogateescape decoding makes of bytes that are not UTF-8 (U+DC80 to
# U+DCFF), or any other unpaired surrogate a str may hold. UTF-8 cannot encode them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Regex(Protocol):
    """The part of a compiled re2 object we use (google-re2 ships no type information)."""

    def search(self, text: bytes) -> object: ...


# Shown to the admin with RE2's own error text, keyed by what RE2 reports as the culprit.
_UNSUPPORTED = {
    "(?=": "lookahead (?=...) is not supported",
    "(?!": "negative lookahead (?!...) is not supported",
    "(?<=": "lookbehind (?<=...) is not supported",
    "(?<!": "negative lookbehind (?<!...) is not supported",
    "(?>": "atomic groups (?>...) are not supported",
    "(?(": "conditional groups (?(...)...) are not supported",
    "(?|": "branch reset groups (?|...) are not supported",
    "++": "possessive quantifiers (++, *+, ?+) are not supported",
    "*+": "possessive quantifiers (++, *+, ?+) are not supported",
    "?+": "possessive quantifiers (++, *+, ?+) are not supported",
}
_WHY = "spamgate uses RE2 so that no pattern can stall on hostile input"


def _explain(source: str, error: Exception) -> str:
    detail = error.args[0] if error.args else ""
    if isinstance(detail, bytes):  # the binding passes RE2's std::string through as bytes
        detail = detail.decode("utf-8", "replace")
    detail = str(detail)
    culprit = detail.rpartition(": ")[2]
    hint: str | None = None
    if detail.startswith("invalid escape sequence: ") and culprit[1:] in set("123456789"):
        hint = f"backreferences ({culprit}) are not supported"
    elif culprit == "(?P" and "(?P=" in source:
        hint = "named backreferences (?P=name) are not supported"
    elif culprit in _UNSUPPORTED:
        hint = _UNSUPPORTED[culprit]
    elif culprit == "\\Z":
        return f"\\Z is not supported: RE2 writes end of text as \\z (RE2: {detail})"
    elif culprit == "\\u":
        return f"\\u is not supported: write a character as \\x{{E9}} (RE2: {detail})"
    elif culprit in ("(?x", "(?#"):
        return f"{culprit}...) is not supported by RE2 (RE2: {detail})"
    if hint is not None:
        return f"{hint}: {_WHY} (RE2: {detail})"
    return f"invalid regex: {detail}"


def _matcher(regex: _Regex) -> Callable[[bytes], bool]:
    """Whether `regex` matches anywhere in some bytes, asked as cheaply as the binding allows.

    Its search() wraps each call in a generator and a match object; RE2::Match asked for the
    one span directly costs half as much (0.9 against 1.7 us on a 40-byte Subject, measured
    with timeit), and headers are searched some twenty times per message. The binding's
    internals are not an API, so the direct call is checked against search() once and
    search() is used if the two disagree or the internals are gone.
    """
    engine = getattr(regex, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)

    def by_search(data: bytes) -> bool:
        return regex.search(data) is not None

    if engine is None or anchor is None or not hasattr(engine, "Match"):
        return by_search
    match = engine.Match

    def direct(data: bytes) -> bool:
        return bool(match(anchor, data, 0, len(data))[0][0] != -1)

    try:
        agrees = all(direct(probe) == by_search(probe) for probe in (b"", b"x", b"spamgate"))
    except Exception:
        return by_search
    return direct if agrees else by_search


# A rule on a computed fact (content_type, mailer) or on an envelope address searches values
# that repeat from message to message: "text/plain" thousands of times a day. Each search
# lets go of the interpreter lock, which under load is a hand-off to another session (issue
# 13), so a single pattern remembers its answers for short values, as the rule book does for
# whole headers (rules.RuleBook.match_header). Bounded: _REMEMBERED_VALUES values of at most
# _REMEMBERED_BYTES bytes per pattern.
_REMEMBERED_BYTES = 256
_REMEMBERED_VALUES = 256


def _remembering(search: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    remembered = functools.lru_cache(maxsize=_REMEMBERED_VALUES)(search)

    def searched(data: bytes) -> bool:
        return remembered(data) if len(data) <= _REMEMBERED_BYTES else search(data)

    return searched


def _set_matcher(
    patterns: Sequence[Pattern | RawPattern], *, latin1: bool
) -> Callable[[bytes], list[int] | None] | None:
    """RE2's Set of `patterns` (unanchored, as search): the indexes of all that match some
    bytes, in one pass; None if the binding has no Set or cannot build this one (then the
    group searches the patterns one by one). Checked against the patterns themselves once,
    like _matcher, since a Set's options are set apart from each pattern's."""
    try:
        options = re2.Options()
        options.log_errors = False
        options.never_capture = True
        if latin1:
            options.encoding = re2.Options.Encoding.LATIN1
        found = re2.Set.SearchSet(options)
        for index, pattern in enumerate(patterns):
            if found.Add(pattern.source.encode("utf-8")) != index:
                return None
        found.Compile()
        match: Callable[[bytes], list[int] | None] = found.Match
        for probe in (b"", b"x", b"spamgate", "Caf\u00e9 \u00c9T\u00c9".encode()):
            named = sorted(match(probe) or ())
            if named != [i for i, p in enumerate(patterns) if p._matches(probe)]:
                return None
    except Exception:  # no Set in this binding, or one RE2 will not build: search one by one
        return None
    return match


def _compile(pattern: bytes, source: str, *, latin1: bool) -> _Regex:
    options = re2.Options()
    options.log_errors = False  # errors come back in the exception; never on stderr
    # We only ask whether a pattern matches: without capture groups RE2 can answer from its
    # DFA alone instead of also running an engine that tracks submatches.
    options.never_capture = True
    if latin1:
        options.encoding = re2.Options.Encoding.LATIN1
    try:
        return cast(_Regex, re2.compile(pattern, options))
    except re2.error as error:
        raise ValueError(_explain(source, error)) from None


def _searchable(text: str) -> bytes:
    """The first MAX_SUBJECT characters as UTF-8, lone surrogates as U+FFFD."""
    head = text[:MAX_SUBJECT]
    try:
        return head.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", head).encode("utf-8")


@dataclass(frozen=True)
class Pattern:
    """A regex searched in a header's text (str, matched as UTF-8)."""

    source: str
    _matches: Callable[[bytes], bool] = field(init=False, repr=False, compare=False)

    type_name = "regex"

    def __post_init__(self) -> None:
        try:
            encoded = self.source.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the regex contains a lone surrogate, which is not text") from None
        regex = _compile(encoded, self.source, latin1=False)
        object.__setattr__(self, "_matches", _remembering(_matcher(regex)))

    @classmethod
    def from_config(cls, value: object) -> Pattern:
        if not isinstance(value, str):
            raise ValueError(f"expected a regular expression in quotes, got {value!r}")
        return cls(value)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in the first MAX_SUBJECT characters.

        Those characters are searched as if they were the whole value (`$` matches at the
        cut). Lone surrogates (bytes that were not UTF-8) are searched as U+FFFD.
        """
        return self._matches(_searchable(text))

    def __str__(self) -> str:
        return self.source


@dataclass(frozen=True)
class RawPattern:
    """A regex searched in a header's raw bytes: every byte is one character.

    Compiled with RE2's Latin-1 encoding, so `\\xff` means the byte 0xFF and `.` any byte but
    newline. The source must be ASCII: a non-ASCII character could mean its Latin-1 byte or
    its UTF-8 bytes, so the admin writes the bytes meant as `\\xNN` escapes.
    """

    source: str
    _matches: Callable[[bytes], bool] = field(init=False, repr=False, compare=False)

    type_name = "regex (bytes)"

    def __post_init__(self) -> None:
        try:
            encoded = self.source.encode("ascii")
        except UnicodeEncodeError as error:
            char = self.source[error.start]
            utf8 = "".join(f"\\x{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
            raise ValueError(
                f"a bytes regex must be ASCII: write {char!r} as the bytes it should match, "
                f"e.g. {utf8} for its UTF-8 encoding"
            ) from None
        regex = _compile(encoded, self.source, latin1=True)
        object.__setattr__(self, "_matches", _remembering(_matcher(regex)))

    @classmethod
    def from_config(cls, value: object) -> RawPattern:
        if not isinstance(value, str):
            raise ValueError(f"expected a regular expression in quotes, got {value!r}")
        return cls(value)

    def search(self, data: bytes) -> bool:
        """Whether the pattern matches anywhere in the first MAX_SUBJECT bytes (`$` at the cut)."""
        return self._matches(data[:MAX_SUBJECT])

    def __str__(self) -> str:
        return self.source


class PatternGroup:
    """Which of several patterns match one value, for about the cost of one search.

    The binding gives up the GIL for every search, and with fifty sessions in the milter each
    hand-over of the GIL costs more than a search of a short header. Most values match none
    of their rules, and one search for all the patterns at once, as the alternation
    (?:p1)|(?:p2)|..., answers those; only a value it matches is searched pattern by pattern
    to name the ones that do. RE2 keeps a flag such as (?i) inside its group, so the
    alternation matches exactly where one of the patterns would.
    """

    def __init__(self, patterns: Sequence[Pattern | RawPattern]) -> None:
        self._patterns: tuple[Pattern | RawPattern, ...] = tuple(patterns)
        self._raw = any(isinstance(p, RawPattern) for p in self._patterns)
        if self._raw and not all(isinstance(p, RawPattern) for p in self._patterns):
            raise ValueError("a group holds text patterns or bytes patterns, not both")
        self._any: Callable[[bytes], bool] | None = None
        self._which: Callable[[bytes], list[int] | None] | None = None
        if len(self._patterns) > 1:
            combined = "|".join(f"(?:{p.source})" for p in self._patterns)
            try:
                regex = _compile(combined.encode("utf-8"), combined, latin1=self._raw)
            except ValueError:  # too big for RE2's budget: search them one by one
                return
            self._any = _matcher(regex)
            self._which = _set_matcher(self._patterns, latin1=self._raw)

    def __len__(self) -> int:
        return len(self._patterns)

    def matching(self, value: str | bytes) -> list[int]:
        """The indexes of the patterns that match `value` (text for text patterns, bytes for
        bytes patterns), searched as Pattern.search and RawPattern.search would."""
        data = value[:MAX_SUBJECT] if isinstance(value, bytes) else _searchable(value)
        if self._which is not None:
            # One search names every pattern that matches: a value that matches some rule no
            # longer costs one more search (and GIL hand-over) per pattern of its header.
            return sorted(self._which(data) or ())
        if self._any is not None and not self._any(data):
            return []
        return [i for i, pattern in enumerate(self._patterns) if pattern._matches(data)]

    def matches_any(self, value: str | bytes) -> bool:
        data = value[:MAX_SUBJECT] if isinstance(value, bytes) else _searchable(value)
        if self._any is not None:
            return self._any(data)
        return any(pattern._matches(data) for pattern in self._patterns)
