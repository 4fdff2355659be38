"""The decision log on a replicated key-value store: the way out of the single point of failure.

:class:`KvDecisionLog` keeps the log's rules (:mod:`.log`) on any store that offers the four
operations of :class:`CasStore`: an atomic put-if-absent, a versioned read, a
compare-and-set on the version, and a prefix scan. On Phalanx's Raft-replicated KV each is
one consensus round (``Txn`` with a ``CREATE_REVISION == 0`` or ``MOD_REVISION == v``
compare), so a decision survives the loss of any minority of machines and the coordinator
can restart anywhere: the blocking window no longer depends on one disk. The store must be
linearizable (reads through the leader), or an inquiry could miss a commit.

Keys, under ``prefix``: ``d/<coordinator>/<incarnation>.<sequence>`` (20-digit numbers, so
they sort) holding ``{"d": decision, "p": participants, "at": seconds}`` as JSON, and
``i/<coordinator>`` holding the run counter. :class:`MemoryCasStore` is the in-memory twin
of the store; the adapter for ``phalanx.client.Client`` is a few lines (see ``docs/txn.md``).
"""

from __future__ import annotations

import threading
from typing import Final, Protocol, runtime_checkable

import msgspec

from phalanx.errors import Conflict
from phalanx.txn.twopc.gid import Gid, check_name
from phalanx.txn.twopc.log import DecisionRecord
from phalanx.txn.twopc.types import Decision

__all__ = ["CasStore", "KvDecisionLog", "MemoryCasStore"]

#: Compare-and-set attempts before giving up on a contended counter or record.
CAS_ATTEMPTS_MAX: Final = 100
#: Most records one scan returns (unfinished transactions, prune candidates); Phalanx's KV
#: answers at most 10 000 keys per range read.
SCAN_MAX: Final = 10_000


@runtime_checkable
class CasStore(Protocol):
    """The four operations the log needs from a linearizable key-value store."""

    def put_if_absent(self, key: bytes, value: bytes) -> bytes:
        """Store ``value`` unless ``key`` exists; return the value the key holds."""
        ...

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        """The value (None if absent) and its version (0 if absent)."""
        ...

    def compare_and_set(self, key: bytes, version: int, value: bytes | None) -> bool:
        """Write ``value`` (delete when None) if ``key`` is still at ``version``."""
        ...

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Keys under ``prefix`` with their values, in key order, at most ``limit``."""
        ...


class MemoryCasStore:
    """The in-memory twin of :class:`CasStore`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[bytes, tuple[bytes, int]] = {}
        self._version = 0

    def put_if_absent(self, key: bytes, value: bytes) -> bytes:
        with self._lock:
            if key not in self._data:
                self._version += 1
                self._data[key] = (value, self._version)
            return self._data[key][0]

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        with self._lock:
            value, version = self._data.get(key, (None, 0))
            return value, version

    def compare_and_set(self, key: bytes, version: int, value: bytes | None) -> bool:
        with self._lock:
            if self._data.get(key, (None, 0))[1] != version:
                return False
            if value is None:
                self._data.pop(key, None)
            else:
                self._version += 1
                self._data[key] = (value, self._version)
            return True

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        with self._lock:
            found = sorted((k, v) for k, (v, _) in self._data.items() if k.startswith(prefix))
        return found[:limit]


class _Entry(msgspec.Struct, frozen=True):
    d: str
    p: list[str]
    at: float


class KvDecisionLog:
    """A :class:`~phalanx.txn.twopc.log.DecisionLog` on a :class:`CasStore`."""

    def __init__(self, store: CasStore, *, prefix: bytes = b"/phalanx/2pc/") -> None:
        self.store = store
        self.prefix = prefix

    def _key(self, gid: Gid) -> bytes:
        return self._coordinator_prefix(gid.coordinator) + (
            f"{gid.incarnation:020d}.{gid.sequence:020d}".encode()
        )

    def _coordinator_prefix(self, coordinator: str) -> bytes:
        return self.prefix + b"d/" + coordinator.encode() + b"/"

    def new_incarnation(self, coordinator: str) -> int:
        key = self.prefix + b"i/" + check_name("coordinator", coordinator).encode()
        for _ in range(CAS_ATTEMPTS_MAX):
            value, version = self.store.read(key)
            following = int(value or b"0") + 1
            if self.store.compare_and_set(key, version, str(following).encode()):
                return following
        raise Conflict(f"{coordinator}: the run counter kept changing under us")

    def decide(
        self, gid: Gid, decision: Decision, participants: tuple[str, ...], *, now_s: float
    ) -> Decision:
        entry = _Entry(decision.value, list(participants), now_s)
        held = self.store.put_if_absent(self._key(gid), msgspec.json.encode(entry))
        return Decision(msgspec.json.decode(held, type=_Entry).d)

    def outcome(self, gid: Gid) -> Decision | None:
        value, _ = self.store.read(self._key(gid))
        return None if value is None else Decision(msgspec.json.decode(value, type=_Entry).d)

    def end(self, gid: Gid) -> None:
        key = self._key(gid)
        for _ in range(CAS_ATTEMPTS_MAX):
            value, version = self.store.read(key)
            if value is None or msgspec.json.decode(value, type=_Entry).d != "commit":
                return
            if self.store.compare_and_set(key, version, None):
                return
        raise Conflict(f"{gid}: the record kept changing under us")

    def unfinished(self, coordinator: str) -> list[DecisionRecord]:
        prefix = self._coordinator_prefix(coordinator)
        records = []
        for key, value in self.store.scan(prefix, SCAN_MAX):
            entry = msgspec.json.decode(value, type=_Entry)
            if entry.d != "commit":
                continue
            incarnation, sequence = key[len(prefix) :].decode().split(".")
            gid = Gid(coordinator, int(incarnation), int(sequence))
            records.append(DecisionRecord(gid, Decision.COMMIT, tuple(entry.p), entry.at))
        return records

    def prune(self, *, before_s: float) -> int:
        pruned = 0
        for key, value in self.store.scan(self.prefix + b"d/", SCAN_MAX):
            entry = msgspec.json.decode(value, type=_Entry)
            if entry.d != "abort" or entry.at >= before_s:
                continue
            current, version = self.store.read(key)
            if current == value and self.store.compare_and_set(key, version, None):
                pruned += 1
        return pruned
