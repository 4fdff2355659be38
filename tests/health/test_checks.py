"""HealthRegistry: check outcomes, timeouts, caching, coalescing, startup gating, limits."""

from __future__ import annotations

import asyncio
import threading

import pytest

from phalanx.clock import ManualClock
from phalanx.health import (
    MESSAGE_CHARS_MAX,
    CheckFailed,
    CheckStatus,
    HealthRegistry,
    Probe,
    ProbeStatus,
)


def make(**kwargs: object) -> tuple[HealthRegistry, ManualClock]:
    clock = ManualClock()
    return HealthRegistry(clock=clock, **kwargs), clock  # type: ignore[arg-type]


async def wait_threads_idle(registry: HealthRegistry) -> None:
    # Waits for a released worker thread to finish; bounded, and not a timing assertion.
    for _ in range(500):
        if registry.statistics().sync_threads_busy == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("worker threads still busy")


# -- outcomes ----------------------------------------------------------------------------


async def test_sync_and_async_checks_pass() -> None:
    registry, _ = make()

    async def async_ok() -> None:
        return None

    registry.add("sync", lambda: True)
    registry.add("async", async_ok)
    report = await registry.run_probe("readiness")
    assert report.status is ProbeStatus.OK
    assert report.http_status == 200
    assert [(r.name, r.status) for r in report.checks] == [
        ("sync", CheckStatus.OK),
        ("async", CheckStatus.OK),
    ]


async def test_returning_false_fails() -> None:
    registry, _ = make()
    registry.add("db", lambda: False)
    report = await registry.run_probe(Probe.READINESS)
    assert report.status is ProbeStatus.FAIL
    assert report.http_status == 503
    assert report.reason == "failing: db"
    assert report.checks[0].status is CheckStatus.FAIL
    assert report.checks[0].message == "check returned False"


async def test_raising_fails_with_the_exception_as_message() -> None:
    registry, _ = make()

    def broken() -> None:
        raise ConnectionError("refused")

    async def explained() -> None:
        raise CheckFailed("replica lag 12 s")

    registry.add("broken", broken)
    registry.add("explained", explained)
    results = {r.name: r for r in (await registry.run_probe("readiness")).checks}
    assert results["broken"].message == "ConnectionError: refused"
    assert results["explained"].message == "replica lag 12 s"
    assert not results["broken"].ok
    assert not results["explained"].ok


async def test_returned_string_is_the_message_of_a_pass() -> None:
    registry, _ = make()
    registry.add("queue", lambda: "depth 3")
    result = await registry.run_check("queue")
    assert result.ok
    assert result.message == "depth 3"


async def test_long_messages_are_truncated() -> None:
    registry, _ = make()

    def noisy() -> None:
        raise CheckFailed("x" * (MESSAGE_CHARS_MAX * 2))

    registry.add("noisy", noisy)
    result = await registry.run_check("noisy")
    assert len(result.message) == MESSAGE_CHARS_MAX
    assert result.message.endswith("...")


async def test_duration_and_time_checked_come_from_the_clock() -> None:
    registry, clock = make()

    async def slow() -> None:
        clock.advance(0.25)

    clock.advance(10.0)
    registry.add("slow", slow)
    result = await registry.run_check("slow")
    assert result.duration_s == pytest.approx(0.25)
    assert result.checked_at_s == pytest.approx(10.25)
    assert result.checked_at_wall_s == pytest.approx(clock.wall_s())
    body = result.to_json(verbose=True, now_s=11.25)
    assert body["duration_ms"] == 250.0
    assert body["age_ms"] == 1000.0
    assert body["checked_at"] == "2023-11-14T22:13:30.250Z"
    assert body["critical"] is True


async def test_non_critical_failure_degrades_but_still_answers_200() -> None:
    registry, _ = make()
    registry.add("db", lambda: True)
    registry.add("cache", lambda: False, critical=False)
    report = await registry.run_probe("readiness")
    assert report.status is ProbeStatus.DEGRADED
    assert report.http_status == 200
    assert report.reason == "degraded: cache"
    assert [r.critical for r in report.checks] == [True, False]


