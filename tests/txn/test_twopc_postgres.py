"""PostgreSQL participants: real PREPARE TRANSACTION on two real servers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from phalanx.clock import ManualClock
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc import (
    Coordinator,
    Gid,
    ParticipantResolver,
    PostgresBranch,
    PostgresParticipant,
    SqliteDecisionLog,
    TransactionAborted,
)


@pytest.fixture
def participants(
    tpc: ModuleType, tpc_pair: tuple[Any, Any], request: pytest.FixtureRequest
) -> Iterator[tuple[PostgresParticipant, PostgresParticipant]]:
    name = f"t{abs(hash(request.node.name)) % 10**8}"
    made = []
    for label, server in zip(("a", "b"), tpc_pair, strict=True):
        dsn = tpc.create_database(server, name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id text PRIMARY KEY, balance int NOT NULL)")
            conn.execute("ALTER TABLE accounts ADD CHECK (balance >= 0)")
            conn.execute("INSERT INTO accounts VALUES ('x', 10)")
        made.append(PostgresParticipant(label, dsn))
    yield made[0], made[1]
    for participant in made:
        participant.close()


def balance(participant: PostgresParticipant) -> int:
    with participant.connect(autocommit=True) as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE id = 'x'").fetchone()
    assert row is not None
    return int(row[0])


def move(coordinator: Coordinator, amount: int) -> None:
    with coordinator.begin() as txn:
        a, b = txn.enlist("a"), txn.enlist("b")
        assert isinstance(a, PostgresBranch)
        assert isinstance(b, PostgresBranch)
        sql = "UPDATE accounts SET balance = balance + %s WHERE id = 'x'"
        a.connection.execute(sql, (-amount,))
        b.connection.execute(sql, (amount,))
        txn.commit()


def test_commit_and_constraint_abort(
    participants: tuple[PostgresParticipant, PostgresParticipant], tmp_path: Path
) -> None:
    a, b = participants
    with (
        SqliteDecisionLog(tmp_path / "log.db") as log,
        Coordinator("c1", log, [a, b]) as coordinator,
    ):
        move(coordinator, 4)
        assert (balance(a), balance(b)) == (6, 14)
        with pytest.raises(psycopg.errors.CheckViolation):
            move(coordinator, 7)  # a would go negative: the statement itself fails
        assert coordinator.statistics().active == 0
        assert (balance(a), balance(b)) == (6, 14)
        assert a.prepared() == [] == b.prepared()


def test_prepare_failure_is_a_no_vote(
    participants: tuple[PostgresParticipant, PostgresParticipant], tmp_path: Path
) -> None:
    a, b = participants
    with (
        SqliteDecisionLog(tmp_path / "log.db") as log,
        Coordinator("c1", log, [a, b]) as coordinator,
    ):
        txn = coordinator.begin()
        branch_a, branch_b = txn.enlist("a"), txn.enlist("b")
        assert isinstance(branch_a, PostgresBranch)
        assert isinstance(branch_b, PostgresBranch)
        branch_a.connection.execute("UPDATE accounts SET balance = 0")
        # A deferred constraint fails at PREPARE TRANSACTION time: b votes no.
        branch_b.connection.execute(
            "CREATE TABLE once (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )
        branch_b.connection.execute("INSERT INTO once VALUES (1), (1)")
        with pytest.raises(TransactionAborted, match="b voted no"):
            txn.commit()
    assert (balance(a), balance(b)) == (10, 10)
    assert a.prepared() == [] == b.prepared()


def test_phase_two_on_unknown_gid_is_done_and_prepared_lists_own_database(
    participants: tuple[PostgresParticipant, PostgresParticipant],
) -> None:
    a, _ = participants
    gid = Gid("c9", 1, 1).branch("a")
    a.commit_prepared(gid)  # never existed: no error
    a.rollback_prepared(gid)
    branch = a.begin(gid)
    branch.connection.execute("UPDATE accounts SET balance = 1")
    branch.prepare()
    branch.close()
    assert [p.gid for p in a.prepared()] == [gid]
    a.commit_prepared(gid)
    a.commit_prepared(gid)  # twice: still fine
    assert balance(a) == 1
    assert a.prepared() == []


def test_prepared_branches_survive_a_server_crash_and_the_participant_asks(
    participants: tuple[PostgresParticipant, PostgresParticipant],
    tpc: ModuleType,
    tpc_pair: tuple[Any, Any],
    tmp_path: Path,
) -> None:
    """The coordinator decided commit and died; b's server crashed too. b restarts, finds
    its prepared branch in pg_prepared_xacts and asks the coordinator's log."""
    _a, b = participants
    log = SqliteDecisionLog(tmp_path / "log.db")
    committed_gid = Gid("c1", 1, 1)
    undecided_gid = Gid("c1", 1, 2)
    for gid, row in ((committed_gid, "y"), (undecided_gid, "z")):
        branch = b.begin(gid.branch("b"))
        branch.connection.execute("INSERT INTO accounts VALUES (%s, 1)", (row,))
        branch.prepare()
        branch.close()
    log.decide(committed_gid, tpc_decision("commit"), ("a", "b"), now_s=0.0)
    tpc.crash(tpc_pair[1])
    tpc.restart(tpc_pair[1])
    assert sorted(p.gid for p in b.prepared()) == [
        committed_gid.branch("b"),
        undecided_gid.branch("b"),
    ]
    clock = ManualClock(wall_start_s=2_000_000_000.0)  # long after the prepares
    resolver = ParticipantResolver(
        b,
        {"c1": log},
        inquiry_after_s=30.0,
        backoff=Backoff(base_delay_s=1.0, max_delay_s=1.0, jitter="none"),
        clock=clock,
        rng=random.Random(3),
    )
    report = resolver.run_once()
    assert report.errors == []
    assert report.committed == [committed_gid.branch("b")]
    assert report.rolled_back == [undecided_gid.branch("b")]
    assert b.prepared() == []
    with b.connect(autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM accounts ORDER BY id").fetchall()
    assert rows == [("x",), ("y",)]
    # The undecided transaction is now aborted in the log: its coordinator cannot commit it.
    assert log.outcome(undecided_gid) is tpc_decision("abort")
    log.close()


def tpc_decision(value: str) -> Any:
    from phalanx.txn.twopc import Decision

    return Decision(value)
