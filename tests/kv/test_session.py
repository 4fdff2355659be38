"""Exactly-once requests: a retried sequence number gets the cached response, applied once."""

from __future__ import annotations

from phalanx.errors import Outcome
from phalanx.kv import KVStore, Limits, Proposal, Put, RegisterSession, encode_proposal
from phalanx.kv.commands import Command
from phalanx.kv.errors import SequenceDiscarded, SessionBusy, SessionExpired
from phalanx.kv.responses import Error, PutResult, Response, SessionResult


class Replica:
    def __init__(self, limits: Limits | None = None) -> None:
        self.store = KVStore(limits or Limits())
        self.index = 0

    def run(self, command: Command, **envelope: int) -> Response:
        self.index += 1
        data = encode_proposal(Proposal(command, **envelope), self.store.limits)
        return self.store.apply(self.index, data)

    def register(self, now_ms: int = 0) -> int:
        result = self.run(RegisterSession(), now_ms=now_ms)
        assert isinstance(result, SessionResult)
        return result.client_id


def error_class(response: Response) -> type[Exception]:
    assert isinstance(response, Error)
    return type(response.exception())


def test_a_retried_write_is_applied_once_and_answered_the_same() -> None:
    r = Replica()
    client = r.register()
    first = r.run(Put(b"counter", b"1"), client_id=client, seq=1)
    assert first == PutResult(1)
    # The client timed out and retries; the entry was committed twice.
    assert r.run(Put(b"counter", b"1"), client_id=client, seq=1) == first
    assert r.store.revision == 1
    assert r.store.get(b"counter").kvs[0].version == 1
    assert r.run(Put(b"counter", b"2"), client_id=client, seq=2) == PutResult(2)


def test_requests_may_apply_out_of_order_within_the_unacknowledged_window() -> None:
    r = Replica()
    client = r.register()
    assert r.run(Put(b"b", b"1"), client_id=client, seq=2) == PutResult(1)
    assert r.run(Put(b"a", b"1"), client_id=client, seq=1) == PutResult(2)
    assert r.run(Put(b"b", b"1"), client_id=client, seq=2) == PutResult(1)


def test_acknowledged_responses_are_forgotten() -> None:
    r = Replica()
    client = r.register()
    r.run(Put(b"a", b"1"), client_id=client, seq=1)
    r.run(Put(b"a", b"2"), client_id=client, seq=2, acked_seq=2)
    assert list(r.store.sessions.sessions()[0].responses) == [2]
    late = r.run(Put(b"a", b"1"), client_id=client, seq=1)
    assert error_class(late) is SequenceDiscarded
    assert r.store.revision == 2


def test_unacknowledged_responses_are_bounded() -> None:
    r = Replica(Limits(session_responses_max=2))
    client = r.register()
    r.run(Put(b"a", b"1"), client_id=client, seq=1)
    r.run(Put(b"a", b"2"), client_id=client, seq=2)
    busy = r.run(Put(b"a", b"3"), client_id=client, seq=3)
    assert error_class(busy) is SessionBusy
    assert r.store.revision == 2
    ok = r.run(Put(b"a", b"3"), client_id=client, seq=3, acked_seq=2)
    assert ok == PutResult(3)


def test_unknown_sessions_are_refused_with_an_indeterminate_error() -> None:
    r = Replica()
    refused = r.run(Put(b"a", b"1"), client_id=99, seq=1)
    assert error_class(refused) is SessionExpired
    assert isinstance(refused, Error)
    assert refused.exception().outcome is Outcome.INDETERMINATE
    assert r.store.revision == 0


def test_sessions_max_evicts_the_least_recently_used() -> None:
    r = Replica(Limits(sessions_max=2))
    first, second = r.register(), r.register()
    r.run(Put(b"a", b"1"), client_id=first, seq=1)  # first is now the most recently used
    third = r.register()
    assert [s.client_id for s in r.store.sessions.sessions()] == [first, third]
    assert error_class(r.run(Put(b"a", b"2"), client_id=second, seq=1)) is SessionExpired


def test_sessions_expire_after_their_ttl_in_leader_time() -> None:
    r = Replica(Limits(session_ttl_ms=1000))
    client = r.register(now_ms=0)
    r.run(Put(b"a", b"1"), client_id=client, seq=1, now_ms=900)
    assert r.run(Put(b"a", b"2"), client_id=client, seq=2, now_ms=1800) == PutResult(2)
    expired = r.run(Put(b"a", b"3"), client_id=client, seq=3, now_ms=2801)
    assert error_class(expired) is SessionExpired
    assert len(r.store.sessions) == 0
