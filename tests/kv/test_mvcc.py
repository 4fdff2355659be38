"""MVCC semantics as transcripts: revisions, versions, history reads, deletes, txns, compaction."""

from __future__ import annotations

import pytest

from phalanx.errors import BadRequest
from phalanx.kv import (
    Compact,
    Compacted,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    KVStore,
    Proposal,
    Put,
    Range,
    Txn,
    encode_proposal,
    prefix_end,
)
from phalanx.kv.commands import Command
from phalanx.kv.errors import FutureRevision
from phalanx.kv.responses import (
    CompactResult,
    DeleteResult,
    Error,
    ErrorCode,
    PutResult,
    RangeResult,
    Response,
    TxnResult,
)


class Replica:
    def __init__(self) -> None:
        self.store = KVStore()
        self.index = 0

    def run(self, command: Command) -> Response:
        self.index += 1
        return self.store.apply(self.index, encode_proposal(Proposal(command)))


def values(result: RangeResult) -> list[tuple[bytes, bytes]]:
    return [(kv.key, kv.value) for kv in result.kvs]


def test_each_write_gets_the_next_revision_and_keys_count_versions() -> None:
    r = Replica()
    assert r.run(Put(b"a", b"1")) == PutResult(1)
    assert r.run(Put(b"b", b"1")) == PutResult(2)
    assert r.run(Put(b"a", b"2")) == PutResult(3)
    a = r.store.get(b"a").kvs[0]
    assert (a.create_revision, a.mod_revision, a.version) == (1, 3, 2)
    assert r.store.revision == 3


def test_reads_at_old_revisions_see_the_keyspace_as_it_was() -> None:
    r = Replica()
    r.run(Put(b"k1", b"a"))  # 1
    r.run(Put(b"k2", b"b"))  # 2
    r.run(Put(b"k1", b"c"))  # 3
    r.run(DeleteRange(b"k2"))  # 4
    everything = (b"k", prefix_end(b"k"))
    assert values(r.store.get(*everything, revision=1)) == [(b"k1", b"a")]
    assert values(r.store.get(*everything, revision=2)) == [(b"k1", b"a"), (b"k2", b"b")]
    assert values(r.store.get(*everything, revision=3)) == [(b"k1", b"c"), (b"k2", b"b")]
    assert values(r.store.get(*everything)) == [(b"k1", b"c")]
    assert r.store.get(b"k2", revision=3).kvs[0].version == 1
    with pytest.raises(FutureRevision):
        r.store.get(b"k1", revision=5)


def test_delete_is_a_tombstone_and_recreation_starts_a_new_generation() -> None:
    r = Replica()
    r.run(Put(b"k", b"1"))  # 1
    r.run(Put(b"k", b"2"))  # 2
    assert r.run(DeleteRange(b"k", prev_kv=True)) == DeleteResult(3, 1, (r.store.history(b"k")[1],))
    assert r.store.get(b"k").count == 0
    assert r.run(DeleteRange(b"k")) == DeleteResult(3, 0)  # nothing deleted: no new revision
    r.run(Put(b"k", b"3"))  # 4
    kv = r.store.get(b"k").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (4, 4, 1)
    assert [h.version for h in r.store.history(b"k")] == [1, 2, 0, 1]


def test_range_prefix_limit_keys_only_and_count_only() -> None:
    r = Replica()
    for key in (b"app/a", b"app/b", b"app/c", b"apq", b"ap"):
        r.run(Put(key, b"v" + key))
    prefix = (b"app/", prefix_end(b"app/"))
    result = r.store.get(*prefix, limit=2)
    assert [kv.key for kv in result.kvs] == [b"app/a", b"app/b"]
    assert (result.count, result.more) == (3, True)
    keys_only = r.store.get(*prefix, keys_only=True)
    assert {kv.value for kv in keys_only.kvs} == {b""}
    counted = r.store.get(*prefix, count_only=True)
    assert (counted.kvs, counted.count, counted.more) == ((), 3, False)
    assert [kv.key for kv in r.store.get(b"apq", b"\0").kvs] == [b"apq"]
    assert [kv.key for kv in r.store.get(b"ap", b"app/b").kvs] == [b"ap", b"app/a"]
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_delete_range_deletes_every_live_key_in_one_revision() -> None:
    r = Replica()
    for key in (b"a", b"b", b"c"):
        r.run(Put(key, b"1"))
    result = r.run(DeleteRange(b"a", b"c"))
    assert result == DeleteResult(4, 2)
    assert [kv.key for kv in r.store.get(b"a", b"\0").kvs] == [b"c"]


@pytest.mark.parametrize(
    ("target", "op", "operand", "expected"),
    [
        (CompareTarget.VALUE, CompareOp.EQUAL, b"v2", True),
        (CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"v2", False),
        (CompareTarget.VALUE, CompareOp.LESS, b"v3", True),
        (CompareTarget.VALUE, CompareOp.GREATER, b"v3", False),
        (CompareTarget.VERSION, CompareOp.EQUAL, 2, True),
        (CompareTarget.VERSION, CompareOp.GREATER, 2, False),
        (CompareTarget.MOD_REVISION, CompareOp.EQUAL, 2, True),
        (CompareTarget.MOD_REVISION, CompareOp.LESS, 2, False),
        (CompareTarget.CREATE_REVISION, CompareOp.EQUAL, 1, True),
        (CompareTarget.CREATE_REVISION, CompareOp.NOT_EQUAL, 1, False),
    ],
)
def test_txn_compares_choose_the_branch(
    target: CompareTarget, op: CompareOp, operand: int | bytes, expected: bool
) -> None:
    r = Replica()
    r.run(Put(b"k", b"v1"))
    r.run(Put(b"k", b"v2"))
    result = r.run(
        Txn(
            compare=(Compare(b"k", target, op, operand),),
            success=(Put(b"then", b"1"),),
            failure=(Put(b"else", b"1"),),
        )
    )
    assert isinstance(result, TxnResult)
    assert result.succeeded is expected
    assert r.store.get(b"then" if expected else b"else").count == 1
    assert r.store.get(b"else" if expected else b"then").count == 0


