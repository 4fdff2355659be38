"""Defining a saga: ordered steps, each an action and its compensation.

A step's ``action`` and ``compensation`` are plain functions of a :class:`StepContext`. Both
must be idempotent under ``ctx.idempotency_key`` (the saga id and the step name; the
compensation's key ends in ``:compensate``): after a crash the worker cannot know whether a
step it started finished, so it runs it again with the same key. A compensation must also be
harmless when its action never happened (it may be called for a step whose outcome is
unknown). The key is also published with :func:`phalanx.resilience.idempotency_key`, so
Phalanx's HTTP clients send it as ``Idempotency-Key``.

Per-step policies come from :mod:`phalanx.resilience`: ``retry`` (a :class:`Retry`, tried
within one execution) and ``timeout_s`` (a :class:`TimeLimiter` around each attempt).
``executions_max`` caps how many times a step is *started* across crashes and resumes.

**Parallel groups.** Consecutive steps with the same ``group`` name run at the same time
(the worker starts them together and waits for all). The group is done when every member
is; if any member fails, every member of the group and every step before it is compensated
(newest first), which is why compensations must be harmless for actions that never ran.
A member that finished before a crash is not run again (its result is in the log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from phalanx.resilience.retry import Retry

__all__ = ["GROUP_STEPS_MAX", "STEPS_MAX", "SagaDefinition", "Step", "StepContext"]

#: Most steps in one saga.
STEPS_MAX: Final = 64
#: Most steps in one parallel group.
GROUP_STEPS_MAX: Final = 16
STALL_POLICIES: Final = ("compensate", "alert")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step's function receives."""

    saga_id: str
    step: str
    idempotency_key: str
    payload: Mapping[str, Any]
    #: What earlier steps returned, by step name.
    results: Mapping[str, Any]
    #: The claim's fencing token: pass it to resources that reject stale writers.
    fence: int


Action = Callable[[StepContext], Any]


def _nothing(_ctx: StepContext) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    action: Action
    compensation: Action = _nothing
    retry: Retry | None = None
    timeout_s: float | None = None
    executions_max: int = 3
    compensation_executions_max: int = 5
    group: str | None = None


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """A named, ordered list of steps.

    ``stall_timeout_s`` is the durable timer: a saga still running that long after it
    started is stalled, and ``on_stall`` says what happens: ``"compensate"`` (undo what was
    done) or ``"alert"`` (dead-letter it for a person).
    """

    name: str
    steps: Sequence[Step]
    stall_timeout_s: float = 3600.0
    on_stall: str = "compensate"
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.steps) <= STEPS_MAX:
            raise ValueError(f"steps: 1 to {STEPS_MAX}, got {len(self.steps)}")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"steps: names must be distinct, got {names}")
        for step in self.steps:
            if step.executions_max < 1 or step.compensation_executions_max < 1:
                raise ValueError(f"step {step.name!r}: executions caps must be >= 1")
        if self.on_stall not in STALL_POLICIES:
            raise ValueError(f"on_stall: one of {STALL_POLICIES}, got {self.on_stall!r}")
        if self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s: must be > 0, got {self.stall_timeout_s}")
        self._index.update({name: i for i, name in enumerate(names)})
        seen_groups: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.group is None or (i > 0 and self.steps[i - 1].group == step.group):
                continue
            if step.group in seen_groups:
                raise ValueError(f"group {step.group!r}: its steps must be consecutive")
            seen_groups.add(step.group)
            if len(self.members(i)) > GROUP_STEPS_MAX:
                raise ValueError(f"group {step.group!r}: more than {GROUP_STEPS_MAX} steps")

    def members(self, index: int) -> range:
        """The indexes of the group that step ``index`` belongs to (itself alone if none)."""
        group = self.steps[index].group
        if group is None:
            return range(index, index + 1)
        first = index
        while first > 0 and self.steps[first - 1].group == group:
            first -= 1
        last = index
        while last + 1 < len(self.steps) and self.steps[last + 1].group == group:
            last += 1
        return range(first, last + 1)
