"""The DBOS Transact side of ``bench_txn.py``, run as a child process.

DBOS is a process-wide singleton with its own threads, and the resume measurement needs a
process to kill, so ``bench_txn.py`` runs this file once per measurement:

    python benchmarks/txn_dbos_child.py throughput URL COUNT THREADS
    python benchmarks/txn_dbos_child.py crash URL COUNT
    python benchmarks/txn_dbos_child.py resume URL COUNT

The workflow is the benchmark's 4-step order saga (reserve, charge, ship, notify), each step
a ``@DBOS.step()`` that returns a string, as the Phalanx step handlers do. ``throughput``
runs COUNT workflows to completion from THREADS threads, each calling the workflow function
one at a time. ``crash`` starts COUNT workflows whose second step blocks, prints ``READY``
once every first step is checkpointed, and waits to be SIGKILLed. ``resume`` launches DBOS
again on the same system database (same executor id and application version, so launch
recovers them) and times launch until all COUNT are ``SUCCESS``. Each mode prints one JSON
line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from dbos import DBOS, DBOSConfig, SetWorkflowID

POLL_INTERVAL_S = 0.01
READY_TIMEOUT_S = 300.0
block_charge = threading.Event()  # set in ``crash`` mode: the second step never returns


@DBOS.step()
def reserve(order: int) -> str:
    return f"reserve-{order}"


@DBOS.step()
def charge(order: int) -> str:
    if block_charge.is_set():
        threading.Event().wait()
    return f"charge-{order}"


@DBOS.step()
def ship(order: int) -> str:
    return f"ship-{order}"


@DBOS.step()
def notify(order: int) -> str:
    return f"notify-{order}"


@DBOS.workflow()
def order_workflow(order: int) -> list[str]:
    return [reserve(order), charge(order), ship(order), notify(order)]


def launch(url: str) -> None:
    config: DBOSConfig = {
        "name": "phalanx-bench-orders",
        "system_database_url": url,
        "application_version": "bench",  # the resuming process must match the killed one
        "executor_id": "local",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def throughput(url: str, total: int, threads: int) -> dict[str, float]:
    launch(url)

    def run(first: int) -> int:
        done = 0
        for order in range(first, total, threads):
            with SetWorkflowID(f"t{threads}-{order}"):
                done += len(order_workflow(order)) == 4
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(run, range(threads)))
    elapsed_s = time.perf_counter() - start
    DBOS.destroy()
    return {"done": done, "elapsed_s": elapsed_s}


def crash(url: str, total: int) -> None:
    block_charge.set()
    launch(url)
    for order in range(total):
        with SetWorkflowID(f"r-{order}"):
            DBOS.start_workflow(order_workflow, order)
    sql = "SELECT count(*) FROM dbos.operation_outputs WHERE function_name LIKE '%reserve'"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while count(url, sql) < total and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    threading.Event().wait()


def resume(url: str, total: int) -> dict[str, float]:
    sql = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
    before = count(url, sql)
    start = time.perf_counter()
    launch(url)
    launched_s = time.perf_counter() - start
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (done := count(url, sql) - before) < total and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    elapsed_s = time.perf_counter() - start
    DBOS.destroy()
    return {"done": done, "launched_s": launched_s, "elapsed_s": elapsed_s}


def main() -> None:
    mode, url, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "throughput":
        result = throughput(url, total, int(sys.argv[4]))
    elif mode == "crash":
        crash(url, total)
        return
    else:
        result = resume(url, total)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
