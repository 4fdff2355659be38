"""The simulator has teeth: each classic Raft bug, planted, is found within a bounded number
of seeds, by the check one would expect.

The bounds are generous multiples of what the current core needs (see docs/sim.md), so that
ordinary changes to the core, which move the seeds around, do not break these tests.
"""

from __future__ import annotations

import pytest

from phalanx.sim.cluster import Cluster
from phalanx.sim.planted import BUGS, hunt
from phalanx.sim.run import settings_for, simulate

# bug -> (seeds allowed, checks that may catch it)
EXPECTED = {
    "figure-8": (
        20,
        {"leader-completeness", "commit-agreement", "state-machine-safety", "log-matching"},
    ),
    "vote-not-persisted": (20, {"single-vote", "election-safety"}),
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


def test_every_bug_is_covered() -> None:
    assert set(BUGS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_planted_bug_is_found(name: str) -> None:
    bound, checks = EXPECTED[name]
    result = hunt(BUGS[name], bound)
    assert result.seed is not None, f"{name} survived {bound} seeds"
    assert result.check in checks, result.failure.report if result.failure else ""
    assert result.failure is not None
    # The report says how to replay it.
    assert f"--seed {result.seed} " in result.failure.report


# The targeted faults only steer the cluster with real faults (crashes, lost messages,
# partitions): the unmodified core and driver pass the very scenarios that catch the bugs.
NO_FALSE_ALARM = [
    # (bug, seeds, settings that undo a driver bug, a step the script must reach)
    ("figure-8", 40, {}, "rival-again"),  # the old leader crashed as it first committed
    ("vote-not-persisted", 12, {"early_send": ""}, "leader"),  # a voter lost its vote
]


@pytest.mark.parametrize(
    ("name", "seeds", "fix", "step"), NO_FALSE_ALARM, ids=[n for n, *_ in NO_FALSE_ALARM]
)
def test_the_correct_core_survives_the_targeted_scenario(
    name: str, seeds: int, fix: dict[str, object], step: str
) -> None:
    bug = BUGS[name]
    settings = settings_for(
        nodes=bug.nodes, faults=bug.faults, duration_s=bug.duration_s, **{**bug.settings, **fix}
    )
    reached: set[str] = set()
    for seed in range(seeds):
        cluster = Cluster(seed, settings)
        cluster.run()
        assert cluster.liveness_met_us is not None
        reached.update(last for _name, last in cluster.nemesis_log)
    # The script brought the cluster into the dangerous situation, and nothing broke.
    assert step in reached


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
