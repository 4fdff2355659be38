"""Membership faults that replace a member: a follower removed for good and a new member,
with a new id from the cluster's spare slots, added and promoted in its place; later faults
that name the replaced member act on its replacement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phalanx.chaos.cluster import SPARES_MAX, ChaosCluster, ClusterFaultError
from phalanx.chaos.history import Recorder, read_jsonl
from phalanx.chaos.nemesis import Nemesis, plan
from phalanx.chaos.runner import RunOptions, run_chaos
from phalanx.chaos.verdict import Verdict
from phalanx.client import AsyncClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")


def test_half_the_membership_windows_replace() -> None:
    windows = plan(5, ["membership"], time_limit_s=300, ids=(1, 2, 3))
    shapes = [w.shape for w in windows]
    assert set(shapes) == {"replace", "rejoin"}
    assert {w.describe() for w in windows} == {"membership replace", "membership rejoin"}


def test_spare_slots_have_addresses_and_run_out(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path, 3, spares=2)
    assert cluster.ids == (1, 2, 3)
    assert cluster.slots == (1, 2, 3, 4, 5)
    assert len({cluster.peer[i] for i in cluster.slots}) == 5
    assert "4=" not in cluster.spec
    assert cluster.take_spare() == 4
    cluster.replace_member(2, 4)
    assert cluster.ids == (1, 3, 4)
    assert [part.split("=")[0] for part in cluster.spec.split(",")] == ["1", "3", "4"]
    assert cluster.take_spare() == 5
    with pytest.raises(ClusterFaultError, match="no spare"):
        cluster.take_spare()
    with pytest.raises(ValueError, match="spares"):
        ChaosCluster(tmp_path, 5, spares=SPARES_MAX + 1)


def test_a_replaced_member_is_followed_by_later_faults(tmp_path: Path) -> None:
    nemesis = Nemesis(ChaosCluster(tmp_path, 3, spares=2), Recorder(lambda: 0))
    nemesis._replaced.update({2: 4, 4: 5})
    assert [nemesis._now(i) for i in (1, 2, 3, 4, 5)] == [1, 5, 3, 5, 5]


def test_a_run_with_members_replaced_is_valid(tmp_path: Path) -> None:
    options = RunOptions(
        nodes=3,
        workload="set",
        nemesis=["membership"],
        time_limit_s=10.0,
        seed=2,
        concurrency=4,
        rate_hz=60.0,
        recovery_s=1.0,
        fault_s=(1.5, 2.5),
        quiet_s=(0.5, 1.0),
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.VALID, result.checker.results
    assert result.error is None  # e.g. "after the heal: no leader": the cluster lost quorum
    faults = read_jsonl(tmp_path / "nemesis.jsonl")
    replaced = [
        op.output
        for op in faults
        if op.f == "stop-membership" and isinstance(op.output, dict) and "removed" in op.output
    ]
    assert replaced, [(op.f, op.outcome, op.output, op.error) for op in faults]
    assert all(r["node"] > options.nodes for r in replaced)


async def test_the_final_heal_adds_back_a_member_whose_removal_went_unrecorded(
    tmp_path: Path,
) -> None:
    """A removal that took effect although its answer was lost leaves the member running
    outside the cluster; the final heal finds it missing and adds it back as a voter."""
    async with ChaosCluster(tmp_path, 3) as cluster:
        leader = await cluster.wait_leader(20.0)
        follower = next(i for i in cluster.ids if i != leader)
        client = AsyncClient(cluster.endpoints(leader))
        try:
            await client.remove_member(follower)
        finally:
            await client.aclose()
        recorder = Recorder(lambda: 0)
        nemesis = Nemesis(cluster, recorder)
        await nemesis.heal()
        (heal,) = recorder.operations()
        assert heal.output["repaired"] == [follower], heal.output
        status = await cluster.status(await cluster.wait_leader(20.0))
        assert status is not None
        assert sorted(m.node_id for m in status.members if not m.learner) == [1, 2, 3]
