"""A leader cut off from the majority: it refuses quickly and clearly, never answers stale,
and catches up by itself once the partition heals."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_cluster import cluster, leader_of, until
from phalanx.errors import Indeterminate, NoQuorum, NotLeader, Timeout
from phalanx.kv import Range


async def test_isolated_leader_refuses_then_catches_up(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1, 2, 3), transfer_on_close=False) as nodes:
        old = await leader_of(nodes)
        await old.put(b"k", b"before")
        majority = {i: n for i, n in nodes.items() if n is not old}

        def cut(isolated: bool) -> None:
            for node in nodes.values():
                if isolated:
                    node.faults.isolate([old.id] if node is not old else majority)
                else:
                    node.faults.heal()

        cut(isolated=True)
        # The write proposed on the cut-off leader cannot commit: it ends INDETERMINATE
        # once the leader steps down (check-quorum), not with a success.
        with pytest.raises((Indeterminate, Timeout)):
            await old.put(b"k", b"lost?", timeout_s=5)
        # From then on it refuses at once, and reads refuse instead of answering stale.
        with pytest.raises(NoQuorum):
            await old.put(b"k", b"refused")
        new = await leader_of(majority)
        await new.put(b"k", b"after")
        with pytest.raises(NoQuorum):
            await old.get(b"k")
        stale = await old.read(Range(b"k"), linearizable=False)
        assert stale.kvs[0].value in (b"before", b"lost?")
        with pytest.raises((NotLeader, NoQuorum)):
            await old.put(b"k", b"still refused")

        cut(isolated=False)
        await until(lambda: old.leader_id == new.id, "the old leader to follow the new one")
        await until(
            lambda: old.store.applied_index >= new.store.applied_index, "the old leader to catch up"
        )
        assert await old.get(b"k") == b"after"
        assert old.faults.dropped_out > 0
