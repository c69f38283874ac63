"""Header text on hostile values: unfolding, the raw bytes, RFC 2047 decoding; every result
pinned."""

from __future__ import annotations

import random
from email.header import decode_header, make_header

import pytest

from spamgate.core.headers import decoded_text, raw_bytes, unfold

# --- unfold ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("plain", "plain", id="nothing-to-do"),
        pytest.param("a\r\n b", "a b", id="crlf-space"),
        pytest.param("a\r\n\tb", "a\tb", id="crlf-tab"),
        pytest.param("a\n b", "a b", id="lf-space"),
        pytest.param("a\r\n  \r\n b", "a   b", id="two-folds"),
        pytest.param("a\r\nb", "a\r\nb", id="break-without-white-space-stays"),
        pytest.param("a\r\n", "a\r\n", id="trailing-break-stays"),
        pytest.param("a\r b", "a\r b", id="bare-cr-stays"),
        pytest.param("\r\n a", " a", id="leading-fold"),
        pytest.param("a\x00\r\n b", "a\x00 b", id="nul-kept"),
        pytest.param("\udcff\r\n \udcfe", "\udcff \udcfe", id="surrogates-kept"),
    ],
)
def test_unfold(value: str, expected: str) -> None:
    assert unfold(value) == expected


# --- raw_bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("abc", b"abc", id="ascii"),
        pytest.param("café", b"caf\xc3\xa9", id="utf8"),
        pytest.param("caf\udce9", b"caf\xe9", id="latin1-byte-back"),
        pytest.param("\udc80\udcff", b"\x80\xff", id="escape-range-ends"),
        pytest.param("a\x00b", b"a\x00b", id="nul"),
        pytest.param("a\r\n b", b"a\r\n b", id="folding-kept"),
        # Surrogates that surrogateescape cannot have made: U+FFFD's UTF-8 instead.
        pytest.param("\ud800", b"\xef\xbf\xbd", id="high-surrogate"),
        pytest.param("\udc7f", b"\xef\xbf\xbd", id="below-escape-range"),
        pytest.param("\udd00", b"\xef\xbf\xbd", id="above-escape-range"),
        pytest.param("\udcff\ud83d\ude00é", b"\xff\xef\xbf\xbd\xef\xbf\xbd\xc3\xa9", id="mixed"),
    ],
)
def test_raw_bytes(value: str, expected: bytes) -> None:
    assert raw_bytes(value) == expected


