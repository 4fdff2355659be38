"""The idempotency executor: the four cases, failures, waiting, limits, and at-most-once."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.clock import ManualClock
from phalanx.errors import BadRequest, Conflict, Timeout
from phalanx.resilience.deadline import deadline
from phalanx.resilience.events import Event
from phalanx.resilience.idempotency import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyStore,
    KeyInProgress,
    MemoryIdempotencyStore,
    RecordState,
    SqliteIdempotencyStore,
    fingerprint_call,
    fingerprint_request,
)
from phalanx.resilience.keys import IDEMPOTENCY_KEY_BYTES_MAX, idempotency_key
from phalanx.resilience.retry import Retry


class Ledger:
    """A side effect that counts how often it really happened."""

    def __init__(self) -> None:
        self.charges: list[int] = []

    def charge(self, amount: int) -> dict[str, int]:
        self.charges.append(amount)
        return {"charge": len(self.charges), "amount": amount}

    async def acharge(self, amount: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return self.charge(amount)


def make(**kwargs: Any) -> tuple[Idempotency, MemoryIdempotencyStore, ManualClock]:
    store = MemoryIdempotencyStore()
    clock = ManualClock()
    return Idempotency(store, clock=clock, **kwargs), store, clock


# -- the cases --------------------------------------------------------------------------


def test_first_call_runs_and_stores_then_a_duplicate_replays_without_running() -> None:
    guard, store, clock = make()
    ledger = Ledger()
    assert guard.run("k1", ledger.charge, 10) == {"charge": 1, "amount": 10}
    record = store.get("k1", now_s=clock.wall_s())
    assert record is not None
    assert record.state is RecordState.COMPLETED

    assert guard.run("k1", ledger.charge, 10) == {"charge": 1, "amount": 10}
    assert ledger.charges == [10]
    stats = guard.statistics()
    assert (stats.misses, stats.hits) == (1, 1)


async def test_async_first_call_runs_and_a_duplicate_replays() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    assert await guard.arun("k1", ledger.acharge, 3) == {"charge": 1, "amount": 3}
    assert await guard.arun("k1", ledger.acharge, 3) == {"charge": 1, "amount": 3}
    assert ledger.charges == [3]


def test_a_different_key_runs_again() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    guard.run("k1", ledger.charge, 10)
    guard.run("k2", ledger.charge, 10)
    assert ledger.charges == [10, 10]


def test_reusing_a_key_with_other_arguments_is_a_named_mismatch() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    guard.run("k1", ledger.charge, 10)
    with pytest.raises(FingerprintMismatch, match="different request") as caught:
        guard.run("k1", ledger.charge, 99)
    assert isinstance(caught.value, Conflict)
    assert caught.value.stored_fingerprint != caught.value.given_fingerprint
    assert ledger.charges == [10]
    assert guard.statistics().mismatches == 1


def test_a_mismatch_is_reported_even_while_the_first_is_in_progress() -> None:
    guard, _, _ = make()
    ticket = guard.begin("k1", "fp-a")
    assert ticket.acquired
    with pytest.raises(FingerprintMismatch):
        guard.begin("k1", "fp-b")


def test_a_concurrent_duplicate_gets_key_in_progress_when_not_waiting() -> None:
    guard, _, _ = make(lease_s=30)
    ledger = Ledger()
    seen: list[BaseException] = []

    def charge_and_meet_a_duplicate(amount: int) -> dict[str, int]:
        with pytest.raises(KeyInProgress) as caught:
            guard.run("k1", ledger.charge, amount)
        seen.append(caught.value)
        return ledger.charge(amount)

    guard.run(
        "k1", charge_and_meet_a_duplicate, 5, fingerprint=fingerprint_call(ledger.charge, [5], {})
    )
    assert ledger.charges == [5]
    assert isinstance(seen[0], KeyInProgress)
    assert seen[0].retry_after_s == pytest.approx(30.0)
    assert guard.statistics().conflicts == 1


async def test_a_concurrent_duplicate_waits_for_the_result_when_asked() -> None:
    guard, _, clock = make(wait_s=1.0, poll_interval_s=0.1)
    ledger = Ledger()

    async def slow_charge(amount: int) -> dict[str, int]:
        # Finishes once the waiting duplicate has polled a few times (its sleeps move time).
        while clock.now_s() < 0.35:  # noqa: ASYNC110 - time moves only when the duplicate polls
            await asyncio.sleep(0)
        return ledger.charge(amount)

    first = asyncio.create_task(guard.arun("k1", slow_charge, 7))
    await asyncio.sleep(0)
    second = await guard.arun("k1", slow_charge, 7)
    assert await first == second == {"charge": 1, "amount": 7}
    assert ledger.charges == [7]
    assert clock.sleeps_s == pytest.approx([0.1, 0.1, 0.1, 0.1])
    stats = guard.statistics()
    assert (stats.waits, stats.hits, stats.misses, stats.conflicts) == (1, 1, 1, 0)


def test_waiting_is_bounded_by_wait_s() -> None:
    guard, _, clock = make(wait_s=0.5, poll_interval_s=0.2)
    guard.begin("k1", "fp")  # held by an execution that never finishes within the wait
    with pytest.raises(KeyInProgress, match="in progress"):
        guard.begin("k1", "fp")
    assert clock.sleeps_s == pytest.approx([0.2, 0.2, 0.1])


def test_waiting_is_bounded_by_the_current_deadline() -> None:
    guard, _, clock = make(wait_s=10.0, poll_interval_s=0.25)
    guard.begin("k1", "fp")
    with deadline(0.5, clock=clock), pytest.raises(KeyInProgress):
        guard.begin("k1", "fp")
    assert sum(clock.sleeps_s) == pytest.approx(0.5)


def test_a_waiter_runs_the_operation_itself_when_the_first_fails() -> None:
    guard, _, _ = make(wait_s=1.0, poll_interval_s=0.1)
    first = guard.begin("k1", "fp")
    guard.abandon(first)
    second = guard.begin("k1", "fp")
    assert second.acquired


# -- failures and leases -------------------------------------------------------------------


def test_a_failed_execution_releases_the_key_so_a_retry_runs() -> None:
    guard, store, clock = make()
    attempts: list[int] = []

    def flaky(amount: int) -> int:
        attempts.append(amount)
        if len(attempts) == 1:
            raise ConnectionError("downstream reset")
        return amount

    with pytest.raises(ConnectionError):
        guard.run("k1", flaky, 4)
    assert store.get("k1", now_s=clock.wall_s()) is None
    assert guard.run("k1", flaky, 4) == 4
    assert guard.run("k1", flaky, 4) == 4
    assert attempts == [4, 4]
    assert guard.statistics().failures == 1


async def test_cancellation_releases_the_key() -> None:
    guard, store, clock = make()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(guard.arun("k1", hang, fingerprint="fp"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.get("k1", now_s=clock.wall_s()) is None


def test_an_expired_lease_is_taken_over_and_the_late_owner_loses_its_key() -> None:
    events: list[Event] = []
    guard, _, clock = make(lease_s=5, listeners=(events.append,))
    crashed = guard.begin("k1", "fp")
    with pytest.raises(KeyInProgress):
        guard.begin("k1", "fp")
    clock.advance(5)
    assert guard.run("k1", lambda: "second", fingerprint="fp") == "second"
    assert not guard.finish(crashed, b'"first"')
    assert guard.run("k1", lambda: "third", fingerprint="fp") == "second"
    stats = guard.statistics()
    assert (stats.takeovers, stats.leases_lost) == (1, 1)
    assert [e.kind for e in events] == [
        "miss",
        "conflict",
        "takeover",
        "miss",
        "complete",
        "lease_lost",
        "hit",
    ]
    assert all(e.primitive == "idempotency" and e.data["key"] == "k1" for e in events)


def test_records_are_forgotten_after_ttl_s() -> None:
    guard, _, clock = make(ttl_s=60, lease_s=10)
    ledger = Ledger()
    guard.run("k1", ledger.charge, 1)
    clock.advance(59.9)
    guard.run("k1", ledger.charge, 1)
    clock.advance(0.1)
    guard.run("k1", ledger.charge, 1)
    assert ledger.charges == [1, 1]


def test_expired_records_are_purged_every_purge_interval_s() -> None:
    guard, store, clock = make(ttl_s=10, lease_s=10, purge_interval_s=30)
    for key in ("a", "b", "c"):
        guard.run(key, lambda: 1, fingerprint="fp")
    clock.advance(29)
    guard.run("d", lambda: 1, fingerprint="fp")
    assert len(store) == 4
    clock.advance(1)
    guard.run("e", lambda: 1, fingerprint="fp")
    assert len(store) == 2  # a-d expired and were purged; e is new


# -- limits ---------------------------------------------------------------------------------


def test_a_result_over_result_bytes_max_is_not_stored_and_never_runs_again() -> None:
    guard, _, _ = make(result_bytes_max=16)
    ledger = Ledger()
    assert guard.run("small", lambda: "x" * 13, fingerprint="fp") == "x" * 13  # 15 bytes
    assert guard.run("small", lambda: "?", fingerprint="fp") == "x" * 13

    def big() -> str:
        ledger.charge(1)
        return "x" * 15  # 17 bytes once JSON-encoded

    assert guard.run("big", big, fingerprint="fp") == "x" * 15
    with pytest.raises(Conflict, match="result_bytes_max"):
        guard.run("big", big, fingerprint="fp")
    assert ledger.charges == [1]
    assert guard.statistics().unstored == 1


def test_a_result_that_cannot_be_encoded_is_remembered_as_unstored() -> None:
    guard, _, _ = make()
    calls: list[int] = []

    def make_object() -> object:
        calls.append(1)
        return object()

    guard.run("k1", make_object, fingerprint="fp")
    with pytest.raises(Conflict, match="not stored"):
        guard.run("k1", make_object, fingerprint="fp")
    assert calls == [1]


def test_the_key_length_limit_is_the_one_of_keys_py() -> None:
    guard, _, _ = make()
    assert guard.run("k" * IDEMPOTENCY_KEY_BYTES_MAX, lambda: 1, fingerprint="fp") == 1
    with pytest.raises(BadRequest, match="255"):
        guard.run("k" * (IDEMPOTENCY_KEY_BYTES_MAX + 1), lambda: 1, fingerprint="fp")
    with pytest.raises(BadRequest, match="non-empty"):
        guard.run("", lambda: 1, fingerprint="fp")
    with pytest.raises(BadRequest, match="non-empty"):
        guard.run("   ", lambda: 1, fingerprint="fp")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ttl_s", -1),
        ("ttl_s", 0),
        ("lease_s", -5),
        ("wait_s", -0.1),
        ("poll_interval_s", 0),
        ("result_bytes_max", 0),
        ("purge_interval_s", -1),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Idempotency(MemoryIdempotencyStore(), **{field: value})


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("store", {"store": None}),
        ("store", {"store": object()}),
        ("encode", {"encode": None}),
        ("decode", {"decode": "json"}),
    ],
)
def test_a_missing_store_or_codec_is_rejected_naming_the_field(
    field: str, kwargs: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"store": MemoryIdempotencyStore(), **kwargs}
    store = arguments.pop("store")
    with pytest.raises(ValueError, match=field):
        Idempotency(store, **arguments)


def test_lease_s_may_not_exceed_ttl_s() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        Idempotency(MemoryIdempotencyStore(), ttl_s=10, lease_s=11)


def test_durations_accept_units() -> None:
    guard = Idempotency(MemoryIdempotencyStore(), ttl_s="1h", lease_s="30s", wait_s="250ms")
    assert (guard.ttl_s, guard.lease_s, guard.wait_s) == (3600.0, 30.0, 0.25)


# -- fingerprints, decorator ------------------------------------------------------------------


def test_arguments_that_are_not_json_need_an_explicit_fingerprint() -> None:
    guard, _, _ = make()
    with pytest.raises(TypeError, match="fingerprint="):
        guard.run("k1", lambda obj: obj, object())
    assert guard.run("k1", lambda obj: 1, object(), fingerprint="order-7") == 1


def test_fingerprints_are_stable_and_discriminating() -> None:
    def f(a: int, b: dict[str, int]) -> None:
        return None

    assert fingerprint_call(f, [1], {"b": {"x": 1, "y": 2}}) == fingerprint_call(
        f, [1], {"b": {"y": 2, "x": 1}}
    )
    assert fingerprint_call(f, [1], {}) != fingerprint_call(f, [2], {})
    assert fingerprint_request("post", "/a", b"x") == fingerprint_request("POST", "/a", b"x")
    assert fingerprint_request("POST", "/ab", b"c") != fingerprint_request("POST", "/a", b"bc")
    assert fingerprint_request("POST", "/a", b"", query=b"x=1") != fingerprint_request(
        "POST", "/a", b""
    )


def test_run_refuses_a_coroutine_function() -> None:
    guard, _, _ = make()
    with pytest.raises(TypeError, match="arun"):
        guard.run("k1", Ledger().acharge, 1)


def test_the_decorator_takes_the_key_from_the_context() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    charge = guard(ledger.charge)
    with idempotency_key("order-1"):
        charge(5)
        charge(5)
    charge(5)  # no key: an ordinary call
    assert ledger.charges == [5, 5]
    assert charge.__name__ == "charge"


async def test_the_async_decorator_takes_the_key_from_the_context() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    charge = guard(ledger.acharge)
    with idempotency_key("order-1"):
        first = await charge(5)
        assert await charge(5) == first
    assert ledger.charges == [5]


def test_the_decorator_can_require_a_key_and_compute_fingerprints() -> None:
    guard, _, _ = make(key_required=True)
    ledger = Ledger()
    charge = guard.decorate(ledger.charge, fingerprint_of=lambda amount: f"amount={amount}")
    with pytest.raises(BadRequest, match="required"):
        charge(1)
    with idempotency_key("order-1"):
        charge(1)
        with pytest.raises(FingerprintMismatch, match="amount=1"):
            charge(2)
    assert ledger.charges == [1]


def test_decorated_functions_under_one_key_are_recorded_separately() -> None:
    guard, store, _ = make()
    effects: list[str] = []

    @guard
    def charge(order: str, cents: int) -> str:
        effects.append(f"charge {order}")
        return "receipt-1"

    @guard
    def email(order: str) -> bool:
        effects.append(f"email {order}")
        return True

    with idempotency_key("order-7"):
        assert charge("o7", 500) == "receipt-1"
        assert email("o7") is True
        assert charge("o7", 500) == "receipt-1"
        assert email("o7") is True
    assert effects == ["charge o7", "email o7"]
    assert len(store) == 2
    assert guard.statistics().hits == 2


def test_nested_decorated_calls_under_one_key_each_run_once() -> None:
    guard, _, _ = make()
    effects: list[str] = []

    @guard
    def charge(order: str) -> str:
        effects.append("charge")
        return f"receipt {order}"

    @guard
    def place_order(order: str) -> str:
        effects.append("place")
        return charge(order)

    with idempotency_key("order-8"):
        assert place_order("o8") == "receipt o8"
        assert place_order("o8") == "receipt o8"
    assert effects == ["place", "charge"]


def test_one_decorated_function_still_rejects_a_reused_key_with_other_arguments() -> None:
    guard, _, _ = make()
    ledger = Ledger()
    charge = guard(ledger.charge)
    with idempotency_key("order-9"):
        charge(1)
        with pytest.raises(FingerprintMismatch) as caught:
            charge(2)
    assert caught.value.key == "order-9"
    assert ledger.charges == [1]


async def test_async_decorated_functions_under_one_key_are_recorded_separately() -> None:
    guard, store, _ = make()
    ledger = Ledger()
    first = guard(ledger.acharge)

    @guard
    async def refund(amount: int) -> int:
        return -amount

    with idempotency_key("order-10"):
        await first(5)
        assert await refund(5) == -5
        await first(5)
    assert ledger.charges == [5]
    assert len(store) == 2


def test_run_with_a_namespace_keeps_keys_apart_and_bounded() -> None:
    guard, store, _ = make()
    long_key = "k" * IDEMPOTENCY_KEY_BYTES_MAX
    ticket_a = guard.begin(long_key, "fp", namespace="tenant-a" * 100)
    ticket_b = guard.begin(long_key, "fp", namespace="tenant-b")
    assert ticket_a.acquired
    assert ticket_b.acquired
    assert ticket_a.key == ticket_b.key == long_key
    assert ticket_a.store_key != ticket_b.store_key
    assert len(ticket_a.store_key.encode()) <= IDEMPOTENCY_KEY_BYTES_MAX
    assert guard.finish(ticket_a, b"a")
    assert store.get(ticket_a.store_key, now_s=0.0) is not None
    assert store.get(long_key, now_s=0.0) is None
    replay = guard.begin(long_key, "fp", namespace="tenant-a" * 100)
    assert not replay.acquired
    assert replay.payload == b"a"


def test_many_threads_one_key_one_execution() -> None:
    guard, _, _ = make()
    release = threading.Event()
    executions: list[int] = []
    outcomes: list[str] = []
    threads_n = 8
    arrived = threading.Barrier(threads_n)

    def work() -> str:
        executions.append(1)
        release.wait(timeout=10)
        return "done"

    def caller() -> None:
        arrived.wait(timeout=10)
        try:
            outcomes.append(guard.run("k1", work, fingerprint="fp"))
        except KeyInProgress:
            outcomes.append("conflict")
            if outcomes.count("conflict") == threads_n - 1:
                release.set()

    threads = [threading.Thread(target=caller) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert executions == [1]
    assert sorted(outcomes) == ["conflict"] * (threads_n - 1) + ["done"]


# -- the property ---------------------------------------------------------------------------

operation = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # key
    st.integers(min_value=0, max_value=5),  # scheduling steps before calling
    st.integers(min_value=0, max_value=5),  # scheduling steps while running
    st.booleans(),  # fails before its side effect
)


@settings(max_examples=150, deadline=None)
@given(
    operations=st.lists(operation, min_size=1, max_size=12),
    wait=st.booleans(),
    sqlite=st.booleans(),
)
def test_any_interleaving_runs_each_key_at_most_once(
    operations: list[tuple[str, int, int, bool]], wait: bool, sqlite: bool
) -> None:
    store: IdempotencyStore = (
        SqliteIdempotencyStore(":memory:") if sqlite else MemoryIdempotencyStore()
    )
    clock = ManualClock()
    # Leases far longer than any run: the property is about duplicates, not crashed owners.
    guard = Idempotency(
        store,
        ttl_s=10_000,
        lease_s=10_000,
        wait_s=5.0 if wait else 0.0,
        poll_interval_s=0.01,
        clock=clock,
    )
    effects: dict[str, list[int]] = defaultdict(list)

    async def request(index: int, key: str, before: int, during: int, fails: bool) -> object:
        async def side_effect() -> str:
            for _ in range(during):
                await asyncio.sleep(0)
            if fails:
                raise RuntimeError("failed before any effect")
            effects[key].append(index)
            return f"{key}:{index}"

        for _ in range(before):
            await asyncio.sleep(0)
        return await guard.arun(key, side_effect, fingerprint=f"fp-{key}")

    async def scenario() -> list[object]:
        return await asyncio.gather(
            *(request(i, *op) for i, op in enumerate(operations)), return_exceptions=True
        )

    results = asyncio.run(scenario())
    if isinstance(store, SqliteIdempotencyStore):
        store.close()

    for key, indexes in effects.items():
        assert len(indexes) == 1, f"{key} ran {len(indexes)} times"
        for (op_key, *_), result in zip(operations, results, strict=True):
            if op_key == key and isinstance(result, str):
                assert result == f"{key}:{indexes[0]}"
    for result in results:
        assert isinstance(result, str | RuntimeError | KeyInProgress), result


# -- with Retry -----------------------------------------------------------------------------


def test_a_non_idempotent_retry_is_deduplicated_by_its_key() -> None:
    guard, _, clock = make()
    ledger = Ledger()
    server = guard(ledger.charge)
    answers_lost = [1]

    def post_charge(amount: int) -> dict[str, int]:
        result = server(amount)  # the server applies the charge (or replays it)
        if answers_lost:
            answers_lost.pop()
            raise Timeout("the response was lost on the way back")
        return result

    retry = Retry(attempts_max=3, idempotent=False, clock=clock, rng=random.Random(7))
    with pytest.raises(Timeout):
        retry.call(post_charge, 5)  # no key: an indeterminate failure is not retried
    assert ledger.charges == [5]

    answers_lost.append(1)
    with idempotency_key("charge-2"):
        assert retry.call(post_charge, 6) == {"charge": 2, "amount": 6}
    assert ledger.charges == [5, 6]  # retried, yet charged once
    assert guard.statistics().hits == 1
