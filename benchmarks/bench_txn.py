"""Two-phase commit and sagas, run by hand (numbers go to docs/benchmarks.md, section
"Transactions"):

    .venv/bin/python benchmarks/bench_txn.py [--transactions N] [--sagas N]
                                             [--only 2pc|saga|saga-pg]

Sagas: the 4-step order saga with in-process step handlers, one worker, saga log in SQLite
(``synchronous=FULL`` and ``NORMAL``): sagas per second from start to completed, and the time
to resume 1000 sagas left in flight by a killed worker (its leases expired): how long until
a new worker has claimed them all, and until all are completed. On PostgreSQL also with four
workers sharing the log.

Side by side with DBOS Transact on the same PostgreSQL server (its own database there, the
server's durability settings the same for both): the same four steps as a DBOS workflow,
run from one thread and from four, and the time for a relaunched DBOS process to finish
1000 workflows whose process was SIGKILLed after their first step (``txn_dbos_child.py``).
Phalanx's resume is measured on the same server too. ``--only saga-pg`` runs just these
PostgreSQL saga measurements, on one server.

It starts two throwaway PostgreSQL servers that allow prepared transactions (the helpers of
``tests/txn/tpc_servers.py``), then measures, with one client doing one transaction at a time:

* ``plain``: an INSERT on each server, committed one after the other (not atomic);
* ``2pc``: the same writes as one global transaction, decision log in SQLite (FULL sync);
* ``2pc, memory log``: the same with the in-memory log, to show what the log costs;
* the blocking window: how long each participant holds its branch prepared (locks held,
  outcome not yet known) from its prepare to its commit;
* the window after a coordinator crash: a coordinator process is SIGKILLed right after it
  logged the commit; a new process starts and recovers; we time from the kill until every
  branch is committed.

The servers run with fsync off (as in the tests), so the numbers show the protocol's round
trips and the log's fsync, not the servers' disks. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "txn")]

import psycopg  # noqa: E402
import tpc_servers  # noqa: E402 - tests/txn/tpc_servers.py, after extending sys.path

from phalanx.clock import ManualClock  # noqa: E402
from phalanx.txn.saga import (  # noqa: E402
    PostgresSagaStore,
    SagaDefinition,
    SagaEvent,
    SagaStatus,
    SagaWorker,
    SqliteSagaStore,
    Step,
    StepContext,
)
from phalanx.txn.twopc import (  # noqa: E402
    Coordinator,
    DecisionLog,
    MemoryDecisionLog,
    PostgresBranch,
    PostgresParticipant,
    SqliteDecisionLog,
)

CHILD = ROOT / "tests" / "txn" / "twopc_child.py"
DBOS_CHILD = ROOT / "benchmarks" / "txn_dbos_child.py"
RESUME_COUNT = 1000
RECOVER = """
import sys
from phalanx.txn.twopc import Coordinator, PostgresParticipant, SqliteDecisionLog
from phalanx.txn.twopc import SqliteParticipant
log = SqliteDecisionLog(sys.argv[1])
ps = [PostgresParticipant("a", sys.argv[2]), PostgresParticipant("b", sys.argv[3]),
      SqliteParticipant("s", sys.argv[4])]
with Coordinator("c1", log, ps) as c:
    assert c.recover().errors == []
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, samples_s: list[float], *, rate: bool = True) -> None:
    p50, p99 = percentile(samples_s, 0.5) * 1e3, percentile(samples_s, 0.99) * 1e3
    per_s = f"{len(samples_s) / sum(samples_s):8.0f} txn/s" if rate else ""
    sys.stdout.write(f"{name:34s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {per_s}\n")


def bench_plain(dsn_a: str, dsn_b: str, count: int) -> list[float]:
    samples = []
    with psycopg.connect(dsn_a) as conn_a, psycopg.connect(dsn_b) as conn_b:
        for i in range(count):
            start = time.perf_counter()
            for conn in (conn_a, conn_b):
                conn.execute("INSERT INTO t VALUES (%s)", (f"plain-{i}",))
                conn.commit()
            samples.append(time.perf_counter() - start)
    return samples


def bench_2pc(
    log: DecisionLog, dsn_a: str, dsn_b: str, count: int, tag: str
) -> tuple[list[float], list[float]]:
    participants = [PostgresParticipant("a", dsn_a), PostgresParticipant("b", dsn_b)]
    prepared_at: dict[str, float] = {}
    windows: list[float] = []

    def observe(step: str) -> None:
        kind, _, name = step.partition(":")
        if kind == "prepared":
            prepared_at[name] = time.perf_counter()
        elif kind == "finished" and name in prepared_at:
            windows.append(time.perf_counter() - prepared_at.pop(name))

    samples = []
    with Coordinator("bench", log, participants, observer=observe) as coordinator:
        for i in range(count):
            start = time.perf_counter()
            txn = coordinator.begin()
            for name in ("a", "b"):
                branch = txn.enlist(name)
                assert isinstance(branch, PostgresBranch)
                branch.connection.execute("INSERT INTO t VALUES (%s)", (f"{tag}-{i}",))
            txn.commit()
            samples.append(time.perf_counter() - start)
    for participant in participants:
        participant.close()
    return samples, windows


