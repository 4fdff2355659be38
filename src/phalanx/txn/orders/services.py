"""The four services of the guide's order flow, each with its own SQLite database.

Every operation that changes state takes an idempotency key and records it with its effect
in one local transaction, so a repeated call (a retry, a re-run after a crash, a duplicate
delivery) changes nothing. Compensations are keyed by the key of the action they undo and
are harmless when that action never happened.

Failure switches are decided per order from a seeded RNG (:class:`Faults`): payment declined,
inventory short, shipping down. They are properties of the order, so every retry of a step
meets the same answer.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from phalanx.errors import Rejected, Unavailable

__all__ = ["Faults", "Inventory", "Orders", "Payments", "Shipping", "Shop", "transaction"]

STOCK_START: Final = 1_000_000
ITEMS: Final = ("book", "lamp", "mug")


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(schema)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Join the transaction open on ``conn`` (an inbox handler's), or run a new one."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass
class Faults:
    """Which orders meet which failure, drawn once per order from ``seed``."""

    payment: float = 0.0
    inventory: float = 0.0
    shipping: float = 0.0
    seed: int = 0
    _drawn: dict[str, tuple[bool, bool, bool]] = field(default_factory=dict)

    def of(self, order_id: str) -> tuple[bool, bool, bool]:
        """(payment declined, inventory short, shipping down) for ``order_id``."""
        if order_id not in self._drawn:
            rng = random.Random(f"{self.seed}:{order_id}")
            self._drawn[order_id] = (
                rng.random() < self.payment,
                rng.random() < self.inventory,
                rng.random() < self.shipping,
            )
        return self._drawn[order_id]


class Orders:
    def __init__(self, directory: Path) -> None:
        self.conn = _connect(
            directory / "orders.db",
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, item TEXT, qty INT, "
            "amount INT, status TEXT NOT NULL)",
        )

    def create(self, order_id: str, item: str, qty: int, amount: int) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, 'pending')",
            (order_id, item, qty, amount),
        )

    def set_status(self, order_id: str, status: str) -> None:
        self.conn.execute("UPDATE orders SET status = ? WHERE id = ?", (status, order_id))


class Inventory:
    def __init__(self, directory: Path, faults: Faults) -> None:
        self.faults = faults
        self.conn = _connect(
            directory / "inventory.db",
            "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INT CHECK (qty >= 0));"
            "CREATE TABLE IF NOT EXISTS reservations (key TEXT PRIMARY KEY, order_id TEXT, "
            "item TEXT, qty INT, released INT NOT NULL DEFAULT 0);",
        )
        for item in ITEMS:
            self.conn.execute("INSERT OR IGNORE INTO stock VALUES (?, ?)", (item, STOCK_START))

    def reserve(self, key: str, order_id: str, item: str, qty: int) -> None:
        if self.faults.of(order_id)[1]:
            raise Rejected(f"inventory short of {item} for {order_id}")
        with transaction(self.conn) as conn:
            done = conn.execute("SELECT 1 FROM reservations WHERE key = ?", (key,)).fetchone()
            if done is None:
                conn.execute("UPDATE stock SET qty = qty - ? WHERE item = ?", (qty, item))
                conn.execute(
                    "INSERT INTO reservations VALUES (?, ?, ?, ?, 0)", (key, order_id, item, qty)
                )

    def release(self, key: str) -> None:
        with transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT item, qty FROM reservations WHERE key = ? AND released = 0", (key,)
            ).fetchone()
            if row is not None:
                conn.execute("UPDATE stock SET qty = qty + ? WHERE item = ?", (row[1], row[0]))
                conn.execute("UPDATE reservations SET released = 1 WHERE key = ?", (key,))


class Payments:
    def __init__(self, directory: Path, faults: Faults) -> None:
        self.faults = faults
        self.conn = _connect(
            directory / "payments.db",
            "CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, order_id TEXT, "
            "amount INT, refunded INT NOT NULL DEFAULT 0)",
        )

    def charge(self, key: str, order_id: str, amount: int) -> None:
        if self.faults.of(order_id)[0]:
            raise Rejected(f"payment declined for {order_id}")
        self.conn.execute(
            "INSERT OR IGNORE INTO charges VALUES (?, ?, ?, 0)", (key, order_id, amount)
        )

    def refund(self, key: str) -> None:
        self.conn.execute("UPDATE charges SET refunded = 1 WHERE key = ?", (key,))


class Shipping:
    def __init__(self, directory: Path, faults: Faults) -> None:
        self.faults = faults
        self.conn = _connect(
            directory / "shipping.db",
            "CREATE TABLE IF NOT EXISTS shipments (key TEXT PRIMARY KEY, order_id TEXT, "
            "cancelled INT NOT NULL DEFAULT 0)",
        )

    def ship(self, key: str, order_id: str) -> None:
        if self.faults.of(order_id)[2]:
            raise Unavailable("shipping is down")
        self.conn.execute("INSERT OR IGNORE INTO shipments VALUES (?, ?, 0)", (key, order_id))

    def cancel(self, key: str) -> None:
        self.conn.execute("UPDATE shipments SET cancelled = 1 WHERE key = ?", (key,))


class Shop:
    """The four services over one directory."""

    def __init__(self, directory: Path, faults: Faults) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.faults = faults
        self.orders = Orders(directory)
        self.inventory = Inventory(directory, faults)
        self.payments = Payments(directory, faults)
        self.shipping = Shipping(directory, faults)

    def close(self) -> None:
        for service in (self.orders, self.inventory, self.payments, self.shipping):
            service.conn.close()
