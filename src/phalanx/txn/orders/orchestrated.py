"""The order flow as an orchestrated saga: the ``OrderOrchestrator``.

Steps, each with its compensation: create the order (cancel it), reserve stock (release it),
charge the card (refund it), ship (cancel the shipment), complete the order. Keys are the
saga's step keys; a compensation undoes the action keyed by its own key minus
``:compensate``. ``charge`` and ``ship`` retry transient failures (a payment service that
crashed after charging but before answering: the retry with the same key charges nothing
twice; shipping down: the retries run out and the saga compensates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phalanx.resilience.retry import Retry
from phalanx.txn.orders.services import Shop
from phalanx.txn.saga import SagaDefinition, Step, StepContext

__all__ = ["order_saga"]

Hook = Callable[[str, StepContext], None]


def _action_key(ctx: StepContext) -> str:
    return ctx.idempotency_key.removesuffix(":compensate")


def _nothing(_step: str, _ctx: StepContext) -> None:
    return None


def order_saga(shop: Shop, *, before_step: Hook = _nothing) -> SagaDefinition:
    """``before_step`` runs before every action (the runner uses it to inject crashes)."""

    def order(ctx: StepContext) -> dict[str, Any]:
        return dict(ctx.payload)

    def create(ctx: StepContext) -> None:
        before_step("create", ctx)
        o = order(ctx)
        shop.orders.create(ctx.saga_id, o["item"], o["qty"], o["amount"])

    def reserve(ctx: StepContext) -> None:
        before_step("reserve", ctx)
        o = order(ctx)
        shop.inventory.reserve(ctx.idempotency_key, ctx.saga_id, o["item"], o["qty"])

    def charge(ctx: StepContext) -> None:
        before_step("charge", ctx)
        shop.payments.charge(ctx.idempotency_key, ctx.saga_id, order(ctx)["amount"])

    def ship(ctx: StepContext) -> None:
        before_step("ship", ctx)
        shop.shipping.ship(ctx.idempotency_key, ctx.saga_id)

    def complete(ctx: StepContext) -> None:
        before_step("complete", ctx)
        shop.orders.set_status(ctx.saga_id, "completed")

    retry = Retry(attempts_max=3, base_delay_s=0, max_delay_s=0, jitter="none")
    return SagaDefinition(
        "order",
        [
            Step("create", create, lambda ctx: shop.orders.set_status(ctx.saga_id, "cancelled")),
            Step("reserve", reserve, lambda ctx: shop.inventory.release(_action_key(ctx))),
            Step("charge", charge, lambda ctx: shop.payments.refund(_action_key(ctx)), retry=retry),
            Step("ship", ship, lambda ctx: shop.shipping.cancel(_action_key(ctx)), retry=retry),
            Step("complete", complete),
        ],
    )