def crash_window(base: Path, dsn_a: str, dsn_b: str, rounds: int) -> list[float]:
    sqlite_path = base / "s.db"
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY)")
    conn.close()
    log_path = base / "crash-log.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    samples = []
    for i in range(rounds):
        args = [str(log_path), dsn_a, dsn_b, str(sqlite_path), f"crash-{i}", "decided:commit"]
        child = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        while child.stdout.readline().strip() not in ("STOP", ""):
            pass
        start = time.perf_counter()
        child.send_signal(signal.SIGKILL)
        child.communicate()
        recover = [sys.executable, "-c", RECOVER, str(log_path), dsn_a, dsn_b, str(sqlite_path)]
        subprocess.run(recover, check=True, env=env)
        samples.append(time.perf_counter() - start)
    return samples


def order_saga() -> SagaDefinition:
    def step(name: str) -> Step:
        def action(ctx: StepContext) -> str:
            return f"{name}-{ctx.payload['order']}"

        return Step(name, action, lambda _ctx: None)

    return SagaDefinition("order", [step(n) for n in ("reserve", "charge", "ship", "notify")])


def bench_sagas(base: Path, count: int, synchronous: str, dsn: str | None = None) -> None:
    path = base / f"sagas-{synchronous}.db"
    store: Any = PostgresSagaStore(dsn) if dsn else SqliteSagaStore(path, synchronous=synchronous)
    with store:
        worker = SagaWorker(store, [order_saga()], worker_id="w", claim_batch=256)
        start = time.perf_counter()
        for i in range(count):
            worker.start("order", f"o-{i}", {"order": i})
        worker.run_until_idle()
        elapsed_s = time.perf_counter() - start
        done = len(store.find(status=SagaStatus.COMPLETED, limit=count))
    where = "PostgreSQL log (fsync off)" if dsn else f"SQLite log ({synchronous})"
    sys.stdout.write(
        f"sagas, {where}: {done} in {elapsed_s:.2f} s = {done / elapsed_s:.0f} sagas/s\n"
    )


def bench_sagas_pg_workers(dsn: str, count: int, workers: int) -> None:
    """``workers`` workers, each with its own PostgreSQL connection, sharing the log."""
    stores = [PostgresSagaStore(dsn) for _ in range(workers)]
    try:
        starter = SagaWorker(stores[0], [order_saga()], worker_id="starter")
        for i in range(count):
            starter.start("order", f"m-{i}", {"order": i})
        pool = [
            SagaWorker(store, [order_saga()], worker_id=f"w{n}", claim_batch=16)
            for n, store in enumerate(stores)
        ]
        start = time.perf_counter()
        threads = [threading.Thread(target=w.run_until_idle) for w in pool]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed_s = time.perf_counter() - start
        done = len(stores[0].find(status=SagaStatus.COMPLETED, limit=count * 2))
    finally:
        for store in stores:
            store.close()
    sys.stdout.write(
        f"sagas, PostgreSQL log (fsync off), {workers} workers: {done} in {elapsed_s:.2f} s "
        f"= {done / elapsed_s:.0f} sagas/s (started beforehand)\n"
    )


def bench_resume(store: Any, count: int, where: str) -> None:
    with store:
        dead = SagaWorker(store, [order_saga()], worker_id="dead", lease_s=30)
        for i in range(count):
            dead.start("order", f"r-{i}", {"order": i})
        now_s = time.time()
        claimed = []
        while batch := store.claim("dead", now_s=now_s, lease_s=30, limit=256):
            claimed += batch
        for record in claimed:  # each one killed after its first step started
            started = record.evolve(executions=1, updated_at_s=now_s)
            store.save(
                started, [SagaEvent(now_s, "step-started", "reserve")], now_s=now_s, lease_s=30
            )
        later = ManualClock(wall_start_s=now_s + 31)
        worker = SagaWorker(store, [order_saga()], worker_id="new", claim_batch=256, clock=later)
        start = time.perf_counter()
        taken = 0
        while batch := store.claim("new", now_s=later.wall_s(), lease_s=30, limit=256):
            taken += len(batch)
        claimed_s = time.perf_counter() - start
        # Now drive them as the worker would have after its claims.
        for record in store.find(limit=count):
            worker.drive(record)
        finished_s = time.perf_counter() - start
        done = len(store.find(status=SagaStatus.COMPLETED, limit=count))
    sys.stdout.write(
        f"resume {count} sagas after a kill ({where}): all {taken} claimed in "
        f"{claimed_s * 1e3:.0f} ms, {done} completed in {finished_s:.2f} s\n"
    )


