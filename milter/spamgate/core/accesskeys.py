"""Access keys of commercial DNS lists, as text: found, checked, filled in and masked.

A keyed list puts its key in the query name (Spamhaus DQS: `<key>.zen.dq.spamhaus.net`, a
26-character key; Abusix Mail Intelligence: `<key>.combined.mail.abusix.zone`). The policy
writes `zone: "{key}.zen.dq.spamhaus.net"` with `key_file:`, or the key straight into the
zone, where the first label under a known keyed service is taken as the key. Either way the
key may go into DNS queries and nowhere else: errors and command output show `****`, log
lines pass through logmasking.KeyMaskingFormatter, and the pre-flight checks warn about files
that hold a key with modes that let other users read it (preflight.exposed_secret_files).

Pure: config.read_sources reads key files; `parse_access_key` reads the key in their bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

from spamgate.core.schema import FieldError

KEY_LABEL = "{key}"
KEYED_SERVICES = ("dq.spamhaus.net", "mail.abusix.zone")
KEY_MASK = "****"
_KEY_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{8,63}(?<!-)\Z")


def parse_access_key(raw: bytes, path: Path) -> str:
    """The key in the bytes of the key file `path`: one line, surrounding white space
    ignored. Errors never quote it."""
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
