"""Each checker, fed a hand-made state that breaks its property, raises; a sound one does not."""

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from phalanx.raft.types import Entry
from phalanx.sim.checks import CHECKS, Checker, Violation


def log_view(terms: dict[int, int]) -> Callable[[int], int | None]:
    """A TermAt over a log given as {index: term}; indexes below the first are compacted."""
    first = min(terms) if terms else 1

    def term_at(index: int) -> int | None:
        if index < first:
            return None
        return terms[index]

    return term_at


def e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term=term, index=index, data=data)


def expect(check: str) -> AbstractContextManager[pytest.ExceptionInfo[Violation]]:
    assert check in CHECKS
    return pytest.raises(Violation, match=rf"^\[{check}\]")


def test_election_safety_two_leaders_in_one_term() -> None:
    checker = Checker()
    checker.on_leader(1, 3, 0, log_view({}))
    checker.on_leader(1, 3, 0, log_view({}))  # the same leader again is fine
    checker.on_leader(2, 4, 0, log_view({}))
    with expect("election-safety"):
        checker.on_leader(2, 3, 0, log_view({}))


def test_single_vote_per_term() -> None:
    checker = Checker()
    checker.on_vote(1, 5, 2)
    checker.on_vote(1, 5, 2)
    checker.on_vote(1, 6, 3)
    with expect("single-vote"):
        checker.on_vote(1, 5, 3)


def test_log_matching_different_data_at_one_index_and_term() -> None:
    checker = Checker()
    checker.on_persist(1, [e(1, 1, b"a"), e(2, 1, b"b")], 0)
    checker.on_persist(2, [e(1, 1, b"a")], 0)
    with expect("log-matching"):
        checker.on_persist(3, [e(2, 1, b"x")], 1)


def test_log_matching_same_entry_after_a_different_prefix() -> None:
    checker = Checker()
    checker.on_persist(1, [e(4, 2), e(5, 3)], 2)
    with expect("log-matching"):
        checker.on_persist(2, [e(5, 3)], 1)  # its entry 4 is of term 1, node 1's of term 2


def test_log_matching_terms_never_decrease_in_a_log() -> None:
    checker = Checker()
    with expect("log-matching"):
        checker.on_persist(1, [e(1, 2), e(2, 1)], 0)


def test_leader_completeness_new_leader_lacks_a_committed_entry() -> None:
    checker = Checker()
    checker.on_commit(1, 2, 5, 5, log_view({1: 1, 2: 1, 3: 2, 4: 2, 5: 2}))
    # A leader of a later term whose log is too short:
    with expect("leader-completeness"):
        checker.on_leader(3, 3, 4, log_view({1: 1, 2: 1, 3: 2, 4: 2}))


def test_leader_completeness_new_leader_holds_another_entry() -> None:
    checker = Checker()
    checker.on_commit(1, 2, 3, 3, log_view({1: 1, 2: 2, 3: 2}))
    checker.on_leader(2, 2, 3, log_view({1: 1, 2: 2, 3: 2}))  # the same term: not checked
    checker.on_leader(4, 4, 3, log_view({1: 1, 2: 2, 3: 2}))
    with expect("leader-completeness"):
        checker.on_leader(3, 5, 6, log_view({1: 1, 2: 2, 3: 3, 4: 3, 5: 3, 6: 3}))


def test_leader_completeness_ignores_commits_of_the_same_or_later_terms() -> None:
    checker = Checker()
    checker.on_commit(1, 7, 3, 3, log_view({1: 7, 2: 7, 3: 7}))
    checker.on_leader(2, 6, 0, log_view({}))  # a stale election won with late votes


def test_commit_agreement_two_entries_committed_at_one_index() -> None:
    checker = Checker()
    checker.on_commit(1, 2, 2, 2, log_view({1: 1, 2: 2}))
    with expect("commit-agreement"):
        checker.on_commit(2, 3, 2, 2, log_view({1: 1, 2: 3}))


def test_commit_monotonic_within_a_life_and_across_restarts() -> None:
    checker = Checker()
    checker.on_commit(1, 1, 3, 3, log_view({1: 1, 2: 1, 3: 1}))
    with expect("commit-monotonic"):
        checker.on_commit(1, 1, 2, 3, log_view({1: 1, 2: 1, 3: 1}))
    checker.on_durable_commit(1, 3)
    checker.on_start(1, 3)
    with expect("commit-monotonic"):
        checker.on_start(1, 2)


def test_commit_beyond_the_log() -> None:
    checker = Checker()
    with expect("commit-monotonic"):
        checker.on_commit(1, 1, 4, 3, log_view({1: 1, 2: 1, 3: 1}))


def test_apply_order_gap_and_beyond_commit() -> None:
    checker = Checker()
    checker.on_commit(1, 1, 2, 3, log_view({1: 1, 2: 1, 3: 1}))
    checker.on_apply(1, e(1, 1))
    with expect("apply-order"):
        checker.on_apply(1, e(3, 1))
    checker.on_apply(1, e(2, 1))
    with expect("apply-order"):
        checker.on_apply(1, e(3, 1))  # not committed at node 1


def test_state_machine_safety_different_entries_applied_at_one_index() -> None:
    checker = Checker()
    for node in (1, 2):
        checker.on_commit(node, 1, 1, 1, log_view({1: 1}))
    checker.on_apply(1, e(1, 1, b"1 k a"))
    with expect("state-machine-safety"):
        checker.on_apply(2, e(1, 1, b"2 k b"))


def test_acknowledged_put_lost() -> None:
    checker = Checker()
    checker.on_commit(1, 1, 1, 1, log_view({1: 1}))
    checker.on_apply(1, e(1, 1, b"7 k v7"))
    checker.on_put_applied("v7", 1)
    checker.on_put_ok("k", "v7", 1, 100)
    checker.check_acknowledged([(7, "k", "v7", 1)], {1: {7}.__contains__})
    with expect("acknowledged-put-lost"):
        checker.check_acknowledged(
            [(7, "k", "v7", 1)], {1: {7}.__contains__, 2: set().__contains__}
        )
    with expect("acknowledged-put-lost"):
        checker.check_acknowledged([(8, "k", "v8", 1)], {1: {8}.__contains__})
    with expect("acknowledged-put-lost"):
        checker.on_put_ok("k", "v7", 2, 120)  # acknowledged at another index than applied


def test_stale_read() -> None:
    checker = Checker()
    checker.on_put_applied("v1", 3)
    checker.on_put_ok("k", "v1", 3, complete_us=100)
    checker.on_put_applied("v2", 5)
    checker.on_put_ok("k", "v2", 5, complete_us=200)
    checker.on_read_ok("k", None, invoke_us=50)  # before any put was acknowledged
    checker.on_read_ok("k", "v1", invoke_us=150)
    checker.on_read_ok("k", "v2", invoke_us=150)  # concurrent with the second put
    checker.on_read_ok("other", None, invoke_us=500)
    with expect("stale-read"):
        checker.on_read_ok("k", "v1", invoke_us=250)
    with expect("stale-read"):
        checker.on_read_ok("k", None, invoke_us=150)
    with expect("stale-read"):
        checker.on_read_ok("k", "never-written", invoke_us=10)
