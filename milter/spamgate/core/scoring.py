"""How hits count: the form of a hit's name, whether hits count at all (Mode), and the
thresholds a message's total score is held against to choose its action.

A DNS list or a rule produces a named hit (`SPAMHAUS_XBL`, `HELO_BARE_IP`); the policy gives
it a score; the thresholds turn the total into an action (engine.choose_action). Lists
(listspecs.py), rules (rulespecs.py) and the policy (policy.py) share these, so they live
below all three.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from spamgate.core.schema import FieldError, setting

_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")


class Mode(enum.Enum):
    """Whether hits count: of the whole policy, a recipient group, a list or a rule."""

    ENFORCE = "enforce"
    OBSERVE = "observe"


def check_hit_name(name: str, key: str) -> None:
    if not _NAME_RE.match(name):
        raise FieldError(key, f"{name!r} must be UPPER_CASE letters, digits and _ (max 64)")


@dataclass(frozen=True)
class Thresholds:
    tag: float | None = setting(
        "Score from which mail is tagged `X-Spam-Status: Yes`; null never tags.", 3.0
    )
    greylist: float | None = setting(
        "Score from which a (client network, sender, recipient) triplet must retry once: its "
        "first attempt gets `451 4.7.1`, a retry after `greylist.min_delay` passes tagged; null "
        "disables greylisting.",
        6.0,
    )
    quarantine: float | None = setting(
        "Score from which mail is accepted into Postfix's hold queue (`postsuper -r` releases "
        "it); null disables quarantine.",
        None,
    )
    tempfail: float | None = setting(
        "Score from which every attempt gets `451 4.7.1`, retry or not, until the sender "
        "gives up; null (the default) disables this band: prefer `greylist`.",
        None,
    )
    reject: float | None = setting(
        "Score from which mail gets `550 5.7.1`; null never rejects.", 10.0
    )

    @property
    def greylists(self) -> bool:
        """Whether some score lands in the greylist band: a more severe threshold at or below
        it (a tie goes to the more severe action) leaves none."""
        greylist = self.greylist
        if greylist is None:
            return False
        severe = (self.quarantine, self.tempfail, self.reject)
        return not any(value is not None and value <= greylist for value in severe)

    def check(self) -> None:
        if self.tag is None:
            return
        for key in ("greylist", "quarantine", "tempfail", "reject"):
            value = getattr(self, key)
            if value is not None and value < self.tag:
                raise FieldError(key, f"must not be below tag ({self.tag:g})")
