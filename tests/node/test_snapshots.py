"""Snapshots from the node: the log is compacted behind them, a lagging follower catches up
from a snapshot, and a restart restores snapshot plus log."""

from __future__ import annotations

from pathlib import Path

from node_cluster import addresses, leader_of, make_node, until
from phalanx.node import RaftNode


async def test_compaction_snapshot_catch_up_and_restart(tmp_path: Path) -> None:
    ids = (1, 2, 3)
    peer, client = addresses(ids)
    options = {"snapshot_entries": 50, "snapshot_keep_entries": 10, "transfer_on_close": False}
    nodes: dict[int, RaftNode] = {i: make_node(i, tmp_path, peer, client, **options) for i in ids}
    for node in nodes.values():
        await node.start()
    try:
        leader = await leader_of(nodes)
        lagging = next(n for n in nodes.values() if n is not leader)
        await lagging.aclose()
        for i in range(300):
            await leader.put(b"key%03d" % i, b"value%d" % i)
        # The leader compacted its log: the entries the stopped follower lacks are gone.
        assert leader.status().commit > 300
        assert leader._core_storage().first_index() > 10

        nodes[lagging.id] = make_node(lagging.id, tmp_path, peer, client, **options)
        await nodes[lagging.id].start()
        revived = nodes[lagging.id]
        await until(
            lambda: revived.store.applied_index >= leader.store.applied_index,
            "the lagging follower to catch up from a snapshot",
        )
        assert revived.store.get(b"key299").kvs[0].value == b"value299"
        assert revived.store.keys() == 300
    finally:
        for node in nodes.values():
            await node.aclose()

    # A full restart: every node restores its snapshot and replays the rest of its log.
    restarted = {i: make_node(i, tmp_path, peer, client, **options) for i in ids}
    for node in restarted.values():
        await node.start()
    try:
        leader = await leader_of(restarted)
        assert await leader.get(b"key150") == b"value150"
        await until(
            lambda: all(n.store.keys() == 300 for n in restarted.values()),
            "every node to hold every key again",
        )
    finally:
        for node in restarted.values():
            await node.aclose()
