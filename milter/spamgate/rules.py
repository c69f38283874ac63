"""Header rules, indexed once per policy so each arriving header costs one dict lookup."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from spamgate.config import Rule

# A regex over a megabyte-long header could stall a worker thread; real headers that matter to
# a rule fit in far less. (Bounded matching time for hostile patterns is the rule engine's next
# step; this caps the input side.)
MAX_MATCHED_CHARS = 32 * 1024

_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    """RFC 5322 unfolding: a line break followed by white space is not part of the value."""
    return _FOLD.sub("", value) if "\n" in value else value


class RuleBook:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self._matching: dict[str, list[Rule]] = {}
        self._missing: list[Rule] = []
        self._missing_names: set[str] = set()
        for rule in rules:
            condition = rule.header
            if condition is None:
                continue
            if condition.missing:
                self._missing.append(rule)
                self._missing_names.add(condition.name.lower())
            else:
                self._matching.setdefault(condition.name.lower(), []).append(rule)

    def checks_missing(self, lowered_name: str) -> bool:
        """Whether a rule needs to know that this header was present."""
        return lowered_name in self._missing_names

    def match_header(self, lowered_name: str, value: str) -> Iterable[Rule]:
        """The rules that fire on one header (name already lower-cased)."""
        candidates = self._matching.get(lowered_name)
        if not candidates:
            return ()
        text = unfold(value[:MAX_MATCHED_CHARS])
        return [
            rule
            for rule in candidates
            if rule.header is not None
            and rule.header.matches is not None
            and rule.header.matches.search(text)
        ]

    def missing(self, seen_names: set[str]) -> Iterable[Rule]:
        """The rules for headers the message did not have (names lower-cased)."""
        return [r for r in self._missing if r.header and r.header.name.lower() not in seen_names]