def test_txn_on_a_missing_key_and_reads_inside_the_txn() -> None:
    r = Replica()
    # Create-if-absent: version 0 means the key does not exist; value compares are false.
    create = Txn(
        compare=(Compare(b"lock", CompareTarget.VERSION, CompareOp.EQUAL, 0),),
        success=(Put(b"lock", b"me"), Range(b"lock")),
        failure=(Range(b"lock"),),
    )
    first = r.run(create)
    assert isinstance(first, TxnResult)
    assert first.succeeded
    assert first.revision == 1
    inner = first.responses[1]
    assert isinstance(inner, RangeResult)
    assert values(inner) == [(b"lock", b"me")]  # a txn reads its own writes
    second = r.run(create)
    assert isinstance(second, TxnResult)
    assert not second.succeeded
    assert second.revision == 1  # a read-only txn writes no revision
    missing = r.run(
        Txn(compare=(Compare(b"nope", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"x"),))
    )
    assert isinstance(missing, TxnResult)
    assert not missing.succeeded


def test_txn_writes_are_atomic_in_one_revision() -> None:
    r = Replica()
    r.run(Put(b"a", b"0"))
    result = r.run(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1"), DeleteRange(b"c"))))
    assert isinstance(result, TxnResult)
    assert result.revision == 2
    assert {kv.mod_revision for kv in r.store.get(b"a", b"\0").kvs} == {2}


def test_a_failing_op_leaves_the_whole_txn_unapplied() -> None:
    r = Replica()
    r.run(Put(b"a", b"0"))
    result = r.run(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1", lease=99))))
    assert isinstance(result, Error)
    assert result.code == ErrorCode.LEASE_NOT_FOUND
    assert r.store.revision == 1
    assert values(r.store.get(b"a", b"\0")) == [(b"a", b"0")]


def test_txn_may_not_write_a_key_twice() -> None:
    r = Replica()
    for txn in (
        Txn(success=(Put(b"a", b"1"), Put(b"a", b"2"))),
        Txn(success=(DeleteRange(b"a", b"c"), Put(b"b", b"2"))),
    ):
        with pytest.raises(BadRequest):  # the leader refuses to propose it
            encode_proposal(Proposal(txn))
        r.index += 1  # and a replica that finds it in the log rejects it the same way
        result = r.store.apply_proposal(r.index, Proposal(txn))
        assert isinstance(result, Error)
        assert isinstance(result.exception(), BadRequest)
    assert r.store.revision == 0


def test_compaction_forgets_history_below_the_revision() -> None:
    r = Replica()
    r.run(Put(b"a", b"1"))  # 1
    r.run(Put(b"a", b"2"))  # 2
    r.run(Put(b"b", b"1"))  # 3
    r.run(DeleteRange(b"b"))  # 4
    r.run(Put(b"a", b"3"))  # 5
    assert r.run(Compact(4)) == CompactResult(5, 4)
    with pytest.raises(Compacted) as caught:
        r.store.get(b"a", revision=3)
    assert caught.value.compact_revision == 4
    # Reads at the compaction point and after still see everything they saw before.
    assert values(r.store.get(b"a", b"\0", revision=4)) == [(b"a", b"2")]
    assert values(r.store.get(b"a", b"\0")) == [(b"a", b"3")]
    assert r.store.history(b"b") == []  # deleted below the point: gone for good
    assert [kv.value for kv in r.store.history(b"a")] == [b"2", b"3"]
    again = r.run(Compact(4))
    assert isinstance(again, Error)
    assert isinstance(again.exception(), Compacted)
    future = r.run(Compact(9))
    assert isinstance(future, Error)
    assert isinstance(future.exception(), FutureRevision)
    in_txn = r.run(Txn(success=(Range(b"a", revision=2),)))
    assert isinstance(in_txn, Error)
    assert in_txn.code == ErrorCode.COMPACTED


def test_new_keys_join_the_range_index_after_compaction() -> None:
    r = Replica()
    r.run(Put(b"b", b"1"))
    r.run(DeleteRange(b"b"))
    r.run(Compact(2))
    r.run(Put(b"c", b"1"))
    r.run(Put(b"a", b"1"))
    assert [kv.key for kv in r.store.get(b"a", b"\0").kvs] == [b"a", b"c"]


def test_empty_entries_are_noops_and_indexes_must_grow() -> None:
    from phalanx.errors import InvariantViolation
    from phalanx.kv.responses import Noop

    store = KVStore()
    assert store.apply(1, b"") == Noop()
    with pytest.raises(InvariantViolation):
        store.apply(1, b"")
    assert store.applied_index == 1
