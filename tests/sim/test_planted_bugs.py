"""The simulator has teeth: each classic Raft bug, planted, is found within a bounded number
of seeds, by the check one would expect.

The bounds are generous multiples of what the current core needs (see docs/sim.md), so that
ordinary changes to the core, which move the seeds around, do not break these tests.
"""

from __future__ import annotations

import os

import pytest

from phalanx.sim.planted import BUGS, hunt
from phalanx.sim.run import simulate

# bug -> (seeds allowed, checks that may catch it)
EXPECTED = {
    "vote-without-log-check": (
        60,
        {
            "leader-completeness",
            "commit-agreement",
            "log-matching",
            "state-machine-safety",
            "core-invariant",
        },
    ),
    "apply-before-commit": (10, {"apply-order", "state-machine-safety"}),
    "append-without-prev-check": (
        300,
        {
            "log-matching",
            "commit-agreement",
            "state-machine-safety",
            "leader-completeness",
            "core-invariant",
        },
    ),
    "no-step-down": (300, {"election-safety"}),
}
SLOW = {"vote-not-persisted": (1_500, {"single-vote", "election-safety"})}


def test_every_bug_is_covered() -> None:
    assert set(BUGS) == {*EXPECTED, *SLOW, "figure-8"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_planted_bug_is_found(name: str) -> None:
    bound, checks = EXPECTED[name]
    result = hunt(BUGS[name], bound)
    assert result.seed is not None, f"{name} survived {bound} seeds"
    assert result.check in checks, result.failure.report if result.failure else ""
    assert result.failure is not None
    # The report says how to replay it.
    assert f"--seed {result.seed} " in result.failure.report


@pytest.mark.skipif(
    not os.environ.get("PHALANX_SIM_SLOW"), reason="about a minute; set PHALANX_SIM_SLOW=1"
)
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_planted_bug_is_found(name: str) -> None:
    bound, checks = SLOW[name]
    result = hunt(BUGS[name], bound)
    assert result.seed is not None, f"{name} survived {bound} seeds"
    assert result.check in checks


def test_a_failure_replays_exactly() -> None:
    bug = BUGS["no-step-down"]
    first = hunt(bug, 300)
    again = hunt(bug, 1, first_seed=first.seed or 0)
    assert first.failure is not None
    assert again.failure is not None
    assert again.seed == first.seed
    assert again.failure.detail == first.failure.detail
    assert again.failure.report == first.failure.report


def test_bugs_are_unplanted_afterwards() -> None:
    with BUGS["vote-without-log-check"].planted():
        pass
    for seed in range(3):
        simulate(seed, faults="crash,partition", duration_s=4.0)