async def test_probes_only_run_their_own_checks() -> None:
    registry, _ = make()
    calls: list[str] = []
    registry.add("loop", lambda: calls.append("loop"), probes="liveness")
    registry.add("db", lambda: calls.append("db"), probes=["readiness"])
    registry.add("both", lambda: calls.append("both"), probes=("liveness", Probe.READINESS))
    live = await registry.run_probe("liveness")
    assert [r.name for r in live.checks] == ["loop", "both"]
    ready = await registry.run_probe("readiness")
    assert [r.name for r in ready.checks] == ["db", "both"]
    # "both" was cached from the liveness run, so it ran once.
    assert sorted(calls) == ["both", "db", "loop"]
    assert [c.name for c in registry.checks("liveness")] == ["loop", "both"]


async def test_a_probe_without_checks_passes() -> None:
    registry, _ = make()
    report = await registry.run_probe("liveness")
    assert report.status is ProbeStatus.OK
    assert report.checks == ()


async def test_decorator_registers_under_the_function_name() -> None:
    registry, _ = make()

    @registry.check(probes="liveness", timeout_s=2.0)
    async def event_loop_responsive() -> bool:
        return True

    (check,) = registry.checks()
    assert check.name == "event_loop_responsive"
    assert check.timeout_s == 2.0
    assert check.probes == frozenset({Probe.LIVENESS})
    assert (await registry.run_check("event_loop_responsive")).ok


async def test_remove_unregisters() -> None:
    registry, _ = make()
    registry.add("db", lambda: False)
    registry.remove("db")
    assert (await registry.run_probe("readiness")).status is ProbeStatus.OK
    with pytest.raises(KeyError):
        registry.remove("db")


# -- timeouts ----------------------------------------------------------------------------


async def test_hung_async_check_is_cancelled_at_its_timeout() -> None:
    registry, _ = make()
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    registry.add("hangs", hangs, timeout_s=0.05)
    result = await registry.run_check("hangs")
    assert result.status is CheckStatus.TIMEOUT
    assert result.message == "timed out after 0.05 s"
    assert cancelled.is_set()
    assert registry.statistics().check_timeouts == 1


async def test_hung_sync_check_does_not_hang_the_probe_and_is_not_restarted() -> None:
    registry, _ = make(cache_s=0.0)
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> bool:
        calls.append(1)
        release.wait(10.0)
        return True

    registry.add("hangs", hangs, timeout_s=0.05)
    first = await registry.run_probe("readiness")
    assert first.status is ProbeStatus.FAIL
    assert first.checks[0].status is CheckStatus.TIMEOUT
    assert registry.statistics().sync_threads_busy == 1

    # The thread is still stuck: the next probe reports that instead of piling up threads.
    second = await registry.run_check("hangs")
    assert second.status is CheckStatus.TIMEOUT
    assert "previous run still running" in second.message
    assert len(calls) == 1

    release.set()
    await wait_threads_idle(registry)
    third = await registry.run_check("hangs")
    assert third.ok
    assert len(calls) == 2


async def test_sync_threads_max_caps_hung_worker_threads() -> None:
    registry, clock = make(sync_threads_max=1)
    release = threading.Event()
    registry.add("a", lambda: release.wait(10.0), timeout_s=0.05)
    registry.add("b", lambda: True, timeout_s=0.05)
    assert (await registry.run_check("a")).status is CheckStatus.TIMEOUT
    blocked = await registry.run_check("b")
    assert blocked.status is CheckStatus.TIMEOUT
    assert "sync_threads_max" in blocked.message
    release.set()
    await wait_threads_idle(registry)
    # "b" is cached for cache_s; its fresh run happens once the clock moves past it.
    assert await registry.run_check("b") is blocked
    clock.advance(1.0)
    assert (await registry.run_check("b")).ok


