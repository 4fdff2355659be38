"""The bank, set, lock and monotonic-reads checkers, each proven by planting its bug."""

import pytest

from chaos.helpers import FAIL, INFO, OK, Ops
from phalanx.chaos.bank import check_bank
from phalanx.chaos.check import check_history
from phalanx.chaos.history import HistoryError
from phalanx.chaos.lockcheck import check_lock, holds
from phalanx.chaos.monotonic import check_monotonic_reads
from phalanx.chaos.setcheck import check_set
from phalanx.chaos.verdict import Verdict
from phalanx.errors import Outcome


def _bank(reads: list[dict[str, int]]) -> Ops:
    h = Ops()
    t = 0
    for balances in reads:
        h.add(0, "transfer", t, t + 1, input={"from": "a", "to": "b", "amount": 1})
        h.add(1, "read", t + 2, t + 3, output=balances)
        t += 10
    return h


def test_bank_valid_when_money_is_conserved() -> None:
    h = _bank([{"a": 10, "b": 10}, {"a": 9, "b": 11}, {"a": 8, "b": 12}])
    result = check_bank(h.ops)
    assert result.verdict is Verdict.VALID
    assert result.details["total"] == 20


def test_bank_catches_a_changed_total_and_a_negative_balance() -> None:
    created = _bank([{"a": 10, "b": 10}, {"a": 9, "b": 12}])  # money from nowhere
    result = check_bank(created.ops)
    assert result.verdict is Verdict.INVALID
    assert result.ops_bad == [3]
    assert result.details["wrong_total_reads"] == 1
    overdrawn = _bank([{"a": 1, "b": 19}, {"a": -1, "b": 21}])
    result = check_bank(overdrawn.ops)
    assert result.verdict is Verdict.INVALID
    assert result.details["negative_reads"] == 1
    assert check_bank(_bank([{"a": 10, "b": 10}]).ops, total=30).verdict is Verdict.INVALID
    assert check_bank([]).verdict is Verdict.UNKNOWN


def _set_history(final: list[int], *, middle: list[int] | None = None) -> Ops:
    h = Ops()
    h.add(0, "add", 0, 1, input=1)
    h.add(1, "add", 0, 2, input=2)
    h.add(2, "add", 0, 3, input=3, outcome=INFO)
    h.add(3, "add", 0, 4, input=4, outcome=FAIL)
    if middle is not None:
        h.add(4, "read", 5, 6, output=middle)
    h.add(4, "read", 10, 11, output=final)
    return h


def test_set_valid_and_counts_recovered_unknown_adds() -> None:
    result = check_set(_set_history([1, 2, 3], middle=[1, 2]).ops)
    assert result.verdict is Verdict.VALID
    assert result.details["recovered"] == 1
    assert result.details["lost"] == 0


def test_set_catches_lost_unexpected_and_stale_elements() -> None:
    lost = check_set(_set_history([1]).ops)
    assert lost.verdict is Verdict.INVALID
    assert (lost.details["lost"], lost.details["unexpected"]) == (1, 0)
    assert lost.ops_bad == [1]
    unexpected = check_set(_set_history([1, 2, 4]).ops)  # 4 failed: it must not appear
    assert (unexpected.details["lost"], unexpected.details["unexpected"]) == (0, 1)
    stale = check_set(_set_history([1, 2], middle=[1]).ops)
    assert stale.verdict is Verdict.INVALID
    assert stale.details["stale"] == 1
    assert stale.ops_bad == [4]
    assert check_set(_set_history([1, 2]).ops[:4]).verdict is Verdict.UNKNOWN


def test_set_adds_after_the_last_successful_read_leave_it_unknown() -> None:
    """When the final read fails, the last read that succeeded was taken mid-run: it cannot
    vouch for adds acknowledged after it began, so durability is not shown either way."""
    h = Ops()
    h.add(0, "add", 0, 1, input=1)
    h.add(1, "read", 2, 3, output=[1])
    h.add(0, "add", 4, 5, input=2)  # acknowledged after the only successful read
    h.add(1, "read", 6, 9, outcome=INFO)  # the final read: no answer
    result = check_set(h.ops)
    assert result.verdict is Verdict.UNKNOWN
    assert result.details["unchecked"] == 1
    assert "after the last successful read" in result.summary


def _lock(*, second_token: int, first_release_at: int) -> Ops:
    h = Ops()
    h.add(0, "acquire", 0, 1, output=1)
    h.add(0, "release", first_release_at, first_release_at + 1, input=1)
    h.add(1, "acquire", 4, 5, output=second_token)
    h.add(1, "release", 8, 9, input=second_token)
    return h


def test_lock_valid_with_increasing_tokens_and_disjoint_holds() -> None:
    h = _lock(second_token=2, first_release_at=2)
    assert check_lock(h.ops).verdict is Verdict.VALID
    assert [(x.token, x.start_us, x.end_us) for x in holds(h.ops)] == [(1, 1, 2), (2, 5, 8)]


