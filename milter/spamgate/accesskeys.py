"""Access keys of commercial DNS lists: read from key files, masked wherever text is shown.

A keyed list puts its key in the query name (Spamhaus DQS: `<key>.zen.dq.spamhaus.net`, a
26-character key; Abusix Mail Intelligence: `<key>.combined.mail.abusix.zone`). The policy
writes `zone: "{key}.zen.dq.spamhaus.net"` with `key_file:`, or the key straight into the
zone, where the first label under a known keyed service is taken as the key. Either way the
key may go into DNS queries and nowhere else: errors and command output show `****`, log
lines pass through KeyMaskingFormatter, and files that hold a key are checked for modes that
let other users read it.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from spamgate.matchlists import UnreadableFileError, read_regular_file
from spamgate.schema import FieldError

if TYPE_CHECKING:
    from spamgate.config import Policy

KEY_LABEL = "{key}"
KEYED_SERVICES = ("dq.spamhaus.net", "mail.abusix.zone")
KEY_MASK = "****"
_KEY_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{8,63}(?<!-)\Z")
# A key file holds one line of at most 63 characters: 4 KiB leaves room for white space around
# it, and nothing bigger can be a key file.
MAX_KEY_FILE_BYTES = 4096


def read_access_key(path: Path) -> str:
    """The key in `path`: one line, surrounding white space ignored. Errors never quote it.

    Only a regular file of at most MAX_KEY_FILE_BYTES is read (a FIFO would block a reload
    for ever, /dev/zero would never end: matchlists.read_regular_file)."""
    try:
        raw = read_regular_file(path, MAX_KEY_FILE_BYTES)
    except UnreadableFileError as problem:
        if problem.too_large:
            raise FieldError("key_file", f"{path} is {problem.reason}") from None
        raise FieldError("key_file", f"cannot read {path}: {problem.reason}") from None
    text = raw.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise FieldError("key_file", f"{path} must hold one line, the key; it has {len(lines)}")
    if not _KEY_RE.match(lines[0]):
        raise FieldError(
            "key_file",
            f"the key in {path} is not 8-63 letters, digits, - or _ ({len(lines[0])} characters)",
        )
    return lines[0]


def fill_key(zone: str, key: str) -> str:
    """`zone` with its {key} label replaced by `key`."""
    return ".".join(key if label == KEY_LABEL else label for label in zone.rstrip(".").split("."))


def has_key_label(zone: str) -> bool:
    return KEY_LABEL in zone.rstrip(".").split(".")


def inline_access_key(zone: str) -> str:
    """The key written into a zone of a known keyed service, or ""."""
    name = zone.rstrip(".")
    first = name.split(".")[0]
    for service in KEYED_SERVICES:
        # The key, the list's own label, then the service: a bare "zen.dq.spamhaus.net" has
        # no key to hide.
        if name.lower().endswith("." + service) and name.count(".") >= service.count(".") + 2:
            return first if _KEY_RE.match(first) else ""
    return ""


def mask_access_key(zone: str) -> str:
    """`zone` with its access key (a {key} label, or a key written in) shown as ****."""
    labels = zone.rstrip(".").split(".")
    if KEY_LABEL in labels:
        return ".".join(KEY_MASK if label == KEY_LABEL else label for label in labels)
    if inline_access_key(zone):
        return ".".join([KEY_MASK, *labels[1:]])
    return zone


def exposed_secret_files(policy: Policy, source: str | Path) -> list[str]:
    """A warning for each file holding an access key that other users may read, or that
    the group or other users may write (and so swap the key, or the whole policy, for theirs):
    key files, and the policy file `source` when a zone in it holds a key.

    Group read is fine: the recommended set-up is owner root, group spamgate, mode 0640.
    """
    holders: dict[Path, list[str]] = {}
    for dns_list in policy.dns_lists:
        if dns_list.key_path is not None:
            holders.setdefault(dns_list.key_path, []).append(dns_list.name)
        elif dns_list.access_key:
            holders.setdefault(Path(source), []).append(dns_list.name)
    state_password = policy.uses_state and policy.state.store_shown != policy.state.store
    if state_password:
        holders.setdefault(Path(source), [])
    warnings = []
    for path, names in holders.items():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # read a moment ago; if it has gone, the next load says so
            continue
        problems = []
        if mode & 0o004:
            problems.append("other users can read it")
        if mode & 0o022:
            problems.append("group or other users can write it")
        if not problems:
            continue
        advice = "chmod 0640, group spamgate"
        if path == Path(source) and names:
            advice += ", or move the key to a key_file"
        held = [f"the access key of {', '.join(names)}"] if names else []
        if path == Path(source) and state_password:
            held.append("the Redis password of state.store")
        warnings.append(
            f"secret file {path} has mode {mode:04o}: {' and '.join(problems)}, and it holds "
            f"{' and '.join(held)} ({advice})"
        )
    return warnings


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