def dbos_child(*args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, str(DBOS_CHILD), *args], capture_output=True, text=True, check=True
    )
    parsed: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return parsed


def bench_dbos(server: Any, count: int, resume_count: int) -> None:
    """DBOS Transact on ``server`` (see ``txn_dbos_child.py``); its own database there."""
    url = f"postgresql://postgres@127.0.0.1:{server.port}/dbos_bench"
    for threads in (1, 4):
        run = dbos_child("throughput", url, str(count), str(threads))
        sys.stdout.write(
            f"sagas, DBOS workflow on PostgreSQL (fsync off), {threads} thread(s): "
            f"{run['done']:.0f} in {run['elapsed_s']:.2f} s "
            f"= {run['done'] / run['elapsed_s']:.0f} workflows/s\n"
        )
    child = subprocess.Popen(
        [sys.executable, str(DBOS_CHILD), "crash", url, str(resume_count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    ready = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.communicate()
    if ready != "READY":
        sys.stdout.write("resume, DBOS: the crashing child did not get ready\n")
        return
    run = dbos_child("resume", url, str(resume_count))
    sys.stdout.write(
        f"resume {resume_count} workflows after a SIGKILL (DBOS, PostgreSQL): launch "
        f"{run['launched_s'] * 1e3:.0f} ms, {run['done']:.0f} completed in "
        f"{run['elapsed_s']:.2f} s\n"
    )


def bench_postgres_sagas(server: Any, count: int) -> None:
    """Phalanx's PostgreSQL saga log and DBOS, one after the other on the same server."""
    bench_sagas(Path(), count, "-", dsn=tpc_servers.create_database(server, "sagas"))
    bench_sagas_pg_workers(tpc_servers.create_database(server, "sagas4"), count, 4)
    resume_dsn = tpc_servers.create_database(server, "resume")
    bench_resume(PostgresSagaStore(resume_dsn), RESUME_COUNT, "PostgreSQL, fsync off")
    bench_dbos(server, count, RESUME_COUNT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--crash-rounds", type=int, default=5)
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--only", choices=("2pc", "saga", "saga-pg"), default=None)
    args = parser.parse_args()
    if args.only == "saga-pg":
        server = tpc_servers.start_tpc_server()
        try:
            bench_postgres_sagas(server, args.sagas)
        finally:
            server.stop()
        return
    if args.only != "2pc":
        with tempfile.TemporaryDirectory(prefix="bench-saga-") as tmp:
            for synchronous in ("FULL", "NORMAL"):
                bench_sagas(Path(tmp), args.sagas, synchronous)
                store = SqliteSagaStore(
                    Path(tmp) / f"resume-{synchronous}.db", synchronous=synchronous
                )
                bench_resume(store, RESUME_COUNT, synchronous)
    if args.only == "saga":
        return
    servers: list[Any] = []
    try:
        servers = [tpc_servers.start_tpc_server(), tpc_servers.start_tpc_server()]
        dsns = []
        for server in servers:
            dsn = tpc_servers.create_database(server, "bench")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id text PRIMARY KEY)")
            dsns.append(dsn)
        dsn_a, dsn_b = dsns
        if args.only is None:
            bench_postgres_sagas(servers[0], args.sagas)
        count = args.transactions
        with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp:
            base = Path(tmp)
            report("plain (two local commits)", bench_plain(dsn_a, dsn_b, count))
            runs: list[tuple[str, Callable[[], DecisionLog]]] = [
                ("2pc, SQLite log (FULL)", lambda: SqliteDecisionLog(base / "log.db")),
                ("2pc, memory log", MemoryDecisionLog),
            ]
            for name, make_log in runs:
                samples, windows = bench_2pc(make_log(), dsn_a, dsn_b, count, name[:8])
                report(name, samples)
                report("  blocking window (prepared)", windows, rate=False)
            crash = crash_window(base, dsn_a, dsn_b, args.crash_rounds)
            median_s = percentile(crash, 0.5)
            sys.stdout.write(
                f"window after a coordinator SIGKILL, restart + recover: "
                f"median {median_s * 1e3:.0f} ms, max {max(crash) * 1e3:.0f} ms "
                f"({len(crash)} rounds)\n"
            )
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
