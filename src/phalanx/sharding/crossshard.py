"""Cross-shard writes, atomically, through two-phase commit (:mod:`phalanx.txn.twopc`).

A :class:`CrossShardWriter` takes statements grouped by shard and commits them all or none.
:class:`TwoPhaseCommitWriter` does it with a :class:`phalanx.txn.twopc.Coordinator` whose
participants are named after the shards (``SqliteParticipant(shard, path)``,
``PostgresParticipant(shard, conninfo)``): one branch per shard, the shard's guard (fence and
schema version) checked inside each branch, then ``commit()``.

Outcomes are those of the coordinator: an abort (a statement failed, a participant voted no,
a guard refused) raises and nothing is applied anywhere (FAILED); when the coordinator cannot
tell whether its decision was recorded it raises :class:`~phalanx.errors.Indeterminate` and
its recovery settles the transaction later (INDETERMINATE). A committed result may name
shards still ``pending``: the commit is decided and durable, those shards apply it when
recovery reaches them.

The coordinator API is synchronous; the writer runs it on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from phalanx.errors import BadRequest
from phalanx.sharding.backend import Guard, Statement, check_guard

if TYPE_CHECKING:
    from phalanx.txn.twopc import Coordinator

__all__ = ["CrossShardWriter", "TwoPhaseCommitWriter"]

_READ_META = "SELECT name, value FROM phalanx_shard_meta"


@runtime_checkable
class CrossShardWriter(Protocol):
    async def write(
        self, work: Mapping[str, Sequence[Statement]], guard: Guard
    ) -> dict[str, list[int]]:
        """Apply every shard's statements atomically; row counts per shard."""
        ...


def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _execute(branch: Any, sql: str, params: Sequence[Any]) -> int:
    if hasattr(branch, "execute"):  # SQLite and in-memory branches record what they run
        return int(branch.execute(sql, tuple(params)).rowcount)
    if hasattr(branch, "connection"):  # PostgreSQL branches expose their connection
        return int(branch.connection.execute(_pyformat(sql), tuple(params)).rowcount)
    raise BadRequest(f"cannot run SQL on a {type(branch).__name__} branch")


def _meta(branch: Any, dialect_pg: bool) -> dict[str, int]:
    if hasattr(branch, "query"):
        rows = branch.query(_READ_META)
    else:
        rows = branch.connection.execute(
            _READ_META + (" FOR SHARE" if dialect_pg else "")
        ).fetchall()
    return {str(name): int(value) for name, value in rows}


class TwoPhaseCommitWriter:
    """Cross-shard writes through ``coordinator`` (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def write(
        self, work: Mapping[str, Sequence[Statement]], guard: Guard
    ) -> dict[str, list[int]]:
        return await asyncio.to_thread(self._write, dict(work), guard)

    def _write(self, work: dict[str, Sequence[Statement]], guard: Guard) -> dict[str, list[int]]:
        counts: dict[str, list[int]] = {}
        with self.coordinator.begin() as transaction:
            for shard in sorted(work):
                branch = transaction.enlist(shard)
                meta = _meta(branch, dialect_pg=not hasattr(branch, "query"))
                check_guard(
                    shard, guard, meta.get("fence_version", 0), meta.get("schema_version", 0)
                )
                counts[shard] = [_execute(branch, sql, params) for sql, params in work[shard]]
            transaction.commit()
        return counts
