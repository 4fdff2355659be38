"""The demo's second act: idempotency keys, a rate limiter and the metrics they all export.

Each scene is deterministic (a manual clock, no sleeping) and prints a few lines: what
happened and what a user should take from it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from phalanx.clock import ManualClock
from phalanx.errors import Indeterminate, RateLimited
from phalanx.obs.metrics import PrometheusMetrics
from phalanx.resilience.idempotency import Idempotency, MemoryIdempotencyStore
from phalanx.resilience.keys import idempotency_key
from phalanx.resilience.ratelimit import TokenBucket
from phalanx.resilience.retry import Retry

__all__ = ["run_epilogue"]

BURST_CALLS = 50
METRIC_LINES_SHOWN = 8


class OrderService:
    """Creates orders through an idempotency executor; the first reply is lost on the wire."""

    def __init__(self, clock: ManualClock) -> None:
        self.orders_created = 0
        self.replies_lost = 0
        self.guard = Idempotency(MemoryIdempotencyStore(), clock=clock, name="orders")

    def _create(self, sku: str) -> dict[str, object]:
        self.orders_created += 1
        return {"order": self.orders_created, "sku": sku}

    def place_order(self, key: str | None, sku: str) -> dict[str, object]:
        result = self._create(sku) if key is None else self.guard.run(key, self._create, sku)
        if self.replies_lost == 0:
            self.replies_lost += 1
            raise Indeterminate("connection reset after the server answered")
        return result


def _idempotency_scene(console: Console, clock: ManualClock) -> Idempotency:
    console.print("\n[bold]Idempotency keys[/bold]: the first reply is lost; the client retries.")
    service = OrderService(clock)
    retry = Retry(idempotent=False, clock=clock, name="orders")
    try:
        retry.call(service.place_order, None, "sku-1")
    except Indeterminate:
        console.print(
            f"  without a key: Retry refused to resend a call that may have run "
            f"(orders created: {service.orders_created}; the caller knows the outcome is unknown)"
        )
    service = OrderService(clock)
    with idempotency_key("order-42") as key:
        reply = retry.call(service.place_order, key, "sku-1")
    console.print(
        f"  with key 'order-42': retried, answered {reply}, orders created: "
        f"{service.orders_created} (the retry got the stored reply)"
    )
    return service.guard


def _rate_limit_scene(console: Console, clock: ManualClock) -> TokenBucket:
    console.print("\n[bold]Rate limiter[/bold]: a burst of calls against 20/s with a burst of 10.")
    bucket = TokenBucket(rate_per_s=20, burst=10, clock=clock, name="partner")
    admitted = 0
    for _ in range(BURST_CALLS):
        admitted += bucket.try_acquire()
        clock.advance(0.005)  # a caller every 5 ms: 200/s offered
    try:
        bucket.acquire(n=5, max_wait_s=0.01)
    except RateLimited as refused:
        hint = f"retry_after_s={refused.retry_after_s:.3f}"
    else:  # pragma: no cover - the bucket is empty after the burst
        hint = "no wait needed"
    console.print(
        f"  {BURST_CALLS} calls in {BURST_CALLS * 5} ms: {admitted} admitted (the burst of 10 "
        f"plus 20/s), {BURST_CALLS - admitted} refused at once; a caller wanting 5 more is "
        f"refused with {hint}"
    )
    return bucket


def run_epilogue(console: Console, *watched: object) -> None:
    """Play the scenes, then print the Prometheus series of everything the demo used."""
    clock = ManualClock()
    guard = _idempotency_scene(console, clock)
    bucket = _rate_limit_scene(console, clock)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.watch(guard, bucket, *watched)  # type: ignore[arg-type]
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(
            (
                "phalanx_breaker_state",
                "phalanx_bulkhead_rejected",
                "phalanx_retry_budget_retries_refused",
                "phalanx_idempotency_hits",
                "phalanx_token_bucket_rejected",
                "phalanx_retry_retries",
            )
        )
    ]
    console.print(
        "\n[bold]Metrics[/bold] (a few of the Prometheus series PrometheusMetrics exports):"
    )
    for line in lines[:METRIC_LINES_SHOWN]:
        console.print(f"  {line}", markup=False)
