import pytest
from prometheus_client import CollectorRegistry, generate_latest

from phalanx.clock import ManualClock
from phalanx.errors import Unavailable
from phalanx.obs.metrics import PrometheusMetrics
from phalanx.resilience.bulkhead import Bulkhead
from phalanx.resilience.events import Event
from phalanx.resilience.retry import Retry


def sample(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def test_retry_events_become_counters_and_a_delay_histogram() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    retry = Retry(attempts_max=3, jitter="none", base_delay_s=1.0, clock=ManualClock(), name="db")
    metrics.watch(retry)

    def down() -> None:
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        retry.call(down)
    labels = {"primitive": "retry", "name": "db"}
    assert sample(registry, "phalanx_resilience_events_total", kind="retry", **labels) == 2
    assert sample(registry, "phalanx_resilience_events_total", kind="gave_up", **labels) == 1
    assert sample(registry, "phalanx_retry_delay_seconds_count", name="db") == 2
    assert sample(registry, "phalanx_retry_delay_seconds_sum", name="db") == 3.0
    # statistics() fields are exported at scrape time
    assert sample(registry, "phalanx_retry_attempts", name="db") == 3
    assert sample(registry, "phalanx_retry_gave_up", name="db") == 1


def test_statistics_of_a_bulkhead_are_scraped() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    bulkhead = Bulkhead(max_concurrent=2, max_queue=0, name="payment")
    metrics.watch(bulkhead)
    with bulkhead:
        assert sample(registry, "phalanx_bulkhead_active", name="payment") == 1
    assert sample(registry, "phalanx_bulkhead_max_concurrent", name="payment") == 2
    assert b"phalanx_bulkhead_active" in generate_latest(registry)


def test_breaker_state_gauge_follows_state_changes() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    for target, value in (("open", 2.0), ("half_open", 1.0), ("closed", 0.0)):
        metrics(Event("breaker", "inventory", "state_change", 0.0, {"from": "x", "to": target}))
        assert sample(registry, "phalanx_breaker_state", name="inventory") == value


def test_listeners_can_be_removed_by_an_equal_bound_method() -> None:
    events: list[Event] = []
    retry = Retry(attempts_max=2, clock=ManualClock())
    retry.add_listener(events.append)
    retry.remove_listener(events.append)  # a different, equal bound-method object

    def down() -> None:
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        retry.call(down)
    assert events == []


def test_watching_is_idempotent_and_names_must_be_distinct() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    retry = Retry(attempts_max=2, clock=ManualClock(), name="db")
    metrics.watch(retry, retry)
    metrics.watch(retry)

    def down() -> None:
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        retry.call(down)
    labels = {"primitive": "retry", "name": "db", "kind": "retry"}
    assert sample(registry, "phalanx_resilience_events_total", **labels) == 1
    with pytest.raises(ValueError, match="distinct name"):
        metrics.watch(Retry(name="db"))


def test_a_failing_statistics_does_not_fail_the_scrape() -> None:
    class Broken:
        name = "broken"

        def add_listener(self, listener: object) -> None:
            pass

        def statistics(self) -> None:
            raise RuntimeError("bug")

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.watch(Broken(), Bulkhead(max_concurrent=3, name="ok"))
    assert b"phalanx_bulkhead_max_concurrent" in generate_latest(registry)
