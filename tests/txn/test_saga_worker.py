"""The saga worker over both stores: order of steps, compensation, retries, timeouts,
idempotency keys, leases and fencing tokens, the operator's actions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import Conflict, Rejected, Unavailable
from phalanx.resilience import Retry, current_idempotency_key
from phalanx.txn.saga import (
    LeaseLost,
    MemorySagaStore,
    SagaDefinition,
    SagaStatus,
    SagaWorker,
    SqliteSagaStore,
    Step,
    StepContext,
    force_compensate,
    retry_dead_letter,
)
from phalanx.txn.saga.state import SagaEvent
from phalanx.txn.saga.store_postgres import PostgresSagaStore

Store = MemorySagaStore | SqliteSagaStore | PostgresSagaStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemorySagaStore()
    elif request.param == "sqlite":
        with SqliteSagaStore(tmp_path / "sagas.db") as sqlite_store:
            yield sqlite_store
    else:
        tpc = request.getfixturevalue("tpc")
        server = request.getfixturevalue("tpc_pair")[0]
        name = f"s{abs(hash(request.node.name)) % 10**8}"
        with PostgresSagaStore(tpc.create_database(server, name)) as pg_store:
            yield pg_store


class Services:
    """Fake services: every call is logged; effects are kept by idempotency key."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.effects: dict[str, Any] = {}
        self.fail: dict[str, list[BaseException]] = {}
        self.lock = threading.Lock()

    def step(self, name: str) -> Step:
        def action(ctx: StepContext) -> Any:
            assert current_idempotency_key() == ctx.idempotency_key
            with self.lock:
                self.calls.append(name)
                errors = self.fail.get(name)
                if errors:
                    raise errors.pop(0)
                self.effects.setdefault(ctx.idempotency_key, ctx.payload["order"])
            return {"by": name, "seen": sorted(ctx.results)}

        def compensation(ctx: StepContext) -> None:
            with self.lock:
                self.calls.append(f"undo-{name}")
                self.effects.pop(ctx.idempotency_key.removesuffix(":compensate"), None)

        return Step(
            name,
            action,
            compensation,
            retry=Retry(attempts_max=3, base_delay_s=0, max_delay_s=0, jitter="none"),
        )


def order_saga(services: Services, **options: Any) -> SagaDefinition:
    steps = [services.step(n) for n in ("reserve", "charge", "ship", "notify")]
    return SagaDefinition("order", steps, **options)


def test_steps_run_in_order_and_see_earlier_results(store: Store) -> None:
    services = Services()
    worker = SagaWorker(store, [order_saga(services)], worker_id="w1")
    worker.start("order", "o-1", {"order": 1})
    assert worker.start("order", "o-1", {"order": 1}).saga_id == "o-1"  # idempotent start
    with pytest.raises(Conflict, match="another name or payload"):
        worker.start("order", "o-1", {"order": 2})
    worker.run_until_idle()
    record = store.get("o-1")
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert services.calls == ["reserve", "charge", "ship", "notify"]
    assert record.results["notify"]["seen"] == ["charge", "reserve", "ship"]
    assert sorted(services.effects) == ["o-1:charge", "o-1:notify", "o-1:reserve", "o-1:ship"]
    assert record.owner is None
    kinds = [e.kind for e in store.events("o-1")]
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert worker.statistics().completed == 1


def test_a_declined_payment_compensates_in_reverse(store: Store) -> None:
    services = Services()
    services.fail["ship"] = [Rejected("no courier for this address")]
    worker = SagaWorker(store, [order_saga(services)], worker_id="w1")
    worker.start("order", "o-2", {"order": 2})
    worker.run_until_idle()
    record = store.get("o-2")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    # Rejected: definitely not applied, so ship itself is not compensated.
    assert services.calls == ["reserve", "charge", "ship", "undo-charge", "undo-reserve"]
    assert services.effects == {}
    assert "no courier" in record.error


