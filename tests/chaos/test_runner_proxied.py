"""A chaos cluster whose Raft traffic passes through the fault proxy: the proxy is really in
the path (its counters move, a black hole in front of the leader costs it the leadership,
resets are counted), and a run under the byte-stream faults comes out valid."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from phalanx.chaos.cluster import ChaosCluster, _http_json
from phalanx.chaos.history import read_jsonl
from phalanx.chaos.nemesis import NEMESIS_PROCESS, PROXY_KINDS
from phalanx.chaos.runner import RunOptions, run_chaos
from phalanx.chaos.verdict import Verdict

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")

WAIT_S = 20.0


async def _statistics(cluster: ChaosCluster, node: int) -> dict[str, Any]:
    status, answer = await _http_json(
        cluster.proxy_admin, "GET", f"/proxies/peer-{node}/statistics"
    )
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


async def _until_leader_is_not(cluster: ChaosCluster, old: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        leader = await cluster.leader()
        if leader is not None and leader != old:
            return leader
        await asyncio.sleep(0.1)
    raise AssertionError(f"node {old} still leads after {WAIT_S} s")


async def test_raft_traffic_passes_through_the_proxies(tmp_path: Path) -> None:
    async with ChaosCluster(tmp_path, 3, proxied=True) as cluster:
        leader = await cluster.wait_leader(WAIT_S)
        assert all(cluster.peer_advertised[i] != cluster.peer[i] for i in cluster.ids)
        assert f"{leader}=127.0.0.1:{cluster.peer_advertised[leader][1]}/" in cluster.spec
        # Every member's inbound connections are the proxy's: its followers dial in.
        follower = next(i for i in cluster.ids if i != leader)
        before = await _statistics(cluster, follower)
        assert before["connections_accepted"] >= 1

        # Silence every connection into the leader's peer port: it hears no follower, so
        # check-quorum makes it step down, and the followers elect another leader.
        for stream in ("upstream", "downstream"):
            toxic = {"type": "timeout", "stream": stream, "attributes": {"timeout": 0}}
            await cluster.add_toxic(leader, toxic)
        assert await _until_leader_is_not(cluster, leader) != leader
        assert await cluster.reset_proxies()

        # Resets: every connection to one member is reset as soon as it carries data.
        target = next(i for i in cluster.ids if i != leader)
        await cluster.add_toxic(
            target, {"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 0}}
        )
        deadline = time.monotonic() + WAIT_S
        while (await _statistics(cluster, target))["connections_reset"] == 0:
            assert time.monotonic() < deadline, "no connection was reset"
            await asyncio.sleep(0.1)
        assert await cluster.reset_proxies()
        assert (await _statistics(cluster, target))["bytes_out_upstream"] > before[
            "bytes_out_upstream"
        ]


async def test_a_toxic_for_an_unknown_member_is_refused(tmp_path: Path) -> None:
    async with ChaosCluster(tmp_path, 1, proxied=True) as cluster:
        await cluster.wait_leader(WAIT_S)
        with pytest.raises(Exception, match="peer-7"):
            await cluster.add_toxic(7, {"type": "timeout", "attributes": {"timeout": 0}})
        with pytest.raises(Exception, match="bogus"):
            await cluster.add_toxic(1, {"type": "bogus"})


def test_a_run_under_byte_stream_faults_is_valid(tmp_path: Path) -> None:
    options = RunOptions(
        nodes=3,
        workload="register",
        nemesis=list(PROXY_KINDS),
        time_limit_s=10.0,
        seed=5,
        concurrency=4,
        rate_hz=60.0,
        recovery_s=1.0,
        fault_s=(1.0, 2.0),
        quiet_s=(0.5, 1.0),
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.VALID, result.checker.results
    assert result.nemesis_applied >= 2
    faults = read_jsonl(tmp_path / "nemesis.jsonl")
    started = {op.f.removeprefix("start-") for op in faults if op.f.startswith("start-")}
    assert started <= set(PROXY_KINDS)
    assert all(op.process == NEMESIS_PROCESS for op in faults)
    assert (tmp_path / "cluster" / "proxy.log").read_text().count("listening on") == 4
