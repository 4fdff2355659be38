"""Operation records: the recorder, JSON lines, the bounds."""

import json
from pathlib import Path

import pytest

from phalanx.chaos.history import (
    HistoryError,
    Operation,
    Recorder,
    parse_jsonl,
    read_jsonl,
    validate,
    write_jsonl,
)
from phalanx.errors import Outcome


class Ticks:
    def __init__(self) -> None:
        self.now_us = 0

    def __call__(self) -> int:
        self.now_us += 10
        return self.now_us


def test_recorder_records_three_valued_outcomes_and_pending_ops(tmp_path: Path) -> None:
    rec = Recorder(Ticks())
    w = rec.invoke(0, "write", 3)
    r = rec.invoke(1, "read")
    c = rec.invoke(2, "cas", [3, 4])
    lost = rec.invoke(3, "write", 9)
    rec.ok(w)
    rec.ok(r, 3)
    rec.fail(c, "mismatch")
    ops = rec.operations()
    assert [op.outcome for op in ops] == [
        Outcome.OK,
        Outcome.OK,
        Outcome.FAILED,
        Outcome.INDETERMINATE,
    ]
    assert ops[0].invoke_us == 10
    assert ops[0].complete_us == 50
    assert ops[1].output == 3
    assert ops[2].error == "mismatch"
    assert ops[3].complete_us is None  # still in flight: it may yet take effect
    assert ops[3].input == 9
    with pytest.raises(HistoryError, match="not pending"):
        rec.ok(w)
    path = tmp_path / "h.jsonl"
    write_jsonl(path, ops)
    assert read_jsonl(path) == ops
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "id": 0,
        "process": 0,
        "f": "write",
        "invoke_us": 10,
        "outcome": "ok",
        "complete_us": 50,
        "input": 3,
    }
    del lost


def test_recorder_stops_at_ops_max() -> None:
    rec = Recorder(Ticks(), ops_max=2)
    rec.invoke(0, "read")
    assert not rec.full()
    rec.ok(rec.invoke(1, "read"), 0)
    assert rec.full()
    with pytest.raises(HistoryError, match="ops_max=2"):
        rec.invoke(2, "read")
    with pytest.raises(ValueError, match="ops_max"):
        Recorder(Ticks(), ops_max=0)


def test_jsonl_reader_accepts_simulator_histories_and_bounds() -> None:
    sim_line = (
        b'{"id":4,"process":1,"f":"put","key":"k1","invoke_us":10,"value":"v0",'
        b'"node":2,"complete_us":20,"outcome":"ok","index":7}\n\n'
    )
    (op,) = parse_jsonl(sim_line)
    assert (op.id, op.f, op.key, op.input, op.outcome) == (4, "put", "k1", "v0", Outcome.OK)
    two = b'{"process":0,"f":"read","invoke_us":1,"complete_us":2,"outcome":"ok"}\n' * 2
    assert [op.id for op in parse_jsonl(two)] == [0, 1]
    with pytest.raises(HistoryError, match="ops_max=1"):
        parse_jsonl(two, ops_max=1)
    with pytest.raises(HistoryError, match="line 1"):
        parse_jsonl(b'{"process": "x"}\n')


def test_validate_rejects_malformed_histories() -> None:
    ok = Operation(id=0, process=0, f="read", invoke_us=5, complete_us=6, outcome=Outcome.OK)
    validate([ok])
    with pytest.raises(HistoryError, match="twice"):
        validate([ok, ok])
    backwards = Operation(id=1, process=0, f="read", invoke_us=5, complete_us=4, outcome=Outcome.OK)
    with pytest.raises(HistoryError, match="before it is invoked"):
        validate([backwards])
    unfinished = Operation(id=2, process=0, f="read", invoke_us=5, outcome=Outcome.OK)
    with pytest.raises(HistoryError, match="never completed"):
        validate([unfinished])
