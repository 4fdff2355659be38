"""A coordinator the crash tests kill: ``python twopc_child.py LOG DSN_A DSN_B SQLITE ROW STOP
[no]``.

It runs one global transaction that inserts ``ROW`` into table ``t`` on PostgreSQL ``a``, on
PostgreSQL ``b`` and on SQLite ``s``, preparing them one after another. It prints each protocol
step as it completes; at step ``STOP`` it prints ``STOP`` and waits on stdin, so the parent
can SIGKILL it exactly there. With ``no`` as last argument, ``b`` votes no (a deferred
unique constraint fails at prepare), so the transaction aborts.
"""

from __future__ import annotations

import sys

from phalanx.txn.twopc import (
    Coordinator,
    PostgresBranch,
    PostgresParticipant,
    SqliteBranch,
    SqliteDecisionLog,
    SqliteParticipant,
    TransactionAborted,
)


def main() -> None:
    log_path, dsn_a, dsn_b, sqlite_path, row, stop = sys.argv[1:7]
    vote_no = sys.argv[7:] == ["no"]

    def say(line: str) -> None:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()

    def observe(step: str) -> None:
        say(step)
        if step == stop:
            say("STOP")
            sys.stdin.readline()

    # synchronous=NORMAL: a SIGKILL does not lose the page cache, so what these tests check
    # (durability across the death of the process) needs no fsync, and they run faster.
    participants = [
        PostgresParticipant("a", dsn_a),
        PostgresParticipant("b", dsn_b),
        SqliteParticipant("s", sqlite_path, synchronous="NORMAL"),
    ]
    log = SqliteDecisionLog(log_path, synchronous="NORMAL")
    with Coordinator(
        "c1", log, participants, prepare_timeout_s=120.0, prepare_workers_max=1, observer=observe
    ) as coordinator:
        txn = coordinator.begin()
        a, b, s = txn.enlist("a"), txn.enlist("b"), txn.enlist("s")
        assert isinstance(a, PostgresBranch)
        assert isinstance(b, PostgresBranch)
        assert isinstance(s, SqliteBranch)
        a.connection.execute("INSERT INTO t VALUES (%s)", (row,))
        b.connection.execute("INSERT INTO t VALUES (%s)", (row,))
        if vote_no:
            b.connection.execute("INSERT INTO d VALUES (%s), (%s)", (row, row))
        s.execute("INSERT INTO t VALUES (?)", (row,))
        try:
            txn.commit()
        except TransactionAborted:
            say("ABORTED")
        else:
            say("COMMITTED")


if __name__ == "__main__":
    main()
