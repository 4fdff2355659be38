"""The MVCC keyspace and the replicated state machine around it (like etcd's ``mvcc``).

Every write transaction (a put, a delete that deletes something, a txn that writes, a lease
revoke or expiry that deletes keys) advances the cluster ``revision`` by one. Each key keeps
its history: versions with ``create_revision``, ``mod_revision`` and ``version`` (1 at
creation, +1 per put), and deletions as tombstones, so reads at an older revision see the
keyspace as it was. :meth:`KVStore.compact` forgets history below a revision.

:meth:`KVStore.apply` is the state machine's one entry point for committed Raft entries. It is
deterministic: no clock, no randomness, no unordered iteration; time comes from the leader in
each :class:`~phalanx.kv.commands.Proposal`. Rejections are values (:class:`Error`), equal on
every replica, and leave the state untouched (each command is checked before it changes
anything). Reads (:meth:`KVStore.get`) are not commands: the node serves them from the local
store after ReadIndex (linearizable) or at once (serializable).

Data lives in memory: a dict from key to its history list, plus a sorted key index for ranges
(new keys are sorted in lazily, at the next range read). Durability comes from the Raft log
and :mod:`phalanx.kv.snapshot`. ``docs/kv.md`` has the measurements behind this choice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

import msgspec

from phalanx.errors import Rejected, invariant
from phalanx.kv.commands import (
    Command,
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
    TxnOp,
    decode_proposal,
    validate,
    validate_op,
)
from phalanx.kv.errors import Compacted, FutureRevision
from phalanx.kv.lease import LeaseTable
from phalanx.kv.limits import DEFAULT_LIMITS, Limits
from phalanx.kv.responses import (
    CompactResult,
    DeleteResult,
    Error,
    ErrorCode,
    KeyValue,
    LeaseExpireResult,
    LeaseGrantResult,
    LeaseKeepAliveResult,
    LeaseRenewAllResult,
    LeaseRevokeResult,
    Noop,
    OpResult,
    PutResult,
    RangeResult,
    Response,
    SessionResult,
    TxnResult,
    error_response,
)
from phalanx.kv.session import SessionTable
from phalanx.kv.watch import Event, EventLog, EventType

__all__ = ["KVStore"]


def _mod_revision(kv: KeyValue) -> int:
    return kv.mod_revision


_COMPARE: dict[CompareOp, Callable[[int | bytes, int | bytes], bool]] = {
    CompareOp.EQUAL: lambda a, b: a == b,
    CompareOp.NOT_EQUAL: lambda a, b: a != b,
    CompareOp.LESS: lambda a, b: a < b,  # type: ignore[operator]
    CompareOp.GREATER: lambda a, b: a > b,  # type: ignore[operator]
}


class KVStore:
    """One replica's state machine: keyspace, leases, sessions and the watch event log."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        #: The index of the last Raft entry applied.
        self.applied_index = 0
        #: The revision of the last write (0: nothing written yet).
        self.revision = 0
        #: Reads below this revision fail with ``Compacted``.
        self.compact_revision = 0
        #: The largest ``now_ms`` applied: the state machine's clock.
        self.clock_ms = 0
        self.leases = LeaseTable(limits)
        self.sessions = SessionTable(limits)
        self.events = EventLog(limits.event_log_len_max)
        self._kv: dict[bytes, list[KeyValue]] = {}
        self._sorted: list[bytes] = []
        self._unsorted: list[bytes] = []
        self._write_revision = 0  # the revision being written, during a write
        self._wrote = False

    # -- reads ---------------------------------------------------------------------------------

    def get(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        """Read ``key`` or a range at ``revision`` (0: the latest), in key order.

        At most ``limit`` key-values (0: ``range_limit_max``); ``count`` counts all matches and
        ``more`` says some were left out. Raises ``Compacted``, ``FutureRevision``,
        ``BadRequest`` or ``TooLarge``.
        """
        op = Range(key, range_end, revision, limit, keys_only, count_only)
        validate_op(op, self.limits)
        self._check_revision(revision)
        return self._range(op)

    def keys(self) -> int:
        """How many keys exist at the latest revision."""
        return sum(1 for hist in self._kv.values() if hist[-1].version)

    def history(self, key: bytes) -> list[KeyValue]:
        """Every version of ``key`` kept (above the compaction point), tombstones included."""
        return list(self._kv.get(key, ()))

    def histories(self) -> list[list[KeyValue]]:
        """Every key's history, in key order (what a snapshot holds)."""
        self._sort_index()
        return [list(self._kv[key]) for key in self._sorted]

    def statistics(self) -> dict[str, int]:
        return {
            "applied_index": self.applied_index,
            "revision": self.revision,
            "compact_revision": self.compact_revision,
            "keys": self.keys(),
            "keys_with_history": len(self._kv),
            "leases": len(self.leases),
            "sessions": len(self.sessions),
            "event_log_len": len(self.events),
        }

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes; equal states give equal bytes."""
        from phalanx.kv.snapshot import take

        return take(self)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's (watch hubs over this store stay valid)."""
        from phalanx.kv.snapshot import restore_into

        restore_into(self, data)

    def load_histories(self, histories: list[list[KeyValue]]) -> None:
        """Replace the keyspace (used by snapshot restore); ``histories`` in key order."""
        self._kv = {hist[0].key: hist for hist in histories}
        self._sorted = [hist[0].key for hist in histories]
        self._unsorted = []

    # -- apply ---------------------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> Response:
        """Apply the committed entry at ``index``; ``b""`` (no command) is a no-op."""
        invariant(index > self.applied_index, f"apply {index} after {self.applied_index}")
        self.applied_index = index
        if not data:
            return Noop()
        try:
            proposal = decode_proposal(data, self.limits)
        except Rejected as exc:
            return error_response(exc)
        return self._apply(index, proposal)

    def apply_proposal(self, index: int, proposal: Proposal) -> Response:
        """Like :meth:`apply` for a proposal not yet encoded."""
        invariant(index > self.applied_index, f"apply {index} after {self.applied_index}")
        self.applied_index = index
        try:
            validate(proposal, self.limits)
        except Rejected as exc:
            return error_response(exc)
        return self._apply(index, proposal)

    def _apply(self, index: int, proposal: Proposal) -> Response:
        self.clock_ms = max(self.clock_ms, proposal.now_ms)
        if not proposal.client_id:
            return self._execute(index, proposal.command)
        session = self.sessions.lookup(proposal.client_id, self.clock_ms)
        if session is None:
            return Error(ErrorCode.SESSION_EXPIRED, f"session {proposal.client_id} not found")
        session.acked_seq = max(session.acked_seq, proposal.acked_seq)
        session.forget_below(session.acked_seq)
        cached = session.responses.get(proposal.seq)
        if cached is not None:
            return cached
        if proposal.seq < session.acked_seq:
            return Error(ErrorCode.SEQUENCE_DISCARDED, f"seq {proposal.seq} was acknowledged")
        if len(session.responses) >= self.limits.session_responses_max:
            return Error(
                ErrorCode.SESSION_BUSY,
                f"{self.limits.session_responses_max} unacknowledged responses in session",
            )
        response = self._execute(index, proposal.command)
        session.responses[proposal.seq] = response
        return response

    def _execute(self, index: int, command: Command) -> Response:
        try:
            return self._dispatch(index, command)
        except Rejected as exc:
            return error_response(exc)

    def _dispatch(self, index: int, cmd: Command) -> Response:  # noqa: PLR0911 - one per command
        if isinstance(cmd, Put):
            self._check_op(cmd)
            self._begin()
            prev = self._put(cmd)
            self._end()
            return PutResult(self.revision, prev if cmd.prev_kv else None)
        if isinstance(cmd, DeleteRange):
            self._begin()
            result = self._delete_range(cmd)
            self._end()
            return DeleteResult(self.revision, result.deleted, result.prev_kvs)
        if isinstance(cmd, Txn):
            return self._txn(cmd)
        if isinstance(cmd, Compact):
            self.compact(cmd.revision)
            return CompactResult(self.revision, self.compact_revision)
        if isinstance(cmd, LeaseGrant):
            lease = self.leases.grant(cmd.lease_id or index, cmd.ttl_ms, self.clock_ms)
            return LeaseGrantResult(lease.lease_id, lease.ttl_ms)
        if isinstance(cmd, LeaseKeepAlive):
            lease = self.leases.keep_alive(cmd.lease_id, self.clock_ms)
            return LeaseKeepAliveResult(lease.lease_id, lease.ttl_ms)
        if isinstance(cmd, LeaseRevoke):
            self.leases.get(cmd.lease_id)
            self._begin()
            deleted = self._revoke(cmd.lease_id)
            self._end()
            return LeaseRevokeResult(self.revision, deleted)
        if isinstance(cmd, LeaseExpire):
            return self._expire(cmd)
        if isinstance(cmd, LeaseRenewAll):
            return LeaseRenewAllResult(self.leases.renew_all(self.clock_ms))
        invariant(isinstance(cmd, RegisterSession), f"unknown command {cmd!r}")
        self.sessions.register(index, self.clock_ms)
        return SessionResult(index)

    # -- commands ------------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget every version that no read at ``revision`` or later can see."""
        if revision <= self.compact_revision:
            raise Compacted(
                f"revision {revision} is already compacted (at {self.compact_revision})",
                compact_revision=self.compact_revision,
            )
        if revision > self.revision:
            raise FutureRevision(f"cannot compact at {revision} > revision {self.revision}")
        emptied = False
        for hist in self._kv.values():
            i = bisect_right(hist, revision, key=_mod_revision) - 1
            if i < 0:
                continue
            keep_from = i if hist[i].version else i + 1
            if keep_from:
                del hist[:keep_from]
                emptied = emptied or not hist
        if emptied:
            self._kv = {key: hist for key, hist in self._kv.items() if hist}
            self._sorted = sorted(self._kv)
            self._unsorted = []
        self.compact_revision = revision
        self.events.trim_below(revision)

    def _txn(self, txn: Txn) -> TxnResult:
        succeeded = all(self._compare(cmp) for cmp in txn.compare)
        ops = txn.success if succeeded else txn.failure
        for op in ops:
            self._check_op(op)
        self._begin()
        results = [self._op(op) for op in ops]
        self._end()
        return TxnResult(self.revision, succeeded, tuple(results))

    def _compare(self, cmp: Compare) -> bool:
        hist = self._kv.get(cmp.key)
        kv = hist[-1] if hist and hist[-1].version else None
        if cmp.target == CompareTarget.VALUE:
            if kv is None:
                return False
            actual: int | bytes = kv.value
        elif kv is None:
            actual = 0
        elif cmp.target == CompareTarget.VERSION:
            actual = kv.version
        elif cmp.target == CompareTarget.MOD_REVISION:
            actual = kv.mod_revision
        else:
            actual = kv.create_revision
        return _COMPARE[cmp.op](actual, cmp.operand)

    def _check_op(self, op: TxnOp) -> None:
        # Everything that can reject an op is checked before the first write of a command.
        if isinstance(op, Put) and op.lease:
            self.leases.get(op.lease)
        elif isinstance(op, Range):
            self._check_revision(op.revision)

    def _op(self, op: TxnOp) -> OpResult:
        if isinstance(op, Put):
            prev = self._put(op)
            return PutResult(self._write_revision, prev if op.prev_kv else None)
        if isinstance(op, DeleteRange):
            return self._delete_range(op)
        return self._range(op)

    def _expire(self, cmd: LeaseExpire) -> LeaseExpireResult:
        expired = []
        self._begin()
        for lease_id in cmd.lease_ids:
            if lease_id in self.leases and self.leases.get(lease_id).deadline_ms <= self.clock_ms:
                self._revoke(lease_id)
                expired.append(lease_id)
        self._end()
        return LeaseExpireResult(self.revision, tuple(expired))

    # -- writes --------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._write_revision = self.revision + 1
        self._wrote = False

    def _end(self) -> None:
        if self._wrote:
            self.revision = self._write_revision
        self._write_revision = 0
        self._wrote = False

    def _put(self, op: Put) -> KeyValue | None:
        revision = self._write_revision
        self._wrote = True
        hist = self._kv.get(op.key)
        prev = None
        if hist is None:
            hist = self._kv[op.key] = []
            self._unsorted.append(op.key)
        else:
            invariant(hist[-1].mod_revision < revision, "a key written twice in one revision")
            prev = hist[-1] if hist[-1].version else None
        if prev is None:
            kv = KeyValue(op.key, op.value, revision, revision, 1, op.lease)
        else:
            kv = KeyValue(
                op.key, op.value, prev.create_revision, revision, prev.version + 1, op.lease
            )
            if prev.lease:
                self.leases.detach(prev.lease, op.key)
        hist.append(kv)
        if op.lease:
            self.leases.attach(op.lease, op.key)
        self.events.append(Event(EventType.PUT, kv, prev))
        return prev

    def _delete(self, key: bytes) -> KeyValue | None:
        hist = self._kv.get(key)
        if not hist or not hist[-1].version:
            return None
        prev = hist[-1]
        self._wrote = True
        tombstone = KeyValue(key, b"", 0, self._write_revision, 0)
        hist.append(tombstone)
        if prev.lease:
            self.leases.detach(prev.lease, key)
        self.events.append(Event(EventType.DELETE, tombstone, prev))
        return prev

    def _delete_range(self, op: DeleteRange) -> DeleteResult:
        prevs = [prev for key in self._keys_in(op.key, op.range_end) if (prev := self._delete(key))]
        return DeleteResult(
            self._write_revision if self._wrote else self.revision,
            len(prevs),
            tuple(prevs) if op.prev_kv else (),
        )

    def _revoke(self, lease_id: int) -> int:
        lease = self.leases.remove(lease_id)
        return sum(1 for key in sorted(lease.keys) if self._delete(key))

    # -- read helpers --------------------------------------------------------------------------

    def _check_revision(self, revision: int) -> None:
        if revision and revision < self.compact_revision:
            raise Compacted(
                f"revision {revision} is compacted (at {self.compact_revision})",
                compact_revision=self.compact_revision,
            )
        if revision > self.revision:
            raise FutureRevision(f"revision {revision} > current revision {self.revision}")

    def _range(self, op: Range) -> RangeResult:
        limit = op.limit or self.limits.range_limit_max
        kvs: list[KeyValue] = []
        count = 0
        for key in self._keys_in(op.key, op.range_end):
            kv = self._at(self._kv[key], op.revision)
            if kv is None:
                continue
            count += 1
            if not op.count_only and len(kvs) < limit:
                kvs.append(msgspec.structs.replace(kv, value=b"") if op.keys_only else kv)
        current = self._write_revision if self._wrote else self.revision
        return RangeResult(current, tuple(kvs), count, count > len(kvs) and not op.count_only)

    @staticmethod
    def _at(hist: list[KeyValue], revision: int) -> KeyValue | None:
        kv = hist[-1]
        if revision and kv.mod_revision > revision:
            i = bisect_right(hist, revision, key=_mod_revision) - 1
            if i < 0:
                return None
            kv = hist[i]
        return kv if kv.version else None

    def _keys_in(self, key: bytes, range_end: bytes) -> list[bytes]:
        if not range_end:
            return [key] if key in self._kv else []
        self._sort_index()
        lo = bisect_left(self._sorted, key)
        hi = len(self._sorted) if range_end == b"\0" else bisect_left(self._sorted, range_end)
        return self._sorted[lo:hi]

    def _sort_index(self) -> None:
        if self._unsorted:
            # Timsort merges the sorted run and the appended tail in about linear time.
            self._sorted.extend(self._unsorted)
            self._sorted.sort()
            self._unsorted = []
