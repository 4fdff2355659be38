"""Properties of the breaker under arbitrary interleavings, and under real threads.

Hypothesis drives random schedules of admissions, completions (in any order), clock moves
and manual controls; after every step the probe limit and the edge rules must hold.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.clock import ManualClock
from phalanx.errors import CircuitOpen
from phalanx.resilience.breaker import CircuitBreaker, Permit
from phalanx.resilience.breaker_config import (
    LEGAL_EDGES,
    MANUAL_REASONS,
    BreakerConfig,
    BreakerState,
)
from phalanx.resilience.breaker_machine import BreakerMachine
from phalanx.resilience.breaker_window import CountWindow, TimeWindow
from phalanx.resilience.events import Event

# Weighted so that schedules often reach half-open and stay there a while: admissions and
# failures are common, manual controls (which jump back to closed) rare.
_OPS = ["acquire"] * 6 + ["success", "failure", "failure", "release"] + ["advance"] * 2
_OPS += ["reset", "force_open", "disable"]
operations = st.lists(
    st.tuples(st.sampled_from(_OPS), st.integers(0, 50)), min_size=10, max_size=150
)


@settings(max_examples=300, deadline=None)
@given(
    ops=operations,
    probes=st.integers(1, 4),
    consecutive=st.one_of(st.none(), st.integers(1, 4)),
    window=st.sampled_from(["count", "time"]),
)
def test_probes_never_exceed_limit_and_edges_are_legal(
    ops: list[tuple[str, int]], probes: int, consecutive: int | None, window: str
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "prop",
        clock=clock,
        half_open_requests=probes,
        consecutive_failures=consecutive,
        open_timeout_s=10,
        window_size_calls=4,
        minimum_calls=2,
        window_type=window,  # type: ignore[arg-type]
        window_size_s=5,
    )
    events: list[Event] = []
    breaker.add_listener(events.append)
    outstanding: list[Permit] = []
    for op, arg in ops:
        if op == "acquire":
            permit = breaker.try_acquire()
            if permit is not None:
                outstanding.append(permit)
        elif op in ("success", "failure", "release") and outstanding:
            permit = outstanding.pop(arg % len(outstanding))
            getattr(permit, op)()
        elif op == "advance":
            clock.advance((0.0, 1.0, 5.0, 10.0)[arg % 4])
        elif op in ("reset", "force_open", "disable") and arg % 3 == 0:
            getattr(breaker, op)()
        machine = breaker._machine
        machine.check()
        in_flight_probes = sum(1 for p in outstanding if p.probe and not p._done)
        stats = breaker.statistics()
        assert stats.half_open_in_flight <= probes
        if stats.state is BreakerState.HALF_OPEN:
            assert stats.half_open_in_flight <= in_flight_probes
    for event in events:
        if event.kind != "state_change":
            continue
        edge = (BreakerState(event.data["from"]), BreakerState(event.data["to"]))
        assert edge in LEGAL_EDGES or event.data["reason"] in MANUAL_REASONS, event


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.lists(st.sampled_from("aSFI+"), max_size=200),
    probes=st.integers(1, 5),
)
def test_machine_admits_at_most_the_probe_limit_at_once(schedule: list[str], probes: int) -> None:
    """The sans-I/O core alone: the number of probes admitted and not yet completed never
    exceeds ``half_open_requests``, and every automatic transition is a legal edge."""
    config = BreakerConfig(
        half_open_requests=probes, consecutive_failures=1, open_timeout_s=1.0, minimum_calls=1
    )
    machine = BreakerMachine(config)
    now_s = 0.0
    probes_out: deque[int] = deque()  # generations of outstanding probe permits
    calls_out: deque[int] = deque()
    for step in schedule:
        if step == "a":
            verdict = machine.admit(now_s)
            if verdict == 2:
                probes_out.append(machine.generation)
            elif verdict == 1:
                calls_out.append(machine.generation)
        elif step in "SFI" and (probes_out or calls_out):
            is_probe = bool(probes_out)
            generation = probes_out.popleft() if is_probe else calls_out.popleft()
            if step == "S":
                machine.on_success(now_s, 0.0, generation, is_probe)
            elif step == "F":
                machine.on_failure(now_s, 0.0, generation, is_probe)
            else:
                machine.on_ignored(generation, is_probe)
        elif step == "+":
            now_s += 0.6
        machine.check()
        current = sum(1 for g in probes_out if g == machine.generation)
        if machine.state is BreakerState.HALF_OPEN:
            assert machine.probes_in_flight == current
        assert machine.probes_in_flight <= probes
        for transition in machine.take_transitions():
            assert (transition.from_state, transition.to_state) in LEGAL_EDGES


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 8),
    outcomes=st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), max_size=60),
)
def test_count_window_matches_a_model(size: int, outcomes: list[tuple[bool, bool, int]]) -> None:
    window = CountWindow(size)
    model: deque[tuple[bool, bool]] = deque(maxlen=size)
    for failed, slow, bulk in outcomes:
        if bulk:
            window.add_successes(bulk, 0.0)
            model.extend([(False, False)] * bulk)
        else:
            window.add(0.0, failed=failed, slow=slow)
            model.append((failed, slow))
        window.check()
        assert window.totals(0.0) == (
            len(model),
            sum(f for f, _ in model),
            sum(s for _, s in model),
        )


@settings(max_examples=200, deadline=None)
@given(
    size_s=st.integers(1, 6),
    steps=st.lists(st.tuples(st.floats(0, 4), st.booleans()), max_size=60),
)
def test_time_window_matches_a_model(size_s: int, steps: list[tuple[float, bool]]) -> None:
    window = TimeWindow(size_s)
    now_s = 100.0
    model: list[tuple[int, bool]] = []
    for delta_s, failed in steps:
        now_s += delta_s
        window.add(now_s, failed=failed, slow=False)
        model.append((int(now_s // 1), failed))
        window.check()
        first = int(now_s // 1) - size_s + 1
        live = [f for second, f in model if second >= first]
        assert window.totals(now_s)[:2] == (len(live), sum(live))


def test_threads_hammering_a_closed_breaker_lose_no_counts() -> None:
    breaker = CircuitBreaker(
        "hammer", failure_rate_threshold=1.0, consecutive_failures=None, minimum_calls=100
    )
    threads_n, calls_n = 8, 3000

    def work(seed: int) -> None:
        for i in range(calls_n):
            if (i + seed) % 7 == 0:
                with contextlib.suppress(ValueError):
                    breaker.call(_raise)
            else:
                breaker.call(int, "1")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = breaker.statistics()
    expected_failures = sum(
        1 for seed in range(threads_n) for i in range(calls_n) if (i + seed) % 7 == 0
    )
    assert stats.state is BreakerState.CLOSED
    assert stats.calls == threads_n * calls_n
    assert stats.failures == expected_failures
    assert stats.successes == threads_n * calls_n - expected_failures
    breaker._machine.window.check()  # type: ignore[attr-defined]


def _raise() -> None:
    raise ValueError("planned")


def test_threads_in_half_open_never_run_more_probes_than_allowed() -> None:
    clock = ManualClock()
    limit = 3
    breaker = CircuitBreaker(
        "probes", clock=clock, consecutive_failures=1, half_open_requests=limit, open_timeout_s=1
    )
    with_lock = threading.Lock()
    running = 0
    peak = 0
    admitted = 0
    barrier = threading.Barrier(16)

    def probe_call() -> None:
        nonlocal running, peak, admitted
        with with_lock:
            running += 1
            admitted += 1
            peak = max(peak, running)
        # Hold the probe so that the others pile up at admission.
        barrier_wait()
        with with_lock:
            running -= 1

    release = threading.Event()

    def barrier_wait() -> None:
        release.wait(timeout=5)

    def worker() -> None:
        barrier.wait(timeout=5)
        for _ in range(50):
            with contextlib.suppress(CircuitOpen):
                breaker.call(probe_call)

    with contextlib.suppress(ValueError):
        breaker.call(_raise)
    clock.advance(1.0)
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    # Let every worker try to get in while the admitted probes are held.
    for _ in range(200):
        with with_lock:
            if running == limit:
                break
        threading.Event().wait(0.005)
    release.set()
    for thread in threads:
        thread.join()
    assert peak == limit
    assert breaker.state is BreakerState.CLOSED
    # Exactly ``limit`` probes closed the breaker; everything afterwards ran closed.
    assert admitted >= limit