def test_raw_bytes_undoes_surrogateescape_for_any_bytes() -> None:
    rng = random.Random(7)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(64))) for _ in range(500)]
    samples += [b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", bytes(range(256))]
    for data in samples:
        assert raw_bytes(data.decode("utf-8", "surrogateescape")) == data


# --- decoded_text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Hello", "Hello", id="plain"),
        pytest.param("=?utf-8?B?SGVsbG8gV29ybGQ=?=", "Hello World", id="utf8-base64"),
        pytest.param("=?UTF-8?b?w6k=?=", "é", id="case-insensitive-names"),
        pytest.param("=?iso-8859-1?Q?caf=E9_au_lait?=", "café au lait", id="latin1-q"),
        pytest.param("=?utf-8?q?caf=c3=a9?=", "café", id="lower-case-hex"),
        pytest.param("=?ISO-8859-15?Q?=A4?=", "€", id="latin9"),
        pytest.param("=?windows-1252?Q?=80?=", "€", id="cp1252"),
        pytest.param("=?koi8-r?B?8NLJ18XU?=", "Привет", id="koi8-r"),
        pytest.param("=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=", "テスト", id="iso-2022-jp"),
        pytest.param("=?gb2312?B?xOO6ww==?=", "你好", id="gb2312"),
        pytest.param("=?ks_c_5601-1987?B?x9GxuQ==?=", "한국", id="ks_c_5601-1987-alias"),
        pytest.param("=?utf-16?B?//5hAA==?=", "a", id="utf16-with-bom"),
        pytest.param("=?utf-8*en?Q?hi?=", "hi", id="rfc2231-language"),
        pytest.param("Re: =?utf-8?Q?caf=C3=A9?= now", "Re: café now", id="word-among-text"),
        # RFC 2047 6.2: white space between encoded-words is not shown.
        pytest.param("=?utf-8?Q?a?= =?utf-8?Q?b?=", "ab", id="adjacent-words-join"),
        pytest.param("=?utf-8?Q?a?= \t =?utf-8?Q?b?=", "ab", id="any-white-space-between"),
        pytest.param("=?utf-8?Q?a?=\r\n =?utf-8?Q?b?=", "ab", id="folded-between-words"),
        pytest.param("=?utf-8?Q?a?= x =?utf-8?Q?b?=", "a x b", id="text-between-kept"),
        pytest.param("=?utf-8?B?ww==?= =?utf-8?B?qQ==?=", "é", id="character-split-base64"),
        pytest.param("=?utf-8?Q?=C3?==?utf-8?Q?=A9?=", "é", id="character-split-q"),
        pytest.param("=?iso-8859-1?Q?=E9?= =?utf-8?Q?=C3=A9?=", "éé", id="two-charsets"),
        # Encoded-words inside a word are decoded, as mail readers show them.
        pytest.param("Fr=?utf-8?Q?ee?=!", "Free!", id="inside-a-word"),
        pytest.param("x=?utf-8?q?foo?=bar", "xfoobar", id="glued-both-sides"),
        # Base64 is read leniently: missing padding, junk characters, a lone last character.
        pytest.param("=?utf-8?B?SGVsbG8?=", "Hello", id="base64-missing-padding"),
        pytest.param("=?utf-8?B?SGVs!bG8=?=", "Hello", id="base64-junk-character"),
        pytest.param("=?utf-8?B?SGVsbG8h=?=", "Hello!", id="base64-one-char-extra"),
        pytest.param("=?utf-8?B?S?=", "", id="base64-single-character"),
        pytest.param("=?utf-8?B?!!!?=", "", id="base64-nothing-valid"),
        pytest.param("=?utf-8?B?/w==?=", "\ufffd", id="base64-not-utf8"),
        pytest.param("=?utf-8?Q?a=ZZb?=", "a=ZZb", id="q-bad-escape-kept"),
        pytest.param("=?utf-8?Q?a=00b?=", "a\x00b", id="q-nul"),
        # Unknown charsets are read as UTF-8; so are codecs that are not mail charsets.
        pytest.param("=?x-unknown?Q?abc?=", "abc", id="unknown-charset"),
        pytest.param("=?x-unknown?B?w6k=?=", "é", id="unknown-charset-utf8"),
        pytest.param("=?unknown-8bit?Q?=E9?=", "\ufffd", id="unknown-8bit"),
        pytest.param("=?us-ascii?Q?=E9?=", "\ufffd", id="ascii-high-byte"),
        pytest.param("=?base64?Q?QUJD?=", "QUJD", id="binary-codec-not-applied"),
        pytest.param("=?rot13?Q?nop?=", "nop", id="rot13-not-applied"),
        pytest.param("=?unicode-escape?Q?=5Cx41?=", "\\x41", id="unicode-escape-not-applied"),
        pytest.param("=?idna?Q?xn--caf-dma?=", "xn--caf-dma", id="idna-not-applied"),
        pytest.param("=?utf-7?Q?+2D0-?=", "\ufffd", id="utf7-lone-surrogate"),
        # Not encoded-words: kept as written.
        pytest.param("=?utf-8?X?abc?=", "=?utf-8?X?abc?=", id="unknown-encoding"),
        pytest.param("=?utf-8?Q?a b?=", "=?utf-8?Q?a b?=", id="space-inside"),
        pytest.param("=?utf-8?Q?abc", "=?utf-8?Q?abc", id="unterminated"),
        pytest.param("=??Q?abc?=", "=??Q?abc?=", id="empty-charset"),
        pytest.param("=?utf\x00-8?Q?a?=", "=?utf\x00-8?Q?a?=", id="nul-in-charset"),
        pytest.param("=?é?Q?a?=", "=?é?Q?a?=", id="non-ascii-charset"),
        # Non-UTF-8 bytes show as U+FFFD, inside or outside words.
        pytest.param("caf\udce9", "caf\ufffd", id="non-utf8-byte"),
        pytest.param("=?utf-8?Q?x?=\udcff", "x\ufffd", id="non-utf8-after-word"),
        pytest.param("\ud800", "\ufffd", id="foreign-surrogate"),
        pytest.param("a\x00b", "a\x00b", id="nul-kept"),
        pytest.param("Subject\r\n text", "Subject text", id="unfolded"),
    ],
)
def test_decoded_text(value: str, expected: str) -> None:
    assert decoded_text(value) == expected


def test_decoded_text_agrees_with_the_stdlib_on_well_formed_words() -> None:
    for value in (
        "=?utf-8?B?SGVsbG8gV29ybGQ=?=",
        "=?iso-8859-1?Q?caf=E9_au_lait?=",
        "Re: =?utf-8?Q?caf=C3=A9?= now",
        "=?utf-8?Q?a?= =?utf-8?Q?b?=",
        "=?koi8-r?B?8NLJ18XU?=",
        "=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
    ):
        assert decoded_text(value) == str(make_header(decode_header(value)))
