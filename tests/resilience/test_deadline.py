import asyncio

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import DeadlineExceeded
from phalanx.resilience.deadline import check_deadline, current_deadline, deadline, remaining_s


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None
    assert remaining_s() is None
    check_deadline()


def test_deadlines_only_tighten() -> None:
    clock = ManualClock()
    with deadline(10.0, clock=clock):
        assert remaining_s() == 10.0
        with deadline(30.0, clock=clock):
            assert remaining_s() == 10.0  # cannot extend the caller's budget
        with deadline(2.0, clock=clock):
            assert remaining_s() == 2.0
        clock.advance(4.0)
        assert remaining_s() == 6.0
    assert remaining_s() is None


def test_check_deadline_raises_when_spent() -> None:
    clock = ManualClock()
    with deadline(1.0, clock=clock):
        clock.advance(1.5)
        with pytest.raises(DeadlineExceeded, match="exceeded"):
            check_deadline("fetch")


def test_deadline_across_clocks_keeps_the_smaller_budget() -> None:
    outer, inner = ManualClock(100.0), ManualClock(5.0)
    with deadline(3.0, clock=outer), deadline(10.0, clock=inner) as value:
        assert value[1] is inner
        assert value[0] == 8.0


async def test_deadline_follows_tasks() -> None:
    clock = ManualClock()

    async def child() -> float | None:
        return remaining_s()

    with deadline(5.0, clock=clock):
        seen = await asyncio.create_task(child())
    assert seen == 5.0


def test_invalid_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"), deadline(0.0):
        pass
