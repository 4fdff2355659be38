"""PostgresIdempotencyStore against a real PostgreSQL server (``tests/pg.py``).

The store contract itself runs in ``test_idempotency_store.py``, against every store; here
is what only a shared server has: the executor on it, several connections and
processes racing for one key, lost connections, timeouts, and the table itself. Every test
gets its own table, so tests share the session's server without seeing each other's keys.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from phalanx.clock import ManualClock
from phalanx.errors import Unavailable
from phalanx.resilience.idempotency import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyStore,
    KeyInProgress,
    PostgresIdempotencyStore,
    RecordState,
)
from phalanx.resilience.idempotency.postgres import TABLE_NAME_CHARS_MAX

NOW_S = 1_700_000_000.0
StoreFactory = Callable[..., PostgresIdempotencyStore]


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.dsn)


@pytest.fixture
def table() -> str:
    return f"idem_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_store(dsn: str, table: str) -> Iterator[StoreFactory]:
    opened: list[PostgresIdempotencyStore] = []

    def factory(target: Any = None, **kwargs: Any) -> PostgresIdempotencyStore:
        kwargs.setdefault("table", table)
        store = PostgresIdempotencyStore(dsn if target is None else target, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def claim(store: IdempotencyStore, key: str, owner: str, *, fp: str = "fp", now_s: float = NOW_S):
    return store.claim(key, fp, owner, now_s=now_s, lease_s=10.0, ttl_s=100.0)


# -- one table, several stores ----------------------------------------------------------


def test_entries_max_is_shared_by_the_stores_on_one_table(make_store: StoreFactory) -> None:
    one, two = make_store(entries_max=2), make_store(entries_max=2)
    claim(one, "a", "o")
    claim(two, "b", "o")
    with pytest.raises(Unavailable, match="entries_max"):
        claim(one, "c", "o")


def test_the_table_survives_the_store(make_store: StoreFactory) -> None:
    first = make_store()
    claim(first, "done", "o")
    first.complete("done", "o", b"\x00binary\xff", now_s=NOW_S, ttl_s=100.0)
    claim(first, "running", "o")
    first.close()
    reopened = make_store()
    done = reopened.get("done", now_s=NOW_S + 1)
    assert done is not None
    assert done.state is RecordState.COMPLETED
    assert done.result == b"\x00binary\xff"
    running = reopened.get("running", now_s=NOW_S + 1)
    assert running is not None
    assert running.state is RecordState.IN_PROGRESS
    assert len(reopened) == 2


# -- the executor on this store ---------------------------------------------------------


class Ledger:
    def __init__(self) -> None:
        self.charges: list[int] = []

    def charge(self, amount: int) -> dict[str, int]:
        self.charges.append(amount)
        return {"charge": len(self.charges), "amount": amount}


def test_executor_first_call_runs_and_a_duplicate_replays(make_store: StoreFactory) -> None:
    guard = Idempotency(make_store(), clock=ManualClock())
    ledger = Ledger()
    assert guard.run("order-1", ledger.charge, 5) == {"charge": 1, "amount": 5}
    assert guard.run("order-1", ledger.charge, 5) == {"charge": 1, "amount": 5}
    assert ledger.charges == [5]
    stats = guard.statistics()
    assert (stats.misses, stats.hits) == (1, 1)


def test_executor_duplicate_while_running_is_refused_with_the_lease_left(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    guard = Idempotency(make_store(), lease_s=30, clock=clock)
    ticket = guard.begin("order-1", "fp")
    assert ticket.acquired
    clock.advance(10)
    with pytest.raises(KeyInProgress) as caught:
        guard.run("order-1", lambda: "again", fingerprint="fp")
    assert caught.value.retry_after_s == pytest.approx(20.0)
    assert guard.finish(ticket, b'"first"')
    assert guard.run("order-1", lambda: "again", fingerprint="fp") == "first"


def test_executor_refuses_a_key_reused_with_another_request(make_store: StoreFactory) -> None:
    guard = Idempotency(make_store(), clock=ManualClock())
    ledger = Ledger()
    guard.run("order-1", ledger.charge, 5)
    with pytest.raises(FingerprintMismatch):
        guard.run("order-1", ledger.charge, 6)
    assert ledger.charges == [5]


def test_executor_failure_releases_the_key_for_a_retry(make_store: StoreFactory) -> None:
    guard = Idempotency(make_store(), clock=ManualClock())

    def fails() -> None:
        raise OSError("card network down")

    with pytest.raises(OSError, match="card network"):
        guard.run("order-1", fails, fingerprint="fp")
    assert guard.run("order-1", lambda: "ok", fingerprint="fp") == "ok"


def test_lease_takeover_between_two_servers_after_expiry(make_store: StoreFactory) -> None:
    clock = ManualClock(wall_start_s=NOW_S)
    crashed = Idempotency(make_store(), lease_s=30, clock=clock, owner_prefix="server-1")
    survivor = Idempotency(make_store(), lease_s=30, clock=clock, owner_prefix="server-2")
    stuck = crashed.begin("order-1", "fp")  # server 1 stops here, holding the key
    assert stuck.acquired

    with pytest.raises(KeyInProgress):
        survivor.run("order-1", lambda: "survivor", fingerprint="fp")
    clock.advance(29.9)
    with pytest.raises(KeyInProgress):
        survivor.run("order-1", lambda: "survivor", fingerprint="fp")
    clock.advance(0.1)
    assert survivor.run("order-1", lambda: "survivor", fingerprint="fp") == "survivor"
    assert survivor.statistics().takeovers == 1
    # Server 1 comes back: its result is not stored, the survivor's stays.
    assert not crashed.finish(stuck, b'"late"')
    assert crashed.run("order-1", lambda: "never", fingerprint="fp") == "survivor"


# -- racing for one key -----------------------------------------------------------------


def test_stores_on_separate_connections_race_and_exactly_one_wins(
    make_store: StoreFactory,
) -> None:
    stores = [make_store() for _ in range(4)]
    rounds = 25
    barrier = threading.Barrier(len(stores))
    results: dict[int, list[tuple[bool, str]]] = {i: [] for i in range(rounds)}
    errors: list[BaseException] = []

    def contender(index: int) -> None:
        try:
            for round_ in range(rounds):
                barrier.wait(timeout=10)
                got = claim(stores[index], f"k{round_}", f"owner-{index}")
                results[round_].append((got.acquired, got.record.owner))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    for outcomes in results.values():
        winners = [owner for acquired, owner in outcomes if acquired]
        assert len(winners) == 1
        # Every loser was shown the winner's record.
        assert {owner for _, owner in outcomes} == {winners[0]}


def wait_until_blocked_on_a_lock(admin: psycopg.Connection[Any], pid: int) -> None:
    deadline_s = time.monotonic() + 10
    while time.monotonic() < deadline_s:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)
        ).fetchone()
        if row is not None and row[0] > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def test_a_key_inserted_after_the_claims_select_is_not_overwritten(
    make_store: StoreFactory, dsn: str, table: str, admin: psycopg.Connection[Any]
) -> None:
    # The narrow race: the key is absent when the claim looks, another server inserts it
    # before the claim's insert. The claim must wait for it and then lose.
    connections: list[psycopg.Connection[Any]] = []

    def connect() -> psycopg.Connection[Any]:
        connections.append(psycopg.connect(dsn))
        return connections[-1]

    store = make_store(connect)
    other = psycopg.connect(dsn)  # a transaction open, as another server's claim would be
    try:
        other.execute(
            f"INSERT INTO {table} VALUES ('k', 'fp', 'in_progress', 'other', %s, %s, %s, NULL)",
            (NOW_S, NOW_S + 100, NOW_S + 10),
        )
        outcome: list[Any] = []
        claimer = threading.Thread(target=lambda: outcome.append(claim(store, "k", "mine")))
        claimer.start()
        wait_until_blocked_on_a_lock(admin, connections[-1].info.backend_pid)
        other.commit()
        claimer.join(timeout=10)
    finally:
        other.close()
    assert len(outcome) == 1
    assert not outcome[0].acquired
    assert outcome[0].record.owner == "other"
    record = store.get("k", now_s=NOW_S)
    assert record is not None
    assert record.owner == "other"


CHILD = textwrap.dedent(
    """
    import os, sys
    from phalanx.clock import ManualClock
    from phalanx.resilience.idempotency import Idempotency, PostgresIdempotencyStore

    store = PostgresIdempotencyStore(sys.argv[1], table=sys.argv[2])
    clock = ManualClock(wall_start_s=float(sys.argv[3]))
    guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock, owner_prefix="child")

    def charge():
        print("charging", flush=True)
        os._exit(0)  # the process dies mid-operation: no completion, no release

    guard.run("order-1", charge, fingerprint="fp-order-1")
    """
)


def test_a_key_claimed_by_another_process_is_held_then_taken_over_after_its_lease(
    make_store: StoreFactory, dsn: str, table: str
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, dsn, table, str(NOW_S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.strip() == "charging"

    clock = ManualClock(wall_start_s=NOW_S)
    store = make_store()
    record = store.get("order-1", now_s=clock.wall_s())
    assert record is not None
    assert record.state is RecordState.IN_PROGRESS
    assert record.owner.startswith("child:")

    guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock)
    with pytest.raises(KeyInProgress) as caught:
        guard.run("order-1", lambda: "parent", fingerprint="fp-order-1")
    assert caught.value.retry_after_s == pytest.approx(30.0)
    clock.advance(30.0)
    assert guard.run("order-1", lambda: "parent", fingerprint="fp-order-1") == "parent"
    assert guard.statistics().takeovers == 1


# -- lost connections and timeouts ------------------------------------------------------


class Connections:
    """A connection factory that remembers what it made, to kill those backends."""

    def __init__(self, dsn: str, cls: type[psycopg.Connection[Any]] = psycopg.Connection) -> None:
        self.dsn = dsn
        self.cls = cls
        self.made: list[psycopg.Connection[Any]] = []
        self.fail_next = False

    def __call__(self) -> psycopg.Connection[Any]:
        if self.fail_next:
            self.fail_next = False
            raise psycopg.OperationalError("connection refused (planted)")
        self.made.append(self.cls.connect(self.dsn))
        return self.made[-1]

    def close(self) -> None:
        for conn in self.made:
            conn.close()


@pytest.fixture
def connections(dsn: str) -> Iterator[Connections]:
    made = Connections(dsn)
    yield made
    made.close()


def terminate(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    row = admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,)).fetchone()
    assert row == (True,)


def test_a_killed_connection_is_replaced_once_and_the_call_succeeds(
    make_store: StoreFactory, connections: Connections, admin: psycopg.Connection[Any]
) -> None:
    store = make_store(connections)
    assert claim(store, "a", "o").acquired
    terminate(admin, connections.made[0])
    assert claim(store, "b", "o").acquired
    assert store.reconnects == 1
    assert len(connections.made) == 2
    assert connections.made[0].closed
    assert store.complete("b", "o", b"r", now_s=NOW_S, ttl_s=100.0)
    terminate(admin, connections.made[1])
    record = store.get("a", now_s=NOW_S)
    assert record is not None
    assert record.owner == "o"
    assert store.reconnects == 2


def test_a_second_connection_failure_propagates_and_the_next_call_reconnects(
    make_store: StoreFactory, connections: Connections, admin: psycopg.Connection[Any]
) -> None:
    store = make_store(connections)
    terminate(admin, connections.made[0])
    connections.fail_next = True  # the reconnect fails: the server is still unreachable
    with pytest.raises(psycopg.OperationalError, match="planted"):
        claim(store, "k", "o")
    assert claim(store, "k", "o").acquired  # the server is back


class LosesTheReplyToCommit(psycopg.Connection[Any]):
    """Commits, then loses the connection before the client hears back, once."""

    armed = False
    admin: psycopg.Connection[Any] | None = None

    def _lose(self) -> None:
        cls = type(self)
        if cls.armed and cls.admin is not None:
            cls.armed = False
            terminate(cls.admin, self)
            self.execute("SELECT 1")  # raises: the server ended this session

    @contextlib.contextmanager
    def transaction(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with super().transaction(*args, **kwargs) as tx:
            yield tx
        self._lose()

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = super().execute(query, *args, **kwargs)
        text = query.as_string(self) if hasattr(query, "as_string") else str(query)
        if "state = 'completed'" in text:
            self._lose()
        return cursor


def test_a_claim_or_completion_whose_commit_reply_was_lost_is_recognised(
    make_store: StoreFactory, dsn: str, admin: psycopg.Connection[Any]
) -> None:
    made = Connections(dsn, LosesTheReplyToCommit)
    LosesTheReplyToCommit.admin = admin
    try:
        store = make_store(made)
        LosesTheReplyToCommit.armed = True
        first = claim(store, "k", "mine")
        assert store.reconnects == 1
        assert first.acquired  # the rerun found its own committed claim
        assert first.record.owner == "mine"
        assert not claim(store, "k", "other").acquired

        LosesTheReplyToCommit.armed = True
        assert store.complete("k", "mine", b"r", now_s=NOW_S, ttl_s=100.0)
        assert store.reconnects == 2
        record = store.get("k", now_s=NOW_S)
        assert record is not None
        assert record.state is RecordState.COMPLETED
    finally:
        LosesTheReplyToCommit.armed = False
        LosesTheReplyToCommit.admin = None
        made.close()


class DiesBeforeInsert(psycopg.Connection[Any]):
    """Loses the session in the middle of a claim's transaction, once."""

    armed = False
    admin: psycopg.Connection[Any] | None = None

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query.as_string(self) if hasattr(query, "as_string") else str(query)
        cls = type(self)
        if cls.armed and cls.admin is not None and text.lstrip().startswith("INSERT"):
            cls.armed = False
            terminate(cls.admin, self)
        return super().execute(query, *args, **kwargs)


