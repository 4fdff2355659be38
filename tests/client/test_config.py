"""Typed configuration documents and watch-driven reload against a real 3-node cluster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from node_cluster import cluster, endpoint, leader_of
from phalanx.client import AsyncClient
from phalanx.client.config import (
    ConfigStore,
    InvalidConfig,
    Reloader,
    decode_doc,
    encode_doc,
)
from phalanx.errors import BadRequest

WAIT_S = 10.0


class Limits(msgspec.Struct, frozen=True):
    rate_per_s: int
    burst: int = 10

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")


@dataclass(frozen=True)
class Feature:
    schema_version: ClassVar[int] = 2
    name: str
    enabled: bool


def test_documents_round_trip_and_invalid_ones_are_refused() -> None:
    assert decode_doc(encode_doc(Limits(5)), Limits) == Limits(5)
    assert decode_doc(encode_doc(Feature("x", True)), Feature) == Feature("x", True)
    with pytest.raises(InvalidConfig, match="schema version 1"):
        decode_doc(encode_doc(Limits(5)), Feature)  # a v1 envelope read as a v2 type
    with pytest.raises(InvalidConfig, match="rate_per_s"):
        decode_doc(b'{"schema": 1, "doc": {"rate_per_s": -1}}', Limits)
    with pytest.raises(InvalidConfig, match="valid Limits"):
        decode_doc(b'{"schema": 1, "doc": {"rate_per_s": "fast"}}', Limits)
    with pytest.raises(InvalidConfig, match="envelope"):
        decode_doc(b"rate_per_s=5", Limits)
    with pytest.raises(BadRequest):
        encode_doc({"rate_per_s": 5})


async def test_reloader_applies_valid_changes_and_skips_invalid_ones(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            store = ConfigStore(client)
            assert await store.get("limits", Limits) is None
            await store.put("limits", Limits(100))
            assert await store.get("limits", Limits) == Limits(100)

            seen: list[Limits] = []

            async def apply(doc: Limits) -> None:
                if doc.burst == 666:
                    raise RuntimeError("the application refuses this one")
                seen.append(doc)

            async with Reloader(store, "limits", Limits, apply) as reloader:
                async with asyncio.timeout(WAIT_S):
                    await reloader.wait_revision(1)
                    assert reloader.current == Limits(100)
                    await reloader.wait_revision(await store.put("limits", Limits(200, 5)))
                    assert reloader.current == Limits(200, 5)

                    key = store.key("limits")
                    for bad in (
                        b"{truncated",
                        b'{"schema": 1, "doc": {"rate_per_s": 0}}',
                        b'{"schema": 3, "doc": {"rate_per_s": 7}}',
                    ):
                        await reloader.wait_revision(await client.put(key, bad))
                    with pytest.raises(InvalidConfig):
                        await store.get("limits", Limits)
                    await reloader.wait_revision(await store.put("limits", Limits(1, 666)))
                    await client.delete(key)  # a deletion keeps the last good document
                    await reloader.wait_revision(await store.put("limits", Limits(300)))
                    assert reloader.current == Limits(300)
            assert seen == [Limits(100), Limits(200, 5), Limits(300)]
            stats = reloader.statistics()
            assert (stats["applied"], stats["invalid"], stats["rejected_by_callback"]) == (3, 3, 1)


async def test_watch_yields_only_valid_documents(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            store = ConfigStore(client, prefix=b"/app/config/")
            await store.put("flags", Feature("dark-mode", False))
            docs: list[Feature] = []
            started = asyncio.Event()

            async def watch() -> None:
                async for doc in store.watch("flags", Feature):
                    docs.append(doc)
                    started.set()
                    if len(docs) == 3:
                        return

            async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as group:
                group.create_task(watch())
                await started.wait()  # the watch has read the current version
                await client.put(store.key("flags"), b'{"schema": 2, "doc": {"name": 1}}')
                await store.put("flags", Feature("dark-mode", True))
                await store.put("flags", Feature("search", True))
            assert docs == [
                Feature("dark-mode", False),
                Feature("dark-mode", True),
                Feature("search", True),
            ]
