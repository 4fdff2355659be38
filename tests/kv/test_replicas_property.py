"""Property: replicas applying the same entries agree, even one restored from a snapshot midway."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from phalanx.kv import (
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    KVStore,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Limits,
    Proposal,
    Put,
    Range,
    RegisterSession,
    Txn,
    WatchHub,
)
from phalanx.kv.commands import Command, TxnOp

# Small limits, so the bounds (event log, sessions, cached responses) are reached often.
LIMITS = Limits(event_log_len_max=8, sessions_max=2, session_responses_max=3)

keys = st.sampled_from([b"a", b"b", b"c", b"d"])
small_ints = st.integers(min_value=0, max_value=12)
puts = st.builds(Put, keys, st.binary(max_size=3), st.sampled_from([0, 0, 1, 2, 3]), st.booleans())
deletes = st.builds(DeleteRange, keys, st.sampled_from([b"", b"c", b"\0"]), st.booleans())
ranges = st.builds(Range, keys, st.sampled_from([b"", b"\0"]), small_ints, st.integers(0, 2))
compares = st.one_of(
    st.builds(
        Compare,
        keys,
        st.just(CompareTarget.VALUE),
        st.sampled_from(CompareOp),
        st.binary(max_size=2),
    ),
    st.builds(
        Compare,
        keys,
        st.sampled_from(
            [CompareTarget.VERSION, CompareTarget.MOD_REVISION, CompareTarget.CREATE_REVISION]
        ),
        st.sampled_from(CompareOp),
        small_ints,
    ),
)


def _branch(ops: list[TxnOp]) -> tuple[TxnOp, ...]:
    # Keep only ops that write distinct keys (a txn may write each key once).
    seen: set[bytes] = set()
    kept: list[TxnOp] = []
    for op in ops:
        if isinstance(op, Put) and op.key not in seen:
            seen.add(op.key)
            kept.append(op)
        elif isinstance(op, Range):
            kept.append(op)
    return tuple(kept)


txns = st.builds(
    lambda cmp, ok, fail: Txn(tuple(cmp), _branch(ok), _branch(fail)),
    st.lists(compares, max_size=2),
    st.lists(st.one_of(puts, ranges), max_size=3),
    st.lists(st.one_of(puts, ranges), max_size=3),
)
commands: st.SearchStrategy[Command] = st.one_of(
    puts,
    puts,
    deletes,
    txns,
    st.builds(Compact, small_ints),
    st.builds(LeaseGrant, st.integers(1, 50), st.sampled_from([0, 1, 2, 3])),
    st.builds(LeaseKeepAlive, st.integers(1, 3)),
    st.builds(LeaseRevoke, st.integers(1, 3)),
    st.builds(LeaseExpire, st.lists(st.integers(1, 3), max_size=2).map(tuple)),
    st.just(RegisterSession()),
)
proposals = st.builds(
    Proposal,
    commands,
    now_ms=st.integers(0, 200),
    client_id=st.sampled_from([0, 0, 1, 2, 5]),
    seq=st.integers(1, 4),
    acked_seq=st.integers(0, 3),
)


@given(st.lists(proposals, max_size=40), st.data())
def test_a_replica_restored_midway_agrees_with_one_that_applied_everything(
    batch: list[Proposal], data: st.DataObject
) -> None:
    # Encoded without validation: invalid entries must be rejected alike on every replica.
    entries = [msgspec.msgpack.encode(p) for p in batch]
    cut = data.draw(st.integers(0, len(entries)), label="snapshot at")
    full = KVStore(LIMITS)
    full_hub = WatchHub(full, LIMITS)
    full_watch = full_hub.watch(b"a", b"\0", start_revision=1)
    responses, full_events = [], []
    for index, entry in enumerate(entries, 1):
        responses.append(full.apply(index, entry))
        full_events += full_hub.poll(full_watch, events_max=100)

    partial = KVStore(LIMITS)
    for index, entry in enumerate(entries[:cut], 1):
        partial.apply(index, entry)
    restored = KVStore(LIMITS)
    restored.restore(partial.snapshot())
    hub = WatchHub(restored, LIMITS)
    watch = hub.watch(b"a", b"\0", start_revision=restored.revision + 1)
    later, events = [], []
    for index, entry in enumerate(entries[cut:], cut + 1):
        later.append(restored.apply(index, entry))
        events += hub.poll(watch, events_max=100)

    assert later == responses[cut:]
    assert restored.snapshot() == full.snapshot()
    assert restored.get(b"a", b"\0") == full.get(b"a", b"\0")
    # A watcher resumed on the restored replica sees exactly what the other one saw after the cut.
    assert events == [e for e in full_events if e.revision > partial.revision]
    assert [e.revision for e in full_events] == sorted(e.revision for e in full_events)
