"""The sans-I/O 2PC state machines as transcripts: events in, effects out."""

from __future__ import annotations

import random

import pytest

from phalanx.errors import InvariantViolation
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc import CoordinatorMachine, Decision, Gid, ParticipantMachine, Phase
from phalanx.txn.twopc.coordinator import LogDecision, LogEnd, SendDecision, SendPrepare
from phalanx.txn.twopc.gid import parse_branch
from phalanx.txn.twopc.participant import Apply, AskOutcome, BranchState, Vote

GID = Gid("c1", 3, 7)


def machine(*names: str, timeout_s: float = 5.0) -> CoordinatorMachine:
    return CoordinatorMachine(GID, names, prepare_timeout_s=timeout_s)


def test_gid_carries_the_coordinator_and_parses_back() -> None:
    branch = GID.branch("orders")
    assert branch == "phx1:c1:3.7:orders"
    parsed = parse_branch(branch)
    assert parsed is not None
    assert parsed.gid == GID
    assert parsed.participant == "orders"
    assert Gid.parse(str(GID)) == GID
    assert parse_branch("someone-elses-xact") is None
    assert len(Gid("c" * 40, 10**17, 10**17).branch("p" * 40)) <= 200
    with pytest.raises(ValueError, match="participant"):
        GID.branch("has space")


def test_all_yes_logs_commit_before_phase_two_then_ends() -> None:
    m = machine("a", "b")
    assert m.start(0.0) == [SendPrepare("a"), SendPrepare("b")]
    assert m.on_vote("a", True, 1.0) == []
    assert m.on_vote("b", True, 1.0) == [LogDecision(Decision.COMMIT, ("a", "b"))]
    assert m.phase is Phase.DECIDING
    effects = m.on_logged(Decision.COMMIT)
    assert effects == [SendDecision("a", Decision.COMMIT), SendDecision("b", Decision.COMMIT)]
    assert m.on_done("b") == []
    assert m.pending == ("a",)
    assert m.on_done("a") == [LogEnd()]
    assert m.finished


def test_a_no_vote_aborts_without_logging() -> None:
    m = machine("a", "b", "c")
    m.start(0.0)
    m.on_vote("a", True, 0.1)
    effects = m.on_vote("b", False, 0.2)
    # b rolled back on its own; a (prepared) and c (maybe preparing) are told to abort.
    assert effects == [SendDecision("a", Decision.ABORT), SendDecision("c", Decision.ABORT)]
    assert m.decision is Decision.ABORT
    assert "b voted no" in m.abort_reason
    assert m.on_vote("c", True, 0.3) == []  # late yes changes nothing
    m.on_done("a")
    assert m.on_done("c") == []  # presumed abort: nothing to forget in the log
    assert m.finished


def test_prepare_timeout_aborts_on_tick_and_on_a_late_vote() -> None:
    m = machine("a", "b", timeout_s=2.0)
    m.start(10.0)
    assert m.on_tick(11.9) == []
    assert m.on_tick(12.0) == [SendDecision("a", Decision.ABORT), SendDecision("b", Decision.ABORT)]
    late = machine("a", timeout_s=2.0)
    late.start(0.0)
    assert late.on_vote("a", True, 2.5) == [SendDecision("a", Decision.ABORT)]
    assert late.abort_reason == "prepare timed out"


def test_the_log_wins_when_an_inquiry_aborted_first() -> None:
    m = machine("a", "b")
    m.start(0.0)
    m.on_vote("a", True, 0.0)
    m.on_vote("b", True, 0.0)
    effects = m.on_logged(Decision.ABORT)
    assert effects == [SendDecision("a", Decision.ABORT), SendDecision("b", Decision.ABORT)]
    assert m.decision is Decision.ABORT


def test_recovered_machine_redoes_phase_two() -> None:
    m, effects = CoordinatorMachine.recovered(GID, ("a", "b"), Decision.COMMIT)
    assert effects == [SendDecision("a", Decision.COMMIT), SendDecision("b", Decision.COMMIT)]
    assert m.on_phase2_failed("a") == []
    m.on_done("b")
    assert m.pending == ("a",)
    assert m.on_done("a") == [LogEnd()]


def test_misuse_is_an_invariant_violation() -> None:
    m = machine("a")
    with pytest.raises(InvariantViolation):
        m.on_logged(Decision.COMMIT)
    m.start(0.0)
    with pytest.raises(InvariantViolation):
        m.on_vote("zz", True, 0.0)
    with pytest.raises(ValueError, match="distinct"):
        machine("a", "a")
    with pytest.raises(ValueError, match="participants"):
        machine()


def participant(inquiry_after_s: float = 10.0) -> ParticipantMachine:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=8.0, jitter="none")
    return ParticipantMachine(
        GID.branch("a"), inquiry_after_s=inquiry_after_s, backoff=backoff, rng=random.Random(1)
    )


def test_participant_votes_then_applies_the_decision() -> None:
    p = participant()
    assert p.on_prepared(True, 0.0) == [Vote(yes=True)]
    assert p.on_decision(Decision.COMMIT) == [Apply(Decision.COMMIT)]
    assert p.on_decision(Decision.COMMIT) == []  # duplicate
    p.on_applied(Decision.COMMIT)
    assert p.state is BranchState.COMMITTED
    refused = participant()
    assert refused.on_prepared(False, 0.0) == [Vote(yes=False)]
    assert refused.settled


def test_prepared_participant_asks_after_the_wait_then_backs_off() -> None:
    p = participant(inquiry_after_s=10.0)
    p.on_prepared(True, 100.0)
    assert p.on_tick(109.9) == []
    asked_at = []
    now_s = 110.0
    while now_s < 140.0:
        if p.on_tick(now_s) == [AskOutcome(GID.branch("a"))]:
            asked_at.append(now_s)
        now_s += 0.5
    # first at 110, then 1 s, 2 s, 4 s, 8 s, 8 s ... later (no jitter)
    assert asked_at[:5] == [110.0, 111.0, 113.0, 117.0, 125.0]
    assert p.on_decision(Decision.ABORT) == [Apply(Decision.ABORT)]
    assert p.on_tick(1000.0) == []  # applying: no more inquiries


def test_found_prepared_asks_by_its_age_and_retries_a_failed_apply() -> None:
    p = ParticipantMachine.found_prepared(
        GID.branch("a"),
        prepared_at_s=50.0,
        inquiry_after_s=30.0,
        backoff=Backoff(base_delay_s=2.0, max_delay_s=2.0, jitter="none"),
        rng=random.Random(0),
    )
    assert p.on_tick(79.0) == []
    assert p.on_tick(80.0) == [AskOutcome(GID.branch("a"))]
    assert p.on_decision(Decision.COMMIT) == [Apply(Decision.COMMIT)]
    p.on_apply_failed(80.0)
    assert p.state is BranchState.PREPARED
    assert p.on_tick(81.0) == []
    assert p.on_tick(82.0) == [AskOutcome(GID.branch("a"))]
