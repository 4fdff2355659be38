"""Watches: ordered delivery, filters, resume after reconnect and across snapshot/restore."""

from __future__ import annotations

import pytest

from phalanx.kv import (
    Compact,
    Compacted,
    DeleteRange,
    KVStore,
    Limits,
    Proposal,
    Put,
    Txn,
    WatchHub,
    encode_proposal,
    prefix_end,
)
from phalanx.kv.commands import Command
from phalanx.kv.errors import TooManyWatchers
from phalanx.kv.watch import Event, EventType


class Replica:
    def __init__(self, limits: Limits | None = None) -> None:
        self.store = KVStore(limits or Limits())
        self.hub = WatchHub(self.store, self.store.limits)
        self.index = 0

    def run(self, command: Command) -> None:
        self.index += 1
        self.store.apply(self.index, encode_proposal(Proposal(command), self.store.limits))


def summary(events: list[Event]) -> list[tuple[int, EventType, bytes, bytes]]:
    return [(e.revision, e.type, e.kv.key, e.kv.value) for e in events]


def test_a_prefix_watch_gets_puts_and_deletes_in_order() -> None:
    r = Replica()
    watch = r.hub.watch(b"app/", prefix_end(b"app/"))
    r.run(Put(b"app/a", b"1"))  # 1
    r.run(Put(b"other", b"x"))  # 2
    r.run(Txn(success=(Put(b"app/b", b"2"), Put(b"app/c", b"3"))))  # 3
    r.run(DeleteRange(b"app/a"))  # 4
    events = r.hub.poll(watch)
    assert summary(events) == [
        (1, EventType.PUT, b"app/a", b"1"),
        (3, EventType.PUT, b"app/b", b"2"),
        (3, EventType.PUT, b"app/c", b"3"),
        (4, EventType.DELETE, b"app/a", b""),
    ]
    assert events[-1].prev_kv is not None
    assert events[-1].prev_kv.value == b"1"
    assert r.hub.poll(watch) == []
    assert r.hub.next_revision(watch) == 5


def test_a_key_watch_from_an_old_revision_replays_history() -> None:
    r = Replica()
    for value in (b"1", b"2", b"3"):
        r.run(Put(b"k", value))
    watch = r.hub.watch(b"k", start_revision=2)
    assert [e.kv.value for e in r.hub.poll(watch)] == [b"2", b"3"]


def test_events_max_splits_only_between_revisions() -> None:
    r = Replica()
    watch = r.hub.watch(b"a", b"\0", start_revision=1)
    r.run(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1"), Put(b"c", b"1"))))  # 1
    r.run(Put(b"d", b"1"))  # 2
    first = r.hub.poll(watch, events_max=1)
    assert [e.kv.key for e in first] == [b"a", b"b", b"c"]
    assert [e.kv.key for e in r.hub.poll(watch, events_max=1)] == [b"d"]


def test_a_watcher_resumes_on_a_replica_restored_from_a_snapshot() -> None:
    leader = Replica()
    watch = leader.hub.watch(b"k", prefix_end(b"k"), start_revision=1)
    for i in range(5):
        leader.run(Put(b"k%d" % i, b"%d" % i))
    seen = leader.hub.poll(watch)
    assert [e.revision for e in seen] == [1, 2, 3, 4, 5]
    for i in range(5, 8):
        leader.run(Put(b"k%d" % i, b"%d" % i))
    # The client reconnects to a new replica installed from the leader's snapshot.
    follower = Replica()
    follower.store.restore(leader.store.snapshot())
    follower.index = leader.index
    resumed = follower.hub.watch(b"k", prefix_end(b"k"), start_revision=seen[-1].revision + 1)
    follower.run(Put(b"k8", b"8"))
    assert [e.revision for e in follower.hub.poll(resumed)] == [6, 7, 8, 9]


def test_a_watch_below_the_compaction_point_is_refused_clearly() -> None:
    r = Replica()
    watch = r.hub.watch(b"k", start_revision=1)
    for value in (b"1", b"2", b"3"):
        r.run(Put(b"k", value))
    r.run(Compact(3))
    with pytest.raises(Compacted) as caught:
        r.hub.poll(watch)
    assert caught.value.compact_revision == 2
    with pytest.raises(Compacted):
        r.hub.watch(b"k", start_revision=2)
    assert [e.kv.value for e in r.hub.poll(r.hub.watch(b"k", start_revision=3))] == [b"3"]


def test_the_event_log_is_bounded_and_drops_whole_revisions() -> None:
    r = Replica(Limits(event_log_len_max=4))
    watch = r.hub.watch(b"a", b"\0", start_revision=1)
    r.run(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1"))))  # 1
    r.run(Txn(success=(Put(b"a", b"2"), Put(b"b", b"2"))))  # 2
    assert len(r.store.events) == 4
    r.run(Put(b"c", b"1"))  # 3: the log drops all of revision 1, not half of it
    assert len(r.store.events) == 3
    assert r.store.events.floor_revision == 2
    with pytest.raises(Compacted):
        r.hub.poll(watch)
    late = r.hub.watch(b"a", b"\0", start_revision=2)
    assert [e.revision for e in r.hub.poll(late)] == [2, 2, 3]


def test_the_watcher_limit_is_enforced() -> None:
    r = Replica(Limits(watchers_max=2))
    first = r.hub.watch(b"a")
    r.hub.watch(b"b")
    with pytest.raises(TooManyWatchers):
        r.hub.watch(b"c")
    r.hub.cancel(first)
    r.hub.watch(b"c")
    assert r.hub.statistics()["watchers"] == 2
