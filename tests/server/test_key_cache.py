"""The authenticated-key cache: fewer database trips, bounded staleness."""

from __future__ import annotations

from darkbloom.server.auth.cache import KeyCache
from darkbloom.server.store import ApiKeyRecord

REC = ApiKeyRecord("key_1", "acct_1", "dbk-abcdef", 0.0)


def test_hit_until_the_ttl_then_miss() -> None:
    cache = KeyCache(ttl_s=10)
    cache.put("h", REC, now=100.0)
    assert cache.get("h", now=109.9) == REC
    assert cache.get("h", now=110.0) is None  # a revoked key stops working within the TTL
    assert cache.get("other", now=100.0) is None


def test_last_used_is_written_at_most_once_per_interval() -> None:
    cache = KeyCache(touch_every_s=60)
    assert cache.should_touch("key_1", 0.0)
    assert not cache.should_touch("key_1", 59.0)
    assert cache.should_touch("key_1", 60.0)


def test_least_recently_used_is_evicted() -> None:
    cache = KeyCache(max_entries=2)
    cache.put("a", REC, 0.0)
    cache.put("b", REC, 0.0)
    cache.get("a", 1.0)
    cache.put("c", REC, 1.0)
    assert cache.get("b", 1.0) is None and cache.get("a", 1.0) == REC and cache.get("c", 1.0) == REC
