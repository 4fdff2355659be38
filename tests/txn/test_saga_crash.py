"""Crash tests: a saga worker process is SIGKILLed mid-saga; a new worker resumes it.

The new worker claims the saga once the dead worker's lease has run out (its clock is set
past the lease: no waiting), runs the interrupted step again under the same idempotency key,
and finishes. Checked: the saga completes (or compensates), every step's effect exists
exactly once (or none remain after compensation), and only the interrupted step ran twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from phalanx.clock import ManualClock
from phalanx.txn.saga import SagaStatus, SagaWorker, SqliteSagaStore

CHILD = Path(__file__).with_name("saga_child.py")


def kill_at(saga_db: Path, services_db: Path, saga_id: str, stop: str, *, fail: bool) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(saga_db), str(services_db), saga_id, stop]
        + (["fail"] if fail else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    try:
        line = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert line == "STOP", f"the child ended before {stop!r}"


@pytest.mark.parametrize(
    ("stop", "fail", "twice"),
    [
        ("step-started:reserve", False, []),
        ("in:charge", False, ["charge"]),
        ("step-done:ship", False, []),
        ("compensation-started:charge", True, []),
    ],
)
def test_worker_killed_mid_saga_then_resumed(
    tmp_path: Path, saga_services: ModuleType, stop: str, fail: bool, twice: list[str]
) -> None:
    saga_db, services_db = tmp_path / "sagas.db", tmp_path / "services.db"
    kill_at(saga_db, services_db, "o-1", stop, fail=fail)
    later = ManualClock(wall_start_s=time.time() + 31)  # past the dead worker's lease
    with SqliteSagaStore(saga_db) as store:
        worker = SagaWorker(
            store,
            [saga_services.order_saga(str(services_db), fail_ship=fail)],
            worker_id="w2",
            clock=later,
        )
        worker.run_until_idle()
        record = store.get("o-1")
    assert record is not None
    assert record.resumes == 1
    conn = saga_services.connect(str(services_db))
    effects = sorted(row[0] for row in conn.execute("SELECT step FROM effects"))
    runs = [row[0] for row in conn.execute("SELECT what FROM runs")]
    conn.close()
    if fail:
        assert record.status is SagaStatus.COMPENSATED
        assert effects == []
    else:
        assert record.status is SagaStatus.COMPLETED
        assert effects == sorted(saga_services.STEPS)
    assert sorted({r for r in runs if runs.count(r) > 1}) == twice
