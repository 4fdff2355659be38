"""Small builders of hand-written histories for the chaos tests."""

from __future__ import annotations

from typing import Any

from phalanx.chaos.history import Operation
from phalanx.errors import Outcome

OK = Outcome.OK
FAIL = Outcome.FAILED
INFO = Outcome.INDETERMINATE


class Ops:
    """Appends operations with consecutive ids: ``h.add(process, f, start, end, ...)``."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def add(
        self,
        process: int,
        f: str,
        invoke_us: int,
        complete_us: int | None,
        *,
        input: Any = None,  # noqa: A002 - the field's name
        output: Any = None,
        outcome: Outcome = OK,
        key: str | None = None,
    ) -> Operation:
        op = Operation(
            id=len(self.ops),
            process=process,
            f=f,
            invoke_us=invoke_us,
            complete_us=complete_us,
            outcome=outcome,
            key=key,
            input=input,
            output=output,
        )
        self.ops.append(op)
        return op
