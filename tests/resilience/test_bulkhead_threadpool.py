"""The thread-pool bulkhead and the per-dependency registry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from phalanx.errors import BulkheadFull, Timeout
from phalanx.resilience.bulkhead import Bulkhead
from phalanx.resilience.deadline import deadline
from phalanx.resilience.events import Event
from phalanx.resilience.registry import BulkheadRegistry, normalize_name, parse_limits
from phalanx.resilience.threadpool import ThreadPoolBulkhead

WAIT_S = 5.0

GUIDE_TEXT = """
Payment service: 20 threads
Inventory service: 10 threads
User service: 30 threads
"""


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError("condition never became true")


@pytest.fixture
def pool() -> Iterator[ThreadPoolBulkhead]:
    bulkhead = ThreadPoolBulkhead(max_workers=2, max_queue=1, name="payment")
    yield bulkhead
    bulkhead.shutdown(wait=True, cancel_pending=True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": -3}, "max_workers"),
        ({"max_queue": -1}, "max_queue"),
        ({"call_timeout_s": 0}, "call_timeout_s"),
        ({"call_timeout_s": "5"}, "call_timeout_s"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(kwargs: dict[str, object], field: str):
    with pytest.raises(ValueError, match=field):
        ThreadPoolBulkhead(**kwargs)  # type: ignore[arg-type]


def test_call_runs_on_a_pool_thread_and_returns(pool: ThreadPoolBulkhead):
    name = pool.call(lambda: threading.current_thread().name)
    assert name.startswith("phalanx-payment")
    assert pool.call(lambda a, b=1: a * b, 6, b=7) == 42

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        pool.call(boom)
    stats = pool.statistics()
    assert (stats.submitted, stats.completed, stats.failed, stats.in_flight) == (3, 2, 1, 0)


def test_submitting_beyond_workers_and_queue_is_rejected(pool: ThreadPoolBulkhead):
    events: list[Event] = []
    pool.add_listener(events.append)
    gate = threading.Event()
    futures = [pool.submit(gate.wait, WAIT_S) for _ in range(3)]  # 2 running + 1 queued
    wait_until(lambda: pool.statistics().running == 2)
    with pytest.raises(BulkheadFull, match="payment"):
        pool.submit(gate.wait, WAIT_S)
    stats = pool.statistics()
    assert (stats.running, stats.queued, stats.in_flight, stats.rejected) == (2, 1, 3, 1)
    assert [e.kind for e in events] == ["rejected"]
    gate.set()
    assert all(f.result(WAIT_S) for f in futures)
    wait_until(lambda: pool.statistics().in_flight == 0)
    assert pool.statistics().peak_in_flight == 3


def test_cancelling_a_queued_call_frees_its_place(pool: ThreadPoolBulkhead):
    gate = threading.Event()
    running = [pool.submit(gate.wait, WAIT_S) for _ in range(2)]
    queued = pool.submit(gate.wait, WAIT_S)
    wait_until(lambda: pool.statistics().running == 2)
    assert queued.cancel()
    assert pool.statistics().in_flight == 2
    again = pool.submit(lambda: "accepted")
    gate.set()
    assert again.result(WAIT_S) == "accepted"
    for future in running:
        future.result(WAIT_S)
    wait_until(lambda: pool.statistics().in_flight == 0)
    assert pool.statistics().cancelled == 1


def test_call_times_out_with_phalanx_timeout():
    gate = threading.Event()
    with ThreadPoolBulkhead(max_workers=1, call_timeout_s="10ms", name="slow") as slow:
        with pytest.raises(Timeout, match="slow"):
            slow.call(gate.wait, WAIT_S)
        assert slow.statistics().timed_out == 1
        gate.set()


def test_call_honours_the_propagated_deadline(pool: ThreadPoolBulkhead):
    gate = threading.Event()
    with deadline(0.01), pytest.raises(Timeout):
        pool.call(gate.wait, WAIT_S)
    gate.set()


async def test_acall_runs_blocking_code_off_the_loop(pool: ThreadPoolBulkhead):
    loop_thread = threading.current_thread().name
    name = await pool.acall(lambda: threading.current_thread().name)
    assert name != loop_thread


async def test_acall_timeout_and_cancellation():
    gate = threading.Event()
    with ThreadPoolBulkhead(max_workers=1, max_queue=1, call_timeout_s=0.01) as pool:
        with pytest.raises(Timeout):
            await pool.acall(gate.wait, WAIT_S)
        # The worker is still busy (threads cannot be stopped); a queued call that is
        # cancelled before it starts gives its place back.
        task = asyncio.create_task(pool.acall(lambda: "never"))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gate.set()
        for _ in range(5000):
            if pool.statistics().in_flight == 0:
                break
            await asyncio.sleep(0.001)
        stats = pool.statistics()
        assert (stats.in_flight, stats.cancelled, stats.timed_out) == (0, 1, 1)


def test_decorator_and_refusal_of_coroutine_functions(pool: ThreadPoolBulkhead):
    @pool
    def where() -> str:
        return threading.current_thread().name

    assert where().startswith("phalanx-payment")

    async def coro() -> None:
        return None

    with pytest.raises(TypeError, match="coroutine"):
        pool(coro)


def test_shutdown_refuses_new_work():
    pool = ThreadPoolBulkhead(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)
    assert pool.statistics().in_flight == 0


# -- registry -------------------------------------------------------------------------------


def test_registry_from_the_guides_mapping():
    registry = BulkheadRegistry.from_config({"payment": 20, "inventory": 10, "user": 30})
    assert sorted(registry) == ["inventory", "payment", "user"]
    assert isinstance(registry["payment"], Bulkhead)
    assert registry["payment"].max_concurrent == 20
    assert registry["inventory"].max_concurrent == 10
    assert registry["user"].name == "user"
    assert registry["Payment service"] is registry["payment"]
    assert "User service" in registry
    assert "billing" not in registry
    with pytest.raises(KeyError, match="known: inventory, payment, user"):
        registry["billing"]


def test_registry_from_the_guides_text_as_thread_pools():
    with BulkheadRegistry.from_config(GUIDE_TEXT, kind="thread_pool") as registry:
        assert {name: pool.max_workers for name, pool in registry.items()} == {
            "payment": 20,
            "inventory": 10,
            "user": 30,
        }
        assert registry["payment"].call(lambda: "paid") == "paid"
        stats = registry.statistics()
        assert stats["payment"].submitted == 1  # type: ignore[union-attr]
        assert set(stats) == {"payment", "inventory", "user"}


def test_registry_options_apply_to_every_dependency():
    registry = BulkheadRegistry.from_config(
        {"payment": "20 threads", "user": "30"}, max_queue=5, max_wait_s="100ms"
    )
    assert registry["payment"].max_concurrent == 20
    assert registry["user"].max_queue == 5
    assert registry["user"].max_wait_s == pytest.approx(0.1)


def test_text_form_parsing():
    assert parse_limits("Database pool: 50 connections\n# comment\n\nRedis pool: 20") == {
        "database": 50,
        "redis": 20,
    }
    assert normalize_name("External API pool") == "external_api"
    assert normalize_name("service") == "service"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("Payment service 20 threads", "line 1"),
        ("Payment service: twenty threads", "line 1"),
        ("Payment service: 20 parrots", "line 1"),
        ("Payment service: 0 threads", "must be >= 1"),
        ("Payment: 1\nPayment service: 2", "repeats"),
        ({"payment": 0}, "payment"),
        ({"payment": -2}, "payment"),
        ({"payment": 2, "Payment service": 3}, "duplicates"),
        ({}, "no dependencies"),
        ("", "no dependencies"),
    ],
)
def test_bad_registry_configuration(config: dict[str, int] | str, message: str):
    with pytest.raises(ValueError, match=message):
        BulkheadRegistry.from_config(config)


def test_bad_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        BulkheadRegistry.from_config({"a": 1}, kind="fork")  # type: ignore[call-overload]


def test_thread_pool_limits_are_named() -> None:
    from phalanx.resilience.threadpool import QUEUE_MAX, WORKERS_MAX

    ThreadPoolBulkhead(max_workers=WORKERS_MAX, max_queue=QUEUE_MAX).shutdown()
    with pytest.raises(ValueError, match="max_workers"):
        ThreadPoolBulkhead(max_workers=WORKERS_MAX + 1)
    with pytest.raises(ValueError, match="max_queue"):
        ThreadPoolBulkhead(max_workers=1, max_queue=QUEUE_MAX + 1)
