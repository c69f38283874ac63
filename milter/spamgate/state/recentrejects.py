"""A short memory of clients refused for their DNS list listings, so that their next
connections are refused at once, without asking the lists again (as postscreen's cache of
DNSBL verdicts spares the DNSBLs a spammer's retries).

Only a refusal that the client's IP list hits decide on their own is remembered, by the
client's exact address, with the names of those hits. A new connection from that address
replays the names through the policy in force, so a score changed or a list removed since
counts as it now stands. The memory lives in the shared state (SQLite or Redis), so all MX
hosts sharing it know the client; a store that fails is simply not consulted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from spamgate.core.addresses import IPAddress, normalize_address
from spamgate.state.store import StateStore


class RecentRejects:
    def __init__(self, store: StateStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    def recall(self, address: IPAddress) -> tuple[str, ...]:
        """The hit names the client was refused for lately, or () if none; raises when the
        store fails."""
        (value,) = self.store.get_many([_key(address)])
        if value is None:
            return ()
        try:
            names = json.loads(value)["hits"]
        except (ValueError, KeyError, TypeError):
            return ()  # a value another version wrote: ask the lists instead
        if not isinstance(names, list):
            return ()
        return tuple(str(name) for name in names[:32])

    def remember(self, address: IPAddress, names: Sequence[str]) -> None:
        value = json.dumps({"hits": list(names)}, separators=(",", ":"))
        self.store.put_many([(_key(address), value, self.ttl)])


def _key(address: IPAddress) -> str:
    return f"rej:{normalize_address(address)}"
