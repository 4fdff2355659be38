"""The coordinator driver with in-memory participants and both decision logs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import Indeterminate
from phalanx.txn.twopc import (
    Coordinator,
    Decision,
    DecisionLog,
    Gid,
    MemoryBranch,
    MemoryDecisionLog,
    MemoryParticipant,
    SqliteDecisionLog,
    TransactionAborted,
)


@pytest.fixture(params=["memory", "sqlite", "postgres", "kv"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DecisionLog]:
    if request.param == "memory":
        yield MemoryDecisionLog()
    elif request.param == "kv":
        from phalanx.txn.twopc.log_kv import KvDecisionLog, MemoryCasStore

        yield KvDecisionLog(MemoryCasStore())
    elif request.param == "sqlite":
        with SqliteDecisionLog(tmp_path / "decisions.db") as sqlite_log:
            yield sqlite_log
    else:
        from phalanx.txn.twopc.log_postgres import PostgresDecisionLog

        tpc = request.getfixturevalue("tpc")
        server = request.getfixturevalue("tpc_pair")[0]
        name = f"d{abs(hash(request.node.name)) % 10**8}"
        with PostgresDecisionLog(tpc.create_database(server, name)) as pg_log:
            yield pg_log


def transfer(coordinator: Coordinator, amount: int) -> None:
    txn = coordinator.begin()
    a = txn.enlist("a")
    b = txn.enlist("b")
    assert isinstance(a, MemoryBranch)
    assert isinstance(b, MemoryBranch)
    a.put("balance", -amount)
    b.put("balance", amount)
    txn.commit()


def test_commit_applies_everywhere_and_forgets(log: DecisionLog) -> None:
    a, b = MemoryParticipant("a"), MemoryParticipant("b")
    steps: list[str] = []
    with Coordinator("c1", log, [a, b], observer=steps.append) as coordinator:
        transfer(coordinator, 5)
        assert coordinator.statistics().committed == 1
        assert coordinator.statistics().active == 0
    assert a.data == {"balance": -5}
    assert b.data == {"balance": 5}
    assert a.prepared() == [] == b.prepared()
    assert log.unfinished("c1") == []
    assert steps[0] == "voting"
    assert sorted(steps[1:3]) == ["prepared:a", "prepared:b"]
    assert steps[3:] == ["decided:commit", "finished:a", "finished:b", "ended"]


def test_no_vote_aborts_everywhere(log: DecisionLog) -> None:
    a, b = MemoryParticipant("a"), MemoryParticipant("b")
    b.vote_no = True
    with Coordinator("c1", log, [a, b]) as coordinator:
        with pytest.raises(TransactionAborted, match="b voted no") as info:
            transfer(coordinator, 5)
        assert info.value.reason == "b voted no"
        assert coordinator.statistics().aborted == 1
    assert a.data == {} == b.data
    assert a.prepared() == [] == b.prepared()


def test_incarnations_keep_gids_unique_across_restarts(log: DecisionLog) -> None:
    a = MemoryParticipant("a")
    with Coordinator("c1", log, [a]) as first:
        gid_first = first.begin().gid
    with Coordinator("c1", log, [a]) as second:
        gid_second = second.begin().gid
    assert gid_first != gid_second
    assert gid_second.incarnation == gid_first.incarnation + 1


def test_prepare_timeout_aborts_and_rolls_back_a_late_prepare(log: DecisionLog) -> None:
    a, b = MemoryParticipant("a"), MemoryParticipant("b")
    gate = threading.Event()
    b.prepare_gate = gate
    with Coordinator("c1", log, [a, b], prepare_timeout_s=0.05) as coordinator:
        with pytest.raises(TransactionAborted, match="prepare timed out"):
            transfer(coordinator, 1)
        gate.set()  # b's prepare finishes after the abort ...
    # ... and is rolled back once it does (the pool was drained by close()).
    assert a.prepared() == [] == b.prepared()
    assert a.data == {} == b.data


def test_unreachable_participant_in_phase_two_is_finished_by_recovery(log: DecisionLog) -> None:
    a, b = MemoryParticipant("a"), MemoryParticipant("b")
    steps: list[str] = []

    def take_b_down(step: str) -> None:
        steps.append(step)
        if step == "decided:commit":
            b.down = True

    with Coordinator("c1", log, [a, b], observer=take_b_down) as coordinator:
        txn = coordinator.begin()
        branch = txn.enlist("b")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", 1)
        first = txn.enlist("a")
        assert isinstance(first, MemoryBranch)
        first.put("k", 1)
        result = txn.commit()
        assert result.pending == ("b",)
        assert a.data == {"k": 1}
        assert [r.gid for r in log.unfinished("c1")] == [result.gid]
        report = coordinator.recover()
        assert report.errors  # still down
        b.down = False
        report = coordinator.recover()
        assert report.errors == []
        assert sorted(report.committed) == [result.gid.branch("a"), result.gid.branch("b")]
        assert report.ended == 1
    assert b.data == {"k": 1}
    assert log.unfinished("c1") == []


def test_recovery_aborts_orphans_of_a_crashed_run(log: DecisionLog) -> None:
    """A coordinator that died between prepare and decision left branches prepared."""
    a, b = MemoryParticipant("a"), MemoryParticipant("b")
    orphan = Gid("c1", 1, 1)
    for participant in (a, b):
        branch = participant.begin(orphan.branch(participant.name))
        branch.put("x", 1)
        branch.prepare()
    other = Gid("c2", 1, 1).branch("a")  # another coordinator's: not ours to touch
    a.begin(other).prepare()
    with Coordinator("c1", log, [a, b]) as coordinator:
        report = coordinator.recover()
    assert sorted(report.rolled_back) == [orphan.branch("a"), orphan.branch("b")]
    assert [p.gid for p in a.prepared()] == [other]
    assert b.prepared() == []
    assert a.data == {} == b.data


def test_recovery_never_touches_a_transaction_in_flight(log: DecisionLog) -> None:
    a = MemoryParticipant("a")
    with Coordinator("c1", log, [a]) as coordinator:

        def recover_in_the_middle(step: str) -> None:
            if step == "prepared:a":
                assert coordinator.recover().rolled_back == []

        coordinator._observer = recover_in_the_middle
        txn = coordinator.begin()
        branch = txn.enlist("a")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", "v")
        txn.commit()
    assert a.data == {"k": "v"}


def test_an_unknown_log_outcome_is_indeterminate_and_recovery_settles_it() -> None:
    log = MemoryDecisionLog()
    a = MemoryParticipant("a")
    with Coordinator("c1", log, [a]) as coordinator:
        txn = coordinator.begin()
        branch = txn.enlist("a")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", 1)
        log.lose_next_decide = True  # commit written, reply lost: the abort retry reads it
        result = txn.commit()
        assert a.data == {"k": 1}
        assert result.pending == ()

        txn = coordinator.begin()
        branch = txn.enlist("a")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", 2)
        log.fail_next_decide = True  # nothing written: the retry writes abort and wins
        with pytest.raises(TransactionAborted):
            txn.commit()

        txn = coordinator.begin()
        branch = txn.enlist("a")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", 3)
        original = log.decide

        def broken(*args: object, **kwargs: object) -> Decision:
            raise OSError("disk gone")

        log.decide = broken  # type: ignore[method-assign]
        with pytest.raises(Indeterminate):
            txn.commit()
        assert len(a.prepared()) == 1
        log.decide = original  # type: ignore[method-assign]
        report = coordinator.recover()
    assert len(report.rolled_back) == 1
    assert a.data == {"k": 1}
    assert a.prepared() == []


def test_rollback_and_leaving_the_block_roll_back() -> None:
    a = MemoryParticipant("a")
    with Coordinator("c1", MemoryDecisionLog(), [a]) as coordinator:
        with coordinator.begin() as txn:
            branch = txn.enlist(a)
            assert isinstance(branch, MemoryBranch)
            branch.put("k", 1)
        assert coordinator.statistics().active == 0
        with pytest.raises(ValueError, match="not one of"):
            coordinator.begin().enlist("zz")
    assert a.data == {}


def test_sqlite_log_is_shared_between_processes_first_decision_wins(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    gid = Gid("c1", 1, 1)
    with SqliteDecisionLog(path) as one, SqliteDecisionLog(path) as two:
        assert one.decide(gid, Decision.ABORT, (), now_s=1.0) is Decision.ABORT
        assert two.decide(gid, Decision.COMMIT, ("a",), now_s=2.0) is Decision.ABORT
        assert one.outcome(gid) is Decision.ABORT
        assert two.unfinished("c1") == []
        other = Gid("c1", 1, 2)
        assert two.decide(other, Decision.COMMIT, ("a", "b"), now_s=3.0) is Decision.COMMIT
        [record] = one.unfinished("c1")
        assert record.participants == ("a", "b")
        assert one.prune(before_s=2.0) == 1
        assert two.outcome(gid) is None
        one.end(other)
        assert two.unfinished("c1") == []
        # end() writes without an fsync, then the decisions are FULL-synced again.
        assert one._conn.execute("PRAGMA synchronous").fetchone() == (2,)
        assert one.new_incarnation("c1") == 1
        assert two.new_incarnation("c1") == 2


def test_manual_clock_is_used_for_decision_times() -> None:
    clock = ManualClock(wall_start_s=5_000.0)
    log = MemoryDecisionLog()
    a = MemoryParticipant("a", clock=clock)
    with Coordinator("c1", log, [a], clock=clock) as coordinator:
        txn = coordinator.begin()
        branch = txn.enlist("a")
        assert isinstance(branch, MemoryBranch)
        branch.put("k", 1)
        a.down = False
        txn.commit()
    orphan = Gid("c1", 9, 9)
    a.begin(orphan.branch("a")).prepare()
    assert a.prepared()[0].prepared_at_s == 5_000.0
