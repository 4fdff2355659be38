"""SQLite as a participant: prepare by redo record, replay after a crash, exactly once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from phalanx.txn.twopc import (
    Coordinator,
    Decision,
    Gid,
    MemoryBranch,
    MemoryParticipant,
    SqliteBranch,
    SqliteDecisionLog,
    SqliteParticipant,
    TransactionAborted,
)

GID = Gid("c1", 1, 1).branch("s")


@pytest.fixture
def participant(tmp_path: Path) -> SqliteParticipant:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, qty INT CHECK (qty >= 0))")
        conn.execute("INSERT INTO stock VALUES ('apple', 3)")
    return SqliteParticipant("s", path)


def qty(participant: SqliteParticipant) -> int:
    with sqlite3.connect(participant.path) as conn:
        return int(conn.execute("SELECT qty FROM stock").fetchone()[0])


def test_with_a_memory_participant_commit_and_abort(
    participant: SqliteParticipant, tmp_path: Path
) -> None:
    memory = MemoryParticipant("m")
    with (
        SqliteDecisionLog(tmp_path / "log.db") as log,
        Coordinator("c1", log, [participant, memory]) as coordinator,
    ):
        for vote_no, expected in ((False, 2), (True, 2)):
            memory.vote_no = vote_no
            with coordinator.begin() as txn:
                s, m = txn.enlist("s"), txn.enlist("m")
                assert isinstance(s, SqliteBranch)
                assert isinstance(m, MemoryBranch)
                s.execute("UPDATE stock SET qty = qty - 1 WHERE item = ?", ("apple",))
                m.put("reserved", "apple")
                if vote_no:
                    with pytest.raises(TransactionAborted):
                        txn.commit()
                else:
                    txn.commit()
            assert qty(participant) == expected
    assert participant.prepared() == []
    participant.close()


def test_a_prepared_branch_survives_its_process_and_replays_once(
    participant: SqliteParticipant,
) -> None:
    branch = participant.begin(GID)
    branch.execute("UPDATE stock SET qty = qty - 2 WHERE item = ?", ("apple",))
    assert branch.query("SELECT qty FROM stock") == [(1,)]
    branch.prepare()
    branch.close()  # the process "dies": SQLite rolls the open work back
    assert qty(participant) == 3
    assert [p.gid for p in participant.prepared()] == [GID]
    participant.commit_prepared(GID)
    participant.commit_prepared(GID)  # again: unknown now, nothing happens
    assert qty(participant) == 1
    assert participant.prepared() == []
    participant.close()


def test_a_crash_between_commit_and_cleanup_does_not_apply_twice(
    participant: SqliteParticipant,
) -> None:
    branch = participant.begin(GID)
    branch.execute("UPDATE stock SET qty = qty - 1 WHERE item = ?", ("apple",))
    branch.prepare()
    # What finish(COMMIT) does up to the crash: the work and the applied row commit ...
    conn = branch._conn
    conn.execute("INSERT INTO twopc_applied VALUES (?, 0)", (GID,))
    conn.execute("COMMIT")
    branch.close()  # ... and the process dies before deleting the redo record.
    participant.commit_prepared(GID)  # recovery sees the applied row: no replay
    assert qty(participant) == 2
    assert participant.prepared() == []
    participant.close()


def test_rollback_discards_and_prepare_holds_the_write_lock(
    participant: SqliteParticipant,
) -> None:
    branch = participant.begin(GID)
    branch.execute("UPDATE stock SET qty = 0")
    branch.prepare()
    other = sqlite3.connect(participant.path, timeout=0.01)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("UPDATE stock SET qty = 99")
    other.close()
    branch.finish(Decision.ABORT)
    branch.close()
    assert qty(participant) == 3
    assert participant.prepared() == []
    participant.rollback_prepared(GID)  # unknown: fine
    participant.close()


def test_parameters_must_be_replayable(participant: SqliteParticipant) -> None:
    branch = participant.begin(GID)
    with pytest.raises(TypeError, match="only None"):
        branch.execute("UPDATE stock SET qty = ?", ([1],))  # type: ignore[list-item]
    branch.finish(Decision.ABORT)
    branch.close()
    participant.close()


def test_a_replay_that_conflicts_stays_prepared_and_is_reported(
    participant: SqliteParticipant, tmp_path: Path
) -> None:
    """The documented limit: after the branch's process died, another writer changed what
    it touched, so the replay fails; recovery reports it on every pass, nothing is lost."""
    with sqlite3.connect(participant.path) as conn:
        conn.execute("CREATE TABLE once (k TEXT PRIMARY KEY)")
    conn.close()
    gid = Gid("c1", 1, 7)
    branch = participant.begin(gid.branch("s"))
    branch.execute("INSERT INTO once VALUES ('x')")
    branch.prepare()
    branch.close()  # the process dies: the lock is gone with it
    with sqlite3.connect(participant.path) as other:
        other.execute("INSERT INTO once VALUES ('x')")  # another writer gets in first
    other.close()
    with SqliteDecisionLog(tmp_path / "log.db") as log:
        log.decide(gid, Decision.COMMIT, ("s",), now_s=0.0)
        with Coordinator("c1", log, [participant]) as coordinator:
            for _ in range(2):
                report = coordinator.recover()
                assert len(report.errors) == 1
                assert "IntegrityError" in report.errors[0]
        assert [r.gid for r in log.unfinished("c1")] == [gid]
    assert [p.gid for p in participant.prepared()] == [gid.branch("s")]
    participant.close()