def test_a_claim_interrupted_mid_transaction_is_rolled_back_and_rerun(
    make_store: StoreFactory, dsn: str, admin: psycopg.Connection[Any]
) -> None:
    made = Connections(dsn, DiesBeforeInsert)
    DiesBeforeInsert.admin = admin
    try:
        store = make_store(made)
        DiesBeforeInsert.armed = True
        got = claim(store, "k", "mine")
        assert got.acquired
        assert store.reconnects == 1
        record = store.get("k", now_s=NOW_S)
        assert record is not None
        assert record.owner == "mine"
    finally:
        DiesBeforeInsert.armed = False
        DiesBeforeInsert.admin = None
        made.close()


def test_statement_timeout_s_bounds_the_wait_for_a_locked_row(
    make_store: StoreFactory, dsn: str, table: str
) -> None:
    store = make_store(statement_timeout_s="200ms")
    claim(store, "k", "o")
    with psycopg.connect(dsn) as other:
        other.execute(f"SELECT * FROM {table} WHERE key = 'k' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            claim(store, "k", "x", now_s=NOW_S + 50)
        assert time.monotonic() - started < 5
        other.rollback()
    assert store.reconnects == 0
    assert not claim(store, "k", "x", now_s=NOW_S + 1).acquired  # still usable


def test_a_closed_store_refuses_calls(make_store: StoreFactory) -> None:
    store = make_store()
    store.close()
    with pytest.raises(psycopg.InterfaceError, match="closed"):
        claim(store, "k", "o")


# -- the table --------------------------------------------------------------------------


def test_the_table_is_created_with_its_expiry_index(
    make_store: StoreFactory, table: str, admin: psycopg.Connection[Any]
) -> None:
    make_store()
    columns = admin.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    assert columns == [
        ("key", "text"),
        ("fingerprint", "text"),
        ("state", "text"),
        ("owner", "text"),
        ("created_at_s", "double precision"),
        ("expires_at_s", "double precision"),
        ("lease_expires_at_s", "double precision"),
        ("result", "bytea"),
    ]
    indexes = admin.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))
    assert {row[0] for row in indexes} == {f"{table}_pkey", f"{table}_expiry"}
    make_store()  # a second store on the existing table