async def test_more_healthy_sync_checks_than_threads_wait_for_a_thread_and_pass() -> None:
    registry, _ = make(sync_threads_max=2)
    release = threading.Event()
    for name in ("a", "b", "c", "d"):
        registry.add(name, lambda: release.wait(10.0), timeout_s=10.0)
    probe = asyncio.create_task(registry.run_probe("readiness"))
    for _ in range(500):  # until both threads are taken and the other checks queue for them
        if registry.statistics().sync_threads_busy == 2:
            break
        await asyncio.sleep(0.01)
    assert not probe.done()
    release.set()
    report = await probe
    assert report.status is ProbeStatus.OK
    assert [r.status for r in report.checks] == [CheckStatus.OK] * 4
    await wait_threads_idle(registry)


async def test_a_check_waits_for_a_thread_only_within_its_own_deadline() -> None:
    registry, clock = make(sync_threads_max=1)
    release = threading.Event()
    calls: list[str] = []
    registry.add("stuck", lambda: release.wait(10.0), timeout_s=0.05)
    registry.add("impatient", lambda: calls.append("impatient"), timeout_s=0.05)
    registry.add("patient", lambda: calls.append("patient"), timeout_s=10.0)
    assert (await registry.run_check("stuck")).status is CheckStatus.TIMEOUT

    patient = asyncio.create_task(registry.run_check("patient"))
    impatient = await registry.run_check("impatient")
    assert impatient.status is CheckStatus.TIMEOUT
    assert impatient.message == (
        "timed out after 0.05 s waiting for a check thread (sync_threads_max: all 1 busy)"
    )
    assert not patient.done()

    # The freed thread goes to the check still waiting, not to the one that gave up.
    release.set()
    assert (await patient).ok
    assert calls == ["patient"]
    await wait_threads_idle(registry)
    clock.advance(1.0)
    assert (await registry.run_check("impatient")).ok
    await wait_threads_idle(registry)


async def test_a_timeout_error_raised_by_the_check_is_a_failure_not_a_timeout() -> None:
    registry, _ = make()

    def sync_socket() -> None:
        raise TimeoutError("read timed out")

    async def async_upstream() -> None:
        raise TimeoutError("upstream said 504")

    registry.add("sync", sync_socket, timeout_s=10.0)
    registry.add("async", async_upstream, timeout_s=10.0)
    results = {r.name: r for r in (await registry.run_probe("readiness")).checks}
    assert results["sync"].status is CheckStatus.FAIL
    assert results["sync"].message == "TimeoutError: read timed out"
    assert results["async"].status is CheckStatus.FAIL
    assert results["async"].message == "TimeoutError: upstream said 504"
    assert registry.statistics().check_timeouts == 0
    assert registry.statistics().check_failures == 2


async def test_a_sync_check_raising_system_exit_fails_at_once() -> None:
    registry, _ = make()

    def exits() -> None:
        raise SystemExit(3)

    registry.add("exits", exits, timeout_s=30.0)
    result = await asyncio.wait_for(registry.run_check("exits"), 10.0)
    assert result.status is CheckStatus.FAIL
    assert result.message == "SystemExit: 3"
    await wait_threads_idle(registry)


async def test_sync_check_exceptions_are_failures() -> None:
    registry, _ = make()

    def broken() -> None:
        raise RuntimeError("disk full")

    registry.add("disk", broken)
    result = await registry.run_check("disk")
    assert result.status is CheckStatus.FAIL
    assert result.message == "RuntimeError: disk full"


# -- caching and coalescing --------------------------------------------------------------


async def test_results_are_cached_for_cache_s() -> None:
    registry, clock = make()
    calls: list[int] = []
    registry.add("db", lambda: calls.append(1), cache_s=5.0)
    first = await registry.run_check("db")
    clock.advance(4.9)
    assert await registry.run_check("db") is first
    assert len(calls) == 1
    clock.advance(0.1)
    assert await registry.run_check("db") is not first
    assert len(calls) == 2
    stats = registry.statistics()
    assert stats.cache_hits == 1
    assert stats.check_runs == 2


async def test_cache_s_zero_runs_every_time() -> None:
    registry, _ = make()
    calls: list[int] = []
    registry.add("db", lambda: calls.append(1), cache_s=0.0)
    for _ in range(3):
        await registry.run_check("db")
    assert len(calls) == 3


