"""Leases: grant, keep-alive, revoke; expiry happens only through the leader's command."""

from __future__ import annotations

from phalanx.kv import (
    KVStore,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRenewAll,
    LeaseRevoke,
    Proposal,
    Put,
    WatchHub,
)
from phalanx.kv.commands import Command
from phalanx.kv.errors import LeaseNotFound
from phalanx.kv.lease import expire_proposal
from phalanx.kv.responses import (
    Error,
    LeaseExpireResult,
    LeaseGrantResult,
    LeaseKeepAliveResult,
    LeaseRenewAllResult,
    LeaseRevokeResult,
    Response,
)
from phalanx.kv.watch import EventType


class Replica:
    def __init__(self) -> None:
        self.store = KVStore()
        self.index = 0

    def run(self, command: Command, now_ms: int = 0) -> Response:
        self.index += 1
        return self.store.apply_proposal(self.index, Proposal(command, now_ms=now_ms))

    def run_proposal(self, proposal: Proposal) -> Response:
        self.index += 1
        return self.store.apply_proposal(self.index, proposal)


def test_grant_picks_the_entry_index_as_id_and_keys_attach() -> None:
    r = Replica()
    assert r.run(LeaseGrant(ttl_ms=5000), now_ms=1000) == LeaseGrantResult(1, 5000)
    r.run(Put(b"a", b"1", lease=1))
    r.run(Put(b"b", b"1", lease=1))
    r.run(Put(b"b", b"2"))  # re-put without the lease detaches b
    assert sorted(r.store.leases.get(1).keys) == [b"a"]
    assert r.store.leases.get(1).deadline_ms == 6000


def test_revoke_deletes_attached_keys_in_one_revision() -> None:
    r = Replica()
    r.run(LeaseGrant(ttl_ms=5000, lease_id=7))
    r.run(Put(b"a", b"1", lease=7))
    r.run(Put(b"b", b"1", lease=7))
    r.run(Put(b"c", b"1"))
    assert r.run(LeaseRevoke(7)) == LeaseRevokeResult(4, 2)  # leases take no revision
    assert [kv.key for kv in r.store.get(b"a", b"\0").kvs] == [b"c"]
    missing = r.run(LeaseRevoke(7))
    assert isinstance(missing, Error)
    assert isinstance(missing.exception(), LeaseNotFound)


def test_replicas_never_expire_a_lease_by_themselves() -> None:
    r = Replica()
    r.run(LeaseGrant(ttl_ms=1000, lease_id=1), now_ms=0)
    r.run(Put(b"a", b"1", lease=1), now_ms=10)
    # Time passes in later commands, far beyond the TTL: the key is still there.
    r.run(Put(b"other", b"1"), now_ms=60_000)
    assert r.store.get(b"a").count == 1
    assert 1 in r.store.leases


def test_the_leader_lists_due_leases_and_its_command_expires_them() -> None:
    r = Replica()
    hub = WatchHub(r.store)
    r.run(LeaseGrant(ttl_ms=1000, lease_id=1), now_ms=0)
    r.run(LeaseGrant(ttl_ms=5000, lease_id=2), now_ms=0)
    r.run(Put(b"a", b"1", lease=1))
    r.run(Put(b"b", b"1", lease=2))
    watch = hub.watch(b"a", b"\0")
    assert expire_proposal(r.store.leases, 999) is None
    proposal = expire_proposal(r.store.leases, 1500)
    assert proposal == Proposal(LeaseExpire((1,)), now_ms=1500)
    assert r.run_proposal(proposal) == LeaseExpireResult(3, (1,))
    assert [kv.key for kv in r.store.get(b"a", b"\0").kvs] == [b"b"]
    assert [(e.type, e.kv.key) for e in hub.poll(watch)] == [(EventType.DELETE, b"a")]
    assert r.store.leases.due(10_000) == [2]


def test_a_keepalive_applied_before_the_expiry_command_wins() -> None:
    r = Replica()
    r.run(LeaseGrant(ttl_ms=1000, lease_id=1), now_ms=0)
    r.run(Put(b"a", b"1", lease=1))
    proposal = expire_proposal(r.store.leases, 1200)  # the leader decides...
    assert r.run(LeaseKeepAlive(1), now_ms=1100) == LeaseKeepAliveResult(1, 1000)
    # ...but the keep-alive was ordered first: at 1200 the lease is due only at 2100.
    assert proposal is not None
    assert r.run_proposal(proposal) == LeaseExpireResult(1, ())
    assert r.store.get(b"a").count == 1


def test_a_leader_clock_behind_cannot_move_time_backwards() -> None:
    r = Replica()
    r.run(LeaseGrant(ttl_ms=1000, lease_id=1), now_ms=5000)
    r.run(LeaseKeepAlive(1), now_ms=100)  # a new leader with a slow clock
    assert r.store.leases.get(1).deadline_ms == 6000
    assert r.store.clock_ms == 5000


def test_put_with_an_unknown_lease_is_rejected() -> None:
    r = Replica()
    result = r.run(Put(b"a", b"1", lease=42))
    assert isinstance(result, Error)
    assert isinstance(result.exception(), LeaseNotFound)
    assert r.store.revision == 0


def test_a_new_leaders_renewal_outlasts_the_time_without_a_leader() -> None:
    r = Replica()
    r.run(LeaseGrant(ttl_ms=1000, lease_id=1), now_ms=0)
    r.run(LeaseGrant(ttl_ms=9000, lease_id=2), now_ms=0)
    r.run(Put(b"a", b"1", lease=1))
    # No leader for 2 s, so no keep-alive could land; the new leader renews first.
    assert r.run(LeaseRenewAll(), now_ms=2000) == LeaseRenewAllResult(2)
    assert r.store.leases.get(1).deadline_ms == 3000
    assert r.store.leases.get(2).deadline_ms == 11_000
    proposal = expire_proposal(r.store.leases, 2500)
    assert proposal is None
    assert r.store.get(b"a").count == 1
