"""Readers of histories written by other tools, and format detection.

Two formats besides Phalanx's own JSON lines (:mod:`phalanx.chaos.history`):

- **Knossos logs**, as Jepsen prints them, one event per line::

      INFO  jepsen.util - 3	:invoke	:write	4
      INFO  jepsen.util - 3	:ok	:write	4

  The number after ``-`` is the process, then the event type (``:invoke``, ``:ok``,
  ``:fail``, ``:info``), the function and its value in EDN.
- **EDN operation maps**, one per line::

      {:process 9, :type :invoke, :f :append, :key "0", :value "x 9 0 y"}

In both, an ``:invoke`` starts an operation of its process and the next ``:ok``/``:fail``/
``:info`` of the same process ends it. The invocation's value is the input, an ``:ok``'s value
the output. A ``:fail`` whose value is ``:timed-out`` is unknown, not failed (a timeout never
proves that nothing happened), and an invocation that never completes is ``info`` with no
completion time. The line number is used as the time (Knossos logs carry no clock; EDN
histories may have ``:time``, but the line order is exact and is all a checker needs). Events
of the fault injector (process ``:nemesis``) are skipped: they are not client operations.

The same bounds as JSON lines apply: :data:`~phalanx.chaos.history.HISTORY_OPS_MAX`
operations and :data:`~phalanx.chaos.history.LINE_BYTES_MAX` bytes per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from phalanx.chaos.edn import EdnError, Keyword, read_edn
from phalanx.chaos.history import (
    HISTORY_OPS_MAX,
    LINE_BYTES_MAX,
    HistoryError,
    Operation,
    parse_jsonl,
    validate,
)
from phalanx.errors import Outcome

__all__ = ["FORMATS", "Format", "detect_format", "load_history", "parse_edn", "parse_knossos"]

Format = Literal["jsonl", "knossos", "edn"]
FORMATS: Final[tuple[Format, ...]] = ("jsonl", "knossos", "edn")

_KNOSSOS_LINE: Final = re.compile(r"-\s+(\d+)\s+:(\w[\w-]*)\s+:(\S+)\s*(.*?)\s*$")
_KNOSSOS_NEMESIS: Final = re.compile(r"-\s+:nemesis\s")
_COMPLETIONS: Final = {"ok": Outcome.OK, "fail": Outcome.FAILED, "info": Outcome.INDETERMINATE}


class _Pairing:
    """Pairs each process's invocation with its next completion."""

    __slots__ = ("ops", "ops_max", "pending")

    def __init__(self, ops_max: int) -> None:
        self.ops: list[Operation] = []
        self.pending: dict[int, Operation] = {}
        self.ops_max = ops_max

    def event(
        self,
        number: int,
        process: int,
        kind: str,
        f: str,
        value: Any,
        key: str | None,
    ) -> None:
        if kind == "invoke":
            if process in self.pending:
                raise HistoryError(f"line {number}: process {process} invokes twice")
            if len(self.ops) + len(self.pending) >= self.ops_max:
                raise HistoryError(f"more than ops_max={self.ops_max} operations")
            op = Operation(
                id=0,
                process=process,
                f=f,
                invoke_us=number,
                outcome=Outcome.INDETERMINATE,
                key=key,
                input=value,
            )
            self.pending[process] = op
            return
        outcome = _COMPLETIONS.get(kind)
        if outcome is None:
            raise HistoryError(f"line {number}: unknown event type {kind!r}")
        inv = self.pending.pop(process, None)
        if inv is None:
            raise HistoryError(f"line {number}: process {process} completes nothing")
        if inv.f != f:
            raise HistoryError(f"line {number}: {f} completes an invocation of {inv.f}")
        if outcome is Outcome.FAILED and value == Keyword("timed-out"):
            outcome = Outcome.INDETERMINATE
        self.ops.append(
            Operation(
                id=0,
                process=process,
                f=f,
                invoke_us=inv.invoke_us,
                outcome=outcome,
                complete_us=number,
                key=inv.key,
                input=inv.input,
                output=value if outcome is Outcome.OK else None,
                error=str(value) if isinstance(value, Keyword) else None,
            )
        )

    def finish(self) -> list[Operation]:
        # Number operations by invocation order, which is also the order they are returned in.
        ops = sorted([*self.ops, *self.pending.values()], key=_invoked)
        result = [msgspec.structs.replace(op, id=n) for n, op in enumerate(ops)]
        validate(result)
        return result


