"""SMTP replies spamgate gives, with the protocol rules built into the type, and the checks
of the reply templates a policy sets."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from spamgate.core.schema import FieldError

# libmilter drops a line over 980 characters (smfi_setreply(3)); stay well inside it.
MAX_TEXT = 400
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r"[^\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Reply:
    """A 4xx/5xx reply whose enhanced status code (RFC 3463) has the same class."""

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if self.code // 100 not in (4, 5):
            raise ValueError(f"a milter reply must be 4xx or 5xx, not {self.code}")
        if not re.fullmatch(r"[45]\.\d{1,3}\.\d{1,3}", self.status):
            raise ValueError(f"bad enhanced status code {self.status!r}")
        if self.status[0] != str(self.code)[0]:
            raise ValueError(f"status {self.status} does not match reply code {self.code}")
        if _UNPRINTABLE.search(self.text):
            raise ValueError("reply text must be printable ASCII")

    @property
    def milter_text(self) -> str:
        """The text as smfi_setreply wants it: a lone % would make libmilter drop the reply."""
        return self.text.replace("%", "%%")


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """Printable ASCII only, on one line, runs of blanks as one space, at most `limit` long."""
    flat = _SPACES.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    if limit <= 3:
        return flat[:limit]
    return flat[: limit - 3].rstrip() + "..."


def rejection(text: str) -> Reply:
    return Reply(550, "5.7.1", clean_text(text))


def temporary_refusal(text: str) -> Reply:
    return Reply(451, "4.7.1", clean_text(text))


def internal_error(decision_id: str) -> Reply:
    # 4.3.0: "other or undefined mail system status" — our fault, not the sender's.
    return Reply(451, "4.3.0", _with_id("Temporary local problem, try again later", decision_id))


def _with_id(text: str, decision_id: str) -> str:
    suffix = f" (id {clean_text(decision_id, 32)})"
    return clean_text(text, MAX_TEXT - len(suffix)) + suffix


# A reply line may be 980 characters (smfi_setreply); spamgate keeps replies to 400 and the
# template's own text to 300, so the reasons always have room.
MAX_TEMPLATE = 300


def check_template(template: str, key: str, known: set[str]) -> None:
    """Refuse the template of the setting `key` if it is too long or names a field not in
    `known` (engine.fill fills it in)."""
    if len(template) > MAX_TEMPLATE:
        raise FieldError(key, f"longer than {MAX_TEMPLATE} characters")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise FieldError(key, f"bad template: {error}") from None
    for name in fields:
        if name not in known:
            raise FieldError(key, f"unknown field {{{name}}}: use {', '.join(sorted(known))}")
