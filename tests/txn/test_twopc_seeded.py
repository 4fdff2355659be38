"""Seeded random runs of 2PC over the in-memory twins: crashes anywhere, then recovery.

Each seed picks participants, their votes, a protocol step at which the coordinator "dies"
(the observer raises, so nothing after that step runs, as with SIGKILL), participants that
are down during phase 2, and which side recovers (a restarted coordinator, or only the
participants asking the log). After recovery, atomicity must hold: every participant applied
the transaction or none did, and nothing is left prepared. A failing seed replays exactly.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from phalanx.clock import ManualClock
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc import (
    Coordinator,
    MemoryBranch,
    MemoryDecisionLog,
    MemoryParticipant,
    ParticipantResolver,
    TransactionAborted,
)

SEEDS = range(300)


class Died(BaseException):
    """The coordinator process ends here."""


def run_seed(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock(wall_start_s=10_000.0)
    names = [f"p{i}" for i in range(rng.randint(1, 4))]
    participants = {n: MemoryParticipant(n, clock=clock) for n in names}
    for participant in participants.values():
        participant.vote_no = rng.random() < 0.15
    log = MemoryDecisionLog()
    steps = (
        ["voting", "decided:commit", "decided:abort", "ended"]
        + [f"prepared:{n}" for n in names]
        + [f"finished:{n}" for n in names]
    )
    die_at = rng.choice([*steps, "never"])
    down_in_phase2 = {n for n in names if rng.random() < 0.2}

    dead = {"now": False}

    def observe(step: str) -> None:
        # Once dead, every later step dies too (a prepare thread's death reaches the main
        # thread as a failed future; the main thread must not carry on either).
        if dead["now"] or step == die_at:
            dead["now"] = True
            raise Died
        if step.startswith("decided:"):
            for n in down_in_phase2:
                participants[n].down = True

    coordinator = Coordinator(
        "c1", log, participants.values(), observer=observe, prepare_workers_max=1, clock=clock
    )
    txn = coordinator.begin()
    for n in names:
        branch = txn.enlist(n)
        assert isinstance(branch, MemoryBranch)
        branch.put("k", seed)
    with contextlib.suppress(Died, TransactionAborted):
        txn.commit()
    coordinator.close()
    for participant in participants.values():
        participant.crash()  # unprepared work is lost with the process
        participant.down = False
    clock.advance(3600)
    if rng.random() < 0.5:
        with Coordinator("c1", log, participants.values(), clock=clock) as restarted:
            assert restarted.recover().errors == []
    else:
        for participant in participants.values():
            resolver = ParticipantResolver(
                participant,
                {"c1": log},
                inquiry_after_s=30.0,
                backoff=Backoff(base_delay_s=1.0, max_delay_s=1.0, jitter="none"),
                clock=clock,
                rng=random.Random(seed),
            )
            assert resolver.run_once().errors == []
        # The participants' inquiries settled everything; a coordinator that comes back
        # later finishes its log (commits every participant already applied) and ends it.
        with Coordinator("c1", log, participants.values(), clock=clock) as late:
            late.recover()
    applied = {n: p.data.get("k") == seed for n, p in participants.items()}
    assert len(set(applied.values())) == 1, f"seed {seed}: not atomic: {applied} (die {die_at})"
    assert all(p.prepared() == [] for p in participants.values()), f"seed {seed}"
    assert log.unfinished("c1") == [], f"seed {seed}"
    if any(p.vote_no for p in participants.values()):
        assert not any(applied.values()), f"seed {seed}: committed despite a no vote"


@pytest.mark.parametrize("chunk", range(3))
def test_atomicity_over_seeds(chunk: int) -> None:
    for seed in SEEDS[chunk::3]:
        run_seed(seed)