def test_a_schema_qualified_table(make_store: StoreFactory, admin: psycopg.Connection[Any]) -> None:
    schema = f"s_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    store = make_store(table=f"{schema}.keys")
    assert claim(store, "k", "o").acquired
    row = admin.execute(f"SELECT owner FROM {schema}.keys").fetchone()
    assert row == ("o",)


def test_a_role_without_create_privilege_uses_an_existing_table(
    make_store: StoreFactory, dsn: str, table: str, admin: psycopg.Connection[Any]
) -> None:
    make_store()  # the owner creates the table
    role = f"app_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
    app_dsn = dsn.replace("user=postgres", f"user={role}")
    with psycopg.connect(app_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE TABLE not_allowed (x int)")
    store = make_store(app_dsn)
    assert claim(store, "k", "o").acquired


def test_an_existing_table_of_another_shape_is_refused(
    make_store: StoreFactory, table: str, admin: psycopg.Connection[Any]
) -> None:
    admin.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, value text)")
    with pytest.raises(ValueError, match=r"table: .* not an idempotency table"):
        make_store()


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"entries_max": 0}, "entries_max"),
        ({"entries_max": -1}, "entries_max"),
        ({"entries_max": "many"}, "entries_max"),
        ({"table": ""}, "table"),
        ({"table": "Keys"}, "table"),
        ({"table": "1keys"}, "table"),
        ({"table": "keys; DROP TABLE x"}, "table"),
        ({"table": "a.b.c"}, "table"),
        ({"table": "x" * (TABLE_NAME_CHARS_MAX + 1)}, "table"),
        ({"table": 7}, "table"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"connect_timeout_s": "5"}, "connect_timeout_s"),
        ({"connect_timeout_s": "1h"}, "connect_timeout_s"),
        ({"statement_timeout_s": -1}, "statement_timeout_s"),
        ({"statement_timeout_s": float("nan")}, "statement_timeout_s"),
    ],
)
def test_bad_options_are_rejected_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    # Validation happens before connecting: no server is needed to get the error.
    with pytest.raises(ValueError, match=rf"^{field}: "):
        PostgresIdempotencyStore("host=127.0.0.1 port=1", **kwargs)


def test_the_longest_table_name_is_accepted(make_store: StoreFactory) -> None:
    name = "t" * TABLE_NAME_CHARS_MAX
    store = make_store(table=name)
    assert claim(store, "k", "o").acquired


@pytest.mark.parametrize("target", ["", "   ", "host=x port", 42, None])
def test_bad_connection_targets_are_rejected(target: Any) -> None:
    with pytest.raises(ValueError, match=r"^dsn_or_connection_factory: ") as caught:
        PostgresIdempotencyStore(target)
    assert "secret" not in str(caught.value)


def test_a_malformed_dsn_is_reported_without_its_text() -> None:
    with pytest.raises(ValueError, match="malformed") as caught:
        PostgresIdempotencyStore("host=db password=secret port")
    assert "secret" not in str(caught.value)


def test_a_factory_must_return_a_psycopg_connection() -> None:
    with pytest.raises(TypeError, match="dsn_or_connection_factory"):
        PostgresIdempotencyStore(object)


def test_an_unreachable_server_fails_at_construction() -> None:
    with pytest.raises(psycopg.OperationalError):
        PostgresIdempotencyStore("host=127.0.0.1 port=1 connect_timeout=2")
