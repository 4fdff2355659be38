"""The decision log on Phalanx's Raft-replicated KV: a real in-process 3-node cluster.

``ClientCasStore`` adapts ``phalanx.client.Client`` to the log's four operations, each one
KV transaction (one consensus round). The coordinator runs against it, an inquiry through a
second client races the coordinator for the decision, and the leader is stopped between
the decision and recovery: the decision survives on the remaining majority.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from node_cluster import cluster, endpoint, leader_of
from phalanx.client import Client
from phalanx.kv.commands import Compare, CompareOp, CompareTarget, DeleteRange, Put, Range
from phalanx.kv.responses import RangeResult
from phalanx.txn.twopc import Coordinator, Decision, Gid, MemoryBranch, MemoryParticipant
from phalanx.txn.twopc.log_kv import KvDecisionLog


class ClientCasStore:
    """``CasStore`` over ``phalanx.client.Client`` (linearizable reads through the leader)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def put_if_absent(self, key: bytes, value: bytes) -> bytes:
        absent = Compare(key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, 0)
        result = self.client.txn([absent], [Put(key, value)], [Range(key)])
        if result.succeeded:
            return value
        found = result.responses[0]
        assert isinstance(found, RangeResult)
        return found.kvs[0].value

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        got = self.client.range(key)
        if not got.kvs:
            return None, 0
        return got.kvs[0].value, got.kvs[0].mod_revision

    def compare_and_set(self, key: bytes, version: int, value: bytes | None) -> bool:
        target = CompareTarget.MOD_REVISION if version else CompareTarget.CREATE_REVISION
        same = Compare(key, target, CompareOp.EQUAL, version)
        write = DeleteRange(key) if value is None else Put(key, value)
        return self.client.txn([same], [write]).succeeded

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        got = self.client.range(prefix, prefix=True, limit=limit)
        return [(kv.key, kv.value) for kv in got.kvs]


async def test_decisions_on_the_replicated_kv_survive_the_leader(tmp_path: Path) -> None:
    async with cluster(tmp_path, transfer_on_close=False) as nodes:
        leader = await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]
        a, b = MemoryParticipant("a"), MemoryParticipant("b")

        def commit_one_and_race_an_inquiry() -> Gid:
            with Client(endpoints) as client, Client(endpoints) as other:
                log = KvDecisionLog(ClientCasStore(client))
                inquirer = KvDecisionLog(ClientCasStore(other))
                with Coordinator("c1", log, [a, b]) as coordinator:
                    txn = coordinator.begin()
                    for name in ("a", "b"):
                        branch = txn.enlist(name)
                        assert isinstance(branch, MemoryBranch)
                        branch.put("k", 1)
                    txn.commit()
                    # An inquiry about an undecided transaction aborts it for good ...
                    late = Gid("c1", coordinator.incarnation, 99)
                    assert inquirer.decide(late, Decision.ABORT, (), now_s=1.0) is Decision.ABORT
                    assert log.decide(late, Decision.COMMIT, ("a",), now_s=2.0) is Decision.ABORT
                    # ... and a logged commit is what later inquiries get.
                    undone = Gid("c1", coordinator.incarnation, 100)
                    log.decide(undone, Decision.COMMIT, ("a", "b"), now_s=3.0)
                    assert inquirer.decide(undone, Decision.ABORT, (), now_s=4.0) is (
                        Decision.COMMIT
                    )
                    return undone

        undone = await asyncio.to_thread(commit_one_and_race_an_inquiry)
        assert a.data == {"k": 1} == b.data
        await leader.aclose()  # the leader's machine is gone; a majority remains
        survivors = {i: n for i, n in nodes.items() if n is not leader}
        await leader_of(survivors)
        alive = [endpoint(n) for n in survivors.values()]

        def recover() -> list[str]:
            with Client(alive) as client:
                log = KvDecisionLog(ClientCasStore(client))
                assert [r.gid for r in log.unfinished("c1")] == [undone]
                with Coordinator("c1", log, [a, b]) as restarted:
                    report = restarted.recover()
                    assert report.errors == []
                assert log.unfinished("c1") == []
                return report.committed

        committed = await asyncio.to_thread(recover)
        assert sorted(committed) == [undone.branch("a"), undone.branch("b")]