def test_transient_failures_are_retried_within_the_step(store: Store) -> None:
    services = Services()
    services.fail["charge"] = [Unavailable("gateway busy"), Unavailable("gateway busy")]
    worker = SagaWorker(store, [order_saga(services)], worker_id="w1")
    worker.start("order", "o-3", {"order": 3})
    worker.run_until_idle()
    record = store.get("o-3")
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert services.calls.count("charge") == 3


def test_a_step_timeout_compensates_the_step_too(store: Store) -> None:
    release = threading.Event()

    def slow(ctx: StepContext) -> None:
        release.wait(5)

    undone: list[str] = []
    saga = SagaDefinition(
        "slow",
        [
            Step("first", lambda ctx: None, lambda ctx: undone.append("first")),
            Step("hang", slow, lambda ctx: undone.append("hang"), timeout_s=0.05),
        ],
    )
    worker = SagaWorker(store, [saga], worker_id="w1")
    worker.start("slow", "s-1", {})
    worker.run_until_idle()
    release.set()
    record = store.get("s-1")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert undone == ["hang", "first"]  # the timed-out step's outcome is unknown: undone too


def test_a_failing_compensation_dead_letters_then_an_operator_retries(store: Store) -> None:
    services = Services()
    services.fail["charge"] = [Rejected("card declined")]
    saga = order_saga(services)
    broken = saga.steps[0]
    attempts = {"n": 0}

    def flaky_undo(ctx: StepContext) -> None:
        attempts["n"] += 1
        if attempts["n"] <= broken.compensation_executions_max:
            raise Unavailable("inventory down")

    steps = [Step(broken.name, broken.action, flaky_undo), *saga.steps[1:]]
    clock = ManualClock(wall_start_s=1000.0)
    worker = SagaWorker(store, [SagaDefinition("order", steps)], worker_id="w1", clock=clock)
    worker.start("order", "o-4", {"order": 4})
    worker.run_until_idle()
    record = store.get("o-4")
    assert record is not None
    assert record.status is SagaStatus.DEAD_LETTER
    assert worker.statistics().dead_lettered == 1
    assert worker.run_once() == 0  # nobody claims a dead letter
    retry_dead_letter(store, "o-4", now_s=clock.wall_s(), stall_timeout_s=60)
    worker.run_until_idle()
    record = store.get("o-4")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    with pytest.raises(Conflict):
        retry_dead_letter(store, "o-4", now_s=clock.wall_s(), stall_timeout_s=60)


def test_a_stale_worker_loses_to_the_one_that_took_over(store: Store) -> None:
    clock = ManualClock(wall_start_s=1000.0)
    services = Services()
    slow_worker = SagaWorker(
        store, [order_saga(services)], worker_id="slow", lease_s=10, clock=clock
    )
    slow_worker.start("order", "o-5", {"order": 5})
    [claimed] = store.claim("slow", now_s=clock.wall_s(), lease_s=10, limit=10)
    clock.advance(11)  # the slow worker stalls past its lease ...
    fast = SagaWorker(store, [order_saga(services)], worker_id="fast", lease_s=10, clock=clock)
    assert fast.run_once() == 1  # ... another worker takes over and finishes
    record = store.get("o-5")
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert record.resumes == 1
    assert record.fence == claimed.fence + 1
    with pytest.raises(LeaseLost):
        store.save(claimed, [SagaEvent(0.0, "late")], now_s=clock.wall_s(), lease_s=10)
    slow_worker.drive(claimed)  # its whole run is refused at the first save
    assert slow_worker.statistics().leases_lost == 1
    assert services.calls == ["reserve", "charge", "ship", "notify"]


