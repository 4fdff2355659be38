"""The linearizability search on hand-written histories: verdicts, witnesses and limits."""

import pytest

from chaos.helpers import FAIL, INFO, Ops
from phalanx.chaos.generate import generate_kv
from phalanx.chaos.linearizability import SearchLimits, search
from phalanx.chaos.models import Keyed, KVModel, LockModel, RegisterModel, model_named
from phalanx.chaos.partition import check_linearizable, split_by_key
from phalanx.chaos.verdict import Verdict


def test_sequential_register_history() -> None:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(1, "read", 2, 3, output=1)
    h.add(0, "cas", 4, 5, input=[1, 2])
    h.add(1, "read", 6, 7, output=2)
    assert search(h.ops, RegisterModel()).verdict is Verdict.VALID


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    h = Ops()
    h.add(0, "write", 0, 10, input=1)
    h.add(1, "write", 1, 9, input=2)
    h.add(2, "read", 2, 8, output=1)
    h.add(3, "read", 11, 12, output=2)  # so 1 was written, read, then 2
    assert search(h.ops, RegisterModel()).verdict is Verdict.VALID


def test_stale_read_is_caught_with_its_witness() -> None:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(0, "write", 2, 3, input=2)
    stale = h.add(1, "read", 4, 5, output=1)
    h.add(1, "read", 6, 7, output=2)
    result = search(h.ops, RegisterModel())
    assert result.verdict is Verdict.INVALID
    assert result.stuck_op == stale.id
    assert result.linearization == [0, 1]
    assert result.prefix_ops == 2


def test_unknown_write_may_take_effect_late_or_never() -> None:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(1, "write", 2, 3, input=2, outcome=INFO)
    h.add(2, "read", 4, 5, output=1)  # not yet
    h.add(2, "read", 20, 21, output=2)  # now it did, long after the client gave up
    assert search(h.ops, RegisterModel()).verdict is Verdict.VALID
    h2 = Ops()
    h2.add(1, "write", 2, 3, input=2, outcome=INFO)
    h2.add(2, "read", 20, 21, output=None)  # never
    assert search(h2.ops, RegisterModel()).verdict is Verdict.VALID
    h3 = Ops()
    h3.add(2, "read", 0, 1, output=2)  # before it was invoked: impossible
    h3.add(1, "write", 2, 3, input=2, outcome=INFO)
    assert search(h3.ops, RegisterModel()).verdict is Verdict.INVALID


def test_failed_operations_never_happened() -> None:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(1, "cas", 2, 3, input=[1, 5], outcome=FAIL)
    h.add(1, "write", 4, 5, input=7, outcome=FAIL)
    h.add(2, "read", 6, 7, output=1)
    assert search(h.ops, RegisterModel()).verdict is Verdict.VALID
    h.add(2, "read", 8, 9, output=7)
    assert search(h.ops, RegisterModel()).verdict is Verdict.INVALID


def test_cas_needs_its_expected_value() -> None:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(1, "cas", 2, 3, input=[2, 3])
    assert search(h.ops, RegisterModel()).verdict is Verdict.INVALID
    h2 = Ops()
    h2.add(0, "write", 0, 1, input=1)
    h2.add(1, "cas", 2, 3, input=[1, 3], outcome=INFO)
    h2.add(2, "read", 4, 5, output=3)
    assert search(h2.ops, RegisterModel()).verdict is Verdict.VALID


def test_lock_model_allows_one_holder() -> None:
    h = Ops()
    h.add(0, "acquire", 0, 1)
    h.add(0, "release", 2, 3)
    h.add(1, "acquire", 4, 5)
    assert search(h.ops, LockModel()).verdict is Verdict.VALID
    h.add(2, "acquire", 6, 7)  # while process 1 still holds it
    result = search(h.ops, LockModel())
    assert result.verdict is Verdict.INVALID
    assert result.stuck_op == 3


