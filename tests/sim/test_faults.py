"""The fault vocabulary and the schedules a seed generates."""

import random

import pytest

from phalanx.sim.faults import (
    CATEGORIES,
    NEMESES,
    FaultKind,
    generate_schedule,
    parse_categories,
)

NODES = (1, 2, 3, 4, 5)
STARTS = {
    FaultKind.HEAL: set(CATEGORIES["partition"]),
    FaultKind.CLEAN: {FaultKind.LOSSY},
    FaultKind.RESTART: {*CATEGORIES["crash"], FaultKind.FIGURE8, FaultKind.UNSYNCED_VOTE},
    FaultKind.FAST_DISK: {FaultKind.SLOW_DISK},
    FaultKind.UNSKEW: {FaultKind.SKEW},
}


def test_parse_categories() -> None:
    assert parse_categories("all") == frozenset(CATEGORIES)
    assert parse_categories("none") == frozenset()
    assert parse_categories("crash, partition") == {"crash", "partition"}
    with pytest.raises(ValueError, match="unknown fault category 'quake'"):
        parse_categories("quake")


def test_same_seed_same_schedule() -> None:
    a = generate_schedule(random.Random(9), NODES, CATEGORIES, 20_000_000)
    b = generate_schedule(random.Random(9), NODES, CATEGORIES, 20_000_000)
    c = generate_schedule(random.Random(10), NODES, CATEGORIES, 20_000_000)
    assert a == b
    assert a != c


@pytest.mark.parametrize("seed", range(20))
def test_schedules_are_ordered_bounded_and_end_healed(seed: int) -> None:
    phase = 15_000_000
    faults = generate_schedule(random.Random(seed), NODES, CATEGORIES, phase)
    times = [f.at_us for f in faults]
    assert times == sorted(times)
    assert times[-1] == phase
    assert faults[-1].kind is FaultKind.HEAL_ALL
    assert all(0 <= t <= phase for t in times)
    # Every ending fault closes a fault of its category that was started before it.
    open_kinds: list[FaultKind] = []
    for fault in faults[:-1]:
        if fault.kind in STARTS:
            started = [k for k in open_kinds if k in STARTS[fault.kind]]
            assert started, f"{fault.kind} without a matching start"
            open_kinds.remove(started[0])
        elif fault.kind not in (FaultKind.TRANSFER, FaultKind.MEMBERSHIP):
            open_kinds.append(fault.kind)


def test_only_chosen_categories_appear() -> None:
    faults = generate_schedule(random.Random(1), NODES, {"crash"}, 30_000_000)
    kinds = {f.kind for f in faults}
    assert kinds <= {*CATEGORIES["crash"], FaultKind.RESTART, FaultKind.HEAL_ALL}
    assert kinds & set(CATEGORIES["crash"])
    assert [f.kind for f in generate_schedule(random.Random(1), NODES, (), 5_000_000)] == [
        FaultKind.HEAL_ALL
    ]


def test_fault_shapes() -> None:
    faults = generate_schedule(random.Random(3), NODES, {"partition", "crash"}, 60_000_000)
    for fault in faults:
        if fault.kind is FaultKind.HALVES:
            left, right = fault.groups
            assert left
            assert right
            assert sorted(left + right) == list(NODES)
        elif fault.kind is FaultKind.BRIDGE:
            left, (bridge,), right = fault.groups
            assert sorted((*left, bridge, *right)) == list(NODES)
        elif fault.kind is FaultKind.CRASH:
            assert 1 <= len(fault.nodes) <= 2  # a minority
    assert "isolate" in faults[0].describe() or faults[0].describe()


def test_targeted_faults_are_drawn_with_longer_windows() -> None:
    faults = generate_schedule(random.Random(2), NODES, {"figure8", "unsynced-vote"}, 60_000_000)
    starts = [f for f in faults if f.kind in NEMESES]
    assert {f.kind for f in starts} == NEMESES
    for start in starts:
        end = next(f for f in faults if f.at_us > start.at_us and f.kind is FaultKind.RESTART)
        assert end.at_us - start.at_us >= 4_000_000 or end.at_us == 60_000_000
    everything = generate_schedule(random.Random(2), NODES, parse_categories("all"), 200_000_000)
    assert {f.kind for f in everything} >= NEMESES
