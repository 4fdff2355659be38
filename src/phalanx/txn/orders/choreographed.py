"""The order flow as a choreography: services react to each other's events.

::

    OrderCreated -> InventoryReserved -> PaymentProcessed -> OrderShipped -> (order completed)
         |                 |                   |
         v                 v                   v
    InventoryShort   PaymentDeclined      ShippingFailed -> PaymentRefunded
         |                 |                                     |
         |                 '-------> InventoryReleased <---------'
         '-------------------------------> (order cancelled)

Each service handles an event through its inbox and writes the event it emits to its outbox
in the same local transaction; relays publish the outboxes on an embedded bus. Events carry
the order id as correlation id, so ``phalanx saga trace`` shows each order's whole flow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from phalanx.errors import Rejected, Unavailable
from phalanx.txn.events import (
    EmbeddedBus,
    Event,
    Publisher,
    Relay,
    SqliteInbox,
    SqliteOutbox,
    new_event_id,
)
from phalanx.txn.orders.services import Shop

__all__ = ["Choreography", "ServiceCrashed"]

#: Attempts the shipping handler makes before it reports shipping as failed.
SHIP_ATTEMPTS_MAX = 3


class ServiceCrashed(Exception):
    """A service died while handling an event (its transaction rolled back)."""


React = Callable[[sqlite3.Connection, Event], "Event | None"]


class Choreography:
    """The services wired to one embedded bus (see the module docstring).

    ``services`` limits which services this object runs (the others run in other
    processes); ``publisher`` is where its relays send events (default: the embedded bus;
    a :class:`~phalanx.txn.events.RedisStreamsBus` between processes).

    ``crash(service, event)``, when given, is asked before each handling commits; when it
    returns True the handler raises :class:`ServiceCrashed` after doing its work, so the work
    rolls back and the event is delivered again later.
    """

    def __init__(
        self,
        shop: Shop,
        *,
        now_s: Callable[[], float],
        crash: Callable[[str, Event], bool] | None = None,
        ids: Callable[[], str] = new_event_id,
        services: Iterable[str] = ("orders", "inventory", "payments", "shipping"),
        publisher: Publisher | None = None,
    ) -> None:
        self.shop = shop
        self.bus = EmbeddedBus()
        self.services = frozenset(services)
        self._now_s = now_s
        self._crash = crash
        # Event ids must stay unique across restarts: inboxes remember them forever.
        self._ids = ids
        self.relays: list[Relay] = []
        self._inboxes: dict[str, SqliteInbox] = {}
        for name, conn in (
            ("orders", shop.orders.conn),
            ("inventory", shop.inventory.conn),
            ("payments", shop.payments.conn),
            ("shipping", shop.shipping.conn),
        ):
            if name not in self.services:
                continue
            self._inboxes[name] = SqliteInbox(conn, name)
            target = publisher if publisher is not None else self.bus
            self.relays.append(Relay(SqliteOutbox(conn), target, now_s=now_s))
        self._wire()

    def place(self, order_id: str, item: str, qty: int, amount: int) -> None:
        """The order service creates the order and emits OrderCreated, in one transaction."""
        conn = self.shop.orders.conn
        SqliteOutbox(conn)  # the outbox table, whichever process relays it
        conn.execute("BEGIN IMMEDIATE")
        try:
            self.shop.orders.create(order_id, item, qty, amount)
            event = Event(
                self._ids(),
                "order",
                order_id,
                "OrderCreated",
                {"item": item, "qty": qty, "amount": amount},
                correlation_id=order_id,
                service="orders",
                occurred_at_s=self._now_s(),
            )
            SqliteOutbox.append(conn, event)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def pump(self, *, passes_max: int = 10_000) -> int:
        """Run the relays until no outbox has anything left; return events published."""
        total = 0
        for _ in range(passes_max):
            published = sum(relay.run_once().published for relay in self.relays)
            total += published
            if published == 0 and all(not relay.outbox.unpublished(1) for relay in self.relays):
                break
        return total

    # -- the reactions ------------------------------------------------------------------

    def _on(self, service: str, event_type: str, react: React) -> None:
        if service not in self.services:
            return  # another process runs that service
        inbox = self._inboxes[service]

        def handle(event: Event) -> None:
            def apply(conn: sqlite3.Connection, e: Event) -> None:
                following = react(conn, e)
                if following is not None:
                    SqliteOutbox.append(conn, following)
                if self._crash is not None and self._crash(service, e):
                    raise ServiceCrashed(f"{service} crashed handling {e.type} {e.id}")

            inbox.handle(event, apply, now_s=self._now_s())

        self.bus.subscribe(event_type, handle)

    def _emit(self, cause: Event, type_: str, service: str) -> Event:
        return cause.caused(
            type_, cause.payload, service=service, now_s=self._now_s(), ids=self._ids
        )

    def _wire(self) -> None:
        shop = self.shop

        def reserve(_conn: sqlite3.Connection, e: Event) -> Event:
            p = e.payload
            try:
                shop.inventory.reserve(
                    f"{e.aggregateid}:reserve", e.aggregateid, p["item"], p["qty"]
                )
            except Rejected:
                return self._emit(e, "InventoryShort", "inventory")
            return self._emit(e, "InventoryReserved", "inventory")

        def charge(_conn: sqlite3.Connection, e: Event) -> Event:
            try:
                shop.payments.charge(f"{e.aggregateid}:charge", e.aggregateid, e.payload["amount"])
            except Rejected:
                return self._emit(e, "PaymentDeclined", "payments")
            return self._emit(e, "PaymentProcessed", "payments")

        def ship(_conn: sqlite3.Connection, e: Event) -> Event:
            for _ in range(SHIP_ATTEMPTS_MAX):
                try:
                    shop.shipping.ship(f"{e.aggregateid}:ship", e.aggregateid)
                except Unavailable:
                    continue
                return self._emit(e, "OrderShipped", "shipping")
            return self._emit(e, "ShippingFailed", "shipping")

        def refund(_conn: sqlite3.Connection, e: Event) -> Event:
            shop.payments.refund(f"{e.aggregateid}:charge")
            return self._emit(e, "PaymentRefunded", "payments")

        def release(_conn: sqlite3.Connection, e: Event) -> Event:
            shop.inventory.release(f"{e.aggregateid}:reserve")
            return self._emit(e, "InventoryReleased", "inventory")

        def complete(_conn: sqlite3.Connection, e: Event) -> None:
            shop.orders.set_status(e.aggregateid, "completed")

        def cancel(_conn: sqlite3.Connection, e: Event) -> None:
            shop.orders.set_status(e.aggregateid, "cancelled")

        self._on("inventory", "OrderCreated", reserve)
        self._on("payments", "InventoryReserved", charge)
        self._on("shipping", "PaymentProcessed", ship)
        self._on("payments", "ShippingFailed", refund)
        self._on("inventory", "PaymentDeclined", release)
        self._on("inventory", "PaymentRefunded", release)
        self._on("orders", "OrderShipped", complete)
        self._on("orders", "InventoryShort", cancel)
        self._on("orders", "InventoryReleased", cancel)
