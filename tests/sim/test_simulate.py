"""Seeded simulations of the real core across fault scenarios: safe, live and deterministic.

Every seed runs twice and both runs must produce the same trace hash (style.md #3). The
scenarios together run a few hundred seeds; each seed is kept short (a few virtual seconds of
faults, then recovery) so the whole file takes well under a minute.
"""

from __future__ import annotations

import pytest

from phalanx.sim.run import Result, settings_for, simulate

SCENARIOS = [
    # (name, nodes, faults, seeds, fault phase in virtual seconds)
    ("calm", 5, "none", 10, 3.0),
    ("partitions", 5, "partition", 40, 5.0),
    ("crashes", 5, "crash", 40, 5.0),
    ("lossy-network", 5, "network", 25, 5.0),
    ("slow-disks-and-clocks", 5, "disk,clock", 25, 5.0),
    ("transfers-and-membership", 5, "transfer,membership", 30, 6.0),
    ("three-nodes-all", 3, "all", 30, 5.0),
    ("all", 5, "all", 80, 6.0),
    ("seven-nodes-all", 7, "all", 10, 5.0),
]


def run_twice(seed: int, nodes: int, faults: str, duration_s: float) -> Result:
    settings = settings_for(nodes=nodes, faults=faults, duration_s=duration_s)
    first = simulate(seed, settings=settings)
    second = simulate(seed, settings=settings)
    assert first.trace_hash == second.trace_hash, f"seed {seed} is not deterministic"
    assert first.events == second.events
    assert first.history.to_jsonl() == second.history.to_jsonl()
    return first


@pytest.mark.parametrize(
    ("name", "nodes", "faults", "seeds", "duration_s"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_scenario(name: str, nodes: int, faults: str, seeds: int, duration_s: float) -> None:
    results = [run_twice(seed, nodes, faults, duration_s) for seed in range(seeds)]
    # Every run recovered after the last heal and did real work.
    assert all(r.liveness_s is not None for r in results)
    assert all(r.elections >= 1 for r in results)
    assert sum(r.commits for r in results) > seeds * 10
    assert sum(r.ops["ok"] for r in results) > seeds * 10
    if faults != "none":
        assert sum(r.faults_applied for r in results) > seeds
    # Different seeds take different paths.
    assert len({r.trace_hash for r in results}) == seeds


def test_faults_happen_and_outcomes_are_three_valued() -> None:
    results = [simulate(seed, faults="all", duration_s=8.0) for seed in range(20)]
    kinds = {f.kind.value for r in results for f in r.schedule}
    assert {"crash", "power-loss", "halves", "ring", "bridge", "lossy", "transfer"} <= kinds
    outcomes = {op.outcome.value for r in results for op in r.history if op.outcome}
    assert outcomes == {"ok", "fail", "info"}
    assert sum(r.network.lost for r in results) > 0
    assert sum(r.network.duplicated for r in results) > 0


def test_a_history_records_both_times_of_every_completed_op() -> None:
    result = simulate(5, faults="crash,partition", duration_s=5.0)
    ops = list(result.history)
    assert ops
    for op in ops:
        if op.outcome is not None:
            assert op.complete_us is not None
            assert op.complete_us >= op.invoke_us
        if op.f == "put":
            assert op.value is not None
    reads = [op for op in ops if op.f == "read" and op.outcome and op.outcome.value == "ok"]
    assert reads
    assert all(op.index > 0 for op in reads)


def test_settings_change_the_run_but_not_its_determinism() -> None:
    a = simulate(1, faults="all", duration_s=4.0, tick_us=50_000)
    b = simulate(1, faults="all", duration_s=4.0, tick_us=50_000)
    c = simulate(1, faults="all", duration_s=4.0)
    assert a.trace_hash == b.trace_hash
    assert a.trace_hash != c.trace_hash
