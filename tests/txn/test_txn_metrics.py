"""Sagas and 2PC in Prometheus: events and statistics through phalanx.obs.metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from phalanx.errors import Rejected
from phalanx.obs.metrics import PrometheusMetrics
from phalanx.resilience.events import Event
from phalanx.txn.saga import MemorySagaStore, SagaDefinition, SagaWorker, Step
from phalanx.txn.twopc import Coordinator, MemoryBranch, MemoryDecisionLog, MemoryParticipant


def refuse(ctx: object) -> None:
    raise Rejected("declined")


def test_saga_worker_and_coordinator_export_events_and_statistics() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    seen: list[Event] = []
    saga = SagaDefinition("order", [Step("a", lambda ctx: 1), Step("b", refuse)])
    worker = SagaWorker(MemorySagaStore(), [saga], worker_id="w1", listeners=(seen.append,))
    participant = MemoryParticipant("p")
    coordinator = Coordinator("c1", MemoryDecisionLog(), [participant])
    metrics.watch(worker, coordinator)
    worker.start("order", "o1", {})
    worker.run_until_idle()
    txn = coordinator.begin()
    branch = txn.enlist("p")
    assert isinstance(branch, MemoryBranch)
    branch.put("k", 1)
    txn.commit()
    coordinator.close()

    def value(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(metric, labels)

    events = "phalanx_resilience_events_total"
    assert value(events, primitive="saga_worker", name="w1", kind="compensated") == 1.0
    assert value(events, primitive="saga_worker", name="w1", kind="step-done") == 1.0
    assert value(events, primitive="twopc_coordinator", name="c1", kind="committed") == 1.0
    assert value("phalanx_saga_worker_compensated", name="w1") == 1.0
    assert value("phalanx_coordinator_committed", name="c1") == 1.0
    assert [e.kind for e in seen][-1] == "compensated"
