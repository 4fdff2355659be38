"""The history recorder: three-valued outcomes, JSON lines, a bound."""

import json
from pathlib import Path

import pytest

from phalanx.sim.history import History, OpOutcome


def test_ops_record_invoke_and_completion(tmp_path: Path) -> None:
    history = History()
    put = history.invoke(0, "put", "k1", 10, value="v0", node=2)
    read = history.invoke(1, "read", "k1", 12, node=3)
    lost = history.invoke(2, "put", "k2", 13, value="v2", node=1)
    History.complete(put, OpOutcome.OK, 20, index=7)
    History.complete(read, OpOutcome.OK, 25, output="v0", index=7)
    History.complete(lost, OpOutcome.INFO, 40, error="timeout")
    assert history.counts() == {"ok": 2, "fail": 0, "info": 1, "pending": 0}
    with pytest.raises(ValueError, match="already completed"):
        History.complete(put, OpOutcome.FAIL, 30)
    path = tmp_path / "history.jsonl"
    history.write(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "id": 0,
        "process": 0,
        "f": "put",
        "key": "k1",
        "invoke_us": 10,
        "value": "v0",
        "node": 2,
        "complete_us": 20,
        "outcome": "ok",
        "index": 7,
    }
    assert lines[2]["outcome"] == "info"
    again = History.from_jsonl(path.read_bytes())
    assert [op.outcome for op in again] == [OpOutcome.OK, OpOutcome.OK, OpOutcome.INFO]
    assert again.get(1).output == "v0"


def test_the_history_is_bounded() -> None:
    history = History(ops_max=2)
    history.invoke(0, "read", "k", 0)
    assert not history.full()
    history.invoke(0, "read", "k", 1)
    assert history.full()
    with pytest.raises(ValueError, match="already holds 2"):
        history.invoke(0, "read", "k", 2)
