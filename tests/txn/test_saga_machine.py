"""The saga executor's decisions as transcripts (no store, no clock, no threads)."""

from __future__ import annotations

import pytest

from phalanx.errors import InvariantViolation
from phalanx.txn.saga import SagaDefinition, SagaMachine, SagaRecord, SagaStatus, Step
from phalanx.txn.saga.machine import Persist, RunAction, RunCompensation


def noop(ctx: object) -> None:
    return None


def definition(on_stall: str = "compensate") -> SagaDefinition:
    return SagaDefinition(
        "order",
        [Step(name, noop, noop, executions_max=2, compensation_executions_max=2) for name in "abc"],
        stall_timeout_s=100.0,
        on_stall=on_stall,
    )


def fresh(on_stall: str = "compensate") -> SagaMachine:
    record = SagaRecord("s1", "order", SagaStatus.RUNNING, 0, {"n": 1}, deadline_s=100.0)
    return SagaMachine(definition(on_stall), record)


def run(machine: SagaMachine, now_s: float = 1.0) -> RunAction | RunCompensation | None:
    effects = machine.next(now_s)
    if not effects:
        return None
    assert isinstance(effects[0], Persist)  # persisted before anything runs
    return effects[1] if len(effects) > 1 else None  # type: ignore[return-value]


def test_steps_run_in_order_with_keys_then_complete() -> None:
    m = fresh()
    for index, name in enumerate("abc"):
        effect = run(m)
        assert effect == RunAction(index, f"s1:{name}")
        assert m.record.executions == 1
        [persist] = m.on_action_done({"step": name}, 2.0)
        assert isinstance(persist, Persist)
        assert persist.event.kind == "step-done"
    [done] = m.next(3.0)
    assert isinstance(done, Persist)
    assert done.record.status is SagaStatus.COMPLETED
    assert done.record.results == {n: {"step": n} for n in "abc"}
    assert m.next(4.0) == []


def test_a_definite_failure_compensates_earlier_steps_newest_first() -> None:
    m = fresh()
    for _ in range(2):
        run(m)
        m.on_action_done(None, 1.0)
    run(m)
    m.on_action_failed("declined", applied=False, now_s=1.0)
    assert m.record.status is SagaStatus.COMPENSATING
    order = []
    while (effect := run(m)) is not None:
        assert isinstance(effect, RunCompensation)
        order.append(effect.key)
        m.on_compensation_done(1.0)
    assert order == ["s1:b:compensate", "s1:a:compensate"]
    assert m.record.status is SagaStatus.COMPENSATED


def test_an_unknown_outcome_compensates_the_failed_step_too() -> None:
    m = fresh()
    run(m)
    m.on_action_failed("Timeout", applied=None, now_s=1.0)
    effect = run(m)
    assert effect == RunCompensation(0, "s1:a:compensate")


def test_a_step_that_keeps_crashing_its_worker_reaches_the_cap() -> None:
    m = fresh()
    assert run(m) == RunAction(0, "s1:a")
    # The worker dies; a new one rebuilds the machine from the persisted record.
    m = SagaMachine(definition(), m.record)
    assert run(m) == RunAction(0, "s1:a")
    m = SagaMachine(definition(), m.record)
    [persist] = m.next(1.0)
    assert isinstance(persist, Persist)
    assert persist.record.status is SagaStatus.COMPENSATING
    assert "started 2 times" in persist.record.error
    assert run(m) == RunCompensation(0, "s1:a:compensate")


def test_a_compensation_that_keeps_failing_dead_letters() -> None:
    m = fresh()
    run(m)
    m.on_action_done(None, 1.0)
    run(m)
    m.on_action_failed("no", applied=False, now_s=1.0)
    for _ in range(2):
        assert run(m) == RunCompensation(0, "s1:a:compensate")
        m.on_compensation_failed("db down", 1.0)
    [persist] = m.next(1.0)
    assert isinstance(persist, Persist)
    assert persist.record.status is SagaStatus.DEAD_LETTER
    assert persist.record.resume_status is SagaStatus.COMPENSATING
    assert m.next(2.0) == []


@pytest.mark.parametrize(
    ("policy", "status"),
    [("compensate", SagaStatus.COMPENSATING), ("alert", SagaStatus.DEAD_LETTER)],
)
def test_the_stall_timer_fires_per_policy(policy: str, status: SagaStatus) -> None:
    m = fresh(policy)
    run(m)
    m.on_action_done(None, 1.0)
    run(m)  # step b started, then nothing more happened until the timer
    [persist] = m.next(100.0)
    assert isinstance(persist, Persist)
    assert persist.record.status is status
    assert persist.record.error.startswith("stalled")
    if status is SagaStatus.COMPENSATING:
        assert run(m, 100.0) == RunCompensation(1, "s1:b:compensate")


def test_results_out_of_order_are_invariant_violations() -> None:
    m = fresh()
    with pytest.raises(InvariantViolation):
        m.on_compensation_done(1.0)
    with pytest.raises(ValueError, match="distinct"):
        SagaDefinition("x", [Step("a", noop), Step("a", noop)])


def grouped() -> SagaMachine:
    steps = [
        Step("order", noop, noop),
        Step("reserve", noop, noop, group="prepare"),
        Step("quote", noop, noop, group="prepare"),
        Step("ship", noop, noop),
    ]
    record = SagaRecord("g1", "grouped", SagaStatus.RUNNING, 0, {}, deadline_s=100.0)
    return SagaMachine(SagaDefinition("grouped", steps), record)


def test_a_parallel_group_starts_together_and_ends_when_all_are_done() -> None:
    m = grouped()
    run(m)
    m.on_action_done(None, 1.0)
    effects = m.next(1.0)
    assert effects[1:] == [RunAction(1, "g1:reserve"), RunAction(2, "g1:quote")]
    m.on_action_done("r", 1.0, step=2)
    assert m.record.step == 1  # the group is not done yet
    # A crash now: only the unfinished member runs again.
    m = SagaMachine(m.definition, m.record)
    assert m.next(1.0)[1:] == [RunAction(1, "g1:reserve")]
    m.on_action_done("q", 1.0, step=1)
    assert m.record.step == 3
    assert run(m) == RunAction(3, "g1:ship")


def test_a_failed_member_compensates_the_whole_group_and_before() -> None:
    m = grouped()
    run(m)
    m.on_action_done(None, 1.0)
    m.next(1.0)
    m.on_action_done("r", 1.0, step=1)
    m.on_action_failed("no quote", applied=False, now_s=1.0, step=2)
    keys = []
    while (effect := run(m)) is not None:
        assert isinstance(effect, RunCompensation)
        keys.append(effect.key)
        m.on_compensation_done(1.0)
    assert keys == ["g1:quote:compensate", "g1:reserve:compensate", "g1:order:compensate"]


def test_group_members_must_be_consecutive() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        SagaDefinition(
            "x", [Step("a", noop, group="g"), Step("b", noop), Step("c", noop, group="g")]
        )
