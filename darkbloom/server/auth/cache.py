"""A short-lived in-memory cache of authenticated API keys (pure; clock passed in).

Every consumer request authenticates; a database round trip for each (plus a
``last_used_at`` write) was most of the coordinator's added latency. Positive
lookups are cached by key hash for ``ttl_s`` seconds, so a revoked key stops
working within that time; ``last_used_at`` is written at most once per
``touch_every_s`` per key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from darkbloom.server.store import ApiKeyRecord


@dataclass
class KeyCache:
    """Key hash -> (record, expiry), least recently used evicted past ``max_entries``."""

    ttl_s: float = 10.0
    touch_every_s: float = 60.0
    max_entries: int = 10_000
    _entries: OrderedDict[str, tuple[ApiKeyRecord, float]] = field(default_factory=OrderedDict)
    _touched: dict[str, float] = field(default_factory=dict)

    def get(self, key_hash: str, now: float) -> ApiKeyRecord | None:
        hit = self._entries.get(key_hash)
        if hit is None:
            return None
        record, expires = hit
        if now >= expires:
            del self._entries[key_hash]
            return None
        self._entries.move_to_end(key_hash)
        return record

    def put(self, key_hash: str, record: ApiKeyRecord, now: float) -> None:
        self._entries[key_hash] = (record, now + self.ttl_s)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.max_entries:
            old_hash, (old, _) = self._entries.popitem(last=False)
            self._touched.pop(old.key_id, None)

    def should_touch(self, key_id: str, now: float) -> bool:
        """True when ``last_used_at`` for this key is due a write (and records that it is written)."""
        last = self._touched.get(key_id)
        if last is not None and now - last < self.touch_every_s:
            return False
        self._touched[key_id] = now
        return True

    def clear(self) -> None:
        """Forget everything (after a revoke in this process)."""
        self._entries.clear()
