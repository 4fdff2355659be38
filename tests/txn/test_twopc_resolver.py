"""The background resolver and ``phalanx txn recover``."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

from click.testing import CliRunner

from phalanx.cli.txn import txn
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc import (
    Coordinator,
    Decision,
    Gid,
    MemoryDecisionLog,
    MemoryParticipant,
    RecoveryReport,
    Resolver,
    SqliteDecisionLog,
    SqliteParticipant,
)


def test_resolver_backs_off_while_passes_fail_and_stops_when_closed() -> None:
    calls: list[str] = []
    done = threading.Event()

    def flaky() -> RecoveryReport:
        calls.append("pass")
        report = RecoveryReport()
        if len(calls) <= 2:
            report.errors.append("participant b unreachable")
        else:
            done.set()
        return report

    def broken() -> None:
        raise OSError("log unreachable")

    resolver = Resolver(
        [flaky],
        interval_s=60.0,
        backoff=Backoff(base_delay_s=0.0, max_delay_s=0.0, jitter="none"),
        rng=random.Random(0),
    )
    with resolver:
        assert done.wait(10)
    stats = resolver.statistics()
    assert stats.failures == 2
    assert stats.consecutive_failures == 0
    assert len(calls) == 3  # then it waits interval_s, and close() ended the wait
    failing = Resolver([broken])
    assert failing.run_once() is False
    assert failing.statistics().consecutive_failures == 1


def test_recovery_runs_from_a_background_resolver() -> None:
    a = MemoryParticipant("a")
    orphan = Gid("c1", 1, 1).branch("a")
    branch = a.begin(orphan)
    branch.put("k", 1)
    branch.prepare()
    with Coordinator("c1", MemoryDecisionLog(), [a]) as coordinator:
        resolved = threading.Event()

        def recover() -> RecoveryReport:
            report = coordinator.recover()
            if report.rolled_back:
                resolved.set()
            return report

        with Resolver([recover], interval_s=0.01):
            assert resolved.wait(10)
    assert a.prepared() == []


def test_recover_command_commits_a_logged_transaction(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (v INT)")
    conn.close()
    participant = SqliteParticipant("s", db)
    gid = Gid("c1", 1, 1)
    branch = participant.begin(gid.branch("s"))
    branch.execute("INSERT INTO t VALUES (7)")
    branch.prepare()
    branch.close()  # the coordinator process died after its decision
    participant.close()
    log_path = tmp_path / "log.db"
    with SqliteDecisionLog(log_path) as log:
        log.decide(gid, Decision.COMMIT, ("s",), now_s=0.0)
    runner = CliRunner()
    listed = runner.invoke(txn, ["in-doubt", "--log", str(log_path), "--sqlite", f"s={db}"])
    assert listed.exit_code == 0, listed.output
    assert f"{gid.branch('s')}" in listed.output
    assert "log says commit" in listed.output
    args = ["recover", "--coordinator", "c1", "--log", str(log_path), "--sqlite", f"s={db}"]
    result = runner.invoke(txn, args)
    assert result.exit_code == 0, result.output
    assert f"committed {gid.branch('s')}" in result.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]
    conn.close()
    again = runner.invoke(txn, args)
    assert again.exit_code == 0
    assert "0 transactions finished" in again.output
    none = runner.invoke(txn, ["recover", "--coordinator", "c1", "--log", str(log_path)])
    assert none.exit_code != 0


def test_resolve_command_asks_the_log_for_old_prepared_branches(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (v INT)")
    conn.close()
    participant = SqliteParticipant("s", db)
    committed, undecided = Gid("c1", 1, 1), Gid("c1", 1, 2)
    for gid, value in ((committed, 1), (undecided, 2)):
        branch = participant.begin(gid.branch("s"))
        branch.execute("INSERT INTO t VALUES (?)", (value,))
        branch.prepare()
        branch.close()
    participant.close()
    log_path = tmp_path / "log.db"
    with SqliteDecisionLog(log_path) as log:
        log.decide(committed, Decision.COMMIT, ("s",), now_s=0.0)
    args = ["resolve", "--log", f"c1={log_path}", "--sqlite", f"s={db}", "--once"]
    young = CliRunner().invoke(txn, args)
    assert young.exit_code == 0, young.output
    assert "2 prepared, not old enough yet" in young.output
    result = CliRunner().invoke(txn, [*args, "--inquiry-after-s", "0"])
    assert result.exit_code == 0, result.output
    assert f"committed {committed.branch('s')}" in result.output
    assert f"rolled back {undecided.branch('s')}" in result.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    conn.close()
