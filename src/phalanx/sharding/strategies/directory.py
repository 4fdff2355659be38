"""Directory sharding, ``"directory"``: an explicit ``key -> shard`` table, cached by clients.

The guide lists the directory's costs: a lookup per query, a central bottleneck, a single
point of failure. Here is how each is answered:

* **Lookup overhead**: each client keeps a cache (at most ``cache_keys_max`` keys, least
  recently used evicted) tagged with the store version it reflects; a cached key costs a dict
  lookup.
* **Bottleneck**: the store is read only on a cache miss and on refresh, and refresh reads
  only the rows changed since the cache's version (:meth:`DirectoryStrategy.refresh`).
* **Single point of failure**: the store is SQLite (one machine) or PostgreSQL (replicated
  with its own tools), and while it is down cached keys keep routing; only uncached keys fail,
  with :class:`~phalanx.sharding.errors.DirectoryUnavailable`.

Staleness: a cached entry can be out of date after a key moves. Moving a key is: copy its
rows, :meth:`DirectoryStrategy.assign` it, publish the next :class:`~phalanx.sharding.ShardMap`
version (same strategy, version + 1), and fence the source shard at that version. A query
routed by the stale entry then fails with :class:`~phalanx.sharding.errors.StaleShardMap`; the
router reloads the map, calls :meth:`refresh` (keeping its cache and store connection), and
routes again.

Keys never assigned are placed by ``placement`` (a jump hash over the shards by default) and
the placement is written to the store, first writer wins. ``with_shards`` shares the store
and the cache, and changes only where new keys are placed; keys assigned to a shard that is
no longer in the set are answered by the placement strategy (without writing) until a
rebalance reassigns them.
"""

from __future__ import annotations

import sqlite3
import sys
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from phalanx.sharding.directory_store import DirectoryStore, open_directory_store
from phalanx.sharding.errors import DirectoryUnavailable
from phalanx.sharding.keys import Key, key_bytes
from phalanx.sharding.strategies.base import Strategy, check_shards, merged_order
from phalanx.sharding.strategies.hashing import JumpStrategy

__all__ = ["CACHE_KEYS_MAX_DEFAULT", "DirectoryCache", "DirectoryStrategy"]

#: Keys one client caches unless told otherwise.
CACHE_KEYS_MAX_DEFAULT: Final = 1_000_000
#: Change batches one refresh reads at most (each up to CHANGES_BATCH_MAX rows).
REFRESH_BATCHES_MAX: Final = 1_000


def _store_errors() -> tuple[type[BaseException], ...]:
    psycopg = sys.modules.get("psycopg")  # loaded by a PostgreSQL store, if there is one
    if psycopg is None:
        return (OSError, sqlite3.Error)
    return (OSError, sqlite3.Error, psycopg.Error)


class DirectoryCache:
    """A bounded LRU of assignments, with the store version it reflects."""

    def __init__(self, keys_max: int) -> None:
        if not isinstance(keys_max, int) or keys_max < 1:
            raise ValueError(f"cache_keys_max: must be a positive int, got {keys_max!r}")
        self.keys_max = keys_max
        self.version = 0
        self.entries: OrderedDict[bytes, str] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.refreshes = 0

    def get(self, key: bytes) -> str | None:
        shard = self.entries.get(key)
        if shard is not None:
            self.entries.move_to_end(key)
        return shard

    def put(self, key: bytes, shard: str | None) -> None:
        if shard is None:
            self.entries.pop(key, None)
            return
        self.entries[key] = shard
        self.entries.move_to_end(key)
        while len(self.entries) > self.keys_max:
            self.entries.popitem(last=False)


class DirectoryStrategy:
    """A cached view of a :class:`DirectoryStore`; see the module notes."""

    name = "directory"

    def __init__(
        self,
        shards: Iterable[str],
        *,
        store: DirectoryStore | str = "memory:",
        cache_keys_max: int = CACHE_KEYS_MAX_DEFAULT,
        _cache: DirectoryCache | None = None,
        _placement: JumpStrategy | None = None,
    ) -> None:
        self._shards = check_shards(shards)
        self._shard_set = frozenset(self._shards)
        self.store = open_directory_store(store) if isinstance(store, str) else store
        self.cache = _cache if _cache is not None else DirectoryCache(cache_keys_max)
        self._placement = _placement if _placement is not None else JumpStrategy(self._shards)
        self._errors = _store_errors()

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def shard_for(self, key: Key) -> str:
        raw = key_bytes(key)
        cache = self.cache
        shard = cache.get(raw)
        if shard is None:
            cache.misses += 1
            shard = self._fetch(raw)
        else:
            cache.hits += 1
        if shard not in self._shard_set:
            return self._placement.shard_for(raw)
        return shard

    def _fetch(self, raw: bytes) -> str:
        try:
            _, shard = self.store.lookup(raw)
            if shard is None:
                shard = self.store.assign(raw, self._placement.shard_for(raw), only_if_absent=True)
        except self._errors as exc:
            raise DirectoryUnavailable(
                f"directory store {self.store.url!r} failed and the key is not cached: {exc}"
            ) from exc
        if shard is None:  # pragma: no cover - assign with a shard never returns None
            shard = self._placement.shard_for(raw)
        self.cache.put(raw, shard)
        return shard

    def assign(self, key: Key, shard: str) -> None:
        """Write ``key -> shard`` to the store and this cache (used by moves)."""
        raw = key_bytes(key)
        try:
            self.store.assign(raw, shard)
        except self._errors as exc:
            raise DirectoryUnavailable(f"directory store {self.store.url!r} failed: {exc}") from exc
        self.cache.put(raw, shard)

    def refresh(self) -> int:
        """Apply every store change since the cache's version; returns rows applied."""
        applied = 0
        cache = self.cache
        try:
            for _ in range(REFRESH_BATCHES_MAX):
                rows = self.store.changes(cache.version)
                if not rows:
                    break
                for version, raw, shard in rows:
                    # Only keys already cached are updated: a refresh must not fill the cache.
                    if raw in cache.entries or shard is None:
                        cache.put(raw, shard)
                    cache.version = version
                    applied += 1
        except self._errors as exc:
            raise DirectoryUnavailable(f"directory store {self.store.url!r} failed: {exc}") from exc
        cache.refreshes += 1
        return applied

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        order = merged_order(self._shards, new_shards)
        return DirectoryStrategy(
            order,
            store=self.store,
            _cache=self.cache,
            _placement=self._placement.with_shards(order),
        )

    def options(self) -> dict[str, Any]:
        return {"store": self.store.url, "cache_keys_max": self.cache.keys_max}

    def __repr__(self) -> str:
        return f"DirectoryStrategy(shards={len(self._shards)}, store={self.store.url!r})"
