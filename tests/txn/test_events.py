"""Choreography: outbox written with the state change, ordered at-least-once relay, inbox
dedup, the embedded bus, Redis Streams, and the trace of a whole flow."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from phalanx.cli.saga import saga
from phalanx.txn.events import (
    EmbeddedBus,
    Event,
    RedisStreamsBus,
    Relay,
    SqliteInbox,
    SqliteOutbox,
    trace,
)


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"e{next(numbers)}"


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        self.now_s += 0.001
        return self.now_s


def test_the_outbox_commits_and_rolls_back_with_the_state_change(tmp_path: Path) -> None:
    conn = connect(tmp_path / "orders.db")
    outbox = SqliteOutbox(conn)
    conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    event = Event("e1", "order", "o1", "OrderCreated", {"total": 5}, correlation_id="o1")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders VALUES ('o1')")
    SqliteOutbox.append(conn, event)
    conn.execute("ROLLBACK")
    assert outbox.unpublished(10) == []
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders VALUES ('o1')")
    SqliteOutbox.append(conn, event)
    conn.execute("COMMIT")
    [(_, stored)] = outbox.unpublished(10)
    assert stored == event
    with pytest.raises(ValueError, match="open the transaction"):
        SqliteOutbox.append(conn, event)
    conn.close()


def test_relay_keeps_order_and_delivers_at_least_once_inbox_runs_once(tmp_path: Path) -> None:
    source = connect(tmp_path / "source.db")
    outbox = SqliteOutbox(source)
    for i in range(5):
        source.execute("BEGIN")
        SqliteOutbox.append(source, Event(f"e{i}", "thing", "t", "Happened", {"i": i}))
        source.execute("COMMIT")
    sink = connect(tmp_path / "sink.db")
    sink.execute("CREATE TABLE seen (i INTEGER)")
    inbox = SqliteInbox(sink, "sink")
    deliveries: list[str] = []
    fail_on = {"e2"}

    class Flaky:
        def publish(self, event: Event) -> None:
            deliveries.append(event.id)
            if event.id in fail_on:
                fail_on.discard(event.id)
                raise ConnectionError("broker away")

            def apply(conn: sqlite3.Connection, e: Event) -> None:
                conn.execute("INSERT INTO seen VALUES (?)", (e.payload["i"],))

            inbox.handle(event, apply, now_s=1.0)

    clock = Clock()
    relay = Relay(outbox, Flaky(), batch_max=10, now_s=clock)
    first = relay.run_once()
    assert first.published == 2
    assert "broker away" in first.error
    # A crash after publishing e2 but before marking it: simulate by un-marking e1.
    source.execute("UPDATE outbox SET published_at_s = NULL WHERE id = 'e1'")
    second = relay.run_once()
    assert second.published == 4
    assert relay.run_once().published == 0
    assert deliveries == ["e0", "e1", "e2", "e1", "e2", "e3", "e4"]  # in order, at least once
    assert [row[0] for row in sink.execute("SELECT i FROM seen ORDER BY rowid")] == [0, 1, 2, 3, 4]
    source.close()
    sink.close()


class Service:
    """One service of the order flow: its own database, inbox and outbox."""

    def __init__(self, name: str, path: Path, bus: EmbeddedBus, clock: Clock) -> None:
        self.name = name
        self.conn = connect(path)
        self.inbox = SqliteInbox(self.conn, name)
        self.outbox = SqliteOutbox(self.conn)
        self.clock = clock
        self.relay = Relay(self.outbox, bus, now_s=clock)

    def on(self, bus: EmbeddedBus, event_type: str, react: Callable[[Event], Event | None]) -> None:
        def handler(event: Event) -> None:
            def apply(conn: sqlite3.Connection, e: Event) -> None:
                following = react(e)
                if following is not None:
                    SqliteOutbox.append(conn, following)

            self.inbox.handle(event, apply, now_s=self.clock())

        bus.subscribe(event_type, handler)


def order_flow(tmp_path: Path, *, payment_declined: bool) -> tuple[list[Service], Clock]:
    bus, clock, ids = EmbeddedBus(), Clock(), counter()
    orders, inventory, payments, shipping = (
        Service(n, tmp_path / f"{n}.db", bus, clock)
        for n in ("orders", "inventory", "payments", "shipping")
    )

    def next_event(type_: str, service: Service, payload: dict[str, Any] | None = None) -> Any:
        return lambda e: e.caused(
            type_, payload or {}, service=service.name, now_s=clock(), ids=ids
        )

    inventory.on(bus, "OrderCreated", next_event("InventoryReserved", inventory))
    payments.on(
        bus,
        "InventoryReserved",
        next_event("PaymentDeclined" if payment_declined else "PaymentProcessed", payments),
    )
    shipping.on(bus, "PaymentProcessed", next_event("OrderShipped", shipping))
    inventory.on(bus, "PaymentDeclined", next_event("InventoryReleased", inventory))
    orders.on(bus, "InventoryReleased", next_event("OrderCancelled", orders))
    orders.on(bus, "OrderShipped", lambda e: None)
    orders.conn.execute("BEGIN")
    SqliteOutbox.append(
        orders.conn,
        Event(ids(), "order", "o-1", "OrderCreated", {"total": 30}, "o-1", "", "orders", clock()),
    )
    orders.conn.execute("COMMIT")
    services = [orders, inventory, payments, shipping]
    for _ in range(10):  # relays run until nothing is left to publish
        if sum(s.relay.run_once().published for s in services) == 0:
            break
    return services, clock


@pytest.mark.parametrize(
    ("declined", "chain"),
    [
        (False, ["OrderCreated", "InventoryReserved", "PaymentProcessed", "OrderShipped"]),
        (
            True,
            [
                "OrderCreated",
                "InventoryReserved",
                "PaymentDeclined",
                "InventoryReleased",
                "OrderCancelled",
            ],
        ),
    ],
)
def test_the_order_flow_and_its_trace(tmp_path: Path, declined: bool, chain: list[str]) -> None:
    services, _ = order_flow(tmp_path, payment_declined=declined)
    for service in services:
        service.conn.close()
    lines = trace("o-1", [tmp_path / f"{s.name}.db" for s in services])
    emitted = [line for line in lines if line.what == "emitted"]
    assert [line.event_type for line in emitted] == chain
    assert [line.depth for line in emitted] == list(range(len(chain)))
    for parent, child in itertools.pairwise(emitted):
        assert child.causation_id == parent.event_id
    handled = {(line.service, line.event_type) for line in lines if line.what == "handled"}
    assert ("inventory", "OrderCreated") in handled
    assert trace("other", [tmp_path / "orders.db"]) == []
    dbs = [arg for s in services for arg in ("--db", str(tmp_path / f"{s.name}.db"))]
    shown = CliRunner().invoke(saga, ["trace", "o-1", *dbs])
    assert shown.exit_code == 0, shown.output
    assert chain[-1] in shown.output.splitlines()[-1]
    assert all(event_type in shown.output for event_type in chain)
    missing = CliRunner().invoke(saga, ["trace", "nope", *dbs])
    assert missing.exit_code != 0


def test_redis_streams_bus_redelivers_unacknowledged_entries(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    bus = RedisStreamsBus(client, prefix="phalanx-test-txn:")
    events = [Event(f"r{i}", "order", "o", "Happened", {"i": i}, "o") for i in range(3)]
    for event in events:
        bus.publish(event)
    seen: list[str] = []

    def crash_on_second(event: Event) -> None:
        seen.append(event.id)
        if event.id == "r1":
            raise RuntimeError("consumer died before acknowledging")

    with pytest.raises(RuntimeError):
        bus.consume("order", "shipping", "c1", crash_on_second)

    def record(event: Event) -> None:
        seen.append(event.id)

    assert bus.consume("order", "shipping", "c1", record) == 2  # r1 again, then r2
    assert seen == ["r0", "r1", "r1", "r2"]
    assert bus.consume("order", "shipping", "c1", record) == 0
    other: list[str] = []
    assert bus.consume("order", "billing", "c1", lambda e: other.append(e.id)) == 3
    assert other == ["r0", "r1", "r2"]
    decoded = []
    bus.consume("order", "audit", "c1", decoded.append)
    assert decoded == events
    client.delete(bus.stream("order"))
    client.close()


def test_postgres_outbox_relay_and_inbox(tpc: Any, tpc_pair: tuple[Any, Any]) -> None:
    import psycopg

    from phalanx.txn.events.outbox_postgres import PostgresInbox, PostgresOutbox

    dsn = tpc.create_database(tpc_pair[0], "outbox")
    with (
        psycopg.connect(dsn, autocommit=True) as relay_conn,
        psycopg.connect(dsn, autocommit=True) as app,
        psycopg.connect(dsn, autocommit=True) as consumer_conn,
    ):
        outbox = PostgresOutbox(relay_conn)
        app.execute("CREATE TABLE orders (id text PRIMARY KEY)")
        for i, commit in ((1, False), (2, True), (3, True)):
            try:
                with app.transaction():
                    app.execute("INSERT INTO orders VALUES (%s)", (f"o{i}",))
                    PostgresOutbox.append(app, Event(f"p{i}", "order", f"o{i}", "OrderCreated"))
                    if not commit:
                        raise RuntimeError("the state change fails: the event goes too")
            except RuntimeError:
                pass
        with pytest.raises(ValueError, match="open the transaction"):
            PostgresOutbox.append(app, Event("x", "order", "o", "T"))
        inbox = PostgresInbox(consumer_conn, "billing")
        handled: list[str] = []

        class Deliver:
            def publish(self, event: Event) -> None:
                inbox.handle(event, lambda conn, e: handled.append(e.id), now_s=1.0)

        relay = Relay(outbox, Deliver(), now_s=Clock())
        assert relay.run_once().published == 2
        relay_conn.execute("UPDATE outbox SET published_at_s = NULL")  # as after a crash
        assert relay.run_once().published == 2
        assert handled == ["p2", "p3"]  # delivered twice, handled once