async def test_concurrent_probes_share_one_run() -> None:
    registry, _ = make()
    gate = asyncio.Event()
    calls: list[int] = []

    async def slow() -> None:
        calls.append(1)
        await gate.wait()

    registry.add("db", slow, timeout_s=5.0)
    probes = [asyncio.create_task(registry.run_probe("readiness")) for _ in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set()
    reports = await asyncio.gather(*probes)
    assert len(calls) == 1
    assert len({id(report.checks[0]) for report in reports}) == 1
    assert registry.statistics().coalesced_waits == 4


async def test_a_cancelled_waiter_does_not_cancel_the_shared_run() -> None:
    registry, _ = make()
    gate = asyncio.Event()
    registry.add("db", gate.wait, timeout_s=5.0)
    quitter = asyncio.create_task(registry.run_check("db"))
    stayer = asyncio.create_task(registry.run_check("db"))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert (await stayer).ok
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_aclose_cancels_runs_in_flight() -> None:
    registry, _ = make()
    registry.add("db", asyncio.Event().wait, timeout_s=5.0)
    waiter = asyncio.create_task(registry.run_check("db"))
    await asyncio.sleep(0)
    await registry.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter


# -- startup gating and manual readiness -------------------------------------------------


async def test_liveness_and_readiness_wait_for_startup() -> None:
    registry, clock = make()
    warmed = False
    registry.add("warm", lambda: warmed, probes="startup")
    registry.add("db", lambda: True)

    for probe in ("liveness", "readiness", "startup"):
        report = await registry.run_probe(probe)
        assert report.status is ProbeStatus.STARTING
        assert report.http_status == 503
        assert report.reason == "starting: waiting for warm"
    assert not registry.startup_complete

    warmed = True
    clock.advance(1.0)  # past the cached failure
    ready = await registry.run_probe("readiness")
    assert ready.status is ProbeStatus.OK
    assert [r.name for r in ready.checks] == ["db"]
    assert registry.startup_complete


async def test_startup_stays_complete_once_passed() -> None:
    registry, clock = make()
    calls: list[bool] = []
    state = {"ok": True}

    def warm() -> bool:
        calls.append(state["ok"])
        return state["ok"]

    registry.add("warm", warm, probes="startup")
    assert (await registry.run_probe("startup")).status is ProbeStatus.OK
    state["ok"] = False
    clock.advance(60.0)
    startup = await registry.run_probe("startup")
    assert startup.status is ProbeStatus.OK
    assert startup.reason == "started"
    assert (await registry.run_probe("liveness")).status is ProbeStatus.OK
    assert calls == [True]  # never run again after completing


async def test_each_startup_check_needs_to_pass_once_not_together() -> None:
    registry, clock = make()
    state = {"a": True, "b": False}
    registry.add("a", lambda: state["a"], probes="startup")
    registry.add("b", lambda: state["b"], probes="startup")
    assert (await registry.run_probe("startup")).reason == "starting: waiting for b"
    state.update(a=False, b=True)
    clock.advance(1.0)
    report = await registry.run_probe("startup")
    assert report.http_status == 200
    assert report.status is ProbeStatus.DEGRADED
    assert report.reason == "started; degraded: a"
    assert registry.startup_complete


async def test_non_critical_startup_checks_do_not_gate() -> None:
    registry, _ = make()
    registry.add("optional", lambda: False, probes="startup", critical=False)
    report = await registry.run_probe("startup")
    assert report.status is ProbeStatus.DEGRADED
    assert registry.startup_complete


async def test_no_startup_checks_means_started() -> None:
    registry, _ = make()
    assert (await registry.run_probe("readiness")).status is ProbeStatus.OK
    assert registry.startup_complete


def test_startup_is_complete_from_the_start_without_critical_startup_checks() -> None:
    registry, _ = make()

    def started() -> tuple[bool, bool]:
        return registry.startup_complete, registry.statistics().startup_complete

    assert started() == (True, True)
    registry.add("optional", lambda: False, probes="startup", critical=False)
    assert started() == (True, True)
    registry.add("migrations", lambda: True, probes="startup")
    assert started() == (False, False)
    registry.remove("migrations")
    assert started() == (True, True)


async def test_a_passing_run_check_completes_startup_without_a_probe() -> None:
    registry, _ = make()
    registry.add("migrations", lambda: True, probes="startup")
    assert not registry.startup_complete
    assert (await registry.run_check("migrations")).ok
    assert registry.startup_complete


async def test_a_startup_check_added_after_startup_was_reported_does_not_gate() -> None:
    registry, _ = make()
    assert (await registry.run_probe("liveness")).status is ProbeStatus.OK
    registry.add("late", lambda: False, probes="startup")
    assert registry.startup_complete
    assert (await registry.run_probe("liveness")).status is ProbeStatus.OK
    startup = await registry.run_probe("startup")
    assert startup.http_status == 200
    assert startup.reason == "started; degraded: late"


async def test_set_ready_false_drains_readiness_only() -> None:
    registry, _ = make()
    calls: list[int] = []
    registry.add("db", lambda: calls.append(1))
    registry.set_ready(False)
    ready = await registry.run_probe("readiness")
    assert ready.status is ProbeStatus.FAIL
    assert ready.reason == "not ready: draining"
    assert calls == []
    assert (await registry.run_probe("liveness")).status is ProbeStatus.OK
    assert not registry.statistics().manual_ready

    registry.set_ready(False, reason="maintenance")
    assert (await registry.run_probe("readiness")).reason == "not ready: maintenance"
    registry.set_ready(True)
    assert (await registry.run_probe("readiness")).status is ProbeStatus.OK


# -- configuration and limits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"cache_s": -0.5}, "cache_s"),
        ({"probes": "ready"}, "probes"),
        ({"probes": ["liveness", "bogus"]}, "probes"),
        ({"probes": []}, "probes"),
    ],
)
def test_bad_check_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    registry, _ = make()
    with pytest.raises(ValueError, match=rf"^{field}:"):
        registry.add("db", lambda: True, **kwargs)  # type: ignore[arg-type]
    assert registry.checks() == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"cache_s": -1.0}, "cache_s"),
        ({"checks_max": 0}, "checks_max"),
        ({"sync_threads_max": 0}, "sync_threads_max"),
    ],
)
def test_bad_registry_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        HealthRegistry(**kwargs)  # type: ignore[arg-type]


