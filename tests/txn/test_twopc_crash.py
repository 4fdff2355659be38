"""Crash tests with real processes: SIGKILL at every step of two-phase commit.

A child coordinator (``twopc_child.py``) runs one transaction over two PostgreSQL servers
and a SQLite file and is killed with SIGKILL at a chosen protocol step. Then recovery runs,
either a restarted coordinator (same id, new incarnation) or, with no coordinator coming
back, each participant's resolver asking the decision log. Atomicity is then checked: the
row is on all three participants or on none, it is there whenever the commit decision was
logged before the kill, and nothing is left prepared.

Participant crashes: a PostgreSQL server is SIGKILLed (postmaster and backends) in the middle
of the protocol, with the coordinator alive, and restarted.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from phalanx.clock import ManualClock
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc import (
    Coordinator,
    ParticipantResolver,
    PostgresBranch,
    PostgresParticipant,
    SqliteBranch,
    SqliteDecisionLog,
    SqliteParticipant,
    TransactionAborted,
)

CHILD = Path(__file__).with_name("twopc_child.py")
CHILD_TIMEOUT_S = 60

COMMIT_STEPS = [
    "voting",
    "prepared:a",
    "prepared:b",
    "prepared:s",
    "decided:commit",
    "finished:a",
    "finished:b",
    "finished:s",
    "ended",
]
ABORT_STEPS = ["prepared:a", "decided:abort", "finished:a"]


@dataclass
class World:
    dsn_a: str
    dsn_b: str
    sqlite_path: Path
    log_path: Path

    def participants(self) -> list[Any]:
        return [
            PostgresParticipant("a", self.dsn_a),
            PostgresParticipant("b", self.dsn_b),
            SqliteParticipant("s", self.sqlite_path),
        ]


@pytest.fixture(scope="module")
def world(
    tpc: ModuleType, tpc_pair: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> World:
    dsns = []
    for server in tpc_pair:
        dsn = tpc.create_database(server, "crash")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id text PRIMARY KEY)")
            conn.execute("CREATE TABLE d (id text UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        dsns.append(dsn)
    base = tmp_path_factory.mktemp("twopc-crash")
    sqlite_path = base / "s.db"
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
    conn.close()
    return World(dsns[0], dsns[1], sqlite_path, base / "decisions.db")


def present(world: World, row: str) -> dict[str, bool]:
    found = {}
    for name, dsn in (("a", world.dsn_a), ("b", world.dsn_b)):
        with psycopg.connect(dsn) as conn:
            found[name] = (
                conn.execute("SELECT 1 FROM t WHERE id = %s", (row,)).fetchone() is not None
            )
    conn_s = sqlite3.connect(world.sqlite_path)
    found["s"] = conn_s.execute("SELECT 1 FROM t WHERE id = ?", (row,)).fetchone() is not None
    conn_s.close()
    return found


def nothing_prepared(participants: list[Any]) -> bool:
    return all(p.prepared() == [] for p in participants)


def run_child(world: World, row: str, stop: str, *, vote_no: bool = False) -> list[str]:
    """Start the child, wait for it to reach ``stop``, SIGKILL it; return the steps it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [str(world.log_path), world.dsn_a, world.dsn_b, str(world.sqlite_path), row, stop]
    child = subprocess.Popen(
        [sys.executable, str(CHILD), *args, *(["no"] if vote_no else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    lines = []
    try:
        while True:
            line = child.stdout.readline().strip()
            if not line or line == "STOP":
                break
            lines.append(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=CHILD_TIMEOUT_S)
    assert lines[-1:] == [stop], f"the child ended before {stop!r}: {lines}"
    return lines


def close_all(participants: list[Any]) -> None:
    for p in participants:
        p.close()


@pytest.mark.parametrize("stop", COMMIT_STEPS)
def test_coordinator_killed_then_restarted(world: World, stop: str) -> None:
    row = f"commit-{stop}"
    steps = run_child(world, row, stop)
    decided = "decided:commit" in steps
    participants = world.participants()
    with (
        SqliteDecisionLog(world.log_path) as log,
        Coordinator("c1", log, participants) as coordinator,
    ):
        report = coordinator.recover()
        assert report.errors == []
        assert log.unfinished("c1") == []
    assert nothing_prepared(participants)
    close_all(participants)
    assert present(world, row) == dict.fromkeys("abs", decided)


@pytest.mark.parametrize("stop", ABORT_STEPS)
def test_coordinator_killed_while_aborting(world: World, stop: str) -> None:
    row = f"abort-{stop}"
    run_child(world, row, stop, vote_no=True)
    participants = world.participants()
    with (
        SqliteDecisionLog(world.log_path) as log,
        Coordinator("c1", log, participants) as coordinator,
    ):
        assert coordinator.recover().errors == []
    assert nothing_prepared(participants)
    close_all(participants)
    assert present(world, row) == dict.fromkeys("abs", False)


@pytest.mark.parametrize("stop", ["prepared:s", "decided:commit"])
def test_coordinator_never_returns_participants_resolve_from_the_log(
    world: World, stop: str
) -> None:
    row = f"resolve-{stop}"
    steps = run_child(world, row, stop)
    decided = "decided:commit" in steps
    participants = world.participants()
    clock = ManualClock(wall_start_s=4_000_000_000.0)  # long after the prepares
    with SqliteDecisionLog(world.log_path) as log:
        for participant in participants:
            resolver = ParticipantResolver(
                participant,
                {"c1": log},
                inquiry_after_s=30.0,
                backoff=Backoff(base_delay_s=1.0, max_delay_s=1.0, jitter="none"),
                clock=clock,
                rng=random.Random(0),
            )
            assert resolver.run_once().errors == []
    assert nothing_prepared(participants)
    close_all(participants)
    assert present(world, row) == dict.fromkeys("abs", decided)


@pytest.mark.parametrize(("stop", "commits"), [("prepared:a", False), ("prepared:b", True)])
def test_participant_server_killed_mid_protocol(
    world: World, tpc: ModuleType, tpc_pair: tuple[Any, Any], stop: str, commits: bool
) -> None:
    """Server b dies before b prepares (b's prepare fails: abort) or right after it
    prepared (the commit reaches b only after its restart, through recovery)."""
    row = f"server-{stop}"
    server_b = tpc_pair[1]

    def kill_b(step: str) -> None:
        if step == stop:
            tpc.crash(server_b)

    participants = world.participants()
    with (
        SqliteDecisionLog(world.log_path) as log,
        Coordinator("c2", log, participants, observer=kill_b, prepare_workers_max=1) as coordinator,
    ):
        txn = coordinator.begin()
        a, b, s = txn.enlist("a"), txn.enlist("b"), txn.enlist("s")
        assert isinstance(a, PostgresBranch)
        assert isinstance(b, PostgresBranch)
        assert isinstance(s, SqliteBranch)
        for branch in (a, b):
            branch.connection.execute("INSERT INTO t VALUES (%s)", (row,))
        s.execute("INSERT INTO t VALUES (?)", (row,))
        if commits:
            result = txn.commit()
            assert result.pending == ("b",)
        else:
            with pytest.raises(TransactionAborted, match="b voted no"):
                txn.commit()
        tpc.restart(server_b)
        report = coordinator.recover()
        assert report.errors == []
    assert nothing_prepared(participants)
    close_all(participants)
    assert present(world, row) == dict.fromkeys("abs", commits)