def test_lock_catches_overlapping_holders() -> None:
    # Process 0 releases (successfully) only after process 1 was granted the lock.
    result = check_lock(_lock(second_token=2, first_release_at=6).ops)
    assert result.verdict is Verdict.INVALID
    assert result.details["overlaps"] == 1
    assert result.ops_bad == [2]


def test_lock_overlap_with_any_earlier_holder_not_only_the_previous() -> None:
    h = Ops()
    h.add(0, "acquire", 0, 1, output=1)
    h.add(0, "release", 100, 101, input=1)  # holds 1..100
    h.add(1, "acquire", 2, 3, output=2)  # overlaps token 1 (caught with the pair 1, 2)
    h.add(1, "release", 20, 21, input=2)
    h.add(2, "acquire", 50, 51, output=3)  # after token 2, still inside token 1's hold
    h.add(2, "release", 60, 61, input=3)
    result = check_lock(h.ops)
    assert result.details["overlaps"] == 2
    assert result.ops_bad == [2, 4]


def test_lock_catches_tokens_that_do_not_increase() -> None:
    result = check_lock(_lock(second_token=1, first_release_at=2).ops)
    assert result.verdict is Verdict.INVALID
    assert result.details["duplicate_tokens"] == 1
    regress = _lock(second_token=0, first_release_at=2)
    result = check_lock(regress.ops)
    assert result.details["token_regressions"] == 1


def test_lock_holds_without_release_may_have_expired() -> None:
    h = Ops()
    h.add(0, "acquire", 0, 1, output=1)
    h.add(0, "release", 6, 7, input=1, outcome=INFO)  # unknown: the lease may have expired
    h.add(1, "acquire", 4, 5, output=2)
    assert check_lock(h.ops).verdict is Verdict.VALID
    bad = Ops()
    bad.add(0, "acquire", 0, 1, output="token")
    with pytest.raises(HistoryError, match="fencing token"):
        check_lock(bad.ops)


def _fenced(*, late_outcome: Outcome) -> Ops:
    """Holder 0 (token 1) loses its lease; holder 1 (token 2) writes; holder 0 writes late."""
    h = Ops()
    h.add(0, "acquire", 0, 1, output=1)
    h.add(0, "write", 2, 3, input=1)
    h.add(1, "acquire", 4, 5, output=2)
    h.add(1, "write", 6, 7, input=2)
    h.add(0, "write", 8, 9, input=1, outcome=late_outcome)
    h.add(1, "release", 10, 11, input=2)
    return h


def test_fencing_catches_a_resource_write_of_an_older_token() -> None:
    # The resource refused the late holder: valid, though the holds overlap.
    refused = _fenced(late_outcome=FAIL)
    assert check_lock(refused.ops, exclusive=False).verdict is Verdict.VALID
    assert check_history(refused.ops, "fencing").verdict is Verdict.VALID
    # The resource took it: the lock checker reports the stale write.
    accepted = _fenced(late_outcome=OK)
    result = check_lock(accepted.ops, exclusive=False)
    assert result.verdict is Verdict.INVALID
    assert result.details["stale_writes"] == 1
    assert result.ops_bad == [4]
    assert check_history(accepted.ops, "fencing").verdict is Verdict.INVALID
    # An unknown late write may have happened before the newer one: not a violation.
    assert check_lock(_fenced(late_outcome=INFO).ops, exclusive=False).verdict is Verdict.VALID


def test_monotonic_reads_per_session() -> None:
    h = Ops()
    h.add(0, "read", 0, 1, output=1, key="x")
    h.add(0, "read", 2, 3, output={"version": 3}, key="x")
    h.add(1, "read", 2, 3, output=2, key="x")  # another session may lag
    h.add(0, "read", 4, 5, output=0, key="y")  # another key
    assert check_monotonic_reads(h.ops).verdict is Verdict.VALID
    back = h.add(0, "read", 6, 7, output={"revision": 2}, key="x")
    result = check_monotonic_reads(h.ops)
    assert result.verdict is Verdict.INVALID
    assert result.ops_bad == [back.id]
    h.add(2, "read", 8, 9, output="v1")
    with pytest.raises(HistoryError, match="version"):
        check_monotonic_reads(h.ops)


def test_check_history_runs_the_checkers_of_each_model() -> None:
    lock = _lock(second_token=2, first_release_at=2)
    checked = check_history(lock.ops, "lock")
    assert [r.checker for r in checked.results] == ["linearizability", "lock"]
    assert checked.verdict is Verdict.VALID
    overlapping = check_history(_lock(second_token=2, first_release_at=6).ops, "lock")
    assert overlapping.verdict is Verdict.INVALID
    # Both see it: process 1 acquired while process 0 still held the lock.
    assert [r.verdict for r in overlapping.results] == [Verdict.INVALID, Verdict.INVALID]
    reads = Ops()
    reads.add(0, "read", 0, 1, output=2)
    reads.add(0, "read", 2, 3, output=1)
    assert check_history(reads.ops, "monotonic").verdict is Verdict.INVALID
    with pytest.raises(ValueError, match="unknown model"):
        check_history(reads.ops, "queue")
