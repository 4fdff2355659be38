"""The order saga of the saga crash tests, with its fake services in a SQLite file.

Each step's action inserts ``(key, step)`` into ``effects`` with ``INSERT OR IGNORE`` (the
idempotency key is the primary key, so re-running a step changes nothing) and appends to
``runs``; each compensation deletes the effect of its step and appends to ``runs`` too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from phalanx.errors import Rejected
from phalanx.txn.saga import SagaDefinition, Step, StepContext

STEPS = ("reserve", "charge", "ship", "notify")


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, step TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (what TEXT)")
    return conn


def order_saga(
    path: str, *, pause: Callable[[str], None] = lambda point: None, fail_ship: bool = False
) -> SagaDefinition:
    def make(name: str) -> Step:
        def action(ctx: StepContext) -> str:
            conn = connect(path)
            try:
                conn.execute("INSERT INTO runs VALUES (?)", (name,))
                if fail_ship and name == "ship":
                    raise Rejected("no courier")
                conn.execute(
                    "INSERT OR IGNORE INTO effects VALUES (?, ?)", (ctx.idempotency_key, name)
                )
            finally:
                conn.close()
            pause(f"in:{name}")
            return name

        def compensation(ctx: StepContext) -> None:
            conn = connect(path)
            try:
                conn.execute("INSERT INTO runs VALUES (?)", (f"undo-{name}",))
                key = ctx.idempotency_key.removesuffix(":compensate")
                conn.execute("DELETE FROM effects WHERE key = ?", (key,))
            finally:
                conn.close()

        return Step(name, action, compensation)

    return SagaDefinition("order", [make(n) for n in STEPS])
