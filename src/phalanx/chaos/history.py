"""Operation records, the recorder that makes them, and their JSON-lines storage.

A history is what clients saw: for every operation, which process issued it, when it was
invoked and when it completed (microseconds on one monotonic clock; only the order matters
to the checkers), what it was (``f``, an optional ``key``, an ``input``), what it returned
(``output``) and how it ended, in the three values of :class:`phalanx.errors.Outcome`:

- ``ok``: it took effect, and ``output`` is what it returned;
- ``fail``: it definitely did not take effect (refused before it started, or a compare
  that did not match);
- ``info``: unknown. It may take effect at any moment after its invocation, even after the
  client gave up (``complete_us`` is when it gave up), or never.

As in Jepsen, a process runs one operation at a time; after an ``info`` the client goes on
under a new process number, because the old operation may still be in flight.

Storage is one JSON object per line, one line per completed operation::

    {"id":0,"process":1,"f":"write","invoke_us":10,"complete_us":52,"outcome":"ok","input":3}

Reading accepts ``value`` as another name of ``input`` (the simulator's histories). Every
reader is bounded by ``ops_max`` (default :data:`HISTORY_OPS_MAX`) and by
:data:`LINE_BYTES_MAX` per line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from phalanx.errors import Outcome

__all__ = [
    "HISTORY_OPS_MAX",
    "LINE_BYTES_MAX",
    "HistoryError",
    "Operation",
    "Recorder",
    "dump_jsonl",
    "parse_jsonl",
    "read_jsonl",
    "validate",
    "write_jsonl",
]

#: The most operations one history may hold (recorder and readers alike).
HISTORY_OPS_MAX: Final = 2_000_000
#: The longest line a JSON-lines history may have.
LINE_BYTES_MAX: Final = 1 << 20


class HistoryError(ValueError):
    """A history is malformed or over a limit; the message names the line or operation."""


class Operation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One client operation, completed (``ok``/``fail``) or of unknown effect (``info``).

    ``complete_us`` is None only for an ``info`` operation that never returned at all.
    """

    id: int
    process: int
    f: str
    invoke_us: int
    outcome: Outcome
    complete_us: int | None = None
    key: str | None = None
    input: Any = None
    output: Any = None
    error: str | None = None


class _Line(msgspec.Struct, kw_only=True):
    # The stored shape, more tolerant than Operation: ``value`` is accepted for ``input``.
    id: int | None = None
    process: int
    f: str
    invoke_us: int
    outcome: Outcome | None = None
    complete_us: int | None = None
    key: str | int | None = None
    input: Any = None
    value: Any = None
    output: Any = None
    error: str | None = None


_ENCODER: Final = msgspec.json.Encoder()
_LINE_DECODER: Final = msgspec.json.Decoder(_Line)


def validate(ops: Sequence[Operation]) -> None:
    """Raise :class:`HistoryError` unless ids are unique and every operation is well formed."""
    if len(ops) > HISTORY_OPS_MAX:
        raise HistoryError(f"{len(ops)} operations exceed HISTORY_OPS_MAX={HISTORY_OPS_MAX}")
    seen: set[int] = set()
    for op in ops:
        if op.id in seen:
            raise HistoryError(f"operation id {op.id} appears twice")
        seen.add(op.id)
        if op.complete_us is None:
            if op.outcome is not Outcome.INDETERMINATE:
                raise HistoryError(f"operation {op.id} is {op.outcome.value} but never completed")
        elif op.complete_us < op.invoke_us:
            raise HistoryError(f"operation {op.id} completes before it is invoked")


def dump_jsonl(ops: Iterable[Operation]) -> bytes:
    """The JSON-lines bytes of ``ops``."""
    return b"".join(_ENCODER.encode(op) + b"\n" for op in ops)


def write_jsonl(path: Path, ops: Iterable[Operation]) -> None:
    path.write_bytes(dump_jsonl(ops))


