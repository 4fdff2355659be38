import pytest

from phalanx.errors import (
    BulkheadFull,
    CircuitOpen,
    Conflict,
    DeadlineExceeded,
    Indeterminate,
    InvariantViolation,
    NotLeader,
    Outcome,
    PhalanxError,
    Rejected,
    RetryError,
    Timeout,
    Unavailable,
    invariant,
    outcome_of,
)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, Outcome.OK),
        (CircuitOpen("open"), Outcome.FAILED),
        (BulkheadFull("full"), Outcome.FAILED),
        (NotLeader("no", leader_hint="n2"), Outcome.FAILED),
        (Conflict("in use"), Outcome.FAILED),
        (Timeout("late"), Outcome.INDETERMINATE),
        (DeadlineExceeded("spent"), Outcome.INDETERMINATE),
        (Indeterminate("lost reply"), Outcome.INDETERMINATE),
        (ConnectionResetError("reset"), Outcome.INDETERMINATE),
        (InvariantViolation("bug"), Outcome.INDETERMINATE),
    ],
)
def test_three_valued_outcomes(error: BaseException | None, outcome: Outcome) -> None:
    assert outcome_of(error) is outcome


def test_the_tree() -> None:
    assert issubclass(CircuitOpen, Unavailable)
    assert issubclass(DeadlineExceeded, Timeout)
    assert issubclass(Conflict, Rejected)
    for kind in (Unavailable, Timeout, Rejected, Indeterminate, RetryError, InvariantViolation):
        assert issubclass(kind, PhalanxError)


def test_hints_travel_with_the_errors() -> None:
    assert CircuitOpen("open", retry_after_s=3.0).retry_after_s == 3.0
    assert NotLeader("no", leader_hint="node-2").leader_hint == "node-2"


def test_retry_error_takes_the_outcome_of_its_cause() -> None:
    refused = RetryError("gave up", attempts=3, last_exception=CircuitOpen("open"))
    assert outcome_of(refused) is Outcome.FAILED
    unknown = RetryError("gave up", attempts=3, last_exception=OSError("reset"))
    assert outcome_of(unknown) is Outcome.INDETERMINATE
    rejected_results = RetryError("gave up", attempts=3, last_exception=None, last_result=0)
    assert rejected_results.last_result == 0


def test_invariant() -> None:
    invariant(True, "fine")
    with pytest.raises(InvariantViolation, match="commit index went backwards"):
        invariant(False, "commit index went backwards")