def test_two_workers_never_run_the_same_saga(tmp_path: Path) -> None:
    services = Services()
    path = tmp_path / "shared.db"
    stores = [SqliteSagaStore(path), SqliteSagaStore(path)]
    workers = [
        SagaWorker(s, [order_saga(services)], worker_id=f"w{i}", claim_batch=2)
        for i, s in enumerate(stores)
    ]
    for i in range(20):
        workers[0].start("order", f"p-{i}", {"order": i})
    threads = [threading.Thread(target=w.run_until_idle) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(services.calls) == 80  # 20 sagas x 4 steps, each exactly once
    assert all(r.status is SagaStatus.COMPLETED for r in stores[0].find(limit=100))
    assert sum(w.statistics().claimed for w in workers) == 20
    for s in stores:
        s.close()


def test_operator_compensates_a_running_saga(store: Store) -> None:
    services = Services()
    worker = SagaWorker(store, [order_saga(services)], worker_id="w1")
    worker.start("order", "o-6", {"order": 6})
    [claimed] = store.claim("w1", now_s=worker.clock.wall_s(), lease_s=60, limit=1)
    forced = force_compensate(store, "o-6", now_s=worker.clock.wall_s())
    assert forced.status is SagaStatus.COMPENSATING
    assert forced.fence == claimed.fence + 1
    worker.run_until_idle()
    record = store.get("o-6")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert services.calls == []  # nothing had run, so nothing to undo


def test_the_timeline_keeps_its_newest_events(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phalanx.txn.saga import store as store_module
    from phalanx.txn.saga import store_postgres, store_sqlite

    for module in (store_module, store_sqlite, store_postgres):
        monkeypatch.setattr(module, "EVENTS_PER_SAGA_MAX", 3)
    worker = SagaWorker(store, [order_saga(Services())], worker_id="w1")
    worker.start("order", "o-7", {"order": 7})
    worker.run_until_idle()
    kinds = [e.kind for e in store.events("o-7")]
    assert kinds == ["step-started", "step-done", "completed"]  # notify's, then the end


def test_a_parallel_group_runs_its_steps_at_the_same_time(store: Store) -> None:
    both_running = threading.Barrier(2, timeout=10)  # breaks unless both wait at once
    undone: list[str] = []

    def together(ctx: StepContext) -> str:
        both_running.wait()
        if ctx.step == "quote" and ctx.payload["fail"]:
            raise Rejected("no quote")
        return ctx.step

    steps = [
        Step("order", lambda ctx: "o", lambda ctx: undone.append("order")),
        Step("reserve", together, lambda ctx: undone.append("reserve"), group="prepare"),
        Step("quote", together, lambda ctx: undone.append("quote"), group="prepare"),
        Step("ship", lambda ctx: "s", lambda ctx: undone.append("ship")),
    ]
    worker = SagaWorker(store, [SagaDefinition("grouped", steps)], worker_id="w1")
    worker.start("grouped", "g-ok", {"fail": False})
    worker.start("grouped", "g-bad", {"fail": True})
    worker.run_until_idle()
    ok, bad = store.get("g-ok"), store.get("g-bad")
    assert ok is not None
    assert bad is not None
    assert ok.status is SagaStatus.COMPLETED
    assert ok.results == {"order": "o", "reserve": "reserve", "quote": "quote", "ship": "s"}
    assert bad.status is SagaStatus.COMPENSATED
    assert undone == ["quote", "reserve", "order"]


def test_a_worker_drives_several_sagas_at_once(store: Store) -> None:
    four_at_once = threading.Barrier(4, timeout=10)  # breaks unless four sagas wait together
    saga = SagaDefinition(
        "wait", [Step("call", lambda ctx: four_at_once.wait()), Step("after", lambda ctx: 1)]
    )
    worker = SagaWorker(store, [saga], worker_id="w1", concurrency=4, claim_batch=8)
    for i in range(8):
        worker.start("wait", f"c-{i}", {})
    worker.run_until_idle()
    records = [store.get(f"c-{i}") for i in range(8)]
    assert all(r is not None and r.status is SagaStatus.COMPLETED for r in records)
    assert worker.statistics().completed == 8
    with pytest.raises(ValueError, match="concurrency"):
        SagaWorker(store, [saga], worker_id="w2", concurrency=0)
