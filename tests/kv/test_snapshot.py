"""Snapshots: restore reproduces the state exactly; equal states give equal bytes."""

from __future__ import annotations

import pytest

from phalanx.errors import InvariantViolation
from phalanx.kv import (
    Compact,
    DeleteRange,
    KVStore,
    LeaseGrant,
    Proposal,
    Put,
    RegisterSession,
    Txn,
)
from phalanx.kv.commands import Command


def build() -> KVStore:
    store = KVStore()
    commands: list[tuple[Command, int, int]] = [
        (RegisterSession(), 0, 0),
        (LeaseGrant(ttl_ms=5000), 0, 0),
        (Put(b"z", b"1", lease=2), 1, 1),
        (Put(b"a", b"1"), 1, 2),
        (Put(b"m", b"1", lease=2), 0, 0),
        (Txn(success=(Put(b"a", b"2"), DeleteRange(b"z"))), 0, 0),
        (Compact(2), 0, 0),
        (Put(b"b", b"1"), 1, 3),
    ]
    for index, (command, client, seq) in enumerate(commands, start=1):
        store.apply_proposal(index, Proposal(command, now_ms=index * 10, client_id=client, seq=seq))
    return store


def test_restore_reproduces_state_and_bytes() -> None:
    original = build()
    data = original.snapshot()
    copy = KVStore()
    copy.restore(data)
    assert copy.snapshot() == data
    assert copy.statistics() == original.statistics()
    assert copy.get(b"a", b"\0") == original.get(b"a", b"\0")
    assert copy.get(b"a", b"\0", revision=3) == original.get(b"a", b"\0", revision=3)
    assert sorted(copy.leases.get(2).keys) == [b"m"]
    assert copy.sessions.sessions()[0].responses == original.sessions.sessions()[0].responses
    # Both go on identically.
    for store in (original, copy):
        store.apply_proposal(9, Proposal(Put(b"c", b"1")))
    assert copy.snapshot() == original.snapshot()


def test_equal_states_reached_in_different_orders_give_equal_bytes() -> None:
    one, two = KVStore(), KVStore()
    one.apply_proposal(1, Proposal(Txn(success=(Put(b"b", b"1"), Put(b"a", b"1")))))
    two.apply_proposal(1, Proposal(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1")))))
    # The event logs differ (the order of events is state), so compact them away first.
    for store in (one, two):
        store.events.trim_below(2)
    assert one.snapshot() == two.snapshot()


def test_a_corrupt_snapshot_is_refused_and_changes_nothing() -> None:
    store = build()
    before = store.snapshot()
    with pytest.raises(InvariantViolation):
        store.restore(b"\x93garbage")
    assert store.snapshot() == before


def test_chunked_encoding_gives_the_same_bytes() -> None:
    from phalanx.kv import DeleteRange, KVStore, Proposal, Put, RegisterSession, encode_proposal
    from phalanx.kv.snapshot import encode_chunks, image_of, take

    for writes in (0, 3, 40, 5000):
        store = KVStore()
        for index in range(1, writes + 1):
            if index % 50 == 0:
                command: object = RegisterSession()
            elif index % 7 == 0:
                command = DeleteRange(b"k%04d" % (index % 300))
            else:
                command = Put(b"k%04d" % (index % 300), b"v" * (index % 9))
            store.apply(index, encode_proposal(Proposal(command, now_ms=index)))  # type: ignore[arg-type]
        assert b"".join(encode_chunks(image_of(store), chunk_items=7)) == take(store)