def test_kv_model_per_key_and_whole_agree() -> None:
    h = Ops()
    h.add(0, "put", 0, 1, input="a", key="x")
    h.add(1, "append", 2, 3, input="b", key="x")
    h.add(2, "put", 2, 3, input="z", key="y")
    h.add(0, "get", 4, 5, output="ab", key="x")
    h.add(1, "get", 4, 5, output="z", key="y")
    h.add(2, "get", 4, 5, output="", key="w")
    assert set(split_by_key(h.ops)) == {"x", "y", "w"}
    for partition in (True, False):
        report = check_linearizable(h.ops, KVModel(), partition=partition)
        assert report.result.verdict is Verdict.VALID
    h.add(2, "get", 6, 7, output="a", key="x")
    for partition in (True, False):
        report = check_linearizable(h.ops, KVModel(), partition=partition)
        assert report.result.verdict is Verdict.INVALID
    assert Keyed(KVModel()).name == "keyed-kv"


def test_worker_processes_give_the_same_verdicts() -> None:
    h = Ops()
    for k in range(4):
        h.add(k, "put", 10 * k, 10 * k + 5, input=f"v{k}", key=str(k))
        h.add(k, "get", 10 * k + 6, 10 * k + 7, output=f"v{k}", key=str(k))
    parallel = check_linearizable(h.ops, KVModel(), workers_max=2, parallel_ops_min=0)
    assert parallel.result.verdict is Verdict.VALID
    assert parallel.result.details["partitions"] == 4
    h.add(9, "get", 100, 101, output="nope", key="2")
    parallel = check_linearizable(h.ops, KVModel(), workers_max=2, parallel_ops_min=0)
    assert parallel.result.verdict is Verdict.INVALID
    assert parallel.result.details["failing_key"] == "2"
    assert parallel.smallest_failure() is not None


def _hard_history(writers: int) -> Ops:
    # Many concurrent unknown writes and a final impossible read: the search must try every
    # subset and order of the writes before it can say no.
    h = Ops()
    for p in range(writers):
        h.add(p, "append", p, 1000, input=f"<{p}>", outcome=INFO, key="k")
    h.add(99, "get", 1001, 1002, output="<impossible>", key="k")
    return h


def test_deadline_gives_unknown_instead_of_hanging() -> None:
    clock = iter(range(1_000_000_000))

    def now_s() -> float:
        return float(next(clock))

    result = search(_hard_history(12).ops, KVModel(), deadline_s=5.0, now_s=now_s)
    assert result.verdict is Verdict.UNKNOWN
    assert result.reason == "deadline"


def test_cache_limit_gives_unknown() -> None:
    limits = SearchLimits(cache_entries_max=2000)
    result = search(_hard_history(12).ops, KVModel(), limits=limits)
    assert result.verdict is Verdict.UNKNOWN
    assert result.reason.startswith("cache_entries_max=2000")
    report = check_linearizable(_hard_history(12).ops, KVModel(), limits=limits)
    assert report.result.verdict is Verdict.UNKNOWN
    assert "cache_entries_max" in report.result.summary


def test_operations_limit_gives_unknown() -> None:
    result = search(_hard_history(3).ops, KVModel(), limits=SearchLimits(ops_max=3))
    assert result.verdict is Verdict.UNKNOWN
    assert "ops_max=3" in result.reason


def test_small_hard_history_is_decided() -> None:
    assert search(_hard_history(6).ops, KVModel()).verdict is Verdict.INVALID


def test_models_refuse_unknown_operations() -> None:
    h = Ops()
    h.add(0, "increment", 0, 1)
    for name in ("register", "kv", "lock"):
        with pytest.raises(ValueError, match="no operation 'increment'"):
            search(h.ops, model_named(name))
    with pytest.raises(ValueError, match="unknown model"):
        model_named("queue")


def test_a_full_cache_forgets_what_lies_behind_and_goes_on() -> None:
    ops, _ = generate_kv(5, ops=3000, keys=1, processes=6, info_rate=0.01, put_share=1.0)
    result = search(ops, KVModel(), limits=SearchLimits(cache_entries_max=400))
    assert result.verdict is Verdict.VALID
    assert result.cache_entries > 400  # remembered in total, never more than 400 at once


def test_long_single_key_history_stays_cheap_per_operation() -> None:
    # The placed-set bitset is compact: a long history of one key is decided in configurations
    # proportional to its length (each about the concurrency wide).
    ops, _ = generate_kv(6, ops=20_000, keys=1, processes=8, info_rate=0.01, put_share=1.0)
    result = search(ops, KVModel())
    assert result.verdict is Verdict.VALID
    assert result.cache_entries < 20 * len(ops)
