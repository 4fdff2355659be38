"""The one exception tree of Phalanx.

Every failure a caller of Phalanx can observe is one of these classes, so a single
``except PhalanxError`` catches them all and the subclass says what it means::

    PhalanxError
    ├── Unavailable            the call was not attempted: come back later
    │   ├── NotLeader          this node cannot serve it; ``leader_hint`` says who can
    │   ├── NoQuorum           too few replicas reachable to decide
    │   ├── CircuitOpen        a circuit breaker refuses calls (``retry_after_s``)
    │   ├── BulkheadFull       the concurrency limit and its wait queue are full
    │   └── RateLimited        the rate limiter has no token (``retry_after_s``)
    ├── Timeout                a deadline expired; the effect may or may not have happened
    │   └── DeadlineExceeded   the propagated budget of the whole operation ran out
    ├── Rejected               the request is wrong; retrying the same request will not help
    │   ├── BadRequest
    │   ├── TooLarge
    │   └── Conflict           e.g. an idempotency key is in use or reused with another payload
    │                          (``resilience.idempotency``: KeyInProgress, FingerprintMismatch)
    ├── Indeterminate          the outcome is unknown (sent, but no answer)
    ├── RetryError             a retry policy gave up; ``last_exception`` holds the cause
    └── InvariantViolation     a bug: an internal invariant does not hold

Outcomes are three-valued (see :class:`Outcome`): a call either definitely took effect (OK),
definitely did not (FAILED), or may have (INDETERMINATE). :class:`Unavailable` and
:class:`Rejected` are FAILED; :class:`Timeout` and :class:`Indeterminate` are INDETERMINATE.
"""

from __future__ import annotations

import enum

__all__ = [
    "BadRequest",
    "BulkheadFull",
    "CircuitOpen",
    "Conflict",
    "DeadlineExceeded",
    "Indeterminate",
    "InvariantViolation",
    "NoQuorum",
    "NotLeader",
    "Outcome",
    "PhalanxError",
    "RateLimited",
    "Rejected",
    "RetryError",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "invariant",
    "outcome_of",
]


class Outcome(enum.Enum):
    """What a caller knows about whether an operation took effect."""

    OK = "ok"
    FAILED = "fail"
    INDETERMINATE = "info"


class PhalanxError(Exception):
    """Base class of every error Phalanx raises on purpose."""

    outcome: Outcome = Outcome.FAILED


class Unavailable(PhalanxError):
    """The operation was refused before it started; it had no effect.

    ``retry_after_s`` is a hint of when trying again may succeed, or ``None``.
    """

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotLeader(Unavailable):
    """This node is not the leader; ``leader_hint`` names the one it believes is."""

    def __init__(self, message: str = "", *, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class NoQuorum(Unavailable):
    """Too few replicas are reachable to make a decision."""


class CircuitOpen(Unavailable):
    """A circuit breaker is open (or its half-open probes are all taken)."""


class BulkheadFull(Unavailable):
    """A bulkhead's concurrent slots and its bounded wait queue are all in use."""


class RateLimited(Unavailable):
    """A rate limiter has no capacity now; ``retry_after_s`` says when it will."""


class Timeout(PhalanxError):
    """A deadline expired before an answer came; the effect is unknown."""

    outcome = Outcome.INDETERMINATE


class DeadlineExceeded(Timeout):
    """The total budget of an operation (propagated to nested calls) is spent."""


class Rejected(PhalanxError):
    """The request itself is unacceptable; retrying it unchanged will fail again."""


class BadRequest(Rejected):
    """The request is malformed or violates a documented limit of its fields."""


class TooLarge(Rejected):
    """The request exceeds a documented size limit."""


class Conflict(Rejected):
    """The request conflicts with state: a key in use, or reused with a different payload."""


class Indeterminate(PhalanxError):
    """The request was sent, but whether it took effect cannot be known."""

    outcome = Outcome.INDETERMINATE


class RetryError(PhalanxError):
    """A retry policy gave up.

    ``last_exception`` is the error of the final attempt, or ``None`` when the attempts
    returned results that the policy rejected; then ``last_result`` holds the final one.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        last_exception: BaseException | None,
        last_result: object = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_exception = last_exception
        self.last_result = last_result

    @property
    def outcome(self) -> Outcome:  # type: ignore[override]
        last = self.last_exception
        if isinstance(last, PhalanxError):
            return last.outcome
        return Outcome.INDETERMINATE


class InvariantViolation(PhalanxError):
    """An internal invariant does not hold: this is a bug in Phalanx, never an expected failure."""

    outcome = Outcome.INDETERMINATE


def invariant(condition: bool, message: str) -> None:
    """Raise :class:`InvariantViolation` when ``condition`` is false.

    Unlike ``assert`` this is never stripped by ``python -O``.
    """
    if not condition:
        raise InvariantViolation(message)


def outcome_of(error: BaseException | None) -> Outcome:
    """Classify an error into the three-valued outcome.

    ``None`` is OK. Phalanx errors carry their own outcome; any other exception raised by a
    call is INDETERMINATE, because Phalanx cannot know how far the callee got.
    """
    if error is None:
        return Outcome.OK
    if isinstance(error, PhalanxError):
        return error.outcome
    return Outcome.INDETERMINATE
