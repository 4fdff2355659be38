"""The history of client operations, in the shape linearizability checkers read.

One :class:`Op` per operation: which process issued it, when it was invoked and completed
(virtual microseconds), what it was (``put`` or ``read``, key, value), what it returned and
how it ended:

- ``ok``: it took effect (a put was applied by the node it was sent to; a read was served);
- ``fail``: it definitely did not take effect (the proposal was dropped; a read that was not
  served has no effect either, so its timeout is a ``fail``);
- ``info``: unknown (a put submitted but not confirmed before its timeout or before its node
  crashed: it may still commit later).

As in Jepsen, a process that ends an operation with ``info`` never issues another one (it may
still be in flight); the client continues under a new process number.

:meth:`History.to_jsonl` writes one JSON object per line. The history holds at most
``ops_max`` operations; :meth:`History.full` tells the workload to stop issuing more.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path

import msgspec

__all__ = ["HISTORY_OPS_MAX", "History", "Op", "OpOutcome"]

#: Default bound of recorded operations.
HISTORY_OPS_MAX = 1_000_000


class OpOutcome(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Op(msgspec.Struct, omit_defaults=True):
    """One client operation. ``complete_us`` and ``outcome`` are None while it is pending."""

    id: int
    process: int
    f: str  # "put" or "read"
    key: str
    invoke_us: int
    value: str | None = None  # the put's value
    node: int = 0  # the node the operation was sent to
    complete_us: int | None = None
    outcome: OpOutcome | None = None
    output: str | None = None  # the read's value
    index: int = 0  # the log index a put was applied at / the read index served
    error: str | None = None

    @property
    def pending(self) -> bool:
        return self.outcome is None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Op)


class History:
    """Operations in invocation order."""

    __slots__ = ("_ops", "ops_max")

    def __init__(self, ops_max: int = HISTORY_OPS_MAX) -> None:
        if ops_max < 1:
            raise ValueError("ops_max must be at least 1")
        self._ops: list[Op] = []
        self.ops_max = ops_max

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops)

    def get(self, op_id: int) -> Op:
        """The operation with id ``op_id`` (ids are positions in the history)."""
        return self._ops[op_id]

    def full(self) -> bool:
        return len(self._ops) >= self.ops_max

    def invoke(
        self,
        process: int,
        f: str,
        key: str,
        now_us: int,
        *,
        value: str | None = None,
        node: int = 0,
    ) -> Op:
        if self.full():
            raise ValueError(f"the history already holds {self.ops_max} operations")
        op = Op(len(self._ops), process, f, key, now_us, value=value, node=node)
        self._ops.append(op)
        return op

    @staticmethod
    def complete(
        op: Op,
        outcome: OpOutcome,
        now_us: int,
        *,
        output: str | None = None,
        index: int = 0,
        error: str | None = None,
    ) -> None:
        if op.outcome is not None:
            raise ValueError(f"operation {op.id} already completed ({op.outcome})")
        op.outcome = outcome
        op.complete_us = now_us
        op.output = output
        op.index = index
        op.error = error

    def counts(self) -> dict[str, int]:
        result = {"ok": 0, "fail": 0, "info": 0, "pending": 0}
        for op in self._ops:
            result[op.outcome.value if op.outcome else "pending"] += 1
        return result

    def to_jsonl(self) -> bytes:
        return b"".join(_ENCODER.encode(op) + b"\n" for op in self._ops)

    def write(self, path: Path) -> None:
        path.write_bytes(self.to_jsonl())

    @classmethod
    def from_jsonl(cls, data: bytes, ops_max: int = HISTORY_OPS_MAX) -> History:
        history = cls(ops_max)
        for line in data.splitlines():
            if line.strip():
                history._ops.append(_DECODER.decode(line))
        return history
