"""Two-phase commit with presumed abort, a durable decision log, and recovery.

Pieces, from the protocol outwards:

* :mod:`.coordinator`, :mod:`.participant`: the sans-I/O state machines;
* :mod:`.log`, :mod:`.log_sqlite`, :mod:`.log_postgres`, :mod:`.log_kv`: the decision log
  (compare-and-set, first decision wins), on one machine or on a replicated KV;
* :mod:`.participants`: the Participant and Branch Protocols; :mod:`.memory`,
  :mod:`.postgres`, :mod:`.sqlite`: participants;
* :mod:`.driver`: :class:`Coordinator`, which runs transactions and recovers its own;
* :mod:`.resolver`: background resolution from the coordinator's and the participant's side.

See ``docs/txn.md``. :class:`PostgresParticipant` and :class:`PostgresDecisionLog` load
psycopg on first use.
"""

from typing import TYPE_CHECKING, Any

from phalanx.txn.twopc.coordinator import CoordinatorMachine, Phase
from phalanx.txn.twopc.driver import (
    Coordinator,
    CoordinatorStatistics,
    RecoveryReport,
    Transaction,
    TxnResult,
)
from phalanx.txn.twopc.gid import BranchId, Gid, parse_branch
from phalanx.txn.twopc.log import DecisionLog, DecisionRecord, MemoryDecisionLog
from phalanx.txn.twopc.log_kv import CasStore, KvDecisionLog, MemoryCasStore
from phalanx.txn.twopc.log_sqlite import SqliteDecisionLog
from phalanx.txn.twopc.memory import MemoryBranch, MemoryParticipant
from phalanx.txn.twopc.participant import BranchState, ParticipantMachine
from phalanx.txn.twopc.participants import Branch, Participant, PreparedBranch
from phalanx.txn.twopc.resolver import ParticipantResolver, Resolver
from phalanx.txn.twopc.sqlite import SqliteBranch, SqliteParticipant
from phalanx.txn.twopc.types import Decision, PrepareRefused, TransactionAborted

if TYPE_CHECKING:
    from phalanx.txn.twopc.log_postgres import PostgresDecisionLog
    from phalanx.txn.twopc.postgres import PostgresBranch, PostgresParticipant

__all__ = [
    "Branch",
    "BranchId",
    "BranchState",
    "CasStore",
    "Coordinator",
    "CoordinatorMachine",
    "CoordinatorStatistics",
    "Decision",
    "DecisionLog",
    "DecisionRecord",
    "Gid",
    "KvDecisionLog",
    "MemoryBranch",
    "MemoryCasStore",
    "MemoryDecisionLog",
    "MemoryParticipant",
    "Participant",
    "ParticipantMachine",
    "ParticipantResolver",
    "Phase",
    "PostgresBranch",
    "PostgresDecisionLog",
    "PostgresParticipant",
    "PrepareRefused",
    "PreparedBranch",
    "RecoveryReport",
    "Resolver",
    "SqliteBranch",
    "SqliteDecisionLog",
    "SqliteParticipant",
    "Transaction",
    "TransactionAborted",
    "TxnResult",
    "parse_branch",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresDecisionLog":
        from phalanx.txn.twopc import log_postgres

        return log_postgres.PostgresDecisionLog
    if name in ("PostgresBranch", "PostgresParticipant"):
        from phalanx.txn.twopc import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
