"""``phalanx chaos summary``: finished runs tabulated from their results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from phalanx.chaos.summary import load_runs, markdown, totals
from phalanx.cli.chaos import EXIT_INVALID, EXIT_UNKNOWN, EXIT_VALID, chaos


def _results(workload: str, verdict: str, seed: int, *, failed: int = 0) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "options": {"nodes": 3, "workload": workload, "nemesis": ["partition"], "seed": seed},
        "counts": {"operations": 1000 + seed, "ok": 900, "fail": 90, "info": 10 + seed},
        "nemesis_applied": 7,
        "nemesis_failed": failed,
        "duration_s": 35.0,
        "check_s": 0.01,
        "error": None,
    }


def _campaign(root: Path, runs: list[dict[str, Any]]) -> Path:
    for n, results in enumerate(runs):
        (root / f"run-{n}").mkdir(parents=True)
        (root / f"run-{n}" / "results.json").write_text(json.dumps(results))
    return root


def test_runs_are_read_in_order_and_summed_per_workload(tmp_path: Path) -> None:
    runs = [_results("set", "valid", s) for s in range(11)]
    runs[3] = _results("bank", "valid", 3, failed=1)
    root = _campaign(tmp_path / "c", runs)
    rows = load_runs([root])
    assert [Path(r.directory).name for r in rows] == [f"run-{n}" for n in range(11)]
    sums = totals(rows)
    assert sums["bank"]["runs"] == 1
    assert sums["set"]["runs"] == 10
    assert sums["all"]["operations"] == sum(1000 + s for s in range(11))
    assert sums["all"]["verdicts"] == {"valid": 11}
    text = markdown(rows)
    assert (
        "| run-3 | 3 | 3 | bank | partition | 1,003 | 900 | 90 | 13 | 7 (+1 not applied) | valid |"
        in text
    )
    assert "| **all** | 11 | 11,055 |" in text
    # A run's own directory works as well as a campaign's.
    assert load_runs([root / "run-0"]) == rows[:1]


def test_the_exit_status_follows_the_worst_verdict(tmp_path: Path) -> None:
    runner = CliRunner()
    valid = _campaign(tmp_path / "v", [_results("kv", "valid", 1)])
    unknown = _campaign(tmp_path / "u", [_results("lock", "unknown", 2)])
    invalid = _campaign(tmp_path / "i", [_results("set", "invalid", 3)])
    assert runner.invoke(chaos, ["summary", str(valid)]).exit_code == EXIT_VALID
    assert runner.invoke(chaos, ["summary", str(valid), str(unknown)]).exit_code == EXIT_UNKNOWN
    result = runner.invoke(chaos, ["summary", str(valid), str(unknown), str(invalid)])
    assert result.exit_code == EXIT_INVALID
    assert "**invalid**" in result.output
    as_json = runner.invoke(chaos, ["summary", "--json", str(valid)])
    assert json.loads(as_json.output)["workload"] == "kv"
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(chaos, ["summary", str(empty)])
    assert nothing.exit_code == EXIT_UNKNOWN


def test_a_file_that_is_not_a_run_is_named(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "run-0").mkdir(parents=True)
    (root / "run-0" / "results.json").write_text('{"verdict": "valid"}')
    with pytest.raises(ValueError, match=r"run-0/results\.json"):
        load_runs([root])
    result = CliRunner().invoke(chaos, ["summary", str(root)])
    assert result.exit_code == EXIT_UNKNOWN
    assert "not a chaos run's results" in result.output


def test_a_run_that_did_not_finish_is_unknown_and_errors_are_shown(tmp_path: Path) -> None:
    noted = _results("kv", "valid", 1)
    noted["error"] = "after the heal: no leader | within 30 s"
    root = _campaign(tmp_path / "c", [_results("kv", "valid", 0), noted])
    (root / "run-2").mkdir()  # its cluster did not start: no results.json
    rows = load_runs([root])
    assert [r.verdict for r in rows] == ["valid", "valid", "unknown"]
    text = markdown(rows)
    assert "valid (after the heal: no leader / within 30 s) |" in text
    assert "| run-2 | 0 | 0 | ? | ? |" in text
    result = CliRunner().invoke(chaos, ["summary", str(root)])
    assert result.exit_code == EXIT_UNKNOWN