def test_duplicate_and_malformed_names_are_rejected() -> None:
    registry, _ = make()
    registry.add("db", lambda: True)
    with pytest.raises(ValueError, match=r"^name: a check named 'db' is already registered"):
        registry.add("db", lambda: True)
    for bad in ("", " db", "db check", "x" * 101):
        with pytest.raises(ValueError, match=r"^name:"):
            registry.add(bad, lambda: True)
    with pytest.raises(ValueError, match=r"^fn:"):
        registry.add("other", "not callable")  # type: ignore[arg-type]


def test_checks_max_is_enforced() -> None:
    registry, _ = make(checks_max=2)
    registry.add("a", lambda: True)
    registry.add("b", lambda: True)
    with pytest.raises(ValueError, match=r"^checks_max: the registry already holds 2 checks"):
        registry.add("c", lambda: True)
    registry.remove("a")
    registry.add("c", lambda: True)


async def test_statistics_count_what_happened() -> None:
    registry, clock = make()
    registry.add("ok", lambda: True, probes=["liveness", "readiness"])
    registry.add("bad", lambda: False)
    await registry.run_probe("liveness")
    await registry.run_probe("readiness")
    clock.advance(1.0)
    await registry.run_probe("readiness")
    stats = registry.statistics()
    assert stats.checks == 2
    assert stats.startup_complete
    assert stats.check_runs == 4
    assert stats.check_failures == 2
    assert stats.check_timeouts == 0
    assert stats.cache_hits == 1
    assert stats.probes_served == {"liveness": 1, "readiness": 2, "startup": 0}
