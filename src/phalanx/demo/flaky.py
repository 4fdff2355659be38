"""A simulated remote dependency that misbehaves on a schedule.

The demo calls it through resilience policies. Its behaviour follows phases laid out over
the run: healthy, a latency spike, a hard outage, recovery. Randomness comes from a seeded
RNG, so a seed gives the same schedule of latencies and errors.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Final

from phalanx.clock import Clock

__all__ = ["PHASES", "FlakyDependency", "Phase"]


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    share: float  # fraction of the run this phase lasts
    latency_ms_min: float
    latency_ms_max: float
    error_rate: float


PHASES: Final = (
    Phase("healthy", 0.25, 5.0, 15.0, 0.01),
    Phase("latency spike", 0.2, 40.0, 180.0, 0.02),
    Phase("outage", 0.3, 1.0, 3.0, 1.0),
    Phase("recovered", 0.25, 5.0, 15.0, 0.01),
)


class FlakyDependency:
    """An async service whose latency and error rate change with the phase."""

    def __init__(self, *, duration_s: float, clock: Clock, seed: int) -> None:
        self.duration_s = duration_s
        self._clock = clock
        self._start_s = clock.now_s()
        self._rng = random.Random(seed)
        self.calls = 0
        self.calls_by_phase: dict[str, int] = {phase.name: 0 for phase in PHASES}

    def elapsed_s(self) -> float:
        return self._clock.now_s() - self._start_s

    def phase(self) -> Phase:
        position = self.elapsed_s() / self.duration_s
        for phase in PHASES:
            if position < phase.share:
                return phase
            position -= phase.share
        return PHASES[-1]

    async def __call__(self, item: int) -> int:
        phase = self.phase()
        self.calls += 1
        self.calls_by_phase[phase.name] += 1
        latency_s = self._rng.uniform(phase.latency_ms_min, phase.latency_ms_max) / 1000.0
        await asyncio.sleep(latency_s)
        if self._rng.random() < phase.error_rate:
            raise ConnectionError(f"inventory: connection reset ({phase.name})")
        return item
