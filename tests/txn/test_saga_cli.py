"""``phalanx saga list/show/retry/compensate`` against a SQLite saga log."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from phalanx.cli.saga import saga
from phalanx.errors import Rejected
from phalanx.txn.saga import SagaDefinition, SagaStatus, SagaWorker, SqliteSagaStore, Step


def fill(path: Path) -> None:
    def refuse(ctx: object) -> None:
        raise Rejected("card declined")

    def broken_undo(ctx: object) -> None:
        raise RuntimeError("inventory unreachable")

    saga_def = SagaDefinition(
        "order",
        [
            Step("reserve", lambda ctx: 1, broken_undo, compensation_executions_max=1),
            Step("charge", refuse),
        ],
    )
    with SqliteSagaStore(path) as store:
        worker = SagaWorker(store, [saga_def], worker_id="w1")
        worker.start("order", "o-1", {"order": 1})
        worker.start("order", "o-2", {"order": 2})
        [record] = store.claim("w1", now_s=worker.clock.wall_s(), lease_s=60, limit=1)
        worker.drive(record)  # o-1 only: o-2 stays running, unclaimed


def test_list_show_retry_compensate(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    fill(db)
    runner = CliRunner()
    listed = runner.invoke(saga, ["list", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert "o-1" in listed.output
    assert "dead_letter" in listed.output
    only = runner.invoke(saga, ["list", "--db", str(db), "--status", "running"])
    assert "o-2" in only.output
    assert "o-1" not in only.output
    shown = runner.invoke(saga, ["show", "o-1", "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    for kind in ("started", "step-done reserve", "compensating", "dead-lettered"):
        assert kind in shown.output
    assert "card declined" in shown.output
    retried = runner.invoke(saga, ["retry", "o-1", "--db", str(db)])
    assert retried.exit_code == 0, retried.output
    assert "compensating again" in retried.output
    again = runner.invoke(saga, ["retry", "o-1", "--db", str(db)])
    assert again.exit_code != 0
    assert "not dead_letter" in again.output
    undone = runner.invoke(saga, ["compensate", "o-2", "--db", str(db)])
    assert undone.exit_code == 0, undone.output
    with SqliteSagaStore(db) as store:
        record = store.get("o-2")
        assert record is not None
        assert record.status is SagaStatus.COMPENSATING
    missing = runner.invoke(saga, ["show", "nope", "--db", str(db)])
    assert missing.exit_code != 0
    assert "no saga" in missing.output