def parse_jsonl(data: bytes, *, ops_max: int = HISTORY_OPS_MAX) -> list[Operation]:
    """Operations from JSON-lines bytes; blank lines are skipped, ids default to line order."""
    ops: list[Operation] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if len(line) > LINE_BYTES_MAX:
            raise HistoryError(f"line {number} is longer than LINE_BYTES_MAX={LINE_BYTES_MAX}")
        if len(ops) >= ops_max:
            raise HistoryError(f"more than ops_max={ops_max} operations")
        try:
            rec = _LINE_DECODER.decode(line)
        except msgspec.DecodeError as exc:
            raise HistoryError(f"line {number}: {exc}") from None
        outcome = rec.outcome if rec.outcome is not None else Outcome.INDETERMINATE
        ops.append(
            Operation(
                id=len(ops) if rec.id is None else rec.id,
                process=rec.process,
                f=rec.f,
                invoke_us=rec.invoke_us,
                outcome=outcome,
                complete_us=rec.complete_us,
                key=None if rec.key is None else str(rec.key),
                input=rec.input if rec.input is not None else rec.value,
                output=rec.output,
                error=rec.error,
            )
        )
    validate(ops)
    return ops


def read_jsonl(path: Path, *, ops_max: int = HISTORY_OPS_MAX) -> list[Operation]:
    return parse_jsonl(path.read_bytes(), ops_max=ops_max)


class _Pending(msgspec.Struct):
    process: int
    f: str
    invoke_us: int
    key: str | None
    input: Any


class Recorder:
    """Records operations as a workload runs them; ``clock`` returns microseconds.

    ``invoke`` returns a handle; ``ok``, ``fail`` and ``info`` complete it. Operations still
    pending when :meth:`operations` is called come out as ``info`` with no completion time:
    they may yet take effect. At most ``ops_max`` operations are recorded; :meth:`full` says
    when a workload should stop issuing more, and ``invoke`` refuses past it.
    """

    __slots__ = ("_clock_us", "_done", "_pending", "ops_max")

    def __init__(self, clock_us: Callable[[], int], *, ops_max: int = HISTORY_OPS_MAX) -> None:
        if not 1 <= ops_max <= HISTORY_OPS_MAX:
            raise ValueError(f"ops_max must be in 1..{HISTORY_OPS_MAX}")
        self._clock_us = clock_us
        self._pending: dict[int, _Pending] = {}
        self._done: dict[int, Operation] = {}
        self.ops_max = ops_max

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)

    def full(self) -> bool:
        return len(self) >= self.ops_max

    def invoke(self, process: int, f: str, input: Any = None, *, key: str | None = None) -> int:  # noqa: A002
        if self.full():
            raise HistoryError(f"the recorder already holds ops_max={self.ops_max} operations")
        handle = len(self)
        self._pending[handle] = _Pending(process, f, self._clock_us(), key, input)
        return handle

    def ok(self, handle: int, output: Any = None) -> Operation:
        return self._complete(handle, Outcome.OK, output, None)

    def fail(self, handle: int, error: str | None = None) -> Operation:
        return self._complete(handle, Outcome.FAILED, None, error)

    def info(self, handle: int, error: str | None = None) -> Operation:
        return self._complete(handle, Outcome.INDETERMINATE, None, error)

    def _complete(self, handle: int, outcome: Outcome, output: Any, error: str | None) -> Operation:
        pending = self._pending.pop(handle, None)
        if pending is None:
            raise HistoryError(f"operation {handle} is not pending")
        op = Operation(
            id=handle,
            process=pending.process,
            f=pending.f,
            invoke_us=pending.invoke_us,
            outcome=outcome,
            complete_us=self._clock_us(),
            key=pending.key,
            input=pending.input,
            output=output,
            error=error,
        )
        self._done[handle] = op
        return op

    def statistics(self) -> dict[str, int]:
        """How many operations are recorded, by outcome, and how many are still pending."""
        counts = {"ok": 0, "fail": 0, "info": 0}
        for op in self._done.values():
            counts[op.outcome.value] += 1
        return {**counts, "pending": len(self._pending), "ops_max": self.ops_max}

    def operations(self) -> list[Operation]:
        """Every operation in invocation order; the pending ones as ``info``."""
        ops = dict(self._done)
        for handle, p in self._pending.items():
            ops[handle] = Operation(
                id=handle,
                process=p.process,
                f=p.f,
                invoke_us=p.invoke_us,
                outcome=Outcome.INDETERMINATE,
                key=p.key,
                input=p.input,
            )
        return [ops[h] for h in sorted(ops)]
