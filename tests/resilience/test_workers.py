"""Worker threads that stuck calls cannot turn into a hung process."""

import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from phalanx.errors import Timeout
from phalanx.resilience.deadline import deadline, remaining_s
from phalanx.resilience.keys import current_idempotency_key, idempotency_key
from phalanx.resilience.threadpool import ThreadPoolBulkhead
from phalanx.resilience.timeout import TimeLimiter
from phalanx.resilience.workers import DaemonThreadPool

HUNG_CALL = """
import threading
from phalanx.errors import Timeout
from phalanx.resilience.{module} import {cls}

forever = threading.Event()
guard = {cls}({args})
try:
    guard.call(forever.wait)
except Timeout:
    print("timed out", flush=True)
"""


@pytest.mark.parametrize(
    ("module", "cls", "args"),
    [
        ("timeout", "TimeLimiter", "0.05"),
        ("threadpool", "ThreadPoolBulkhead", "max_workers=1, call_timeout_s=0.05"),
    ],
)
def test_an_abandoned_call_does_not_keep_the_process_alive(
    module: str, cls: str, args: str
) -> None:
    script = textwrap.dedent(HUNG_CALL.format(module=module, cls=cls, args=args))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "timed out"


def raise_socket_timeout() -> None:
    raise socket.timeout("read timed out")  # noqa: UP041 - the alias callers really see


@pytest.mark.parametrize(
    "guard",
    [TimeLimiter(10.0), ThreadPoolBulkhead(max_workers=1, call_timeout_s=10.0)],
    ids=["time_limiter", "thread_pool"],
)
def test_the_callees_own_timeout_error_is_not_mistaken_for_ours(guard: object) -> None:
    with pytest.raises(TimeoutError, match="read timed out") as info:
        guard.call(raise_socket_timeout)  # type: ignore[attr-defined]
    assert not isinstance(info.value, Timeout)
    stats = guard.statistics()  # type: ignore[attr-defined]
    assert getattr(stats, "timeouts", getattr(stats, "timed_out", None)) == 0


async def test_thread_pool_acall_passes_the_callees_timeout_error() -> None:
    pool = ThreadPoolBulkhead(max_workers=1, call_timeout_s=10.0)
    with pytest.raises(TimeoutError, match="read timed out") as info:
        await pool.acall(raise_socket_timeout)
    assert not isinstance(info.value, Timeout)
    pool.shutdown()


def test_thread_pool_calls_see_the_callers_deadline_and_key() -> None:
    pool = ThreadPoolBulkhead(max_workers=2)

    def look() -> tuple[bool, str | None]:
        left = remaining_s()
        return left is not None and 0 < left <= 5.0, current_idempotency_key()

    with deadline(5.0), idempotency_key("k-1"):
        assert pool.call(look) == (True, "k-1")
    pool.shutdown()


def test_daemon_pool_reuses_idle_workers_and_respects_its_bound() -> None:
    pool = DaemonThreadPool(2, name="test")
    for value in range(20):
        assert pool.submit(lambda v=value: v * 2).result(timeout=5) == value * 2
    assert len(pool._threads) <= 2
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 5) for _ in range(5)]
    assert len(pool._threads) == 2  # the rest queue behind the two workers
    gate.set()
    assert all(f.result(timeout=5) for f in futures)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(print)


def test_daemon_pool_shutdown_cancels_queued_work() -> None:
    pool = DaemonThreadPool(1, name="test")
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(timeout=5) is True
    assert queued.cancelled()
    with pytest.raises(ValueError, match="max_workers"):
        DaemonThreadPool(0, name="bad")
