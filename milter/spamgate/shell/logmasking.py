"""Log output that never shows a DNS list's access key (accesskeys.py): the formatter of the
daemon's log, and of what modules log while a command other than `run` works."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from spamgate.core.accesskeys import KEY_MASK
from spamgate.core.policy import Policy


class KeyMaskingFormatter(logging.Formatter):
    """Writes DNS list access keys as **** in every line, whatever code logged them.

    Code that logs a list names it, never its zone; this is the net under that rule (a
    resolver error names its query, and the zone with its key is part of the query name).
    The resolver lower-cases names, so the match ignores case.
    """

    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        keys = sorted(set(secrets), key=len, reverse=True)
        self._keys = re.compile("|".join(map(re.escape, keys)), re.IGNORECASE) if keys else None

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return self._keys.sub(KEY_MASK, text) if self._keys is not None else text


def mask_keys_in_command_output(policy: Policy) -> None:
    """For commands other than `run` (which sets up its own logging): warnings that modules
    log (the resolver's, say) go to stderr with the policy's keys masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        KeyMaskingFormatter("spamgate: %(levelname)s %(message)s", policy.access_keys)
    )
    logging.getLogger("spamgate").handlers[:] = [handler]