def _invoked(op: Operation) -> int:
    return op.invoke_us


def _lines(data: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if len(line) > LINE_BYTES_MAX:
            raise HistoryError(f"line {number} is longer than LINE_BYTES_MAX={LINE_BYTES_MAX}")
        if line.strip():
            yield number, line


def _plain(value: Any) -> Any:
    # Keywords as values become plain strings so histories compare with JSON ones.
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Keyword):
        return str(value)
    return value


def parse_knossos(text: str, *, ops_max: int = HISTORY_OPS_MAX) -> list[Operation]:
    """Operations from a Knossos/Jepsen log."""
    pairing = _Pairing(ops_max)
    for number, line in _lines(text):
        match = _KNOSSOS_LINE.search(line)
        if match is None:
            if _KNOSSOS_NEMESIS.search(line):
                continue  # the fault injector's own events are not client operations
            raise HistoryError(f"line {number}: not a Knossos log line")
        process, kind, f, raw = match.groups()
        try:
            value = read_edn(raw) if raw else None
        except EdnError as exc:
            raise HistoryError(f"line {number}: {exc}") from None
        if not (kind in _COMPLETIONS and isinstance(value, Keyword)):
            value = _plain(value)
        pairing.event(number, int(process), kind, f, value, None)
    return pairing.finish()


def parse_edn(text: str, *, ops_max: int = HISTORY_OPS_MAX) -> list[Operation]:
    """Operations from EDN maps with ``:process``, ``:type``, ``:f``, ``:value`` (and ``:key``)."""
    pairing = _Pairing(ops_max)
    for number, line in _lines(text):
        try:
            record = read_edn(line)
        except EdnError as exc:
            raise HistoryError(f"line {number}: {exc}") from None
        if not isinstance(record, dict):
            raise HistoryError(f"line {number}: not a map")
        fields = {str(k): v for k, v in record.items()}
        process, kind, f = fields.get("process"), fields.get("type"), fields.get("f")
        if isinstance(process, Keyword):
            continue  # :nemesis and other non-client processes
        if not isinstance(process, int) or not isinstance(kind, str) or not isinstance(f, str):
            raise HistoryError(f"line {number}: needs :process, :type and :f")
        key = fields.get("key")
        value = fields.get("value")
        if not (kind in _COMPLETIONS and isinstance(value, Keyword)):
            value = _plain(value)
        pairing.event(number, process, str(kind), str(f), value, None if key is None else str(key))
    return pairing.finish()


def detect_format(text: str) -> Format:
    """Guess the format from the first non-blank line."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{"):
            return "edn" if ":process" in stripped else "jsonl"
        if _KNOSSOS_LINE.search(stripped):
            return "knossos"
        break
    return "jsonl"


def load_history(
    path: Path, fmt: Format | Literal["auto"] = "auto", *, ops_max: int = HISTORY_OPS_MAX
) -> list[Operation]:
    """The operations stored in ``path``, in any supported format (``auto`` guesses it)."""
    text = path.read_text(encoding="utf-8")
    chosen = detect_format(text) if fmt == "auto" else fmt
    if chosen == "knossos":
        return parse_knossos(text, ops_max=ops_max)
    if chosen == "edn":
        return parse_edn(text, ops_max=ops_max)
    return parse_jsonl(text.encode(), ops_max=ops_max)
