"""The replicated state machine of the CP key-value store: MVCC keyspace, watches, leases,
exactly-once client sessions, snapshots. Deterministic and sans-I/O; see ``docs/kv.md``.

| module | holds |
|---|---|
| ``commands`` | commands in Raft entries, the ``Proposal`` envelope, validation |
| ``responses`` | ``KeyValue``, per-command results, ``Error`` |
| ``store`` | ``KVStore``: the keyspace, ``get``, ``apply``, ``compact`` |
| ``watch`` | the replicated event log and the node-local ``WatchHub`` |
| ``lease`` | leases, attached keys, the leader's list of leases due to expire |
| ``session`` | client sessions and cached responses |
| ``snapshot`` | the state as bytes and back |
| ``limits``, ``errors`` | the named limits; ``Compacted`` and the other typed errors |
"""

from phalanx.kv.commands import (
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRenewAll,
    LeaseRevoke,
    Proposal,
    Put,
    Range,
    RegisterSession,
    Txn,
    decode_proposal,
    encode_proposal,
    prefix_end,
)
from phalanx.kv.errors import Compacted
from phalanx.kv.limits import DEFAULT_LIMITS, Limits
from phalanx.kv.store import KVStore
from phalanx.kv.watch import WatchHub

__all__ = [
    "DEFAULT_LIMITS",
    "Compact",
    "Compacted",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRange",
    "KVStore",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRenewAll",
    "LeaseRevoke",
    "Limits",
    "Proposal",
    "Put",
    "Range",
    "RegisterSession",
    "Txn",
    "WatchHub",
    "decode_proposal",
    "encode_proposal",
    "prefix_end",
]
