"""Where the current :class:`~phalanx.sharding.ShardMap` is published.

Routers load it (and reload it when a shard says their map is stale); the rebalancer and the
CLI publish the next version with :meth:`MapStore.publish`, a compare-and-set on the version:
only ``current.version + 1`` is accepted, so two concurrent changes cannot both win.

:class:`FileMapStore` keeps the map as a JSON file replaced atomically (write a temporary
file, fsync, rename); :class:`MemoryMapStore` is the in-process twin.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from phalanx.errors import Conflict
from phalanx.sharding.shardmap import ShardMap

__all__ = ["FileMapStore", "MapStore", "MemoryMapStore"]


@runtime_checkable
class MapStore(Protocol):
    def load(self) -> ShardMap: ...

    def publish(self, shard_map: ShardMap) -> None:
        """Store ``shard_map`` if it is exactly the next version; :class:`Conflict` if not."""
        ...


def _check_next(current: ShardMap | None, new: ShardMap) -> None:
    expected = 1 if current is None else current.version + 1
    if new.version != expected:
        raise Conflict(f"shard map: publishing version {new.version}, expected {expected}")


class MemoryMapStore:
    def __init__(self, shard_map: ShardMap) -> None:
        self._map = shard_map
        self._lock = threading.Lock()

    def load(self) -> ShardMap:
        return self._map

    def publish(self, shard_map: ShardMap) -> None:
        with self._lock:
            _check_next(self._map, shard_map)
            self._map = shard_map

    async def aload(self) -> ShardMap:
        return self.load()


class FileMapStore:
    """The map in a JSON file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> ShardMap:
        return ShardMap.from_json(self.path.read_bytes())

    def create(self, shard_map: ShardMap) -> None:
        """Write the first map; :class:`Conflict` when one exists."""
        with self._lock:
            if self.path.exists():
                raise Conflict(f"shard map {self.path} already exists")
            self._write(shard_map)

    def publish(self, shard_map: ShardMap) -> None:
        with self._lock:
            _check_next(self.load() if self.path.exists() else None, shard_map)
            self._write(shard_map)

    def _write(self, shard_map: ShardMap) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(shard_map.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)

    async def aload(self) -> ShardMap:
        return await asyncio.to_thread(self.load)
